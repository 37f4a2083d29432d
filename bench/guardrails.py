#!/usr/bin/env python3
"""What the data guardrails cost (issue 22): the detectors' cost per KB of prompt (every
detector on), and the latency they add to a gateway at 2000 req/s with a 2 KB prompt: the same
relais, route and mock, without guardrails, with a policy that names every class as "allow"
(every detector runs on every request, nothing is refused), and with every class masked
(values replaced by placeholders before the mock, the 2 KB answer scanned and the placeholders
restored), measured alternately in one run. Run by bench/guardrails, which builds what it needs."""

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
    # The mock echoes the prompt (up to max_tokens words): a 2 KB answer too, so the answer side
    # (scanning what the vendor wrote, restoring placeholders) is measured with the request side.
    return json.dumps({"model": "bench", "max_tokens": 600, "messages": [{"role": "user", "content": text}]})


MODES = {
    None: "relais (no guardrails)",
    "allow": "relais + guardrails (every class)",
    "mask": "relais + masking (every class)",
}


def start(mock_port, mode):
    """A gateway with no guardrails, with every class found and allowed, or with every class
    masked in the request (placeholders restored in the answer) and in the answer."""
    port = g.free_port()
    cfg = pathlib.Path(tempfile.mkdtemp(prefix="relais-bench-guard-")) / "relais.toml"
    text = g.bench_config(port, mock_port)
    if mode:
        policy = ", ".join(f'{c} = "{mode}"' for c in CLASSES)
        text += f"guardrails = {{ {policy} }}\n"
    cfg.write_text(text)
    proc = subprocess.Popen(g.pinned([str(g.TARGET / "release/relais"), "serve", "--config", str(cfg)], g.GATEWAY_CPUS),
                            stderr=subprocess.DEVNULL, env=dict(g.os.environ, RELAIS_LOG="warn"))
    g.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return g.Setup(MODES[mode], f"http://127.0.0.1:{port}/v1/chat/completions", proc)


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
        setups = [start(mock_port, m) for m in MODES]
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
    print(f"Latency at 2000 req/s, JSON, a 2 KB prompt and a 2 KB answer, {duration} s per row, alternating "
          f"(machine: {g.CORES} cores, gateway pinned to cpu {g.GATEWAY_CPUS}; {time.strftime('%Y-%m-%d')}):\n")
    print("| setup | p50 ms | p99 ms | p99.9 ms | CPU % |")
    print("|---|---|---|---|---|")
    for name, f in rows:
        print(f"| {name} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} | {f['p999_ms']:.3f} | {f.get('cpu_pct', 0):.1f} |")
    med = {}
    for name, f in rows:
        med.setdefault(name, []).append(f)
    plain = med[MODES[None]]
    for mode in ("allow", "mask"):
        guarded = med[MODES[mode]]
        p99 = sorted(f["p99_ms"] for f in guarded)[0] - sorted(f["p99_ms"] for f in plain)[0]
        p50 = sorted(f["p50_ms"] for f in guarded)[0] - sorted(f["p50_ms"] for f in plain)[0]
        cpu = sum(f.get("cpu_pct", 0) for f in guarded) / 2 - sum(f.get("cpu_pct", 0) for f in plain) / 2
        print(f"\n{MODES[mode]} added at 2000 req/s with a 2 KB prompt (best of two each): p50 {p50:+.3f} ms, "
              f"p99 {p99:+.3f} ms (target < 0.5 ms), CPU {cpu:+.1f}% of a core")

if __name__ == "__main__":
    main()
