//! Conformance: every Bedrock recording in `shared/fixtures` decodes without loss, streamed
//! (through real event-stream framing, in any split) and whole; the request encoding matches
//! Converse's schema; signatures match botocore's; errors land in their classes.

use std::time::Duration;

use relais_core::{
    CacheControl, ChatRequest, ChatResponse, Collector, ContentPart, Error, ErrorKind,
    FinishReason, ImageSource, Message, Reasoning, ResponseFormat, Retry, Role, Secret, Side,
    StreamEvent, Tool, ToolCall, ToolChoice, Usage,
};
use serde_json::{Map, Value, json};

use super::convert::{EncodeOptions, encode_request};
use super::eventstream::{self, FrameDecoder};
use super::stream::EventDecoder;
use super::wire::BedrockStreamEvent;
use super::{Bedrock, BedrockConfig, decode_message, decode_whole, error, event_stream};
use crate::openai_compat::tests::fixture;

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

fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        reasoning_tokens: 0,
    })
}

/// A recording line `{"<eventType>": {...}}`: the event type and its payload as JSON text.
fn split_line(line: &str) -> (String, String) {
    let value: Value = serde_json::from_str(line).unwrap();
    let map = value.as_object().unwrap();
    assert_eq!(map.len(), 1, "{line}");
    let (kind, payload) = map.iter().next().unwrap();
    (kind.clone(), payload.to_string())
}

/// A recording as the bytes Bedrock sends: one event-stream message per line, with the headers
/// ConverseStream puts on each (`:event-type`, `:content-type`, `:message-type`).
fn as_frames(lines: &str) -> Vec<u8> {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| {
            let (kind, payload) = split_line(l);
            eventstream::event(&kind, payload.as_bytes())
        })
        .collect()
}

fn exception_frame(kind: &str, payload: &str) -> Vec<u8> {
    let mut headers = eventstream::string_header(":exception-type", kind);
    headers.extend(eventstream::string_header(
        ":content-type",
        "application/json",
    ));
    headers.extend(eventstream::string_header(":message-type", "exception"));
    eventstream::frame(&headers, payload.as_bytes())
}

/// Decode event-stream bytes arriving in `parts`, as the live stream does.
fn decode_bytes<P: AsRef<[u8]>>(parts: &[P]) -> Result<Vec<StreamEvent>, Error> {
    let mut frames = FrameDecoder::new();
    let mut decoder = EventDecoder::new();
    let mut messages = Vec::new();
    let mut out = Vec::new();
    for part in parts {
        frames
            .feed(part.as_ref(), &mut messages)
            .map_err(error::protocol)?;
        for message in messages.drain(..) {
            decode_message(&mut decoder, &message, &mut out)?;
        }
    }
    if frames.pending() > 0 || !decoder.finished() {
        return Err(error::protocol("stream ended early"));
    }
    Ok(out)
}

/// Decode a recording's JSON lines straight into the event decoder, without framing.
fn decode_lines(lines: &str) -> Result<Vec<StreamEvent>, Error> {
    let mut decoder = EventDecoder::new();
    let mut out = Vec::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let (kind, payload) = split_line(line);
        let event: BedrockStreamEvent =
            serde_json::from_str(&payload).map_err(|e| error::protocol(e.to_string()))?;
        decoder.decode(&kind, event, &mut out)?;
    }
    Ok(out)
}

/// A streamed recording, decoded through its binary framing; the framing-free path must agree.
fn streamed(name: &str) -> ChatResponse {
    let raw = read(&format!("bedrock/{name}"));
    let events = decode_bytes(&[&as_frames(&raw)]).unwrap();
    assert_eq!(events, decode_lines(&raw).unwrap(), "{name}");
    fold(&events)
}

fn whole(name: &str) -> ChatResponse {
    fold(&decode_whole(read(&format!("bedrock/{name}")).as_bytes()).unwrap())
}

/// A value of a whole-response recording, as an independent oracle.
fn recorded(name: &str) -> Value {
    serde_json::from_str(&read(&format!("bedrock/{name}"))).unwrap()
}

/// Text, reasoning, last signature and tool arguments of a streamed recording, computed straight
/// from its JSON, as an independent oracle.
fn oracle(name: &str) -> (String, String, Option<String>, String) {
    let (mut text, mut reasoning, mut signature, mut args) =
        (String::new(), String::new(), None, String::new());
    for line in read(&format!("bedrock/{name}")).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let delta = &v["contentBlockDelta"]["delta"];
        text.push_str(delta["text"].as_str().unwrap_or_default());
        reasoning.push_str(
            delta["reasoningContent"]["text"]
                .as_str()
                .unwrap_or_default(),
        );
        if let Some(s) = delta["reasoningContent"]["signature"].as_str() {
            signature = Some(s.to_owned());
        }
        args.push_str(delta["toolUse"]["input"].as_str().unwrap_or_default());
    }
    (text, reasoning, signature, args)
}

const CHUNK_RECORDINGS: [&str; 4] = [
    "amazon-bedrock-reasoning.chunks.txt",
    "amazon-bedrock-text.chunks.txt",
    "amazon-bedrock-tool-call.1.chunks.txt",
    "amazon-bedrock-tool-no-args.chunks.txt",
];

const WHOLE_RECORDINGS: [&str; 4] = [
    "amazon-bedrock-reasoning.json",
    "amazon-bedrock-text.json",
    "amazon-bedrock-tool-call.1.json",
    "amazon-bedrock-tool-no-args.json",
];

#[test]
fn every_bedrock_recording_is_covered() {
    // A new recording must get a test below (and a place in these lists).
    for entry in std::fs::read_dir(fixture("bedrock")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            CHUNK_RECORDINGS.contains(&name.as_str()) || WHOLE_RECORDINGS.contains(&name.as_str()),
            "no conformance test for bedrock/{name}"
        );
    }
}

#[test]
fn text_whole() {
    let r = whole("amazon-bedrock-text.json");
    assert_eq!(
        r.text,
        "Let me count the \"r\"s in \"strawberry\":\n\ns-t-**r**-a-w-b-e-**r**-**r**-y\n\nThere are **3** \"r\"s in \"strawberry.\""
    );
    assert_eq!(
        r.text,
        recorded("amazon-bedrock-text.json")["output"]["message"]["content"][0]["text"]
    );
    // Bedrock names neither a response id nor the model.
    assert_eq!(r.id, None);
    assert_eq!(r.model, None);
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(22, 57, 0, 0));
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.reasoning, "");
    assert_eq!(r.refusal, None);
}

#[test]
fn text_stream() {
    let r = streamed("amazon-bedrock-text.chunks.txt");
    let (text, reasoning, _, _) = oracle("amazon-bedrock-text.chunks.txt");
    assert_eq!(r.text, text);
    assert_eq!(
        r.text,
        "Let me count the \"r\"s in \"strawberry\":\n\ns-t-**r**-a-w-b-e-**r**-**r**-y\n\nThere are **3** r's in \"strawberry.\""
    );
    assert_eq!(reasoning, "");
    assert_eq!(r.reasoning, "");
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(22, 55, 0, 0));
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.id, None);
}

