"""Issue 20: the web console in a real browser (Debian's Chromium, driven by Playwright; no
browser is downloaded). A gateway with governance, three admin credentials (admin, viewer,
team_admin) and a ledger seeded through the official OpenAI SDK; each page loads with no
console error and no failed request, its plots draw from the seeded ledger, a viewer can change
nothing, a key made in the UI works with the SDK until it is revoked in the UI, a promotion
made in the UI changes which deployment serves, and a change without the CSRF token is refused.

Screenshots of every page go to $RELAIS_SCREENSHOTS (default: <target dir>/console-screenshots).
"""

import os
import subprocess
import tempfile
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from playwright.sync_api import sync_playwright

from conftest import UPSTREAM_KEY, binary, free_port, target_dir, wait_ready

ADMIN = "console-admin-0123456789"
VIEWER = "console-viewer-0123456789"
TEAM_ADMIN = "console-team-admin-0123456789"
CHROMIUM = os.environ.get("RELAIS_CHROMIUM", "/usr/bin/chromium")
PAGES = ["overview", "routes", "keys", "usage", "requests", "planb", "audit"]

CONFIG = """
[server]
listen = "127.0.0.1:{port}"

[admin]
key = "{admin}"

[[admin.credentials]]
name = "oncall-viewer"
key = "{viewer}"
role = "viewer"

[[admin.credentials]]
name = "search-lead"
key = "{team_admin}"
role = "team_admin"
team = "search"

[governance]
store = "sqlite"
sqlite_path = "{db}"

[providers.up]
type = "openai_compat"
base_url = "{mock}/v1"
api_key = "${{UPSTREAM_KEY}}"

[providers.backup]
type = "openai_compat"
base_url = "{mock}/v1"
api_key = "${{UPSTREAM_KEY}}"

[routes.chat]
deployments = [{{ provider = "up", model = "gpt-4o-mini" }}, {{ provider = "backup", model = "mistral-small" }}]

[routes.other]
deployments = [{{ provider = "backup", model = "mistral-small" }}]

[prices."gpt-4o-mini"]
input = "0.15"
output = "0.60"

[prices."mistral-small"]
input = "0.10"
output = "0.30"

[alerts]
check_secs = 1
"""


@pytest.fixture(scope="module")
def gateway(mock_url):
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"Chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    tmp = Path(tempfile.mkdtemp(prefix="relais-console-"))
    port = free_port()
    cfg = tmp / "relais.toml"
    cfg.write_text(CONFIG.format(port=port, admin=ADMIN, viewer=VIEWER, team_admin=TEAM_ADMIN,
                                 db=tmp / "relais.db", mock=mock_url))
    env = {**os.environ, "UPSTREAM_KEY": UPSTREAM_KEY, "RELAIS_HOME": str(tmp)}
    proc = subprocess.Popen([binary("RELAIS_BIN", "relais"), "serve", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "relais.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/healthz", proc, "relais")
        seed(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def admin_call(url, method, path, body=None, key=ADMIN):
    import json
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method=method,
                                 headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def seed(url):
    """Two teams, a key each, and 40 requests through the SDK on two routes; then a third team
    spends and has its budget cut below that, so its budget alerts fire (the overview lists
    them)."""
    import time
    admin_call(url, "POST", "/admin/teams", {"name": "search", "budget_day": "5"})
    admin_call(url, "POST", "/admin/teams", {"name": "ads"})
    keys = [admin_call(url, "POST", "/admin/keys", {"team": t, "name": f"{t}-svc", "budget_day": "1"})["key"]
            for t in ("search", "ads")]
    for i in range(40):
        client = OpenAI(base_url=f"{url}/v1", api_key=keys[i % 2], max_retries=0)
        model = "chat" if i % 4 else "other"
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"seed {i}"}])
    interns = admin_call(url, "POST", "/admin/teams", {"name": "interns"})
    intern = admin_call(url, "POST", "/admin/keys", {"team": "interns", "name": "intern-svc"})["key"]
    OpenAI(base_url=f"{url}/v1", api_key=intern, max_retries=0).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "one question"}])
    admin_call(url, "PATCH", f"/admin/teams/{interns['id']}", {"budget_day": "0.000001"})
    deadline = time.time() + 20
    while not any(a["alert"] == "budget" for a in admin_call(url, "GET", "/admin/alerts")["alerts"]):
        assert time.time() < deadline, "no budget alert fired"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


