//! Fuzz targets (issue 17): both inbound dialects' parsers fed real requests mutated at random
//! (see `relais_testkit::fuzz`). A client body gets a canonical request or a 400-class error:
//! never a panic, never a request larger than the body could describe.

#![allow(clippy::unwrap_used, reason = "test code")]

use proptest::prelude::*;
use relais_core::{ChatRequest, Error, Side};
use relais_dialects::{anthropic, openai};
use relais_testkit::fuzz::{config, mutated};
use serde_json::json;

fn openai_seeds() -> Vec<Vec<u8>> {
    [
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"a\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}],
            "tool_choice": "auto", "parallel_tool_calls": false, "reasoning_effort": "low",
            "user": "u", "metadata": {"k": "v"}, "logit_bias": {"50256": -100}
        }),
        json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8, "encoding_format": "float"}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

fn anthropic_seeds() -> Vec<Vec<u8>> {
    [
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        json!({
            "model": "m", "max_tokens": 1024, "stream": true, "temperature": 0.5, "top_k": 5,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u"},
            "thinking": {"type": "enabled", "budget_tokens": 512},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"a": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}], "is_error": false}
                ]}
            ],
            "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "container": "c", "service_tier": "auto"
        }),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

/// A parser's answer: an error the client is blamed for, or a request in proportion to the body.
fn check(len: usize, parsed: Result<ChatRequest, Error>) {
    match parsed {
        Ok(req) => {
            let parts: usize = req.messages.iter().map(|m| m.content.len()).sum();
            assert!(
                req.messages.len() + parts + req.tools.len() <= len,
                "{len} bytes parsed into {parts} parts"
            );
            let _ = req.estimate_input_tokens();
        }
        Err(e) => {
            assert_eq!(e.side, Side::Client, "{e:?}");
            assert!(!e.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_openai_chat(bytes in mutated(openai_seeds())) {
        check(bytes.len(), openai::parse_chat(&bytes));
    }

    #[test]
    fn fuzz_openai_embeddings(bytes in mutated(openai_seeds())) {
        if let Ok((req, _)) = openai::parse_embeddings(&bytes) {
            prop_assert!(req.input.len() <= bytes.len());
        }
    }

    #[test]
    fn fuzz_anthropic_messages(bytes in mutated(anthropic_seeds())) {
        check(bytes.len(), anthropic::parse_messages(&bytes));
    }

    #[test]
    fn fuzz_anthropic_count_tokens(bytes in mutated(anthropic_seeds())) {
        check(bytes.len(), anthropic::parse_count_tokens(&bytes));
    }
}
