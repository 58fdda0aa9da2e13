#!/usr/bin/env bash
# Jepsen-style chaos runs against a 5-node fleet (crates/system-tests/tests/it/chaos.rs):
#
#   scripts/chaos.sh N [SEED]
#
# runs N randomized schedules of partitions (symmetric and one-way), node
# kills with restarts, pauses (SIGSTOP) and wall-clock jumps, with the
# guess-limit checker after each. Schedule k uses seed SEED+k; the seed is
# printed, and `scripts/chaos.sh N SEED` replays the same schedules. CI runs
# a short set (3 schedules) as part of the ordinary test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100}"
seed="${2:-$(date +%s)}"
if ! dpkg -s libfaketime >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libfaketime
fi
# The test starts the bkv and bkv-hsm binaries of the workspace build (with the test-only
# features, as the test suite builds them).
cargo build --workspace --all-targets --locked
echo "chaos: $n schedules, seed $seed"
BKV_CHAOS_SCHEDULES="$n" BKV_CHAOS_SEED="$seed" \
    cargo nextest run --locked -p bkv-system-tests --profile chaos --no-capture \
    -E 'test(/^chaos::guess_limit/)'
