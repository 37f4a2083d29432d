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

const BIN: &str = env!("CARGO_BIN_EXE_relais");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relais-hard-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port, Duration::from_secs(2)).is_none_or(|r| !r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "relais did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

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
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port, Duration::from_secs(2)).is_none_or(|r| !r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "relais did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
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
