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

/// The data of every event of a stream recording: one JSON chunk a line, or an SSE body.
fn stream_data(rel: &str) -> Vec<String> {
    let text = read(rel);
    if rel.ends_with(".sse") {
        let mut p = SseParser::new();
        let mut frames = Vec::new();
        p.feed(text.as_bytes(), &mut frames).unwrap();
        p.finish(&mut frames);
        frames.into_iter().map(|f| f.data).collect()
    } else {
        text.lines().map(str::to_owned).collect()
    }
}

/// What an OpenAI client reads from a forwarded chunk, computed from its JSON independently of
/// the decoder; it also checks that the spans the encoder will overwrite are the chunk's id,
/// created and model values and that the chunk carries nothing but text or a refusal.
fn client_reads(raw: &relais_core::RawChunk) -> Vec<StreamEvent> {
    let v: Value = serde_json::from_str(&raw.json).unwrap();
    assert_eq!(v["id"].as_str(), Some(&raw.json[raw.id.clone()]));
    assert_eq!(v["model"].as_str(), Some(&raw.json[raw.model.clone()]));
    assert_eq!(
        v["created"].as_u64().map(|n| n.to_string()).as_deref(),
        Some(&raw.json[raw.created.clone()])
    );
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1, "{}", raw.json);
    assert!(choices[0]["finish_reason"].is_null());
    assert!(v["usage"].is_null());
    let delta = choices[0]["delta"].as_object().unwrap();
    for key in delta.keys() {
        assert!(
            ["role", "content", "refusal"].contains(&key.as_str()),
            "forwarded a delta with '{key}': {}",
            raw.json
        );
    }
    let mut out = Vec::new();
    if let Some(t) = delta.get("content").and_then(Value::as_str) {
        if !t.is_empty() {
            out.push(StreamEvent::TextDelta(t.to_owned()));
        }
    }
    if let Some(t) = delta.get("refusal").and_then(Value::as_str) {
        if !t.is_empty() {
            out.push(StreamEvent::RefusalDelta(t.to_owned()));
        }
    }
    out
}

/// The same-dialect fast path loses nothing: each stream recording of the family, decoded with
/// forwarding on, gives an OpenAI client the same text, refusal, tool calls, finish reason,
/// usage, id and model as decoding it does; and on OpenAI's and Azure's own recordings the
/// chunks really are forwarded (the fast path is not dead code on real traffic).
#[test]
fn forwarded_chunks_give_the_client_what_decoding_gives() {
    use crate::sse::{SseDecode, SseEvent};
    let recordings = [
        ("openai/openai-text.chunks.txt", true),
        ("openai/azure-model-router.1.chunks.txt", true),
        ("openai-compatible/anthropic-fallback-tool-call.sse", true),
        ("mistral/mistral-incremental-tool-call.chunks.txt", false),
        ("mistral/mistral-reasoning.chunks.txt", false),
        ("mistral/mistral-text.chunks.txt", true),
        ("mistral/mistral-tool-call.chunks.txt", false),
    ];
    for (rel, expect_forwarding) in recordings {
        let data = stream_data(rel);
        let decoded = fold(
            &decode_chunks(data.iter().map(String::as_str))
                .unwrap_or_else(|e| panic!("{rel}: {e}")),
        );
        let mut decoder = super::ChunkDecoder::forwarding(true);
        let mut events = Vec::new();
        for d in data {
            let mut ev = SseEvent {
                event: None,
                data: d,
            };
            if decoder.event(&mut ev, &mut events).unwrap() {
                break;
            }
        }
        let mut forwarded = 0;
        let client: Vec<StreamEvent> = events
            .into_iter()
            .flat_map(|e| match e {
                StreamEvent::Raw(raw) => {
                    forwarded += 1;
                    client_reads(&raw)
                }
                e => vec![e],
            })
            .collect();
        assert_eq!(fold(&client), decoded, "{rel}");
        assert_eq!(
            forwarded > 0,
            expect_forwarding,
            "{rel}: {forwarded} forwarded"
        );
    }
}

#[test]
fn only_plain_compact_content_chunks_are_forwarded() {
    use super::stream::forwardable;
    let plain = r#"{"id":"c1","object":"chat.completion.chunk","created":17,"model":"m","choices":[{"index":0,"delta":{"content":"hi \"there\""},"finish_reason":null}],"usage":null}"#;
    let spans = forwardable(plain).unwrap();
    assert_eq!(&plain[spans.id], "c1");
    assert_eq!(&plain[spans.created], "17");
    assert_eq!(&plain[spans.model], "m");
    for (what, chunk) in [
        (
            "usage",
            plain.replace(r#""usage":null"#, r#""usage":{"prompt_tokens":1}"#),
        ),
        (
            "finish",
            plain.replace(r#""finish_reason":null"#, r#""finish_reason":"stop""#),
        ),
        ("spaced", plain.replace(r#""usage":null"#, r#""usage": {}"#)),
        (
            "second choice",
            plain.replace(r#""index":0"#, r#""index":1"#),
        ),
        ("choice 10", plain.replace(r#""index":0"#, r#""index":10"#)),
        (
            "escaped id",
            plain.replace(r#""id":"c1""#, r#""id":"c\"1""#),
        ),
        ("no model", plain.replace(r#""model":"m","#, "")),
        (
            "error",
            plain.replace(r#""usage":null"#, r#""error":{"message":"x"}"#),
        ),
        (
            "tool call",
            plain.replace(
                r#"{"content":"hi \"there\""}"#,
                r#"{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}"#,
            ),
        ),
        (
            "reasoning",
            plain.replace(r#""content":"#, r#""reasoning_content":"#),
        ),
        (
            "content parts",
            plain.replace(r#""hi \"there\"""#, r#"[{"type":"text","text":"x"}]"#),
        ),
        (
            "no choices",
            plain.replace(
                r#"[{"index":0,"delta":{"content":"hi \"there\""},"finish_reason":null}]"#,
                "[]",
            ),
        ),
    ] {
        assert_ne!(chunk, plain, "{what}: the case did not change the chunk");
        assert_eq!(forwardable(&chunk), None, "{what}");
    }
}
