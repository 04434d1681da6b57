#!/usr/bin/env bash
# Measures the controller: registrations per second (16 concurrent API
# clients) and `fabric node list` latency with N nodes registered. Each of
# RUNS runs starts a fresh controller (HTTPS on loopback, bbolt with an
# fsync per commit), registers N hardware nodes, then times 10 listings
# of each output format, each the whole CLI process. Prints every run and
# the min/median/max over runs.
# Usage: scripts/bench-controller.sh [N]   (default 10000; RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
N=${1:-10000}
RUNS=${RUNS:-3}
make -s build
go build -o bin/benchcontroller ./scripts/benchcontroller
state= pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; [ -n "$state" ] && rm -rf "$state"; state=; return 0; }
trap 'stop; bench_end' EXIT
BENCH_COMMAND="scripts/bench-controller.sh $N (RUNS=$RUNS)" bench_begin "controller: $N registrations by 16 clients, then fabric node list"
echo "state on $(df --output=source /tmp | tail -1)"
echo
printf "%-4s %8s %14s %14s %22s %22s %6s\n" run "reg/s" "reg p50 ms" "reg p99 ms" "list table med/max ms" "list json med/max ms" "other"
regs=() p50s=() p99s=() tables=() jsons=()
for run in $(seq "$RUNS"); do
  state=$(mktemp -d)
  port=$((20000 + RANDOM % 10000))
  bin/fabricd --log-level warn controller --state-dir "$state" --api-addr 127.0.0.1:$port --boot-subnet 10.20.0.0/16 &
  pid=$!
  for _ in $(seq 100); do [ -s "$state/client.json" ] && break; sleep 0.1; done
  export FABRIC_CONFIG=$state/client.json
  load_mark
  out=$(bin/benchcontroller -controller https://127.0.0.1:$port -ca "$state/ca/ca.crt" -token-file "$state/admin.token" -n "$N" -c 16)
  reg=$(echo "$out" | awk -F'\t' '/^registrations\/s/{print $2}')
  p50=$(echo "$out" | awk '/^register latency/{print $4}')
  p99=$(echo "$out" | awk '/^register latency/{print $7}')
  lists=()
  for fmt in table json; do
    ts=()
    for _ in $(seq 10); do
      t0=$(date +%s%N); bin/fabric node list -o $fmt > /dev/null; t1=$(date +%s%N)
      ts+=($(( (t1 - t0) / 1000000 )))
    done
    sorted=($(printf '%s\n' "${ts[@]}" | sort -n))
    lists+=("${sorted[4]}" "${sorted[9]}")
  done
  other=$(load_other)
  listed=$(bin/fabric node list -o json | grep -c '"mac"')
  [ "$listed" = "$N" ] || { echo "run $run: listed $listed nodes of $N" >&2; exit 1; }
  printf "%-4s %8s %14s %14s %22s %22s %5s%%%s\n" "$run" "$reg" "$p50" "$p99" "${lists[0]}/${lists[1]}" "${lists[2]}/${lists[3]}" "$other" "$(load_flag "$other")"
  regs+=("$reg") p50s+=("$p50") p99s+=("$p99") tables+=("${lists[0]}") jsons+=("${lists[2]}")
  stop
done
echo
echo "over $RUNS runs, min/median/max:"
echo "  registrations/s (16 clients)          $(spread "${regs[@]}")"
echo "  register latency p50 ms                $(spread "${p50s[@]}")"
echo "  register latency p99 ms                $(spread "${p99s[@]}")"
echo "  node list, table, median of 10 ms      $(spread "${tables[@]}")"
echo "  node list -o json, median of 10 ms     $(spread "${jsons[@]}")"
figure controller.register_per_s "reg/s" higher "${regs[@]}"
figure controller.register_p99_ms ms lower "${p99s[@]}"
figure controller.list_table_ms ms lower "${tables[@]}"
figure controller.list_json_ms ms lower "${jsons[@]}"
