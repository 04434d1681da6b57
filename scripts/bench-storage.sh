#!/usr/bin/env bash
# bench-storage.sh: issue 14's figures as a guest sees them. In the lab, an
# instance's disk is on a storage pair the controller made; inside the
# guest a loop writes, fsyncs, drops its cache and reads back; each fault
# ROUNDS times (default 10): drain of the owner, kill -9 of the owner, kill
# -9 of the follower, the owner's AoE link down for 5 s (internal/lab
# TestStorageBench). Then the controller-driven volume operations
# (storagenode TestVolumeOpsBench). Prints markdown tables (about 8 min).
# Root; make images first.
#   usage: scripts/bench-storage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# scripts/bench-storage.sh at $(git rev-parse --short HEAD) on $(nproc) cores, $(date -u +%F)"
echo
echo "## storage faults under a running guest (ROUNDS=${ROUNDS:-10})"
echo
FABRIC_BENCH=storage ROUNDS=${ROUNDS:-10} go test -count=1 -timeout 60m -run '^TestStorageBench$' -v ./internal/lab/ 2>/dev/null |
  grep -E '^(\||guest|$)' | cat -s || { echo "TestStorageBench failed; rerun: FABRIC_BENCH=storage go test -run TestStorageBench -v ./internal/lab/" >&2; exit 1; }
echo
echo "## controller-driven volume operations on a pair (N=${N:-20}, RUNS=${RUNS_VOLOPS:-3})"
echo
FABRIC_BENCH=volops N=${N:-20} RUNS=${RUNS_VOLOPS:-3} go test -count=1 -timeout 20m -run '^TestVolumeOpsBench$' -v ./storagenode/ 2>/dev/null |
  grep -E '^\|' || { echo "TestVolumeOpsBench failed; rerun: FABRIC_BENCH=volops go test -run TestVolumeOpsBench -v ./storagenode/" >&2; exit 1; }
