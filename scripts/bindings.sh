#!/usr/bin/env bash
# Generates the native bindings (crates/bindings, UniFFI) from the built library:
#
#   scripts/bindings.sh              Kotlin and Swift sources into crates/bindings/generated
#                                    (checked in; a system test fails when they are stale)
#   scripts/bindings.sh --python DIR also the Python module: DIR/bkv_sdk.py beside
#                                    DIR/libbkv_sdk.so (`PYTHONPATH=DIR python3 -c 'import bkv_sdk'`)
#
# A Python wheel is `maturin build` in crates/bindings (pyproject.toml). Kotlin and Swift cannot
# be compiled on this project's machines; their sources are generated here and checked in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build the test suite makes (the library and the generator at its UniFFI version).
cargo build --workspace --all-targets --locked
gen=target/debug/examples/uniffi-bindgen
lib=target/debug/libbkv_sdk.so
for language in kotlin swift; do
  rm -rf "crates/bindings/generated/$language"
  "$gen" generate --library "$lib" --language "$language" \
    --out-dir "crates/bindings/generated/$language" 2>/dev/null
done
if [ "${1:-}" = "--python" ]; then
  out="${2:?--python needs a directory}"
  mkdir -p "$out"
  "$gen" generate --library "$lib" --language python --out-dir "$out" 2>/dev/null
  cp "$lib" "$out/"
  echo "bindings: Python module in $out (import bkv_sdk)"
fi
echo "bindings: Kotlin and Swift sources in crates/bindings/generated"
