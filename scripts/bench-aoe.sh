#!/usr/bin/env bash
# bench-aoe.sh: our AoE target (fabricd storage) beside vblade, in the same
# run, same client (fabric aoe bench), same veth pair, at MTU 9000 and 1500,
# windows 16 and 64. Prints a markdown table; CPU is the target process's
# utime+stime from /proc/PID/stat, per GiB moved.
#   usage: scripts/bench-aoe.sh [seconds-per-point]   (root; make build first)
#   MTUS, WINDOWS, TARGETS, MODES, CLIENTS (batch one-frame) narrow the
#   sweep, e.g. MTUS=9000 MODES=seqread CLIENTS=one-frame.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-4}
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
}
trap cleanup EXIT INT TERM
command -v vblade >/dev/null || { echo "vblade missing: run scripts/deps.sh" >&2; exit 1; }

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
# Busy jiffies of the whole machine (target, client and the kernel's
# softirq work, which on veth runs in whichever process sent the frame).
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
HZ=$(getconf CLK_TCK)

start_target() {
  case $1 in
    fabric) ip netns exec $S $BIN/fabricd --log-level warn storage --iface sto0 --data-dir $WORK/pool & ;;
    vblade) ip netns exec $S vblade 1 0 sto0 $WORK/pool/volumes/bench.img >/dev/null 2>&1 & ;;
  esac
  TPID=$!
  # ip netns exec execs the target: $! is its PID.
  for _ in $(seq 50); do
    ip netns exec $I $BIN/fabric aoe discover -i ini0 --wait 100ms -o json 2>/dev/null | grep -q '"shelf": 1,' && return 0
    sleep 0.1
  done
  echo "target $1 did not answer" >&2; exit 1
}
stop_target() { kill $TPID; wait $TPID 2>/dev/null || true; TPID=; }

printf '| MTU | target | window | client | mode | MB/s | IOPS | p99 µs | target CPU s/GiB | target CPU %% | machine CPU s/GiB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
for MTU in ${MTUS:-9000 1500}; do
  ip -n $S link set sto0 mtu $MTU; ip -n $I link set ini0 mtu $MTU
  for W in ${WINDOWS:-16 64}; do
    for T in ${TARGETS:-vblade fabric}; do
      start_target $T
      for M in ${MODES:-seqread seqwrite randread randwrite}; do
       # batch: our initiator as it runs (replies read in batches, the
       # requests they free sent in one sendmmsg); one-frame: a frame per
       # system call each way, as most initiators send at a low depth.
       for C in ${CLIENTS:-batch one-frame}; do
        flag=; [ "$C" = one-frame ] && flag=--one-frame
        t0=$(ticks $TPID); b0=$(busy); s0=$(date +%s.%N)
        out=$(ip netns exec $I $BIN/fabric aoe bench -i ini0 --window $W --mode $M --duration ${SECS}s $flag -o json e1.0)
        t1=$(ticks $TPID); b1=$(busy); s1=$(date +%s.%N)
        python3 - "$MTU" "$T" "$W/$C" "$M" "$out" "$t0" "$t1" "$HZ" "$s0" "$s1" "$b0" "$b1" <<'PY'
import json, sys
mtu, t, w, m, out, t0, t1, hz, s0, s1, b0, b1 = sys.argv[1:]
w = w.replace("/", " | ")
r = json.loads(out)
cpu = (int(t1) - int(t0)) / int(hz)
gib = r["bytes"] / 2**30
per = cpu / gib if gib else float("nan")
util = 100 * cpu / (float(s1) - float(s0))
mach = (int(b1) - int(b0)) / int(hz) / gib if gib else float("nan")
print(f"| {mtu} | {t} | {w} | {m} | {r['mb_per_s']:.0f} | {r['iops']:.0f} | {r['p99_us']:.0f} | {per:.2f} | {util:.0f} | {mach:.2f} |" + (f" errors: {r['errors']}" if r['errors'] else ""))
PY
       done
      done
      stop_target
    done
  done
done
echo
echo "command: scripts/bench-aoe.sh $SECS  ($(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%d))"
