//! Conformance: every recording of the OpenAI family in `shared/fixtures` decodes without loss.

use std::path::PathBuf;

use relais_core::{ChatResponse, Collector, FinishReason, StreamEvent, Usage};
use serde_json::Value;

use super::{decode_chunks, decode_embeddings, decode_whole};
use crate::sse::SseParser;

/// Path of a recording. The corpus lives beside the repository (`../shared/fixtures`); a missing
/// corpus fails the test loudly instead of skipping it.
pub(crate) fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var_os("RELAIS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    let path = root.join(rel);
    assert!(
        path.exists(),
        "fixture {} is missing: set RELAIS_FIXTURES or check out shared/ beside the repo",
        path.display()
    );
    path
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).unwrap()
}

fn fold(events: &[StreamEvent]) -> ChatResponse {
    let mut c = Collector::new();
    for e in events {
        c.push(e).unwrap();
    }
    c.finish()
}

fn whole(rel: &str) -> ChatResponse {
    fold(&decode_whole(read(rel).as_bytes()).unwrap())
}

fn chunks(rel: &str) -> ChatResponse {
    fold(&decode_chunks(read(rel).lines()).unwrap())
}

fn sse(rel: &str) -> ChatResponse {
    let mut p = SseParser::new();
    let mut frames = Vec::new();
    p.feed(read(rel).as_bytes(), &mut frames).unwrap();
    p.finish(&mut frames);
    fold(&decode_chunks(frames.iter().map(|f| f.data.as_str())).unwrap())
}

/// The text of a recording computed straight from its JSON, as an independent oracle.
fn oracle_text(lines: &str) -> String {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn usage(input: u64, output: u64, cached: u64, reasoning: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        reasoning_tokens: reasoning,
    })
}

#[test]
fn every_recording_of_the_family_is_covered() {
    // A new recording must get a test here: list the corpus and compare with what we decode.
    let covered = [
        "openai/azure-model-router.1.chunks.txt",
        "openai/openai-completion-text.json",
        "openai/openai-embedding.json",
        "openai/openai-text.chunks.txt",
        "openai/openai-text.json",
        "openai/reasoning-model-legacy-parameter-error.json",
        "openai-compatible/anthropic-fallback-tool-call.sse",
        "openai-compatible/xai-tool-call.json",
        "mistral/mistral-incremental-tool-call.chunks.txt",
        "mistral/mistral-reasoning.chunks.txt",
        "mistral/mistral-reasoning.json",
        "mistral/mistral-text.chunks.txt",
        "mistral/mistral-text.json",
        "mistral/mistral-tool-call.chunks.txt",
        "mistral/mistral-tool-call.json",
    ];
    for dir in ["openai", "openai-compatible", "mistral"] {
        for entry in std::fs::read_dir(fixture(dir)).unwrap() {
            let name = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(
                covered.contains(&name.as_str()),
                "no conformance test for {name}"
            );
        }
    }
}

#[test]
fn openai_text_whole() {
    let r = whole("openai/openai-text.json");
    assert!(r.text.starts_with("**Holiday Name:** Galaxy Day"));
    assert!(r.text.ends_with("dream beyond our world."));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(16, 363, 0, 0));
    assert_eq!(
        r.id.as_deref(),
        Some("chatcmpl-D8Z5f52zQqikDBEKQMQoYcWMcWPeU")
    );
    assert!(r.tool_calls.is_empty());
}

#[test]
fn openai_text_stream() {
    let raw = read("openai/openai-text.chunks.txt");
    let r = chunks("openai/openai-text.chunks.txt");
    assert_eq!(r.text, oracle_text(&raw));
    assert!(r.text.starts_with("**Holiday"));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(16, 300, 0, 0));
}

#[test]
fn azure_stream_with_empty_first_chunk() {
    let raw = read("openai/azure-model-router.1.chunks.txt");
    let events = decode_chunks(raw.lines()).unwrap();
    // The empty, id-less first chunk must not produce a Start with empty id/model.
    assert!(
        matches!(&events[0], StreamEvent::Start { id: Some(id), .. } if id.starts_with("chatcmpl-"))
    );
    let r = fold(&events);
    assert_eq!(r.text, oracle_text(&raw));
    assert!(r.text.starts_with("Capital of"), "{}", r.text);
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(15, 78, 0, 64));
}

