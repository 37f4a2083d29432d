#!/usr/bin/env python3
"""What the data guardrails cost (issue 22): the detectors' cost per KB of prompt (every
detector on), and the latency they add to a gateway at 2000 req/s with a 2 KB prompt: the same
relais, route and mock, with and without a guardrail policy that names every class (all
"allow", so every detector runs on every request and nothing is refused), measured
alternately in one run. Run by bench/guardrails, which builds what it needs."""

import json
import subprocess
import sys
import tempfile
import pathlib
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gateways as g  # noqa: E402

CLASSES = ["secret", "payment_card", "iban", "fr_nir", "us_ssn", "email", "phone", "ip_address"]
PROSE = ("The quarterly review covers the migration of the billing service to the new cluster, the "
         "on-call rotation for December, and the open questions about data retention. Customers "
         "reported slower invoices during the week of the 14th; the team traced it to a missing index "
         "on the ledger table (version 2.4.1 fixed it, build 20241205.3). ")
VALUES = ("Contact jane.doe@example.com or +33 6 12 34 56 78 about order 12345678 from 10.0.12.7. ")


def two_kb_body():
    text = ""
    while len(text) < 2048 - len(VALUES):
        text += PROSE
    text = (text + VALUES)[:2048]
    return json.dumps({"model": "bench", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})


def start(mock_port, guarded):
    port = g.free_port()
    cfg = pathlib.Path(tempfile.mkdtemp(prefix="relais-bench-guard-")) / "relais.toml"
    text = g.bench_config(port, mock_port)
    if guarded:
        policy = ", ".join(f'{c} = "allow"' for c in CLASSES)
        text += f"guardrails = {{ {policy} }}\n"
    cfg.write_text(text)
    proc = subprocess.Popen(g.pinned([str(g.TARGET / "release/relais"), "serve", "--config", str(cfg)], g.GATEWAY_CPUS),
                            stderr=subprocess.DEVNULL, env=dict(g.os.environ, RELAIS_LOG="warn"))
    g.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    name = "relais + guardrails (every class)" if guarded else "relais (no guardrails)"
    return g.Setup(name, f"http://127.0.0.1:{port}/v1/chat/completions", proc)


def main():
    cost = subprocess.run([str(g.TARGET / "release/examples/guard_cost")], check=True, capture_output=True,
                          text=True).stdout
    print("Detector cost (every built-in detector and one custom pattern, one core):\n")
    print(cost)
    duration = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    body = two_kb_body()
    mock_port = g.free_port()
    mock = g.start_mock(mock_port, [])
    rows = []
    try:
        setups = [start(mock_port, False), start(mock_port, True)]
        try:
            # Alternate, twice each, so drift on the machine falls on both.
            for _ in range(2):
                for s in setups:
                    fig = g.measured(s, s.url, body, 2000, duration)
                    rows.append((s.name, fig))
                    print(f"{s.name:36} 2000: p50 {fig['p50_ms']:.3f} ms  p99 {fig['p99_ms']:.3f} ms  "
                          f"p99.9 {fig['p999_ms']:.3f} ms  ok {fig['success']:.2f}%  cpu {fig.get('cpu_pct', 0):.1f}%",
                          file=sys.stderr)
        finally:
            for s in setups:
                s.stop()
    finally:
        mock.terminate()
        mock.wait()
    print(f"Latency at 2000 req/s, JSON, a 2 KB prompt, {duration} s per row, alternating "
          f"(machine: {g.CORES} cores, gateway pinned to cpu {g.GATEWAY_CPUS}; {time.strftime('%Y-%m-%d')}):\n")
    print("| setup | p50 ms | p99 ms | p99.9 ms | CPU % |")
    print("|---|---|---|---|---|")
    for name, f in rows:
        print(f"| {name} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} | {f['p999_ms']:.3f} | {f.get('cpu_pct', 0):.1f} |")
    med = {}
    for name, f in rows:
        med.setdefault(name, []).append(f)
    plain, guarded = (med["relais (no guardrails)"], med["relais + guardrails (every class)"])
    p99 = sorted(f["p99_ms"] for f in guarded)[0] - sorted(f["p99_ms"] for f in plain)[0]
    p50 = sorted(f["p50_ms"] for f in guarded)[0] - sorted(f["p50_ms"] for f in plain)[0]
    cpu = sum(f.get("cpu_pct", 0) for f in guarded) / 2 - sum(f.get("cpu_pct", 0) for f in plain) / 2
    print(f"\nguardrails added at 2000 req/s with a 2 KB prompt (best of two each): p50 {p50:+.3f} ms, "
          f"p99 {p99:+.3f} ms (target < 0.5 ms), CPU {cpu:+.1f}% of a core")


if __name__ == "__main__":
    main()
