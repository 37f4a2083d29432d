//! Conformance: every Google recording in `shared/fixtures` decodes without loss, streamed and
//! whole; the request encoding matches Gemini's schema; errors land in their classes; the Vertex
//! service-account flow signs, exchanges and caches its token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relais_core::{
    CacheControl, ChatRequest, ChatResponse, Collector, ContentPart, EmbedRequest, Error,
    ErrorKind, FinishReason, ImageSource, Message, Provider, Reasoning, ResponseFormat, Retry,
    Role, Secret, Side, StreamEvent, Tool, ToolCall, ToolChoice, Usage,
};
use serde_json::{Map, Value, json};

use super::auth::{self, ServiceAccount, TokenSource};
use super::convert::{EncodeOptions, PLACEHOLDER_SIGNATURE, encode_request, image_mime_type};
use super::error;
use super::stream::{Segment, parse_json_path};
use super::{
    Gemini, GeminiConfig, VertexConfig, decode_chunks, decode_studio_embeddings,
    decode_vertex_embeddings, decode_whole, model_segment,
};
use crate::openai_compat::tests::fixture;
use crate::sse::SseParser;

/// The throwaway service account key the mock vendor also uses (see the file's `_comment`).
const TEST_KEY: &str = include_str!("../../../testkit/src/vertex-test-key.json");

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
    fold(&decode_whole(read(&format!("google/{name}")).as_bytes()).unwrap())
}

fn chunks(name: &str) -> ChatResponse {
    fold(&decode_chunks(read(&format!("google/{name}")).lines()).unwrap())
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

/// A whole-response recording as JSON, as an independent oracle.
fn recorded(name: &str) -> Value {
    serde_json::from_str(&read(&format!("google/{name}"))).unwrap()
}

/// The parts of a recorded stream, line by line, straight from the JSON.
fn recorded_parts(raw: &str) -> Vec<Value> {
    raw.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| {
            v["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The answer text of a recorded stream: its non-thought text parts.
fn oracle_text(raw: &str) -> String {
    recorded_parts(raw)
        .iter()
        .filter(|p| p["thought"] != true)
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect()
}

/// The thought summaries of a recorded stream.
fn oracle_thoughts(raw: &str) -> String {
    recorded_parts(raw)
        .iter()
        .filter(|p| p["thought"] == true)
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect()
}

/// The thought signature carried by line `line` of a recorded stream.
fn line_signature(raw: &str, line: usize) -> String {
    let v: Value = serde_json::from_str(raw.lines().nth(line).unwrap()).unwrap();
    v["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["thoughtSignature"].as_str())
        .unwrap()
        .to_owned()
}

/// A recording (one response per line) as the bytes Gemini sends with `alt=sse`.
fn as_sse(lines: &str) -> String {
    let mut out = String::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(&format!("data: {line}\r\n\r\n"));
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

const CHUNK_RECORDINGS: [&str; 5] = [
    "google-reasoning.chunks.txt",
    "google-stream-no-args-tool-call.chunks.txt",
    "google-stream-tool-call-arguments.chunks.txt",
    "google-text.chunks.txt",
    "google-tool-call.chunks.txt",
];

const WHOLE_RECORDINGS: [&str; 3] = [
    "google-reasoning.json",
    "google-text.json",
    "google-tool-call.json",
];

/// Recordings that are not chat responses: an error body and an embeddings answer.
const OTHER_RECORDINGS: [&str; 2] = ["google-429-retry-info.json", "google-vertex-embedding.json"];

#[test]
fn every_google_recording_is_covered() {
    // A new recording must get a test below (and a place in these lists).
    for entry in std::fs::read_dir(fixture("google")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            CHUNK_RECORDINGS.contains(&name.as_str())
                || WHOLE_RECORDINGS.contains(&name.as_str())
                || OTHER_RECORDINGS.contains(&name.as_str()),
            "no conformance test for google/{name}"
        );
    }
}

#[test]
fn usage_adds_up_to_the_recorded_total() {
    // Gemini's totalTokenCount is prompt + candidates + thoughts; the canonical input + output
    // must say the same, which holds only if thinking was counted into the output.
    let total = |v: &Value| v["usageMetadata"]["totalTokenCount"].as_u64().unwrap();
    for name in WHOLE_RECORDINGS {
        let r = whole(name);
        assert_eq!(
            r.usage.unwrap().total_tokens(),
            total(&recorded(name)),
            "{name}"
        );
    }
    for name in CHUNK_RECORDINGS {
        let raw = read(&format!("google/{name}"));
        let last: Value = serde_json::from_str(raw.lines().last().unwrap()).unwrap();
        let r = chunks(name);
        assert_eq!(r.usage.unwrap().total_tokens(), total(&last), "{name}");
    }
}

#[test]
fn text_whole() {
    let r = whole("google-text.json");
    let rec = recorded("google-text.json");
    let part = &rec["candidates"][0]["content"]["parts"][0];
    assert_eq!(
        r.text,
        "There are **3** r's in strawberry.\n\nHere is the breakdown: st**r**awbe**rr**y."
    );
    assert_eq!(r.text, part["text"]);
    // No thought summaries were asked for; the signature rides on the text part.
    assert_eq!(r.reasoning, "");
    assert_eq!(
        r.reasoning_signature.as_deref(),
        Some(
            "EtoFCtcFAb4+9vtfe4MXRxQjw48U1WKrR/7lYsgFkVi/bepqsSPjY0VU7HEzkeCBIfy1fu5t9aUZ4IZ65aWagqbBrV45fc97olcg"
        )
    );
    assert_eq!(
        r.reasoning_signature.as_deref(),
        part["thoughtSignature"].as_str()
    );
    assert_eq!(r.id.as_deref(), Some("Un6LacrVMcjUxs0PmJfWoQc"));
    assert_eq!(r.model.as_deref(), Some("gemini-3-pro-preview"));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    // 28 candidate tokens + 244 thought tokens.
    assert_eq!(r.usage, usage(9, 272, 0, 244));
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.refusal, None);
}

#[test]
fn text_stream() {
    let raw = read("google/google-text.chunks.txt");
    let events = decode_chunks(raw.lines()).unwrap();
    let signature = line_signature(&raw, 2);
    assert!(signature.starts_with("EqsFCqgFAb4+9vvt"));
    // The signature arrives after the text, on an empty text part, with the finish reason.
    assert_eq!(
        events,
        [
            StreamEvent::Start {
                id: Some("bH6LaZW8Fp_3nsEPqtaSwQ4".into()),
                model: Some("gemini-3-pro-preview".into()),
            },
            StreamEvent::TextDelta("There are **3**".into()),
            StreamEvent::TextDelta(" \"r\"s in strawberry.\n\nst**r**awbe**rr**y".into()),
            StreamEvent::ReasoningDelta {
                text: String::new(),
                signature: Some(signature),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 9,
                output_tokens: 23 + 185,
                reasoning_tokens: 185,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::Stop),
        ]
    );
    let r = fold(&events);
    assert_eq!(r.text, oracle_text(&raw));
    assert_eq!(
        r.text,
        "There are **3** \"r\"s in strawberry.\n\nst**r**awbe**rr**y"
    );
    assert_eq!(r.usage, usage(9, 208, 0, 185));
}

#[test]
fn reasoning_whole() {
    let r = whole("google-reasoning.json");
    let rec = recorded("google-reasoning.json");
    let part = &rec["candidates"][0]["content"]["parts"][0];
    assert_eq!(
        r.text,
        "There are **3** \"r\"s in strawberry.\n\nHere is the breakdown: st**r**awbe**rr**y."
    );
    assert_eq!(r.text, part["text"]);
    assert_eq!(r.reasoning, "");
    assert_eq!(
        r.reasoning_signature.as_deref(),
        Some(
            "EvsFCvgFAb4+9vtgYAdOcxMwBr9AOT6XX6Pz5SYAd9gXb/bmH4iLHlJ/3D3xudRmJGM9BBxdQZ1WGuRdZJ2CkdRKCCVVn/cqmSjH"
        )
    );
    assert_eq!(r.id.as_deref(), Some("YH6LaZT7ENmPxN8P-r2J8Aw"));
    assert_eq!(r.model.as_deref(), Some("gemini-3-pro-preview"));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(9, 29 + 282, 0, 282));
}

#[test]
fn reasoning_stream() {
    let raw = read("google/google-reasoning.chunks.txt");
    let events = decode_chunks(raw.lines()).unwrap();
    // Usage arrives in every chunk as running totals (10, then 29 candidate tokens): one usage
    // event, the final figures.
    let usages: Vec<&StreamEvent> = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Usage(_)))
        .collect();
    assert_eq!(
        usages,
        [&StreamEvent::Usage(Usage {
            input_tokens: 9,
            output_tokens: 29 + 256,
            reasoning_tokens: 256,
            ..Usage::default()
        })]
    );
    let r = fold(&events);
    assert_eq!(r.text, oracle_text(&raw));
    assert_eq!(
        r.text,
        "There are **3** \"r\"s in strawberry.\n\nHere is the breakdown: st**r**awbe**rr**y."
    );
    let signature = line_signature(&raw, 2);
    assert!(signature.starts_with("Eo0HCooHAb4+9vut"));
    assert_eq!(r.reasoning_signature, Some(signature));
    assert_eq!(r.reasoning, "");
    assert_eq!(r.id.as_deref(), Some("dX6LadKVC7SZ28oPr9yJoQs"));
    assert_eq!(r.model.as_deref(), Some("gemini-3-pro-preview"));
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(9, 285, 0, 256));
}

