#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: installs the benchmark peers, then runs the
# criterion benchmarks (backup format vs the AEAD limit and vs age; HSM core).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v age >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq age
fi
cargo bench -p bkv-client --bench backup
cargo bench -p bkv-hsm-core --bench core
cargo bench -p bkv-transparency --bench verify
