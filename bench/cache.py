#!/usr/bin/env python3
"""What the response cache saves (issue 22): a support-desk workload (questions drawn from a
Zipf distribution, as FAQ traffic is, a few asked often and many rarely) sent by concurrent
clients through relais in front of a vendor that takes 300 ms an answer (the fast mock with a
delay), once without the cache and once with it: the hit ratio, what the hits saved, the
requests the vendor saw, and the latency of hits and misses side by side. Loopback only,
bounded in requests. Run by bench/cache, which builds what it needs."""

import http.client
import json
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gateways as g  # noqa: E402

QUESTIONS = 300
REQUESTS = 3000
CLIENTS = 16
ZIPF_S = 1.1
VENDOR_MS = 300


def workload(seed=22):
    rng = random.Random(seed)
    weights = [1 / (k ** ZIPF_S) for k in range(1, QUESTIONS + 1)]
    picks = rng.choices(range(QUESTIONS), weights=weights, k=REQUESTS)
    return [f"Support question {q}: how do I configure feature {q * 7 % 97} for account type {q % 5}?"
            for q in picks]


def start(mock_port, cached):
    port = g.free_port()
    cfg = pathlib.Path(tempfile.mkdtemp(prefix="relais-bench-cache-")) / "relais.toml"
    text = g.bench_config(port, mock_port)
    if cached:
        text += "[routes.bench.cache]\nttl_secs = 3600\n"
    text += '[prices.bench]\ninput = "2.50"\noutput = "10"\n'
    cfg.write_text(text)
    proc = subprocess.Popen(g.pinned([str(g.TARGET / "release/relais"), "serve", "--config", str(cfg)], g.GATEWAY_CPUS),
                            stderr=subprocess.DEVNULL, env=dict(g.os.environ, RELAIS_LOG="warn"))
    g.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return port, proc


def run(port, questions):
    """Send every question (CLIENTS at a time, keep-alive): [(seconds, cache header)]."""
    out = []
    lock = threading.Lock()
    queue = list(enumerate(questions))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if not queue:
                    break
                _, q = queue.pop(0)
            body = json.dumps({"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": q}]})
            t0 = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            took = time.perf_counter() - t0
            if resp.status != 200:
                raise SystemExit(f"cache bench: HTTP {resp.status}")
            with lock:
                out.append((took, resp.getheader("x-relais-cache", "")))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - t0


def metric(port, name):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if m:
            total += float(m.group(2))
    return total, text


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000 if xs else float("nan")


def main():
    questions = workload()
    distinct = len(set(questions))
    mock_port = g.free_port()
    mock = g.start_mock(mock_port, ["--delay-ms", str(VENDOR_MS)])
    rows = []
    try:
        for cached in (False, True):
            port, proc = start(mock_port, cached)
            try:
                got, wall = run(port, questions)
                hits = [t for t, c in got if c == "hit"]
                misses = [t for t, c in got if c != "hit"]
                saved, text = metric(port, "relais_cache_saved_usd_total")
                upstream = len(misses)
                rows.append(("relais + cache" if cached else "relais, no cache", got, wall, hits, misses, saved, upstream))
            finally:
                proc.terminate()
                proc.wait()
    finally:
        mock.terminate()
        mock.wait()
    print(f"A support-desk workload: {REQUESTS} requests over {QUESTIONS} questions ({distinct} asked), Zipf s={ZIPF_S}, "
          f"{CLIENTS} clients, a vendor that answers in {VENDOR_MS} ms (machine: {g.CORES} cores; {time.strftime('%Y-%m-%d')}):\n")
    print("| setup | hit ratio | vendor requests | saved USD | wall s | p50 ms | p99 ms | hit p50 ms | hit p99 ms | miss p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, got, wall, hits, misses, saved, upstream in rows:
        all_t = [t for t, _ in got]
        ratio = len(hits) / len(got)
        print(f"| {name} | {ratio * 100:.1f}% | {upstream} | {saved:.6f} | {wall:.1f} | {pct(all_t, .5):.1f} | {pct(all_t, .99):.1f} | "
              f"{pct(hits, .5):.2f} | {pct(hits, .99):.2f} | {pct(misses, .5):.1f} |")
    plain, cached = rows
    print(f"\nThe cache answered {len(cached[3])} of {REQUESTS} requests ({len(cached[3]) / REQUESTS * 100:.1f}%; "
          f"the most a cache can on this workload: {(REQUESTS - distinct) / REQUESTS * 100:.1f}%), "
          f"the vendor saw {cached[6]} requests instead of {plain[6]}, the run took {cached[2]:.1f} s instead of {plain[2]:.1f} s.")


if __name__ == "__main__":
    main()