#[test]
fn tool_call_whole() {
    let r = whole("google-tool-call.json");
    let rec = recorded("google-tool-call.json");
    let part = &rec["candidates"][0]["content"]["parts"][0];
    assert_eq!(r.text, "");
    assert_eq!(r.tool_calls.len(), 1);
    // Gemini gives no call id: the call's index makes one.
    assert_eq!(r.tool_calls[0].id, "call_0");
    assert_eq!(r.tool_calls[0].name, "weather");
    assert_eq!(r.tool_calls[0].arguments, r#"{"location":"San Francisco"}"#);
    let args: Value = serde_json::from_str(&r.tool_calls[0].arguments).unwrap();
    assert_eq!(args, part["functionCall"]["args"]);
    assert_eq!(
        r.reasoning_signature.as_deref(),
        part["thoughtSignature"].as_str()
    );
    assert!(
        r.reasoning_signature
            .as_deref()
            .unwrap()
            .starts_with("EskgCsYgAb4+9vtF")
    );
    assert_eq!(r.id.as_deref(), Some("m36LaZGyCLz1xs0PtNSB-QU"));
    assert_eq!(r.model.as_deref(), Some("gemini-3-pro-preview"));
    // STOP after a function call.
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(29, 15 + 893, 0, 893));
}

#[test]
fn tool_call_stream() {
    let raw = read("google/google-tool-call.chunks.txt");
    let events = decode_chunks(raw.lines()).unwrap();
    let signature = line_signature(&raw, 0);
    assert!(signature.starts_with("EqUCCqICAb4+9vsh"));
    // The signature comes just before the call it was sent with.
    assert_eq!(
        events,
        [
            StreamEvent::Start {
                id: Some("b36LacjwM668nsEP2tbsgQQ".into()),
                model: Some("gemini-3-pro-preview".into()),
            },
            StreamEvent::ReasoningDelta {
                text: String::new(),
                signature: Some(signature),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_0".into(),
                name: "weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"{"location":"San Francisco"}"#.into(),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 29,
                output_tokens: 15 + 45,
                reasoning_tokens: 45,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ]
    );
    let r = fold(&events);
    assert_eq!(r.text, oracle_text(&raw));
    assert_eq!(r.text, "");
}

#[test]
fn streamed_calls_without_arguments_and_with_partial_arguments() {
    let raw = read("google/google-stream-no-args-tool-call.chunks.txt");
    let events = decode_chunks(raw.lines()).unwrap();
    let thoughts = oracle_thoughts(&raw);
    assert!(thoughts.starts_with("**Processing User Requests**\n\nI've started by understanding"));
    assert!(thoughts.ends_with("in parallel as instructed.\n\n\n"));
    let signature = line_signature(&raw, 1);
    assert!(signature.starts_with("AY89a18a8/Loc2wl"));
    let start = |index: u32, name: &str| StreamEvent::ToolCallStart {
        index,
        id: format!("call_{index}"),
        name: name.into(),
    };
    let args = |index: u32, arguments: &str| StreamEvent::ToolCallDelta {
        index,
        arguments: arguments.into(),
    };
    // `read_theme` comes whole and without `args`; each `read_screen` streams its `id` as
    // JSON-path pieces ("A", then "") and ends with an empty `functionCall`.
    assert_eq!(
        events,
        [
            StreamEvent::Start {
                id: Some("_vr4aYiWEJnYodAPkujX0QM".into()),
                model: Some("gemini-3-flash-preview".into()),
            },
            StreamEvent::ReasoningDelta {
                text: thoughts.clone(),
                signature: None,
            },
            StreamEvent::ReasoningDelta {
                text: String::new(),
                signature: Some(signature.clone()),
            },
            start(0, "read_theme"),
            args(0, "{}"),
            start(1, "read_screen"),
            args(1, r#"{"id":"A"}"#),
            start(2, "read_screen"),
            args(2, r#"{"id":"B"}"#),
            start(3, "read_screen"),
            args(3, r#"{"id":"C"}"#),
            StreamEvent::Usage(Usage {
                input_tokens: 249,
                output_tokens: 58 + 183,
                reasoning_tokens: 183,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ]
    );
    let r = fold(&events);
    assert_eq!(r.text, oracle_text(&raw));
    assert_eq!(r.text, "");
    assert_eq!(r.reasoning, thoughts);
    assert_eq!(r.reasoning_signature, Some(signature));
    assert_eq!(r.usage, usage(249, 241, 0, 183));
}

#[test]
fn streamed_call_arguments_are_assembled() {
    let raw = read("google/google-stream-tool-call-arguments.chunks.txt");
    let events = decode_chunks(raw.lines()).unwrap();
    let signature = line_signature(&raw, 0);
    assert!(signature.starts_with("CiMBjz1rX25KieIB"));
    assert_eq!(
        events,
        [
            StreamEvent::Start {
                id: Some("dqHOab6xGLzWodAPkPuViA4".into()),
                model: Some("gemini-3.1-pro-preview".into()),
            },
            StreamEvent::ReasoningDelta {
                text: String::new(),
                signature: Some(signature),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_0".into(),
                name: "getWeather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"{"location":"Boston"}"#.into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_1".into(),
                name: "getWeather".into(),
            },
            // The last call ends in the chunk that also finishes the response.
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: r#"{"location":"San Francisco"}"#.into(),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 26,
                output_tokens: 23 + 132,
                reasoning_tokens: 132,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ]
    );
    assert_eq!(fold(&events).usage, usage(26, 155, 0, 132));
}

/// Thought summaries (AI Studio, Gemini 2.5), cached and tool-use prompt tokens, a call with an
/// id, a second candidate: features no recording has yet. One stream, the same response whole,
/// and the same stream as the JSON array Gemini sends without `alt=sse`.
const THINKING_STREAM: &str = r#"{"candidates":[{"content":{"parts":[{"text":"**Thinking** about it.","thought":true}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":120,"totalTokenCount":150,"cachedContentTokenCount":100,"thoughtsTokenCount":30},"modelVersion":"gemini-2.5-flash","responseId":"r1"}
{"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"index":0},{"content":{"parts":[{"text":"another candidate"}],"role":"model"},"index":1}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":1,"totalTokenCount":151,"cachedContentTokenCount":100,"thoughtsTokenCount":30},"modelVersion":"gemini-2.5-flash","responseId":"r1"}
{"candidates":[{"content":{"parts":[{"functionCall":{"id":"fc-7","name":"lookup","args":{"q":"x"}},"thoughtSignature":"c2ln"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":9,"totalTokenCount":164,"cachedContentTokenCount":100,"thoughtsTokenCount":30,"toolUsePromptTokenCount":5},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;

const THINKING_WHOLE: &str = r#"{"candidates":[{"content":{"parts":[
  {"text":"**Thinking** about it.","thought":true},
  {"text":"Hello"},
  {"functionCall":{"id":"fc-7","name":"lookup","args":{"q":"x"}},"thoughtSignature":"c2ln"}
 ],"role":"model"},"finishReason":"STOP","index":0}],
 "usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":9,"totalTokenCount":164,"cachedContentTokenCount":100,"thoughtsTokenCount":30,"toolUsePromptTokenCount":5},
 "modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;

#[test]
fn thoughts_cached_tokens_and_call_ids() {
    let streamed = fold(&decode_chunks(THINKING_STREAM.lines()).unwrap());
    assert_eq!(streamed.reasoning, "**Thinking** about it.");
    assert_eq!(streamed.reasoning_signature.as_deref(), Some("c2ln"));
    assert_eq!(streamed.text, "Hello");
    assert_eq!(
        streamed.tool_calls,
        [ToolCall {
            id: "fc-7".into(),
            name: "lookup".into(),
            arguments: r#"{"q":"x"}"#.into(),
        }]
    );
    assert_eq!(streamed.finish, Some(FinishReason::ToolCalls));
    // Input counts the tool-use prompt (120 + 5); cached tokens are a subset of it; output
    // counts thinking (9 + 30).
    assert_eq!(streamed.usage, usage(125, 39, 100, 30));
    assert_eq!(streamed.id.as_deref(), Some("r1"));
    assert_eq!(streamed.model.as_deref(), Some("gemini-2.5-flash"));

    let full = fold(&decode_whole(THINKING_WHOLE.as_bytes()).unwrap());
    assert_eq!(full, streamed);
    let array = format!(
        "[{}]",
        THINKING_STREAM.lines().collect::<Vec<_>>().join(",\n")
    );
    let from_array = fold(&decode_whole(array.as_bytes()).unwrap());
    assert_eq!(from_array, streamed);
}

#[test]
fn partial_arguments_build_nested_values() {
    let lines = [
        r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"plan","willContinue":true}}]}}]}"#,
        r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"partialArgs":[{"jsonPath":"$.steps[0].title","stringValue":"Buy ","willContinue":true}],"willContinue":true}}]}}]}"#,
        r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"partialArgs":[{"jsonPath":"$.steps[0].title","stringValue":"milk"},{"jsonPath":"$.steps[0].count","numberValue":2},{"jsonPath":"$.steps[1]['done?']","boolValue":true},{"jsonPath":"$[\"note\"]","nullValue":null}],"willContinue":true}}]}}]}"#,
        r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"totalTokenCount":15}}"#,
    ];
    let r = fold(&decode_chunks(lines.into_iter()).unwrap());
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].name, "plan");
    let args: Value = serde_json::from_str(&r.tool_calls[0].arguments).unwrap();
    assert_eq!(
        args,
        json!({"steps": [{"title": "Buy milk", "count": 2}, {"done?": true}], "note": null})
    );
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(10, 5, 0, 0));

    assert_eq!(
        parse_json_path("$.a['b.c'][2].d"),
        Some(vec![
            Segment::Key("a".into()),
            Segment::Key("b.c".into()),
            Segment::Index(2),
            Segment::Key("d".into()),
        ])
    );
    assert_eq!(parse_json_path("$"), Some(vec![]));
    for bad in ["a.b", "$.", "$..a", "$[*]", "$[-1]", "$['a'", "$[1", "$a"] {
        assert_eq!(parse_json_path(bad), None, "{bad}");
    }
    let deep = format!("${}", ".a".repeat(100));
    assert_eq!(parse_json_path(&deep), None);
}

