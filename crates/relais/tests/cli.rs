//! The binary as a user runs it: `check`, `serve` with SIGTERM, `chat`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, wait_healthy};
use relais_testkit::{Fault, MockServer, psql};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_relais");

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relais-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relais.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(mock: &str, port: u16) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 10\n\n[providers.up]\ntype = \"openai_compat\"\nbase_url = \"{mock}/v1\"\napi_key = \"${{RELAIS_TEST_UPSTREAM_KEY}}\"\n\n[routes.gpt-4o-mini]\ndeployments = [{{ provider = \"up\", model = \"gpt-4o-mini\" }}]\n"
    )
}

#[test]
fn check_prints_routes_with_secrets_masked() {
    let path = temp_config("check", &config("http://127.0.0.1:9", 8080));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("RELAIS_TEST_UPSTREAM_KEY", "sk-test-very-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("gpt-4o-mini (chat, failover): up/gpt-4o-mini"),
        "{stdout}"
    );
    assert!(stdout.contains("api_key=sk-t****"), "{stdout}");
    assert!(!stdout.contains("very-secret"), "{stdout}");
}

/// `relais check` warns when a route's fallback chain loses a capability its primary has.
#[test]
fn check_warns_when_a_backup_lacks_what_the_primary_has() {
    let text = format!(
        "{}\n[routes.agent]\ndeployments = [{{ provider = \"up\", model = \"big\" }}, {{ provider = \"up\", model = \"small\", tools = false, context_window = 8192 }}]\nfallbacks = {{ context_window = \"gpt-4o-mini\" }}\n",
        config("http://127.0.0.1:9", 8080)
    );
    let path = temp_config("check-warn", &text);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("RELAIS_TEST_UPSTREAM_KEY", "sk-test-very-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: routes.agent: up/small lacks tools that the primary up/big has"),
        "{stdout}"
    );
    assert!(stdout.contains("context window"), "{stdout}");
    assert!(
        stdout.contains("on context window: falls back to route gpt-4o-mini"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_and_field_of_an_error() {
    let path = temp_config(
        "bad",
        "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body = 5\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("max_body"), "{stderr}");

    let path = temp_config("env", &config("http://127.0.0.1:9", 8080));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("RELAIS_TEST_UPSTREAM_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RELAIS_TEST_UPSTREAM_KEY is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("relais.toml:8:"), "{stderr}");
}

#[test]
fn serve_drains_a_stream_on_sigterm_and_exits_zero() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(Some("sk-test-upstream-0001")));
    // 9 frames, 200 ms apart: the stream outlives the signal by more than a second.
    mock.push_fault(Fault {
        chunk_delay_ms: Some(200),
        ..Fault::default()
    });
    let port = free_port();
    let path = temp_config("serve", &config(&mock.url(), port));
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RELAIS_TEST_UPSTREAM_KEY", "sk-test-upstream-0001")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(port);

    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi there"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("data: [DONE]"),
        "stream did not finish: {rest}"
    );
    assert!(rest.contains("said: "), "{rest}");

    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("draining"), "{logs}");
    assert!(
        !logs.contains("sk-test-upstream-0001"),
        "secret in logs: {logs}"
    );
    drop(mock);
}

