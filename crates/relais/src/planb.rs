//! `relais readiness`: Plan B's verdicts from a running gateway's admin API.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

#[derive(clap::Args)]
pub struct ReadinessArgs {
    /// Only this route.
    #[arg(long)]
    route: Option<String>,
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin key; default $RELAIS_ADMIN_KEY.
    #[arg(long)]
    admin_key: Option<String>,
    /// Print the admin API's JSON instead of a report.
    #[arg(long)]
    json: bool,
}

/// GET an admin endpoint and return its JSON, or the gateway's error message.
async fn admin_get(url: &str, key: Option<String>, path: &str) -> Result<Value> {
    let http = relais_providers::shared_client(&relais_providers::HttpSettings::default())
        .map_err(|e| anyhow!(e))?;
    let full = format!("{}{path}", url.trim_end_matches('/'));
    let key = key
        .or_else(|| std::env::var("RELAIS_ADMIN_KEY").ok())
        .ok_or_else(|| anyhow!("no admin key: pass --admin-key or set RELAIS_ADMIN_KEY"))?;
    let resp = http
        .get(&full)
        .bearer_auth(key)
        .send()
        .await
        .with_context(|| format!("cannot reach {full}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let msg = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map_or_else(|| v.to_string(), str::to_owned);
        bail!("HTTP {status}: {msg}");
    }
    Ok(v)
}

fn pct(axis: &Value) -> String {
    match axis.get("value").and_then(Value::as_f64) {
        Some(v) => format!(
            "{:.1}% [{:.1}-{:.1}] n={}",
            v * 100.0,
            axis["low"].as_f64().unwrap_or(0.0) * 100.0,
            axis["high"].as_f64().unwrap_or(0.0) * 100.0,
            axis["n"]
        ),
        None => "-".to_owned(),
    }
}

fn ms(us: &Value) -> String {
    format!("{:.1} ms", us.as_f64().unwrap_or(0.0) / 1000.0)
}

pub fn readiness(a: ReadinessArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let path = match &a.route {
        Some(r) => format!("/admin/readiness?route={r}"),
        None => "/admin/readiness".to_owned(),
    };
    let v = rt.block_on(admin_get(&a.url, a.admin_key, &path))?;
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let backups = v["backups"].as_array().cloned().unwrap_or_default();
    if backups.is_empty() {
        println!("no shadowed backups: add [routes.<name>.shadow] to the config");
        return Ok(());
    }
    println!(
        "window: the last {} days, at most {} samples per backup",
        v["window_days"], v["window_samples"]
    );
    for b in backups {
        let r = &b;
        println!();
        println!(
            "{} -> {} (primary {}): {} on {} samples",
            r["route"].as_str().unwrap_or(""),
            r["backup"].as_str().unwrap_or(""),
            r["primary"].as_str().unwrap_or(""),
            r["verdict"]
                .as_str()
                .unwrap_or("")
                .replace('_', " ")
                .to_uppercase(),
            r["samples"]
        );
        for (name, key) in [
            ("success", "success"),
            ("finish agreement", "finish_agreement"),
            ("tool agreement", "tool_agreement"),
            ("valid tool calls", "tool_args_valid"),
            ("valid JSON", "json_valid"),
            ("extra refusals", "extra_refusals"),
        ] {
            if !r[key].is_null() {
                println!("  {name:<18} {}", pct(&r[key]));
            }
        }
        if let Some(s) = r["similarity"]["value"].as_f64() {
            println!("  {:<18} {s:.3} (n={})", "similarity", r["similarity"]["n"]);
        }
        println!(
            "  {:<18} p50 {} / p95 {} (primary {} / {})",
            "latency",
            ms(&r["latency"]["p50_us"]),
            ms(&r["latency"]["p95_us"]),
            ms(&r["live_latency"]["p50_us"]),
            ms(&r["live_latency"]["p95_us"])
        );
        if let Some(c) = r["cost_ratio"].as_f64() {
            println!("  {:<18} {c:.2}x the primary's", "cost");
        }
        if let Some(gaps) = r["capability_gaps"].as_array().filter(|g| !g.is_empty()) {
            let gaps: Vec<&str> = gaps.iter().filter_map(Value::as_str).collect();
            println!("  {:<18} {}", "lacks", gaps.join(", "));
        }
        for reason in r["reasons"].as_array().into_iter().flatten() {
            println!("  - {}", reason.as_str().unwrap_or(""));
        }
        for note in r["notes"].as_array().into_iter().flatten() {
            println!("  note: {}", note.as_str().unwrap_or(""));
        }
    }
    Ok(())
}
