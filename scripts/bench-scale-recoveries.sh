#!/usr/bin/env bash
# Full recoveries at scale, for BENCHMARKS.md: a real 3-node `bkv-admin dev up` deployment
# (separate node processes, frontend, auditor; production build) with SMALL registered users, then
# a fresh one with USERS registered users (OPAQUE registrations through the frontend,
# `bkv-admin dev loadgen` with REG_CONC at a time), and on each ROUNDS rounds of closed-loop
# recoveries (OPAQUE login, two commits, one read barrier) at concurrency CONC for SECS seconds.
# Reported per size: the rounds' JSON, the median p99 and rate, each node process's peak and
# current memory (VmHWM, VmRSS) and its data directory's size.
# Usage: scripts/bench-scale-recoveries.sh   (USERS=1000000 SMALL=1000 CONC=8 SECS=10 ROUNDS=3
# REG_CONC=32). At 10^6 users the registrations take about 25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-1000000}
SMALL=${SMALL:-1000}
CONC=${CONC:-8}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
REG_CONC=${REG_CONC:-32}
# Lift the dev frontend's abuse limits: one load generator is one address with many users.
export BKV_FRONTEND_LOAD_TEST=1
cargo build --profile production --locked --bins >/dev/null
ADMIN=target/production/bkv-admin
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
up_pid="" dir=""
# `dev up` runs in its own process group: stopping the group also stops the nodes, frontend and
# auditor if it failed before it installed its own SIGTERM handling.
stop() {
  [ -n "$up_pid" ] && { kill -TERM -- "-$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; }
  [ -n "$dir" ] && rm -rf "$dir"
  up_pid="" dir=""
}
trap stop EXIT

size() { # users
  dir=$(mktemp -d)
  local d=$dir
  setsid "$ADMIN" dev up --dir "$d" --nodes 3 > "$d/up.log" 2>&1 &
  up_pid=$!
  for _ in $(seq 150); do grep -q "bkv-admin dev: ready" "$d/up.log" 2>/dev/null && break; sleep 0.2; done
  grep -q "bkv-admin dev: ready" "$d/up.log" || { cat "$d/up.log" >&2; exit 1; }
  local r p99s=() rates=()
  for r in $(seq "$ROUNDS"); do
    # Round 1 registers the fleet's users; later rounds add only their own CONC users.
    local n=$CONC
    [ "$r" = 1 ] && n=$1
    local t0=$SECONDS
    local j; j=$("$ADMIN" --config "$d/client.toml" dev loadgen --users "$n" --concurrency "$REG_CONC" \
      --seconds 0 | tr -d '\n ')
    [ "$r" = 1 ] && echo "users=$1 registered in $((SECONDS - t0)) s"
    j=$("$ADMIN" --config "$d/client.toml" dev loadgen --users "$CONC" --concurrency "$CONC" \
      --seconds "$SECS" | tr -d '\n ')
    echo "users=$1 round=$r $j"
    p99s+=("$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_ms"])')")
    rates+=("$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["per_second"])')")
  done
  python3 - "$1" "${p99s[*]}" "${rates[*]}" <<'EOF'
import statistics, sys
users, p99s, rates = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
print(f"users={users} median p99 {statistics.median(p99s):.2f} ms, median rate {statistics.median(rates):.0f}/s")
EOF
  local i pid
  for i in 0 1 2; do
    pid=$(pgrep -f "bkv-hsm --data-dir $d/nodes/$i/data" | head -1 || true)
    [ -n "$pid" ] || { echo "node $i is not running" >&2; exit 1; }
    echo "users=$1 node$i $(grep -E 'VmHWM|VmRSS' /proc/"$pid"/status | tr -s ' \n' ' ') disk $(du -sm "$d/nodes/$i/data" | cut -f1) MiB"
  done
  stop
}

size "$SMALL"
size "$USERS"
