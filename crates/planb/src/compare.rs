//! One shadow sample: the primary's answer and a backup's answer to the same request, scored on
//! measurable axes. An axis that does not apply to the request (tool agreement when no tool was
//! called, JSON validity when no JSON was asked for) is `None`, not a free pass.

use std::collections::HashMap;

use relais_core::{ChatRequest, ChatResponse, FinishReason, ResponseFormat};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the request used that not every deployment has: the capability-gap check compares the
/// features of the primary's traffic with what a backup can serve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub tools: bool,
    pub images: bool,
    pub json_schema: bool,
    pub stream: bool,
}

impl Features {
    pub fn of(req: &ChatRequest) -> Self {
        Self {
            tools: !req.tools.is_empty(),
            images: req.has_images(),
            json_schema: matches!(req.response_format, Some(ResponseFormat::JsonSchema { .. })),
            stream: req.stream,
        }
    }

    /// As a small integer for storage.
    pub fn bits(self) -> u32 {
        u32::from(self.tools)
            | u32::from(self.images) << 1
            | u32::from(self.json_schema) << 2
            | u32::from(self.stream) << 3
    }

    pub fn from_bits(b: u32) -> Self {
        Self {
            tools: b & 1 != 0,
            images: b & 2 != 0,
            json_schema: b & 4 != 0,
            stream: b & 8 != 0,
        }
    }
}

/// How one side answered: the folded response, or the class of its error; and what it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub result: Result<ChatResponse, String>,
    pub latency_us: u64,
    /// Until the first content event; `None` when nothing came.
    pub ttft_us: Option<u64>,
    pub cost_pusd: u64,
}

/// The scores of one sample. Ratios and similarities are in [0, 1] except `length_ratio`
/// (backup over primary, 1 = same length).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// The backup answered without error.
    pub ok: bool,
    /// Its error class when it did not.
    pub error_class: Option<String>,
    /// The primary answered without error (a sample is still useful when it did not).
    pub live_ok: bool,
    pub latency_us: u64,
    pub live_latency_us: u64,
    pub ttft_us: Option<u64>,
    pub live_ttft_us: Option<u64>,
    pub cost_pusd: u64,
    pub live_cost_pusd: u64,
    /// Output length, backup over primary (tokens when both report them, else characters).
    pub length_ratio: Option<f64>,
    pub finish_agree: Option<bool>,
    /// Same tools called, with the same arguments after normalisation.
    pub tools_agree: Option<bool>,
    /// Every tool call of the backup names a tool of the request and its arguments are valid
    /// against that tool's schema.
    pub tool_args_valid: Option<bool>,
    /// The request asked for JSON: the backup's text is JSON (conforming to the schema when
    /// one was given).
    pub json_valid: Option<bool>,
    pub refusal: bool,
    pub live_refusal: bool,
    /// Lexical similarity of the two texts (cosine of word counts), or an embedding
    /// similarity when the gateway has one configured.
    pub similarity: Option<f64>,
    pub features: Features,
}

/// Score a backup's `shadow` outcome against the primary's `live` one for `req`.
pub fn compare(req: &ChatRequest, live: &Outcome, shadow: &Outcome) -> Scores {
    let mut s = Scores {
        ok: shadow.result.is_ok(),
        error_class: shadow.result.as_ref().err().cloned(),
        live_ok: live.result.is_ok(),
        latency_us: shadow.latency_us,
        live_latency_us: live.latency_us,
        ttft_us: shadow.ttft_us,
        live_ttft_us: live.ttft_us,
        cost_pusd: shadow.cost_pusd,
        live_cost_pusd: live.cost_pusd,
        features: Features::of(req),
        ..Scores::default()
    };
    let Ok(b) = &shadow.result else {
        s.live_refusal = live.result.as_ref().is_ok_and(refused);
        return s;
    };
    s.refusal = refused(b);
    s.tool_args_valid = (!b.tool_calls.is_empty()).then(|| tool_args_valid(req, b));
    s.json_valid = json_wanted(req).map(|schema| json_valid(&b.text, schema));
    let Ok(a) = &live.result else {
        return s;
    };
    s.live_refusal = refused(a);
    s.length_ratio = length_ratio(a, b);
    s.finish_agree = match (a.finish, b.finish) {
        (Some(x), Some(y)) => Some(x == y),
        _ => None,
    };
    if !a.tool_calls.is_empty() || !b.tool_calls.is_empty() {
        s.tools_agree = Some(tools_agree(a, b));
    }
    if !a.text.is_empty() || !b.text.is_empty() {
        s.similarity = Some(lexical_similarity(&a.text, &b.text));
    }
    s
}

