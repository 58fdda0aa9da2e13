#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: installs the benchmark peers, then runs the
# criterion benchmarks (backup format vs the AEAD limit and vs age; HSM core; the core boundary).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v age >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq age
fi
cargo bench -p bkv-client --bench backup
cargo bench -p bkv-hsm-core --bench core
# One crossing of the core boundary, in process and over the Unix socket.
cargo bench -p bkv-core-service --bench boundary
cargo bench -p bkv-transparency --bench verify
# Peak memory of a 1 GiB backup and restore (the test suite runs 128 MiB); the system test
# starts the workspace's binaries, built first.
cargo build --workspace --all-targets
BKV_BIG_FILE_MIB=1024 cargo nextest run -p bkv-system-tests --no-capture -E 'test(memory_stays_bounded_for_a_large_file)'
