#!/usr/bin/env python3
"""Simulation behind docs/scaling.md: sharding records over many fleets (groups).

1. Placement: USERS user ids routed by a keyed hash (HMAC-SHA256 under a routing key) to 65,536
   buckets, buckets assigned to GROUPS groups in contiguous ranges. Prints the load of the fullest
   and emptiest group against the mean, and what one group holds at 10^9 users.
2. Moves: a record moving from group A to group B while a client keeps guessing and either side
   may crash and retry any step. Random schedules of the move protocol of docs/scaling.md; after
   every step the checker asserts that the guesses granted since the last reset, over both groups
   together, never exceed the limit (the counter is never reset by a move). The same schedules
   against a naive move (copy the record, then switch the route) show the checker catching a
   reset: guesses granted at A after the copy are lost.

Usage: scripts/sim-scale.py [USERS] [GROUPS] [SCHEDULES]   (default 1000000 100 2000)
"""
import hashlib, hmac, random, statistics, sys

USERS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
GROUPS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
SCHEDULES = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
BUCKETS = 1 << 16
LIMIT = 10


def placement():
    key = b"routing key (per deployment, held by the frontends)"
    per_bucket = [0] * BUCKETS
    for i in range(USERS):
        h = hmac.new(key, f"user-{i}".encode(), hashlib.sha256).digest()
        per_bucket[int.from_bytes(h[:2], "big")] += 1
    # Contiguous bucket ranges per group (the directory the frontends and the bundle carry).
    bounds = [round(g * BUCKETS / GROUPS) for g in range(GROUPS + 1)]
    loads = [sum(per_bucket[bounds[g]:bounds[g + 1]]) for g in range(GROUPS)]
    mean = statistics.mean(loads)
    print(f"placement: {USERS:,} users over {GROUPS} groups: mean {mean:,.0f}, "
          f"max {max(loads):,} ({max(loads) / mean:.3f}x), min {min(loads):,} ({min(loads) / mean:.3f}x)")
    # The spread is sampling noise (binomial): it shrinks with the number of users per group.
    n, p = 1e9, 1 / GROUPS
    sigma = (n * p * (1 - p)) ** 0.5
    print(f"  at 10^9 users: {n * p:,.0f} records per group, +-3 sigma = +-{3 * sigma / (n * p):.3%}")


class Group:
    def __init__(self):
        self.rec = None  # dict(attempts, state) — state: active | moving | moved | absent

    def guess(self):
        """A counted guess: granted only on an active record under its limit."""
        r = self.rec
        if r is None or r["state"] != "active" or r["attempts"] >= LIMIT:
            return False
        r["attempts"] += 1
        return True


def run(schedule_seed, naive):
    rnd = random.Random(schedule_seed)
    a, b = Group(), Group()
    a.rec = {"attempts": rnd.randrange(LIMIT), "state": "active"}
    granted = a.rec["attempts"]  # guesses since the last reset, over both groups
    route = "A"
    exported = None  # the export A's core sealed for B (retries reuse it)
    for _ in range(40):
        step = rnd.choice(["guess", "guess", "freeze", "export", "import", "switch", "tombstone", "crash"])
        if step == "guess":
            g = a if route == "A" else b
            # A client may still reach A through a stale route: try both sometimes.
            if rnd.random() < 0.3:
                g = b if g is a else a
            granted += g.guess()
        elif step == "freeze" and not naive:
            # A commits "moving to B": from now on A grants no guess for the record.
            if a.rec and a.rec["state"] == "active":
                a.rec["state"] = "moving"
        elif step == "export":
            if a.rec and (naive or a.rec["state"] == "moving"):
                # The core seals the record with its current count for B's core.
                exported = dict(a.rec)
        elif step == "import":
            if exported and b.rec is None:
                b.rec = {"attempts": exported["attempts"], "state": "active"}
        elif step == "switch":
            if b.rec is not None:
                route = "B"
        elif step == "tombstone":
            if b.rec is not None and a.rec:
                a.rec["state"] = "moved"
        elif step == "crash":
            pass  # every step above is a committed state change or idempotent; a crash only loses time
        if granted > LIMIT:
            return False
    return True


def moves():
    for naive in (False, True):
        bad = sum(not run(s, naive) for s in range(SCHEDULES))
        name = "naive copy-then-switch" if naive else "freeze, export, import, switch, tombstone"
        print(f"moves ({name}): {SCHEDULES} random schedules, {bad} granted more than {LIMIT} guesses")
        if not naive and bad:
            sys.exit("the move protocol let a counter reset")
        if naive and not bad:
            sys.exit("the checker failed to catch the naive move's reset")


placement()
moves()
