#!/usr/bin/env bash
# The embedded DNS server beside Knot DNS, same records, both measured by dnsperf on loopback in one
# run. Needs Debian's knot and dnsperf (apt-get install -y knot dnsperf) and a release build of weir
# (nice cargo build --release --bin weir). Usage: scripts/bench-dns.sh [SECONDS] [CLIENTS] [NAMES] [ROUNDS]
# ROUNDS > 1 alternates the two servers that many times (a shared machine's load moves).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}; clients=${2:-8}; names=${3:-100}; rounds=${4:-1}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
weir=${WEIR:-target/release/weir}
[ -x "$weir" ] || { echo "build weir first: nice cargo build --release --bin weir" >&2; exit 1; }
# BENCH_DNS=path/to/bench_dns uses a bench_dns already built instead of building it.
if [ -n "${BENCH_DNS:-}" ]; then "$BENCH_DNS" "$work" "$names"
else nice -n 10 cargo run -q -p integration-tests --bin bench_dns -- "$work" "$names"; fi
wport=15353; kport=15354; mport=18181

mkdir -p "$work/manifests" "$work/knot"
# A cluster with no Ingresses ("observer") owns nothing, so it serves the prepared zone unchanged.
"$weir" local --manifests "$work/manifests" --db "$work/weir.db" --cluster-name observer \
  --dns-listen 127.0.0.1:$wport --metrics-addr 127.0.0.1:$mport --binding-domain example.com \
  > "$work/weir.log" 2>&1 &
cat > "$work/knot.conf" <<CONF
server:
    listen: 127.0.0.1@$kport
    rundir: $work/knot
database:
    storage: $work/knot
zone:
  - domain: example.com
    file: $work/example.com.zone
    journal-content: none
CONF
knotd -c "$work/knot.conf" > "$work/knot.log" 2>&1 &
sleep 2
dig_ok() { dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l 1 -c 1 -q 1 > /dev/null 2>&1; }
dig_ok $wport && dig_ok $kport || { cat "$work/weir.log" "$work/knot.log"; exit 1; }

echo "machine: $(nproc) CPUs; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
for target in "weir:$wport" "knot:$kport"; do
  name=${target%%:*}; port=${target##*:}
  echo "== round $round: $name (dnsperf -c $clients -l $secs, $names names, A queries; load $(cut -d' ' -f1 /proc/loadavg))"
  dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -c "$clients" -l "$secs" -q 200 2>&1 \
    | grep -E "Queries sent|Queries completed|Queries lost|Response codes|Queries per second|Average Latency|Latency StdDev"
done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
