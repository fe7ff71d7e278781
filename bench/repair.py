#!/usr/bin/env python3
"""Self-allocation benchmark: five `xnode run` processes on loopback at replication factor 2.

1. Add SIZE on one node and wait until the cluster settles (every member holds the same plan).
2. Kill -9 the member holding the most bytes and time until the four survivors settle again with two copies of
   every leaf: the repair time (target: 60 s or less for a node holding about 1 GiB).
3. Start a sixth node and count the block copies that moved, against the ideal (its capacity share of all copies).
4. Halve one node's capacity and count the copies that moved, against the ideal (the copies its share lost).

    python3 bench/repair.py --xnode target/release/xnode --size 2560MiB

Prints one table; nothing is asserted (tests assert behaviour, this measures).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "bench"


def parse_size(s):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 10**6, "GB": 10**9}
    for u, m in units.items():
        if s.endswith(u):
            return int(float(s[: -len(u)]) * m)
    return int(s)


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, xnode, base, name, seed, capacity=None):
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
        )
        if capacity:
            env["XNODE_STORAGE_MAX"] = str(capacity)
        else:
            env.pop("XNODE_STORAGE_MAX", None)
        self.proc = subprocess.Popen(
            [xnode, "--data-dir", os.path.join(base, name), "run"], env=env, stderr=subprocess.PIPE, text=True
        )
        for line in self.proc.stderr:
            if "API on " in line:
                self.api = line.split("API on ")[1].strip()
                break
        # Keep draining stderr so the node never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def get(self, path):
        try:
            with urllib.request.urlopen(self.api + path, timeout=30) as r:
                return json.load(r)
        except Exception:
            return None

    def put(self, path, body):
        req = urllib.request.Request(
            self.api + path,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def held(self):
        v = self.get("/api/v1/blocks?limit=100000000") or {}
        return set(v.get("held", {}).get("cids", []))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def settled(nodes, root, old_plan):
    """The plan every member reports once it holds its share, or None while they differ, still fetch, or still
    report `old_plan` (the plan before the change being timed, which must not count)."""
    names = sorted(n.name for n in nodes)
    plan = None
    for n in nodes:
        members = n.get("/api/v1/members") or []
        alive = [m for m in members if m["state"] == "Alive" and m["meta"].get("peer_id")]
        if sorted(m["name"] for m in alive) != names:
            return None
        plans = {m["meta"].get("settled", "") for m in alive}
        if len(plans) != 1 or "" in plans or any(m["meta"].get("wanted", 1) for m in alive):
            return None
        if plans == {old_plan} or (plan is not None and plans != {plan}):
            return None
        plan = plans.pop()
        if root not in json.dumps(n.get("/api/v1/files")):
            return None
    return plan


def wait_settled(nodes, root, what, old_plan=None, limit=900):
    """Seconds until the cluster settles on a plan other than `old_plan`, and that plan."""
    start = time.monotonic()
    while (plan := settled(nodes, root, old_plan)) is None:
        if time.monotonic() - start > limit:
            sys.exit(f"{what}: the cluster did not settle on a new plan within {limit} s")
        time.sleep(0.25)
    return time.monotonic() - start, plan


def moved(before, after):
    """Copies that landed on a node that did not hold them before."""
    return sum(len(after[n] - before.get(n, set())) for n in after)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xnode", default="target/release/xnode")
    ap.add_argument("--size", default="2560MiB", help="bytes added (each of 5 nodes holds about 2/5 at RF 2)")
    ap.add_argument("--capacity", default="3GiB", help="each node's storage capacity")
    args = ap.parse_args()
    size = parse_size(args.size)
    cap = parse_size(args.capacity)
    base = tempfile.mkdtemp(prefix="xnode-repair-")
    nodes = []
    try:
        nodes.append(Node(args.xnode, base, "n1", "", cap))
        for i in range(2, 6):
            nodes.append(Node(args.xnode, base, f"n{i}", nodes[0].gossip, cap))
        payload = os.path.join(base, "payload.bin")
        with open(payload, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 16 << 20))
                f.write(chunk)
                left -= len(chunk)
        out = subprocess.run(
            [args.xnode, "--api", nodes[0].api, "--token", TOKEN, "add", "-Q", payload],
            check=True,
            capture_output=True,
            text=True,
        )
        root = out.stdout.strip()
        os.remove(payload)
        t_settle, plan = wait_settled(nodes, root, "after the add")
        time.sleep(3)  # let the adding node release its staging copies
        before = {n.name: n.held() for n in nodes}
        copies = sum(len(h) for h in before.values())

        # Repair.
        victim = max(nodes, key=lambda n: (n.get("/api/v1/storage") or {}).get("used", 0))
        victim_bytes = (victim.get("/api/v1/storage") or {}).get("used", 0)
        victim_blocks = len(before[victim.name])
        victim.kill()
        nodes.remove(victim)
        t_repair, plan = wait_settled(nodes, root, "after the kill", plan)
        time.sleep(3)
        after_repair = {n.name: n.held() for n in nodes}
        # Only the victim's leaf copies should move (interior blocks are on every node already).
        everywhere = set.intersection(*before.values())
        repair_moved = moved(before, after_repair)
        repair_ideal = max(len(before[victim.name] - everywhere), 1)
        repair_dropped = sum(len(before[n] - after_repair[n]) for n in after_repair)

        # Join.
        nodes.append(Node(args.xnode, base, "n6", nodes[0].gossip, cap))
        t_join, plan = wait_settled(nodes, root, "after the join", plan)
        time.sleep(3)
        after_join = {n.name: n.held() for n in nodes}
        join_moved = moved(after_repair, after_join)
        total = sum(len(h) for h in after_join.values())
        join_ideal = total / len(nodes)

        # Resize: halve one node's capacity.
        target = nodes[1]
        target.put("/api/v1/storage", {"capacity": cap // 2})
        t_resize, plan = wait_settled(nodes, root, "after the resize", plan)
        time.sleep(3)
        after_resize = {n.name: n.held() for n in nodes}
        resize_moved = moved(after_join, after_resize)
        resize_ideal = max(len(after_join[target.name]) - len(after_resize[target.name]), 1)

        mib = 1 << 20
        print(f"\nself-allocation, 5 nodes, RF 2, {size / mib:.0f} MiB added ({copies} leaf+interior copies held)")
        print(f"{'step':<34}{'seconds':>9}  detail")
        print(f"{'settle after add':<34}{t_settle:>9.1f}  every member holds the plan")
        print(
            f"{'repair after kill -9':<34}{t_repair:>9.1f}  {victim.name} held {victim_bytes / mib:.0f} MiB "
            f"({victim_blocks} blocks); {victim_bytes / mib / max(t_repair, 1e-9):.0f} MiB/s re-replicated"
            f"  [target <= 60 s]"
        )
        print(
            f"{'  copies moved by the repair':<34}{'':>9}  {repair_moved}, the victim's leaf copies {repair_ideal} "
            f"({repair_moved / repair_ideal:.2f}x); copies survivors dropped: {repair_dropped}"
        )
        print(
            f"{'join of a 6th node':<34}{t_join:>9.1f}  {join_moved} copies moved, ideal {join_ideal:.0f} "
            f"({join_moved / join_ideal:.2f}x)"
        )
        print(
            f"{'halve ' + target.name + ' capacity':<34}{t_resize:>9.1f}  {resize_moved} copies moved, "
            f"ideal {resize_ideal} ({resize_moved / resize_ideal:.2f}x)"
        )
    finally:
        for n in nodes:
            try:
                n.kill()
            except Exception:
                pass
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
