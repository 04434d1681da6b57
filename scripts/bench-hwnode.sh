#!/usr/bin/env bash
# bench-hwnode.sh: issue 17's figures. The hardware-node image: build time
# cold (mmdebstrap downloads and installs the Debian packages) and cached
# (only the fabric's files laid over the cached Debian part), RUNS times
# each (default 3), and its size. Then LAB_RUNS (default 1) runs of the lab
# test TestPXEHardwareNode: two diskless VMs power on at once, PXE-boot
# onto their clones and enroll (power-on to agent alive, a figure per VM);
# an instance on the first answers ping (power-on to first instance); the
# second is reimaged and enrolls again. Root; make images first (about
# 10 min with the defaults).
#   usage: scripts/bench-hwnode.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
RUNS=${RUNS:-3}
LAB_RUNS=${LAB_RUNS:-1}
IMAGES=$PWD/work/images
ls "$IMAGES"/cache/linux-*/lib/modules/* >/dev/null 2>&1 || { echo "bench-hwnode: run make images first" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"; bench_end' EXIT
BENCH_COMMAND="scripts/bench-hwnode.sh (RUNS=$RUNS LAB_RUNS=$LAB_RUNS)" bench_begin "hardware-node image: build, size, PXE boot to enrolled, to first instance"
echo
# A fresh output directory with only what the image needs from images.sh
# (the kernel and the instance): no cached Debian part.
mkdir -p "$out/cache" "$out/instance"
cp -a "$IMAGES"/cache/linux-* "$out/cache/"
cp -a "$IMAGES"/instance/. "$out/instance/"
printf "%-8s %4s %10s %6s\n" build run seconds other
colds=() cacheds=()
for run in $(seq "$RUNS"); do
  rm -f "$out"/cache/hwnode-debian-base-*.tar "$out/.hwnode-debian-stamp"
  load_mark; t0=$(date +%s%N)
  scripts/hwnode-image.sh "$out" >/dev/null
  t=$(( ($(date +%s%N) - t0) / 1000000 )); o=$(load_other)
  colds+=("$(awk -v t=$t 'BEGIN{printf "%.1f", t/1000}')")
  printf "%-8s %4d %10s %5s%%%s\n" cold "$run" "${colds[-1]}" "$o" "$(load_flag "$o")"
  rm -f "$out/.hwnode-debian-stamp"
  load_mark; t0=$(date +%s%N)
  scripts/hwnode-image.sh "$out" >/dev/null
  t=$(( ($(date +%s%N) - t0) / 1000000 )); o=$(load_other)
  cacheds+=("$(awk -v t=$t 'BEGIN{printf "%.1f", t/1000}')")
  printf "%-8s %4d %10s %5s%%%s\n" cached "$run" "${cacheds[-1]}" "$o" "$(load_flag "$o")"
done
used=$(du -m "$out/hwnode-debian.img" | cut -f1)
apparent=$(( $(stat -c %s "$out/hwnode-debian.img") / 1048576 ))
base=$(du -m "$out"/cache/hwnode-debian-base-*.tar | cut -f1)
echo
echo "image: $used MiB used of $apparent MiB (ext4, sparse); cached Debian part $base MiB"
echo
printf "%-4s %-6s %14s %22s %6s\n" run node "enrolled s" "first instance s" other
enrolls=() firsts=()
for run in $(seq "$LAB_RUNS"); do
  load_mark
  log=$(go test -count=1 -timeout 40m -run '^TestPXEHardwareNode$' -v ./internal/lab/ 2>&1) || { echo "$log" | tail -40 >&2; echo "TestPXEHardwareNode failed; rerun: go test -run TestPXEHardwareNode -v ./internal/lab/" >&2; exit 1; }
  o=$(load_other)
  first=$(echo "$log" | sed -n "s/.*answers ping from the client .* after create, \([0-9.]*\) s after .*power-on.*/\1/p" | head -1)
  while read -r node secs; do
    enrolls+=("$secs")
    printf "%-4d %-6s %14s %22s %5s%%%s\n" "$run" "$node" "$secs" "$([ "$node" = pxe1 ] && echo "$first" || echo -)" "$o" "$(load_flag "$o")"
  done < <(echo "$log" | sed -n 's/.*hwnode_test.go:[0-9]*: \(pxe[0-9]\): power-on to agent enrolled and alive \([0-9.]*\) s;.*/\1 \2/p')
  firsts+=("$first")
done
echo
echo "cold build s (min/median/max): $(spread "${colds[@]}"); cached build s: $(spread "${cacheds[@]}")"
echo "power-on to agent enrolled s: $(spread "${enrolls[@]}"); power-on to first instance answering ping s: $(spread "${firsts[@]}")"
figure hwnode_build_cold s lower "${colds[@]}"
figure hwnode_build_cached s lower "${cacheds[@]}"
figure hwnode_image_used MiB lower "$used"
figure hwnode_enrolled s lower "${enrolls[@]}"
figure hwnode_first_instance s lower "${firsts[@]}"
