#!/usr/bin/env bash
# Runs every check and test of bkv on a fresh machine: installs what the tests
# need, then format and lint checks, unit/property/integration/end-to-end
# tests (real bkv-hsm processes on 127.0.0.1, SoftHSM2 tokens), and the demo
# as a smoke test. This is the README's test command and what CI runs.
set -euo pipefail
# A fresh build gains nothing from incremental state (it only costs disk: ~1.6 GB).
export CARGO_INCREMENTAL=0
cd "$(dirname "$0")/.."

log() { printf '\n== %s (%ss) ==\n' "$*" "$SECONDS"; }

# System packages the tests need: SoftHSM2 (the PKCS#11 token the platform
# tests and `dev up --platform softhsm` use) and OpenSC's pkcs11-tool (tests
# list the tokens' keys with it), libfaketime (the chaos test jumps node
# clocks with it), procps (`kill`: the client's crash hook in test builds kills `bkv` with it).
# The browser client: Debian's wasm32 Rust (rustc-web, cargo-web, rust-web-src), its linker
# and C compiler (lld-19, clang-19, llvm-19), and Chromium for the headless browser tests.
APT_PACKAGES=(softhsm2 opensc libfaketime procps rustc-web cargo-web rust-web-src lld-19 clang-19 llvm-19 chromium)
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)
# The installs wait on the network and the native build on the CPU: they run side by side.
install() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  fi
  # An S3-compatible server for the object-storage tests (crates/system-tests/tests/it/s3.rs
  # start it on a free 127.0.0.1 port): moto, from PyPI.
  if ! command -v moto_server >/dev/null 2>&1; then
    log "installing moto[server]"
    python3 -m pip install --quiet --disable-pip-version-check "moto[server]"
  fi
  # playwright-core drives Chromium over the DevTools protocol (crates/web/tests/browser.mjs).
  if [ ! -d crates/web/tests/node_modules/playwright-core ]; then
    log "installing playwright-core"
    (cd crates/web/tests && npm ci --no-audit --no-fund --silent)
  fi
}
install_log="$(mktemp)"
install >"$install_log" 2>&1 &
install_pid=$!
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

log "rustfmt"
cargo fmt --all -- --check

# Clippy runs inside the one build: clippy-driver wraps rustc for bkv's own
# crates exactly as `cargo clippy` does, but producing real artifacts, so the
# lints and the tests share a single compilation. All targets: libraries,
# the service binaries the end-to-end tests start (bkv-hsm, bkv-auditor),
# tests and benches. (The workspace has no doctests: every code block in the
# docs is `text`.)
# The user's bkv links the client library only: no frontend, node, auditor or operator code.
log "dependency boundary: bkv-cli"
if cargo tree -p bkv-cli --locked -e normal,build,dev --prefix none |
  grep -E '^bkv-(frontend|hsm-node|hsm-core|hsm-platform|auditor|operator|service|admin) '; then
  echo "bkv-cli depends on a service crate (above); move that code to bkv-admin" >&2
  exit 1
fi

RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
log "build and clippy (all targets, warnings are errors)"
cargo build --workspace --all-targets --locked

log "waiting for the installs"
if ! wait "$install_pid"; then
  cat "$install_log" >&2
  echo "installing the test dependencies failed (above)" >&2
  exit 1
fi
cat "$install_log"

# The browser client (wasm32, its own toolchain and target directory). After the native build,
# not beside it, nor beside the tests: both keep the two cores busy, and sharing them only
# slowed each (measured: BENCHMARKS.md "Build and test time").
log "web client build (wasm32)"
./scripts/build-web.sh

# Every test in its own process, in parallel (.config/nextest.toml: the longest start first).
log "tests"
cargo nextest run --workspace --locked

# The binary the workspace build made (a `cargo run -p` would resolve the
# dependency features for one package and rebuild them).
log "demo (smoke)"
"${CARGO_TARGET_DIR:-target}/debug/bkv" demo >/dev/null

log "all checks passed"
