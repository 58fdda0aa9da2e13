#!/usr/bin/env bash
# The browser client against the native one on the same machine and the same dev deployment
# (release builds): a backup and a restore of one file of random bytes (default 100 MiB; both
# clients store it uncompressed), timed; the browser's peak JS heap and wasm memory sampled.
# Prints one JSON line per client. Needs what `scripts/test-all.sh` installs (Chromium,
# playwright-core in crates/web/tests) and `scripts/build-web.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-100}"
cargo build --release --locked --bins -q
[ -f "${CARGO_TARGET_DIR:-target}/web/dist/bkv_web.wasm" ] || ./scripts/build-web.sh
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
work="$(mktemp -d)"
"$target/release/bkv-admin" dev up --dir "$work/dev" >"$work/up.out" 2>"$work/up.err" &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 240); do grep -q ready "$work/up.out" && break; sleep 0.5; done
grep -q ready "$work/up.out" || { cat "$work/up.err" >&2; exit 1; }
web="$(tr ' ' '\n' <"$work/up.out" | sed -n 's/^web=//p')"
head -c "$((mib << 20))" /dev/urandom >"$work/file.bin"
bkv() { "$target/release/bkv" --config "$work/dev/client.toml" "$@"; }
pw="correct horse battery staple"
t0=$(date +%s.%N)
echo "$pw" | bkv backup create --user native-user --password-stdin "$work/file.bin" >/dev/null 2>&1
t1=$(date +%s.%N)
echo "$pw" | bkv backup restore --user native-user --password-stdin --out "$work/restored.bin" >/dev/null 2>&1
t2=$(date +%s.%N)
cmp -s "$work/file.bin" "$work/restored.bin"
awk -v m="$mib" -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
  printf "{\"client\":\"native\",\"size_mib\":%d,\"backup\":{\"seconds\":%.2f,\"mib_per_s\":%.1f},\"restore\":{\"seconds\":%.2f,\"mib_per_s\":%.1f}}\n",
    m, b - a, m / (b - a), c - b, m / (c - b) }'
rm -f "$work/restored.bin"
printf '{"client":"browser",%s\n' "$(node crates/web/tests/bench.mjs "$web" "$work/file.bin" | cut -c2-)"
