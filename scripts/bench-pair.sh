#!/usr/bin/env bash
# bench-pair.sh: what a storage pair costs and how long failover stalls
# writes (storagenode/pair_bench_test.go, TestPairBench): fabric aoe bench
# against one node alone and against the pair, interleaved, RUNS runs
# (default 3) of SECS each (default 4s), MTU 1500; the full-resync rate;
# the write stall after KILLS (default 10) kills of the owner and of the follower.
# Prints markdown tables (about 6 min). Root; make build first.
#   usage: scripts/bench-pair.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x bin/fabric ] || { echo "run make build first" >&2; exit 1; }
echo "# scripts/bench-pair.sh at $(git rev-parse --short HEAD) on $(nproc) cores, $(date -u +%F)"
FABRIC_BENCH=pair FABRIC_CLI=$PWD/bin/fabric RUNS=${RUNS:-3} SECS=${SECS:-4s} KILLS=${KILLS:-10} \
  go test -count=1 -timeout 30m -run '^TestPairBench$' -v ./storagenode/ 2>&1 |
  grep -v -E '^(=== RUN|--- PASS|PASS|ok )' | sed -E 's/^ +pair_(test|bench_test)\.go:[0-9]+: /  /'
