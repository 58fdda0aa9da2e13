#!/usr/bin/env bash
# Runs every check and test of bkv on a fresh machine: installs what the tests
# need, then format and lint checks, unit/property/integration/end-to-end
# tests (real bkv-hsm processes on 127.0.0.1, SoftHSM2 tokens), and the demo
# as a smoke test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s (%ss) ==\n' "$*" "$SECONDS"; }

# System packages the tests need: SoftHSM2 (the PKCS#11 token the platform
# tests and `dev up --platform softhsm` use) and OpenSC's pkcs11-tool (tests
# list the tokens' keys with it).
APT_PACKAGES=(softhsm2 opensc)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

log "rustfmt"
cargo fmt --all -- --check

log "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The service binaries the end-to-end tests start (bkv-hsm, bkv-auditor; the
# same dev-profile artifacts the test build reuses), then every test in its
# own process, in parallel. (The workspace has no doctests: every code block
# in the docs is `text`.)
log "build"
cargo build --workspace --bins --locked
log "tests"
cargo nextest run --workspace --locked

log "demo (smoke)"
cargo run --locked --quiet --bin bkv -- demo >/dev/null

log "all checks passed"
