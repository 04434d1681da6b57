#!/usr/bin/env bash
# bench-aoe-linux.sh: the Linux aoe driver as the client. A QEMU guest
# (software emulation, Debian's kernel and its aoe module) runs fio against
# AoE volumes of our target (fabricd storage) and of vblade, in the same
# run: each target in a namespace of its own, joined to the guest's tap by
# a bridge (a switch), one volume per target, the windows advertised with
# --buffers / -b. The figure is the target's CPU per GiB moved (utime+stime
# of its process from /proc/PID/stat over each fio job), not the guest's
# speed, which software emulation bounds.
#
# The guest boots once per MTU and runs the job list the host gave it:
# ROUNDS rounds, and in each, for each mode, every target in turn (ours
# first in odd rounds, vblade first in even ones). It prints BENCH-BEGIN
# and BENCH-END lines on its serial console; the host reads the targets'
# CPU and the machine's other load at each.
#   usage: scripts/bench-aoe-linux.sh [seconds-per-job]   (root; make build
#   and make images first; default 5 s: about 25 min for the full sweep)
#   MTUS (9000 1500), WINDOWS (16 64), MODES (seqread seqwrite randread
#   randwrite), ROUNDS (3), QD (fio iodepth, 32) narrow or change it.
#   PEER_FABRICD=PATH: the peer is that fabricd build instead of vblade
#   (an A/B of two versions of our target; printed as "peer").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
SECS=${1:-5}
ROUNDS=${ROUNDS:-3}
MTUS=${MTUS:-9000 1500} WINDOWS=${WINDOWS:-16 64} MODES=${MODES:-seqread seqwrite randread randwrite} QD=${QD:-32}
BIN=$PWD/bin
TAG=fl$$
BR=$TAG-br
WORK=$(mktemp -d /tmp/fabric-bench-aoe-linux.XXXXXX)
PIDS=()
cleanup() {
  [ -f "$WORK/qemu.pid" ] && kill "$(cat "$WORK/qemu.pid")" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in $(ip netns list | awk -v t=$TAG- 'index($1, t) == 1 {print $1}'); do ip netns del "$n"; done
  rm -rf "$WORK"
  bench_end
}
trap cleanup EXIT INT TERM

