#!/usr/bin/env python3
"""Memory under hostile request bodies (issue 17): relais's resident memory before, at the peak of
and after a burst of large requests, each 9 MB of 260,000 tiny messages (parsing costs several
times a body's size), all sent at once.

    bench/memory.py [--relais BIN] [--mock BIN] [--concurrent 16] [--label NAME]
                    [--server-extra 'max_decoding_bytes = 1073741824']

Prints one table row per run: requests answered by status, RSS before, peak, 2 s and 10 s after
the burst, in MiB. Loopback only, bounded: one burst, then it stops.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"memory: nothing listens on {port}")


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("POST", "/v1/chat/completions", body=body,
                  headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status
    except OSError as e:
        return f"error:{type(e).__name__}"
    finally:
        c.close()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.environ.get("CARGO_TARGET_DIR",
                            os.path.expanduser("~/.cache/relais/target"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--relais", default=os.path.join(target, "release", "relais"))
    ap.add_argument("--mock", default=os.path.join(target, "release", "relais-mock"))
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--messages", type=int, default=260_000)
    ap.add_argument("--label", default="relais")
    ap.add_argument("--server-extra", default="")
    a = ap.parse_args()

    mock_port, port = free_port(), free_port()
    mock = subprocess.Popen([a.mock, "--listen", f"127.0.0.1:{mock_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f"""[server]
listen = "127.0.0.1:{port}"
max_body_bytes = 10485760
{a.server_extra}

[providers.up]
type = "openai_compat"
base_url = "http://127.0.0.1:{mock_port}/v1"

[routes.r]
deployments = [{{ provider = "up", model = "m" }}]
""")
    cfg.close()
    gw = subprocess.Popen([a.relais, "serve", "--config", cfg.name],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(mock_port)
        wait_port(port)
        body = json.dumps({
            "model": "r", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}] * a.messages,
        }).encode()
        # Warm up: one small request, so "before" is a serving process, not a fresh one.
        post(port, json.dumps({"model": "r", "messages": [{"role": "user", "content": "hi"}]}))
        time.sleep(0.5)
        before = rss_mib(gw.pid)
        peak = [before]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(gw.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with concurrent.futures.ThreadPoolExecutor(a.concurrent) as pool:
            statuses = list(pool.map(lambda _: post(port, body), range(a.concurrent)))
        time.sleep(2)
        after2 = rss_mib(gw.pid)
        time.sleep(8)
        after10 = rss_mib(gw.pid)
        stop.set()
        sampler.join()
        counts = {}
        for s in statuses:
            counts[s] = counts.get(s, 0) + 1
        answered = " ".join(f"{k}x{v}" for k, v in sorted(counts.items(), key=str))
        print(f"| {a.label} | {len(body) / 1e6:.1f} MB x {a.concurrent} | {answered} | "
              f"{before:.0f} | {peak[0]:.0f} | {after2:.0f} | {after10:.0f} |")
    finally:
        gw.terminate()
        mock.terminate()
        gw.wait()
        mock.wait()
        os.unlink(cfg.name)


if __name__ == "__main__":
    main()