const STREAM_SIGNATURE: &str = "Ep0CCkgICxABGAIqQOWPB6/PmA5SW9jC6FvaNq3E+U9ev4FMWcFWuAho+VGLCtazKc5WDjQ5i0MuxsY0o5pKDSVWVKii8KJDusXH4eASDK7jyzuk8iij7fJNihoMxHO9haYzt48R36HVIjCb/EmIFrJLIXShqN6DN//T6vZBtO9qj1QhNWJa3CGm8VZoq80S2/Ok4U0aVaIDiZcqggHC2b8BHuv8BHZrmsR0wjU1ynansBGMdfjnG+iIv8R5lPpRmYGhSVwNybwP3aQZ6o8Dr48Rau8TJfdsArW+r7bvL7bPs4f5nnlp2vG7WkMzWwABHK3fdM44zZ1GZQaWyECNWR2GfY6dXiklo94vgpFTPuZ97mfiN3LY6uYyBwL8RkDaGAE=";

const WHOLE_SIGNATURE: &str = "EvYBCkgICxABGAIqQA9E9VC377UnbjdfXCw4RwQaaIXsqocZKzI3WwWtXT/wBjzAkBOfIiVkP/mhvsPGb5oQW/2j+E1tZcNFoXIb26YSDBTSbDrbHwXJoAl3/hoMA/Qo4rIHvObP/yBrIjAT+l69mh9k7evFO+w+ransSD5YGq4hYrieOyJH3k/zHv8nBJwiz3Nlrb3jNFi2Ib0qXJH7BIK0hR85yYIoccReoJUpeLEMxeWbsO6f0EpOSMSi3YDLd1U9NAw7Itjeay1fEBPHwvawt2M4e/rn52SsuEz3p2DfOZm+N3bnL63rg0Cb9lFcp3k5kuU1h6hcGAE=";

#[test]
fn reasoning_stream() {
    let r = streamed("amazon-bedrock-reasoning.chunks.txt");
    let (text, reasoning, signature, _) = oracle("amazon-bedrock-reasoning.chunks.txt");
    assert_eq!(r.reasoning, reasoning);
    assert_eq!(
        r.reasoning,
        "Let me count the r's in \"strawberry\":\n\ns-t-r-a-w-b-e-r-r-y\n\nr appears at positions 3, 8, and 9.\n\nSo there are 3 r's."
    );
    assert_eq!(r.reasoning_signature, signature);
    assert_eq!(r.reasoning_signature.as_deref(), Some(STREAM_SIGNATURE));
    assert_eq!(r.text, text);
    assert_eq!(
        r.text,
        "There are **3** r's in \"strawberry\":\n\n1. st**r**awbe**r****r**y"
    );
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(51, 94, 0, 0));
    assert!(r.tool_calls.is_empty());
}

#[test]
fn reasoning_whole() {
    let r = whole("amazon-bedrock-reasoning.json");
    let rec = recorded("amazon-bedrock-reasoning.json");
    let block = &rec["output"]["message"]["content"][0]["reasoningContent"]["reasoningText"];
    assert_eq!(r.reasoning, block["text"]);
    assert_eq!(
        r.reasoning,
        "Let me count the r's in \"strawberry\":\n\ns-t-r-a-w-b-e-r-r-y\n\nThere are 3 r's."
    );
    assert_eq!(r.reasoning_signature.as_deref(), Some(WHOLE_SIGNATURE));
    assert_eq!(
        r.reasoning_signature.as_deref(),
        block["signature"].as_str()
    );
    assert_eq!(
        r.text,
        "There are **3** r's in \"strawberry\":\n\n1. st**r**awbe**r****r**y"
    );
    assert_eq!(r.finish, Some(FinishReason::Stop));
    assert_eq!(r.usage, usage(51, 78, 0, 0));
    assert!(r.tool_calls.is_empty());
}

#[test]
fn tool_call_stream() {
    let r = streamed("amazon-bedrock-tool-call.1.chunks.txt");
    let (text, _, _, args) = oracle("amazon-bedrock-tool-call.1.chunks.txt");
    assert_eq!(r.text, text);
    assert_eq!(r.text, "");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "tool-use-id");
    assert_eq!(r.tool_calls[0].name, "test-tool");
    // Exactly the concatenated `input` fragments, byte for byte.
    assert_eq!(r.tool_calls[0].arguments, args);
    assert_eq!(r.tool_calls[0].arguments, r#"{"value":"Sparkle Day"}"#);
    // `metadata` came before `messageStop` in this recording; the order does not matter.
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(125, 45, 0, 0));
}

#[test]
fn tool_call_whole() {
    let r = whole("amazon-bedrock-tool-call.1.json");
    assert_eq!(r.text, "");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "tool-use-id");
    assert_eq!(r.tool_calls[0].name, "bash");
    // A whole response carries the arguments as an object; they are re-serialised, so compare
    // them as JSON.
    let args: Value = serde_json::from_str(&r.tool_calls[0].arguments).unwrap();
    assert_eq!(
        args,
        recorded("amazon-bedrock-tool-call.1.json")["output"]["message"]["content"][0]["toolUse"]["input"]
    );
    assert_eq!(args, json!({"command": "ls -l"}));
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(10, 20, 0, 0));
}

#[test]
fn tool_without_arguments_stream() {
    let raw = read("bedrock/amazon-bedrock-tool-no-args.chunks.txt");
    let events = decode_bytes(&[&as_frames(&raw)]).unwrap();
    // The tool block is Bedrock's block 1, but the first tool call: canonical index 0. Its only
    // fragment is empty, so its arguments become `{}` when the block stops.
    assert_eq!(
        events,
        [
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::TextDelta("I'll update the issue list for you.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "tool-use-id".into(),
                name: "updateIssueList".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{}".into(),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 100,
                output_tokens: 25,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ]
    );
    let (text, _, _, args) = oracle("amazon-bedrock-tool-no-args.chunks.txt");
    assert_eq!(fold(&events).text, text);
    assert_eq!(args, "");
}

#[test]
fn tool_without_arguments_whole() {
    let r = whole("amazon-bedrock-tool-no-args.json");
    assert_eq!(
        r.text,
        recorded("amazon-bedrock-tool-no-args.json")["output"]["message"]["content"][0]["text"]
    );
    assert_eq!(r.text, "I'll update the issue list for you.");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "tool-use-id");
    assert_eq!(r.tool_calls[0].name, "updateIssueList");
    assert_eq!(r.tool_calls[0].arguments, "{}");
    assert_eq!(r.finish, Some(FinishReason::ToolCalls));
    assert_eq!(r.usage, usage(100, 25, 0, 0));
    // Streamed and whole, the same answer.
    let s = streamed("amazon-bedrock-tool-no-args.chunks.txt");
    assert_eq!(
        (s.text, s.tool_calls, s.usage),
        (r.text, r.tool_calls, r.usage)
    );
}