aoe_peer
command -v fio >/dev/null || { echo "fio missing: run scripts/deps.sh" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "qemu missing: run scripts/deps.sh" >&2; exit 1; }
[ -x "$BIN/fabricd" ] || { echo "run make build first" >&2; exit 1; }
K=$(ls -d work/images/cache/linux-* 2>/dev/null | head -n1)
[ -n "$K" ] || { echo "no Debian kernel in work/images/cache: run make images first" >&2; exit 1; }
KVER=${K##*/linux-}
MD=$K/lib/modules/$KVER/kernel

BENCH_COMMAND="scripts/bench-aoe-linux.sh $SECS (${PEER_FABRICD:+PEER_FABRICD=$PEER_FABRICD }ROUNDS=$ROUNDS MTUS=\"$MTUS\" WINDOWS=\"$WINDOWS\" MODES=\"$MODES\" QD=$QD)" \
  bench_begin "AoE target beside $PEER, the Linux aoe driver ($KVER) in a QEMU guest running fio, $SECS s per job"
echo "client:  fio $(fio --version | sed 's/^fio-//') in the guest (-smp 1, -accel tcg), libaio, direct, iodepth $QD; 1 MiB sequential, 4 KiB random I/O"

# The guest's initramfs: busybox, the NIC and aoe modules, fio with its
# libraries, and an /init that runs /jobs. The job list goes in a second
# cpio archive appended per boot (the kernel unpacks both).
G=$WORK/guest
mkdir -p "$G"/{bin,proc,sys,dev,tmp,lib/modules,lib64,lib/x86_64-linux-gnu,usr/bin}
cp /bin/busybox "$G/bin/busybox"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover drivers/net/net_failover \
         drivers/net/virtio_net drivers/block/aoe/aoe; do
  f=$MD/$m.ko
  if [ -f "$f" ]; then cp "$f" "$G/lib/modules/"
  elif [ -f "$f.xz" ]; then xz -dc "$f.xz" > "$G/lib/modules/$(basename "$m").ko"
  else echo "module $m missing from $KVER" >&2; exit 1; fi
done
cp "$(command -v fio)" "$G/usr/bin/fio"
for l in $(ldd "$(command -v fio)" | awk '/=>/{print $3}'); do cp -L "$l" "$G/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$G/lib64/"
cat > "$G/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
say() { echo "$*" > /dev/ttyS0; }
MTU=1500
for a in $(cat /proc/cmdline); do case "$a" in bench.mtu=*) MTU=${a#bench.mtu=} ;; esac; done
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up; ip link set eth0 mtu "$MTU" up
insmod /lib/modules/aoe.ko aoe_iflist=eth0 || { say "BENCH-FAIL insmod aoe"; poweroff -f; }
for d in $(awk '{print $2}' /jobs | sort -u); do
  i=0
  while [ ! -b /dev/etherd/$d ]; do
    i=$((i+1)); [ $((i % 10)) = 0 ] && echo > /dev/etherd/discover
    [ $i -gt 300 ] && { say "BENCH-FAIL /dev/etherd/$d did not appear"; poweroff -f; }
    sleep 0.1
  done
done
say "BENCH-READY $(cat /sys/block/etherd*/mac 2>/dev/null | tr '\n' ' ')"
while read -r n dev rw bs secs qd; do
  say "BENCH-BEGIN $n"
  out=$(fio --name=j$n --filename=/dev/etherd/$dev --direct=1 --ioengine=libaio --thread \
    --rw=$rw --bs=$bs --iodepth=$qd --runtime=$secs --time_based --minimal 2>&1 | tail -n1)
  say "BENCH-END $n $out"
done < /jobs
say "BENCH-DONE"
poweroff -f
EOF
chmod +x "$G/init"
(cd "$G" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/base.cpio.gz"
echo "guest:   initramfs $(du -m "$WORK/base.cpio.gz" | cut -f1) MiB compressed"

# The switch, the guest's tap on it, and one namespace per target.
ip netns add $BR
ip -n $BR link set lo up
ip -n $BR link add br0 type bridge
ip -n $BR link set br0 up
ip -n $BR tuntap add tap0 mode tap
ip -n $BR link set tap0 master br0 up
# One shelf per target and window: 1, 2, ... in the order below.
declare -A DEV TPID
i=0
for W in $WINDOWS; do
  for T in fabric $PEER; do
    i=$((i+1))
    ns=$TAG-$T$W
    ip netns add $ns
    ip -n $ns link set lo up
    ip link add ${TAG}a$i type veth peer name ${TAG}b$i
    ip link set ${TAG}a$i netns $BR; ip link set ${TAG}b$i netns $ns name sto0
    ip -n $BR link set ${TAG}a$i master br0 up
    ip -n $ns link set sto0 up
    DEV[$T$W]=e$i.0
    pool=$WORK/pool-$T$W
    mkdir -p $pool
    $BIN/fabricd storage volume --data-dir $pool create bench 512M --addr $i.0 >/dev/null
    dd if=/dev/urandom of=$pool/volumes/bench.img bs=1M count=512 conv=notrunc status=none
    cat $pool/volumes/bench.img > /dev/null
    case $T in
      fabric) ip netns exec $ns $BIN/fabricd --log-level warn storage --iface sto0 --data-dir $pool --buffers $W & ;;
      vblade) ip netns exec $ns vblade -b $W $i 0 sto0 $pool/volumes/bench.img >/dev/null 2>&1 & ;;
      peer) ip netns exec $ns "$PEER_FABRICD" --log-level warn storage --iface sto0 --data-dir $pool --buffers $W & ;;
    esac
    # ip netns exec execs the target: $! is its PID.
    TPID[$T$W]=$!; PIDS+=($!)
  done
