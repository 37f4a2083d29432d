//! Shared harness: the mock vendor and a relais server on loopback, both in-process.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a failure is a failed test; each test binary uses a subset"
)]

use std::time::Duration;

use relais_testkit::{MockServer, psql};
use serde_json::Value;
use tokio::sync::oneshot;

pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";
pub const AZURE_KEY: &str = "azure-secret-key-0123456789";

pub struct Gateway {
    pub url: String,
    pub mock: MockServer,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    /// Start the mock and a gateway whose config is `base` plus `extra`. In the config text,
    /// `MOCK` stands for the mock's URL.
    pub async fn start(extra: &str) -> Self {
        let mock = MockServer::start(Some(UPSTREAM_KEY)).await;
        Self::start_with(mock, extra).await
    }

    pub async fn start_with(mock: MockServer, extra: &str) -> Self {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
shutdown_grace_secs = 2

[providers.up]
type = "openai_compat"
base_url = "MOCK/v1"
api_key = "{UPSTREAM_KEY}"

[providers.backup]
type = "openai_compat"
base_url = "MOCK/v1"
api_key = "{UPSTREAM_KEY}"

[routes.gpt-4o-mini]
deployments = [{{ provider = "up", model = "gpt-4o-mini" }}]

[routes.failover]
deployments = [{{ provider = "up", model = "primary" }}, {{ provider = "backup", model = "secondary" }}]

[routes.emb]
kind = "embeddings"
deployments = [{{ provider = "up", model = "text-embedding-3-small" }}]
{extra}
"#
        )
        .replace("MOCK", &mock.url());
        Self::start_text(mock, &text).await
    }

    /// A gateway on exactly this config text (`MOCK` already replaced) in front of `mock`.
    pub async fn start_text(mock: MockServer, text: &str) -> Self {
        let text = text.to_owned();
        let mut raw = relais_server::config::parse(&text, "test.toml").unwrap();
        let mut runtime = relais_server::config::build(&raw, &text, "test.toml").unwrap();
        // Every gateway its own write-ahead directory (several may share a store).
        if let Some(g) = raw.governance.as_mut() {
            g.ledger_dir.get_or_insert_with(|| {
                std::env::temp_dir()
                    .join(format!("relais-ledger-{:x}", fastrand::u64(..)))
                    .display()
                    .to_string()
            });
        }
        relais_server::config::open_state(&raw, &mut runtime, "test.toml")
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(relais_server::serve(runtime, listener, async {
            let _ = rx.await;
        }));
        Self {
            url,
            mock,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        Self::client()
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// GET `path` and return the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        Self::client()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> reqwest::Response {
        Self::client()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The JSON payloads of an SSE body, `[DONE]` as the string "[DONE]".
pub fn sse_payloads(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .map(|d| {
            if d == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(d).unwrap()
            }
        })
        .collect()
}

/// The JSON payloads of an SSE body whatever `event:` lines precede them (Anthropic's frames
/// too); `[DONE]` as the string "[DONE]".
pub fn sse_data_payloads(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            if d == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(d).unwrap_or_else(|_| panic!("not JSON: {d}"))
            }
        })
        .collect()
}

static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Send this test binary's log (everything at `level` and above, every crate) to a buffer that
/// [`logs`] reads. The first call in a binary sets the level.
pub fn capture_logs(level: tracing::Level) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// What the test binary logged so far.
pub fn logs() -> String {
    String::from_utf8_lossy(
        &LOG.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

/// Assert an OpenAI-shaped error body and return its `error` object.
pub async fn error_of(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json"
    );
    assert!(resp.headers().get("x-request-id").is_some());
    let v: Value = resp.json().await.unwrap();
    let e = v.get("error").cloned().expect("error object");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert!(e.get("type").is_some() && e.get("code").is_some() && e.get("param").is_some());
    e
}

pub const ADMIN: &str = "admin-key-0123456789abcdef";

/// A throwaway Redis on `port` (loopback, nothing saved), for tests where Redis comes up late.
pub fn redis_on(port: u16) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed (.ci/run checks Redis)")
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `[governance]` section for a fresh store of `kind`, and a way to read everything the
/// store holds as text (to prove no secret is in it).
pub async fn store(kind: &str) -> (String, Box<dyn Fn(bool) -> String + Send + Sync>) {
    match kind {
        "sqlite" => {
            let dir = std::env::temp_dir().join(unique("relais-gov"));
            let path = dir.join("relais.db");
            let section = format!(
                "[governance]\nstore = \"sqlite\"\nsqlite_path = \"{}\"\nrefresh_secs = 1\n",
                path.display()
            );
            let dump = move |cleanup: bool| {
                if cleanup {
                    let _ = std::fs::remove_dir_all(&dir);
                    return String::new();
                }
                // The database and its write-ahead log, as raw bytes.
                let mut all = Vec::new();
                for f in ["relais.db", "relais.db-wal"] {
                    all.extend(std::fs::read(dir.join(f)).unwrap_or_default());
                }
                String::from_utf8_lossy(&all).into_owned()
            };
            (section, Box::new(dump))
        }
        _ => {
            let base = std::env::var("RELAIS_TEST_POSTGRES_URL").unwrap_or_else(|_| {
                "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned()
            });
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL must be reachable on 127.0.0.1:5432 (.ci/run starts it)");
            tokio::spawn(conn);
            let schema = unique("relais_gov");
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
                .unwrap();
            let url = format!("{base} options='-c search_path={schema}'");
            let section = format!(
                "[governance]\nstore = \"postgres\"\npostgres_url = \"{url}\"\nrefresh_secs = 1\n"
            );
            let dump = move |cleanup: bool| {
                let sql = if cleanup {
                    format!("DROP SCHEMA {schema} CASCADE")
                } else {
                    format!(
                        "SELECT t::text FROM {schema}.relais_keys t UNION ALL SELECT t::text FROM {schema}.relais_teams t"
                    )
                };
                psql(&sql)
            };
            (section, Box::new(dump))
        }
    }
}

pub async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_as(gw, ADMIN, method, path, body).await
}

/// Create the team `team` (its admin body: name, limits, policies) and a key in it named
/// `<name>-k`; the key's secret.
pub async fn team_key(gw: &Gateway, team: Value) -> String {
    let name = team["name"].as_str().unwrap().to_owned();
    let (status, t) = admin(gw, "POST", "/admin/teams", Some(team)).await;
    assert_eq!(status, 201, "{t}");
    let (status, k) = admin(
        gw,
        "POST",
        "/admin/keys",
        Some(serde_json::json!({"team": name, "name": format!("{name}-k")})),
    )
    .await;
    assert_eq!(status, 201, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

/// An admin call with credential `key`.
pub async fn admin_as(
    gw: &Gateway,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = Gateway::client();
    let url = format!("{}{path}", gw.url);
    let rb = match method {
        "GET" => c.get(url),
        "PATCH" => c.patch(url),
        "DELETE" => c.delete(url),
        _ => c.post(url),
    };
    let rb = match body {
        Some(b) => rb.json(&b),
        None => rb,
    };
    let resp = rb.bearer_auth(key).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// A `redis-cli` command against the test Redis (127.0.0.1:6379); its answer, trimmed.
pub fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli must be installed (.ci/run checks Redis)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
