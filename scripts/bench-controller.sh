#!/usr/bin/env bash
# Measures the controller: registrations per second (16 concurrent API
# clients) and `fabric node list` latency with N nodes registered.
# Usage: scripts/bench-controller.sh [N]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
make -s build
go build -o bin/benchcontroller ./scripts/benchcontroller
state=$(mktemp -d)
port=$((20000 + RANDOM % 10000))
bin/fabricd --log-level warn controller --state-dir "$state" --api-addr 127.0.0.1:$port --boot-subnet 10.20.0.0/16 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 100); do [ -s "$state/client.json" ] && break; sleep 0.1; done
export FABRIC_CONFIG=$state/client.json
echo "== controller benchmark: $N registrations, state on $(df --output=source "$state" | tail -1) ($(nproc) cores)"
bin/benchcontroller -controller https://127.0.0.1:$port -ca "$state/ca/ca.crt" -token-file "$state/admin.token" -n "$N" -c 16
for fmt in table json; do
  ts=()
  for _ in $(seq 10); do
    t0=$(date +%s%N); bin/fabric node list -o $fmt > /dev/null; t1=$(date +%s%N)
    ts+=($(( (t1 - t0) / 1000000 )))
  done
  sorted=($(printf '%s\n' "${ts[@]}" | sort -n))
  echo -e "node list -o $fmt ($N nodes)\tmedian ${sorted[5]} ms, max ${sorted[9]} ms (10 runs, whole CLI process)"
done
echo "nodes listed: $(bin/fabric node list -o json | grep -c '"mac"')"
