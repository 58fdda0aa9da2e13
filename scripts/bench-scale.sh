#!/usr/bin/env bash
# A 3-node fleet at scale, for BENCHMARKS.md: registers USERS users (a pending record and its
# activation each, through the leader, 64 at a time), measures guess-count commits at concurrency
# 8 on top, then has the leader snapshot and purge its log and a new, empty member join and catch
# up from the snapshot. The same run at SMALL users gives the baseline the ratios use.
# Reported: registration rate, commit p99 at USERS against SMALL, disk per user on the leader
# (the files' size and the blocks allocated to them),
# snapshot time, the newcomer's catch-up time, and peak memory (all members are in one process,
# so per node is about a quarter of it).
# Usage: scripts/bench-scale.sh   (USERS=1000000 SMALL=1000 SECS=5)
# CI runs the small version as a test: `tens_of_thousands_of_users_snapshot_and_a_new_member_catches_up`
# (crates/hsm-node/tests/it/fleet.rs, 10,000 users).
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-1000000}
SMALL=${SMALL:-1000}
SECS=${SECS:-5}
BENCH=$(cargo bench --locked --profile production -p bkv-hsm-node --bench commits --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="commits" and m.get("executable"): print(m["executable"])' | tail -1)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
small=$("$BENCH" --nodes 3 --concurrency 8 --seconds "$SECS" --users "$SMALL" --rejoin)
echo "users=$SMALL $small"
set +e
big=$("$BENCH" --nodes 3 --concurrency 8 --seconds "$SECS" --users "$USERS" --rejoin)
rc=$?
set -e
echo "users=$USERS $big"
if [ $rc -ne 0 ]; then
  echo "the $USERS-user run failed (exit $rc): see the error above"
  exit 1
fi
python3 - "$small" "$big" <<'EOF'
import json, sys
s, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
du = (b["leader_disk_bytes"] - s["leader_disk_bytes"]) / (b["users"] - s["users"])
print(f"registration: {b['users_per_second']:,.0f} users/s")
print(f"commit p99 at {b['users']:,} users: {b['p99_ms']:.2f} ms = {b['p99_ms'] / s['p99_ms']:.2f}x the {s['users']:,}-user figure")
print(f"leader disk: {b['leader_disk_bytes'] / 2**20:,.0f} MiB, {du:,.0f} B per added user; files: "
      + ", ".join(f"{n} {v / 2**20:,.0f} MiB" for n, v in b.get("leader_files", {}).items()))
if "leader_disk_allocated_bytes" in b:
    da = (b["leader_disk_allocated_bytes"] - s["leader_disk_allocated_bytes"]) / (b["users"] - s["users"])
    print(f"leader disk allocated (du): {b['leader_disk_allocated_bytes'] / 2**20:,.0f} MiB, {da:,.0f} B per added user")
if "newcomer_disk_bytes" in b:
    print(f"the new member's disk after catching up: {b['newcomer_disk_bytes'] / 2**20:,.0f} MiB "
          f"({b['newcomer_disk_bytes'] / b['users']:,.0f} B per user; allocated "
          f"{b.get('newcomer_disk_allocated_bytes', 0) / b['users']:,.0f} B per user)")
if b.get("rejoin_secs") is None:
    print(f"snapshot: {b['snapshot_secs']:.1f} s; the new member did NOT catch up: {b.get('rejoin_error')}")
else:
    print(f"snapshot: {b['snapshot_secs']:.1f} s; new member caught up in {b['rejoin_secs']:.1f} s "
          f"(at {s['users']:,} users: {s['rejoin_secs']:.2f} s)")
print(f"peak memory, all {4} members in one process: {b['peak_rss_mib_all_members']:,.0f} MiB")
EOF
