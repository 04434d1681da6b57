#!/usr/bin/env bash
# bench-storage.sh: issue 14's figures as a guest sees them. In the lab, an
# instance's disk is on a storage pair the controller made; inside the
# guest a loop writes, fsyncs, drops its cache and reads back; each fault
# ROUNDS times (default 10): drain of the owner, kill -9 of the owner, kill
# -9 of the follower, the owner's AoE link down for 5 s (internal/lab
# TestStorageBench). Then the controller-driven volume operations
# (storagenode TestVolumeOpsBench). Prints markdown tables with
# min/median/max (about 8 min) and their FIGURE lines. Root; make images
# first.
#   usage: scripts/bench-storage.sh    (make bench-storage records it)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
out=$(mktemp)
trap 'rm -f "$out"; bench_end' EXIT
ROUNDS=${ROUNDS:-10} N=${N:-20} RUNS_VOLOPS=${RUNS_VOLOPS:-3}
BENCH_COMMAND="scripts/bench-storage.sh (ROUNDS=$ROUNDS N=$N RUNS_VOLOPS=$RUNS_VOLOPS)" bench_begin "storage faults under a running guest; controller-driven volume operations"
load_mark
{
echo
echo "## storage faults under a running guest (ROUNDS=$ROUNDS)"
echo
FABRIC_BENCH=storage ROUNDS=$ROUNDS go test -count=1 -timeout 60m -run '^TestStorageBench$' -v ./internal/lab/ 2>/dev/null |
  grep -E '^(\||guest|$)' | cat -s || { echo "TestStorageBench failed; rerun: FABRIC_BENCH=storage go test -run TestStorageBench -v ./internal/lab/" >&2; exit 1; }
echo
echo "## controller-driven volume operations on a pair (N=$N, RUNS=$RUNS_VOLOPS)"
echo
FABRIC_BENCH=volops N=$N RUNS=$RUNS_VOLOPS go test -count=1 -timeout 20m -run '^TestVolumeOpsBench$' -v ./storagenode/ 2>/dev/null |
  grep -E '^\|' || { echo "TestVolumeOpsBench failed; rerun: FABRIC_BENCH=volops go test -run TestVolumeOpsBench -v ./storagenode/" >&2; exit 1; }
} > "$out"
other=$(load_other)
cat "$out"
echo
echo "other processes' CPU over the whole run: ${other}% of a core$(load_flag "$other")"
table_figures storage "$out"
