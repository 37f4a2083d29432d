//! `relais-mock`: the test kit's mock vendor as a process, for SDK tests and benchmarks.
//!
//! Usage: `relais-mock [--listen 127.0.0.1:0] [--api-key KEY]` for the full mock (faults,
//! recording), or `relais-mock --fast [--delay-ms N] [--chunks N] [--chunk-delay-ms N]` for the
//! benchmark mock (fixed answers, nothing parsed or recorded). Prints `listening on URL` once
//! ready, then serves until killed. Loopback addresses only.

#![allow(clippy::print_stdout, reason = "a CLI reports its address on stdout")]

use std::io::Write;
use std::time::Duration;

use relais_testkit::FastOptions;

fn number(args: &mut impl Iterator<Item = String>, flag: &str) -> u64 {
    match args.next().and_then(|v| v.parse().ok()) {
        Some(n) => n,
        None => {
            eprintln!("relais-mock: {flag} needs a number");
            std::process::exit(2);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut api_key = None;
    let mut fast = false;
    let mut opts = FastOptions {
        delay: Duration::ZERO,
        chunks: 20,
        chunk_delay: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--api-key" => api_key = args.next(),
            "--fast" => fast = true,
            "--delay-ms" => opts.delay = Duration::from_millis(number(&mut args, &a)),
            "--chunks" => opts.chunks = number(&mut args, &a) as usize,
            "--chunk-delay-ms" => opts.chunk_delay = Duration::from_millis(number(&mut args, &a)),
            other => {
                eprintln!("relais-mock: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        eprintln!("relais-mock: bad --listen {listen}");
        std::process::exit(2);
    };
    if !addr.ip().is_loopback() {
        eprintln!("relais-mock: refusing to listen on a non-loopback address");
        std::process::exit(2);
    }
    if fast {
        let Ok(listener) = tokio::net::TcpListener::bind(addr).await else {
            eprintln!("relais-mock: cannot listen on {addr}");
            std::process::exit(1);
        };
        let url = listener
            .local_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        println!("listening on {url}");
        let _ = std::io::stdout().flush();
        tokio::select! {
            () = relais_testkit::serve_fast(listener, opts) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return;
    }
    let server = relais_testkit::MockServer::bind(addr, api_key.as_deref()).await;
    println!("listening on {}", server.url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
}
