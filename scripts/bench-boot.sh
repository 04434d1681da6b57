#!/usr/bin/env bash
# bench-boot.sh: the config node's boot services beside the references, in
# the same run, over one veth pair between two namespaces:
#   DHCP: perfdhcp (kea-admin) against `fabricd controller`, dnsmasq and
#         kea-dhcp4, each with a reservation for every MAC perfdhcp uses:
#         4-way exchanges (DORA) per second and drops, at rising rates.
#   TFTP: a 10 MiB kernel to 20 concurrent clients (curl, blksize 1468):
#         ours vs dnsmasq's TFTP vs tftpd-hpa.
#   HTTP: the same file to 20 concurrent clients: ours vs busybox httpd.
# Usage: scripts/bench-boot.sh [N_CLIENTS] [SECONDS]   (default 1000 10)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-boot: run as root (namespaces)"; exit 1; }
N=${1:-1000}
DUR=${2:-10}
RATES=${RATES:-"1000 2000 4000 8000 16000"}
make -s build
go build -o bin/benchcontroller ./scripts/benchcontroller

S=fbb-srv-$$ C=fbb-cli-$$
W=$(mktemp -d /tmp/fabric-bench-boot.XXXXXX); chmod 755 "$W"
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  ip netns del "$S" 2>/dev/null; ip netns del "$C" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
ip netns add "$S"; ip netns add "$C"
ip link add fbb$$a type veth peer name fbb$$b
ip link set fbb$$a netns "$S" name eth0; ip link set fbb$$b netns "$C" name eth0
ip -n "$S" addr add 10.235.0.1/16 dev eth0; ip -n "$C" addr add 10.235.0.2/16 dev eth0
for ns in "$S" "$C"; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
inS() { ip netns exec "$S" "$@"; }
bgS() { ip netns exec "$S" "$@" & PIDS+=($!); }   # $! is the server itself: ip netns exec execs it
inC() { ip netns exec "$C" "$@"; }
stop_last() { local p=${PIDS[-1]}; kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; unset 'PIDS[-1]'; sleep 0.3; }

echo "== boot services benchmark: $N DHCP clients with reservations, ${DUR}s per rate, $(nproc) cores, $(date -u +%F)"
# Reservations: our controller assigns them at registration; the
# references get the same MAC -> address table.
mkdir -p "$W/fabric" "$W/boot"
head -c $((10 << 20)) /dev/urandom > "$W/boot/kernel"
bgS bin/fabricd --log-level error controller --state-dir "$W/fabric" --api-addr 127.0.0.1:8443 \
  --boot-subnet 10.235.0.0/16 --server-ip 10.235.0.1 --first-ip 10.235.1.0 \
  --boot-iface eth0 --boot-dir "$W/boot" --ra=false
for _ in $(seq 100); do [ -s "$W/fabric/client.json" ] && break; sleep 0.1; done
inS bin/benchcontroller -controller https://127.0.0.1:8443 -ca "$W/fabric/ca/ca.crt" -token-file "$W/fabric/admin.token" -n "$N" -c 8 >/dev/null
inS env FABRIC_CONFIG="$W/fabric/client.json" bin/fabric node list -o json |
  python3 -c 'import json,sys; [print(n["mac"], n["ip"]) for n in json.load(sys.stdin)]' > "$W/table"
cut -d' ' -f1 "$W/table" > "$W/macs"
[ "$(wc -l < "$W/macs")" = "$N" ] || { echo "bench-boot: registered $(wc -l < "$W/macs") of $N"; exit 1; }

perf() { # label: runs perfdhcp at each rate against the server now running
  local label=$1 r out sent recv drops rate
  for r in $RATES; do
    out=$(inC perfdhcp -4 -l eth0 -B -M "$W/macs" -R "$N" -r "$r" -p "$DUR" -W 1000000 2>&1 || true)
    sent=$(echo "$out" | awk '/DISCOVER-OFFER/{f=1} f&&/sent packets:/{print $3; exit}')
    drops=$(echo "$out" | awk '/DISCOVER-OFFER/{f=1} f&&/drops:/{print $2; exit}')
    rdrops=$(echo "$out" | awk '/REQUEST-ACK/{f=1} f&&/drops:/{print $2; exit}')
    rate=$(echo "$out" | awk '/^Rate:/{print $2; exit}')
    printf "%-10s rate asked %5s/s: DORA/s %8s  DISCOVER sent %6s  dropped %5s (OFFER)  %5s (ACK)\n" "$label" "$r" "${rate:-?}" "${sent:-?}" "${drops:-?}" "${rdrops:-?}"
  done
}
echo
echo "-- DHCP (perfdhcp -4 -B -M macs -R $N -r RATE -p $DUR)"
perf fabric
stop_last

