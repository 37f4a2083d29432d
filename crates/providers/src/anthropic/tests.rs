//! Conformance: every Anthropic recording in `shared/fixtures` decodes without loss, streamed
//! and whole; the request encoding matches Anthropic's schema; errors land in their classes.

use std::time::Duration;

use relais_core::{
    CacheControl, ChatRequest, ChatResponse, Collector, ContentPart, Error, ErrorKind,
    FinishReason, ImageSource, Message, Reasoning, ResponseFormat, Retry, Role, Secret, Side,
    StreamEvent, Tool, ToolCall, ToolChoice, Usage,
};
use serde_json::{Map, Value, json};

use super::convert::{EncodeOptions, encode_request};
use super::{Anthropic, AnthropicConfig, decode_chunks, decode_whole, error};
use crate::openai_compat::tests::fixture;
use crate::sse::SseParser;

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

fn whole(name: &str) -> ChatResponse {
    fold(&decode_whole(read(&format!("anthropic/{name}")).as_bytes()).unwrap())
}

fn chunks(name: &str) -> ChatResponse {
    fold(&decode_chunks(read(&format!("anthropic/{name}")).lines()).unwrap())
}

fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        reasoning_tokens: 0,
    })
}

/// A recording (one data payload per line) as the bytes Anthropic sends: an `event:` line naming
/// the type, the `data:` line, a blank line.
fn as_sse(lines: &str) -> String {
    let mut out = String::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let kind = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push_str(&format!("event: {kind}\ndata: {line}\n\n"));
    }
    out
}

fn decode_sse(parts: &[&[u8]]) -> Result<Vec<StreamEvent>, Error> {
    let mut p = SseParser::new();
    let mut frames = Vec::new();
    for part in parts {
        p.feed(part, &mut frames).unwrap();
    }
    p.finish(&mut frames);
    decode_chunks(frames.iter().map(|f| f.data.as_str()))
}

/// The text of a recorded stream computed straight from its JSON, as an independent oracle.
fn oracle_text(lines: &str) -> String {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["delta"]["type"] == "text_delta")
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// A value of a whole-response recording, as an independent oracle.
fn recorded(name: &str) -> Value {
    serde_json::from_str(&read(&format!("anthropic/{name}"))).unwrap()
}

const CHUNK_RECORDINGS: [&str; 5] = [
    "anthropic-json-tool.1.chunks.txt",
    "anthropic-message-delta-input-tokens.chunks.txt",
    "anthropic-refusal.chunks.txt",
    "anthropic-text.chunks.txt",
    "anthropic-tool-no-args.chunks.txt",
];

const WHOLE_RECORDINGS: [&str; 4] = [
    "anthropic-json-tool.1.json",
    "anthropic-refusal.json",
    "anthropic-text.json",
    "anthropic-tool-no-args.json",
];

#[test]
fn every_anthropic_recording_is_covered() {
    // A new recording must get a test below (and a place in these lists).
    for entry in std::fs::read_dir(fixture("anthropic")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            CHUNK_RECORDINGS.contains(&name.as_str()) || WHOLE_RECORDINGS.contains(&name.as_str()),
            "no conformance test for anthropic/{name}"
        );
    }
}

#[test]
fn text_whole() {
    let r = whole("anthropic-text.json");
    assert_eq!(
        r.text,
        "Hello! I'm doing well, thanks for asking. How are you doing today? Is there anything I can help you with?"
    );
    assert_eq!(
        r.text,
        recorded("anthropic-text.json")["content"][0]["text"]
    );
    assert_eq!(r.id.as_deref(), Some("msg_01VdEjxAP5ahtHKrrRdNBteQ"));
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(12, 29, 0, 0));
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.reasoning, "");
    assert_eq!(r.refusal, None);
}

#[test]
fn text_stream() {
    let raw = read("anthropic/anthropic-text.chunks.txt");
    let r = chunks("anthropic-text.chunks.txt");
    assert_eq!(r.text, oracle_text(&raw));
    assert_eq!(
        r.text,
        "Hello! I'm doing well, thank you for asking. How are you doing today? Is there anything I can help you with?"
    );
    assert_eq!(r.id.as_deref(), Some("msg_01QC4g3HwBThD4BaNtBckFDJ"));
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(12, 30, 0, 0));
    assert!(r.tool_calls.is_empty());
}

#[test]
fn json_tool_stream() {
    let r = chunks("anthropic-json-tool.1.chunks.txt");
    assert_eq!(r.text, "");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "toolu_01KFbKqPYSuAKujiL6mTfzYA");
    assert_eq!(r.tool_calls[0].name, "json");
    // Exactly the concatenated `partial_json` fragments, byte for byte.
    assert_eq!(
        r.tool_calls[0].arguments,
        r#"{"elements": [{"location": "San Francisco", "temperature": 58, "condition": "sunny"}]}"#
    );
    assert_eq!(r.id.as_deref(), Some("msg_01K2JbSUMYhez5RHoK9ZCj9U"));
    assert_eq!(r.model.as_deref(), Some("claude-haiku-4-5-20251001"));
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(849, 47, 0, 0));
}