/// Reasoning with a signature, redacted reasoning, a citation, two tool calls (one without
/// arguments), cached input and an unknown event: features no recording has yet.
const RICH_STREAM: &str = r#"{"messageStart":{"role":"assistant"}}
{"contentBlockDelta":{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Let me think"}},"p":"abcdefgh"}}
{"contentBlockDelta":{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":" about it."}}}}
{"contentBlockDelta":{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"sig123"}}}}
{"contentBlockStop":{"contentBlockIndex":0}}
{"contentBlockDelta":{"contentBlockIndex":1,"delta":{"reasoningContent":{"redactedContent":"EmwKAhgBEgy3va3pzix"}}}}
{"contentBlockStop":{"contentBlockIndex":1}}
{"contentBlockDelta":{"contentBlockIndex":2,"delta":{"text":"Answer"}}}
{"contentBlockDelta":{"contentBlockIndex":2,"delta":{"citation":{"title":"doc","location":{"documentChar":{"documentIndex":0,"start":0,"end":1}}}}}}
{"contentBlockStop":{"contentBlockIndex":2}}
{"contentBlockStart":{"contentBlockIndex":3,"start":{"toolUse":{"toolUseId":"tooluse_a","name":"f"}}}}
{"contentBlockDelta":{"contentBlockIndex":3,"delta":{"toolUse":{"input":"{\"a\":"}}}}
{"contentBlockDelta":{"contentBlockIndex":3,"delta":{"toolUse":{"input":"1}"}}}}
{"contentBlockStop":{"contentBlockIndex":3}}
{"contentBlockStart":{"contentBlockIndex":4,"start":{"toolUse":{"toolUseId":"tooluse_b","name":"g"}}}}
{"contentBlockStop":{"contentBlockIndex":4}}
{"aFutureEvent":{"x":1}}
{"messageStop":{"stopReason":"tool_use"}}
{"metadata":{"usage":{"inputTokens":10,"outputTokens":50,"totalTokens":180,"cacheReadInputTokens":100,"cacheWriteInputTokens":20},"metrics":{"latencyMs":1}}}"#;

const RICH_WHOLE: &str = r#"{"output":{"message":{"role":"assistant","content":[
 {"reasoningContent":{"reasoningText":{"text":"Let me think about it.","signature":"sig123"}}},
 {"reasoningContent":{"redactedContent":"EmwKAhgBEgy3va3pzix"}},
 {"citationsContent":{"content":[{"text":"Answer"}],"citations":[{"title":"doc"}]}},
 {"toolUse":{"toolUseId":"tooluse_a","name":"f","input":{"a":1}}},
 {"toolUse":{"toolUseId":"tooluse_b","name":"g","input":{}}}
]}},
"stopReason":"tool_use",
"usage":{"inputTokens":10,"outputTokens":50,"totalTokens":180,"cacheReadInputTokens":100,"cacheWriteInputTokens":20},
"metrics":{"latencyMs":1}}"#;

#[test]
fn reasoning_signature_tools_and_cached_usage() {
    let events = decode_bytes(&[&as_frames(RICH_STREAM)]).unwrap();
    assert!(events.contains(&StreamEvent::ReasoningDelta {
        text: String::new(),
        signature: Some("sig123".into()),
    }));
    assert!(events.contains(&StreamEvent::ToolCallStart {
        index: 1,
        id: "tooluse_b".into(),
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
        [("tooluse_a", "f", r#"{"a":1}"#), ("tooluse_b", "g", "{}")]
    );
    assert_eq!(streamed.finish, Some(FinishReason::ToolCalls));
    // Canonical input counts cache reads and writes: 10 + 100 + 20.
    assert_eq!(streamed.usage, usage(130, 50, 100, 20));

    let full = fold(&decode_whole(RICH_WHOLE.as_bytes()).unwrap());
    assert_eq!(full, streamed);
}

#[test]
fn usage_spellings_and_stop_reasons() {
    let u = super::stream::usage(
        &serde_json::from_value(json!({
            "inputTokens": 5, "outputTokens": 7,
            "cacheReadInputTokenCount": 3, "cacheWriteInputTokenCount": 2,
        }))
        .unwrap(),
    );
    assert_eq!(
        u,
        Usage {
            input_tokens: 10,
            output_tokens: 7,
            cache_read_tokens: 3,
            cache_write_tokens: 2,
            reasoning_tokens: 0,
        }
    );
    for (reason, finish) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("guardrail_intervened", FinishReason::ContentFilter),
        ("content_filtered", FinishReason::ContentFilter),
        ("malformed_tool_use", FinishReason::Error),
        ("something_new", FinishReason::Other),
    ] {
        assert_eq!(super::stream::finish_reason(reason), finish, "{reason}");
    }
}

#[test]
fn any_split_of_a_recorded_stream_decodes_the_same() {
    for name in CHUNK_RECORDINGS {
        let bytes = as_frames(&read(&format!("bedrock/{name}")));
        let reference = decode_bytes(&[&bytes]).unwrap();
        for cut in 0..=bytes.len() {
            let got = decode_bytes(&[&bytes[..cut], &bytes[cut..]]).unwrap();
            assert_eq!(got, reference, "{name} cut at {cut}");
        }
        for i in (0..bytes.len()).step_by(31) {
            for j in (i..bytes.len()).step_by(53) {
                let got = decode_bytes(&[&bytes[..i], &bytes[i..j], &bytes[j..]]).unwrap();
                assert_eq!(got, reference, "{name} cut at {i},{j}");
            }
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            decode_bytes(&bytewise).unwrap(),
            reference,
            "{name} bytewise"
        );
    }
}

#[test]
fn a_corrupted_checksum_is_a_protocol_error() {
    for name in CHUNK_RECORDINGS {
        let bytes = as_frames(&read(&format!("bedrock/{name}")));
        for i in (0..bytes.len()).step_by(3) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let e = decode_bytes(&[&bad]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Protocol, "{name} byte {i}");
            assert_eq!(e.side, Side::Upstream);
        }
    }
}

/// Feed a body through the live path: a `reqwest::Response` decoded by `event_stream`.
async fn live(body: Vec<u8>) -> Vec<Result<StreamEvent, Error>> {
    use futures_util::StreamExt;
    let resp = http::Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(body)
        .unwrap();
    let mut stream = event_stream(reqwest::Response::from(resp));
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item);
    }
    out
}

#[tokio::test]
async fn live_stream_matches_the_recording_and_reports_a_cut() {
    let raw = read("bedrock/amazon-bedrock-text.chunks.txt");
    let bytes = as_frames(&raw);
    let reference = decode_bytes(&[&bytes]).unwrap();

    // Whatever follows the stop reason and the usage is not read, however broken.
    let mut body = bytes.clone();
    body.extend_from_slice(b"\x00\x00\x00\x20garbage after the end");
    let events: Vec<StreamEvent> = live(body).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(events, reference);

    // A stream cut before the stop reason ends in an error, not a clean end.
    let stop = raw.lines().position(|l| l.contains("messageStop")).unwrap();
    let cut: usize = raw.lines().take(stop).map(|l| as_frames(l).len()).sum();
    let items = live(bytes[..cut].to_vec()).await;
    assert!(
        matches!(items.last(), Some(Err(e)) if e.kind == ErrorKind::Protocol),
        "{items:?}"
    );
    // So does one cut inside a message.
    let items = live(bytes[..cut + 5].to_vec()).await;
    assert!(
        matches!(items.last(), Some(Err(e)) if e.kind == ErrorKind::Protocol),
        "{items:?}"
    );
    // After the stop reason, a missing usage event is not an error.
    let metadata = raw.lines().position(|l| l.contains("metadata")).unwrap();
    let end: usize = raw.lines().take(metadata).map(|l| as_frames(l).len()).sum();
    let items = live(bytes[..end].to_vec()).await;
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(
        items.last().map(|i| i.as_ref().ok().cloned()),
        Some(Some(StreamEvent::Finish(FinishReason::Stop)))
    );
}