# dnsmasq: DHCP only, reservations, no ping check (as our server).
{ echo "port=0"; echo "interface=eth0"; echo "bind-interfaces"; echo "dhcp-range=10.235.0.0,static,255.255.0.0,1h"
  echo "dhcp-authoritative"; echo "no-ping"; echo "quiet-dhcp"; echo "dhcp-leasefile=$W/dnsmasq.leases"
  while read -r mac ip; do echo "dhcp-host=$mac,$ip"; done < "$W/table"; } > "$W/dnsmasq.conf"
bgS dnsmasq -k -C "$W/dnsmasq.conf" --log-facility="$W/dnsmasq.log"
sleep 0.5
perf dnsmasq
stop_last

# kea-dhcp4: memfile leases, the same reservations.
python3 - "$W" <<'EOF'
import json, sys
w = sys.argv[1]
res = [{"hw-address": m, "ip-address": ip} for m, ip in (l.split() for l in open(w + "/table"))]
cfg = {"Dhcp4": {"interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "raw"},
       "lease-database": {"type": "memfile", "persist": True, "name": w + "/kea.leases"},
       "valid-lifetime": 3600, "authoritative": True,
       "subnet4": [{"id": 1, "subnet": "10.235.0.0/16", "reservations": res}],
       "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": w + "/kea.log"}], "severity": "WARN"}]}}
json.dump(cfg, open(w + "/kea.json", "w"))
EOF
if command -v kea-dhcp4 >/dev/null; then
  mkdir -p /run/kea
  bgS kea-dhcp4 -c "$W/kea.json" > "$W/kea.out" 2>&1
  sleep 1
  perf kea
  stop_last
else
  echo "kea       not installed (scripts/deps.sh installs kea-dhcp4-server)"
fi

# TFTP and HTTP: 20 concurrent clients fetching the 10 MiB kernel.
fetch() { # label url extra-curl-args...: 20 concurrent fetches, prints aggregate MB/s
  local label=$1 url=$2; shift 2
  local t0 t1 i ok=0 cl=()
  t0=$(date +%s.%N)
  for i in $(seq 20); do inC curl -s -o "$W/got.$i" "$@" "$url" & cl+=($!); done
  wait "${cl[@]}"
  t1=$(date +%s.%N)
  for i in $(seq 20); do cmp -s "$W/got.$i" "$W/boot/kernel" && ok=$((ok + 1)); rm -f "$W/got.$i"; done
  awk -v l="$label" -v a="$t0" -v b="$t1" -v ok="$ok" 'BEGIN{s=b-a; printf "%-24s 20 x 10 MiB in %6.2f s = %7.1f MB/s aggregate, %2d/20 intact\n", l, s, 20*10.48576/s, ok}'
}
echo
echo "-- TFTP and HTTP: 20 concurrent clients, 10 MiB each (curl; TFTP blksize 1468)"
bgS bin/fabricd --log-level error controller --state-dir "$W/fabric" --api-addr 127.0.0.1:8443 \
  --boot-subnet 10.235.0.0/16 --server-ip 10.235.0.1 --boot-iface eth0 --boot-dir "$W/boot" --ra=false
sleep 1
fetch "fabric TFTP" tftp://10.235.0.1/kernel --tftp-blksize 1468
fetch "fabric HTTP" http://10.235.0.1:8080/files/kernel
stop_last
bgS dnsmasq -k --user=root --port=0 --interface=eth0 --bind-interfaces --enable-tftp --tftp-root="$W/boot" --log-facility="$W/dnsmasq-tftp.log"
sleep 0.5
fetch "dnsmasq TFTP" tftp://10.235.0.1/kernel --tftp-blksize 1468
stop_last
bgS in.tftpd -L -s "$W/boot" -a 10.235.0.1:69
sleep 0.5
fetch "tftpd-hpa TFTP" tftp://10.235.0.1/kernel --tftp-blksize 1468
stop_last
bgS busybox httpd -f -p 10.235.0.1:8081 -h "$W/boot"
sleep 0.3
fetch "busybox httpd HTTP" http://10.235.0.1:8081/kernel
stop_last
