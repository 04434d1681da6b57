#!/usr/bin/env bash
# bench-record.sh NAME [ARGS]: runs scripts/bench-NAME.sh ARGS, keeps what
# it printed as docs/bench/NAME.txt (the record bench-check compares a new
# run against) and regenerates its table in docs/benchmarks.md
# (scripts/bench-doc.sh). A failed run records nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
shift
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"scripts/bench-$name.sh" "$@" | tee "$out"
mkdir -p docs/bench
cp "$out" "docs/bench/$name.txt"
scripts/bench-doc.sh
echo "recorded docs/bench/$name.txt; docs/benchmarks.md regenerated"
