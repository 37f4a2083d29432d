#!/usr/bin/env python3
"""CPU the gateway spends per request, for two relais binaries side by side, in alternating
rounds: a figure that moves less with the machine's noise than req/s does. perf counts the
gateway process's own CPU time (task-clock) and, where the machine has hardware counters, its
instructions, while oha sends a fixed number of requests. Loopback only, bounded in requests.

    python3 bench/instructions.py BEFORE_BIN [AFTER_BIN] [--requests N] [--rounds R]

AFTER_BIN defaults to the release build bench/gateways makes. Needs `perf` (Debian's
linux-perf). With `--callgrind` the gateways run under valgrind's callgrind instead, which counts
every instruction exactly (the same figure run after run, on any machine, hardware counters or
not) but runs them about fifty times slower: use a few thousand requests.
"""

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gateways as g  # noqa: E402


def count(pid, url, body, n):
    """(instructions or None, CPU ms) per request of `n` requests to `url`, as perf saw `pid`."""
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "instructions,task-clock", "-p", str(pid)],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    cmd = [g.OHA, "--no-tui", "--output-format", "json", "-n", str(n), "-c", "32", "-m", "POST",
           "-T", "application/json", "-d", body, url]
    try:
        subprocess.run(g.pinned(cmd, g.LOAD_CPUS), capture_output=True, check=True, timeout=600)
    finally:
        perf.send_signal(signal.SIGINT)
    err = perf.communicate(timeout=30)[1]
    figures = {}
    for line in err.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            figures[parts[2]] = float(parts[0])
    if "task-clock" not in figures:
        raise RuntimeError(f"perf gave no CPU time:\n{err}")
    # Virtual machines often have no hardware counters: instructions are then not counted.
    ins = figures.get("instructions")
    return (ins / n if ins else None), figures["task-clock"] / n


def callgrind(exe, mock_port, body, n):
    """Instructions per request of `n` requests, counted by callgrind after a warm-up."""
    port = g.free_port()
    d = pathlib.Path(tempfile.mkdtemp(prefix="relais-callgrind-"))
    cfg = d / "relais.toml"
    cfg.write_text(g.bench_config(port, mock_port))
    out = d / "callgrind.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             exe, "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RELAIS_LOG="warn"))
    try:
        g.wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=120)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        cmd = [g.OHA, "--no-tui", "--output-format", "json", "-c", "4", "-m", "POST",
               "-T", "application/json", "-d", body, url]
        subprocess.run(cmd[:4] + ["-n", "300"] + cmd[4:], capture_output=True, check=True, timeout=600)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], capture_output=True, check=True)
        subprocess.run(cmd[:4] + ["-n", str(n)] + cmd[4:], capture_output=True, check=True, timeout=1800)
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    total = 0
    # The dump made after the run holds the requests only (the counters were zeroed before).
    dumps = sorted(d.glob("callgrind.out.*"), key=lambda f: f.stat().st_mtime)
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    for line in dumps[0].read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
            break
    return total / n


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default=str(g.TARGET / "release/relais"))
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--callgrind", action="store_true", help="count instructions with callgrind")
    args = ap.parse_args()
    if args.callgrind:
        mock_port = g.free_port()
        mock = g.start_mock(mock_port, [])
        try:
            print(f"callgrind, {args.requests} requests a row after 300 to warm up:")
            print("| mode | before: instructions/request | after | change |")
            print("|---|---|---|---|")
            for mode, body in (("json", g.BODY), ("sse", g.STREAM_BODY)):
                b = callgrind(args.before, mock_port, body, args.requests)
                a = callgrind(args.after, mock_port, body, args.requests)
                print(f"| {mode} | {b:,.0f} | {a:,.0f} | {100 * (a - b) / b:+.1f}% |")
        finally:
            mock.terminate()
        return
    mock_port = g.free_port()
    mock = g.start_mock(mock_port, [])
    rows = {}
    try:
        for r in range(args.rounds):
            # Alternate which binary goes first, so drift in the machine lands on both.
            order = [("before", args.before), ("after", args.after)]
            for name, exe in order if r % 2 == 0 else order[::-1]:
                setup = g.start_relais(mock_port, False, exe, name)
                try:
                    for mode, body in (("json", g.BODY), ("sse", g.STREAM_BODY)):
                        count(setup.proc.pid, setup.url, body, 2000)  # warm-up
                        ins, ms = count(setup.proc.pid, setup.url, body, args.requests)
                        rows.setdefault((name, mode), []).append((ins, ms))
                        shown = "n/a" if ins is None else f"{ins:.0f}"
                        print(f"round {r + 1} {name:6} {mode:4}: {shown} instructions/request, "
                              f"{ms * 1000:6.2f} µs CPU/request", file=sys.stderr)
                finally:
                    setup.stop()
    finally:
        mock.terminate()
    print(f"{args.requests} requests a row, {args.rounds} rounds, medians:")
    print("| mode | before: CPU µs/request | after | change | before: instructions/request | after |")
    print("|---|---|---|---|---|---|")
    for mode in ("json", "sse"):
        bc = median(x[1] for x in rows[("before", mode)]) * 1000
        ac = median(x[1] for x in rows[("after", mode)]) * 1000
        bi = [x[0] for x in rows[("before", mode)] if x[0]]
        ai = [x[0] for x in rows[("after", mode)] if x[0]]
        ins = f"{median(bi):,.0f} | {median(ai):,.0f}" if bi and ai else "n/a | n/a"
        print(f"| {mode} | {bc:.2f} | {ac:.2f} | {100 * (ac - bc) / bc:+.1f}% | {ins} |")


if __name__ == "__main__":
    main()