#[test]
fn legacy_text_completion() {
    let r = whole("openai/openai-completion-text.json");
    assert!(
        r.text
            .starts_with("The new holiday is called \"Gratitude Day\"")
    );
    assert_eq!(r.finish, Some(FinishReason::Length));
    assert_eq!(r.usage, usage(14, 16, 0, 0));
}

#[test]
fn embeddings() {
    let r = decode_embeddings(read("openai/openai-embedding.json").as_bytes()).unwrap();
    assert_eq!(r.embeddings.len(), 2);
    assert_eq!(r.embeddings[0].len(), 5);
    assert!((r.embeddings[0][0] - 0.005_729_32).abs() < 1e-7);
    assert!((r.embeddings[1][0] + 0.037_104_916).abs() < 1e-7);
    assert_eq!(r.usage.input_tokens, 12);
    assert_eq!(r.model.as_deref(), Some("text-embedding-3-small"));
}

#[test]
fn tool_call_with_index_starting_at_one() {
    let r = sse("openai-compatible/anthropic-fallback-tool-call.sse");
    assert_eq!(r.text, "Reading it.");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "toolu_sanitized");
    assert_eq!(r.tool_calls[0].name, "read_file");
    assert_eq!(r.tool_calls[0].arguments, "{\"path\": \"a.txt\"}");
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, None);
}

#[test]
fn xai_reasoning_outside_completion_tokens() {
    let r = whole("openai-compatible/xai-tool-call.json");
    assert!(
        r.reasoning
            .starts_with("First, the user is asking about the weather")
    );
    assert_eq!(r.text, "");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "call_46427107");
    assert_eq!(r.tool_calls[0].name, "weather");
    assert_eq!(
        r.tool_calls[0].arguments,
        "{\"location\":\"San Francisco\"}"
    );
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    // 26 completion + 255 reasoning counted outside it: total 588 = 307 + 26 + 255.
    assert_eq!(r.usage, usage(307, 281, 244, 255));
}

#[test]
fn mistral_incremental_tool_call() {
    let r = chunks("mistral/mistral-incremental-tool-call.chunks.txt");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "chatcmpl-tool-9f149c74c42f265b");
    assert_eq!(r.tool_calls[0].name, "webSearchTool");
    assert_eq!(
        r.tool_calls[0].arguments,
        "{\"query\": \"current Berlin weather\"}"
    );
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(171, 14, 128, 0));
}

#[test]
fn mistral_reasoning_parts() {
    for r in [
        chunks("mistral/mistral-reasoning.chunks.txt"),
        whole("mistral/mistral-reasoning.json"),
    ] {
        assert_eq!(
            r.reasoning,
            "The user is asking for 2+2. This is basic arithmetic. 2+2=4."
        );
        assert_eq!(r.text, "2 + 2 = 4");
        assert_eq!(r.finish, Some(FinishReason::Stop));
        assert_eq!(r.usage, usage(10, 46, 0, 0));
    }
}

#[test]
fn mistral_text() {
    let raw = read("mistral/mistral-text.chunks.txt");
    let r = chunks("mistral/mistral-text.chunks.txt");
    assert_eq!(r.text, oracle_text(&raw));
    assert_eq!(r.text, "Hello, world! This is a test response.");
    assert_eq!(r.usage, usage(13, 8, 0, 0));
    let r = whole("mistral/mistral-text.json");
    assert!(
        r.text
            .starts_with("**Holiday Name: \"World Kindness Day of Sharing\"**")
    );
    assert_eq!(r.usage, usage(13, 434, 0, 0));
    assert_eq!(r.finish, Some(FinishReason::Stop));
}