#[test]
fn json_tool_whole() {
    let r = whole("anthropic-json-tool.1.json");
    assert_eq!(r.text, "");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "toolu_01Q9ExVZnzZj7E2QQYHYtNUa");
    assert_eq!(r.tool_calls[0].name, "json");
    // A whole response carries the arguments as an object; they are re-serialised, so compare
    // them as JSON.
    let args: Value = serde_json::from_str(&r.tool_calls[0].arguments).unwrap();
    assert_eq!(
        args,
        recorded("anthropic-json-tool.1.json")["content"][0]["input"]
    );
    assert_eq!(args["elements"].as_array().map(Vec::len), Some(4));
    assert_eq!(args["elements"][3]["location"], "Berlin");
    assert_eq!(args["elements"][0]["temperature"], -5);
    assert_eq!(r.id.as_deref(), Some("msg_0191iYfpERYfS27xLsdW2nbb"));
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(1151, 87, 0, 0));
}

#[test]
fn tool_without_arguments_stream() {
    let raw = read("anthropic/anthropic-tool-no-args.chunks.txt");
    let events = decode_chunks(raw.lines()).unwrap();
    // The tool block is Anthropic's block 1, but the first tool call: canonical index 0. Its
    // only fragment is empty, so its arguments become `{}` when the block stops.
    assert_eq!(
        events,
        [
            StreamEvent::Start {
                id: Some("msg_01GE2RKp1VYsPzdFs3sS9z5S".into()),
                model: Some("claude-sonnet-4-5-20250929".into()),
            },
            // message_start's counts, passed on at once (issue 19: the client's own
            // message_start carries the input tokens).
            StreamEvent::Usage(Usage {
                input_tokens: 565,
                output_tokens: 7,
                ..Usage::default()
            }),
            StreamEvent::TextDelta("I'll update the issue list for".into()),
            StreamEvent::TextDelta(" you.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_01QE1WLsSVp5hy5Q3GmGTmjP".into(),
                name: "updateIssueList".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{}".into(),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 565,
                output_tokens: 48,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ]
    );
    let r = fold(&events);
    assert_eq!(r.text, oracle_text(&raw));
}

#[test]
fn tool_without_arguments_whole() {
    let r = whole("anthropic-tool-no-args.json");
    assert_eq!(
        r.text,
        recorded("anthropic-tool-no-args.json")["content"][0]["text"]
    );
    assert!(
        r.text
            .starts_with("<thinking>\nThe updateIssueList tool was provided")
    );
    assert!(
        r.text
            .ends_with("</thinking>\n\nOkay, I will update the current issue list:")
    );
    // Text inside the answer that looks like thinking is still text.
    assert_eq!(r.reasoning, "");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "toolu_01LRmxn9vGM1d2DZSDBowdZ1");
    assert_eq!(r.tool_calls[0].name, "updateIssueList");
    assert_eq!(r.tool_calls[0].arguments, "{}");
    assert_eq!(r.model.as_deref(), Some("claude-3-opus-20240229"));
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(602, 93, 0, 0));
}

const REFUSAL: &str = "This request triggered restrictions on violative cyber content and was blocked under Anthropic's Usage Policy.";

#[test]
fn refusal_stream_and_whole() {
    let stream = chunks("anthropic-refusal.chunks.txt");
    let full = whole("anthropic-refusal.json");
    assert_eq!(stream.id.as_deref(), Some("msg_01RefusalStreamAbcdefghijk"));
    assert_eq!(full.id.as_deref(), Some("msg_01RefusalExampleAbcdefghijk"));
    assert_eq!(
        REFUSAL,
        recorded("anthropic-refusal.json")["stop_details"]["explanation"]
    );
    for r in [stream, full] {
        assert_eq!(r.text, "");
        assert_eq!(r.refusal.as_deref(), Some(REFUSAL));
        assert_eq!(r.model.as_deref(), Some("claude-fable-5"));
        assert_eq!(r.finish, Some(FinishReason::Refusal));
        assert_eq!(r.usage, usage(18, 5, 0, 0));
        assert!(r.tool_calls.is_empty());
    }
}

#[test]
fn input_tokens_raised_by_message_delta() {
    let events =
        decode_chunks(read("anthropic/anthropic-message-delta-input-tokens.chunks.txt").lines())
            .unwrap();
    // message_start says 43 input tokens, message_delta 61: the start's counts at once, then
    // the final totals (running totals: a fold keeps the larger figures).
    let usages: Vec<&StreamEvent> = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Usage(_)))
        .collect();
    assert_eq!(
        usages,
        [
            &StreamEvent::Usage(Usage {
                input_tokens: 43,
                output_tokens: 1,
                ..Usage::default()
            }),
            &StreamEvent::Usage(Usage {
                input_tokens: 61,
                output_tokens: 2,
                ..Usage::default()
            })
        ]
    );
    let r = fold(&events);
    assert_eq!(r.text, "pong");
    assert_eq!(
        r.id.as_deref(),
        Some("msg_3196a1cc08de4d76b85b8f5777c0d42b")
    );
    assert_eq!(r.model.as_deref(), Some("claude-opus-4-5-20251101"));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(61, 2, 0, 0));
}