#[test]
fn finish_reasons() {
    let finish = |reason: &str, part: Value| {
        let body = json!({"candidates": [{"content": {"parts": [part]}, "finishReason": reason}]});
        fold(&decode_whole(body.to_string().as_bytes()).unwrap()).finish
    };
    let text = json!({"text": "partial"});
    let call = json!({"functionCall": {"name": "f"}});
    assert_eq!(finish("STOP", text.clone()), Some(FinishReason::Stop));
    assert_eq!(finish("STOP", call.clone()), Some(FinishReason::ToolCalls));
    assert_eq!(
        finish("MAX_TOKENS", text.clone()),
        Some(FinishReason::Length)
    );
    assert_eq!(finish("MAX_TOKENS", call), Some(FinishReason::Length));
    for filtered in [
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
    ] {
        assert_eq!(
            finish(filtered, text.clone()),
            Some(FinishReason::ContentFilter),
            "{filtered}"
        );
    }
    assert_eq!(
        finish("MALFORMED_FUNCTION_CALL", text.clone()),
        Some(FinishReason::Error)
    );
    assert_eq!(finish("OTHER", text.clone()), Some(FinishReason::Other));
    assert_eq!(finish("LANGUAGE", text.clone()), Some(FinishReason::Other));
    // A whole response that names no reason still ends.
    let r =
        fold(&decode_whole(br#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#).unwrap());
    assert_eq!(r.finish, Some(FinishReason::Other));
    assert_eq!(r.text, "x");
}

#[test]
fn blocked_prompt_is_a_content_filter_error() {
    let body = br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT","blockReasonMessage":"The prompt was blocked."},"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8},"modelVersion":"gemini-2.5-flash","responseId":"x"}"#;
    let e = decode_whole(body).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContentFiltered);
    assert_eq!(e.side, Side::Upstream);
    assert!(!e.is_retryable());
    assert!(e.message.contains("PROHIBITED_CONTENT"), "{}", e.message);
    assert!(
        e.message.contains("The prompt was blocked."),
        "{}",
        e.message
    );
    // Prompt feedback without a block reason is only ratings.
    let ok = br#"{"promptFeedback":{"safetyRatings":[]},"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}]}"#;
    assert_eq!(fold(&decode_whole(ok).unwrap()).text, "hi");
}

#[test]
fn in_stream_error_is_typed() {
    let lines = [
        r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}]}"#,
        r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2s"}]}}"#,
    ];
    let e = decode_chunks(lines.into_iter()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.side, Side::Upstream);
    assert_eq!(e.retry, Retry::After(Duration::from_secs(2)));
    assert_eq!(e.message, "Resource has been exhausted (e.g. check quota).");
    let e = decode_whole(
        br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Overloaded);
}

#[test]
fn any_split_of_a_recorded_stream_decodes_the_same() {
    for name in CHUNK_RECORDINGS {
        let raw = read(&format!("google/{name}"));
        let reference = fold(&decode_chunks(raw.lines()).unwrap());
        let sse = as_sse(&raw);
        let bytes = sse.as_bytes();
        for cut in 0..=bytes.len() {
            let r = fold(&decode_sse(&[&bytes[..cut], &bytes[cut..]]).unwrap());
            assert_eq!(r, reference, "{name} cut at {cut}");
        }
        for i in (0..bytes.len()).step_by(97) {
            for j in (i..bytes.len()).step_by(89) {
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
        super::stream::ChunkDecoder::new(),
    );
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item);
    }
    out
}

#[tokio::test]
async fn live_stream_matches_the_recording_and_reports_a_cut() {
    let raw = read("google/google-stream-tool-call-arguments.chunks.txt");
    let sse = as_sse(&raw);
    let reference = decode_chunks(raw.lines()).unwrap();
    let events: Vec<StreamEvent> = live(sse.clone().into_bytes())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events, reference);

    // A stream cut before the finishing chunk ends in an error, not a clean end.
    let cut = sse.rfind("data: ").unwrap();
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
        let raw = read(&format!("google/{name}"));
        let lines: Vec<&str> = raw.lines().collect();
        // Every truncation of every chunk.
        for line in &lines {
            for cut in 0..=line.len() {
                if let Some(prefix) = line.get(..cut) {
                    decode_checked(&[prefix]);
                }
            }
        }
        // Every sequence with one chunk missing or repeated.
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
        let raw = read(&format!("google/{name}"));
        for cut in 0..=raw.len() {
            if let Some(prefix) = raw.get(..cut) {
                let _ = decode_whole(prefix.as_bytes());
            }
        }
    }
    let deep_path = format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"functionCall":{{"name":"f","partialArgs":[{{"jsonPath":"${}","numberValue":1}}]}}}}]}}}}]}}"#,
        ".a".repeat(5000)
    );
    // Well-formed JSON with the wrong shapes.
    for hostile in [
        "null",
        "[]",
        "{}",
        "[1]",
        r#"{"candidates":7}"#,
        r#"{"candidates":[null]}"#,
        r#"{"candidates":[{"index":4294967296}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":7}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"thought":true}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"partialArgs":[{"jsonPath":"$.a","stringValue":"x"}]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","willContinue":true,"partialArgs":[{"jsonPath":"$.a[4294967295]","numberValue":1}]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","partialArgs":[{"jsonPath":"$[0]","numberValue":1}]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","partialArgs":[{"jsonPath":"$","stringValue":"x"}]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","partialArgs":[{"jsonPath":"$.a","stringValue":"x"},{"jsonPath":"$.a.b","boolValue":true}]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","partialArgs":[{"jsonPath":"$.a","numberValue":"1"}]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","partialArgs":[7]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":[1]}}]}}]}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":""}}]}}]}"#,
        r#"{"candidates":[{"finishReason":"SOMETHING_NEW"}]}"#,
        r#"{"usageMetadata":{"promptTokenCount":18446744073709551615,"candidatesTokenCount":18446744073709551615,"thoughtsTokenCount":18446744073709551615,"toolUsePromptTokenCount":18446744073709551615},"candidates":[{"finishReason":"STOP"}]}"#,
        r#"{"usageMetadata":{"promptTokenCount":-1}}"#,
        r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
        r#"{"promptFeedback":{"blockReason":7}}"#,
        r#"{"error":"text"}"#,
        r#"{"error":{}}"#,
        r#"{"error":{"code":99999999999999,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"99999999999999999999999.99999999999s"}]}}"#,
        deep_path.as_str(),
    ] {
        decode_checked(&[hostile]);
        let _ = decode_whole(hostile.as_bytes());
    }
    let e = decode_chunks(
        [r#"{"candidates":[{"content":{"parts":[{"functionCall":{"partialArgs":[{"jsonPath":"$.a","stringValue":"x"}]}}]}}]}"#]
            .into_iter(),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
    // Random bytes through the SSE parser and the decoder.
    let mut seed = 13u64;
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

// ---- embeddings ----

#[test]
fn vertex_embeddings() {
    let raw = read("google/google-vertex-embedding.json");
    let rec: Value = serde_json::from_str(&raw).unwrap();
    let r = decode_vertex_embeddings("text-embedding-005", raw.as_bytes(), 2).unwrap();
    assert_eq!(r.embeddings.len(), 2);
    for (i, embedding) in r.embeddings.iter().enumerate() {
        let expected: Vec<f32> = rec["predictions"][i]["embeddings"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(embedding, &expected);
        assert_eq!(embedding.len(), 5);
    }
    // 5 + 6 tokens, from each prediction's statistics.
    assert_eq!(r.usage.input_tokens, 11);
    assert_eq!(r.usage.output_tokens, 0);
    assert_eq!(r.model.as_deref(), Some("text-embedding-005"));
    let e = decode_vertex_embeddings("m", raw.as_bytes(), 3).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
}

#[test]
fn studio_embeddings_and_bodies() {
    let body = br#"{"embeddings":[{"values":[0.25,-1]},{"values":[0.5,2]}]}"#;
    let r = decode_studio_embeddings("gemini-embedding-001", body, 2).unwrap();
    assert_eq!(r.embeddings, [[0.25f32, -1.0], [0.5, 2.0]]);
    assert_eq!(r.usage, Usage::default());
    assert!(decode_studio_embeddings("m", body, 1).is_err());
    assert!(decode_studio_embeddings("m", b"{\"embeddings\":7}", 1).is_err());

    let mut extra = Map::new();
    extra.insert("taskType".into(), json!("RETRIEVAL_QUERY"));
    let req = EmbedRequest {
        model: "route".into(),
        input: vec!["a".into(), "b c".into()],
        dimensions: Some(256),
        user: None,
        extra,
    };
    assert_eq!(
        super::convert::studio_embed_body("gemini-embedding-001", &req),
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]},
             "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 256},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b c"}]},
             "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 256},
        ]})
    );
    assert_eq!(
        super::convert::vertex_embed_body(&req),
        json!({
            "instances": [
                {"content": "a", "task_type": "RETRIEVAL_QUERY"},
                {"content": "b c", "task_type": "RETRIEVAL_QUERY"},
            ],
            "parameters": {"outputDimensionality": 256},
        })
    );
    let plain = EmbedRequest {
        input: vec!["x".into()],
        ..EmbedRequest::default()
    };
    assert_eq!(
        super::convert::vertex_embed_body(&plain),
        json!({"instances": [{"content": "x"}]})
    );
}

