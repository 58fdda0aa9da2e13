#!/usr/bin/env python3
"""Peer measurement for BENCHMARKS.md: sequential-per-worker etcd v3 puts
through etcd's JSON gateway (each put is one Raft commit, fsynced on a
majority), the same shape as one bkv vault commit. Prints JSON like
`bkv-admin dev loadgen`. Usage: etcd_put_load.py URL CONCURRENCY SECONDS"""
import base64, http.client, json, sys, threading, time, urllib.parse

url, conc, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
u = urllib.parse.urlparse(url)
lat, errors, lock = [], [0], threading.Lock()
stop = time.time() + secs

def worker(w):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    i = 0
    while time.time() < stop:
        body = json.dumps({"key": base64.b64encode(f"user-{w}-{i % 200}".encode()).decode(),
                           "value": base64.b64encode(b"x" * 100).decode()})
        t = time.perf_counter()
        try:
            c.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
            r = c.getresponse(); r.read()
            ok = r.status == 200
        except Exception:
            ok = False
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        d = time.perf_counter() - t
        with lock:
            if ok: lat.append(d)
            else: errors[0] += 1
        i += 1

ts = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
t0 = time.time()
for t in ts: t.start()
for t in ts: t.join()
el = time.time() - t0
lat.sort()
pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None
print(json.dumps({"concurrency": conc, "ops": len(lat), "ops_per_sec": round(len(lat) / el, 1),
                  "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "errors": errors[0]}))