/// Thinking with a signature, redacted thinking, a citation, two tool calls (one without
/// arguments), cached input and an unknown event: features no recording has yet.
const THINKING_STREAM: &str = r#"{"type":"message_start","message":{"id":"msg_t","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}
{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}
{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think"}}
{"type":"ping"}
{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":" about it."}}
{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig123"}}
{"type":"content_block_stop","index":0}
{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"}}
{"type":"content_block_stop","index":1}
{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}
{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"Answer"}}
{"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{"type":"char_location","cited_text":"x","document_index":0,"start_char_index":0,"end_char_index":1}}}
{"type":"content_block_stop","index":2}
{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_a","name":"f","input":{}}}
{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}
{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"1}"}}
{"type":"content_block_stop","index":3}
{"type":"content_block_start","index":4,"content_block":{"type":"tool_use","id":"toolu_b","name":"g","input":{}}}
{"type":"content_block_stop","index":4}
{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":50}}
{"type":"a_future_event","data":{}}
{"type":"message_stop"}"#;

const THINKING_WHOLE: &str = r#"{"id":"msg_t","type":"message","role":"assistant","model":"claude-sonnet-4-5",
"content":[
 {"type":"thinking","thinking":"Let me think about it.","signature":"sig123"},
 {"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"},
 {"type":"text","text":"Answer","citations":[{"type":"char_location","cited_text":"x","document_index":0,"start_char_index":0,"end_char_index":1}]},
 {"type":"tool_use","id":"toolu_a","name":"f","input":{"a":1}},
 {"type":"tool_use","id":"toolu_b","name":"g","input":{}}
],
"stop_reason":"tool_use","stop_sequence":null,
"usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":50}}"#;

#[test]
fn thinking_signature_and_cached_usage() {
    let events = decode_chunks(THINKING_STREAM.lines()).unwrap();
    assert!(events.contains(&StreamEvent::ReasoningDelta {
        text: String::new(),
        signature: Some("sig123".into()),
    }));
    assert!(events.contains(&StreamEvent::ToolCallStart {
        index: 1,
        id: "toolu_b".into(),
        name: "g".into(),
    }));
    let streamed = fold(&events);
    assert_eq!(streamed.reasoning, "Let me think about it.");
    assert_eq!(streamed.reasoning_signature.as_deref(), Some("sig123"));
    assert_eq!(streamed.text, "Answer");
    let calls: Vec<(&str, &str, &str)> = streamed
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [("toolu_a", "f", r#"{"a":1}"#), ("toolu_b", "g", "{}")]
    );
    assert_eq!(streamed.finish, Some(FinishReason::ToolCalls));
    // Canonical input counts cache reads and writes: 10 + 100 + 20.
    assert_eq!(streamed.usage, usage(130, 50, 100, 20));

    let full = fold(&decode_whole(THINKING_WHOLE.as_bytes()).unwrap());
    assert_eq!(full, streamed);
}

#[test]
fn in_stream_error_is_typed() {
    let lines = [
        r#"{"type":"message_start","message":{"id":"msg_e","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ];
    let e = decode_chunks(lines.into_iter()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Overloaded);
    assert_eq!(e.side, Side::Upstream);
    assert!(e.is_retryable());
    assert_eq!(e.message, "Overloaded");

    let e = decode_whole(
        br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens > 200000 maximum"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextWindowExceeded);
}

#[test]
fn any_split_of_a_recorded_stream_decodes_the_same() {
    for name in CHUNK_RECORDINGS {
        let raw = read(&format!("anthropic/{name}"));
        let reference = fold(&decode_chunks(raw.lines()).unwrap());
        let sse = as_sse(&raw);
        let bytes = sse.as_bytes();
        for cut in 0..=bytes.len() {
            let r = fold(&decode_sse(&[&bytes[..cut], &bytes[cut..]]).unwrap());
            assert_eq!(r, reference, "{name} cut at {cut}");
        }
        for i in (0..bytes.len()).step_by(13) {
            for j in (i..bytes.len()).step_by(29) {
                let r = fold(&decode_sse(&[&bytes[..i], &bytes[i..j], &bytes[j..]]).unwrap());
                assert_eq!(r, reference, "{name} cut at {i},{j}");
            }
        }
    }
}

/// Feed a body through the live path: a `reqwest::Response` decoded by `sse_stream`.
async fn live(body: Vec<u8>) -> Vec<Result<StreamEvent, Error>> {
    use futures_util::StreamExt;
    let resp = http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap();
    let mut stream = crate::sse::sse_stream(
        reqwest::Response::from(resp),
        super::stream::EventDecoder::new(),
    );
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item);
    }
    out
}

#[tokio::test]
async fn live_stream_matches_the_recording_and_reports_a_cut() {
    let raw = read("anthropic/anthropic-tool-no-args.chunks.txt");
    let sse = as_sse(&raw);
    let reference = decode_chunks(raw.lines()).unwrap();

    // Whatever follows message_stop is not read.
    let mut body = sse.clone().into_bytes();
    body.extend_from_slice(b"event: error\ndata: {not json\n\n");
    let events: Vec<StreamEvent> = live(body).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(events, reference);

    // A stream cut before the stop reason ends in an error, not a clean end.
    let cut = sse.find("event: message_delta").unwrap();
    let items = live(sse.as_bytes()[..cut].to_vec()).await;
    assert!(
        matches!(items.last(), Some(Err(e)) if e.kind == ErrorKind::Protocol),
        "{items:?}"
    );
}

/// Decode and fold; a decoder must never emit events the collector rejects.
fn decode_checked(lines: &[&str]) {
    if let Ok(events) = decode_chunks(lines.iter().copied()) {
        let mut c = Collector::new();
        for e in &events {
            c.push(e).unwrap();
        }
    }
}

#[test]
fn garbage_never_panics() {
    for name in CHUNK_RECORDINGS {
        let raw = read(&format!("anthropic/{name}"));
        let lines: Vec<&str> = raw.lines().collect();
        // Every truncation of every event.
        for line in &lines {
            for cut in 0..=line.len() {
                if let Some(prefix) = line.get(..cut) {
                    decode_checked(&[prefix]);
                }
            }
        }
        // Every sequence with one event missing or repeated.
        for skip in 0..lines.len() {
            let mut missing = lines.clone();
            missing.remove(skip);
            decode_checked(&missing);
            let mut repeated = lines.clone();
            repeated.insert(skip, lines[skip]);
            decode_checked(&repeated);
        }
    }
    for name in WHOLE_RECORDINGS {
        let raw = read(&format!("anthropic/{name}"));
        for cut in 0..=raw.len() {
            if let Some(prefix) = raw.get(..cut) {
                let _ = decode_whole(prefix.as_bytes());
            }
        }
    }
    // Well-formed JSON with the wrong shapes.
    for hostile in [
        "null",
        "[]",
        "{}",
        r#"{"type":7}"#,
        r#"{"type":"message_start"}"#,
        r#"{"type":"message_start","message":{"usage":{"input_tokens":-1}}}"#,
        r#"{"type":"content_block_start","index":0}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use"}}"#,
        r#"{"type":"content_block_start","index":4294967296,"content_block":{"type":"text"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}"#,
        r#"{"type":"content_block_stop"}"#,
        r#"{"type":"message_delta","usage":{"output_tokens":18446744073709551615,"input_tokens":18446744073709551615,"cache_read_input_tokens":18446744073709551615}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"something_new"}}"#,
        r#"{"type":"error"}"#,
        r#"{"type":"error","error":"text"}"#,
    ] {
        decode_checked(&[hostile]);
        let _ = decode_whole(hostile.as_bytes());
    }
    let e = decode_chunks(
        [r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#]
            .into_iter(),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
    // Random bytes through the SSE parser and the decoder.
    let mut seed = 11u64;
    for _ in 0..300 {
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 33) as u8
            })
            .collect();
        let _ = decode_sse(&[bytes.as_slice()]);
        let _ = decode_whole(&bytes);
    }
}

// ---- request encoding ----

fn opts() -> EncodeOptions<'static> {
    EncodeOptions {
        model: "claude-sonnet-4-5",
        default_max_tokens: 4096,
    }
}

fn encode(req: &ChatRequest) -> Result<Value, Error> {
    encode_request(req, &opts()).map(|r| serde_json::to_value(r).unwrap())
}

fn msg(role: Role, content: Vec<ContentPart>) -> Message {
    Message {
        role,
        content,
        name: None,
    }
}

fn text(t: &str) -> ContentPart {
    ContentPart::Text(t.to_owned())
}

fn user(t: &str) -> ChatRequest {
    ChatRequest {
        model: "route".into(),
        messages: vec![msg(Role::User, vec![text(t)])],
        ..ChatRequest::default()
    }
}

#[test]
fn encodes_system_cache_tools_history_and_thinking() {
    let mut metadata = Map::new();
    metadata.insert("team".into(), json!("search"));
    let mut extra = Map::new();
    extra.insert("service_tier".into(), json!("auto"));
    extra.insert("container".into(), json!("container_1"));
    extra.insert("logit_bias".into(), json!({"50256": -100}));
    let req = ChatRequest {
        model: "route".into(),
        messages: vec![
            msg(
                Role::System,
                vec![
                    text("You are terse."),
                    ContentPart::CacheBreakpoint(CacheControl {
                        ttl: Some("1h".into()),
                    }),
                ],
            ),
            msg(Role::Developer, vec![text("Answer in French.")]),
            Message {
                role: Role::User,
                content: vec![
                    text("What is in this picture?"),
                    ContentPart::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBORw0KGgo=".into(),
                        },
                        detail: Some("high".into()),
                    },
                    ContentPart::CacheBreakpoint(CacheControl::default()),
                ],
                name: Some("alice".into()),
            },
            msg(
                Role::Assistant,
                vec![
                    ContentPart::Reasoning {
                        text: "Two lookups needed.".into(),
                        signature: Some("sig-1".into()),
                    },
                    text("Let me look."),
                    ContentPart::ToolCall(ToolCall {
                        id: "toolu_1".into(),
                        name: "lookup".into(),
                        arguments: r#"{"q":"cat"}"#.into(),
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "toolu_2".into(),
                        name: "now".into(),
                        arguments: String::new(),
                    }),
                ],
            ),
            msg(
                Role::Tool,
                vec![ContentPart::ToolResult {
                    call_id: "toolu_1".into(),
                    content: "a cat".into(),
                    is_error: false,
                }],
            ),
            msg(
                Role::Tool,
                vec![ContentPart::ToolResult {
                    call_id: "toolu_2".into(),
                    content: "timeout".into(),
                    is_error: true,
                }],
            ),
            msg(Role::User, vec![text("Thanks.")]),
            // Unsigned reasoning (another vendor's) is left out, so this turn is empty and the
            // user turns around it merge.
            msg(
                Role::Assistant,
                vec![ContentPart::Reasoning {
                    text: "from another vendor".into(),
                    signature: None,
                }],
            ),
            msg(Role::User, vec![text("And now?")]),
        ],
        tools: vec![
            Tool {
                name: "lookup".into(),
                description: Some("Look a word up".into()),
                parameters: Some(json!({
                    "type": "object",
                    "properties": {"q": {"type": "string"}},
                    "required": ["q"],
                })),
                strict: None,
                cache: None,
            },
            Tool {
                name: "now".into(),
                description: None,
                parameters: None,
                strict: Some(true),
                cache: Some(CacheControl::default()),
            },
        ],
        tool_choice: Some(ToolChoice::Auto),
        parallel_tool_calls: Some(false),
        temperature: Some(0.5),
        top_k: Some(40),
        stop: vec!["END".into()],
        seed: Some(7),
        stream: true,
        reasoning: Some(Reasoning {
            effort: Some("high".into()),
            budget_tokens: Some(2048),
        }),
        user: Some("user-42".into()),
        metadata: Some(metadata),
        extra,
        ..ChatRequest::default()
    };
    let expected = json!({
        "model": "claude-sonnet-4-5",
        // No cap from the client: the default room for the answer plus the thinking budget.
        "max_tokens": 4096 + 2048,
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "Answer in French."},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                    "cache_control": {"type": "ephemeral"},
                },
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Two lookups needed.", "signature": "sig-1"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat"}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "timeout", "is_error": true},
                {"type": "text", "text": "Thanks."},
                {"type": "text", "text": "And now?"},
            ]},
        ],
        "tools": [
            {
                "name": "lookup",
                "description": "Look a word up",
                "input_schema": {
                    "type": "object",
                    "properties": {"q": {"type": "string"}},
                    "required": ["q"],
                },
            },
            {
                "name": "now",
                "input_schema": {"type": "object"},
                "strict": true,
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "temperature": 0.5,
        "top_k": 40,
        "stop_sequences": ["END"],
        "stream": true,
        "metadata": {"user_id": "user-42"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "service_tier": "auto",
        "container": "container_1",
    });
    assert_eq!(encode(&req).unwrap(), expected);
}