/// Whether an answer is a refusal: the vendor said so (a refusal field, a content filter), or
/// the text opens the way refusals do and is short.
pub fn refused(r: &ChatResponse) -> bool {
    if r.refusal.as_deref().is_some_and(|t| !t.trim().is_empty())
        || matches!(
            r.finish,
            Some(FinishReason::Refusal | FinishReason::ContentFilter)
        )
    {
        return true;
    }
    if !r.tool_calls.is_empty() {
        return false;
    }
    let head: String = r
        .text
        .trim_start()
        .chars()
        .take(160)
        .collect::<String>()
        .to_lowercase();
    let head = head.replace('\u{2019}', "'");
    const OPENINGS: [&str; 12] = [
        "i'm sorry, but i can't",
        "i'm sorry, but i cannot",
        "i am sorry, but i cannot",
        "sorry, but i can't",
        "i can't help with",
        "i cannot help with",
        "i can't assist with",
        "i cannot assist with",
        "i'm not able to help",
        "i am not able to help",
        "i won't be able to help",
        "i can't provide",
    ];
    r.text.chars().count() < 600 && OPENINGS.iter().any(|o| head.contains(o))
}

fn length_ratio(a: &ChatResponse, b: &ChatResponse) -> Option<f64> {
    let tokens = |r: &ChatResponse| r.usage.map(|u| u.output_tokens).filter(|n| *n > 0);
    let (x, y) = match (tokens(a), tokens(b)) {
        (Some(x), Some(y)) => (x as f64, y as f64),
        _ => {
            let len = |r: &ChatResponse| {
                r.text.chars().count()
                    + r.tool_calls
                        .iter()
                        .map(|c| c.arguments.len())
                        .sum::<usize>()
            };
            (len(a) as f64, len(b) as f64)
        }
    };
    (x > 0.0).then(|| y / x)
}

/// Arguments after normalisation: parsed JSON (key order and spacing do not matter), or the
/// trimmed text when it is not JSON.
fn normalised(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(serde_json::Map::new());
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.trim().to_owned()))
}

fn tools_agree(a: &ChatResponse, b: &ChatResponse) -> bool {
    // The same calls in any order: compare as multisets of (name, normalised arguments).
    let key = |r: &ChatResponse| {
        let mut calls: Vec<String> = r
            .tool_calls
            .iter()
            .map(|c| format!("{}\u{0}{}", c.name, normalised(&c.arguments)))
            .collect();
        calls.sort_unstable();
        calls
    };
    key(a) == key(b)
}

fn tool_args_valid(req: &ChatRequest, b: &ChatResponse) -> bool {
    let schemas: HashMap<&str, Option<&Value>> = req
        .tools
        .iter()
        .map(|t| (t.name.as_str(), t.parameters.as_ref()))
        .collect();
    b.tool_calls.iter().all(|c| {
        let Some(schema) = schemas.get(c.name.as_str()) else {
            return false; // a tool the request did not offer
        };
        let Ok(args) = c.arguments_object() else {
            return false;
        };
        schema.is_none_or(|s| crate::schema::validate(&Value::Object(args), s).is_ok())
    })
}

/// `Some(schema)` when the request asked for JSON (`Some(None)`: any JSON object).
fn json_wanted(req: &ChatRequest) -> Option<Option<&Value>> {
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => Some(None),
        Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema.as_ref()),
        _ => None,
    }
}

fn json_valid(text: &str, schema: Option<&Value>) -> bool {
    // Models sometimes fence JSON in markdown; a client parsing the text would fail on that, so
    // it counts as invalid.
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(v) => schema.is_none_or(|s| crate::schema::validate(&v, s).is_ok()),
        Err(_) => false,
    }
}

/// Cosine similarity of the two texts' word counts (lower-cased, split on anything that is not
/// a letter or digit): 1 for the same words in any order, 0 for no word in common. Cheap,
/// deterministic, and good at telling "the same answer reworded" from "another answer".
pub fn lexical_similarity(a: &str, b: &str) -> f64 {
    let counts = |t: &str| {
        let mut m: HashMap<String, f64> = HashMap::new();
        for w in t
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *m.entry(w.to_lowercase()).or_default() += 1.0;
        }
        m
    };
    let (x, y) = (counts(a), counts(b));
    if x.is_empty() && y.is_empty() {
        return 1.0;
    }
    let dot: f64 = x.iter().filter_map(|(w, n)| y.get(w).map(|m| n * m)).sum();
    let norm = |m: &HashMap<String, f64>| m.values().map(|n| n * n).sum::<f64>().sqrt();
    let d = norm(&x) * norm(&y);
    if d == 0.0 { 0.0 } else { round12(dot / d) }
}