class Watched:
    """A page whose console errors, failed requests and HTTP errors are collected."""

    def __init__(self, browser, url):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.url = url
        self.problems = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))

    def sign_in(self, key):
        self.page.goto(f"{self.url}/ui/")
        self.page.fill("#sign-in-key", key)
        self.page.click("#sign-in button[type=submit]")
        self.page.wait_for_selector("#nav:not([hidden])")
        self.wait_ready()

    def wait_ready(self):
        self.page.wait_for_selector("#page[data-ready=true]")

    def open(self, name):
        self.page.evaluate("name => { document.getElementById('page').dataset.ready = 'false'; location.hash = name; }", name)
        self.wait_ready()
        assert self.page.get_attribute("#page", "data-page") == name

    def confirm(self):
        # Answered means closed, or closed and opened again with new contents (a created key's
        # secret reuses the dialog as soon as the server answers, which a fast gateway does
        # between two polls of "is it closed?"): the answered dialog's title is marked first.
        self.page.wait_for_selector("dialog[open]")
        self.page.evaluate("() => { document.querySelector('#dialog-body > h2').dataset.answered = '1'; }")
        self.page.click("#dialog-ok")
        self.page.wait_for_function(
            "() => !document.getElementById('dialog').open || !document.querySelector('#dialog-body > h2[data-answered]')")

    def close(self):
        self.context.close()


