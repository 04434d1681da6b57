#!/usr/bin/env bash
# bench-ha.sh: issue 18's figures. The time from a hardware node's power
# loss to its HA instance answering ping from another node, ROUNDS times
# (default 5) in the lab (internal/lab TestHABench: QEMU under software
# emulation boots the restarted guest); then the scheduler's Go benchmarks
# (10,000 instances onto 1,000 nodes; a 50-instance drain plan), COUNT runs
# each (default 3). Prints markdown tables with min/median/max (about 4
# min) and their FIGURE lines. Root; make images first.
#   usage: scripts/bench-ha.sh    (make bench-ha records it)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
out=$(mktemp)
trap 'rm -f "$out"; bench_end' EXIT
ROUNDS=${ROUNDS:-5} COUNT=${COUNT:-3}
BENCH_COMMAND="scripts/bench-ha.sh (ROUNDS=$ROUNDS COUNT=$COUNT)" bench_begin "hardware node failure: power loss to the instance answering again; the scheduler"
load_mark
{
echo
echo "## power loss to the instance answering again (ROUNDS=$ROUNDS)"
echo
FABRIC_BENCH=ha ROUNDS=$ROUNDS go test -count=1 -timeout 30m -run '^TestHABench$' -v ./internal/lab/ 2>&1 |
  grep -E '^(\||$)' | cat -s || { echo "TestHABench failed; rerun: FABRIC_BENCH=ha go test -run TestHABench -v ./internal/lab/" >&2; exit 1; }
echo
echo "## scheduler (go test -bench, COUNT=$COUNT)"
echo
echo "| benchmark | ms per op min/med/max | goal |"
echo "|---|---|---|"
go test -run '^$' -bench 'Place10kOn1k|Drain50' -count "$COUNT" ./controller/scheduler/ |
  awk '/^Benchmark/ { name=$1; sub(/-[0-9]+$/, "", name); print name, $3 / 1e6 }' | sort -k1,1 -k2,2g |
  awk '{ v[$1] = v[$1] " " $2 } END {
         goal["BenchmarkPlace10kOn1k"] = "under 1000 ms"; goal["BenchmarkDrain50"] = "under 10 ms"
         for (n in v) { k = split(substr(v[n], 2), a, " "); printf "| %s | %.2f / %.2f / %.2f | %s |\n", n, a[1], a[int((k + 1) / 2)], a[k], goal[n] } }' | sort
} > "$out"
other=$(load_other)
cat "$out"
echo
echo "other processes' CPU over the whole run: ${other}% of a core$(load_flag "$other")"
table_figures ha "$out"
