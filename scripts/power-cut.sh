#!/usr/bin/env bash
# A power cut in the middle of adds, on a real file system: what was acknowledged durable must survive, and the store
# must open with every block its index lists hashing right (docs/storage.md, "Power loss").
#
# How the cut is made: an ext4 file system on a loop device (a file under /tmp) is shut down with the
# Unmounts, waiting out a process that is still letting go of it (a killed writer, a node's last flush).
unmount() {
  for _ in $(seq 1 40); do
    umount "$1" 2>/dev/null && return 0
    sleep 0.25
  done
  umount "$1"
}

# EXT4_IOC_SHUTDOWN ioctl and EXT4_GOING_FLAGS_NOLOGFLUSH, the "godown" that xfstests uses to simulate a power
# failure: from that instant nothing more reaches the disk (dirty pages are dropped, the journal is not flushed,
# every later write fails with EIO). The file system is then unmounted, the loop device detached ("the machine is
# off"), attached and mounted again (the journal is replayed as after a reboot), and checked:
#   - `xnode ... stats --offline` opens the store (pack files cut back to their committed lengths);
#   - every add that `xnode add --offline` acknowledged (exit 0, which it gives after the commit's fdatasync of the
#     packs, the fsync of the packs directory for a new pack, and sled's flush) reads back with `xnode cat --offline`
#     and the same sha256 (a checked read: every block hashed against its CID);
#   - a node started on the data dir scrubs at full speed: its first pass re-hashes every block the index lists
#     (blocks_checked at least the store's blocks; the node adds a few of its own) and finds 0 corrupt.
#
# What it does not show: a disk that loses or reorders writes it was told were flushed, or tears a sector (the loop
# device writes into the host's page cache, which survives the "cut"), nor the cut inside a node with peers. Needs
# root, loop devices, mount, and a kernel whose ext4 has the shutdown ioctl (Linux 4.10 and later).
#
#   scripts/power-cut.sh [ROUNDS]        # XNODE=path/to/xnode (default: $CARGO_TARGET_DIR or target, debug/xnode)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-5}"
target="${CARGO_TARGET_DIR:-target}"
xnode="$(realpath "${XNODE:-$target/debug/xnode}")"
[[ -x "$xnode" ]] || { echo "error: no $xnode; build it (cargo build --locked --bin xnode) or set XNODE" >&2; exit 2; }

