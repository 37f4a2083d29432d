//! Fuzz targets (issue 17): every decoder this crate runs on a vendor's bytes, fed recordings of
//! that vendor mutated at random (see `relais_testkit::fuzz`). A decoder must answer with events
//! or an error: never panic, never produce more than its input could hold.

use proptest::prelude::*;
use relais_core::{Collector, Error, Secret, StreamEvent};
use relais_testkit::fuzz::{config, cuts, mutated, pieces};

use crate::sse::SseParser;

/// Every recording in `dirs` whose name ends with `ext`, as bytes.
fn recordings(dirs: &[&str], ext: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in dirs {
        let path = crate::openai_compat::tests::fixture(dir);
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for p in names {
            if p.to_string_lossy().ends_with(ext) {
                out.extend(std::fs::read(&p).ok());
            }
        }
    }
    assert!(!out.is_empty(), "no recordings for {dirs:?} {ext}");
    out
}

/// Recorded chunk files (one JSON payload a line) as the SSE bytes a vendor sends.
fn as_sse(chunks: &[Vec<u8>]) -> Vec<Vec<u8>> {
    chunks
        .iter()
        .map(|c| {
            String::from_utf8_lossy(c)
                .lines()
                .map(|l| format!("data: {l}\n\n"))
                .collect::<String>()
                .into_bytes()
        })
        .collect()
}

/// Events folded as a response is; a fold may refuse them, but must not panic.
fn fold(events: &[StreamEvent]) {
    let mut c = Collector::new();
    for e in events {
        if c.push(e).is_err() {
            return;
        }
    }
    let _ = c.finish();
}

/// A decoder's answer: checked for proportion, then folded.
fn check(input_len: usize, decoded: Result<Vec<StreamEvent>, Error>) {
    match decoded {
        Ok(events) => {
            assert!(
                events.len() <= input_len + 8,
                "{} events from {input_len} bytes",
                events.len()
            );
            fold(&events);
        }
        Err(e) => assert!(
            e.message.len() <= 1100,
            "an error message of {} bytes",
            e.message.len()
        ),
    }
}

fn lines(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const OPENAI: [&str; 3] = ["openai", "openai-compatible", "mistral"];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_sse_parser_any_bytes_any_split(
        bytes in mutated(as_sse(&recordings(&["openai", "anthropic", "google", "mistral"], ".chunks.txt"))),
        at in cuts(),
    ) {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces(&bytes, &at) {
            if p.feed(piece, &mut out).is_err() {
                break;
            }
        }
        p.finish(&mut out);
        // Invalid UTF-8 is read lossily: one bad byte becomes U+FFFD, three bytes.
        let data: usize = out.iter().map(|e| e.data.len()).sum();
        prop_assert!(data <= 3 * bytes.len());
        prop_assert!(out.len() <= bytes.len() / 2 + 1);
    }

    #[test]
    fn fuzz_openai_compat_whole(bytes in mutated(recordings(&OPENAI, ".json"))) {
        check(bytes.len(), crate::openai_compat::decode_whole(&bytes));
    }

    #[test]
    fn fuzz_openai_compat_stream(bytes in mutated(recordings(&OPENAI, ".chunks.txt"))) {
        let text = lines(&bytes);
        check(bytes.len(), crate::openai_compat::decode_chunks(text.lines()));
    }

    #[test]
    fn fuzz_anthropic_whole(bytes in mutated(recordings(&["anthropic"], ".json"))) {
        check(bytes.len(), crate::anthropic::decode_whole(&bytes));
    }

    #[test]
    fn fuzz_anthropic_stream(bytes in mutated(recordings(&["anthropic"], ".chunks.txt"))) {
        let text = lines(&bytes);
        check(bytes.len(), crate::anthropic::decode_chunks(text.lines()));
    }

    #[test]
    fn fuzz_gemini_whole(bytes in mutated(recordings(&["google"], ".json"))) {
        check(bytes.len(), crate::gemini::decode_whole(&bytes));
    }

    #[test]
    fn fuzz_gemini_stream(bytes in mutated(recordings(&["google"], ".chunks.txt"))) {
        let text = lines(&bytes);
        check(bytes.len(), crate::gemini::decode_chunks(text.lines()));
    }

    #[test]
    fn fuzz_bedrock_whole(bytes in mutated(recordings(&["bedrock"], ".json"))) {
        check(bytes.len(), crate::bedrock::decode_whole(&bytes));
    }

    #[test]
    fn fuzz_error_bodies_of_every_vendor(
        bytes in mutated(recordings(&["openai"], "-error.json")
            .into_iter()
            .chain(recordings(&["openai-responses"], "error.1.json"))
            .chain(recordings(&["google"], "retry-info.json"))
            .chain([
                br#"{"error":{"message":"bad key sk-abc","type":"invalid_request_error","param":"x","code":"invalid_api_key"}}"#.to_vec(),
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_vec(),
                br#"{"message":"The security token included in the request is invalid."}"#.to_vec(),
                br#"{"detail":[{"loc":["body","messages",0],"msg":"field required","type":"missing"}]}"#.to_vec(),
            ])
            .collect()),
        status in prop::sample::select(vec![400u16, 401, 403, 404, 408, 413, 422, 429, 500, 503, 529]),
    ) {
        let secret = Secret::new("relais-upstream-plain-secret");
        let secrets = [&secret];
        let headers = http::HeaderMap::new();
        for e in [
            crate::openai_compat::error::from_response(status, &headers, &bytes, &secrets),
            crate::anthropic::error::from_response(status, &headers, &bytes, &secrets),
            crate::gemini::error::from_response(status, &headers, &bytes, &secrets),
            crate::bedrock::error::from_response(status, &headers, &bytes, &secrets),
        ] {
            prop_assert!(e.message.len() <= 1100);
            prop_assert!(!e.message.contains("relais-upstream-plain-secret"));
        }
    }
}