def screenshots() -> Path:
    out = Path(os.environ.get("RELAIS_SCREENSHOTS", target_dir() / "console-screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_every_page_loads_clean_and_draws_from_the_ledger(gateway, browser):
    w = Watched(browser, gateway)
    w.sign_in(ADMIN)
    for name in PAGES:
        w.open(name)
        w.page.wait_for_timeout(150)
        w.page.screenshot(path=str(screenshots() / f"{name}.png"), full_page=True)
    assert w.problems == []
    # Plots drew from the seeded ledger: the overview's four series charts have points.
    w.open("overview")
    points = w.page.eval_on_selector_all("figure.chart", "els => els.map(e => Number(e.dataset.points))")
    assert len(points) >= 5 and all(n > 0 for n in points[:4]), points
    assert "HHI" in w.page.inner_text("#page")
    # The alerts firing: the interns team's budget, at 80% and at 100%.
    alerts = w.page.inner_text("#alerts")
    assert "Alerts firing: 2" in alerts and "team interns" in alerts and "budget" in alerts, alerts
    # Routes show each deployment's live state; usage adds up to the seeded requests.
    w.open("routes")
    assert "up/gpt-4o-mini" in w.page.inner_text("#page") and "healthy" in w.page.inner_text("#page")
    w.open("usage")
    w.page.select_option("#usage-by", "route")
    w.page.wait_for_function("() => document.querySelectorAll('#page tbody tr').length == 2")
    text = w.page.inner_text("#page table")
    assert "chat" in text and "other" in text
    # Requests: a row opens its attempts.
    w.open("requests")
    w.page.click("#page tbody tr")
    w.page.wait_for_selector("#request-detail table")
    assert "request" in w.page.inner_text("#request-detail")
    # A CSV export downloads the table.
    w.open("usage")
    with w.page.expect_download() as d:
        w.page.click("#usage-csv")
    assert d.value.suggested_filename.endswith(".csv")
    # Keys and teams show spend against budget as a bar.
    w.open("keys")
    assert w.page.locator(".budget").count() >= 2
    assert w.problems == []
    w.close()


def test_a_viewer_sees_everything_and_changes_nothing(gateway, browser):
    w = Watched(browser, gateway)
    w.sign_in(VIEWER)
    assert "oncall-viewer (viewer)" in w.page.inner_text("#who")
    w.open("keys")
    assert w.page.locator("#new-key").count() == 0
    assert w.page.locator("[data-action]:visible").count() == 0
    w.open("planb")
    assert not w.page.is_visible("#promote-go")
    assert w.problems == []
    # The API refuses a change even with the session's own CSRF token.
    status = w.page.evaluate("""async () => {
        const s = await (await fetch('/admin/session')).json();
        const r = await fetch('/admin/teams', {method: 'POST', headers: {'content-type': 'application/json',
            'x-relais-csrf': s.csrf}, body: JSON.stringify({name: 'viewer-made'})});
        return r.status; }""")
    assert status == 403
    names = [t["name"] for t in admin_call(gateway, "GET", "/admin/teams")["teams"]]
    assert "viewer-made" not in names
    w.close()


def test_a_team_admin_manages_its_own_team_only(gateway, browser):
    w = Watched(browser, gateway)
    w.sign_in(TEAM_ADMIN)
    w.open("keys")
    text = w.page.inner_text("#page")
    assert "search-svc" in text and "ads-svc" not in text
    assert not w.page.is_visible("a[data-page=planb]")
    assert w.problems == []
    w.close()


def test_a_key_made_in_the_ui_works_until_revoked_in_the_ui(gateway, browser):
    w = Watched(browser, gateway)
    w.sign_in(ADMIN)
    w.open("keys")
    w.page.click("#new-key")
    w.page.fill("dialog [name=name]", "made-in-ui")
    w.page.select_option("dialog [name=team]", label="ads")
    w.confirm()
    w.page.wait_for_selector("#new-secret")
    secret = w.page.inner_text("#new-secret").strip()
    assert secret.startswith("rk-")
    w.confirm()
    client = OpenAI(base_url=f"{gateway}/v1", api_key=secret, max_retries=0)
    answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    row = w.page.locator("tr", has_text="made-in-ui")
    row.locator("[data-action=revoke-key]").click()
    w.confirm()
    w.page.wait_for_function("() => [...document.querySelectorAll('tr')].some(r => r.innerText.includes('made-in-ui') && r.innerText.includes('revoked'))")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    # Both changes are in the audit log, by the admin, without the secret.
    w.open("audit")
    text = w.page.inner_text("#page")
    assert "key.create" in text and "key.revoke" in text and secret not in text
    assert w.problems == []
    w.close()


def test_a_promotion_in_the_ui_changes_which_deployment_serves(gateway, browser):
    client = OpenAI(base_url=f"{gateway}/v1", api_key=admin_call(
        gateway, "POST", "/admin/keys", {"team": "ads", "name": "promo"})["key"], max_retries=0)

    def served():
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "who"}])
        return raw.headers["x-relais-deployment"]

    assert served() == "up/gpt-4o-mini"
    w = Watched(browser, gateway)
    w.sign_in(ADMIN)
    w.open("planb")
    w.page.select_option("#promote-route", "chat")
    w.page.select_option("#promote-to", "backup/mistral-small")
    w.page.click("#promote-dry-run")
    w.page.wait_for_selector("#forecast table")
    w.page.click("#promote-go")
    w.confirm()
    w.page.wait_for_selector("#forecast .notice.ok")
    assert served() == "backup/mistral-small"
    w.page.click("#promote-undo")
    w.confirm()
    w.page.wait_for_function("() => document.querySelector('#forecast').innerText.includes('order is back')")
    assert served() == "up/gpt-4o-mini"
    assert w.problems == []
    w.close()


def test_a_change_without_the_csrf_token_is_refused(gateway, browser):
    w = Watched(browser, gateway)
    w.sign_in(ADMIN)
    result = w.page.evaluate("""async () => {
        const r = await fetch('/admin/teams', {method: 'POST', headers: {'content-type': 'application/json'},
            body: JSON.stringify({name: 'csrf-made'})});
        return [r.status, (await r.json()).error.message]; }""")
    assert result[0] == 403 and "CSRF" in result[1]
    # Signed out, the cookie no longer works even if replayed.
    cookies = {c["name"]: c["value"] for c in w.context.cookies()}
    assert "relais_session" in cookies
    w.page.click("#sign-out")
    w.page.wait_for_selector("#sign-in:not([hidden])")
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{gateway}/admin/session", headers={"cookie": f"relais_session={cookies['relais_session']}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    names = [t["name"] for t in admin_call(gateway, "GET", "/admin/teams")["teams"]]
    assert "csrf-made" not in names
    w.close()
