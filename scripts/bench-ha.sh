#!/usr/bin/env bash
# bench-ha.sh: issue 18's figures. The time from a hardware node's power
# loss to its HA instance answering ping from another node, ROUNDS times
# (default 5) in the lab (internal/lab TestHABench: QEMU under software
# emulation boots the restarted guest); then the scheduler's Go benchmarks
# (10,000 instances onto 1,000 nodes; a 50-instance drain plan), COUNT runs
# each (default 3). Prints markdown tables (about 4 min). Root; make images
# first.
#   usage: scripts/bench-ha.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# scripts/bench-ha.sh at $(git rev-parse --short HEAD) on $(nproc) cores, $(date -u +%F)"
echo
echo "## power loss to the instance answering again (ROUNDS=${ROUNDS:-5})"
echo
FABRIC_BENCH=ha ROUNDS=${ROUNDS:-5} go test -count=1 -timeout 30m -run '^TestHABench$' -v ./internal/lab/ 2>&1 |
  grep -E '^(\||$)' | cat -s || { echo "TestHABench failed; rerun: FABRIC_BENCH=ha go test -run TestHABench -v ./internal/lab/" >&2; exit 1; }
echo
echo "## scheduler (go test -bench, COUNT=${COUNT:-3})"
echo
echo "| benchmark | runs (ms per op) | goal |"
echo "|---|---|---|"
go test -run '^$' -bench 'Place10kOn1k|Drain50' -count "${COUNT:-3}" ./controller/scheduler/ |
  awk '/^Benchmark/ { name=$1; sub(/-[0-9]+$/, "", name); ms[name] = ms[name] sprintf("%s%.2f", (ms[name] == "" ? "" : ", "), $3 / 1e6) }
       END {
         goal["BenchmarkPlace10kOn1k"] = "under 1000 ms"; goal["BenchmarkDrain50"] = "under 10 ms"
         for (n in ms) printf "| %s | %s | %s |\n", n, ms[n], goal[n]
       }' | sort
