#!/usr/bin/env bash
# 1 GiB backup create and restore against `dd bs=4M conv=fsync` of the same file, alternating,
# 5 rounds, `sync; sleep 1` before each step (BENCHMARKS.md); dd into a new file and over the
# previous copy. Prints each round; peak RSS in KiB.
# Usage: scripts/bench-big-file.sh   (needs about 4 GiB free under TMPDIR)
# BASE_BKV=path/to/an/older/bkv adds its restore to each round (before and after in one run).
set -euo pipefail
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)"; exit 1; }
cd "$(dirname "$0")/.."
cargo build --profile production --locked --bins >/dev/null
B=target/production
W=$(mktemp -d)
$B/bkv-admin dev up --dir $W/d > $W/up.log 2>&1 &
up=$!
for _ in $(seq 150); do grep -q ready $W/up.log && break; sleep 0.2; done
head -c 1G /dev/urandom > $W/big
echo pw | $B/bkv --config $W/d/client.toml backup create --user u1 --password-stdin $W/big > /dev/null 2>&1
# Wall time of a command, in seconds (peak RSS comes from GNU time, Debian package `time`).
t() { local s=$EPOCHREALTIME; "$@" > /dev/null 2>$W/err || { cat $W/err; exit 1; }; awk "BEGIN{print $EPOCHREALTIME - $s}"; }
for r in 1 2 3 4 5; do
  sync; sleep 1; rm -f $W/copy
  d=$(t dd if=$W/big of=$W/copy bs=4M conv=fsync)
  # Like for like with `backup create`, which replaces the previous backup (and unlinks it, ~0.2 s
  # for a 1 GiB file whose pages are cached): dd over the previous copy, which truncates it.
  sync; sleep 1
  o=$(t dd if=$W/big of=$W/copy bs=4M conv=fsync)
  sync; sleep 1
  c=$(echo pw | t /usr/bin/time -f "%M" -o $W/rss.c $B/bkv --config $W/d/client.toml backup create --user u1 --password-stdin $W/big)
  b=""
  if [ -n "${BASE_BKV:-}" ]; then
    sync; sleep 1; rm -f $W/out
    b=" restore_before=$(echo pw | t "$BASE_BKV" --config $W/d/client.toml backup restore --user u1 --password-stdin --out $W/out)"
  fi
  sync; sleep 1; rm -f $W/out
  x=$(echo pw | t /usr/bin/time -f "%M" -o $W/rss.r $B/bkv --config $W/d/client.toml backup restore --user u1 --password-stdin --out $W/out)
  echo "round $r dd=$d dd_over=$o create=$c restore=$x$b create_rss_kb=$(cat $W/rss.c) restore_rss_kb=$(cat $W/rss.r)"
done
cmp $W/big $W/out && echo "restored file identical"
kill -TERM $up; wait $up || true
rm -rf $W