work="$(mktemp -d /tmp/xnode-power-cut.XXXXXX)"
loop=""
writer=""
cleanup() {
  [[ -n "$writer" ]] && kill -9 -- "-$writer" 2>/dev/null || true
  mountpoint -q "$work/mnt" && unmount "$work/mnt" || true
  [[ -n "$loop" ]] && losetup -d "$loop" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Unmounts, waiting out a process that is still letting go of it (a killed writer, a node's last flush).
unmount() {
  for _ in $(seq 1 40); do
    umount "$1" 2>/dev/null && return 0
    sleep 0.25
  done
  umount "$1"
}

# EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); flag 2 = EXT4_GOING_FLAGS_NOLOGFLUSH.
power_cut() {
  python3 -c 'import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))' "$1"
}

# Starts a node alone on the data dir (loopback, its own group, no mDNS) with a scrub after 5 s at full speed, waits
# for the end of its first pass and prints the status's `scrub` figures; stops the node by its pid.
scrub_once() {
  local gossip node api="" figures="{}"
  gossip="$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  XNODE_NAME=power-cut XNODE_GROUP_NAME="power-cut-$$" XNODE_MDNS=false XNODE_BIND_ADDR=127.0.0.1 XNODE_API_PORT=0 \
    XNODE_P2P_PORT=0 XNODE_GOSSIP_PORT="$gossip" XNODE_KNOWN_PEERS="" XNODE_ADMIN_TOKEN=power-cut \
    XNODE_SCRUB_INTERVAL=5s XNODE_SCRUB_RATE=0 XNODE_LOG=warn \
    "$xnode" run --data-dir "$1" 2> "$work/node.log" &
  node=$!
  for _ in $(seq 1 120); do
    [[ -z "$api" ]] && api="$(grep -o 'API on http://[0-9.:]*' "$work/node.log" | head -1 | cut -d' ' -f3 || true)"
    if [[ -n "$api" ]]; then
      figures="$(curl -sf "$api/api/v1/status" | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["scrub"]))' 2>/dev/null || echo '{}')"
      python3 -c 'import json, sys; s = json.loads(sys.argv[1]); sys.exit(0 if s.get("passes", 0) >= 1 and not s.get("running") else 1)' "$figures" && break
    fi
    sleep 0.5
  done
  kill "$node" 2>/dev/null || true
  wait "$node" 2>/dev/null || true
  echo "$figures"
}

mkdir -p "$work/mnt" "$work/src"
failed=0
for round in $(seq 1 "$rounds"); do
  rm -f "$work/acked" "$work/src"/* && touch "$work/acked"
  truncate -s 512M "$work/disk.img"
  mkfs.ext4 -q -F "$work/disk.img"
  loop="$(losetup -f --show "$work/disk.img")"
  mount "$loop" "$work/mnt"
  data="$work/mnt/xnode"

  # The writer: files of 1-6 MiB added one after another; a line in `acked` (outside the cut file system) only
  # after `xnode add` exited 0.
  setsid bash -c '
    xnode="$1" data="$2" work="$3" i=0
    while :; do
      head -c $(( (RANDOM % 6 + 1) << 20 )) /dev/urandom > "$work/src/f$i"
      if cid="$("$xnode" add --offline --data-dir "$data" -Q "$work/src/f$i" 2>/dev/null)"; then
        echo "$cid f$i" >> "$work/acked"
      fi
      i=$((i + 1))
    done' writer "$xnode" "$data" "$work" &
  writer=$!
  sleep "$(python3 -c 'import random; print(round(random.uniform(1.0, 4.0), 2))')"
  # A control: a file written just before the cut and never synced should not survive it (else nothing was cut).
  echo canary > "$work/mnt/canary"
  power_cut "$work/mnt"
  kill -9 -- "-$writer" 2>/dev/null || true
  wait "$writer" 2>/dev/null || true
  writer=""
  acked=$(wc -l < "$work/acked")

  unmount "$work/mnt"
  losetup -d "$loop"
  loop="$(losetup -f --show "$work/disk.img")"
  mount "$loop" "$work/mnt"

  stats="$("$xnode" stats --offline --json --data-dir "$data" 2> "$work/stats.err")" ||
    { echo "round $round: the store does not open: $(cat "$work/stats.err")"; failed=1; }
  blocks="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["blocks"])' <<< "$stats" 2>/dev/null || echo 0)"
  lost=0
  while read -r cid file; do
    got="$("$xnode" cat --offline --data-dir "$data" "$cid" 2>/dev/null | sha256sum | cut -d' ' -f1)"
    want="$(sha256sum < "$work/src/$file" | cut -d' ' -f1)"
    [[ "$got" == "$want" ]] || { echo "round $round: acknowledged $cid ($file) lost or wrong"; lost=$((lost + 1)); }
  done < "$work/acked"
  check="$(scrub_once "$data")"
  corrupt="$(python3 -c 'import json, sys; s = json.loads(sys.argv[1]); print(s["corrupt_total"] if s.get("blocks_checked", 0) >= int(sys.argv[2]) else "unchecked")' "$check" "$blocks" 2>/dev/null || echo "?")"
  canary=$([[ -s "$work/mnt/canary" ]] && echo "survived (the cut may not have dropped anything)" || echo "gone")
  echo "round $round: cut after $acked acknowledged adds; unsynced control file $canary; store opens ($blocks blocks); acknowledged adds lost or wrong: $lost;" \
       "blocks the scrub checked / found corrupt: $(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("blocks_checked"))' "$check" 2>/dev/null) / ${corrupt:-?}"
  [[ "$lost" == 0 && "$corrupt" == 0 ]] || { failed=1; echo "scrub: $check"; tail -5 "$work/node.log"; }

  unmount "$work/mnt"
  losetup -d "$loop"
  loop=""
done
if [[ "$failed" == 0 ]]; then
  echo "ok: $rounds power cuts, nothing acknowledged lost, every listed block hashes right"
else
  echo "FAILED"
  exit 1
fi