#[test]
fn breakpoints_land_on_the_block_before_them() {
    // Right after a thinking block, which takes no cache_control: the block before it.
    let req = ChatRequest {
        messages: vec![msg(
            Role::Assistant,
            vec![
                text("a"),
                ContentPart::Reasoning {
                    text: "t".into(),
                    signature: Some("s".into()),
                },
                ContentPart::CacheBreakpoint(CacheControl::default()),
            ],
        )],
        ..ChatRequest::default()
    };
    assert_eq!(
        encode(&req).unwrap()["messages"][0]["content"],
        json!([
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "thinking", "thinking": "t", "signature": "s"},
        ])
    );
    // First part of a turn: the end of the turn before.
    let req = ChatRequest {
        messages: vec![
            msg(Role::User, vec![text("q")]),
            msg(Role::Assistant, vec![text("a")]),
            msg(
                Role::User,
                vec![
                    ContentPart::CacheBreakpoint(CacheControl {
                        ttl: Some("5m".into()),
                    }),
                    text("next"),
                ],
            ),
        ],
        ..ChatRequest::default()
    };
    assert_eq!(
        encode(&req).unwrap()["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "5m"}},
            ]},
            {"role": "user", "content": [{"type": "text", "text": "next"}]},
        ])
    );
    // A breakpoint with nothing before it marks nothing.
    let req = ChatRequest {
        messages: vec![msg(
            Role::User,
            vec![
                ContentPart::CacheBreakpoint(CacheControl::default()),
                text("x"),
            ],
        )],
        ..ChatRequest::default()
    };
    assert_eq!(
        encode(&req).unwrap()["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    );
}

#[test]
fn defaults_and_plain_fields() {
    let body = encode(&user("hi")).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stream": false,
        })
    );
    let mut req = user("hi");
    req.max_output_tokens = Some(100);
    req.top_p = Some(0.9);
    req.seed = Some(1);
    let mut meta = Map::new();
    meta.insert("user_id".into(), json!("from-metadata"));
    req.metadata = Some(meta);
    req.extra.insert("service_tier".into(), json!("flex"));
    req.extra.insert("safe_prompt".into(), json!(true));
    let body = encode(&req).unwrap();
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["metadata"], json!({"user_id": "from-metadata"}));
    // Seed has no Anthropic counterpart; other vendors' fields never pass.
    for absent in [
        "seed",
        "service_tier",
        "safe_prompt",
        "thinking",
        "tools",
        "system",
    ] {
        assert!(body.get(absent).is_none(), "{absent} in {body}");
    }
}

