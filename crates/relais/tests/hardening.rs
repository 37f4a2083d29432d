//! Issue 17, as a process: the binary under a file-descriptor limit, flooded with silent
//! connections, and its `check` output.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, wait_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_relais");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relais-hard-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn healthz(port: u16, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    Some(buf)
}

/// `relais serve --config CONFIG`, quiet.
fn serve(config: &std::path::Path) -> std::process::Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// User and system CPU time of a process so far, from /proc (Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn issue17_out_of_descriptors_backs_off_and_keeps_serving() {
    let dir = temp_dir("fd");
    let port = free_port();
    let config = dir.join("relais.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nheader_read_timeout_secs = 3\n\n[providers.up]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[routes.r]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\n"
        ),
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec '{BIN}' serve --config '{}' 2>'{}'",
            config.display(),
            log.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_healthy(port);

    // 300 connections that never send a byte, against 256 descriptors.
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    // A real request, made while the descriptors are gone: served once the silent ones are cut.
    let answer = healthz(port, Duration::from_secs(20)).unwrap_or_default();
    let waited = started.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    drop(silent);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(waited < Duration::from_secs(15), "served after {waited:?}");
    // Backing off, not spinning on accept: far less than a core over the wait.
    assert!(
        cpu < waited / 4,
        "relais used {cpu:?} of CPU over {waited:?} while out of descriptors"
    );
    assert!(child.try_wait().unwrap().is_none(), "relais exited");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap();
    let episodes = stderr.matches("out of file descriptors").count();
    assert!(
        (1..=3).contains(&episodes),
        "{episodes} log lines: {stderr}"
    );
    // A config read that failed for want of a descriptor is not a change of config.
    assert!(
        stderr.matches("cannot read the config").count() <= 1,
        "{stderr}"
    );
    assert!(!stderr.contains("config reloaded"), "{stderr}");
}

#[test]
fn issue17_check_masks_a_password_in_a_base_url() {
    let dir = temp_dir("mask");
    let config = dir.join("relais.toml");
    std::fs::write(
        &config,
        "[providers.up]\ntype = \"openai_compat\"\nbase_url = \"https://relais:hunter2-db-password@llm.internal:8000/v1\"\n\n[routes.r]\ndeployments = [{ provider = \"up\", model = \"m\" }]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("https://relais:****@llm.internal:8000/v1"),
        "{text}"
    );
}

/// `[upstream] max_stream_bytes` is process-wide (like the connection pool), so it is tested
/// in a process of its own.
#[test]
fn issue17_a_streamed_answer_past_max_stream_bytes_ends_with_an_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(relais_testkit::MockServer::start(None));
    let dir = temp_dir("stream-cap");
    let port = free_port();
    let config = dir.join("relais.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[upstream]\nmax_stream_bytes = 65536\n\n[providers.up]\ntype = \"openai_compat\"\nbase_url = \"{}/v1\"\n\n[routes.r]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\n",
            mock.url()
        ),
    )
    .unwrap();
    let mut child = serve(&config);
    wait_healthy(port);
    let chat = |content: &str| {
        let body = format!(
            "{{\"model\": \"r\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"{content}\"}}]}}"
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        got
    };
    // The mock echoes the prompt a word a chunk: 6,000 words stream far more than 64 KiB.
    let got = chat(&vec!["word"; 6_000].join(" "));
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{}",
        &got[..got.len().min(300)]
    );
    assert!(
        got.contains("max_stream_bytes"),
        "no error event at the cap"
    );
    assert!(
        !got.contains("[DONE]"),
        "the stream ended cleanly past the cap"
    );
    assert!(
        got.len() < 200 * 1024,
        "{} bytes reached the client",
        got.len()
    );
    // A normal answer is untouched by the cap.
    let got = chat("hello there");
    assert!(got.contains("data: [DONE]"), "{got}");
    let _ = child.kill();
    let _ = child.wait();
}

// ---- TLS on the listener ----

