#!/usr/bin/env python3
"""One Xnode->Xnode transfer over loopback, for profiling: the same set-up as bench/transfer.py's xx pair.

    python3 bench/xx_profile.py target/release/xnode 1GiB [perf|none]

X1 adds a random file; X2 joins with XNODE_BOOTSTRAP; the timed part is `xnode --api X2 cat CID > OUT`. Prints
seconds, MB/s and the CPU seconds of the sender, the receiver and the `cat` client, and the node pids.
Environment:
  OUT=/dev/null   discard the output instead of writing a file (takes the output file's page-cache cost out;
                  not comparable with the Kubo pairs, whose `get` writes a file)
  SDIO, RDIO      XNODE_DIRECT_IO for the sender and the receiver (default true)
  mode perf       records `perf record -a -g` of the timed part into ./perf.data
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transfer as T  # noqa: E402

binary, size = os.path.abspath(sys.argv[1]), T.parse_size(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "none"
root = tempfile.mkdtemp(prefix="xx-profile-")
try:
    src = os.path.join(root, "src.bin")
    digest = T.make_file(src, size)
    x1 = T.Xnode(binary, "x1", root, "g", extra_env={"XNODE_DIRECT_IO": os.environ.get("SDIO", "true")})
    x1.wait_api(30)
    cid = x1.cli("add", "-Q", src, timeout=600).strip().splitlines()[-1]
    addr = x1.tcp_addr()
    port = int(re.search(r"/tcp/(\d+)", addr).group(1))
    x2 = T.Xnode(binary, "x2", root, "g", bootstrap=addr,
                 extra_env={"XNODE_DIRECT_IO": os.environ.get("RDIO", "true")})
    x2.wait_api(30)
    T.wait_until(lambda: T.tcp_established_to(port), 30, "x2 to connect to x1")
    time.sleep(1)
    out = os.environ.get("OUT") or os.path.join(root, "out.bin")
    perf = None
    if mode == "perf":
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-e", "cpu-clock", "-g", "-a", "-o", "perf.data"],
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    c0 = x1.cpu(), x2.cpu()
    secs, client = T.timed_cat(x2, cid, out, 600)
    c1 = x1.cpu(), x2.cpu()
    if perf:
        perf.send_signal(2)
        perf.wait()
    print("pids", x1.pid, x2.pid)
    print(f"{secs:.2f}s {size / secs / 1e6:.1f} MB/s sender {c1[0] - c0[0]:.2f} receiver {c1[1] - c0[1]:.2f} "
          f"client {client:.2f}")
    if not os.environ.get("OUT"):
        print("bytes ok" if T.sha256_file(out) == digest else "BYTES DIFFER")
    x2.stop()
    x1.stop()
finally:
    shutil.rmtree(root, ignore_errors=True)