#[test]
fn mistral_tool_call_without_index() {
    for r in [
        chunks("mistral/mistral-tool-call.chunks.txt"),
        whole("mistral/mistral-tool-call.json"),
    ] {
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].id, "gSIMJiOkT");
        assert_eq!(r.tool_calls[0].name, "weather");
        assert_eq!(
            r.tool_calls[0].arguments,
            "{\"location\": \"San Francisco\"}"
        );
        assert_eq!(r.finish, Some(FinishReason::ToolCalls));
        assert_eq!(r.usage, usage(124, 22, 0, 0));
    }
}

#[test]
fn any_split_of_a_recorded_stream_decodes_the_same() {
    let raw = read("openai-compatible/anthropic-fallback-tool-call.sse");
    let bytes = raw.as_bytes();
    let reference = sse("openai-compatible/anthropic-fallback-tool-call.sse");
    for cut in (1..bytes.len()).step_by(7) {
        let mut p = SseParser::new();
        let mut frames = Vec::new();
        p.feed(&bytes[..cut], &mut frames).unwrap();
        p.feed(&bytes[cut..], &mut frames).unwrap();
        p.finish(&mut frames);
        let r = fold(&decode_chunks(frames.iter().map(|f| f.data.as_str())).unwrap());
        assert_eq!(r, reference, "cut at {cut}");
    }
}

/// Mistral refuses tool-call ids that are not nine letters or digits; history from another
/// vendor (OpenAI's `call_...`, Anthropic's `toolu_...`) must be rewritten, the call and its
/// result alike, and the same way in every later turn.
#[test]
fn mistral_tool_call_ids_are_nine_alphanumerics() {
    use relais_core::{ChatRequest, ContentPart, Message, Role, ToolCall};

    use super::config::{MaxTokensField, ToolCallIds};
    use super::convert::{EncodeOptions, encode_request};

    let req = ChatRequest {
        model: "m".into(),
        messages: vec![
            Message::text(Role::User, "weather?"),
            Message {
                role: Role::Assistant,
                content: vec![
                    ContentPart::ToolCall(ToolCall {
                        id: "toolu_01A09q90qw90lq917835lq9".into(),
                        name: "get_weather".into(),
                        arguments: "{}".into(),
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "gSIMJiOkT".into(),
                        name: "get_time".into(),
                        arguments: "{}".into(),
                    }),
                ],
                name: None,
            },
            Message {
                role: Role::Tool,
                content: vec![ContentPart::ToolResult {
                    call_id: "toolu_01A09q90qw90lq917835lq9".into(),
                    content: "sunny".into(),
                    is_error: false,
                }],
                name: None,
            },
            Message {
                role: Role::Tool,
                content: vec![ContentPart::ToolResult {
                    call_id: "gSIMJiOkT".into(),
                    content: "noon".into(),
                    is_error: false,
                }],
                name: None,
            },
        ],
        ..ChatRequest::default()
    };
    let encode = |ids| {
        let opts = EncodeOptions {
            model: Some("m"),
            stream: false,
            stream_usage: false,
            max_tokens_field: MaxTokensField::MaxTokens,
            tool_call_ids: ids,
        };
        serde_json::to_value(encode_request(&req, &opts).unwrap()).unwrap()
    };
    let body = encode(ToolCallIds::Mistral);
    let calls = &body["messages"][1]["tool_calls"];
    let rewritten = calls[0]["id"].as_str().unwrap();
    assert_eq!(rewritten.len(), 9);
    assert!(rewritten.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(body["messages"][2]["tool_call_id"], rewritten);
    // Already valid ids are kept; the mapping is stable across requests.
    assert_eq!(calls[1]["id"], "gSIMJiOkT");
    assert_eq!(body["messages"][3]["tool_call_id"], "gSIMJiOkT");
    assert_eq!(encode(ToolCallIds::Mistral), body);
    // Every other server gets the ids as they came.
    let plain = encode(ToolCallIds::AsIs);
    assert_eq!(
        plain["messages"][1]["tool_calls"][0]["id"],
        "toolu_01A09q90qw90lq917835lq9"
    );
    assert_eq!(
        plain["messages"][2]["tool_call_id"],
        "toolu_01A09q90qw90lq917835lq9"
    );
}
