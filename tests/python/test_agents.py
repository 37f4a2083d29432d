"""The coding agents teams run, each run for real and non-interactively through relais against
the mock vendor acting as a scripted agent (a prompt naming `relais-agent-write:<path>` makes it
call the agent's own file-writing tool, then finish once the tool's result is back). Each agent
completes that tool round trip, which writes the file, through a route of its own vendor and a
route of another vendor, on a route name no vendor knows.

The agents are installed, pinned, by .ci/run (npm) into the cache outside the clone; a missing
one is an error, never a skip. Each runs with a HOME of its own (no user config, no state left
behind), its telemetry and update checks off, and only loopback to reach.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLIENT_KEY

AGENTS = Path(os.environ.get("RELAIS_AGENTS_DIR", Path.home() / ".cache/relais/agents/pinned"))
CONTENT = "written through relais"  # relais_testkit::behaviour::AGENT_CONTENT
# The routes: the agent's own vendor and another, under names no vendor has.
OPENAI_ROUTE, ANTHROPIC_ROUTE, GEMINI_ROUTE = "team-coder-openai", "team-coder-anthropic", "team-coder-gemini"


def agent(name: str) -> str:
    path = AGENTS / "node_modules/.bin" / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{name} is not installed at {path}: .ci/run installs the pinned agents (npm)")
    return str(path)


def run(cmd, home: Path, cwd: Path, env: dict, timeout=180) -> str:
    full = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "NO_UPDATE_NOTIFIER": "1",
        "DO_NOT_TRACK": "1",
        "CI": "true",
        **env,
    }
    # Every connection the agent and its children open is recorded: loopback only.
    trace = home / "connect.trace"
    traced = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *cmd]
    p = subprocess.run(traced, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"{cmd[0]} exited {p.returncode}:\n{out[-4000:]}"
    outside = [
        line
        for line in trace.read_text().splitlines()
        if ("AF_INET" in line and 'inet_addr("127.' not in line) or ("AF_INET6" in line and '"::1"' not in line)
    ]
    assert not outside, f"{Path(cmd[0]).name} tried to reach beyond loopback:\n" + "\n".join(outside[:10])
    return out


def workspace(tmp_path: Path, tag: str):
    home, cwd = tmp_path / f"home-{tag}", tmp_path / f"work-{tag}"
    home.mkdir()
    cwd.mkdir()
    target = cwd / "relais-agent.txt"
    prompt = f"Create the file as asked. relais-agent-write:{target}"
    return home, cwd, target, prompt


def served_by(mock, route_path: str) -> bool:
    return any(r["path"].startswith(route_path) for r in mock.requests())


@pytest.mark.parametrize("route,upstream", [(OPENAI_ROUTE, "/v1/chat/completions"), (ANTHROPIC_ROUTE, "/v1/messages")])
def test_codex_exec(relais_url, mock, tmp_path, route, upstream):
    home, cwd, target, prompt = workspace(tmp_path, "codex")
    codex_home = home / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        f"""model = "{route}"
model_provider = "relais"
# Web search is a hosted tool only OpenAI runs: relais refuses it (a 400 naming it) on a route
# without a native Responses upstream.
web_search = "disabled"
# No update check; no plugin or app catalogue (they are fetched from outside).
check_for_update_on_startup = false
[features]
apps = false
plugins = false
[model_providers.relais]
name = "relais"
base_url = "{relais_url}/v1"
env_key = "RELAIS_KEY"
wire_api = "responses"
"""
    )
    out = run(
        [agent("codex"), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", prompt],
        home,
        cwd,
        {"CODEX_HOME": str(codex_home), "RELAIS_KEY": CLIENT_KEY},
    )
    assert target.read_text().strip() == CONTENT, out[-3000:]
    assert served_by(mock, upstream)


@pytest.mark.parametrize("route,upstream", [(ANTHROPIC_ROUTE, "/v1/messages"), (OPENAI_ROUTE, "/v1/chat/completions")])
def test_claude_code_print(relais_url, mock, tmp_path, route, upstream):
    home, cwd, target, prompt = workspace(tmp_path, "claude")
    out = run(
        [
            agent("claude"), "-p", prompt,
            "--model", route,
            "--permission-mode", "acceptEdits",
            "--allowedTools", "Write",
            "--output-format", "text",
        ],
        home,
        cwd,
        {
            "ANTHROPIC_BASE_URL": relais_url,
            "ANTHROPIC_API_KEY": CLIENT_KEY,
            # The background model (titles, summaries) goes to the same route.
            "ANTHROPIC_SMALL_FAST_MODEL": route,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": route,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
        },
    )
    assert target.read_text().strip() == CONTENT, out[-3000:]
    assert served_by(mock, upstream)
    assert f"Done: wrote {target}." in out


@pytest.mark.parametrize("route,upstream", [(GEMINI_ROUTE, "/v1beta/models/"), (ANTHROPIC_ROUTE, "/v1/messages")])
def test_gemini_cli(relais_url, mock, tmp_path, route, upstream):
    home, cwd, target, prompt = workspace(tmp_path, "gemini")
    settings = home / ".gemini"
    settings.mkdir()
    (settings / "settings.json").write_text(
        json.dumps(
            {
                "telemetry": {"enabled": False},
                "privacy": {"usageStatisticsEnabled": False},
                "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
                "security": {"auth": {"selectedType": "gemini-api-key"}},
            }
        )
    )
    out = run(
        [agent("gemini"), "-m", route, "-p", prompt, "--approval-mode", "yolo"],
        home,
        cwd,
        {
            "GEMINI_API_KEY": CLIENT_KEY,
            "GOOGLE_GEMINI_BASE_URL": relais_url,
            "GEMINI_TELEMETRY_ENABLED": "false",
            "GEMINI_CLI_NO_RELAUNCH": "true",
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
        },
    )
    assert target.read_text().strip() == CONTENT, out[-3000:]
    assert served_by(mock, upstream)


@pytest.mark.parametrize(
    "route,package,upstream",
    [
        # opencode's OpenAI provider speaks the Responses API; its Anthropic one, Messages.
        (OPENAI_ROUTE, "@ai-sdk/openai", "/v1/chat/completions"),
        (GEMINI_ROUTE, "@ai-sdk/anthropic", "/v1beta/models/"),
    ],
)
def test_opencode_run(relais_url, mock, tmp_path, route, package, upstream):
    home, cwd, target, prompt = workspace(tmp_path, "opencode")
    config = {
        "model": f"relais/{route}",
        "autoupdate": False,
        "share": "disabled",
        "provider": {
            "relais": {
                "npm": package,
                "name": "relais",
                "options": {"baseURL": f"{relais_url}/v1", "apiKey": CLIENT_KEY},
                "models": {route: {"name": route, "tool_call": True}},
            }
        },
    }
    (cwd / "opencode.json").write_text(json.dumps(config))
    # opencode installs its plugin package into its config directory on first start: .ci/run
    # installs it (pinned) beside the agents, so the run itself needs no registry.
    shutil.copytree(AGENTS.parent / "opencode-config", home / ".config/opencode")
    out = run(
        [agent("opencode"), "run", prompt],
        home,
        cwd,
        {
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        },
    )
    assert target.read_text().strip() == CONTENT, out[-3000:]
    assert served_by(mock, upstream)