done

ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
RUNS=$WORK/runs.tsv
: > $RUNS
echo
printf '%-5s %-5s %-6s %-9s %-7s %8s %8s %10s %6s\n' round MTU window mode target MB/s IOPS "CPU s/GiB" other
for MTU in $MTUS; do
  for l in $(ip -n $BR -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -v '^lo$'); do ip -n $BR link set "$l" mtu $MTU; done
  for key in "${!DEV[@]}"; do ip -n $TAG-$key link set sto0 mtu $MTU; done
  # The job list: what each job is, for the host; what to run, for the guest.
  declare -A JOB=()
  : > $WORK/jobs
  n=0
  for R in $(seq "$ROUNDS"); do
    order="fabric $PEER"; [ $((R % 2)) = 0 ] && order="$PEER fabric"
    for M in $MODES; do
      case $M in
        seqread) rw=read bs=1M ;; seqwrite) rw=write bs=1M ;;
        randread) rw=randread bs=4k ;; randwrite) rw=randwrite bs=4k ;;
        *) echo "unknown mode $M" >&2; exit 1 ;;
      esac
      for W in $WINDOWS; do
        for T in $order; do
          n=$((n+1))
          JOB[$n]="$R $MTU $W $M $T"
          echo "$n ${DEV[$T$W]} $rw $bs $SECS $QD" >> $WORK/jobs
        done
      done
    done
  done
  mkdir -p $WORK/jobs.d; cp $WORK/jobs $WORK/jobs.d/jobs
  (cd $WORK/jobs.d && echo jobs | cpio -o -H newc --quiet | gzip -1) > $WORK/jobs.cpio.gz
  cat $WORK/base.cpio.gz $WORK/jobs.cpio.gz > $WORK/initrd.img
  rm -f $WORK/qemu.pid
  t_boot=$(date +%s)
  done_ok=0
  while IFS= read -r line; do
    line=${line%$'\r'}
    printf '%s\n' "$line" >> $WORK/console.log
    # A kernel message may share the line: the marker starts where it is.
    case "$line" in *BENCH-*) line="BENCH-${line#*BENCH-}" ;; esac
    read -r -a w <<< "$line"
    case "${w[0]:-}" in
      BENCH-READY)
        echo "# MTU $MTU: guest ready after $(( $(date +%s) - t_boot )) s, targets at ${w[*]:1}" ;;
      BENCH-FAIL)
        tail -n 20 $WORK/console.log >&2; exit 1 ;;
      BENCH-BEGIN)
        read -r R _ W M T <<< "${JOB[${w[1]}]}"
        load_mark
        t0=$(ticks ${TPID[$T$W]}) ;;
      BENCH-END)
        t1=$(ticks ${TPID[$T$W]})
        other=$(load_other)
        if python3 - "$R" "$MTU" "$W" "$M" "$T" "${w[2]:-}" "$t0" "$t1" "$HZ" "$other" "$(load_flag "$other")" "$RUNS" <<'PY'
import sys
r, mtu, w, m, t, terse, t0, t1, hz, other, flag, runs = sys.argv[1:]
f = terse.split(";")
if len(f) < 50 or f[0] != "3":
    sys.exit(f"fio did not finish job {r}/{m}/{t}{w}: {terse}")
# terse v3: read KiB 6, IOPS 8, runtime ms 9; write KiB 47, IOPS 49, runtime ms 50
kib, iops, ms = (int(f[5]), int(f[7]), int(f[8])) if m.endswith("read") else (int(f[46]), int(f[48]), int(f[49]))
if f[4] != "0":
    sys.exit(f"fio error {f[4]} in job {r}/{m}/{t}{w} (MTU {mtu}): the guest's console follows")
gib = kib / 2**20
cpu = (int(t1) - int(t0)) / int(hz)
per = cpu / gib if gib else float("nan")
mbps = kib * 1024 / 1e6 / (ms / 1000) if ms else 0
print(f"{r:<5} {mtu:<5} {w:<6} {m:<9} {t:<7} {mbps:8.1f} {iops:8d} {per:10.2f} {other:>5}%{flag}", flush=True)
with open(runs, "a") as fh:
    fh.write(f"{mtu}\t{w}\t{m}\t{t}\t{mbps}\t{per}\n")
PY
        then :; else grep -v '^BENCH' $WORK/console.log | tail -n 20 >&2; exit 1; fi
        ;;
      BENCH-DONE) done_ok=1 ;;
    esac
  done < <(ip netns exec $BR qemu-system-x86_64 -accel tcg -cpu max -m 768 -smp 1 -nographic -nodefaults -no-reboot \
      -serial stdio -pidfile $WORK/qemu.pid -kernel "$K/boot/vmlinuz-$KVER" -initrd $WORK/initrd.img \
      -append "console=ttyS0 quiet loglevel=3 panic=-1 bench.mtu=$MTU" \
      -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:be:0c:01 2>&1)
  [ $done_ok = 1 ] || { tail -n 20 $WORK/console.log >&2; echo "the guest stopped before its last job (MTU $MTU)" >&2; exit 1; }
done

echo
aoe_summary "$RUNS" aoe-linux "MTU window mode" '{:.1f}'
