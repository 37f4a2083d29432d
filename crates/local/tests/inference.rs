//! Real inference on the real model file (SmolLM2-135M-Instruct, fetched by scripts/fetch-model).
//! A missing model fails these tests: they never skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relais_core::{
    ChatRequest, ChatResponse, Collector, ErrorKind, EventStream, FinishReason, Message, Provider,
    ResponseFormat, Role, StreamEvent,
};
use relais_local::LocalConfig;

fn model_path() -> PathBuf {
    let path = std::env::var_os("RELAIS_LOCAL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".local/share/relais/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "model file {} is missing: run scripts/fetch-model (or set RELAIS_LOCAL_MODEL)",
        path.display()
    );
    path
}

fn config(parallel: u32, queue: usize, context: u32) -> LocalConfig {
    let text = format!(
        "model_path = {:?}\nparallel = {parallel}\nqueue_depth = {queue}\ncontext_tokens = {context}\nthreads = 2\n",
        model_path().display().to_string()
    );
    toml::from_str(&text).unwrap()
}

/// One provider shared by the tests that do not need special settings: loading is cheap but
/// every loaded copy costs memory and CPU on a 2-core machine.
fn shared() -> Arc<dyn Provider> {
    static P: OnceLock<Arc<dyn Provider>> = OnceLock::new();
    P.get_or_init(|| relais_local::build(&config(4, 16, 2048)).unwrap())
        .clone()
}

/// A provider that decodes one sequence at a time, for the tests about exact reproducibility:
/// llama.cpp's CPU kernels may round differently when other sequences share the batch.
fn solo() -> Arc<dyn Provider> {
    static P: OnceLock<Arc<dyn Provider>> = OnceLock::new();
    P.get_or_init(|| relais_local::build(&config(1, 16, 2048)).unwrap())
        .clone()
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        model: "local".into(),
        messages: vec![Message::text(Role::User, text)],
        temperature: Some(0.0),
        max_output_tokens: Some(24),
        stream: true,
        ..ChatRequest::default()
    }
}

async fn run(p: &Arc<dyn Provider>, req: &ChatRequest) -> ChatResponse {
    let mut stream = p.chat("smollm2", req).await.unwrap();
    let mut c = Collector::new();
    while let Some(ev) = stream.next().await {
        c.push(&ev.unwrap()).unwrap();
    }
    c.finish()
}

#[tokio::test]
async fn greedy_output_is_deterministic_and_metered() {
    let p = solo();
    let req = ask("Explain in a few sentences why the sky is blue.");
    let a = run(&p, &req).await;
    let b = run(&p, &req).await;
    assert!(!a.text.trim().is_empty());
    assert_eq!(a.text, b.text);
    let u = a.usage.unwrap();
    // The GGUF's own template adds SmolLM2's default system prompt: far more than the 7 words.
    assert!(u.input_tokens > 20, "{u:?}");
    assert!(u.output_tokens >= 1 && u.output_tokens <= 24, "{u:?}");
    // The reference answer from llama.cpp on this file: Rayleigh scattering.
    assert!(a.text.contains("Rayleigh scattering"), "{}", a.text);
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let p = shared();
    let mut req = ask("Write a long story about a dragon who learns to bake bread.");
    req.max_output_tokens = Some(5);
    let r = run(&p, &req).await;
    assert_eq!(r.finish, Some(FinishReason::Length));
    assert_eq!(r.usage.unwrap().output_tokens, 5);
}

#[tokio::test]
async fn stop_sequence_ends_before_the_stop_text() {
    let p = solo();
    let mut req = ask("List the days of the week, one per line.");
    req.max_output_tokens = Some(40);
    let full = run(&p, &req).await;
    // Pick a stop string from the greedy answer itself: its third word.
    let word = full
        .text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("answer too short: {:?}", full.text))
        .to_owned();
    let at = full.text.find(&word).unwrap();
    req.stop = vec![word.clone()];
    let cut = run(&p, &req).await;
    assert_eq!(cut.finish, Some(FinishReason::Stop));
    assert_eq!(cut.text, full.text[..at], "stop {word:?}");
    assert!(!cut.text.contains(&word));
}

#[tokio::test]
async fn same_seed_same_output_at_temperature_one() {
    let p = solo();
    let mut req = ask("Invent a name for a cat.");
    req.temperature = Some(1.0);
    req.max_output_tokens = Some(16);
    let mut outputs = Vec::new();
    for seed in [1, 1, 2, 3, 4] {
        req.seed = Some(seed);
        outputs.push(run(&p, &req).await.text);
    }
    assert_eq!(outputs[0], outputs[1]);
    let distinct: std::collections::HashSet<_> = outputs.iter().collect();
    assert!(
        distinct.len() >= 2,
        "different seeds never differed: {outputs:?}"
    );
}

#[tokio::test]
async fn concurrent_requests_all_complete() {
    let p = shared();
    let started = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut req = ask(&format!("Count from {i} to {}.", i + 5));
                req.max_output_tokens = Some(12);
                run(&p, &req).await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.finish.is_some());
        assert!(r.usage.unwrap().output_tokens > 0);
    }
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[tokio::test]
async fn json_object_mode_is_enforced_by_grammar() {
    let p = shared();
    let mut req = ask("Give me a JSON object describing a cat with a name and an age.");
    req.response_format = Some(ResponseFormat::JsonObject);
    req.max_output_tokens = Some(120);
    let r = run(&p, &req).await;
    let v: serde_json::Value = serde_json::from_str(&r.text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} finish {:?}", r.text, r.finish));
    assert!(v.is_object());
}