#[tokio::test]
async fn corrupt_bytes_mid_stream_end_with_a_protocol_error() {
    let raw = read("bedrock/amazon-bedrock-reasoning.chunks.txt");
    let mut bytes = as_frames(&raw);
    let first_two: usize = raw.lines().take(2).map(|l| as_frames(l).len()).sum();
    // Break the third message's payload: its CRC no longer matches.
    bytes[first_two + 40] ^= 0x01;
    let items = live(bytes).await;
    let (last, before) = items.split_last().unwrap();
    assert!(
        matches!(last, Err(e) if e.kind == ErrorKind::Protocol && e.is_retryable()),
        "{last:?}"
    );
    // The events of the intact messages before it were delivered first.
    assert_eq!(
        before
            .iter()
            .map(|i| i.as_ref().unwrap().clone())
            .collect::<Vec<_>>(),
        [
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::ReasoningDelta {
                text: "Let me count the r".into(),
                signature: None,
            },
        ]
    );
}

#[tokio::test]
async fn in_stream_exceptions_are_typed_and_come_first() {
    // Bedrock answers 200 and `messageStart`, then throttles: the error must be the first item,
    // so the router can still fail over.
    let mut body = eventstream::event("messageStart", br#"{"role":"assistant"}"#);
    body.extend(exception_frame(
        "throttlingException",
        r#"{"message":"Too many requests, please wait before trying again."}"#,
    ));
    let items = live(body).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let e = items[0].as_ref().unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.side, Side::Upstream);
    assert!(e.is_retryable());
    assert_eq!(
        e.message,
        "Too many requests, please wait before trying again."
    );
    // AWS's name stays out of `code`, so dialects give their clients' own codes.
    assert_eq!(e.code, None);

    for (kind, message, expected) in [
        (
            "modelStreamErrorException",
            "Model stream error",
            ErrorKind::Server,
        ),
        (
            "validationException",
            "Input is too long for requested model.",
            ErrorKind::ContextWindowExceeded,
        ),
        (
            "validationException",
            "The format of the value at messages.0 is invalid",
            ErrorKind::BadRequest,
        ),
        (
            "serviceUnavailableException",
            "Bedrock is unable to process your request.",
            ErrorKind::Overloaded,
        ),
        (
            "internalServerException",
            "The server encountered an internal error",
            ErrorKind::Server,
        ),
        ("somethingNewException", "?", ErrorKind::Server),
    ] {
        // After some text: the text is delivered, then the error.
        let mut body = eventstream::event("messageStart", br#"{"role":"assistant"}"#);
        body.extend(eventstream::event(
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        ));
        body.extend(exception_frame(
            kind,
            &json!({"message": message}).to_string(),
        ));
        let items = live(body).await;
        assert_eq!(items.len(), 3, "{kind}: {items:?}");
        assert_eq!(
            items[1].as_ref().unwrap(),
            &StreamEvent::TextDelta("Hi".into())
        );
        let e = items[2].as_ref().unwrap_err();
        assert_eq!(e.kind, expected, "{kind}");
        assert_eq!(e.message, message);
    }

    // A stream-level `error` message.
    let mut headers = eventstream::string_header(":message-type", "error");
    headers.extend(eventstream::string_header(":error-code", "InternalFailure"));
    headers.extend(eventstream::string_header(":error-message", "boom"));
    let items = live(eventstream::frame(&headers, b"")).await;
    let e = items[0].as_ref().unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Server, "boom"));
    // A message of no known type.
    let items = live(eventstream::frame(&[], b"{}")).await;
    assert_eq!(items[0].as_ref().unwrap_err().kind, ErrorKind::Protocol);
}

/// Decode and fold; a decoder must never emit events the collector rejects.
fn decode_checked<P: AsRef<[u8]>>(parts: &[P]) {
    if let Ok(events) = decode_bytes(parts) {
        let mut c = Collector::new();
        for e in &events {
            c.push(e).unwrap();
        }
    }
}

