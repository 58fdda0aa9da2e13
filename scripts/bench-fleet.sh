#!/usr/bin/env bash
# Fleet benchmark for BENCHMARKS.md: recovery load (full OPAQUE logins, two
# majority commits each) against 1-, 3- and 5-node fleets, and etcd (3 nodes,
# the same machine, same run) as the peer for the cost of one Raft commit.
# Usage: scripts/bench-fleet.sh   (needs `cargo build --release`; installs etcd)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
if ! command -v etcd >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client
fi
cargo build --release --locked --bins >/dev/null
BKV=target/release/bkv
for n in 1 3 5; do
  d=$(mktemp -d)
  $BKV dev up --dir "$d" --nodes "$n" > "$d/up.log" 2>&1 &
  up=$!
  for _ in $(seq 100); do grep -q ready "$d/up.log" 2>/dev/null && break; sleep 0.2; done
  for c in 1 8; do
    echo "bkv nodes=$n $($BKV --config "$d/client.toml" dev loadgen --users 200 --concurrency $c --seconds "$SECS" | tr -d '\n ' )"
  done
  kill -TERM $up; wait $up || true
  rm -rf "$d"
done
# etcd: three members on loopback, default (fsync) settings.
d=$(mktemp -d); pids=()
P=$((20000 + RANDOM % 20000))
cluster="e0=http://127.0.0.1:$((P+1)),e1=http://127.0.0.1:$((P+3)),e2=http://127.0.0.1:$((P+5))"
for i in 0 1 2; do
  cp=$((P + 2*i)); pp=$((P + 2*i + 1))
  etcd --name e$i --data-dir "$d/e$i" --listen-client-urls http://127.0.0.1:$cp \
    --advertise-client-urls http://127.0.0.1:$cp --listen-peer-urls http://127.0.0.1:$pp \
    --initial-advertise-peer-urls http://127.0.0.1:$pp --initial-cluster "$cluster" \
    --initial-cluster-state new > "$d/e$i.log" 2>&1 &
  pids+=($!)
done
sleep 3
for c in 1 8; do
  echo "etcd nodes=3 $(python3 scripts/etcd_put_load.py http://127.0.0.1:$P $c "$SECS")"
done
kill "${pids[@]}"; wait || true
rm -rf "$d"