// ---- request encoding ----

fn encode_for(req: &ChatRequest, vertex: bool) -> Result<Value, Error> {
    encode_request(req, &EncodeOptions { vertex }).map(|r| serde_json::to_value(r).unwrap())
}

fn encode(req: &ChatRequest) -> Result<Value, Error> {
    encode_for(req, false)
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

fn call(id: &str, name: &str, arguments: &str) -> ContentPart {
    ContentPart::ToolCall(ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    })
}

fn signed(signature: &str) -> ContentPart {
    ContentPart::Reasoning {
        text: "thinking".into(),
        signature: Some(signature.into()),
    }
}

#[test]
fn encodes_system_history_tools_and_thinking() {
    let mut extra = Map::new();
    extra.insert(
        "safetySettings".into(),
        json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]),
    );
    extra.insert("labels".into(), json!({"team": "search"}));
    extra.insert("logit_bias".into(), json!({"50256": -100}));
    let lookup_schema = json!({
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
        "additionalProperties": false,
    });
    let answer_schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let req = ChatRequest {
        model: "route".into(),
        messages: vec![
            msg(
                Role::System,
                vec![
                    text("You are terse."),
                    ContentPart::CacheBreakpoint(CacheControl::default()),
                ],
            ),
            msg(Role::Developer, vec![text("Answer in French.")]),
            msg(
                Role::User,
                vec![
                    text("What is in these?"),
                    ContentPart::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBORw0KGgo=".into(),
                        },
                        detail: Some("high".into()),
                    },
                    ContentPart::Image {
                        source: ImageSource::Url("gs://bucket/cat.JPG".into()),
                        detail: None,
                    },
                    ContentPart::Document {
                        data: Some("data:application/pdf;base64,JVBERi0=".into()),
                        file_id: None,
                        filename: Some("report.pdf".into()),
                    },
                    ContentPart::CacheBreakpoint(CacheControl::default()),
                ],
            ),
            msg(
                Role::Assistant,
                vec![
                    signed("sig-1"),
                    call("call_0", "lookup", r#"{"q":"cat"}"#),
                    call("call_1", "now", ""),
                ],
            ),
            msg(
                Role::Tool,
                vec![ContentPart::ToolResult {
                    call_id: "call_0".into(),
                    content: r#"{"answer":"a cat"}"#.into(),
                    is_error: false,
                }],
            ),
            msg(
                Role::Tool,
                vec![ContentPart::ToolResult {
                    call_id: "call_1".into(),
                    content: "timeout".into(),
                    is_error: true,
                }],
            ),
            msg(Role::User, vec![text("Thanks.")]),
            // A streamed Gemini answer's order: the text, then its signature.
            msg(
                Role::Assistant,
                vec![
                    text("De rien."),
                    ContentPart::Reasoning {
                        text: String::new(),
                        signature: Some("sig-2".into()),
                    },
                ],
            ),
            // Unsigned reasoning (another vendor's) is left out, so this turn is empty and is
            // not sent.
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
                parameters: Some(lookup_schema.clone()),
                strict: Some(true),
                cache: None,
            },
            Tool {
                name: "now".into(),
                description: None,
                parameters: Some(json!({})),
                strict: None,
                cache: Some(CacheControl::default()),
            },
        ],
        tool_choice: Some(ToolChoice::Tool("lookup".into())),
        parallel_tool_calls: Some(false),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: Some(answer_schema.clone()),
            strict: Some(true),
            description: None,
        }),
        max_output_tokens: Some(1000),
        temperature: Some(0.5),
        top_p: Some(0.9),
        top_k: Some(40),
        stop: vec!["END".into()],
        seed: Some(7),
        stream: true,
        reasoning: Some(Reasoning {
            effort: Some("high".into()),
            budget_tokens: Some(2048),
        }),
        user: Some("user-42".into()),
        extra,
        ..ChatRequest::default()
    };
    let expected = json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Answer in French."}]},
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in these?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.JPG"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "lookup", "args": {"q": "cat"}}, "thoughtSignature": "sig-1"},
                {"functionCall": {"name": "now"}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "lookup", "response": {"output": {"answer": "a cat"}}}},
                {"functionResponse": {"name": "now", "response": {"error": "timeout"}}},
                {"text": "Thanks."},
            ]},
            {"role": "model", "parts": [{"text": "De rien.", "thoughtSignature": "sig-2"}]},
            {"role": "user", "parts": [{"text": "And now?"}]},
        ],
        "tools": [{"functionDeclarations": [
            {"name": "lookup", "description": "Look a word up", "parametersJsonSchema": lookup_schema},
            {"name": "now"},
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}},
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "topK": 40,
            "maxOutputTokens": 1000,
            "stopSequences": ["END"],
            "seed": 7,
            "responseMimeType": "application/json",
            "responseJsonSchema": answer_schema,
            "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true},
        },
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    });
    assert_eq!(encode(&req).unwrap(), expected);
    // Vertex also takes billing labels.
    let vertex = encode_for(&req, true).unwrap();
    assert_eq!(vertex["labels"], json!({"team": "search"}));
    assert_eq!(vertex["contents"], expected["contents"]);
}

#[test]
fn defaults_and_plain_fields() {
    assert_eq!(
        encode(&user("hi")).unwrap(),
        json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    );
    let mut req = user("hi");
    req.seed = Some(i64::from(i32::MAX) + 2);
    req.response_format = Some(ResponseFormat::JsonObject);
    let body = encode(&req).unwrap();
    assert_eq!(
        body["generationConfig"],
        json!({"seed": i32::MIN + 1, "responseMimeType": "application/json"})
    );
    req.response_format = Some(ResponseFormat::Text);
    req.seed = None;
    assert!(encode(&req).unwrap().get("generationConfig").is_none());
}