#[test]
fn garbage_never_panics() {
    // Every recording with one event missing or repeated.
    for name in CHUNK_RECORDINGS {
        let raw = read(&format!("bedrock/{name}"));
        let lines: Vec<&str> = raw.lines().collect();
        for skip in 0..lines.len() {
            let mut missing = lines.clone();
            missing.remove(skip);
            decode_checked(&[&as_frames(&missing.join("\n"))]);
            let mut repeated = lines.clone();
            repeated.insert(skip, lines[skip]);
            decode_checked(&[&as_frames(&repeated.join("\n"))]);
        }
    }
    for name in WHOLE_RECORDINGS {
        let raw = read(&format!("bedrock/{name}"));
        for cut in 0..=raw.len() {
            if let Some(prefix) = raw.get(..cut) {
                let _ = decode_whole(prefix.as_bytes());
            }
        }
    }
    // Well-formed frames holding JSON of the wrong shapes.
    for (kind, payload) in [
        ("contentBlockDelta", "null"),
        ("contentBlockDelta", "[]"),
        ("contentBlockDelta", "{}"),
        ("contentBlockDelta", r#"{"contentBlockIndex":0}"#),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":-1,"delta":{"text":"x"}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":4294967296,"delta":{"text":"x"}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":7}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{"}}}"#,
        ),
        ("contentBlockStart", r#"{"contentBlockIndex":0}"#),
        (
            "contentBlockStart",
            r#"{"contentBlockIndex":0,"start":{"toolUse":{}}}"#,
        ),
        ("contentBlockStop", "{}"),
        ("messageStop", r#"{"stopReason":7}"#),
        ("messageStop", "{}"),
        ("metadata", r#"{"usage":{"inputTokens":-1}}"#),
        (
            "metadata",
            r#"{"usage":{"inputTokens":18446744073709551615,"cacheReadInputTokens":18446744073709551615,"cacheWriteInputTokens":18446744073709551615}}"#,
        ),
        ("messageStart", "not json"),
    ] {
        decode_checked(&[&eventstream::event(kind, payload.as_bytes())]);
        let _ = decode_whole(payload.as_bytes());
    }
    let e = decode_bytes(&[&eventstream::event(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{"}}}"#,
    )])
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
    // A repeated tool start is refused, not a second call with the same index.
    let twice = "{\"contentBlockStart\":{\"contentBlockIndex\":0,\"start\":{\"toolUse\":{\"toolUseId\":\"a\",\"name\":\"f\"}}}}\n".repeat(2);
    assert_eq!(decode_lines(&twice).unwrap_err().kind, ErrorKind::Protocol);
    for hostile in ["null", "{}", r#"{"output":{}}"#, r#"{"message":"oops"}"#] {
        assert_eq!(
            decode_whole(hostile.as_bytes()).unwrap_err().kind,
            ErrorKind::Protocol,
            "{hostile}"
        );
    }
    // Random bytes through the framing and the decoder.
    let mut seed = 13u64;
    for _ in 0..300 {
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 33) as u8
            })
            .collect();
        decode_checked(&[bytes.as_slice()]);
        let _ = decode_whole(&bytes);
    }
}

// ---- request encoding ----

const CLAUDE: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const NOVA: &str = "amazon.nova-pro-v1:0";

fn encode_for(
    model: &str,
    default_max_tokens: Option<u32>,
    req: &ChatRequest,
) -> Result<Value, Error> {
    let opts = EncodeOptions {
        model,
        default_max_tokens,
    };
    encode_request(req, &opts).map(|r| serde_json::to_value(r).unwrap())
}

fn encode(req: &ChatRequest) -> Result<Value, Error> {
    encode_for(CLAUDE, None, req)
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
    extra.insert(
        "guardrailConfig".into(),
        json!({"guardrailIdentifier": "gr-1", "guardrailVersion": "1"}),
    );
    extra.insert(
        "additionalModelRequestFields".into(),
        json!({"anthropic_beta": ["interleaved-thinking-2025-05-14"], "top_k": 1}),
    );
    extra.insert("logit_bias".into(), json!({"50256": -100}));
    extra.insert("service_tier".into(), json!("flex"));
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
            msg(Role::User, vec![text("And now?"), text("  ")]),
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
                description: Some(String::new()),
                parameters: None,
                strict: Some(true),
                cache: Some(CacheControl::default()),
            },
        ],
        tool_choice: Some(ToolChoice::Auto),
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
        "system": [
            {"text": "You are terse."},
            {"cachePoint": {"type": "default", "ttl": "1h"}},
            {"text": "Answer in French."},
        ],
        "messages": [
            {"role": "user", "content": [
                {"text": "What is in this picture?"},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                {"cachePoint": {"type": "default"}},
            ]},
            {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "Two lookups needed.", "signature": "sig-1"}}},
                {"text": "Let me look."},
                {"toolUse": {"toolUseId": "toolu_1", "name": "lookup", "input": {"q": "cat"}}},
                {"toolUse": {"toolUseId": "toolu_2", "name": "now", "input": {}}},
            ]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "a cat"}]}},
                {"toolResult": {"toolUseId": "toolu_2", "content": [{"text": "timeout"}], "status": "error"}},
                {"text": "Thanks."},
                {"text": "And now?"},
            ]},
        ],
        // No cap from the client: the default room for the answer plus the thinking budget.
        "inferenceConfig": {"maxTokens": 4096 + 2048, "temperature": 0.5, "stopSequences": ["END"]},
        "toolConfig": {
            "tools": [
                {"toolSpec": {
                    "name": "lookup",
                    "description": "Look a word up",
                    "inputSchema": {"json": {
                        "type": "object",
                        "properties": {"q": {"type": "string"}},
                        "required": ["q"],
                    }},
                }},
                {"toolSpec": {"name": "now", "inputSchema": {"json": {"type": "object"}}, "strict": true}},
                {"cachePoint": {"type": "default"}},
            ],
            "toolChoice": {"auto": {}},
        },
        // The client's own additional fields pass; the canonical top_k wins over theirs.
        "additionalModelRequestFields": {
            "anthropic_beta": ["interleaved-thinking-2025-05-14"],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "top_k": 40,
        },
        "guardrailConfig": {"guardrailIdentifier": "gr-1", "guardrailVersion": "1"},
    });
    assert_eq!(encode_for(CLAUDE, Some(4096), &req).unwrap(), expected);
}

#[test]
fn breakpoints_land_after_the_block_before_them() {
    // Right after a reasoning block, which takes no cache marker: after the block before it.
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
                ContentPart::CacheBreakpoint(CacheControl::default()),
            ],
        )],
        ..ChatRequest::default()
    };
    assert_eq!(
        encode(&req).unwrap()["messages"][0]["content"],
        json!([
            {"text": "a"},
            {"cachePoint": {"type": "default"}},
            {"reasoningContent": {"reasoningText": {"text": "t", "signature": "s"}}},
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
            {"role": "user", "content": [{"text": "q"}]},
            {"role": "assistant", "content": [
                {"text": "a"},
                {"cachePoint": {"type": "default", "ttl": "5m"}},
            ]},
            {"role": "user", "content": [{"text": "next"}]},
        ])
    );
    // First part of the first turn: the end of the system prompt; with none, nothing.
    let req = ChatRequest {
        messages: vec![
            msg(Role::System, vec![text("sys")]),
            msg(
                Role::User,
                vec![
                    ContentPart::CacheBreakpoint(CacheControl::default()),
                    text("x"),
                ],
            ),
        ],
        ..ChatRequest::default()
    };
    let body = encode(&req).unwrap();
    assert_eq!(
        body["system"],
        json!([{"text": "sys"}, {"cachePoint": {"type": "default"}}])
    );
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
        encode(&req).unwrap(),
        json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]})
    );
}

