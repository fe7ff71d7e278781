#!/usr/bin/env python3
"""Check a CAR that Xnode wrote with decoders from PyPI, not with Xnode's own code.

    check.py CAR ROOT EXPECTED [--reencode OUT]

- `ipfs-car-decoder` indexes the CAR's sections: its header must list exactly ROOT, and every block, read back
  through its validating block store, must hash to its CID (`multiformats`).
- `ipfs-car-decoder` with `unix-fs-exporter` reads the UnixFS file under ROOT from the CAR alone: its bytes must
  equal the file EXPECTED.
- `--reencode OUT` writes the same roots and blocks, in Xnode's order, with `ipld_car.encode` (an independent CARv1
  writer); the result must be byte for byte Xnode's CAR, and the import test feeds it back into Xnode.
  (`ipld-car` 0.0.1 is used only to encode: its decoder misreads CIDv0 sections, skipping no length byte.)

Prints one JSON line (roots, blocks, bytes) and exits 0, or exits with a message.  Used by tests/gateway.rs in the
kubo tier of scripts/test.sh (the venv from tests/requirements.txt).
"""

import asyncio
import json
import sys

import ipld_car
from ipfs_car_decoder import FileByteStream, IndexedBlockstore, stream_bytes
from multiformats import CID


async def check(car_path: str, root: str, expected_path: str, reencode: "str | None") -> dict:
    async with FileByteStream(car_path) as stream:
        store = await IndexedBlockstore.from_stream(stream)
        roots = list(store.indexer.header["roots"])
        if [bytes(r) for r in roots] != [bytes(CID.decode(root))]:
            raise SystemExit(f"roots {[str(r) for r in roots]} != [{root}]")
        # Sections in the order they appear in the CAR; each read validates its hash against its CID.
        indexes = sorted(store.indexer.mapping.values(), key=lambda i: i.offset)
        blocks = [(i.cid, await store.get_block(i.cid)) for i in indexes]
    out = bytearray()
    async with FileByteStream(car_path) as stream:
        async for chunk in stream_bytes(root, stream):
            out += chunk
    with open(expected_path, "rb") as f:
        expected = f.read()
    if bytes(out) != expected:
        raise SystemExit(f"the file read from the CAR differs: {len(out)} bytes, expected {len(expected)}")
    if reencode:
        encoded = bytes(ipld_car.encode(roots, blocks))
        with open(car_path, "rb") as f:
            if encoded != f.read():
                raise SystemExit("ipld_car.encode of the same roots and blocks differs from Xnode's CAR")
        with open(reencode, "wb") as f:
            f.write(encoded)
    return {"roots": [str(r) for r in roots], "blocks": len(blocks), "bytes": len(out)}


def main() -> None:
    args = sys.argv[1:]
    reencode = None
    if "--reencode" in args:
        i = args.index("--reencode")
        reencode = args[i + 1]
        del args[i : i + 2]
    car_path, root, expected_path = args
    print(json.dumps(asyncio.run(check(car_path, root, expected_path, reencode))))


if __name__ == "__main__":
    main()