#[test]
fn thought_signatures_go_back_on_their_parts() {
    let history = |parts: Vec<ContentPart>| ChatRequest {
        messages: vec![
            msg(Role::User, vec![text("q")]),
            msg(Role::Assistant, parts),
        ],
        ..ChatRequest::default()
    };
    let model_parts =
        |parts: Vec<ContentPart>| encode(&history(parts)).unwrap()["contents"][1]["parts"].clone();
    // Calls without any signature (another vendor's history, or an OpenAI client's): the first
    // gets Google's placeholder, which Gemini 3 requires at least.
    assert_eq!(
        model_parts(vec![call("a", "f", "{}"), call("b", "g", r#"{"x":1}"#)]),
        json!([
            {"functionCall": {"name": "f"}, "thoughtSignature": PLACEHOLDER_SIGNATURE},
            {"functionCall": {"name": "g", "args": {"x": 1}}},
        ])
    );
    // A signature before a text goes on the text; the later unsigned call still gets the
    // placeholder, since no call of the turn is signed.
    assert_eq!(
        model_parts(vec![signed("s1"), text("Let me look."), call("a", "f", "")]),
        json!([
            {"text": "Let me look.", "thoughtSignature": "s1"},
            {"functionCall": {"name": "f"}, "thoughtSignature": PLACEHOLDER_SIGNATURE},
        ])
    );
    // The stream order (text, the text's signature, the call's signature, the call) puts each
    // signature back where Gemini put it.
    assert_eq!(
        model_parts(vec![
            text("a"),
            signed("s1"),
            signed("s2"),
            call("c", "f", "")
        ]),
        json!([
            {"text": "a", "thoughtSignature": "s1"},
            {"functionCall": {"name": "f"}, "thoughtSignature": "s2"},
        ])
    );
    // A signature at the end of a turn belongs to the part before it; an empty turn carries none.
    assert_eq!(
        model_parts(vec![call("c", "f", ""), signed("s3")]),
        json!([{"functionCall": {"name": "f"}, "thoughtSignature": "s3"}])
    );
    let body = encode(&history(vec![signed("s4")])).unwrap();
    assert_eq!(body["contents"].as_array().map(Vec::len), Some(1));
}

#[test]
fn tool_results_need_their_call() {
    let req = ChatRequest {
        messages: vec![
            msg(Role::Assistant, vec![call("call_0", "weather", "{}")]),
            msg(
                Role::Tool,
                vec![ContentPart::ToolResult {
                    call_id: "call_0".into(),
                    content: "sunny".into(),
                    is_error: false,
                }],
            ),
            // Ids repeat across turns (each response numbers its calls from 0): the nearest
            // earlier call is the one answered.
            msg(Role::Assistant, vec![call("call_0", "time", "{}")]),
            msg(
                Role::Tool,
                vec![ContentPart::ToolResult {
                    call_id: "call_0".into(),
                    content: "[1, 2]".into(),
                    is_error: false,
                }],
            ),
        ],
        ..ChatRequest::default()
    };
    let body = encode(&req).unwrap();
    assert_eq!(
        body["contents"][1]["parts"][0],
        json!({"functionResponse": {"name": "weather", "response": {"output": "sunny"}}})
    );
    assert_eq!(
        body["contents"][3]["parts"][0],
        json!({"functionResponse": {"name": "time", "response": {"output": [1, 2]}}})
    );
    let orphan = ChatRequest {
        messages: vec![msg(
            Role::Tool,
            vec![ContentPart::ToolResult {
                call_id: "call_9".into(),
                content: "x".into(),
                is_error: false,
            }],
        )],
        ..ChatRequest::default()
    };
    let e = encode(&orphan).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert_eq!(e.side, Side::Client);
    assert!(e.message.contains("call_9"), "{}", e.message);
}

#[test]
fn tool_choice_mapping() {
    let tool = Tool {
        name: "f".into(),
        description: Some(String::new()),
        parameters: Some(json!({"properties": {"a": {"type": "integer"}}})),
        strict: None,
        cache: None,
    };
    let with = |choice: Option<ToolChoice>, tools: bool| {
        let mut req = user("hi");
        if tools {
            req.tools = vec![tool.clone()];
        }
        req.tool_choice = choice;
        encode(&req).unwrap()
    };
    let mode = |v: Value| v["toolConfig"]["functionCallingConfig"].clone();
    assert_eq!(
        mode(with(Some(ToolChoice::Auto), true)),
        json!({"mode": "AUTO"})
    );
    assert_eq!(
        mode(with(Some(ToolChoice::Required), true)),
        json!({"mode": "ANY"})
    );
    assert_eq!(
        mode(with(Some(ToolChoice::None), true)),
        json!({"mode": "NONE"})
    );
    assert!(with(None, true).get("toolConfig").is_none());
    assert!(
        with(Some(ToolChoice::Auto), false)
            .get("toolConfig")
            .is_none()
    );
    assert!(
        with(Some(ToolChoice::None), false)
            .get("toolConfig")
            .is_none()
    );
    // A schema without a type is completed; an empty description is left out.
    assert_eq!(
        with(None, true)["tools"][0]["functionDeclarations"][0],
        json!({"name": "f", "parametersJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
    );
}

#[test]
fn reasoning_becomes_a_thinking_budget() {
    let with = |effort: Option<&str>, budget: Option<u32>| {
        let mut req = user("hi");
        req.reasoning = Some(Reasoning {
            effort: effort.map(str::to_owned),
            budget_tokens: budget,
        });
        encode(&req).map(|b| b["generationConfig"]["thinkingConfig"].clone())
    };
    for (effort, budget) in [
        ("minimal", 1024),
        ("low", 1024),
        ("medium", 8192),
        ("high", 24576),
        ("xhigh", 24576),
    ] {
        assert_eq!(
            with(Some(effort), None).unwrap(),
            json!({"thinkingBudget": budget, "includeThoughts": true}),
            "{effort}"
        );
    }
    assert_eq!(
        with(Some("none"), None).unwrap(),
        json!({"thinkingBudget": 0, "includeThoughts": false})
    );
    assert_eq!(
        with(None, Some(0)).unwrap(),
        json!({"thinkingBudget": 0, "includeThoughts": false})
    );
    // Reasoning asked for without a size: the model decides.
    assert_eq!(
        with(None, None).unwrap(),
        json!({"thinkingBudget": -1, "includeThoughts": true})
    );
    let e = with(Some("turbo"), None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("turbo"), "{}", e.message);
}

#[test]
fn refuses_what_gemini_cannot_take() {
    let turn = |role: Role, part: ContentPart| ChatRequest {
        messages: vec![msg(role, vec![part])],
        ..ChatRequest::default()
    };
    let image = |url: &str| ContentPart::Image {
        source: ImageSource::Url(url.into()),
        detail: None,
    };
    // URLs Gemini can fetch, with a type it can be told; data URLs travel inline.
    assert_eq!(
        encode(&turn(
            Role::User,
            image("https://example.com/a/cat.webp?v=2")
        ))
        .unwrap()["contents"][0]["parts"][0],
        json!({"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/a/cat.webp?v=2"}})
    );
    assert_eq!(
        encode(&turn(Role::User, image("data:image/gif;base64,R0lGOD=="))).unwrap()["contents"][0]
            ["parts"][0],
        json!({"inlineData": {"mimeType": "image/gif", "data": "R0lGOD=="}})
    );
    for bad in [
        "http://example.com/cat.png",
        "https://example.com/cat",
        "https://example.com/cat.gif",
        "ftp://example.com/cat.png",
    ] {
        let e = encode(&turn(Role::User, image(bad))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{bad}");
        assert_eq!(e.side, Side::Client);
    }
    let e = encode(&turn(Role::User, image("data:image/png,raw"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);

    let e = encode(&turn(
        Role::User,
        ContentPart::Opaque {
            family: "anthropic",
            value: json!({"type": "search_result"}),
        },
    ))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("anthropic"), "{}", e.message);

    let e = encode(&turn(
        Role::User,
        ContentPart::Document {
            data: None,
            file_id: Some("file-abc".into()),
            filename: None,
        },
    ))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("file-abc"), "{}", e.message);
    assert_eq!(
        encode(&turn(
            Role::User,
            ContentPart::Document {
                data: Some("JVBERi0=".into()),
                file_id: None,
                filename: None,
            },
        ))
        .unwrap()["contents"][0]["parts"][0],
        json!({"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}})
    );

    for args in ["{\"q\": ", "[1]"] {
        let e = encode(&turn(Role::Assistant, call("call_7", "lookup", args))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{args}");
        assert!(
            e.message.contains("call_7") && e.message.contains("lookup"),
            "{}",
            e.message
        );
    }
    let e = encode(&turn(Role::User, call("call_7", "lookup", "{}"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    let e = encode(&turn(Role::System, image("https://example.com/a.png"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);

    assert_eq!(image_mime_type("gs://b/x.JPEG#frag"), Some("image/jpeg"));
    assert_eq!(image_mime_type("https://example.com/png"), None);
    assert_eq!(
        image_mime_type("https://example.com/a.heif"),
        Some("image/heif")
    );
}

// ---- errors ----

fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, http::HeaderValue::from_static(v));
    }
    h
}

fn google_error(code: u16, status: &str, message: &str, details: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "error": {"code": code, "message": message, "status": status, "details": details},
    }))
    .unwrap()
}

#[test]
fn recorded_429_waits_as_retry_info_says() {
    let body = read("google/google-429-retry-info.json");
    let e = error::from_response(429, &headers(&[]), body.as_bytes(), &[]);
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.side, Side::Upstream);
    assert_eq!(e.upstream_status, Some(429));
    // "34.4s", read exactly.
    assert_eq!(e.retry, Retry::After(Duration::new(34, 400_000_000)));
    assert_eq!(
        e.message,
        "You exceeded your current quota, please check your plan."
    );
}

#[test]
fn error_classes_by_status_name() {
    let key_invalid = json!([{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }]);
    let cases: [(u16, &str, &str, Value, ErrorKind); 11] = [
        (
            400,
            "INVALID_ARGUMENT",
            "The input token count (1250000) exceeds the maximum number of tokens allowed (1048576).",
            json!([]),
            ErrorKind::ContextWindowExceeded,
        ),
        (
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unknown name \"foo\": Cannot find field.",
            json!([]),
            ErrorKind::BadRequest,
        ),
        (
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            key_invalid,
            ErrorKind::Auth,
        ),
        (
            400,
            "FAILED_PRECONDITION",
            "User location is not supported for the API use.",
            json!([]),
            ErrorKind::PermissionDenied,
        ),
        (
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            json!([]),
            ErrorKind::Auth,
        ),
        (
            403,
            "PERMISSION_DENIED",
            "Permission denied on resource project my-project.",
            json!([]),
            ErrorKind::PermissionDenied,
        ),
        (
            404,
            "NOT_FOUND",
            "models/gemini-9 is not found for API version v1beta, or is not supported for generateContent.",
            json!([]),
            ErrorKind::NotFound,
        ),
        (
            429,
            "RESOURCE_EXHAUSTED",
            "Resource exhausted. Please try again later.",
            json!([]),
            ErrorKind::RateLimited,
        ),
        (
            500,
            "INTERNAL",
            "An internal error has occurred.",
            json!([]),
            ErrorKind::Server,
        ),
        (
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            json!([]),
            ErrorKind::Overloaded,
        ),
        (
            504,
            "DEADLINE_EXCEEDED",
            "Deadline exceeded",
            json!([]),
            ErrorKind::Timeout,
        ),
    ];
    for (status, name, message, details, expected) in cases {
        let e = error::from_response(
            status,
            &headers(&[]),
            &google_error(status, name, message, details),
            &[],
        );
        assert_eq!(e.kind, expected, "{status} {name}");
        assert_eq!(e.message, message);
        assert_eq!(e.upstream_status, Some(status));
        assert_eq!(e.side, Side::Upstream);
    }
    let overloaded = error::from_response(
        503,
        &headers(&[]),
        &google_error(503, "UNAVAILABLE", "overloaded", json!([])),
        &[],
    );
    assert_eq!(overloaded.retry, Retry::Yes);
    assert!(
        !error::from_response(
            400,
            &headers(&[]),
            &google_error(400, "INVALID_ARGUMENT", "x", json!([])),
            &[]
        )
        .is_retryable()
    );

    // RetryInfo decides the wait; a `retry-after` header is the fallback.
    let retry_info = |delay: &str| json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]);
    let e = error::from_response(
        429,
        &headers(&[("retry-after", "9")]),
        &google_error(429, "RESOURCE_EXHAUSTED", "slow down", retry_info("1.5s")),
        &[],
    );
    assert_eq!(e.retry, Retry::After(Duration::from_millis(1500)));
    let e = error::from_response(
        429,
        &headers(&[]),
        &google_error(429, "RESOURCE_EXHAUSTED", "slow down", retry_info("7s")),
        &[],
    );
    assert_eq!(e.retry, Retry::After(Duration::from_secs(7)));
    let e = error::from_response(
        429,
        &headers(&[("retry-after", "3")]),
        &google_error(429, "RESOURCE_EXHAUSTED", "slow down", json!([])),
        &[],
    );
    assert_eq!(e.retry, Retry::After(Duration::from_secs(3)));
    let e = error::from_response(
        429,
        &headers(&[]),
        &google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "slow down",
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": {"seconds": "4", "nanos": 250000000}}]),
        ),
        &[],
    );
    assert_eq!(e.retry, Retry::After(Duration::from_millis(4250)));

    // The body of `streamGenerateContent` without `alt=sse` is an array.
    let mut array = b"[".to_vec();
    array.extend(google_error(404, "NOT_FOUND", "no such model", json!([])));
    array.push(b']');
    let e = error::from_response(404, &headers(&[]), &array, &[]);
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(e.message, "no such model");

    // Not Google's shape (a proxy's page, an empty body): the HTTP status decides.
    let e = error::from_response(502, &headers(&[]), b"<html>Bad gateway</html>", &[]);
    assert_eq!(e.kind, ErrorKind::Server);
    assert!(e.message.contains("Bad gateway"), "{}", e.message);
    let e = error::from_response(503, &headers(&[]), b"", &[]);
    assert_eq!(e.kind, ErrorKind::Overloaded);
    assert_eq!(e.message, "upstream answered HTTP 503");
}

#[test]
fn retry_delays_parse_exactly() {
    let d = error::parse_duration;
    assert_eq!(d("7s"), Some(Duration::from_secs(7)));
    assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(d("34.4s"), Some(Duration::new(34, 400_000_000)));
    assert_eq!(d("0.000000001s"), Some(Duration::from_nanos(1)));
    assert_eq!(d("0.1234567899s"), Some(Duration::new(0, 123_456_789)));
    assert_eq!(d(".5s"), Some(Duration::from_millis(500)));
    assert_eq!(
        d("99999999999999999999999s"),
        Some(Duration::from_secs(86_400))
    );
    for bad in ["", "s", ".s", "7", "-1s", "1e3s", "NaNs", "1.2.3s", "7 s"] {
        assert_eq!(d(bad), None, "{bad}");
    }
}

#[test]
fn secrets_are_redacted() {
    let key = Secret::new("AIzaSyA-0123456789abcdefghijklmnopqrs");
    let e = error::from_response(
        400,
        &headers(&[]),
        &google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid: AIzaSyA-0123456789abcdefghijklmnopqrs",
            json!([]),
        ),
        &[&key],
    );
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.message.contains("0123456789"), "{}", e.message);
}

// ---- Vertex AI credentials ----

/// The JWT for the test key at 2023-11-14T22:13:20Z, computed with openssl (`dgst -sha256
/// -sign`): RS256 (PKCS#1 v1.5) signatures are deterministic, so ours must match it byte for
/// byte.
const KNOWN_JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjExMzYwNTg2NzllMjkxN2FiMmM2MjAwMGYzZDI1ZjRiMDhjZTNjNWYifQ.eyJpc3MiOiJyZWxhaXMtdGVzdEByZWxhaXMtdGVzdC5pYW0uZ3NlcnZpY2VhY2NvdW50LmNvbSIsInNjb3BlIjoiaHR0cHM6Ly93d3cuZ29vZ2xlYXBpcy5jb20vYXV0aC9jbG91ZC1wbGF0Zm9ybSIsImF1ZCI6Imh0dHBzOi8vb2F1dGgyLmdvb2dsZWFwaXMuY29tL3Rva2VuIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9.Y1-iuQpqsjuiFi6gAdMDKgJAifqBrnHVXosrfu8Ur9X8vJ543wBVdB4oS5jDN6N66LHieScCans2zdM5phhQyPetS_oyRyop9Y7pT64K46tsLapg94ZhIpj6eEvbm1hK7pWMMap99NR6lN6LVvNOS-ybFgewJ8JaXHwP8oeY1qncimNVgwbJ8AtmJ0BVa4XsH4IBVuBC9V352FLPHYwYwet_rPioKeoxMpXo6hrXf0gpnOqFHjk_9Bqe81G0EmReLtQRQ9JTYglA-uzI8MvU_mXZsRKOJ67hmRaCkt43SjGKwghjEYShj_IhZ5QrZKktou2VQmXtxAcSP5clNux9Bg";

/// Check a JWT's RS256 signature with the test key's public half; its claims.
fn verified_claims(account: &ServiceAccount, jwt: &str) -> Value {
    let (signed, signature) = jwt.rsplit_once('.').unwrap();
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        account.public_key_der(),
    );
    public
        .verify(signed.as_bytes(), &auth::b64_decode(signature).unwrap())
        .unwrap();
    let claims = signed.split('.').nth(1).unwrap();
    serde_json::from_slice(&auth::b64_decode(claims).unwrap()).unwrap()
}

