#!/usr/bin/env bash
# Tries the browser client: installs the wasm toolchain if it is missing, builds the web client
# and the services (release), starts a dev deployment and prints the page's URL; open it in a
# browser with passkeys (Chromium, Chrome, Safari, Firefox). Ctrl-C stops the deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-web.sh --install
cargo build --release --locked --bins
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
dir="${BKV_TRY_DIR:-$(mktemp -d)/dev}"
"$target/release/bkv-admin" dev up --dir "$dir" | while read -r line; do
  case "$line" in
    *ready*)
      echo "$line"
      url="$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^web=//p')"
      echo
      echo "open $url (sign in as any user: development tokens; Ctrl-C stops)"
      echo "the CLI sees the same backups: target/release/bkv --config $dir/client.toml backup status --user alice"
      ;;
    *) echo "$line" ;;
  esac
done
