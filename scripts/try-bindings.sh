#!/usr/bin/env bash
# Tries the native binding from Python: builds the workspace and the Python package (maturin,
# with this library's UniFFI generator), installs it into a fresh virtual environment, starts a
# dev deployment, runs crates/bindings/examples/python/quickstart.py against it, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v maturin >/dev/null || python3 -m pip install --quiet "maturin>=1.5,<2"
cargo build --workspace --all-targets --locked
# maturin runs `uniffi-bindgen` for the module: this library's generator.
cargo build --locked -p bkv-bindings --features bindgen --example uniffi-bindgen
work="$(mktemp -d)"
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
(cd crates/bindings && PATH="$target/debug/examples:$PATH" \
  maturin build --profile dev --out "$work/wheels" >/dev/null)
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-index --no-deps "$work"/wheels/*.whl
"$target/debug/bkv-admin" dev up --dir "$work/dev" >"$work/dev-up.out" 2>"$work/dev-up.err" &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q ready "$work/dev-up.out" && break; sleep 0.5; done
grep -q ready "$work/dev-up.out" || { cat "$work/dev-up.err" >&2; exit 1; }
head -c 100000 /dev/urandom >"$work/notes.bin"
"$work/venv/bin/python" crates/bindings/examples/python/quickstart.py "$work/dev/client.toml" "$work/notes.bin"
