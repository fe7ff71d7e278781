#!/usr/bin/env python3
"""Idle CPU and RSS of a small loopback cluster: N (default 5) `xnode run` at RF 2, one 64 MiB file added, every
member reporting it at RF, 20 s of quiet, then each node's CPU over SECS (default 60) seconds from /proc.

    python3 bench/idle.py target/release/xnode LABEL [--perf]     # N=5 SECS=60 by default

`--perf` records the second node's window (`perf record --call-graph dwarf`) to /tmp/idle/LABEL.perf. The million-
block figure is bench/repair.py's; this one shows the floor without a large index. Nothing is asserted.
"""
import os, sys, time, subprocess, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transfer import TOKEN, Xnode, wait_until
import smallfiles as sf
binary, label = sys.argv[1], sys.argv[2]
N = int(os.environ.get("N", "5")); SECS = int(os.environ.get("SECS", "60"))
work = tempfile.mkdtemp(prefix=f"idle-{label}-")
env = {"XNODE_REPLICATION": "2", "XNODE_MDNS": "false"}
group = f"idle-{label}-{os.getpid()}"
nodes = [Xnode(binary, "n1", work, group, extra_env=env)]; nodes[0].wait_api(30)
seed = f"127.0.0.1:{nodes[0].env['XNODE_GOSSIP_PORT']}"
for k in range(2, N + 1):
    n = Xnode(binary, f"n{k}", work, group, known_peers=seed, extra_env=env); nodes.append(n); n.wait_api(30)
def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
os.makedirs("/tmp/idle", exist_ok=True)
try:
    wait_until(lambda: all(sf.members_alive(x) == N for x in nodes), 60, "alive")
    data = os.path.join(work, "f.bin"); open(data, "wb").write(os.urandom(64 << 20))
    cid = subprocess.run([binary, "--api", nodes[0].api, "--token", TOKEN, "add", "-Q", data], capture_output=True, text=True).stdout.strip()
    def rf():
        return all(((sf.file_entry(x, cid) or {}).get("health") or {}).get("at_rf", -1) == ((sf.file_entry(x, cid) or {}).get("health") or {}).get("blocks", 0) > 0 for x in nodes)
    wait_until(rf, 120, "rf")
    time.sleep(20)
    perf = None
    if "--perf" in sys.argv:
        perf = subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-o", f"/tmp/idle/{label}.perf", "-p", str(nodes[1].pid), "--", "sleep", str(SECS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = [ticks(x.pid) for x in nodes]; w0 = time.time()
    time.sleep(SECS)
    t1 = [ticks(x.pid) for x in nodes]; w1 = time.time()
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [100 * (b - a) / hz / (w1 - w0) for a, b in zip(t0, t1)]
    print(f"{label}: idle CPU per node % " + " ".join(f"{c:.2f}" for c in cpu) + f"  mean {sum(cpu)/len(cpu):.2f}  RSS MB " + " ".join(str(rss(x.pid)) for x in nodes), flush=True)
    if perf: perf.wait()
finally:
    for n in nodes: n.stop()
    import shutil
    shutil.rmtree(work, ignore_errors=True)
