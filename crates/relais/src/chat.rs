//! `relais chat`: a streaming client for a quick test of a running gateway.

use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use relais_providers::SseParser;
use serde_json::{Value, json};

#[derive(Args)]
pub struct ChatArgs {
    /// Route (public model name) to ask.
    #[arg(long, short)]
    model: String,
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Client key; default $RELAIS_API_KEY.
    #[arg(long)]
    api_key: Option<String>,
    /// Optional system prompt.
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    max_tokens: Option<u32>,
    /// The user message.
    prompt: String,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(stream(args))
}

async fn stream(args: ChatArgs) -> Result<()> {
    let http = relais_providers::shared_client(&relais_providers::HttpSettings::default())
        .map_err(|e| anyhow!(e))?;
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": args.prompt}));
    let mut body = json!({"model": args.model, "messages": messages, "stream": true,
        "stream_options": {"include_usage": true}});
    if let Some(m) = args.max_tokens {
        body["max_tokens"] = json!(m);
    }
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let mut rb = http
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = args
        .api_key
        .or_else(|| std::env::var("RELAIS_API_KEY").ok())
    {
        rb = rb.bearer_auth(k);
    }
    let mut resp = rb
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or(text);
        bail!("HTTP {status}: {msg}");
    }
    let mut parser = SseParser::new();
    let mut frames = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut usage = None;
    while let Some(chunk) = resp.chunk().await.context("stream broke")? {
        parser.feed(&chunk, &mut frames).map_err(|e| anyhow!(e))?;
        for f in frames.drain(..) {
            if f.data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&f.data).context("gateway sent invalid JSON")?;
            if let Some(err) = v.get("error") {
                writeln!(out)?;
                bail!(
                    "stream error: {}",
                    err.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                );
            }
            if let Some(t) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                write!(out, "{t}")?;
                out.flush()?;
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                usage = Some(u.clone());
            }
        }
    }
    writeln!(out)?;
    if let Some(u) = usage {
        eprintln!(
            "[{} prompt + {} completion tokens]",
            u["prompt_tokens"], u["completion_tokens"]
        );
    }
    Ok(())
}
