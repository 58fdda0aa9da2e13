#!/usr/bin/env bash
# Regenerates the native bindings (crates/bindings, UniFFI) into crates/bindings/generated:
# Python (`bkv_sdk.py`), Kotlin and Swift sources, checked in. Run it after changing the
# binding's API: the system tests load the checked-in Python module against the built library
# (UniFFI checks every function's checksum when the module loads) and compare the Kotlin and
# Swift checksums with it, so stale sources fail CI.
#
# A Python wheel is `maturin build` in crates/bindings, with this generator on PATH as
# `uniffi-bindgen` (scripts/try-bindings.sh). Kotlin and Swift cannot be compiled on this
# project's machines: an app compiles them with the library built for its platform.
set -euo pipefail
cd "$(dirname "$0")/.."
# The generator at the library's UniFFI version, and the library it reads.
cargo build --locked -p bkv-bindings --features bindgen --lib --example uniffi-bindgen
target="${CARGO_TARGET_DIR:-target}"
gen="$target/debug/examples/uniffi-bindgen"
lib="$target/debug/libbkv_sdk.so"
for language in python kotlin swift; do
  rm -rf "crates/bindings/generated/$language"
  # No formatter (ktlint, swift-format): the checked-in text must not depend on the machine.
  "$gen" generate --no-format --library "$lib" --language "$language" \
    --out-dir "crates/bindings/generated/$language"
done
echo "bindings: Python, Kotlin and Swift sources in crates/bindings/generated"