#[test]
fn tool_choice_mapping() {
    let tool = Tool {
        name: "f".into(),
        description: None,
        // OpenAI clients send `{}` for a tool without arguments.
        parameters: Some(json!({})),
        strict: None,
        cache: None,
    };
    let with = |choice: Option<ToolChoice>, parallel: Option<bool>, tools: bool| {
        let mut req = user("hi");
        if tools {
            req.tools = vec![tool.clone()];
        }
        req.tool_choice = choice;
        req.parallel_tool_calls = parallel;
        encode(&req).unwrap()
    };
    assert_eq!(
        with(Some(ToolChoice::Required), None, true)["tool_choice"],
        json!({"type": "any"})
    );
    assert_eq!(
        with(Some(ToolChoice::Tool("f".into())), Some(false), true)["tool_choice"],
        json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        with(Some(ToolChoice::None), Some(false), true)["tool_choice"],
        json!({"type": "none"})
    );
    assert_eq!(
        with(None, Some(false), true)["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert!(with(None, Some(true), true).get("tool_choice").is_none());
    assert!(
        with(Some(ToolChoice::Auto), Some(false), false)
            .get("tool_choice")
            .is_none()
    );
    assert_eq!(
        with(None, None, true)["tools"][0]["input_schema"],
        json!({"type": "object"})
    );
}

#[test]
fn reasoning_effort_becomes_a_budget() {
    let with = |effort: &str, cap: Option<u32>| {
        let mut req = user("hi");
        req.reasoning = Some(Reasoning {
            effort: Some(effort.into()),
            budget_tokens: None,
        });
        req.max_output_tokens = cap;
        encode(&req)
    };
    for (effort, budget) in [
        ("minimal", 1024),
        ("low", 1024),
        ("medium", 4096),
        ("high", 16384),
    ] {
        let body = with(effort, None).unwrap();
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": budget})
        );
        assert_eq!(body["max_tokens"], 4096 + budget);
    }
    assert!(with("none", None).unwrap().get("thinking").is_none());
    // A client cap covers thinking: an effort's budget shrinks below it.
    let body = with("high", Some(2000)).unwrap();
    assert_eq!(body["max_tokens"], 2000);
    assert_eq!(body["thinking"]["budget_tokens"], 1999);
    let e = with("low", Some(1000)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    let e = with("turbo", None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("turbo"), "{}", e.message);
    // A zero budget turns thinking off.
    let mut req = user("hi");
    req.reasoning = Some(Reasoning {
        effort: None,
        budget_tokens: Some(0),
    });
    assert!(encode(&req).unwrap().get("thinking").is_none());
}

#[test]
fn response_formats() {
    let mut req = user("hi");
    req.response_format = Some(ResponseFormat::JsonObject);
    let e = encode(&req).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.side, Side::Client);
    assert!(e.message.contains("json_object"), "{}", e.message);

    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "answer".into(),
        schema: Some(schema.clone()),
        strict: Some(true),
        description: None,
    });
    assert_eq!(
        encode(&req).unwrap()["output_config"],
        json!({"format": {"type": "json_schema", "schema": schema}})
    );

    req.response_format = Some(ResponseFormat::Text);
    assert!(encode(&req).unwrap().get("output_config").is_none());
}