#[test]
fn jwt_is_signed_with_the_key() {
    let account = ServiceAccount::from_json(TEST_KEY).unwrap();
    assert_eq!(account.project_id.as_deref(), Some("relais-test"));
    let jwt = account.assertion(1_700_000_000).unwrap();
    assert_eq!(jwt, KNOWN_JWT);
    let header = jwt.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&auth::b64_decode(header).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "JWT", "kid": "1136058679e2917ab2c62000f3d25f4b08ce3c5f"})
    );
    assert_eq!(
        verified_claims(&account, &jwt),
        json!({
            "iss": "relais-test@relais-test.iam.gserviceaccount.com",
            "scope": auth::SCOPE,
            "aud": "https://oauth2.googleapis.com/token",
            "iat": 1_700_000_000u64,
            "exp": 1_700_003_600u64,
        })
    );
    // A changed claim does not verify.
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        account.public_key_der(),
    );
    let (signed, signature) = jwt.rsplit_once('.').unwrap();
    let forged = signed.replacen('e', "f", 1);
    assert!(
        public
            .verify(forged.as_bytes(), &auth::b64_decode(signature).unwrap())
            .is_err()
    );
}

#[test]
fn base64_and_pem() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(auth::b64url_encode(plain.as_bytes()), encoded);
        assert_eq!(auth::b64_decode(encoded).unwrap(), plain.as_bytes());
    }
    // Either alphabet, padding or not, wrapped lines.
    assert_eq!(auth::b64url_encode(&[0xfb_u8, 0xff]), "-_8");
    assert_eq!(auth::b64_decode("+/8=").unwrap(), [0xfb_u8, 0xff]);
    assert_eq!(auth::b64_decode("-_8").unwrap(), [0xfb_u8, 0xff]);
    assert_eq!(auth::b64_decode("Zm9v\r\nYmFy\n").unwrap(), b"foobar");
    for bad in ["Z", "Zm9vY", "Zm9v!", "Zg=a", "Zg==Zg"] {
        assert!(auth::b64_decode(bad).is_none(), "{bad}");
    }
    let mut seed = 5u64;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 33) as u8
            })
            .collect();
        let encoded = auth::b64url_encode(&bytes);
        assert!(!encoded.contains(['+', '/', '=']), "{encoded}");
        assert_eq!(auth::b64_decode(&encoded).unwrap(), bytes);
    }

    let key: Value = serde_json::from_str(TEST_KEY).unwrap();
    let (label, der) = auth::pem_decode(key["private_key"].as_str().unwrap()).unwrap();
    assert_eq!(label, "PRIVATE KEY");
    // PKCS#8: a DER SEQUENCE.
    assert_eq!(der.first(), Some(&0x30));
    assert!(auth::pem_decode("no pem here").is_none());
    assert!(auth::pem_decode("-----BEGIN X-----\nZm9v\n-----END Y-----").is_none());
}