#[test]
fn chat_streams_an_answer_to_the_terminal() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(None));
    let port = free_port();
    let path = temp_config("chat", &config(&mock.url(), port));
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RELAIS_TEST_UPSTREAM_KEY", "unused")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(port);
    let out = Command::new(BIN)
        .args([
            "chat",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "-m",
            "gpt-4o-mini",
            "hello relais",
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello from mock! You said: hello relais\n"
    );
    let out = Command::new(BIN)
        .args([
            "chat",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "-m",
            "gpt-4o-mini",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

fn local_model() -> PathBuf {
    std::env::var_os("RELAIS_LOCAL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".local/share/relais/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

#[test]
fn serve_with_no_config_answers_from_the_local_model() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("relais-cli-{}-defaults", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .env_remove("RELAIS_CONFIG")
        .env("RELAIS_MODEL", local_model())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(port);
    let body = r#"{"model":"default","temperature":0,"max_tokens":16,"messages":[{"role":"user","content":"Explain in a few sentences why the sky is blue."}]}"#;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let text = json["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Rayleigh"), "{text}");
    assert_eq!(json["usage"]["completion_tokens"], 16);
}

#[test]
fn serve_with_a_missing_model_fails_at_start_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("relais-cli-{}-nomodel", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env_remove("RELAIS_CONFIG")
        .env("RELAIS_MODEL", "/nonexistent/dir/model.gguf")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/dir/model.gguf"), "{stderr}");
    assert!(stderr.contains("fetch-model"), "{stderr}");
}

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}

/// The running binary picks up an edited config (on SIGHUP, or by watching the file) without
/// restarting, refuses a broken one with a log line, and keeps serving the last good one.
#[test]
fn serve_reloads_its_config_and_refuses_a_broken_one() {
    let port = free_port();
    let base = config("http://127.0.0.1:9", port);
    let path = temp_config("reload", &base);
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RELAIS_TEST_UPSTREAM_KEY", "sk-test-upstream-0001")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(port);
    assert!(!get(port, "/v1/models").contains("added-route"));
    let wait_models = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if get(port, "/v1/models").contains("added-route") == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the reload did not take effect");
    };
    let added = format!(
        "{base}\n[routes.added-route]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\n"
    );
    std::fs::write(&path, &added).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_models(true);
    // Broken: an unknown field. Refused; the added route keeps serving.
    std::fs::write(&path, format!("{added}\n[server2]\n")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(get(port, "/v1/models").contains("added-route"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("config reloaded"), "{log}");
    assert!(log.contains("config reload refused"), "{log}");
    assert!(
        log.contains("server2"),
        "the refusal names the problem: {log}"
    );
}

fn relais(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RELAIS_TEST_UPSTREAM_KEY", "sk-test-upstream-0001")
        .output()
        .unwrap()
}

/// `relais teams` and `relais keys` work on the config's store; a running gateway accepts a key
/// issued by the CLI (it reads the store on a miss) and refuses it once revoked (after its
/// refresh).
#[test]
fn keys_issued_by_the_cli_work_on_a_running_gateway() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(Some("sk-test-upstream-0001")));
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("relais-cli-{}-keys", std::process::id()));
    let text = format!(
        "{}\n[governance]\nstore = \"sqlite\"\nsqlite_path = \"{}\"\nrefresh_secs = 1\n",
        config(&mock.url(), port),
        dir.join("relais.db").display()
    );
    let path = temp_config("keys", &text);
    // A guardrail rule the CLI cannot read is refused before anything is written.
    let out = relais(
        &["teams", "create", "search", "--guardrails", "email=hide"],
        &path,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("class=action"));
    let out = relais(
        &[
            "teams",
            "create",
            "search",
            "--routes",
            "gpt-4o-mini",
            "--guardrails",
            "email=block",
        ],
        &path,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relais(
        &["keys", "create", "--team", "search", "--name", "app"],
        &path,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(key.starts_with("rk-") && key.len() == 67, "{key}");
    let out = relais(&["keys", "list"], &path);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains(&key[..10]) && !list.contains(&key), "{list}");
    let id = list.split_whitespace().next().unwrap().to_owned();

    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RELAIS_TEST_UPSTREAM_KEY", "sk-test-upstream-0001")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(port);
    let ask_with = |key: &str, text: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{text}"}}]}}"#
        );
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf
    };
    let ask = |key: &str| ask_with(key, "hi");
    assert!(ask(&key).starts_with("HTTP/1.1 200"));
    assert!(ask("not-a-key").starts_with("HTTP/1.1 401"));
    // The team's guardrail policy holds on every route its keys use.
    let refused = ask_with(&key, "mail ops@example.com");
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("guardrail_blocked"), "{refused}");
    let out = relais(&["keys", "revoke", &id], &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert!(ask(&key).starts_with("HTTP/1.1 401"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/1.1 exchange over a fresh connection: (status, x-request-id, body), or `None` when
/// the connection failed or broke before the response was complete.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    bearer: &str,
    body: &str,
) -> Option<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    let rid = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))?
        .to_owned();
    // Chunked bodies end with a zero-length chunk: without it the response was cut.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
        && !rest.ends_with("0\r\n\r\n")
    {
        return None;
    }
    Some((status, rid, rest.to_owned()))
}