/// Rounded to 12 decimals, so the same text scores exactly 1 rather than 0.9999999999999998.
fn round12(x: f64) -> f64 {
    (x * 1e12).round() / 1e12
}

/// Cosine similarity of two embedding vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let mut dot = 0.0f64;
    let mut na = 0.0f64;
    let mut nb = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let d = na.sqrt() * nb.sqrt();
    (d > 0.0).then(|| round12(dot / d))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use relais_core::{Message, Role, Tool, ToolCall, Usage};
    use serde_json::json;

    fn answer(text: &str, output_tokens: u64) -> ChatResponse {
        ChatResponse {
            text: text.to_owned(),
            finish: Some(FinishReason::Stop),
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens,
                ..Usage::default()
            }),
            ..ChatResponse::default()
        }
    }

    fn outcome(r: Result<ChatResponse, &str>, latency_ms: u64, cost: u64) -> Outcome {
        Outcome {
            result: r.map_err(str::to_owned),
            latency_us: latency_ms * 1000,
            ttft_us: Some(latency_ms * 500),
            cost_pusd: cost,
        }
    }

    fn ask() -> ChatRequest {
        ChatRequest {
            model: "r".into(),
            messages: vec![Message::text(Role::User, "What is the capital of France?")],
            ..ChatRequest::default()
        }
    }

    fn weather_request() -> ChatRequest {
        ChatRequest {
            tools: vec![Tool {
                name: "get_weather".into(),
                description: None,
                parameters: Some(json!({
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                    "required": ["city"]
                })),
                strict: None,
                cache: None,
            }],
            ..ask()
        }
    }

    fn calls(args: &str) -> ChatResponse {
        ChatResponse {
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "get_weather".into(),
                arguments: args.into(),
            }],
            finish: Some(FinishReason::ToolCalls),
            ..ChatResponse::default()
        }
    }

    #[test]
    fn identical_answers_agree_on_every_axis() {
        let a = answer("The capital of France is Paris.", 8);
        let s = compare(
            &ask(),
            &outcome(Ok(a.clone()), 100, 50),
            &outcome(Ok(a), 100, 50),
        );
        assert!(s.ok && s.live_ok);
        assert_eq!(s.similarity, Some(1.0));
        assert_eq!(s.length_ratio, Some(1.0));
        assert_eq!(s.finish_agree, Some(true));
        assert!(!s.refusal && !s.live_refusal);
        // Axes that do not apply stay unset.
        assert_eq!(
            (s.tools_agree, s.tool_args_valid, s.json_valid),
            (None, None, None)
        );
    }

    #[test]
    fn different_tool_arguments_disagree_but_may_still_be_valid() {
        let req = weather_request();
        let live = outcome(Ok(calls(r#"{"city":"Paris","unit":"c"}"#)), 100, 50);
        // Same call, other key order and spacing: agreement after normalisation.
        let same = compare(
            &req,
            &live,
            &outcome(Ok(calls(r#"{ "unit": "c", "city": "Paris" }"#)), 90, 40),
        );
        assert_eq!(same.tools_agree, Some(true));
        assert_eq!(same.tool_args_valid, Some(true));
        // Another city: valid against the schema, but not the same call.
        let other = compare(
            &req,
            &live,
            &outcome(Ok(calls(r#"{"city":"Lyon","unit":"c"}"#)), 90, 40),
        );
        assert_eq!(other.tools_agree, Some(false));
        assert_eq!(other.tool_args_valid, Some(true));
        // Missing the required city and an unknown unit: invalid.
        let bad = compare(&req, &live, &outcome(Ok(calls(r#"{"unit":"k"}"#)), 90, 40));
        assert_eq!(bad.tools_agree, Some(false));
        assert_eq!(bad.tool_args_valid, Some(false));
        // Not JSON at all.
        let broken = compare(&req, &live, &outcome(Ok(calls(r#"{"city":"Par"#)), 90, 40));
        assert_eq!(broken.tool_args_valid, Some(false));
        // Text where the primary called a tool.
        let text = compare(&req, &live, &outcome(Ok(answer("It is sunny.", 4)), 90, 40));
        assert_eq!(text.tools_agree, Some(false));
        assert_eq!(text.finish_agree, Some(false));
    }

    #[test]
    fn invalid_json_is_caught_when_json_was_asked_for() {
        let schema = json!({"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]});
        let req = ChatRequest {
            response_format: Some(ResponseFormat::JsonSchema {
                name: "a".into(),
                schema: Some(schema),
                strict: None,
                description: None,
            }),
            ..ask()
        };
        let live = outcome(Ok(answer(r#"{"capital":"Paris"}"#, 5)), 100, 50);
        let good = compare(
            &req,
            &live,
            &outcome(Ok(answer(r#"{"capital": "Paris"}"#, 5)), 100, 50),
        );
        assert_eq!(good.json_valid, Some(true));
        let fenced = compare(
            &req,
            &live,
            &outcome(
                Ok(answer("```json\n{\"capital\":\"Paris\"}\n```", 9)),
                100,
                50,
            ),
        );
        assert_eq!(fenced.json_valid, Some(false));
        let wrong = compare(
            &req,
            &live,
            &outcome(Ok(answer(r#"{"city":"Paris"}"#, 5)), 100, 50),
        );
        assert_eq!(wrong.json_valid, Some(false));
        let object = ChatRequest {
            response_format: Some(ResponseFormat::JsonObject),
            ..ask()
        };
        let any = compare(
            &object,
            &live,
            &outcome(Ok(answer(r#"{"city":"Paris"}"#, 5)), 100, 50),
        );
        assert_eq!(any.json_valid, Some(true));
    }

    #[test]
    fn a_refusal_is_detected_on_either_side() {
        let live = outcome(Ok(answer("The capital of France is Paris.", 8)), 100, 50);
        let no = answer("I'm sorry, but I can\u{2019}t help with that request.", 11);
        let s = compare(&ask(), &live, &outcome(Ok(no.clone()), 100, 50));
        assert!(s.refusal && !s.live_refusal);
        assert!(s.similarity.unwrap() < 0.3, "{:?}", s.similarity);
        let flagged = ChatResponse {
            refusal: Some("I can't do that.".into()),
            ..ChatResponse::default()
        };
        assert!(refused(&flagged));
        let filtered = ChatResponse {
            finish: Some(FinishReason::ContentFilter),
            ..ChatResponse::default()
        };
        assert!(refused(&filtered));
        // A long answer that apologises first is an answer.
        let long = answer(
            &format!(
                "I'm sorry, but I can't be sure; {}",
                "Paris is the capital. ".repeat(40)
            ),
            200,
        );
        assert!(!refused(&long));
        let both = compare(
            &ask(),
            &outcome(Ok(no.clone()), 100, 50),
            &outcome(Ok(no), 100, 50),
        );
        assert!(both.refusal && both.live_refusal);
    }

    #[test]
    fn a_slower_cheaper_backup_shows_both_deltas() {
        let live = outcome(Ok(answer("Paris is the capital of France.", 8)), 100, 1_000);
        let backup = outcome(
            Ok(answer("The capital of France is Paris, of course.", 12)),
            250,
            200,
        );
        let s = compare(&ask(), &live, &backup);
        assert_eq!((s.latency_us, s.live_latency_us), (250_000, 100_000));
        assert_eq!((s.cost_pusd, s.live_cost_pusd), (200, 1_000));
        assert_eq!(s.length_ratio, Some(1.5));
        let sim = s.similarity.unwrap();
        assert!(sim > 0.7 && sim < 1.0, "{sim}");
    }

    #[test]
    fn a_failed_backup_scores_its_error_class_only() {
        let live = outcome(Ok(answer("Paris.", 2)), 100, 50);
        let s = compare(&ask(), &live, &outcome(Err("rate_limited"), 5, 0));
        assert!(!s.ok && s.live_ok);
        assert_eq!(s.error_class.as_deref(), Some("rate_limited"));
        assert_eq!((s.similarity, s.finish_agree), (None, None));
    }

    #[test]
    fn features_round_trip_through_bits() {
        for b in 0..16 {
            assert_eq!(Features::from_bits(b).bits(), b);
        }
        assert!(Features::of(&weather_request()).tools);
    }

    #[test]
    fn similarity_bounds() {
        assert_eq!(lexical_similarity("a b c", "c b a"), 1.0);
        assert_eq!(lexical_similarity("alpha beta", "gamma delta"), 0.0);
        assert_eq!(cosine(&[1.0, 0.0], &[1.0, 0.0]), Some(1.0));
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), None);
    }
}
