#!/usr/bin/env bash
# Builds the browser client into $CARGO_TARGET_DIR/web/dist (default target/web/dist), which
# `bkv-admin dev up` serves at its web= URL: bkv_web.wasm (crates/web, bkv-client without its
# native half) and the page (crates/web/www).
#
# The wasm32 target comes from Debian's rustc-web/cargo-web/rust-web-src (std is built from
# source with -Zbuild-std); the pinned native toolchain is not touched. `--install` first
# installs those packages and the wasm linker.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--install" ]; then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
    if ! dpkg -s rustc-web cargo-web rust-web-src lld-19 clang-19 llvm-19 >/dev/null 2>&1; then
        $sudo_ apt-get install -y -q rustc-web cargo-web rust-web-src lld-19 clang-19 llvm-19 >/dev/null
    fi
fi
target=${CARGO_TARGET_DIR:-$PWD/target}
out="$target/web/dist"
export RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc CARGO_INCREMENTAL=0 \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 \
    CC_wasm32_unknown_unknown=clang-19 AR_wasm32_unknown_unknown=llvm-ar-19
# getrandom 0.3 takes its randomness from bkv-web's custom backend (crypto.getRandomValues).
# Paths in panic messages name the crates, not this machine's directories.
export RUSTFLAGS="--cfg getrandom_backend=\"custom\" --remap-path-prefix=$PWD=/bkv --remap-path-prefix=$HOME/.cargo/registry/src=/crates"
unset RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
# std without its backtrace support (a wasm module cannot symbolise its own stack; the browser
# does): object, gimli and addr2line are not built.
/usr/bin/cargo build -q --locked -p bkv-web --release --target wasm32-unknown-unknown \
    -Zbuild-std=std,panic_abort -Zbuild-std-features= --target-dir "$target/web/build"
# Made beside the old build and swapped in whole: a dev up starting meanwhile finds the old
# build, the new one or none, never half of one.
new="$target/web/dist.new"
rm -rf "$new"
mkdir -p "$new"
cp "$target/web/build/wasm32-unknown-unknown/release/bkv_web.wasm" "$new/"
cp crates/web/www/*.html crates/web/www/*.js "$new/"
# The build's manifest (bkv_transparency::web): sha256sum of every file in name order. The
# operator logs it with the auditor; `bkv audit web` checks a served or rebuilt page against it.
(cd "$new" && LC_ALL=C ls | LC_ALL=C sort | xargs sha256sum >../manifest.tmp)
mv "$target/web/manifest.tmp" "$new/bkv-web-manifest.txt"
rm -rf "$out"
mv "$new" "$out"
echo "web client built: $out ($(sha256sum <"$out/bkv-web-manifest.txt" | cut -c1-64))"
