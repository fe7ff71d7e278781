#!/usr/bin/env python3
"""Self-allocation benchmark: five `xnode run` processes on loopback at replication factor 2.

1. Add SIZE on one node (chunked as `--chunker`) and wait until the cluster settles: every member seeding with
   nothing wanted and no surplus, every node reporting the file at RF.
2. Idle: CPU of each node as a share of one core over `--idle` seconds (target <= 1%), its RSS (target <= 150 MB),
   and its share of the data against its share of the capacity.
3. Kill -9 the member holding the most bytes: seconds until every survivor has a new layout and starts repairing
   (target <= 3 s), and until the four survivors settle again with two copies of every leaf (the repair time;
   target: 60 s or less for a node holding about 1 GiB).
4. Start a sixth node and count the block copies that moved, against the ideal (its capacity share of all copies).
5. Halve one node's capacity and count the copies that moved, against the ideal (the copies its share lost).

    python3 bench/repair.py --xnode target/release/xnode --size 2560MiB
    python3 bench/repair.py --size 4GiB --chunker size-4096 --capacity 20GiB --until repair   # 1,048,576 leaves

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
            XNODE_GROUP_NAME=f"xnode-bench-{os.getpid()}",
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
        out, after = set(), ""
        while True:
            v = self.get("/api/v1/blocks?limit=10000" + (f"&after={after}" if after else "")) or {}
            page = v.get("held", {}).get("cids", [])
            if not page:
                return out
            out.update(page)
            after = page[-1]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def settled(nodes, root):
    """Whether every member sees exactly `nodes` alive, seeding, wanting nothing, with no surplus partition left,
    and every node lists `root` with every block at RF."""
    names = sorted(n.name for n in nodes)
    for n in nodes:
        members = n.get("/api/v1/members") or []
        alive = [m for m in members if m["state"] == "Alive" and m["meta"].get("peer_id")]
        if sorted(m["name"] for m in alive) != names:
            return False
        if any(m["meta"].get("phase") != "seeding" or m["meta"].get("wanted", 1) for m in alive):
            return False
        files = n.get("/api/v1/files") or []
        # Counted (a file listed before the allocation loop counts its copies has no health yet) and all at RF.
        if not any(
            f.get("root") == root
            and (f.get("health") or {}).get("blocks", 0) > 0
            and f["health"]["at_rf"] == f["health"]["blocks"]
            for f in files
        ):
            return False
    # Last: a status counts the node's blocks (an index scan: about a second at a million blocks).
    for n in nodes:
        status = n.get("/api/v1/status") or {}
        if status.get("partitions_surplus", 1) or status.get("partitions_complete") != status.get("partitions"):
            return False
    return True


def wait_settled(nodes, root, what, limit=1800):
    """Seconds until the cluster settles."""
    start = time.monotonic()
    while not settled(nodes, root):
        if time.monotonic() - start > limit:
            sys.exit(f"{what}: the cluster did not settle within {limit} s")
        time.sleep(0.5)
    return time.monotonic() - start


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1000
    return 0.0


def moved(before, after):
    """Copies that landed on a node that did not hold them before."""
    return sum(len(after[n] - before.get(n, set())) for n in after)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xnode", default="target/release/xnode")
    ap.add_argument("--size", default="2560MiB", help="bytes added (each of 5 nodes holds about 2/5 at RF 2)")
    ap.add_argument("--capacity", default="3GiB", help="each node's storage capacity")
    ap.add_argument("--chunker", default=None, help="as `xnode add --chunker`, e.g. size-4096 for many blocks")
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measured once settled")
    ap.add_argument("--idle-again", type=float, default=0,
                    help="measure idle CPU once more this many seconds after the first measurement")
    ap.add_argument(
        "--until",
        choices=["idle", "repair", "all"],
        default="all",
        help="stop after the idle figures or after the repair (at a million blocks the join and resize take long)",
    )
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
        add = [args.xnode, "--api", nodes[0].api, "--token", TOKEN, "add", "-Q"]
        if args.chunker:
            add += ["--chunker", args.chunker]
        t_add = time.monotonic()
        out = subprocess.run(add + [payload], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"the add failed after {time.monotonic() - t_add:.1f} s: {out.stderr.strip()}")
        root = out.stdout.strip()
        t_add = time.monotonic() - t_add
        os.remove(payload)
        print(f"[progress] add took {t_add:.1f} s", flush=True)
        t_settle = wait_settled(nodes, root, "after the add")
        print(f"[progress] settled {t_settle:.1f} s after the add", flush=True)
        before = {n.name: n.held() for n in nodes}
        copies = sum(len(h) for h in before.values())

        # Idle: once every node's first scrub pass (a minute after start, re-hashing the store at XNODE_SCRUB_RATE;
        # the next one a scrub interval later) is over, so the figure is the steady cost, not the scrub's.
        t_scrub = time.monotonic()

        def scrubbing(n):
            s = (n.get("/api/v1/status") or {}).get("scrub") or {}
            return s.get("running") or not s.get("passes")

        while any(scrubbing(n) for n in nodes) and time.monotonic() - t_scrub < 1800:
            time.sleep(5)
        print(f"[progress] scrub passes over {time.monotonic() - t_scrub:.1f} s after settling", flush=True)
        time.sleep(5)
        cpu0 = {n.name: cpu_seconds(n.proc.pid) for n in nodes}
        t0 = time.monotonic()
        # XNODE_BENCH_PERF=FILE: a `perf record` of the second node's idle window, to see where it goes.
        perf = None
        if os.environ.get("XNODE_BENCH_PERF"):
            perf = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,16384", "-o",
                                     os.environ["XNODE_BENCH_PERF"], "-p", str(nodes[1].proc.pid), "--", "sleep",
                                     str(args.idle)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.idle)
        if perf:
            perf.wait()
        elapsed = time.monotonic() - t0
        idle = {n.name: (cpu_seconds(n.proc.pid) - cpu0[n.name]) / elapsed for n in nodes}
        rss = {n.name: rss_mb(n.proc.pid) for n in nodes}
        used = {n.name: (n.get("/api/v1/storage") or {}).get("used", 0) for n in nodes}
        print(f"[progress] idle CPU {idle}, RSS MB {rss}, used {used}", flush=True)
        if args.idle_again:
            # sled compacts its log in the background after heavy writes (its flusher's segment GC): measured again
            # later, the idle figure shows what is left once that backlog is done.
            time.sleep(args.idle_again)
            cpu0 = {n.name: cpu_seconds(n.proc.pid) for n in nodes}
            t0 = time.monotonic()
            time.sleep(args.idle)
            elapsed = time.monotonic() - t0
            later = {n.name: (cpu_seconds(n.proc.pid) - cpu0[n.name]) / elapsed for n in nodes}
            rss_later = {n.name: rss_mb(n.proc.pid) for n in nodes}
            print(f"[progress] idle CPU {args.idle_again:.0f} s later {later}, RSS MB {rss_later}", flush=True)
        if args.until == "idle":
            return

        # Repair.
        victim = max(nodes, key=lambda n: (n.get("/api/v1/storage") or {}).get("used", 0))
        victim_bytes = (victim.get("/api/v1/storage") or {}).get("used", 0)
        victim_blocks = len(before[victim.name])
        layout_before = {n.name: (n.get("/api/v1/status") or {}).get("partitions", 0) for n in nodes}
        victim.kill()
        t_kill = time.monotonic()
        nodes.remove(victim)
        started = {}
        while len(started) < len(nodes) and time.monotonic() - t_kill < 120:
            for n in nodes:
                if n.name not in started and (n.get("/api/v1/status") or {}).get("partitions", 0) > layout_before[n.name]:
                    started[n.name] = time.monotonic() - t_kill
            time.sleep(0.1)
        t_start = max(started.values()) if len(started) == len(nodes) else float("nan")
        print(f"[progress] repair started on every survivor {t_start:.1f} s after the kill", flush=True)
        t_repair = wait_settled(nodes, root, "after the kill")
        print(f"[progress] repaired {t_repair:.1f} s after the kill", flush=True)
        if args.until == "repair":
            return
        after_repair = {n.name: n.held() for n in nodes}
        # Only the victim's leaf copies should move (interior blocks are on every node already).
        everywhere = set.intersection(*before.values())
        repair_moved = moved(before, after_repair)
        repair_ideal = max(len(before[victim.name] - everywhere), 1)
        repair_dropped = sum(len(before[n] - after_repair[n]) for n in after_repair)

        # Join.
        nodes.append(Node(args.xnode, base, "n6", nodes[0].gossip, cap))
        t_join = wait_settled(nodes, root, "after the join")
        after_join = {n.name: n.held() for n in nodes}
        join_moved = moved(after_repair, after_join)
        total = sum(len(h) for h in after_join.values())
        join_ideal = total / len(nodes)

        # Resize: halve one node's capacity.
        target = nodes[1]
        target.put("/api/v1/storage", {"capacity": cap // 2})
        t_resize = wait_settled(nodes, root, "after the resize")
        after_resize = {n.name: n.held() for n in nodes}
        resize_moved = moved(after_join, after_resize)
        resize_ideal = max(len(after_join[target.name]) - len(after_resize[target.name]), 1)

        mib = 1 << 20
        print(f"\nself-allocation, 5 nodes, RF 2, {size / mib:.0f} MiB added ({copies} leaf+interior copies held)")
        print(f"{'step':<34}{'seconds':>9}  detail")
        print(f"{'add through n1':<34}{t_add:>9.1f}  {args.chunker or 'size-262144'} chunks")
        print(f"{'settle after add':<34}{t_settle:>9.1f}  every leaf on its holders, n1's surplus handed off")
        total_used = sum(used.values()) or 1
        for n in sorted(idle):
            print(
                f"{'  idle ' + n:<34}{'':>9}  CPU {idle[n] * 100:.2f}% of a core [<= 1%], RSS {rss[n]:.0f} MB "
                f"[<= 150 MB], holds {used[n] / total_used * 100:.1f}% of the data (capacity share "
                f"{100 / len(idle):.1f}%), {len(before[n])} blocks"
            )
        print(f"{'repair starts on every survivor':<34}{t_start:>9.1f}  new layout seen [target <= 3 s]")
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
