#!/usr/bin/env bash
# Fleet benchmark for BENCHMARKS.md, everything in one run on this machine, alternating, ROUNDS
# times (medians are what BENCHMARKS.md reports):
#   - durable commits on a 3-node bkv fleet (the replication layer alone: the guess-count
#     write path, `cargo bench -p bkv-hsm-node --bench commits`) against durable puts on a
#     3-node etcd, driven two ways (scripts/etcd_put_lean.py: one thread, pre-built requests,
#     aimed at the leader, the strongest etcd load we know on this machine; and the threaded
#     scripts/etcd_put_load.py), at concurrency 1, 8 and 64;
#   - full recoveries (`bkv-admin dev loadgen`: OPAQUE login through the frontend, two commits
#     and one linearizable read each) on a 3-node `bkv-admin dev up` deployment, closed loop at
#     each concurrency, then open loop at half the round's best rate (the latency target's
#     load; row "bkv-recoveries-half-rate", concurrency = the in-flight cap).
# Prints one JSON line per measurement and, at the end, the table of medians and ratios.
# Usage: scripts/bench-fleet.sh   (SECS=5 ROUNDS=3 CONC="1 8 64"; installs etcd from Debian)
# BASE_COMMITS=path/to/an/older/commits-bench and BASE_ADMIN=path/to/an/older/bkv-admin (with
# its sibling binaries) add their rows: before and after in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-"1 8 64"}
# Lift the dev frontend's abuse limits: one load generator is one address with many users.
export BKV_FRONTEND_LOAD_TEST=1
if ! command -v etcd >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client
fi
cargo build --profile production --locked --bins >/dev/null
COMMITS=$(cargo bench --locked --profile production -p bkv-hsm-node --bench commits --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="commits" and m.get("executable"): print(m["executable"])' | tail -1)
ADMIN=target/production/bkv-admin
OUT=$(mktemp)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

row() { # system concurrency json
  echo "$1 c=$2 $3"
  echo "$1 $2 $3" >> "$OUT"
}

etcd_up() { # sets EDIR, ELEADER (host:port of the leader), pids
  EDIR=$(mktemp -d)
  local P=$((20000 + RANDOM % 20000)) cluster="" i
  for i in 0 1 2; do cluster+="e$i=http://127.0.0.1:$((P + 2*i + 1)),"; done
  for i in 0 1 2; do
    local cp=$((P + 2*i)) pp=$((P + 2*i + 1))
    etcd --name e$i --data-dir "$EDIR/e$i" --listen-client-urls http://127.0.0.1:$cp \
      --advertise-client-urls http://127.0.0.1:$cp --listen-peer-urls http://127.0.0.1:$pp \
      --initial-advertise-peer-urls http://127.0.0.1:$pp --initial-cluster "${cluster%,}" \
      --initial-cluster-state new > "$EDIR/e$i.log" 2>&1 &
    pids+=($!)
  done
  local eps="127.0.0.1:$P,127.0.0.1:$((P+2)),127.0.0.1:$((P+4))"
  ELEADER=""
  for _ in $(seq 100); do
    ELEADER=$(ETCDCTL_API=3 etcdctl --endpoints="$eps" endpoint status -w json 2>/dev/null | python3 -c '
import json,sys
try:
    for s in json.load(sys.stdin):
        if s["Status"]["header"]["member_id"] == s["Status"]["leader"]: print(s["Endpoint"].replace("http://",""))
except Exception: pass' || true)
    [ -n "$ELEADER" ] && break
    sleep 0.2
  done
  [ -n "$ELEADER" ] || { echo "etcd did not elect a leader" >&2; exit 1; }
}

crossings() { # dev-dir: the core-boundary counters summed over the nodes (JSON; {} if none)
  python3 - "$1" <<'PY'
import glob, json, sys, urllib.request
names = ["bkv_node_core_requests_total", "bkv_node_core_apply_requests_total",
         "bkv_node_core_applied_entries_total", "bkv_node_core_bucket_reads_total",
         "bkv_node_core_host_requests_total"]
tot = {}
for f in glob.glob(sys.argv[1] + "/nodes/*/metrics"):
    addr = open(f).read().strip()
    try:
        text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    except Exception:
        continue
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k in names:
            tot[k] = tot.get(k, 0) + int(v)
print(json.dumps(tot))
PY
}

per_recovery() { # before-json after-json loadgen-json: crossings per recovery, fleet-wide
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
b, a, run = (json.loads(x) for x in sys.argv[1:4])
n = max(1, run["recoveries"])
d = {k: a.get(k, 0) - b.get(k, 0) for k in a}
applies = max(1, d.get("bkv_node_core_apply_requests_total", 0))
print(json.dumps({
    "recoveries": run["recoveries"],
    "per_second": run["per_second"],
    "requests_per_recovery": d.get("bkv_node_core_requests_total", 0) / n,
    "applies_per_recovery": d.get("bkv_node_core_apply_requests_total", 0) / n,
    "entries_per_apply": d.get("bkv_node_core_applied_entries_total", 0) / applies,
    "bucket_reads_per_recovery": d.get("bkv_node_core_bucket_reads_total", 0) / n,
    "host_requests_per_recovery": d.get("bkv_node_core_host_requests_total", 0) / n,
    # Each committed entry is applied on all 3 nodes.
    "host_requests_per_committed_entry": d.get("bkv_node_core_host_requests_total", 0)
        / max(1, d.get("bkv_node_core_applied_entries_total", 0) / 3),
    "applies_per_committed_entry": d.get("bkv_node_core_apply_requests_total", 0)
        / max(1, d.get("bkv_node_core_applied_entries_total", 0) / 3),
}))
PY
}

recoveries() { # label bkv-admin
  local d; d=$(mktemp -d)
  "$2" dev up --dir "$d" --nodes 3 > "$d/up.log" 2>&1 &
  local up=$!; pids+=($up)
  for _ in $(seq 150); do grep -q ready "$d/up.log" 2>/dev/null && break; sleep 0.2; done
  for c in $CONC; do
    local before run
    before=$(crossings "$d")
    run=$("$2" --config "$d/client.toml" dev loadgen --users 200 --concurrency "$c" --seconds "$SECS" | tr -d '\n ')
    row "$1" "$c" "$run"
    if [ "$before" != "{}" ]; then
      row "$1-crossings" "$c" "$(per_recovery "$before" "$(crossings "$d")" "$run")"
    fi
  done
  if [ "$1" = bkv-recoveries ]; then
    # The latency target is at half the best rate: offer exactly that (open loop, latency from
    # each recovery's scheduled start), half of this round's best closed-loop figure.
    local half
    half=$(grep "^$1 " "$OUT" | tail -n "$(wc -w <<< "$CONC")" | python3 -c '
import json, sys
print(max(1, round(max(json.loads(l.split(" ", 2)[2])["per_second"] for l in sys.stdin) / 2)))')
    row "$1-half-rate" 64 "$("$2" --config "$d/client.toml" dev loadgen --users 200 --concurrency 64 --rate "$half" --seconds "$SECS" | tr -d '\n ')"
  fi
  kill -TERM $up; wait $up || true; pids=()
  rm -rf "$d"
}

for r in $(seq "$ROUNDS"); do
  echo "--- round $r"
  etcd_up
  for c in $CONC; do
    row etcd-lean "$c" "$(python3 scripts/etcd_put_lean.py "$ELEADER" "$c" "$SECS" | tr -d '\n ')"
    row etcd-threaded "$c" "$(python3 scripts/etcd_put_load.py "http://$ELEADER" "$c" "$SECS" | tr -d '\n ')"
  done
  kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=()
  rm -rf "$EDIR"
  for c in $CONC; do
    row bkv-commits "$c" "$("$COMMITS" --nodes 3 --concurrency "$c" --seconds "$SECS")"
    if [ -n "${BASE_COMMITS:-}" ]; then
      row bkv-commits-before "$c" "$("$BASE_COMMITS" --nodes 3 --concurrency "$c" --seconds "$SECS")"
    fi
  done
  recoveries bkv-recoveries "$ADMIN"
  if [ -n "${BASE_ADMIN:-}" ]; then recoveries bkv-recoveries-before "$BASE_ADMIN"; fi
done

echo "--- medians of $ROUNDS rounds, ${SECS}s each ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    system, c, js = line.split(" ", 2)
    rows.setdefault((system, int(c)), []).append(json.loads(js))
def med(system, c, key):
    alias = {"per_second": "ops_per_sec"}  # the etcd scripts' name for it
    v = [r.get(key, r.get(alias.get(key, key))) for r in rows.get((system, c), [])]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
conc = sorted({c for _, c in rows})
print("| system | concurrency | ops/s (median) | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|---|")
for system in ["bkv-commits", "bkv-commits-before", "etcd-lean", "etcd-threaded",
               "bkv-recoveries", "bkv-recoveries-half-rate", "bkv-recoveries-before"]:
    for c in conc:
        if (system, c) not in rows: continue
        ops = med(system, c, "per_second")
        err = sum(r.get("errors", 0) for r in rows[(system, c)])
        print(f"| {system} | {c} | {ops:,.0f} | {med(system, c, 'p50_ms'):.2f} | {med(system, c, 'p99_ms'):.2f} | {err} |")
print()
for system in ["bkv-recoveries-crossings"]:
    for c in conc:
        if (system, c) not in rows: continue
        print(f"concurrency {c}: core-boundary crossings per recovery (3 nodes): "
              f"{med(system, c, 'requests_per_recovery'):.1f} requests, of which "
              f"{med(system, c, 'applies_per_recovery'):.2f} Apply ({med(system, c, 'entries_per_apply'):.1f} entries each), "
              f"{med(system, c, 'bucket_reads_per_recovery'):.2f} bucket reads; host connection "
              f"{med(system, c, 'host_requests_per_recovery'):.1f} per recovery; per committed entry "
              f"{med(system, c, 'applies_per_committed_entry'):.2f} Apply and "
              f"{med(system, c, 'host_requests_per_committed_entry'):.2f} host requests")
print()
for c in conc:
    b = med("bkv-commits", c, "per_second")
    peers = [p for p in (med("etcd-lean", c, "per_second"), med("etcd-threaded", c, "per_second")) if p]
    if b and peers:
        print(f"concurrency {c}: bkv commits / etcd puts (etcd at its best tool) = {b / max(peers):.2f}x")
EOF
rm -f "$OUT"
