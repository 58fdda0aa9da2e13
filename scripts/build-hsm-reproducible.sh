#!/usr/bin/env bash
# Builds the measured binary, the core service `bkv-core` (what would run
# inside an HSM or TEE; `bkv-hsm` is the untrusted host agent beside it),
# reproducibly and prints `sha256 <hex>` of it: the
# toolchain pinned in rust-toolchain.toml, the dependency versions locked in
# Cargo.lock, the `hsm` profile, and no host-specific path in the binary
# (the workspace's paths are relative; the registry and target directories
# are remapped). Two checkouts of the same commit, in any directory, give
# the same bytes. A fleet's deployment evidence names this hash; `bkv audit
# fleet --rebuild` runs this script to check it.
#
# Usage: scripts/build-hsm-reproducible.sh   (BKV_REPRO_TARGET: build directory)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${BKV_REPRO_TARGET:-${TMPDIR:-/tmp}/bkv-hsm-reproducible}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
mkdir -p "$target"
target=$(cd "$target" && pwd -P)
cargo_home=$(cd "$cargo_home" && pwd -P)
export CARGO_TARGET_DIR="$target"
export RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target=/target"
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_ENCODED_RUSTFLAGS
export CARGO_INCREMENTAL=0
cargo build --locked --profile hsm -p bkv-core-service --bin bkv-core >&2
bin="$target/hsm/bkv-core"
echo "binary $bin"
echo "sha256 $(sha256sum "$bin" | cut -d' ' -f1)"