#[test]
fn bad_keys_are_refused_without_quoting_them() {
    let with = |patch: Value| {
        let mut key: Value = serde_json::from_str(TEST_KEY).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            key[k] = v.clone();
        }
        ServiceAccount::from_json(&key.to_string()).err().unwrap()
    };
    let e = with(json!({"type": "authorized_user"}));
    assert!(e.contains("authorized_user"), "{e}");
    let e = with(json!({"client_email": null}));
    assert!(e.contains("client_email"), "{e}");
    let e = with(json!({"private_key": null}));
    assert!(e.contains("private_key"), "{e}");
    let e = with(json!({"token_uri": "file:///etc/passwd"}));
    assert!(e.contains("token_uri"), "{e}");
    let e = with(
        json!({"private_key": "-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n-----END PRIVATE KEY-----\n"}),
    );
    assert!(e.contains("not a usable RSA key"), "{e}");
    assert!(!e.contains("SECRETSTUFF"), "{e}");
    let e = with(
        json!({"private_key": "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"}),
    );
    assert!(e.contains("EC PRIVATE KEY"), "{e}");
    let e = ServiceAccount::from_json("{\"private_key\": \"-----BEGIN")
        .err()
        .unwrap();
    assert!(e.contains("invalid JSON at line 1"), "{e}");
    assert!(!e.contains("BEGIN"), "{e}");
}