#[tokio::test]
async fn json_schema_mode_is_enforced_by_grammar() {
    let p = shared();
    let mut req = ask("Describe a cat.");
    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "cat".into(),
        schema: Some(serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": false
        })),
        strict: Some(true),
        description: None,
    });
    req.max_output_tokens = Some(60);
    let r = run(&p, &req).await;
    let v: serde_json::Value =
        serde_json::from_str(&r.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.text));
    assert!(v["name"].is_string(), "{v}");
    assert!(v["age"].is_i64(), "{v}");
}

#[tokio::test]
async fn tools_and_images_are_refused_not_ignored() {
    let p = shared();
    let mut req = ask("hi");
    req.tools = vec![relais_core::Tool {
        name: "f".into(),
        description: None,
        parameters: None,
        strict: None,
        cache: None,
    }];
    let e = p.chat("m", &req).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

#[tokio::test]
async fn prompt_beyond_the_context_window_is_a_context_error() {
    let p = relais_local::build(&config(1, 4, 128)).unwrap();
    let req = ask(&"tell me about the weather in paris ".repeat(40));
    let mut s = p.chat("m", &req).await.unwrap();
    let first = s.next().await.unwrap();
    let e = first.err().unwrap();
    assert_eq!(e.kind, ErrorKind::ContextWindowExceeded);
    assert!(
        e.message.contains("maximum context length is 128"),
        "{}",
        e.message
    );
}

async fn first_event(s: &mut EventStream) {
    match s.next().await {
        Some(Ok(StreamEvent::Start { .. })) => {}
        other => panic!("expected Start, got {other:?}"),
    }
}

#[tokio::test]
async fn queue_overflow_is_503_with_retry_after_and_disconnect_frees_the_slot() {
    let p = relais_local::build(&config(1, 1, 2048)).unwrap();
    let mut long = ask("Write a very long essay about the history of bread.");
    long.max_output_tokens = Some(1500);
    // A holds the only sequence.
    let mut a = p.chat("m", &long).await.unwrap();
    first_event(&mut a).await;
    // B waits in the queue (depth 1); C finds it full.
    let b = p.chat("m", &long).await.unwrap();
    let c = p.chat("m", &long).await.err().unwrap();
    assert_eq!(c.kind, ErrorKind::Overloaded);
    assert_eq!(c.retry_after(), Some(Duration::from_secs(1)));
    // Dropping B and A frees the queue and the sequence at once: a new request runs promptly,
    // long before A's 1500 tokens could have been generated.
    drop(b);
    let started = Instant::now();
    drop(a);
    let mut quick = ask("Say hi.");
    quick.max_output_tokens = Some(4);
    // The dropped B still sits in the queue until the worker pulls and discards it at its next
    // step, so the first tries may still find the queue full.
    let mut stream = loop {
        match p.chat("m", &quick).await {
            Ok(s) => break s,
            Err(e) if e.kind == ErrorKind::Overloaded => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "queue never drained"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let mut c = Collector::new();
    while let Some(ev) = stream.next().await {
        c.push(&ev.unwrap()).unwrap();
    }
    let r = c.finish();
    assert_eq!(r.usage.unwrap().output_tokens, 4);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let mut cfg = config(1, 1, 256);
    cfg.model_path.0 = "/nonexistent/model.gguf".into();
    let e = relais_local::build(&cfg).err().unwrap();
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
    let dir = std::env::temp_dir().join(format!("relais-local-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    cfg.model_path.0 = junk.display().to_string();
    let e = relais_local::build(&cfg).err().unwrap();
    assert!(e.contains("junk.gguf") && e.contains("not a GGUF"), "{e}");
    let truncated = dir.join("truncated.gguf");
    let real = std::fs::read(model_path()).unwrap();
    std::fs::write(&truncated, &real[..4096]).unwrap();
    cfg.model_path.0 = truncated.display().to_string();
    let e = relais_local::build(&cfg).err().unwrap();
    assert!(
        e.contains("truncated.gguf") && e.contains("could not be loaded"),
        "{e}"
    );
}

#[test]
fn model_facts_come_from_the_file() {
    let info = shared().model_info("smollm2");
    assert_eq!(info.details["architecture"], "llama");
    assert_eq!(info.details["quantization"], "Q4_1");
    let params = info.details["parameters"].as_u64().unwrap();
    assert!((100_000_000..200_000_000).contains(&params), "{params}");
    assert_eq!(info.details["trained_context_length"], 8192);
    assert_eq!(info.context_length, Some(2048));
}

/// The second supported model: Gemma 3 270M, assembled from its four chunk packages by
/// `scripts/fetch-model gemma3`. Its GGUF has no chat template, so the config names one.
#[tokio::test]
async fn gemma3_loads_and_generates() {
    let path = std::env::var_os("RELAIS_GEMMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".local/share/relais/models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model gemma3",
        path.display()
    );
    let text = format!(
        "model_path = {:?}\nparallel = 1\ncontext_tokens = 512\nthreads = 2\n",
        path.display().to_string()
    );
    let mut cfg: LocalConfig = toml::from_str(&text).unwrap();
    let e = relais_local::build(&cfg).err().unwrap();
    assert!(e.contains("no chat template"), "{e}");
    cfg.chat_template = Some("gemma".into());
    let p = relais_local::build(&cfg).unwrap();
    let info = p.model_info("gemma");
    assert_eq!(info.details["architecture"], "gemma3");
    assert_eq!(info.details["quantization"], "Q4_K_M");
    let mut req = ask("The capital of France is");
    req.max_output_tokens = Some(8);
    let a = run(&p, &req).await;
    let b = run(&p, &req).await;
    assert!(a.usage.unwrap().output_tokens >= 1);
    assert!(a.usage.unwrap().input_tokens > 5);
    assert!(a.finish.is_some());
    assert_eq!(a.text, b.text, "greedy decoding must be deterministic");
}