#[test]
fn refuses_what_anthropic_cannot_take() {
    let turn = |part: ContentPart| ChatRequest {
        messages: vec![msg(Role::Assistant, vec![part])],
        ..ChatRequest::default()
    };
    let e = encode(&turn(ContentPart::ToolCall(ToolCall {
        id: "toolu_9".into(),
        name: "lookup".into(),
        arguments: "{\"q\": ".into(),
    })))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert_eq!(e.side, Side::Client);
    assert!(
        e.message.contains("toolu_9") && e.message.contains("lookup"),
        "{}",
        e.message
    );
    let e = encode(&turn(ContentPart::ToolCall(ToolCall {
        id: "toolu_9".into(),
        name: "lookup".into(),
        arguments: "[1]".into(),
    })))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);

    let e = encode(&turn(ContentPart::Opaque {
        family: "openai",
        value: json!({"type": "input_audio"}),
    }))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("openai"), "{}", e.message);

    let block = json!({"type": "search_result", "source": "s", "title": "t", "content": []});
    let body = encode(&turn(ContentPart::Opaque {
        family: "anthropic",
        value: block.clone(),
    }))
    .unwrap();
    assert_eq!(body["messages"][0]["content"][0], block);

    let doc = |data: Option<&str>, file_id: Option<&str>| {
        encode(&turn(ContentPart::Document {
            data: data.map(str::to_owned),
            file_id: file_id.map(str::to_owned),
            filename: Some("report.pdf".into()),
        }))
    };
    assert_eq!(
        doc(Some("data:application/pdf;base64,JVBERi0="), None).unwrap()["messages"][0]["content"]
            [0],
        json!({
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "report.pdf",
        })
    );
    assert_eq!(
        doc(None, Some("file-abc")).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    assert_eq!(
        doc(Some("data:text/plain;base64,aGk="), None)
            .unwrap_err()
            .kind,
        ErrorKind::Unsupported
    );

    let e = encode(&ChatRequest {
        messages: vec![msg(
            Role::System,
            vec![ContentPart::Image {
                source: ImageSource::Url("https://example.com/a.png".into()),
                detail: None,
            }],
        )],
        ..ChatRequest::default()
    })
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

// ---- errors ----

fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, http::HeaderValue::from_static(v));
    }
    h
}

