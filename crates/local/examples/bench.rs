//! Local-inference benchmark of the `local` provider, as the gateway runs it (template, queue,
//! worker thread, token channel): prompt processing and generation speed, time to first token,
//! peak RSS, and aggregate throughput with concurrent streams. `bench/local-inference` runs it
//! beside llama.cpp's own `llama-bench` on the same file and thread count.
//!
//! Usage: bench MODEL.gguf THREADS PROMPT_TOKENS GEN_TOKENS [GPU_LAYERS [STREAMS]]
//!
//! GPU_LAYERS (default 0) offloads layers when the llama.cpp linked in has a GPU backend;
//! STREAMS (default 4) is the number of concurrent streams in the aggregate figures.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relais_core::{ChatRequest, Message, Provider, Role, StreamEvent};

struct Run {
    /// When each text delta arrived, from the start of the benchmark phase.
    stamps: Vec<Instant>,
    ttft: Duration,
    total: Duration,
    prompt_tokens: u64,
    output_tokens: u64,
}

async fn run(p: &Arc<dyn Provider>, prompt: &str, gen_tokens: u32) -> Result<Run, String> {
    let req = ChatRequest {
        model: "local".into(),
        messages: vec![Message::text(Role::User, prompt)],
        temperature: Some(0.0),
        max_output_tokens: Some(gen_tokens),
        stream: true,
        ..ChatRequest::default()
    };
    let start = Instant::now();
    let mut s = p.chat("m", &req).await.map_err(|e| e.message)?;
    let mut ttft = None;
    let mut usage = None;
    let mut stamps = Vec::new();
    while let Some(ev) = s.next().await {
        match ev.map_err(|e| e.message)? {
            StreamEvent::TextDelta(_) => {
                stamps.push(Instant::now());
                if ttft.is_none() {
                    ttft = Some(start.elapsed());
                }
            }
            StreamEvent::Usage(u) => usage = Some(u),
            _ => {}
        }
    }
    let u = usage.ok_or("no usage")?;
    Ok(Run {
        stamps,
        ttft: ttft.unwrap_or_default(),
        total: start.elapsed(),
        prompt_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
    })
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=7).contains(&args.len()) {
        return Err(
            "usage: bench MODEL.gguf THREADS PROMPT_TOKENS GEN_TOKENS [GPU_LAYERS [STREAMS]]"
                .into(),
        );
    }
    let (model, threads) = (&args[1], &args[2]);
    let prompt_tokens: usize = args[3].parse().map_err(|_| "PROMPT_TOKENS")?;
    let gen_tokens: u32 = args[4].parse().map_err(|_| "GEN_TOKENS")?;
    let gpu_layers: u32 = args
        .get(5)
        .map_or(Ok(0), |a| a.parse())
        .map_err(|_| "GPU_LAYERS")?;
    let streams: usize = args
        .get(6)
        .map_or(Ok(4), |a| a.parse())
        .map_err(|_| "STREAMS")?;
    let streams = streams.max(1);
    // Each stream needs its own sequence (2048 tokens of KV cache each).
    let parallel = streams.max(4);
    let cfg: relais_local::LocalConfig = toml::from_str(&format!(
        "model_path = {model:?}\nthreads = {threads}\nparallel = {parallel}\ncontext_tokens = 2048\ngpu_layers = {gpu_layers}\nqueue_depth = {}\n",
        parallel * 2
    ))
    .map_err(|e| e.to_string())?;
    let load = Instant::now();
    let p = relais_local::build(&cfg)?;
    let load = load.elapsed();
    // About one token per word for this vocabulary; the real count comes back in the usage.
    let long_prompt = "the quick brown fox jumps over the lazy dog ".repeat(prompt_tokens / 9 + 1);
    let short_prompt = "Explain in a few sentences why the sky is blue.";
    run(&p, short_prompt, 8).await?; // warm-up

    let (mut pp, mut tg, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    let mut n_prompt = 0;
    for _ in 0..3 {
        let r = run(&p, &long_prompt, 1).await?;
        n_prompt = r.prompt_tokens;
        pp.push(r.prompt_tokens as f64 / r.ttft.as_secs_f64());
        let r = run(&p, short_prompt, gen_tokens).await?;
        ttft.push(r.ttft.as_secs_f64() * 1000.0);
        let gen_time = (r.total - r.ttft).as_secs_f64();
        tg.push((r.output_tokens.saturating_sub(1)) as f64 / gen_time);
    }
    let single = median(tg.clone());

    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let p = p.clone();
            let prompt = format!("{short_prompt} ({i})");
            tokio::spawn(async move { run(&p, &prompt, gen_tokens).await })
        })
        .collect();
    let mut total_tokens = 0;
    let mut runs = Vec::new();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())??;
        total_tokens += r.output_tokens;
        runs.push(r);
    }
    let aggregate = total_tokens as f64 / started.elapsed().as_secs_f64();
    // Steady state: the window in which all the streams were generating together, which
    // leaves out the prompts read one after another as the streams arrive.
    let window_start = runs.iter().filter_map(|r| r.stamps.first()).max().copied();
    let window_end = runs.iter().filter_map(|r| r.stamps.last()).min().copied();
    let steady = match (window_start, window_end) {
        (Some(a), Some(b)) if b > a => {
            let n = runs
                .iter()
                .map(|r| r.stamps.iter().filter(|t| **t > a && **t <= b).count())
                .sum::<usize>();
            n as f64 / (b - a).as_secs_f64()
        }
        _ => 0.0,
    };

    println!(
        "{{\"load_ms\": {:.0}, \"pp_tokens\": {n_prompt}, \"pp_tok_s\": {:.1}, \"tg_tokens\": {gen_tokens}, \"tg_tok_s\": {:.1}, \"ttft_ms\": {:.1}, \"streams\": {streams}, \"gpu_layers\": {gpu_layers}, \"aggregate_tok_s\": {:.1}, \"aggregate_ratio\": {:.2}, \"steady_tok_s\": {:.1}, \"peak_rss_mb\": {:.0}}}",
        load.as_secs_f64() * 1000.0,
        median(pp),
        single,
        median(ttft),
        aggregate,
        aggregate / single,
        steady,
        peak_rss_mb()
    );
    Ok(())
}
