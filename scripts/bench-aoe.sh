#!/usr/bin/env bash
# bench-aoe.sh: our AoE target (fabricd storage) beside vblade, in the same
# run, same client (fabric aoe bench), same veth pair, at MTU 9000 and 1500,
# windows 16 and 64, with two clients: our initiator as it runs (replies
# read in batches, the requests they free sent together) and one that
# sends and receives a frame per system call, as most initiators do at a
# low depth. ROUNDS rounds (default 3), the targets in turn within each
# (fabric first in odd rounds, vblade first in even ones); every run is
# printed with the CPU other processes used meanwhile, then each point's
# min/median/max and the ratios of the medians. CPU is the target
# process's utime+stime from /proc/PID/stat, per GiB moved.
#   usage: scripts/bench-aoe.sh [seconds-per-run]   (root; make build first;
#   default 3 s: about 13 min for the full sweep)
#   MTUS, WINDOWS, MODES, CLIENTS (batch one-frame), ROUNDS narrow it,
#   e.g. MTUS=9000 MODES=seqread CLIENTS=one-frame.
#   PEER_FABRICD=PATH: the peer is that fabricd build instead of vblade
#   (an A/B of two versions of our target; printed as "peer").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
SECS=${1:-3}
ROUNDS=${ROUNDS:-3}
MTUS=${MTUS:-9000 1500} WINDOWS=${WINDOWS:-16 64} MODES=${MODES:-seqread seqwrite randread randwrite} CLIENTS=${CLIENTS:-batch one-frame}
BIN=$PWD/bin
TAG=fb$$
S=$TAG-sto I=$TAG-ini
WORK=$(mktemp -d /tmp/fabric-bench-aoe.XXXXXX)
TPID=
cleanup() {
  [ -n "$TPID" ] && kill "$TPID" 2>/dev/null && wait "$TPID" 2>/dev/null || true
  ip netns del $S 2>/dev/null || true
  ip netns del $I 2>/dev/null || true
  rm -rf "$WORK"
  bench_end
}
trap cleanup EXIT INT TERM
aoe_peer
[ -x "$BIN/fabric" ] || { echo "run make build first" >&2; exit 1; }

BENCH_COMMAND="scripts/bench-aoe.sh $SECS (${PEER_FABRICD:+PEER_FABRICD=$PEER_FABRICD }ROUNDS=$ROUNDS MTUS=\"$MTUS\" WINDOWS=\"$WINDOWS\" MODES=\"$MODES\" CLIENTS=\"$CLIENTS\")" \
  bench_begin "AoE target: fabricd storage beside $PEER (same client, same veth pair), $SECS s per run"

ip netns add $S; ip netns add $I
ip link add ${TAG}a type veth peer name ${TAG}b
ip link set ${TAG}a netns $S name sto0; ip link set ${TAG}b netns $I name ini0
for n in $S $I; do ip -n $n link set lo up; done
ip -n $S link set sto0 up; ip -n $I link set ini0 up

# A 512 MiB volume filled with data, so reads come from real page-cache pages.
mkdir -p $WORK/pool
$BIN/fabricd storage volume --data-dir $WORK/pool create bench 512M --addr 1.0 >/dev/null
dd if=/dev/urandom of=$WORK/pool/volumes/bench.img bs=1M count=512 conv=notrunc status=none
cat $WORK/pool/volumes/bench.img > /dev/null

ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)

start_target() {
  case $1 in
    fabric) ip netns exec $S $BIN/fabricd --log-level warn storage --iface sto0 --data-dir $WORK/pool & ;;
    vblade) ip netns exec $S vblade 1 0 sto0 $WORK/pool/volumes/bench.img >/dev/null 2>&1 & ;;
    peer) ip netns exec $S "$PEER_FABRICD" --log-level warn storage --iface sto0 --data-dir $WORK/pool & ;;
  esac
  TPID=$!
  # ip netns exec execs the target: $! is its PID.
  for _ in $(seq 50); do
    ip netns exec $I $BIN/fabric aoe discover -i ini0 --wait 100ms -o jsonl 2>/dev/null | grep -q '"shelf":1,' && return 0
    sleep 0.1
  done
  echo "target $1 did not answer" >&2; exit 1
}
stop_target() { kill $TPID; wait $TPID 2>/dev/null || true; TPID=; }

RUNS=$WORK/runs.tsv
echo
printf '%-5s %-5s %-6s %-9s %-9s %-7s %8s %8s %8s %10s %6s\n' round MTU window client mode target MB/s IOPS "p99 µs" "CPU s/GiB" other
for R in $(seq "$ROUNDS"); do
  order="fabric $PEER"; [ $((R % 2)) = 0 ] && order="$PEER fabric"
  for MTU in $MTUS; do
    ip -n $S link set sto0 mtu $MTU; ip -n $I link set ini0 mtu $MTU
    for W in $WINDOWS; do
      for T in $order; do
        start_target $T
        for M in $MODES; do
          for C in $CLIENTS; do
            flag=; [ "$C" = one-frame ] && flag=--one-frame
            load_mark
            t0=$(ticks $TPID)
            out=$(ip netns exec $I $BIN/fabric aoe bench -i ini0 --window $W --mode $M --duration ${SECS}s $flag -o jsonl e1.0)
            t1=$(ticks $TPID)
            other=$(load_other)
            python3 - "$R" "$MTU" "$W" "$C" "$M" "$T" "$out" "$t0" "$t1" "$HZ" "$other" "$(load_flag "$other")" "$RUNS" <<'PY'
import json, sys
r, mtu, w, c, m, t, out, t0, t1, hz, other, flag, runs = sys.argv[1:]
res = json.loads(out)
gib = res["bytes"] / 2**30
cpu = (int(t1) - int(t0)) / int(hz)
per = cpu / gib if gib else float("nan")
err = f" errors: {res['errors']}" if res["errors"] else ""
print(f"{r:<5} {mtu:<5} {w:<6} {c:<9} {m:<9} {t:<7} {res['mb_per_s']:8.0f} {res['iops']:8.0f} {res['p99_us']:8.0f} {per:10.2f} {other:>5}%{flag}{err}")
with open(runs, "a") as f:
    f.write(f"{mtu}\t{w}\t{c}\t{m}\t{t}\t{res['mb_per_s']}\t{per}\n")
PY
          done
        done
        stop_target
      done
    done
  done
done

echo
aoe_summary "$RUNS" aoe "MTU window client mode" '{:.0f}'