fn body(kind: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }))
    .unwrap()
}

#[test]
fn overloaded_529_is_retryable() {
    let e = error::from_response(
        529,
        &headers(&[]),
        &body("overloaded_error", "Overloaded"),
        &[],
    );
    assert_eq!(e.kind, ErrorKind::Overloaded);
    assert_eq!(e.side, Side::Upstream);
    assert_eq!(e.retry, Retry::Yes);
    assert_eq!(e.upstream_status, Some(529));
    assert_eq!(e.message, "Overloaded");
    let e = error::from_response(
        529,
        &headers(&[("retry-after", "3")]),
        &body("overloaded_error", "Overloaded"),
        &[],
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
}

#[test]
fn rate_limit_429_with_retry_after() {
    let e = error::from_response(
        429,
        &headers(&[("retry-after", "7")]),
        &body(
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        &[],
    );
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry, Retry::After(Duration::from_secs(7)));
    assert_eq!(e.upstream_status, Some(429));
    // A header that is not a finite number is ignored, not a panic.
    for bad in ["NaN", "soon", "-1e400"] {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", http::HeaderValue::from_str(bad).unwrap());
        let e = error::from_response(429, &h, &body("rate_limit_error", "slow down"), &[]);
        assert!(e.is_retryable());
    }
}

#[test]
fn error_classes_by_type_and_status() {
    let cases: [(u16, &str, &str, ErrorKind); 10] = [
        (
            400,
            "invalid_request_error",
            "prompt is too long: 208164 tokens > 200000 maximum",
            ErrorKind::ContextWindowExceeded,
        ),
        (
            400,
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 197666 + 21333 > 200000",
            ErrorKind::ContextWindowExceeded,
        ),
        (
            400,
            "invalid_request_error",
            "messages.1: `tool_use` ids were found without `tool_result` blocks",
            ErrorKind::BadRequest,
        ),
        (
            401,
            "authentication_error",
            "invalid x-api-key",
            ErrorKind::Auth,
        ),
        (
            402,
            "billing_error",
            "Your credit balance is too low",
            ErrorKind::PermissionDenied,
        ),
        (
            403,
            "permission_error",
            "Your API key does not have permission",
            ErrorKind::PermissionDenied,
        ),
        (
            404,
            "not_found_error",
            "model: claude-x",
            ErrorKind::NotFound,
        ),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            ErrorKind::PayloadTooLarge,
        ),
        (500, "api_error", "Internal server error", ErrorKind::Server),
        (
            504,
            "timeout_error",
            "Request timed out",
            ErrorKind::Timeout,
        ),
    ];
    for (status, kind, message, expected) in cases {
        let e = error::from_response(status, &headers(&[]), &body(kind, message), &[]);
        assert_eq!(e.kind, expected, "{status} {kind}");
        assert_eq!(e.message, message);
        assert_eq!(e.upstream_status, Some(status));
    }
    assert!(
        !error::from_response(400, &headers(&[]), &body("invalid_request_error", "x"), &[])
            .is_retryable()
    );
    assert!(error::from_response(500, &headers(&[]), &body("api_error", "x"), &[]).is_retryable());

    // Not Anthropic's shape (a proxy's page, an empty body): the status decides.
    let e = error::from_response(502, &headers(&[]), b"<html>Bad gateway</html>", &[]);
    assert_eq!(e.kind, ErrorKind::Server);
    assert!(e.message.contains("Bad gateway"), "{}", e.message);
    let e = error::from_response(503, &headers(&[]), b"", &[]);
    assert_eq!(e.kind, ErrorKind::Overloaded);
    assert_eq!(e.message, "upstream answered HTTP 503");
}

