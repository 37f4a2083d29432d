//! First contact: every file in `examples/` opens with the exact commands that run it, naming
//! every environment variable it reads; this test runs those commands as written (in bash, from
//! the repository root) with the vendors' hosts pointed at the mock vendor, then sends a request
//! through the gateway they started.
//!
//! What the test changes in the commands, and nothing else: `https://<vendor host>` becomes the
//! mock's URL (the path is kept), a file the user supplies (`/etc/...json`) becomes the test
//! service-account key, the AWS key pair becomes the one the mock verifies SigV4 signatures
//! with, and `relais serve` gets `--listen` on a free port so examples can run side by side.
//! Other secrets, `$(openssl rand ...)` and `$(scripts/fetch-model)` run as written.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use relais_testkit::MockServer;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_relais");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The commands of the opening comment: lines `#   command` (three or more spaces), before the
/// first line that is not a comment.
fn opening_commands(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `NAME` of every `NAME=` on the opening `export` lines.
fn exported(commands: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for c in commands.iter().filter(|c| c.starts_with("export ")) {
        let code = c.split(" #").next().unwrap_or(c);
        for word in code.split_whitespace().skip(1) {
            if let Some((name, _)) = word.split_once('=') {
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
                {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

/// Every `${NAME}` and `${NAME:-default}` the config reads (comments excluded).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            rest = &rest[i + 2..];
            let end = rest.find('}').unwrap_or(rest.len());
            let name = rest[..end].split(":-").next().unwrap_or_default();
            names.insert(name.to_owned());
            rest = &rest[end..];
        }
    }
    names
}

/// The first chat route (`[routes.NAME]` without `kind = "embeddings"`).
fn first_chat_route(text: &str) -> Option<String> {
    let mut current: Option<(String, bool)> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            if let Some((name, false)) = current.take() {
                return Some(name);
            }
            let header = line.trim_start_matches('[').trim_end_matches(']');
            if let Some(name) = header.strip_prefix("routes.") {
                let name = if let Some(quoted) = name.strip_prefix('"') {
                    quoted.split('"').next().unwrap_or_default().to_owned()
                } else if name.contains('.') {
                    continue; // [routes.x.retry] and the like
                } else {
                    name.to_owned()
                };
                current = Some((name, false));
            }
        } else if line.replace(' ', "") == "kind=\"embeddings\"" {
            if let Some(c) = current.as_mut() {
                c.1 = true;
            }
        }
    }
    current.filter(|c| !c.1).map(|c| c.0)
}

/// Credentials the mock checks by value (the mock verifies SigV4 with its own key pair).
const MOCK_CREDENTIALS: [(&str, &str); 2] = [
    (
        "AWS_ACCESS_KEY_ID",
        relais_testkit::bedrock::MOCK_AWS_ACCESS_KEY_ID,
    ),
    (
        "AWS_SECRET_ACCESS_KEY",
        relais_testkit::bedrock::MOCK_AWS_SECRET_ACCESS_KEY,
    ),
];

/// The commands with vendor hosts pointed at the mock and user-supplied files and credentials
/// the mock checks replaced by the test's.
fn rewrite(command: &str, mock: &str, key_file: &Path) -> String {
    let mut out = String::new();
    let mut rest = command;
    while let Some(i) = rest.find("https://") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "https://".len()..];
        let host_end = after
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(after.len());
        out.push_str(mock);
        rest = &after[host_end..];
    }
    out.push_str(rest);
    if out.starts_with("export ") {
        out = out
            .split(' ')
            .map(|word| {
                let Some((name, value)) = word.split_once('=') else {
                    return word.to_owned();
                };
                if let Some((_, v)) = MOCK_CREDENTIALS.iter().find(|(n, _)| *n == name) {
                    format!("{name}={v}")
                } else if value.starts_with('/') && value.ends_with(".json") {
                    format!("{name}={}", key_file.display())
                } else {
                    word.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    out
}

struct Response {
    status: u16,
    head: String,
    body: String,
}

fn http(port: u16, method: &str, path: &str, bearer: Option<&str>, body: &str) -> Response {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = bearer
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// Wait for `/healthz` on `port`, or for the script to end (then its output is the failure).
fn wait_serving(child: &mut Child, port: u16, log: &Path, example: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{example}: the opening commands ended ({status}) before relais served:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/healthz", None, "").status == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{example}: relais did not serve within 60 s:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn every_example_runs_from_its_opening_commands_against_the_mock_vendor() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockServer::start(None));
    let work = std::env::temp_dir().join(format!("relais-examples-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let key_file = work.join("vertex-sa.json");
    std::fs::write(
        &key_file,
        relais_testkit::vertex_test_key(&format!("{}/token", mock.url())),
    )
    .unwrap();

    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 8, "examples/ lost files: {examples:?}");

    for path in &examples {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let commands = opening_commands(&text);
        for verb in ["check", "serve"] {
            let line = format!("relais {verb} --config examples/{name}");
            assert!(
                commands.iter().any(|c| c == &line),
                "{name}: the opening comment does not say `{line}`"
            );
        }
        let exported = exported(&commands);
        let missing: Vec<_> = referenced(&text).difference(&exported).cloned().collect();
        assert!(
            missing.is_empty(),
            "{name} reads {missing:?} but its opening commands do not export them"
        );

        // Run the opening commands as written (vendor hosts at the mock), in the repository
        // root, with none of the example's variables inherited from this process.
        let port = free_port();
        let env_out = work.join(format!("{name}.env"));
        let log = work.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut script = String::from(
            "set -euo pipefail\n\
             relais() {\n  if [ \"$1\" = serve ]; then env > \"$EXAMPLE_ENV\"; exec \"$EXAMPLE_BIN\" \"$@\" --listen \"$EXAMPLE_LISTEN\"; fi\n  \"$EXAMPLE_BIN\" \"$@\"\n}\n",
        );
        for c in &commands {
            script.push_str(&rewrite(c, &mock.url(), &key_file));
            script.push('\n');
        }
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(&script)
            .current_dir(repo())
            .env("EXAMPLE_BIN", BIN)
            .env("EXAMPLE_ENV", &env_out)
            .env("EXAMPLE_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("RELAIS_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for var in &exported {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().unwrap();
        wait_serving(&mut child, port, &log, &name);
        let env = env_file(&env_out);
        let app_key = env.get("RELAIS_APP_KEY").map(String::as_str);

        mock.clear_requests();
        let route = first_chat_route(&text).unwrap_or_else(|| panic!("{name} has no chat route"));
        let body = format!(
            r#"{{"model":"{route}","max_tokens":16,"messages":[{{"role":"user","content":"Say hello."}}]}}"#
        );
        let answer = http(port, "POST", "/v1/chat/completions", app_key, &body);
        let served_by_mock = mock.requests().len();
        if let Some(admin) = env.get("RELAIS_ADMIN_KEY") {
            let routes = http(port, "GET", "/admin/routes", Some(admin), "");
            assert_eq!(routes.status, 200, "{name}: /admin/routes {}", routes.body);
            assert!(routes.body.contains(&route), "{name}: {}", routes.body);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            answer.status,
            200,
            "{name}: {} {}\n{}",
            answer.head,
            answer.body,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            served_by_mock >= 1,
            "{name}: the answer did not come from the mock vendor: {}",
            answer.head
        );
        assert!(
            !answer.head.contains("x-relais-deployment: local"),
            "{name}: the local model answered, not the vendor: {}",
            answer.head
        );
        let json: serde_json::Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}", answer.body));
        assert!(
            json["choices"][0]["message"]["content"].is_string(),
            "{name}: {json}"
        );
    }
    drop(mock);
}

#[test]
fn the_opening_comment_parsers_read_what_they_should() {
    let text = "# title\n#\n#   export A=https://x.example/v1 B=$(openssl rand -hex 24)   # two\n#   relais serve --config examples/x.toml\n# prose\n\n[routes.\"m-1.5\"]\nkind = \"embeddings\"\n[routes.chat]\nx = \"${A}\"\ny = \"${C:-}\"\n# z = \"${D}\"\n";
    let commands = opening_commands(text);
    assert_eq!(commands.len(), 2);
    assert_eq!(
        exported(&commands),
        ["A", "B"].map(str::to_owned).into_iter().collect()
    );
    assert_eq!(
        referenced(text),
        ["A", "C"].map(str::to_owned).into_iter().collect()
    );
    assert_eq!(first_chat_route(text).as_deref(), Some("chat"));
    assert_eq!(
        rewrite(&commands[0], "http://127.0.0.1:9", Path::new("/k.json")),
        "export A=http://127.0.0.1:9/v1 B=$(openssl rand -hex 24)   # two"
    );
    assert_eq!(
        rewrite("export F=/etc/sa.json", "", Path::new("/tmp/k.json")),
        "export F=/tmp/k.json"
    );
}

/// `relais serve` on the built-in defaults says where the console is and how to sign in to it.
#[test]
fn serve_with_no_config_says_where_the_console_is_and_how_to_sign_in() {
    for admin_key in [None, Some("first-contact-admin-key-0001")] {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("relais-examples-{}-defaults", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(&dir)
            .env_remove("RELAIS_CONFIG")
            .env_remove("RELAIS_ADMIN_KEY")
            .env("RELAIS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(model) = std::env::var_os("RELAIS_LOCAL_MODEL") {
            cmd.env("RELAIS_MODEL", model);
        }
        if let Some(key) = admin_key {
            cmd.env("RELAIS_ADMIN_KEY", key);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("console") {
                said = Some(line);
                break;
            }
            if Instant::now() > deadline {
                break;
            }
        }
        let console = format!("http://127.0.0.1:{port}/ui/");
        let status = (admin_key.is_some()).then(|| http(port, "GET", "/ui/", None, "").status);
        let _ = child.kill();
        let _ = child.wait();
        let said = said.expect("relais serve said nothing about the console");
        assert!(said.contains(&console), "{said}");
        if admin_key.is_some() {
            assert!(said.contains("sign in"), "{said}");
            assert!(
                !said.contains("first-contact-admin-key"),
                "the key was logged: {said}"
            );
            assert_eq!(status, Some(200));
        } else {
            assert!(said.contains("RELAIS_ADMIN_KEY"), "{said}");
        }
    }
}
