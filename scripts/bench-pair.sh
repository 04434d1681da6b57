#!/usr/bin/env bash
# bench-pair.sh: what a storage pair costs and how long failover stalls
# writes (storagenode/pair_bench_test.go, TestPairBench): fabric aoe bench
# against one node alone and against the pair, interleaved, RUNS runs
# (default 3) of SECS each (default 4s), MTU 1500; the full-resync rate;
# the write stall after KILLS (default 10) kills of the owner and of the
# follower. Prints markdown tables with min/median/max (about 6 min) and
# their FIGURE lines for scripts/bench-check.sh. Root; make build first.
#   usage: scripts/bench-pair.sh    (make bench-pair records it)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
[ -x bin/fabric ] || { echo "run make build first" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"; bench_end' EXIT
RUNS=${RUNS:-3} SECS=${SECS:-4s} KILLS=${KILLS:-10}
BENCH_COMMAND="scripts/bench-pair.sh (RUNS=$RUNS SECS=$SECS KILLS=$KILLS)" bench_begin "storage pair: replication's cost, resync rate, failover stalls"
load_mark
FABRIC_BENCH=pair FABRIC_CLI=$PWD/bin/fabric RUNS=$RUNS SECS=$SECS KILLS=$KILLS \
  go test -count=1 -timeout 30m -run '^TestPairBench$' -v ./storagenode/ 2>&1 |
  grep -v -E '^(=== RUN|--- PASS|PASS|ok )' | sed -E 's/^ +pair_(test|bench_test)\.go:[0-9]+: /  /' > "$out" ||
  { cat "$out"; echo "TestPairBench failed" >&2; exit 1; }
other=$(load_other)
cat "$out"
echo
echo "other processes' CPU over the whole run: ${other}% of a core$(load_flag "$other")"
table_figures pair "$out"
