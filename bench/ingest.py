#!/usr/bin/env python3
"""Streaming ingest benchmark: `xnode add` of one file through one member of a five-node cluster at RF 2 (every
leaf streamed to its two placement members as it is made) against `xnode add --offline` of the same file into a
fresh local data dir (chunking, hashing and the store alone, no network). Target: cluster MB/s >= 0.5x offline.

    python3 bench/ingest.py --xnode target/release/xnode --size 4GiB
    python3 bench/ingest.py --size 256MiB --capacity 512MiB     # a quick run

Each member gets --capacity (default: 2x what RF 2 puts on it, so room is never the limit). The cluster add is
timed from the client's start to its answer, which comes once every leaf has its two copies acknowledged. Also
printed: the adding member's store use right after the add (its share plus the interior blocks, not the file). Prints one table;
nothing is asserted (tests assert behaviour, this measures).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOKEN = "bench"


def parse_size(s):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 10**6, "GB": 10**9}
    for u, m in units.items():
        if s.endswith(u):
            return int(float(s[: -len(u)]) * m)
    return int(s)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, xnode, base, name, seed, capacity):
        self.name = name
        self.gossip = f"127.0.0.1:{free_port()}"
        env = dict(os.environ)
        env.update(
            XNODE_NAME=name,
            XNODE_BIND_ADDR="127.0.0.1",
            XNODE_API_PORT="0",
            XNODE_P2P_PORT="0",
            XNODE_GOSSIP_PORT=self.gossip.split(":")[1],
            XNODE_KNOWN_PEERS=seed,
            XNODE_ADMIN_TOKEN=TOKEN,
            XNODE_LOG="warn",
            XNODE_MDNS="false",
            XNODE_GROUP_NAME=f"xnode-bench-ingest-{os.getpid()}",
            XNODE_STORAGE_MAX=str(capacity),
        )
        self.proc = subprocess.Popen(
            [xnode, "--data-dir", os.path.join(base, name), "run"], env=env, stderr=subprocess.PIPE, text=True
        )
        for line in self.proc.stderr:
            if "API on " in line:
                self.api = line.split("API on ")[1].strip()
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def get(self, path):
        try:
            with urllib.request.urlopen(self.api + path, timeout=10) as r:
                return json.load(r)
        except Exception:
            return None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_file(path, size):
    chunk = 4 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xnode", default="target/release/xnode")
    ap.add_argument("--size", default="4GiB")
    ap.add_argument("--capacity", default=None, help="each member's store (default: 2 x size x 2/5)")
    ap.add_argument("--dir", default=None, help="where data goes (default: a temp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)
    capacity = parse_size(args.capacity) if args.capacity else max(64 << 20, 2 * size * 2 // 5)
    base = tempfile.mkdtemp(prefix="xnode-ingest-", dir=args.dir)
    try:
        src = os.path.join(base, "file.bin")
        make_file(src, size)

        # Offline: chunk, hash, store, one commit.
        store = os.path.join(base, "offline")
        t0 = time.perf_counter()
        r = subprocess.run([args.xnode, "add", "--offline", "--data-dir", store, src], capture_output=True, text=True)
        offline = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"offline add failed: {r.stderr}")
        shutil.rmtree(store)

        nodes = [Node(args.xnode, base, "n1", "", capacity)]
        for i in range(2, 6):
            nodes.append(Node(args.xnode, base, f"n{i}", nodes[0].gossip, capacity))
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                st = [n.get("/api/v1/status") or {} for n in nodes]
                if all(s.get("members_alive") == 5 and s.get("partitions", 0) > 0 for s in st):
                    break
                time.sleep(0.5)
            else:
                sys.exit("the cluster did not form")
            peak = [0]
            done = threading.Event()

            def watch():
                while not done.is_set():
                    s = nodes[0].get("/api/v1/status") or {}
                    peak[0] = max(peak[0], s.get("used", 0))
                    time.sleep(0.1)

            w = threading.Thread(target=watch, daemon=True)
            w.start()
            cpu0 = [cpu_seconds(n.proc.pid) for n in nodes]
            t0 = time.perf_counter()
            r = subprocess.run(
                [args.xnode, "add", "--api", nodes[0].api, "--token", TOKEN, src], capture_output=True, text=True
            )
            cluster = time.perf_counter() - t0
            done.set()
            w.join()
            if r.returncode != 0:
                sys.exit(f"cluster add failed: {r.stderr}")
            cpu = [cpu_seconds(n.proc.pid) - c for n, c in zip(nodes, cpu0)]
            # A member's `used` counts committed blocks: the adding member commits its share when the add ends.
            after = (nodes[0].get("/api/v1/status") or {}).get("used", 0)
        finally:
            for n in nodes:
                n.stop()

        mb = size / 1e6
        print(f"file: {size / (1 << 20):.0f} MiB; members: 5 at RF 2, {capacity / (1 << 20):.0f} MiB each")
        print(f"{'add':<34} {'seconds':>8} {'MB/s':>8}")
        print(f"{'xnode add --offline (local)':<34} {offline:>8.2f} {mb / offline:>8.1f}")
        print(f"{'xnode add through n1 (streamed)':<34} {cluster:>8.2f} {mb / cluster:>8.1f}")
        print(f"ratio cluster/offline: {offline / cluster:.2f} (target >= 0.5)")
        print("CPU seconds during the cluster add: " + ", ".join(f"n{i + 1} {c:.2f}" for i, c in enumerate(cpu))
              + f" (machine: {os.cpu_count()} cores)")
        print(f"n1 store use right after the add: {max(after, peak[0]) / (1 << 20):.1f} MiB "
              f"(the file is {size / (1 << 20):.0f} MiB; its RF-2 share is about {2 * size / 5 / (1 << 20):.0f} MiB)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