/// A gateway config with a virtual key (at most 12 requests at once, counted in Redis with a
/// 2 s lease), an admin key and the ledger, its store `sqlite` (a file in
/// the returned directory) or `postgres` (a schema named after the test, dropped by
/// [`drop_store`]); a team and a key issued by the CLI. Returns (config path, client key, dir).
fn governed_gateway(
    name: &str,
    store: &str,
    mock: &str,
    port: u16,
    extra: &str,
) -> (PathBuf, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("relais-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let prefix = format!("relais_cli_{}_{name}", std::process::id());
    let store_section = if store == "postgres" {
        psql(&format!(
            "DROP SCHEMA IF EXISTS {prefix} CASCADE; CREATE SCHEMA {prefix}"
        ));
        format!(
            "store = \"postgres\"\npostgres_url = \"host=127.0.0.1 port=5432 user=postgres dbname=test options='-c search_path={prefix}'\"\nledger_dir = \"{}\"\n",
            dir.join("ledger").display()
        )
    } else {
        format!(
            "store = \"sqlite\"\nsqlite_path = \"{}\"\n",
            dir.join("relais.db").display()
        )
    };
    let text = format!(
        "{}{extra}\n[admin]\nkey = \"admin-0123456789\"\n[governance]\n{store_section}limits = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\nlease_secs = 2\nledger_ship_ms = 250\n",
        config(mock, port),
    );
    let path = temp_config(name, &text);
    let out = relais(
        &["teams", "create", "load", "--max-concurrent", "64"],
        &path,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relais(
        &[
            "keys",
            "create",
            "--team",
            "load",
            "--name",
            "k",
            "--max-concurrent",
            "12",
        ],
        &path,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        path,
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        dir,
    )
}

/// Remove what [`governed_gateway`] made: its directory and, for PostgreSQL, its schema.
fn drop_store(name: &str, dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    psql(&format!(
        "DROP SCHEMA IF EXISTS relais_cli_{}_{name} CASCADE",
        std::process::id()
    ));
}

fn spawn_serve(path: &std::path::Path) -> std::process::Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(path)
        .env("RELAIS_TEST_UPSTREAM_KEY", "sk-test-upstream-0001")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Clients that keep asking (half of them streams) until `stop`; returns what each fully
/// received: (status, request id, body).
fn load(
    port: u16,
    key: &str,
    clients: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(u16, String, String)>>> {
    (0..clients)
        .map(|c| {
            let (key, stop) = (key.to_owned(), stop.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let stream = (c + i) % 2 == 0;
                    let body = format!(
                        r#"{{"model":"gpt-4o-mini","stream":{stream},"max_tokens":{},"messages":[{{"role":"user","content":"request {i} of client {c} with some words"}}]}}"#,
                        1 + (c * 7 + i) % 12
                    );
                    match exchange(port, "POST", "/v1/chat/completions", &key, &body) {
                        Some(r) => got.push(r),
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                got
            })
        })
        .collect()
}

fn ledger_rows(port: u16, rid: &str) -> serde_json::Value {
    let (status, _, body) = exchange(
        port,
        "GET",
        &format!("/admin/ledger/{rid}"),
        "admin-0123456789",
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `kill -9` under load, then a restart on the same directory: every response a client fully
/// received has exactly one ledger row (rows left in the write-ahead file are shipped at start,
/// none twice), and the dead instance's places in flight come back when their lease ends.
#[test]
fn kill_9_under_load_loses_no_ledger_row_and_frees_its_leases_with_sqlite() {
    kill_9_under_load("kill9_sqlite", "sqlite");
}

#[test]
fn kill_9_under_load_loses_no_ledger_row_and_frees_its_leases_with_postgres() {
    kill_9_under_load("kill9_pg", "postgres");
}

fn kill_9_under_load(name: &str, store: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(Some("sk-test-upstream-0001")));
    mock.push_fault(Fault {
        delay_ms: Some(15),
        chunk_delay_ms: Some(5),
        times: Some(0),
        ..Fault::default()
    });
    let port = free_port();
    let (path, key, dir) = governed_gateway(name, store, &mock.url(), port, "");
    let mut child = spawn_serve(&path);
    wait_healthy(port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Fewer clients than the key's 12 places: a place is freed in Redis just after its
    // response, so a client asking again at once could otherwise find it still taken.
    let clients = load(port, &key, 8, &stop);
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let received: Vec<(u16, String, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let ok: Vec<&(u16, String, String)> = received.iter().filter(|r| r.0 == 200).collect();
    assert!(ok.len() > 50, "only {} answers before the kill", ok.len());
    assert!(
        received.iter().all(|r| r.0 == 200),
        "refused under load: {:?}",
        received.iter().find(|r| r.0 != 200)
    );

    let mut again = spawn_serve(&path);
    wait_healthy(port);
    let mut missing = Vec::new();
    for (_, rid, _) in &ok {
        let rows = ledger_rows(port, rid);
        let requests = rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["attempt"] == 0)
            .count();
        if requests != 1 {
            missing.push((rid.clone(), requests));
        }
    }
    let upstream = mock.requests().len();
    eprintln!(
        "figures: {store}: kill -9 after 1.5 s of load: {} responses received, {upstream} requests reached the upstream, {} without exactly one ledger row",
        ok.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "{missing:?}");

    // The killed instance held up to 8 places in flight in Redis; after the 2 s lease all 12
    // are free again.
    std::thread::sleep(Duration::from_millis(2500));
    mock.push_fault(Fault {
        delay_ms: Some(500),
        times: Some(0),
        ..Fault::default()
    });
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            let key = key.clone();
            std::thread::spawn(move || {
                let body = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"after {i}"}}]}}"#);
                exchange(port, "POST", "/v1/chat/completions", &key, &body).map_or(0, |r| r.0)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let _ = Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status();
    assert!(again.wait().unwrap().success());
    drop_store(name, &dir);
}

/// SIGTERM under a load of streams: every stream a client read to its end finished with
/// `[DONE]` or with an error event at the drain deadline, and after exit the ledger has one row
/// for every request that reached the upstream.
#[test]
fn sigterm_under_load_finishes_streams_and_ledgers_every_upstream_request_with_sqlite() {
    sigterm_under_load("term_sqlite", "sqlite");
}

#[test]
fn sigterm_under_load_finishes_streams_and_ledgers_every_upstream_request_with_postgres() {
    sigterm_under_load("term_pg", "postgres");
}

fn sigterm_under_load(name: &str, store: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(Some("sk-test-upstream-0001")));
    mock.push_fault(Fault {
        chunk_delay_ms: Some(250),
        times: Some(0),
        ..Fault::default()
    });
    let port = free_port();
    let (path, key, dir) = governed_gateway(name, store, &mock.url(), port, "");
    // The drain deadline (1 s) is shorter than most streams (4 to 14 frames, 250 ms apart):
    // short ones finish, long ones are cut with an error event.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("shutdown_grace_secs = 10", "shutdown_grace_secs = 1");
    std::fs::write(&path, text).unwrap();
    let mut child = spawn_serve(&path);
    wait_healthy(port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(port, &key, 8, &stop);
    std::thread::sleep(Duration::from_millis(1200));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.success(), "exit status {status:?}");
    let received: Vec<(u16, String, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let streams: Vec<&String> = received
        .iter()
        .filter(|r| r.0 == 200 && r.2.contains("data: "))
        .map(|r| &r.2)
        .collect();
    let cut = streams
        .iter()
        .filter(|b| !b.contains("data: [DONE]"))
        .count();
    for b in &streams {
        assert!(
            b.contains("data: [DONE]") || b.contains("\"error\""),
            "a stream ended with neither [DONE] nor an error event: {b}"
        );
    }
    // After exit: the ledger (flushed at shutdown) against what the upstream saw.
    let out = relais(&["usage", "--by", "route", "--json"], &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = usage["usage"][0]["requests"].as_u64().unwrap_or(0);
    let upstream = mock.requests().len() as u64;
    eprintln!(
        "figures: {store}: SIGTERM under load: {} streams read, {cut} ended by an error event at the drain deadline; {rows} ledger rows, {upstream} upstream requests",
        streams.len()
    );
    assert!(!streams.is_empty());
    assert!(cut >= 1, "no stream reached the drain deadline");
    assert_eq!(rows, upstream);
    drop_store(name, &dir);
}

/// Gateway processes killed if the test fails before it stops them.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` gateway configs sharing one PostgreSQL schema (keys, ledger) and one Redis prefix
/// (limits), each with its own port and write-ahead directory; `governance` is added to their
/// governance section. Dropping it drops the schema, the directory and the Redis keys.
struct Shared {
    paths: Vec<PathBuf>,
    ports: Vec<u16>,
    prefix: String,
    schema: String,
    dir: PathBuf,
}

impl Shared {
    fn new(tag: &str, n: usize, mock: &str, governance: &str) -> Self {
        let base = std::env::var("RELAIS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned());
        let schema = format!("relais_cli_{tag}_{}", std::process::id());
        psql(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ));
        let url = format!("{base} options='-c search_path={schema}'");
        let prefix = format!("relais_cli_{tag}_{}", std::process::id());
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!("relais-cli-{}-{tag}", std::process::id()));
        let paths = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let text = format!(
                    "{}\n[admin]\nkey = \"admin-0123456789\"\n[governance]\nstore = \"postgres\"\npostgres_url = \"{url}\"\nlimits = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\nledger_dir = \"{}\"\n{governance}",
                    config(mock, *port),
                    dir.join(format!("ledger-{i}")).display()
                );
                temp_config(&format!("{tag}-{i}"), &text)
            })
            .collect();
        Self {
            paths,
            ports,
            prefix,
            schema,
            dir,
        }
    }

    /// A Redis command's answer, one line.
    fn redis(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379"])
            .args(args)
            .output()
            .expect("redis-cli must be installed (.ci/run checks Redis)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        let _ = std::fs::remove_dir_all(&self.dir);
        self.redis(&[
            "EVAL",
            &format!(
                "for _, k in ipairs(redis.call('KEYS', '{}:*')) do redis.call('DEL', k) end return 0",
                self.prefix
            ),
            "0",
        ]);
    }
}

/// Two gateway processes sharing PostgreSQL and Redis; a team limited to 3000 requests per
/// minute and 256 at once. Instance A gets busy enough to lease a slice of the team's limits
/// and admit on its own, then is killed with SIGKILL while its lease is live, never reporting
/// it. Redis keeps counting the lease as granted, so A and B together never pass 3000 in the
/// minute while B takes the rest; when A's hold ends (`lease_secs = 2`) its places in flight
/// and budget reservation come back, and nothing stays reserved once B stops.
#[test]
fn a_lease_holder_killed_mid_window_never_lets_a_limit_be_passed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(Some("sk-test-upstream-0001")));
    mock.push_fault(Fault {
        delay_ms: Some(5),
        times: Some(0),
        ..Fault::default()
    });
    let shared = Shared::new("lease", 2, &mock.url(), "lease_secs = 2\n");
    let out = relais(
        &[
            "teams",
            "create",
            "lease",
            "--rpm",
            "3000",
            "--max-concurrent",
            "256",
            "--budget-total",
            "100",
        ],
        &shared.paths[0],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relais(
        &["keys", "create", "--team", "lease", "--name", "k"],
        &shared.paths[0],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (pa, pb) = (shared.ports[0], shared.ports[1]);
    let mut a = spawn_serve(&shared.paths[0]);
    let b = Children(vec![spawn_serve(&shared.paths[1])]);
    wait_healthy(pa);
    wait_healthy(pb);

    // A under load until it holds a lease that it admits from.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(pa, &key, 8, &stop);
    let lw = format!("{}:team_*:lw", shared.prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lw = loop {
        let found = shared.redis(&["--scan", "--pattern", &lw]);
        if let Some(k) = found.lines().next().filter(|k| !k.is_empty()) {
            if shared.redis(&["HKEYS", k]).contains("r:L") {
                break k.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "A never leased the team's limits"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    a.kill().unwrap();
    a.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let a_ok = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .filter(|r| r.0 == 200)
        .count();
    let subject = lw.trim_end_matches(":lw").to_owned();
    let counted = |what: &str| -> u64 {
        let (zset, extra) = if what == "requests" {
            ("log", "_r")
        } else {
            ("cur", "_k")
        };
        let n: u64 = shared
            .redis(&["ZCARD", &format!("{subject}:{zset}")])
            .parse()
            .unwrap_or(0);
        let w: u64 = shared.redis(&["HGET", &lw, extra]).parse().unwrap_or(0);
        n + w
    };
    let a_upstream = mock.requests().len();
    let after_kill = counted("requests");
    eprintln!(
        "figures: A killed holding a lease: {a_ok} answers received, {a_upstream} reached the upstream, Redis counts {after_kill}"
    );
    assert!(a_ok > 50, "only {a_ok} answers from A before the kill");
    assert!(
        after_kill >= a_upstream as u64,
        "Redis counts {after_kill} requests, A sent {a_upstream} upstream"
    );

    // B takes what is left of the minute: never more. It asks until the upstream sees no new
    // request for a second (the limit refuses the rest), 20 s at most: a fixed time is too
    // short on a busy machine.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(pb, &key, 8, &stop);
    let started = std::time::Instant::now();
    let mut last = (mock.requests().len(), std::time::Instant::now());
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        let n = mock.requests().len();
        if n != last.0 {
            last = (n, std::time::Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let b_answers: Vec<(u16, String, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let b_ok = b_answers.iter().filter(|r| r.0 == 200).count();
    let upstream = mock.requests().len();
    eprintln!(
        "figures: then B: {b_ok} admitted, {} refused; upstream saw {upstream} of the limit of 3000",
        b_answers.len() - b_ok
    );
    assert!(
        b_answers.iter().all(|r| r.0 == 200 || r.0 == 429),
        "{:?}",
        b_answers.iter().find(|r| r.0 != 200 && r.0 != 429)
    );
    assert!(upstream <= 3000, "{upstream} requests past a limit of 3000");
    // What A did not use of its leases is all that is lost for the minute: of its current one,
    // and of the one before if A died between replacing and reporting it (each at most a
    // sixteenth of the limit).
    assert!(
        upstream >= 3000 - 2 * 3000 / 16,
        "only {upstream} of 3000 admitted"
    );

    // B stops and reports its leases; A's hold ended while B ran.
    let mut b = b;
    let mut b = b.0.pop().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status();
    assert!(b.wait().unwrap().success());
    let reserved: u64 = shared
        .redis(&["HGET", &format!("{subject}:res"), "_total"])
        .parse()
        .unwrap_or(0);
    let spent: u64 = shared
        .redis(&["HGET", &format!("{subject}:spend"), "t"])
        .parse()
        .unwrap_or(0);
    eprintln!(
        "figures: after B stopped: in flight {}, reserved {reserved}, spent {spent} nano-USD",
        counted("in flight")
    );
    assert_eq!(counted("in flight"), 0, "places still held");
    assert_eq!(reserved, 0, "budget still reserved");
    assert!(spent > 0, "nothing spent");
}

/// Three gateway processes sharing one PostgreSQL (keys, ledger) and one Redis (limits), under
/// an open-loop load of 2000 requests/s in total for 3 s (CI-sized) against a key limit of 100
/// requests per minute: the upstream sees at most 100 and at least 99 of them, and the ledger
/// has a row for each.
#[test]
fn three_processes_at_2000_per_second_keep_a_key_to_its_100_per_minute() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(MockServer::start(Some("sk-test-upstream-0001")));
    let shared = Shared::new("three", 3, &mock.url(), "");
    let (paths, ports) = (&shared.paths, shared.ports.clone());
    let out = relais(&["teams", "create", "three"], &paths[0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relais(
        &[
            "keys", "create", "--team", "three", "--name", "k", "--rpm", "100",
        ],
        &paths[0],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut children = Children(paths.iter().map(|p| spawn_serve(p)).collect());
    for p in &ports {
        wait_healthy(*p);
    }

    // Open loop: request n leaves at n × 0.5 ms whatever happened to the others.
    let (sent, admitted, refused) = rt.block_on(async {
        // The gateway's own pooled keep-alive client (it installs the TLS crypto provider).
        let client =
            relais_providers::shared_client(&relais_providers::HttpSettings::default()).unwrap();
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for n in 0..6000u32 {
            tokio::time::sleep_until(start + Duration::from_micros(500) * n).await;
            let (client, key) = (client.clone(), key.clone());
            let port = ports[n as usize % 3];
            tasks.push(tokio::spawn(async move {
                client
                    .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16())
            }));
        }
        let elapsed = start.elapsed();
        let mut counts = (0usize, 0usize, 0usize);
        for t in tasks {
            let s = t.await.unwrap();
            counts.0 += 1;
            counts.1 += usize::from(s == 200);
            counts.2 += usize::from(s == 429);
        }
        eprintln!("figures: 6000 requests offered in {elapsed:?}");
        counts
    });
    let upstream = mock.requests().len();
    for c in &mut children.0.drain(..).collect::<Vec<_>>() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        assert!(c.wait().unwrap().success());
    }
    let out = relais(&["usage", "--by", "key", "--json"], &paths[0]);
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ledgered = usage["usage"][0]["requests"].as_u64().unwrap_or(0);
    eprintln!(
        "figures: 3 processes, 2000 req/s for 3 s, key limit 100/min: {sent} sent, {admitted} admitted, {refused} refused with 429, {upstream} reached the upstream, {ledgered} ledger rows"
    );
    drop(shared);
    assert_eq!(
        admitted + refused,
        sent,
        "every request was answered 200 or 429"
    );
    assert_eq!(admitted, upstream);
    assert!(upstream <= 100, "{upstream} admitted past a limit of 100");
    assert!(upstream >= 99, "only {upstream} of 100 admitted");
    assert_eq!(ledgered, upstream as u64);
}

/// `relais readiness`, `relais drill` and `relais promote` drive a running gateway's Plan B
/// through its admin API.
#[test]
fn plan_b_commands_drive_a_running_gateway() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(Some("sk-test-upstream-0001")));
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("relais-cli-planb-{}", std::process::id()));
    let text = format!(
        "{}\n[admin]\nkey = \"admin-key-0123456789abcdef\"\n\n[governance]\nsqlite_path = \"{}\"\nledger_dir = \"{}\"\n\n[providers.backup]\ntype = \"openai_compat\"\nbase_url = \"{}/v1\"\napi_key = \"${{RELAIS_TEST_UPSTREAM_KEY}}\"\n\n[routes.gpt-4o-mini.shadow]\nsample_rate = 1.0\ndeployments = [{{ provider = \"backup\", model = \"backup-model\" }}]\n",
        config(&mock.url(), port),
        dir.join("relais.db").display(),
        dir.join("ledger").display(),
        mock.url()
    );
    let path = temp_config("planb", &text);
    let mut child = spawn_serve(&path);
    wait_healthy(port);
    let url = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--url", &url])
            .env("RELAIS_ADMIN_KEY", "admin-key-0123456789abcdef")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for i in 0..3 {
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("hi {i}")}]});
        let (status, _, _) = exchange(
            port,
            "POST",
            "/v1/chat/completions",
            "none",
            &body.to_string(),
        )
        .unwrap();
        assert_eq!(status, 200);
    }
    let t0 = std::time::Instant::now();
    let report = loop {
        let (ok, out, err) = cli(&["readiness", "--route", "gpt-4o-mini"]);
        assert!(ok, "{err}");
        if out.contains("on 3 samples") || t0.elapsed() > std::time::Duration::from_secs(10) {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        report.contains(
            "gpt-4o-mini -> backup/backup-model (primary up/gpt-4o-mini): NOT READY on 3 samples"
        ),
        "{report}"
    );
    assert!(report.contains("only 3 samples"), "{report}");

    let (ok, out, err) = cli(&[
        "promote",
        "--route",
        "gpt-4o-mini",
        "--to",
        "backup/backup-model",
        "--dry-run",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["forecast"]["requests"], 3, "{v}");
    assert_eq!(v["forecast"]["to"], "backup/backup-model");

    // A drill needs a second deployment in the route: the CLI shows the gateway's refusal.
    let (ok, _, err) = cli(&[
        "drill",
        "--route",
        "gpt-4o-mini",
        "--deployment",
        "up/gpt-4o-mini",
        "--share",
        "10%",
        "--for",
        "1m",
    ]);
    assert!(!ok);
    assert!(err.contains("nothing to fail over to"), "{err}");

    let (ok, out, err) = cli(&[
        "promote",
        "--route",
        "gpt-4o-mini",
        "--to",
        "backup/backup-model",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"to\": \"backup/backup-model\""), "{out}");
    // Now the old primary is the backup, and a drill of the new primary can run.
    let (ok, out, err) = cli(&[
        "drill",
        "--route",
        "gpt-4o-mini",
        "--deployment",
        "backup/backup-model",
        "--share",
        "50%",
        "--for",
        "1m",
    ]);
    assert!(ok, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = d["id"].as_str().unwrap();
    let (ok, out, err) = cli(&["drill", "--stop", id]);
    assert!(ok, "{err}");
    assert!(out.contains("\"stopped\""), "{out}");
    let (ok, out, err) = cli(&["promote", "--route", "gpt-4o-mini", "--undo"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"to\": \"up/gpt-4o-mini\""), "{out}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    drop(mock);
}