/// A token endpoint and Vertex model on loopback, plain HTTP/1.1, one request per connection.
/// `/token` answers with `ya29.test-{n}` (n counting the exchanges) after `delay`, or with an
/// OAuth error when `refuse` is set; anything else answers a Gemini response whose text is the
/// request's path and `authorization` header.
struct FakeGoogle {
    url: String,
    exchanges: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_google(expires_in: u64, delay: Duration, refuse: bool) -> FakeGoogle {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let exchanges = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (exchanges.clone(), bodies.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let (count, seen) = (count.clone(), seen.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut tcp).await else {
                    return;
                };
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let (status, reply) = if path == "/token" {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.lock().unwrap().push(body);
                    tokio::time::sleep(delay).await;
                    if refuse {
                        (
                            "400 Bad Request",
                            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
                                .to_string(),
                        )
                    } else {
                        (
                            "200 OK",
                            json!({"access_token": format!("ya29.test-{n}"), "expires_in": expires_in, "token_type": "Bearer"})
                                .to_string(),
                        )
                    }
                } else {
                    let auth = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("authorization")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    (
                        "200 OK",
                        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": format!("{path} | {auth}")}]}, "finishReason": "STOP"}]})
                            .to_string(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    FakeGoogle {
        url,
        exchanges,
        bodies,
        task,
    }
}

/// One HTTP/1.1 request: its head and its body (by `content-length`).
async fn read_request(tcp: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                if k.eq_ignore_ascii_case("content-length") {
                    v.trim().parse::<usize>().ok()
                } else {
                    None
                }
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
        return Some((head, body));
    }
}

fn client() -> reqwest::Client {
    crate::shared_client(&crate::HttpSettings::default()).unwrap()
}

fn account_for(google: &FakeGoogle) -> ServiceAccount {
    let mut account = ServiceAccount::from_json(TEST_KEY).unwrap();
    account.token_uri = format!("{}/token", google.url);
    account
}

#[tokio::test]
async fn token_is_fetched_once_and_reused() {
    let google = fake_google(3600, Duration::ZERO, false).await;
    let source = TokenSource::new(account_for(&google), client());
    for _ in 0..3 {
        assert_eq!(source.token().await.unwrap().expose(), "ya29.test-1");
    }
    assert_eq!(google.exchanges.load(Ordering::SeqCst), 1);
    // Cached until a minute before the hour is up.
    let refresh_at = source.refresh_at().unwrap();
    let now = tokio::time::Instant::now();
    assert!(refresh_at > now + Duration::from_secs(3500));
    assert!(refresh_at <= now + Duration::from_secs(3600) - auth::REFRESH_MARGIN);
    // A refused token is dropped; the next request gets a new one.
    source.invalidate();
    assert_eq!(source.token().await.unwrap().expose(), "ya29.test-2");
    assert_eq!(google.exchanges.load(Ordering::SeqCst), 2);

    // The exchange is RFC 7523's form, with a JWT the key signed for this token endpoint.
    let body = google.bodies.lock().unwrap()[0].clone();
    let assertion = body
        .strip_prefix("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=")
        .unwrap();
    let claims = verified_claims(source.account(), assertion);
    assert_eq!(claims["aud"], format!("{}/token", google.url));
    assert_eq!(
        claims["iss"],
        "relais-test@relais-test.iam.gserviceaccount.com"
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
}

#[tokio::test]
async fn expired_token_is_refreshed() {
    // A token that lives less than the refresh margin is stale at once: every request fetches.
    let google = fake_google(30, Duration::ZERO, false).await;
    let source = TokenSource::new(account_for(&google), client());
    assert_eq!(source.token().await.unwrap().expose(), "ya29.test-1");
    assert_eq!(source.token().await.unwrap().expose(), "ya29.test-2");
    assert_eq!(google.exchanges.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let google = fake_google(3600, Duration::from_millis(200), false).await;
    let source = TokenSource::new(account_for(&google), client());
    let tokens = futures_util::future::join_all((0..8).map(|_| source.token())).await;
    for t in tokens {
        assert_eq!(t.unwrap().expose(), "ya29.test-1");
    }
    assert_eq!(google.exchanges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_exchange_is_an_upstream_auth_error() {
    let google = fake_google(3600, Duration::ZERO, true).await;
    let source = TokenSource::new(account_for(&google), client());
    let e = source.token().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.side, Side::Upstream);
    assert!(!e.is_retryable());
    assert!(e.message.contains("invalid_grant"), "{}", e.message);
    assert!(
        e.message.contains("Invalid JWT Signature."),
        "{}",
        e.message
    );
    // Nothing cached: the next call tries again.
    assert!(source.token().await.is_err());
    assert_eq!(google.exchanges.load(Ordering::SeqCst), 2);

    // The assertion never shows in a message, even when the endpoint echoes it.
    let jwt = Secret::new("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl");
    let e = auth::exchange_error(
        400,
        format!(
            r#"{{"error":"invalid_grant","error_description":"bad {}"}}"#,
            jwt.expose()
        )
        .as_bytes(),
        &[&jwt],
    );
    assert!(!e.message.contains(jwt.expose()), "{}", e.message);
    assert_eq!(auth::exchange_error(503, b"", &[]).kind, ErrorKind::Server);
    assert_eq!(
        auth::exchange_error(429, b"", &[]).kind,
        ErrorKind::RateLimited
    );
    assert_eq!(auth::exchange_error(403, b"", &[]).kind, ErrorKind::Auth);
}

#[tokio::test]
async fn unreachable_token_endpoint_is_a_connect_error() {
    let mut account = ServiceAccount::from_json(TEST_KEY).unwrap();
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    account.token_uri = format!("http://{}/token", listener.local_addr().unwrap());
    drop(listener);
    let source = TokenSource::new(account, client());
    let e = source.token().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Connect);
    assert!(e.is_retryable());
    assert!(
        e.message.starts_with("Vertex AI token exchange"),
        "{}",
        e.message
    );
}

// ---- config, addressing and the HTTP request ----

fn gemini_config(value: Value) -> Result<GeminiConfig, serde_json::Error> {
    serde_json::from_value(value)
}

fn vertex_config(value: Value) -> Result<VertexConfig, serde_json::Error> {
    serde_json::from_value(value)
}

fn studio(value: Value) -> Gemini {
    match Gemini::studio(&gemini_config(value).unwrap(), client()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn vertex(value: Value) -> Gemini {
    match Gemini::vertex(&vertex_config(value).unwrap(), client()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn studio_urls_and_request() {
    let p = studio(json!({"api_key": "AIza-test-key"}));
    assert_eq!(p.kind, "gemini");
    assert_eq!(
        p.url("gemini-2.5-flash", "generateContent"),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        p.url("models/gemini-2.5-flash", "streamGenerateContent?alt=sse"),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        p.url("gemini-embedding-001", "batchEmbedContents"),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    let p = studio(json!({
        "api_key": "AIza-test-key",
        "base_url": "https://proxy.example/gemini/",
        "headers": {"x-goog-user-project": "billing-project"},
    }));
    assert_eq!(
        p.url("gemini-2.5-pro", "generateContent"),
        "https://proxy.example/gemini/v1beta/models/gemini-2.5-pro:generateContent"
    );
    let req = p
        .request(
            &p.url("gemini-2.5-pro", "generateContent"),
            b"{}".to_vec(),
            None,
        )
        .build()
        .unwrap();
    assert_eq!(req.method(), &http::Method::POST);
    let h = req.headers();
    assert_eq!(h["x-goog-api-key"], "AIza-test-key");
    assert_eq!(h["x-goog-user-project"], "billing-project");
    assert_eq!(h["content-type"], "application/json");
    assert!(h.get("authorization").is_none());

    assert_eq!(model_segment("a/b c?d"), "a%2Fb%20c%3Fd");
    assert_eq!(model_segment("claude-3@20240229"), "claude-3@20240229");
}

#[test]
fn vertex_urls_and_request() {
    let key: Value = serde_json::from_str(TEST_KEY).unwrap();
    let p = vertex(json!({"location": "us-central1", "credentials": TEST_KEY}));
    assert_eq!(p.kind, "vertex");
    // The project comes from the key.
    assert_eq!(
        p.url("gemini-2.5-flash", "streamGenerateContent?alt=sse"),
        "https://us-central1-aiplatform.googleapis.com/v1/projects/relais-test/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        p.url("text-embedding-005", "predict"),
        "https://us-central1-aiplatform.googleapis.com/v1/projects/relais-test/locations/us-central1/publishers/google/models/text-embedding-005:predict"
    );
    let p = vertex(
        json!({"location": "global", "project": "other-project", "credentials": key.to_string()}),
    );
    assert_eq!(
        p.url("gemini-3-pro-preview", "generateContent"),
        "https://aiplatform.googleapis.com/v1/projects/other-project/locations/global/publishers/google/models/gemini-3-pro-preview:generateContent"
    );
    let token = Secret::new("ya29.token");
    let req = p
        .request(&p.url("m", "generateContent"), b"{}".to_vec(), Some(&token))
        .build()
        .unwrap();
    assert_eq!(req.headers()["authorization"], "Bearer ya29.token");
    assert!(req.headers().get("x-goog-api-key").is_none());
}

#[test]
fn config_is_validated() {
    assert!(gemini_config(json!({"api_key": "k", "api_version": "x"})).is_err());
    assert!(gemini_config(json!({"base_url": "https://x"})).is_err());
    assert!(
        vertex_config(json!({"credentials": "{}"})).is_err(),
        "location is required"
    );

    let studio_err = |v: Value| {
        Gemini::studio(&gemini_config(v).unwrap(), client())
            .err()
            .unwrap()
    };
    let e = studio_err(json!({"api_key": "k", "base_url": "ftp://x"}));
    assert!(e.starts_with("base_url:"), "{e}");
    let e = studio_err(
        json!({"api_key": "k", "base_url": "https://generativelanguage.googleapis.com/v1beta"}),
    );
    assert!(e.starts_with("base_url:"), "{e}");
    let e = studio_err(json!({"api_key": ""}));
    assert!(e.starts_with("api_key:"), "{e}");
    let e = studio_err(json!({"api_key": "k", "headers": {"X-Goog-Api-Key": "other"}}));
    assert!(e.contains("api_key"), "{e}");

    let vertex_err = |v: Value| {
        Gemini::vertex(&vertex_config(v).unwrap(), client())
            .err()
            .unwrap()
    };
    let e = vertex_err(json!({"location": "us-central1"}));
    assert!(e.starts_with("credentials_file:"), "{e}");
    let e = vertex_err(
        json!({"location": "us-central1", "credentials": TEST_KEY, "credentials_file": "/x"}),
    );
    assert!(e.starts_with("credentials_file:"), "{e}");
    let e = vertex_err(
        json!({"location": "us-central1", "credentials_file": "/nonexistent/relais-key.json"}),
    );
    assert!(e.starts_with("credentials_file: cannot read"), "{e}");
    let e = vertex_err(json!({"location": "us-central1", "credentials": "not json"}));
    assert!(
        e.starts_with("credentials: is not a service account key"),
        "{e}"
    );
    let e = vertex_err(json!({"location": "us/central", "credentials": TEST_KEY}));
    assert!(e.starts_with("location:"), "{e}");
    let e =
        vertex_err(json!({"location": "us-central1", "project": "a/b", "credentials": TEST_KEY}));
    assert!(e.starts_with("project:"), "{e}");
    let mut no_project: Value = serde_json::from_str(TEST_KEY).unwrap();
    no_project["project_id"] = Value::Null;
    let e = vertex_err(json!({"location": "us-central1", "credentials": no_project.to_string()}));
    assert!(e.starts_with("project:"), "{e}");
    let e = vertex_err(
        json!({"location": "us-central1", "credentials": TEST_KEY, "base_url": "https://x/v1"}),
    );
    assert!(e.starts_with("base_url:"), "{e}");
    let e = vertex_err(
        json!({"location": "us-central1", "credentials": TEST_KEY, "headers": {"Authorization": "Bearer x"}}),
    );
    assert!(e.starts_with("headers:"), "{e}");

    // The key file, read from disk.
    let path = std::env::temp_dir().join(format!("relais-vertex-key-{}.json", std::process::id()));
    std::fs::write(&path, TEST_KEY).unwrap();
    let built = Gemini::vertex(
        &vertex_config(
            json!({"location": "europe-west4", "credentials_file": path.to_string_lossy()}),
        )
        .unwrap(),
        client(),
    );
    std::fs::remove_file(&path).unwrap();
    assert!(built.is_ok());
}

#[test]
fn registry_builds_both_types() {
    let cfg: crate::ProviderConfig = serde_json::from_value(json!({
        "type": "gemini",
        "api_key": "AIzaSyA-0123456789abcdef",
    }))
    .unwrap();
    assert_eq!(cfg.kind(), "gemini");
    let summary = cfg.summary();
    assert!(
        summary.contains("base_url=https://generativelanguage.googleapis.com"),
        "{summary}"
    );
    assert!(!summary.contains("0123456789"), "{summary}");
    assert!(crate::build_provider(&cfg, client()).is_ok());

    let cfg: crate::ProviderConfig = serde_json::from_value(json!({
        "type": "vertex",
        "location": "us-central1",
        "credentials": TEST_KEY,
    }))
    .unwrap();
    assert_eq!(cfg.kind(), "vertex");
    let summary = cfg.summary();
    assert!(
        summary.contains("base_url=https://us-central1-aiplatform.googleapis.com")
            && summary.contains("credentials=(inline)"),
        "{summary}"
    );
    assert!(!summary.contains("PRIVATE KEY"), "{summary}");
    let provider = crate::build_provider(&cfg, client()).unwrap();
    assert_eq!(provider.kind(), "vertex");
}

#[tokio::test]
async fn vertex_request_carries_the_token() {
    use futures_util::StreamExt;
    let google = fake_google(3600, Duration::ZERO, false).await;
    let mut key: Value = serde_json::from_str(TEST_KEY).unwrap();
    key["token_uri"] = json!(format!("{}/token", google.url));
    let p = vertex(json!({
        "location": "us-central1",
        "base_url": google.url,
        "credentials": key.to_string(),
    }));
    for _ in 0..2 {
        let mut stream = p.chat("gemini-2.5-flash", &user("hi")).await.unwrap();
        let mut c = Collector::new();
        while let Some(ev) = stream.next().await {
            c.push(&ev.unwrap()).unwrap();
        }
        let r = c.finish();
        assert_eq!(
            r.text,
            "/v1/projects/relais-test/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent | Bearer ya29.test-1"
        );
        assert_eq!(r.finish, Some(FinishReason::Stop));
    }
    // Two requests, one token.
    assert_eq!(google.exchanges.load(Ordering::SeqCst), 1);
}
