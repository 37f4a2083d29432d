"""Fixtures: the mock vendor and relais as real processes on loopback.

Binaries come from RELAIS_BIN / RELAIS_MOCK_BIN, or the cargo target dir. A missing binary is an
error, never a skip.
"""

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import json
import urllib.error
import urllib.request
import pytest

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-python-0123456789"
CLIENT_KEY = "relais-python-client-key"
# A second key: what one key stored (Responses API), the other must not see.
OTHER_KEY = "relais-python-other-key"
AZURE_API_VERSION = "2024-10-21"
# Bedrock: the mock accepts this access key, with UPSTREAM_KEY as the secret.
BEDROCK_ACCESS_KEY_ID = "AKIDRELAISMOCK"  # relais_testkit::bedrock::MOCK_AWS_ACCESS_KEY_ID
BEDROCK_SESSION_TOKEN = "relais-mock-session-token"
BEDROCK_REGION = "us-west-2"
BEDROCK_MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def binary(env_name: str, name: str) -> str:
    path = os.environ.get(env_name) or str(target_dir() / "debug" / name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{name} binary not found at {path}: build it first (cargo build --bins)")
    return path


def http(method: str, url: str, body=None):
    """A tiny stdlib HTTP client, so the tests depend on nothing but the SDK under test."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw and raw[:1] in b"[{" else raw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early with {proc.returncode}")
        try:
            if http("GET", url)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready at {url}")


@pytest.fixture(scope="session")
def mock_url():
    port = free_port()
    proc = subprocess.Popen(
        [binary("RELAIS_MOCK_BIN", "relais-mock"), "--listen", f"127.0.0.1:{port}", "--api-key", UPSTREAM_KEY],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/_mock/health", proc, "relais-mock")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


CONFIG = """
[server]
listen = "127.0.0.1:{port}"

[auth]
keys = [{{ name = "python", key = "{client_key}" }}, {{ name = "other", key = "{other_key}" }}]

[providers.up]
type = "openai_compat"
base_url = "{mock}/v1"
api_key = "${{UPSTREAM_KEY}}"

[providers.backup]
type = "openai_compat"
base_url = "{mock}/v1"
api_key = "${{UPSTREAM_KEY}}"

[providers.az]
type = "azure"
endpoint = "{mock}"
api_key = "${{UPSTREAM_KEY}}"
api_version = "{api_version}"

# The same vendors through the Responses API (wire_api = "responses").
[providers.resp]
type = "openai_compat"
base_url = "{mock}/v1"
api_key = "${{UPSTREAM_KEY}}"
wire_api = "responses"

[providers.azresp]
type = "azure"
endpoint = "{mock}"
api_key = "${{UPSTREAM_KEY}}"
wire_api = "responses"

[providers.claude]
type = "anthropic"
base_url = "{mock}"
api_key = "${{UPSTREAM_KEY}}"

[providers.gemini]
type = "gemini"
base_url = "{mock}"
api_key = "${{UPSTREAM_KEY}}"

[providers.vertex]
type = "vertex"
base_url = "{mock}"
location = "us-central1"
credentials_file = "{vertex_key}"

[providers.aws]
type = "bedrock"
region = "us-west-2"
base_url = "{mock}"
access_key_id = "${{BEDROCK_ACCESS_KEY_ID}}"
secret_access_key = "${{UPSTREAM_KEY}}"
session_token = "${{BEDROCK_SESSION_TOKEN}}"

# A vendor that is down for the whole run: nothing listens on port 1.
[providers.down]
type = "openai_compat"
base_url = "http://127.0.0.1:1/v1"
api_key = "${{UPSTREAM_KEY}}"

[providers.local]
type = "local"
model_path = "${{RELAIS_LOCAL_MODEL}}"
parallel = 2
threads = 2

[routes.gpt-4o-mini]
deployments = [{{ provider = "up", model = "gpt-4o-mini" }}]

[routes.gpt-5-responses]
deployments = [{{ provider = "resp", model = "gpt-5" }}]

[routes.az-responses]
deployments = [{{ provider = "azresp", model = "my-gpt-5-deployment" }}]

[routes.claude-sonnet-4-5]
deployments = [{{ provider = "claude", model = "claude-sonnet-4-5-20250929" }}]

[routes.claude-failover]
deployments = [{{ provider = "claude", model = "claude-primary" }}, {{ provider = "up", model = "secondary" }}]

[routes."gemini-2.5-flash"]
deployments = [{{ provider = "gemini", model = "gemini-2.5-flash" }}]

[routes.vertex-gemini]
deployments = [{{ provider = "vertex", model = "gemini-2.5-flash" }}]

[routes.bedrock-claude]
deployments = [{{ provider = "aws", model = "anthropic.claude-3-5-haiku-20241022-v1:0" }}]

[routes.local]
deployments = [{{ provider = "local", model = "SmolLM2-135M-Instruct" }}]

[routes.failover]
deployments = [{{ provider = "up", model = "primary" }}, {{ provider = "backup", model = "secondary" }}]

# Routes of their own for tests that inject errors, so the cool-downs and breaker counts those
# errors cause (a 429's retry-after cools a deployment down) touch no other test's route. One
# attempt per deployment: these tests are about how an error reaches the client.
[routes.errors]
deployments = [{{ provider = "up", model = "err-a" }}, {{ provider = "backup", model = "err-b" }}]
retry = {{ attempts = 2 }}

[routes.claude-errors]
deployments = [{{ provider = "claude", model = "claude-errors" }}]
retry = {{ attempts = 1 }}

[routes.bedrock-throttle]
deployments = [{{ provider = "aws", model = "anthropic.claude-3-5-haiku-20241022-v1:0" }}]
retry = {{ attempts = 1 }}

[routes.vendor-down]
deployments = [{{ provider = "down", model = "gone" }}, {{ provider = "backup", model = "survivor" }}]

# Route names no vendor knows, as a team would name them (the coding agents' tests).
[routes.team-coder-openai]
deployments = [{{ provider = "up", model = "gpt-4.1" }}]

[routes.team-coder-anthropic]
deployments = [{{ provider = "claude", model = "claude-sonnet-4-5" }}]

[routes.team-coder-gemini]
deployments = [{{ provider = "gemini", model = "gemini-2.5-pro" }}]

[routes.az-dep]
deployments = [{{ provider = "az", model = "my-gpt-deployment" }}]

[routes.text-embedding-3-small]
kind = "embeddings"
deployments = [{{ provider = "up", model = "text-embedding-3-small" }}]

# The response cache (test_cache_sdk.py): per team, where a static key is its own team.
[routes.cached]
deployments = [{{ provider = "up", model = "gpt-4o-mini" }}]
cache = {{ ttl_secs = 120 }}

# Data guardrails (test_cache_sdk.py): a payment card is refused before it leaves; e-mail
# addresses and IBANs are masked for the vendor and restored for the client.
[routes.guarded]
deployments = [{{ provider = "up", model = "gpt-4o-mini" }}]
guardrails = {{ payment_card = "block", email = "mask", iban = "mask" }}
"""


@pytest.fixture(scope="session")
def relais_url(mock_url):
    port = free_port()
    cfg = Path(tempfile.mkdtemp(prefix="relais-py-")) / "relais.toml"
    # A throwaway service-account key (tests only) whose token endpoint is the mock's.
    key = json.loads((ROOT / "crates/testkit/src/vertex-test-key.json").read_text())
    key["token_uri"] = f"{mock_url}/token"
    vertex_key = cfg.parent / "vertex-key.json"
    vertex_key.write_text(json.dumps(key))
    cfg.write_text(
        CONFIG.format(
            port=port,
            mock=mock_url,
            client_key=CLIENT_KEY,
            other_key=OTHER_KEY,
            api_version=AZURE_API_VERSION,
            vertex_key=vertex_key,
        )
    )
    model = os.environ.get("RELAIS_LOCAL_MODEL") or str(
        Path.home() / ".local/share/relais/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    if not Path(model).exists():
        raise RuntimeError(f"local model {model} is missing: run scripts/fetch-model")
    env = dict(
        os.environ,
        UPSTREAM_KEY=UPSTREAM_KEY,
        RELAIS_LOCAL_MODEL=model,
        BEDROCK_ACCESS_KEY_ID=BEDROCK_ACCESS_KEY_ID,
        BEDROCK_SESSION_TOKEN=BEDROCK_SESSION_TOKEN,
    )
    log = open(cfg.parent / "relais.log", "w")
    proc = subprocess.Popen(
        [binary("RELAIS_BIN", "relais"), "serve", "--config", str(cfg)], env=env, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", proc, "relais")
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "relais did not exit cleanly on SIGTERM"
    log.close()
    assert UPSTREAM_KEY not in (cfg.parent / "relais.log").read_text(), "upstream key leaked into logs"


class Mock:
    def __init__(self, url: str):
        self.url = url

    def fault(self, **fault) -> None:
        http("POST", f"{self.url}/_mock/faults", fault)

    def clear(self) -> None:
        http("DELETE", f"{self.url}/_mock/faults")
        http("DELETE", f"{self.url}/_mock/requests")

    def requests(self) -> list:
        return http("GET", f"{self.url}/_mock/requests")[1]


@pytest.fixture
def mock(mock_url):
    m = Mock(mock_url)
    m.clear()
    yield m
    m.clear()
