"""Issue 7 through the official SDKs: a virtual key under a USD budget. The OpenAI SDK sees the
refusal as a 402 `insufficient_quota` / `budget_exceeded` (and, unlike a 429, does not retry
it); the Anthropic SDK sees its own `billing_error`. The ledger's spend equals what the mock
reported, priced exactly.
"""

import json
import os
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest
from openai import OpenAI

from conftest import UPSTREAM_KEY, binary, free_port, wait_ready

ADMIN = "admin-python-0123456789"

CONFIG = """
[server]
listen = "127.0.0.1:{port}"

[admin]
key = "{admin}"

[governance]
store = "sqlite"
sqlite_path = "{db}"

[providers.up]
type = "openai_compat"
base_url = "{mock}/v1"
api_key = "${{UPSTREAM_KEY}}"

[routes.gpt-4o-mini]
deployments = [{{ provider = "up", model = "gpt-4o-mini" }}]

# Output at USD 1 per million tokens, input free: a request with max_tokens = 10 costs at most
# 10 micro-dollars.
[prices."gpt-4o-mini"]
input = "0"
output = "1"
"""


def admin(url: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def governed(mock_url):
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="relais-py-gov-"))
    cfg = tmp / "relais.toml"
    cfg.write_text(CONFIG.format(port=port, admin=ADMIN, db=tmp / "relais.db", mock=mock_url))
    proc = subprocess.Popen(
        [binary("RELAIS_BIN", "relais"), "serve", "--config", str(cfg)],
        env=dict(os.environ, UPSTREAM_KEY=UPSTREAM_KEY),
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", proc, "relais")
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def test_a_budget_refuses_in_each_sdk_dialect_and_the_ledger_adds_up(governed, mock):
    admin(governed, "POST", "/admin/teams", {"name": "py", "budget_day": "0.00005"})
    key = admin(governed, "POST", "/admin/keys", {"team": "py", "name": "sdk"})["key"]
    # Default retries on: a 402 must not be retried.
    client = OpenAI(base_url=f"{governed}/v1", api_key=key, timeout=30)
    served, output = 0, 0
    with pytest.raises(openai.APIStatusError) as refused:
        for _ in range(20):
            resp = client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=10,
                messages=[{"role": "user", "content": "count to ten please"}],
            )
            served += 1
            output += resp.usage.completion_tokens
    assert refused.value.status_code == 402
    assert refused.value.code == "budget_exceeded"
    assert refused.value.type == "insufficient_quota"
    assert len(mock.requests()) == served, "the refused request never reached the upstream"

    claude = anthropic.Anthropic(base_url=governed, api_key=key, max_retries=2)
    with pytest.raises(anthropic.APIStatusError) as billing:
        claude.messages.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert billing.value.status_code == 402
    assert billing.value.body["error"]["type"] == "billing_error"

    usage = admin(governed, "GET", "/admin/usage?by=key")
    spent = usage["total_cost_pusd"]
    assert usage["usage"][0]["requests"] == served
    # Spend is the output tokens the upstream reported at USD 1 per million: within the
    # budget, and refused only when one more worst case (10 µUSD) could not fit.
    assert usage["usage"][0]["output_tokens"] == output
    assert spent == output * 1_000_000
    assert spent <= 50_000_000
    assert spent + 10_000_000 > 50_000_000
