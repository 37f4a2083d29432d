//! `relais readiness`, `relais drill`, `relais promote`: Plan B through a running gateway's
//! admin API.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

#[derive(clap::Args)]
pub struct ReadinessArgs {
    /// Only this route.
    #[arg(long)]
    route: Option<String>,
    #[command(flatten)]
    admin: Admin,
    /// Print the admin API's JSON instead of a report.
    #[arg(long)]
    json: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// "10%" or "0.1" as a share in [0, 1].
fn share(text: &str) -> Result<f64> {
    let v = match text.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.trim().parse::<f64>(),
    }
    .map_err(|_| anyhow!("'{text}' is not a share like 10% or 0.1"))?;
    if !(0.0..=1.0).contains(&v) {
        bail!("'{text}' is not within 0% and 100%");
    }
    Ok(v)
}

/// "15m", "90s", "2h" or a number of seconds.
fn duration_secs(text: &str) -> Result<u64> {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow!("'{text}' is not a duration like 15m"))?;
    Ok(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("'{text}' is not a duration like 90s, 15m or 2h"),
    })
}

fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".to_owned())
}

#[derive(clap::Args)]
pub struct DrillArgs {
    /// The route to drill.
    #[arg(long, required_unless_present_any = ["report", "stop"])]
    route: Option<String>,
    /// The deployment treated as down (`provider/model`).
    #[arg(long, required_unless_present_any = ["report", "stop"])]
    deployment: Option<String>,
    /// Share of the route's requests, e.g. 10%.
    #[arg(long, default_value = "10%")]
    share: String,
    /// How long, e.g. 15m.
    #[arg(long = "for", default_value = "15m")]
    duration: String,
    /// Stop by itself when the route's error rate passes this, e.g. 20%.
    #[arg(long, default_value = "20%")]
    abort_at: String,
    /// Show a drill's report instead of starting one.
    #[arg(long)]
    report: Option<String>,
    /// Stop a running drill.
    #[arg(long)]
    stop: Option<String>,
    #[command(flatten)]
    admin: Admin,
}

pub fn drill(a: DrillArgs) -> Result<()> {
    let v = runtime()?.block_on(async {
        if let Some(id) = &a.report {
            return admin_call(&a.admin, &format!("/admin/drills/{id}"), None).await;
        }
        if let Some(id) = &a.stop {
            let body = serde_json::json!({"by": who()});
            return admin_call(&a.admin, &format!("/admin/drills/{id}/stop"), Some(body)).await;
        }
        let body = serde_json::json!({
            "route": a.route,
            "deployment": a.deployment,
            "share": share(&a.share)?,
            "duration_secs": duration_secs(&a.duration)?,
            "abort_error_rate": share(&a.abort_at)?,
            "started_by": who(),
        });
        admin_call(&a.admin, "/admin/drills", Some(body)).await
    })?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

#[derive(clap::Args)]
pub struct PromoteArgs {
    #[arg(long)]
    route: String,
    /// The deployment to make the primary (`provider/model`).
    #[arg(long, required_unless_present = "undo")]
    to: Option<String>,
    /// Only forecast what would change.
    #[arg(long)]
    dry_run: bool,
    /// Undo the route's promotion.
    #[arg(long, conflicts_with_all = ["to", "dry_run"])]
    undo: bool,
    #[command(flatten)]
    admin: Admin,
}

pub fn promote(a: PromoteArgs) -> Result<()> {
    let body = if a.undo {
        serde_json::json!({"route": a.route, "undo": true, "by": who()})
    } else {
        serde_json::json!({"route": a.route, "to": a.to, "dry_run": a.dry_run, "by": who()})
    };
    let v = runtime()?.block_on(admin_call(&a.admin, "/admin/promote", Some(body)))?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

/// Where the gateway's admin API is.
#[derive(clap::Args)]
pub struct Admin {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin key; default $RELAIS_ADMIN_KEY.
    #[arg(long)]
    admin_key: Option<String>,
}

/// Call an admin endpoint (GET, or POST with `body`) and return its JSON, or the gateway's
/// error message.
async fn admin_call(a: &Admin, path: &str, body: Option<Value>) -> Result<Value> {
    let http = relais_providers::shared_client(&relais_providers::HttpSettings::default())
        .map_err(|e| anyhow!(e))?;
    let full = format!("{}{path}", a.url.trim_end_matches('/'));
    let key = a
        .admin_key
        .clone()
        .or_else(|| std::env::var("RELAIS_ADMIN_KEY").ok())
        .ok_or_else(|| anyhow!("no admin key: pass --admin-key or set RELAIS_ADMIN_KEY"))?;
    let rb = match body {
        Some(b) => http
            .post(&full)
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => http.get(&full),
    };
    let resp = rb
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
    let path = match &a.route {
        Some(r) => format!("/admin/readiness?route={r}"),
        None => "/admin/readiness".to_owned(),
    };
    let v = runtime()?.block_on(admin_call(&a.admin, &path, None))?;
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