#[test]
fn defaults_and_plain_fields() {
    // No cap anywhere: Bedrock applies the model's own maximum.
    assert_eq!(
        encode(&user("hi")).unwrap(),
        json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    );
    assert_eq!(
        encode_for(NOVA, Some(512), &user("hi")).unwrap()["inferenceConfig"],
        json!({"maxTokens": 512})
    );
    let mut req = user("hi");
    req.max_output_tokens = Some(100);
    req.top_p = Some(0.9);
    req.seed = Some(1);
    req.user = Some("u".into());
    req.extra.insert("safe_prompt".into(), json!(true));
    let body = encode_for(NOVA, Some(512), &req).unwrap();
    assert_eq!(
        body["inferenceConfig"],
        json!({"maxTokens": 100, "topP": 0.9})
    );
    for absent in [
        "seed",
        "user",
        "safe_prompt",
        "stream",
        "model",
        "system",
        "toolConfig",
        "additionalModelRequestFields",
        "outputConfig",
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
        encode(&req)
    };
    assert_eq!(
        with(Some(ToolChoice::Required), None, true).unwrap()["toolConfig"]["toolChoice"],
        json!({"any": {}})
    );
    assert_eq!(
        with(Some(ToolChoice::Tool("f".into())), Some(true), true).unwrap()["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "f"}})
    );
    assert_eq!(
        with(Some(ToolChoice::Auto), None, true).unwrap()["toolConfig"]["toolChoice"],
        json!({"auto": {}})
    );
    let body = with(None, None, true).unwrap();
    assert!(body["toolConfig"].get("toolChoice").is_none(), "{body}");
    assert_eq!(
        body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"],
        json!({"json": {"type": "object"}})
    );
    // `none` without tool history: the tools are not offered at all.
    assert!(
        with(Some(ToolChoice::None), None, true)
            .unwrap()
            .get("toolConfig")
            .is_none()
    );
    assert!(
        with(Some(ToolChoice::Auto), Some(false), false)
            .unwrap()
            .get("toolConfig")
            .is_none()
    );
    // What Converse cannot say.
    let e = with(None, Some(false), true).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.param.as_deref(), Some("parallel_tool_calls"));
    let e = with(Some(ToolChoice::Required), None, false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    let mut req = user("hi");
    req.tools = vec![tool.clone()];
    req.tool_choice = Some(ToolChoice::None);
    req.messages.push(msg(
        Role::Assistant,
        vec![ContentPart::ToolCall(ToolCall {
            id: "t1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        })],
    ));
    let e = encode(&req).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.side, Side::Client);
    assert!(e.message.contains("tool_choice none"), "{}", e.message);
}

#[test]
fn top_k_and_reasoning_only_for_claude() {
    let mut req = user("hi");
    req.top_k = Some(5);
    let e = encode_for(NOVA, None, &req).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(
        e.message.contains("top_k") && e.message.contains(NOVA),
        "{}",
        e.message
    );
    let arn = "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0";
    assert_eq!(
        encode_for(arn, None, &req).unwrap()["additionalModelRequestFields"],
        json!({"top_k": 5})
    );
    let mut req = user("hi");
    req.reasoning = Some(Reasoning {
        effort: Some("low".into()),
        budget_tokens: None,
    });
    assert_eq!(
        encode_for(NOVA, None, &req).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    // Reasoning turned off asks nothing of the model.
    req.reasoning = Some(Reasoning {
        effort: Some("none".into()),
        budget_tokens: None,
    });
    assert!(encode_for(NOVA, None, &req).is_ok());
}

#[test]
fn reasoning_effort_becomes_a_budget() {
    let with = |effort: &str, cap: Option<u32>, default: Option<u32>| {
        let mut req = user("hi");
        req.reasoning = Some(Reasoning {
            effort: Some(effort.into()),
            budget_tokens: None,
        });
        req.max_output_tokens = cap;
        encode_for(CLAUDE, default, &req)
    };
    for (effort, budget) in [
        ("minimal", 1024),
        ("low", 1024),
        ("medium", 4096),
        ("high", 16384),
        ("xhigh", 24576),
    ] {
        let body = with(effort, None, None).unwrap();
        assert_eq!(
            body["additionalModelRequestFields"]["thinking"],
            json!({"type": "enabled", "budget_tokens": budget})
        );
        // No cap anywhere: none is sent, and the model's maximum exceeds every budget.
        assert!(body.get("inferenceConfig").is_none(), "{body}");
        let body = with(effort, None, Some(4096)).unwrap();
        assert_eq!(body["inferenceConfig"]["maxTokens"], 4096 + budget);
    }
    assert!(
        with("none", None, None)
            .unwrap()
            .get("additionalModelRequestFields")
            .is_none()
    );
    // A client cap covers thinking: an effort's budget shrinks below it.
    let body = with("high", Some(2000), None).unwrap();
    assert_eq!(body["inferenceConfig"]["maxTokens"], 2000);
    assert_eq!(
        body["additionalModelRequestFields"]["thinking"]["budget_tokens"],
        1999
    );
    assert_eq!(
        with("low", Some(1000), None).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    let e = with("turbo", None, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("turbo"), "{}", e.message);
    // A zero budget turns thinking off.
    let mut req = user("hi");
    req.reasoning = Some(Reasoning {
        effort: None,
        budget_tokens: Some(0),
    });
    assert!(
        encode(&req)
            .unwrap()
            .get("additionalModelRequestFields")
            .is_none()
    );
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
        description: Some("The answer".into()),
    });
    let body = encode(&req).unwrap();
    let definition = &body["outputConfig"]["textFormat"]["structure"]["jsonSchema"];
    assert_eq!(body["outputConfig"]["textFormat"]["type"], "json_schema");
    assert_eq!(definition["name"], "answer");
    assert_eq!(definition["description"], "The answer");
    // The schema travels as JSON text.
    let sent: Value = serde_json::from_str(definition["schema"].as_str().unwrap()).unwrap();
    assert_eq!(sent, schema);

    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "answer".into(),
        schema: None,
        strict: None,
        description: None,
    });
    assert_eq!(encode(&req).unwrap_err().kind, ErrorKind::Unsupported);
    req.response_format = Some(ResponseFormat::Text);
    assert!(encode(&req).unwrap().get("outputConfig").is_none());
}

#[test]
fn refuses_what_bedrock_cannot_take() {
    let turn = |part: ContentPart| ChatRequest {
        messages: vec![msg(Role::User, vec![part])],
        ..ChatRequest::default()
    };
    let e = encode(&turn(ContentPart::Image {
        source: ImageSource::Url("https://example.com/cat.png".into()),
        detail: None,
    }))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("image URL"), "{}", e.message);
    let e = encode(&turn(ContentPart::Image {
        source: ImageSource::Base64 {
            media_type: "image/bmp".into(),
            data: "Qk0=".into(),
        },
        detail: None,
    }))
    .unwrap_err();
    assert!(e.message.contains("image/bmp"), "{}", e.message);
    assert_eq!(
        encode(&turn(ContentPart::Image {
            source: ImageSource::Base64 {
                media_type: "image/JPEG".into(),
                data: "/9j/".into(),
            },
            detail: None,
        }))
        .unwrap()["messages"][0]["content"][0],
        json!({"image": {"format": "jpeg", "source": {"bytes": "/9j/"}}})
    );

    let e = encode(&turn(ContentPart::Opaque {
        family: "anthropic",
        value: json!({"type": "search_result"}),
    }))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("anthropic"), "{}", e.message);

    let e = encode(&ChatRequest {
        messages: vec![msg(
            Role::Assistant,
            vec![ContentPart::ToolCall(ToolCall {
                id: "tooluse_9".into(),
                name: "lookup".into(),
                arguments: "{\"q\": ".into(),
            })],
        )],
        ..ChatRequest::default()
    })
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("tooluse_9"), "{}", e.message);

    let e = encode(&ChatRequest {
        messages: vec![msg(
            Role::System,
            vec![ContentPart::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into(),
                },
                detail: None,
            }],
        )],
        ..ChatRequest::default()
    })
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

#[test]
fn documents_are_inline_and_named() {
    let doc =
        |data: Option<&str>, file_id: Option<&str>, filename: Option<&str>| ContentPart::Document {
            data: data.map(str::to_owned),
            file_id: file_id.map(str::to_owned),
            filename: filename.map(str::to_owned),
        };
    let req = ChatRequest {
        messages: vec![msg(
            Role::User,
            vec![
                doc(
                    Some("data:application/pdf;base64,JVBERi0="),
                    None,
                    Some("report.pdf"),
                ),
                doc(Some("JVBERi0="), None, Some("report.pdf")),
                doc(
                    Some("data:text/plain;base64,aGk="),
                    None,
                    Some("my_notes v2.final.txt"),
                ),
                doc(Some("data:text/markdown;base64,aGk="), None, None),
                text("Summarise these."),
            ],
        )],
        ..ChatRequest::default()
    };
    assert_eq!(
        encode(&req).unwrap()["messages"][0]["content"],
        json!([
            {"document": {"format": "pdf", "name": "report", "source": {"bytes": "JVBERi0="}}},
            {"document": {"format": "pdf", "name": "report (2)", "source": {"bytes": "JVBERi0="}}},
            {"document": {"format": "txt", "name": "my-notes v2-final", "source": {"bytes": "aGk="}}},
            {"document": {"format": "md", "name": "document", "source": {"bytes": "aGk="}}},
            {"text": "Summarise these."},
        ])
    );
    let one = |part: ContentPart| {
        encode(&ChatRequest {
            messages: vec![msg(Role::User, vec![part])],
            ..ChatRequest::default()
        })
    };
    assert_eq!(
        one(doc(None, Some("file-abc"), None)).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    assert_eq!(
        one(doc(Some("data:application/zip;base64,UEs="), None, None))
            .unwrap_err()
            .kind,
        ErrorKind::Unsupported
    );
    assert_eq!(
        one(doc(Some("data:application/pdf,plain"), None, None))
            .unwrap_err()
            .kind,
        ErrorKind::BadRequest
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

/// `x-amzn-ErrorType` as Bedrock sends it.
fn aws_error(kind: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    let value = format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/");
    h.insert(
        "x-amzn-errortype",
        http::HeaderValue::from_str(&value).unwrap(),
    );
    h
}

fn body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"message": message})).unwrap()
}