fn sh(dir: &std::path::Path, script: &str) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`) and a certificate it signed (`NAME.pem`, `NAME.key`) for `cn`, made
/// with the openssl command in the test's directory.
fn issue(dir: &std::path::Path, name: &str, ca: &str, cn: &str) {
    if !dir.join(format!("{ca}.pem")).exists() {
        sh(
            dir,
            &format!(
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN={ca} 2>/dev/null"
            ),
        );
    }
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    sh(
        dir,
        &format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key.new -out {name}.csr -subj /CN={cn} 2>/dev/null && \
             openssl x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {name}.pem.new -days 2 -extfile {name}.ext 2>/dev/null && \
             mv {name}.key.new {name}.key && mv {name}.pem.new {name}.pem"
        ),
    );
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn served_subject(port: u16) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn issue17_tls_listener_reloads_its_certificate_and_admin_can_require_client_certs() {
    let dir = temp_dir("tls");
    issue(&dir, "server", "ca", "relais-first");
    issue(&dir, "client", "clients-ca", "ops-laptop");
    issue(&dir, "stranger", "other-ca", "stranger");
    let port = free_port();
    let config = dir.join("relais.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[server.tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nclient_ca_file = \"{d}/clients-ca.pem\"\n\n[admin]\nkey = \"admin-key-0123456789abcdef\"\nrequire_client_cert = true\n\n[providers.up]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[routes.r]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut child = serve(&config);
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let ca = format!("{}/ca.pem", dir.display());
    let resolve = format!("localhost:{port}:127.0.0.1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&["--resolve", &resolve, "--cacert", &ca, &url("/healthz")]) != "200" {
        assert!(Instant::now() < deadline, "relais did not serve TLS");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plain HTTP on the TLS port gets nothing useful.
    assert_ne!(curl(&[&format!("http://127.0.0.1:{port}/healthz")]), "200");

    // The admin API: the key alone is not enough, a client certificate from the configured CA
    // is; one from another CA fails the handshake.
    let admin = ["-H", "authorization: Bearer admin-key-0123456789abcdef"];
    let base = ["--resolve", &resolve, "--cacert", &ca];
    let with = |cert: &str| {
        [
            "--cert".to_owned(),
            format!("{}/{cert}.pem", dir.display()),
            "--key".to_owned(),
            format!("{}/{cert}.key", dir.display()),
        ]
    };
    let args = |extra: &[String]| -> Vec<String> {
        base.iter()
            .chain(admin.iter())
            .map(|s| (*s).to_owned())
            .chain(extra.iter().cloned())
            .chain([url("/admin/routes")])
            .collect()
    };
    let run = |a: Vec<String>| curl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run(args(&[])), "403");
    assert_eq!(run(args(&with("client"))), "200");
    assert_eq!(run(args(&with("stranger"))), "000");
    // A client cannot claim a certificate with the internal header.
    assert_eq!(
        run(args(&[
            "-H".to_owned(),
            "x-relais-internal-client-cert: verified".to_owned()
        ])),
        "403"
    );

    // A keep-alive connection opened with the first certificate...
    let mut held = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut held_in = held.stdin.take().unwrap();
    let mut held_out = held.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = held_out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let ask = |input: &mut std::process::ChildStdin| {
        input
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .unwrap();
        input.flush().unwrap();
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") && Instant::now() < until {
            if let Ok(part) = rx.recv_timeout(Duration::from_millis(200)) {
                got.extend(part);
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    assert!(ask(&mut held_in).starts_with("HTTP/1.1 200"));
    assert!(served_subject(port).contains("relais-first"));

    // ...outlives a new certificate, which the next handshakes get.
    issue(&dir, "server", "ca", "relais-second");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !served_subject(port).contains("relais-second") {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not taken"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ask(&mut held_in).starts_with("HTTP/1.1 200"),
        "the connection opened before the reload was dropped"
    );
    assert_eq!(
        curl(&["--resolve", &resolve, "--cacert", &ca, &url("/healthz")]),
        "200"
    );
    let _ = held.kill();
    let _ = held.wait();
    let _ = child.kill();
    let _ = child.wait();
}