#[test]
fn secrets_are_redacted() {
    let key = Secret::new("sk-ant-api03-0123456789abcdefghij");
    let e = error::from_response(
        401,
        &headers(&[]),
        &body(
            "authentication_error",
            "invalid x-api-key sk-ant-api03-0123456789abcdefghij",
        ),
        &[&key],
    );
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.message.contains("0123456789"), "{}", e.message);
}

// ---- config and the HTTP request ----

fn config(value: Value) -> Result<AnthropicConfig, serde_json::Error> {
    serde_json::from_value(value)
}

fn client() -> reqwest::Client {
    crate::shared_client(&crate::HttpSettings::default()).unwrap()
}

#[test]
fn config_is_validated() {
    assert!(config(json!({"api_key": "k", "api_version": "x"})).is_err());
    assert!(config(json!({"base_url": "https://x"})).is_err());

    let built = |v: Value| Anthropic::from_config(&config(v).unwrap(), client()).err();
    let e = built(json!({"api_key": "k", "base_url": "ftp://x"})).unwrap();
    assert!(e.starts_with("base_url:"), "{e}");
    let e = built(json!({"api_key": "k", "base_url": "https://api.anthropic.com/v1"})).unwrap();
    assert!(e.starts_with("base_url:"), "{e}");
    let e = built(json!({"api_key": ""})).unwrap();
    assert!(e.starts_with("api_key:"), "{e}");
    let e = built(json!({"api_key": "k", "headers": {"X-Api-Key": "other"}})).unwrap();
    assert!(e.contains("api_key"), "{e}");
    let e = built(json!({"api_key": "k", "default_max_tokens": 0})).unwrap();
    assert!(e.starts_with("default_max_tokens:"), "{e}");

    let cfg: crate::ProviderConfig = serde_json::from_value(json!({
        "type": "anthropic",
        "api_key": "sk-ant-0123456789",
        "headers": {"anthropic-beta": "context-1m-2025-08-07"},
    }))
    .unwrap();
    assert_eq!(cfg.kind(), "anthropic");
    let summary = cfg.summary();
    assert!(
        summary.contains("base_url=https://api.anthropic.com")
            && summary.contains("version=2023-06-01"),
        "{summary}"
    );
    assert!(!summary.contains("0123456789"), "{summary}");
    assert!(crate::build_provider(&cfg, client()).is_ok());
}

#[test]
fn request_carries_key_version_and_headers() {
    let cfg = config(json!({
        "base_url": "https://proxy.example/anthropic/",
        "api_key": "sk-ant-test",
        "headers": {"anthropic-beta": "context-1m-2025-08-07"},
    }))
    .unwrap();
    let provider = match Anthropic::from_config(&cfg, client()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(provider.default_max_tokens, 4096);
    let req = provider.request(b"{}".to_vec(), None).build().unwrap();
    assert_eq!(req.method(), &http::Method::POST);
    assert_eq!(
        req.url().as_str(),
        "https://proxy.example/anthropic/v1/messages"
    );
    let h = req.headers();
    assert_eq!(h["x-api-key"], "sk-ant-test");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(h["anthropic-beta"], "context-1m-2025-08-07");
    assert_eq!(h["content-type"], "application/json");
    assert!(h.get("authorization").is_none());
    // The client's own beta names join the configured ones, in one header.
    let req = provider
        .request(b"{}".to_vec(), Some("mid-conversation-system-2026-04-07"))
        .build()
        .unwrap();
    let betas: Vec<_> = req.headers().get_all("anthropic-beta").iter().collect();
    assert_eq!(
        betas,
        ["context-1m-2025-08-07,mid-conversation-system-2026-04-07"]
    );
    // Without configured ones, the client's alone.
    let cfg = config(json!({"api_key": "sk-ant-test"})).unwrap();
    let plain = Anthropic::from_config(&cfg, client()).unwrap_or_else(|e| panic!("{e}"));
    let req = plain
        .request(b"{}".to_vec(), Some("b1,b2"))
        .build()
        .unwrap();
    assert_eq!(req.headers()["anthropic-beta"], "b1,b2");
}

#[tokio::test]
async fn no_embeddings() {
    use relais_core::{EmbedRequest, Provider};
    let cfg = config(json!({"api_key": "k"})).unwrap();
    let provider = match Anthropic::from_config(&cfg, client()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(provider.kind(), "anthropic");
    let e = provider
        .embed("m", &EmbedRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}