#[test]
fn throttling_is_retryable_with_retry_after() {
    let e = error::from_response(
        429,
        &aws_error("ThrottlingException"),
        &body("Too many requests, please wait before trying again."),
        &[],
    );
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.side, Side::Upstream);
    assert_eq!(e.retry, Retry::Yes);
    assert_eq!(e.upstream_status, Some(429));
    assert_eq!(e.code, None);
    assert_eq!(
        e.message,
        "Too many requests, please wait before trying again."
    );
    let mut h = aws_error("ThrottlingException");
    h.insert("retry-after", http::HeaderValue::from_static("2"));
    let e = error::from_response(429, &h, &body("slow down"), &[]);
    assert_eq!(e.retry, Retry::After(Duration::from_secs(2)));
}

#[test]
fn error_classes_by_type_and_status() {
    let cases: [(u16, &'static str, &str, ErrorKind); 14] = [
        (
            400,
            "ValidationException",
            "Input is too long for requested model.",
            ErrorKind::ContextWindowExceeded,
        ),
        (
            400,
            "ValidationException",
            "The model returned the following errors: prompt is too long: 210000 tokens > 200000 maximum",
            ErrorKind::ContextWindowExceeded,
        ),
        (
            400,
            "ValidationException",
            "Malformed input request: #: extraneous key [foo] is not permitted",
            ErrorKind::BadRequest,
        ),
        (
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
            ErrorKind::Auth,
        ),
        (
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
            ErrorKind::Auth,
        ),
        (
            403,
            "ExpiredTokenException",
            "The security token included in the request is expired",
            ErrorKind::Auth,
        ),
        (
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
            ErrorKind::PermissionDenied,
        ),
        (
            404,
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
            ErrorKind::NotFound,
        ),
        (
            408,
            "ModelTimeoutException",
            "Model has timed out in processing the request.",
            ErrorKind::Timeout,
        ),
        (
            424,
            "ModelErrorException",
            "The system encountered an unexpected error during processing.",
            ErrorKind::Server,
        ),
        (
            429,
            "ModelNotReadyException",
            "The model is not ready to serve inference requests.",
            ErrorKind::Overloaded,
        ),
        (
            429,
            "ServiceQuotaExceededException",
            "Your request exceeds the service quota for your account.",
            ErrorKind::RateLimited,
        ),
        (
            500,
            "InternalServerException",
            "The server encountered an internal error.",
            ErrorKind::Server,
        ),
        (
            503,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
            ErrorKind::Overloaded,
        ),
    ];
    for (status, kind, message, expected) in cases {
        let e = error::from_response(status, &aws_error(kind), &body(message), &[]);
        assert_eq!(e.kind, expected, "{status} {kind}");
        assert_eq!(e.message, message);
        assert_eq!(e.upstream_status, Some(status));
    }
    // The type in the body (`__type`), when no header names it.
    let e = error::from_response(
        400,
        &headers(&[]),
        br#"{"__type":"com.amazon.coral.service#UnrecognizedClientException","Message":"The security token included in the request is invalid."}"#,
        &[],
    );
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(
        e.message,
        "The security token included in the request is invalid."
    );
    // Not AWS's shape (a proxy's page, an empty body): the status decides.
    let e = error::from_response(502, &headers(&[]), b"<html>Bad gateway</html>", &[]);
    assert_eq!(e.kind, ErrorKind::Server);
    assert!(e.message.contains("Bad gateway"), "{}", e.message);
    let e = error::from_response(503, &headers(&[]), b"", &[]);
    assert_eq!(e.kind, ErrorKind::Overloaded);
    assert_eq!(e.message, "upstream answered HTTP 503");
    assert_eq!(
        error::from_response(424, &headers(&[]), b"{}", &[]).kind,
        ErrorKind::Server
    );
    assert_eq!(
        error::from_response(429, &headers(&[]), b"{}", &[]).kind,
        ErrorKind::RateLimited
    );
    assert!(
        !error::from_response(400, &aws_error("ValidationException"), &body("x"), &[])
            .is_retryable()
    );
}

#[test]
fn secrets_are_redacted() {
    let secret = Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    let e = error::from_response(
        403,
        &aws_error("InvalidSignatureException"),
        &body("bad signature for wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        &[&secret],
    );
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.message.contains("wJalrXUtnFEMI"), "{}", e.message);
}

// ---- config and the HTTP request ----

fn config(value: Value) -> Result<BedrockConfig, serde_json::Error> {
    serde_json::from_value(value)
}

fn client() -> reqwest::Client {
    crate::shared_client(&crate::HttpSettings::default()).unwrap()
}

fn provider(value: Value) -> Bedrock {
    match Bedrock::from_config(&config(value).unwrap(), client()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TOKEN: &str =
    "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJGMEQCIExampleSessionToken+/=";

#[test]
fn config_is_validated() {
    let base = || json!({"region": "us-east-1", "access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET});
    assert!(config(json!({"region": "us-east-1", "access_key_id": "AKIDEXAMPLE"})).is_err());
    let mut unknown = base();
    unknown["api_key"] = json!("x");
    assert!(config(unknown).is_err());

    let built = |patch: Value| {
        let mut v = base();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        Bedrock::from_config(&config(v).unwrap(), client()).err()
    };
    assert_eq!(built(json!({})), None);
    for (patch, field) in [
        (json!({"region": ""}), "region:"),
        (json!({"region": "US East"}), "region:"),
        (json!({"base_url": "ftp://x"}), "base_url:"),
        (json!({"base_url": "https://x/?a=1"}), "base_url:"),
        (json!({"access_key_id": ""}), "access_key_id:"),
        (json!({"access_key_id": "AKID/x"}), "access_key_id:"),
        (json!({"secret_access_key": ""}), "secret_access_key:"),
        (json!({"session_token": "a\nb"}), "session_token:"),
        (json!({"default_max_tokens": 0}), "default_max_tokens:"),
    ] {
        let e = built(patch.clone()).unwrap_or_default();
        assert!(e.starts_with(field), "{patch}: {e}");
    }
    // An empty session token (`${AWS_SESSION_TOKEN:-}` with none set) means none.
    let mut v = base();
    v["session_token"] = json!("");
    let p = provider(v);
    assert!(p.credentials.session_token.is_none());
    assert_eq!(p.base, "https://bedrock-runtime.us-east-1.amazonaws.com");
    assert_eq!(p.timeout, Duration::from_secs(600));
    assert_eq!(p.default_max_tokens, None);

    let cfg: crate::ProviderConfig = serde_json::from_value(json!({
        "type": "bedrock",
        "region": "eu-west-3",
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "secret_access_key": SECRET,
        "session_token": TOKEN,
    }))
    .unwrap();
    assert_eq!(cfg.kind(), "bedrock");
    let summary = cfg.summary();
    assert!(
        summary.contains("base_url=https://bedrock-runtime.eu-west-3.amazonaws.com")
            && summary.contains("region=eu-west-3"),
        "{summary}"
    );
    for secret in ["IOSFODNN7", "K7MDENG", "ExampleSessionToken"] {
        assert!(!summary.contains(secret), "{summary}");
    }
    assert!(crate::build_provider(&cfg, client()).is_ok());
}

/// The body botocore serialised for `converse(messages=[user "hi"])`, and its vectors.
const BOTO_BODY: &[u8] = br#"{"messages": [{"role": "user", "content": [{"text": "hi"}]}]}"#;
/// 2015-08-30T12:36:00Z.
const WHEN: u64 = 1_440_938_160;

#[test]
fn request_is_signed_as_botocore_signs_it() {
    let hash = super::sigv4::sha256_hex(BOTO_BODY);

    // An endpoint override with a port, a model id with ':'.
    let p = provider(json!({
        "region": "eu-west-3",
        "base_url": "http://127.0.0.1:8080/",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": SECRET,
    }));
    let url = p
        .url("anthropic.claude-3-haiku-20240307-v1:0", false)
        .unwrap();
    let req = p
        .request(url, BOTO_BODY.to_vec(), &hash, WHEN)
        .build()
        .unwrap();
    assert_eq!(req.method(), &http::Method::POST);
    assert_eq!(
        req.url().as_str(),
        "http://127.0.0.1:8080/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    );
    let h = req.headers();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-amz-date"], "20150830T123600Z");
    assert_eq!(
        h["authorization"],
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-3/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=a219d0a8434a82e3f06c94a3145e735761b62de0afa9846e75874b2691cc6787"
    );
    assert!(h.get("x-amz-security-token").is_none());
    assert!(h.get("x-amz-content-sha256").is_none());
    assert!(h.get("x-api-key").is_none());

    // The default endpoint with temporary credentials.
    let p = provider(json!({
        "region": "us-east-1",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": SECRET,
        "session_token": TOKEN,
    }));
    let url = p.url("amazon.nova-lite-v1", false).unwrap();
    let req = p
        .request(url, BOTO_BODY.to_vec(), &hash, WHEN)
        .build()
        .unwrap();
    assert_eq!(
        req.url().as_str(),
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.nova-lite-v1/converse"
    );
    assert_eq!(req.headers()["x-amz-security-token"], TOKEN);
    assert_eq!(
        req.headers()["authorization"],
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=b271336ce520a8adcce2d768056590145af085552e8ed97666d8917e89f9ac20"
    );

    // An ARN: its `/` stays inside the model segment, on the wire and in the signature.
    let p = provider(json!({
        "region": "us-east-1",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": SECRET,
    }));
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0";
    let req = p
        .request(p.url(arn, false).unwrap(), BOTO_BODY.to_vec(), &hash, WHEN)
        .build()
        .unwrap();
    assert_eq!(
        req.url().path(),
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"
    );
    assert_eq!(
        req.headers()["authorization"],
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=dcbdba72c6f9c7525e280eb688d4491aa533922f9aab62a130d3e14041e9b51c"
    );
    // Streaming goes to converse-stream.
    let req = p
        .request(
            p.url("anthropic.claude-3-haiku-20240307-v1:0", true)
                .unwrap(),
            BOTO_BODY.to_vec(),
            &hash,
            WHEN,
        )
        .build()
        .unwrap();
    assert_eq!(
        req.url().path(),
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    );
    assert_eq!(
        req.headers()["authorization"],
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=d21bd73f9972e527a7324e439b2fa300ae3525cb70ec788ba216cf63f588e64f"
    );
    for bad in ["", ".", ".."] {
        assert_eq!(p.url(bad, false).unwrap_err().kind, ErrorKind::BadRequest);
    }
}

#[tokio::test]
async fn large_bodies_are_hashed_off_the_workers_with_the_same_result() {
    let big = vec![b'x'; super::INLINE_HASH_LIMIT + 1];
    let (body, hash) = super::payload_hash(big.clone()).await.unwrap();
    assert_eq!(body, big);
    assert_eq!(hash, super::sigv4::sha256_hex(&big));
}

#[tokio::test]
async fn no_embeddings() {
    use relais_core::{EmbedRequest, Provider};
    let p = provider(json!({
        "region": "us-east-1",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": SECRET,
    }));
    assert_eq!(p.kind(), "bedrock");
    let e = p.embed("m", &EmbedRequest::default()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

// ---- fuzzing (issue 17): the event-stream framing and the Converse decoders ----

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use relais_testkit::fuzz::{config, cuts, mutated, pieces};

    const STREAMS: [&str; 4] = [
        "amazon-bedrock-reasoning.chunks.txt",
        "amazon-bedrock-text.chunks.txt",
        "amazon-bedrock-tool-call.1.chunks.txt",
        "amazon-bedrock-tool-no-args.chunks.txt",
    ];

    fn framed() -> Vec<Vec<u8>> {
        STREAMS
            .iter()
            .map(|n| as_frames(&read(&format!("bedrock/{n}"))))
            .chain([exception_frame(
                "throttlingException",
                r#"{"message":"slow down"}"#,
            )])
            .collect()
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn fuzz_bedrock_event_stream_any_bytes_any_split(bytes in mutated(framed()), at in cuts()) {
            let mut frames = FrameDecoder::new();
            let mut messages = Vec::new();
            for piece in pieces(&bytes, &at) {
                if frames.feed(piece, &mut messages).is_err() {
                    break;
                }
            }
            let payload: usize = messages.iter().map(|m| m.payload.len()).sum();
            prop_assert!(payload <= bytes.len());
            prop_assert!(frames.pending() <= bytes.len());
            if let Ok(events) = decode_bytes(&pieces(&bytes, &at)) {
                prop_assert!(events.len() <= bytes.len());
                let mut c = Collector::new();
                for e in &events {
                    if c.push(e).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Found by the bounded fuzzing in CI: a Converse answer whose content holds a string where an
/// object belongs made serde quote the whole string in the error (1,148 bytes from a mutated
/// recording). Protocol errors are clipped, in every provider, by `Error::protocol`.
#[test]
fn a_protocol_error_never_quotes_a_long_upstream_value_whole() {
    let long = "Let me count the r's. ".repeat(60);
    let body = json!({"output": {"message": {"role": "assistant", "content": [long]}}, "stopReason": "end_turn"});
    let e = decode_whole(body.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.is_retryable());
    assert!(
        e.message.len() <= relais_core::Error::MAX_PROTOCOL_MESSAGE + 3,
        "{} bytes",
        e.message.len()
    );
}
