//! `relais-mock`: the test kit's mock vendor as a process, for SDK tests and benchmarks.
//!
//! Usage: `relais-mock [--listen 127.0.0.1:0] [--api-key KEY]`. Prints `listening on URL` once
//! ready, then serves until killed.

#![allow(clippy::print_stdout, reason = "a CLI reports its address on stdout")]

use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut api_key = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--api-key" => api_key = args.next(),
            other => {
                eprintln!("relais-mock: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let Ok(addr) = listen.parse() else {
        eprintln!("relais-mock: bad --listen {listen}");
        std::process::exit(2);
    };
    if !is_loopback(&addr) {
        eprintln!("relais-mock: refusing to listen on a non-loopback address");
        std::process::exit(2);
    }
    let server = relais_testkit::MockServer::bind(addr, api_key.as_deref()).await;
    println!("listening on {}", server.url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
}

fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}
