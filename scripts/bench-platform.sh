#!/usr/bin/env bash
# Cost of the PKCS#11 platform against the software platform, for
# BENCHMARKS.md: the platform operations of one durable write (criterion),
# then full recoveries on a 3-node release fleet with each platform,
# alternating, ROUNDS times (medians are read off the printed rows).
# Usage: scripts/bench-platform.sh   (installs softhsm2)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
if ! command -v softhsm2-util >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq softhsm2
fi
cargo bench -p bkv-hsm-platform --bench platform
cargo build --profile production --locked --bins >/dev/null
BKV=target/production/bkv
for round in $(seq "$ROUNDS"); do
  for platform in software softhsm; do
    d=$(mktemp -d)
    $BKV dev up --dir "$d" --nodes 3 --platform "$platform" > "$d/up.log" 2>&1 &
    up=$!
    for _ in $(seq 150); do grep -q ready "$d/up.log" 2>/dev/null && break; sleep 0.2; done
    for c in 1 8; do
      echo "round=$round platform=$platform $($BKV --config "$d/client.toml" dev loadgen --users 200 --concurrency $c --seconds "$SECS" | tr -d '\n ')"
    done
    kill -TERM $up; wait $up || true
    rm -rf "$d"
  done
done
