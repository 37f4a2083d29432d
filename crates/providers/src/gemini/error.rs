//! Gemini failures → canonical errors, with the vendor's message kept but its secrets removed.
//!
//! Google names the class of every error with a canonical gRPC code (`error.status`), in HTTP
//! bodies and in-stream chunks alike, so the code decides and the HTTP status is only the fallback
//! (for proxies and bodies that are not Google's). Two classes need more than the code: an
//! invalid AI Studio key is a 400 `INVALID_ARGUMENT` told apart by its `ErrorInfo` reason, and an
//! overlong prompt is a 400 told apart by its message. A 429's wait comes in the body, as a
//! `google.rpc.RetryInfo` detail (`"retryDelay": "34.4s"`), not in a `retry-after` header.

use std::time::Duration;

use relais_core::{Error, ErrorKind, Retry, Secret, redact};
use serde_json::Value;

use super::wire::{GeminiError, GeminiErrorResponse};

/// Longest wait honoured from a `RetryInfo`, like `retry-after` (see `crate::http::retry_after`).
const MAX_RETRY_DELAY_SECS: u64 = 86_400;

/// Classify a non-2xx response by its status code name, HTTP status and message.
pub(crate) fn from_response(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    secrets: &[&Secret],
) -> Error {
    let parsed = parse(body);
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("upstream answered HTTP {status}")
            } else {
                text.to_owned()
            }
        });
    let code = parsed.as_ref().and_then(|e| e.status.as_deref());
    let details = parsed.as_ref().map_or(&[][..], |e| e.details.as_slice());
    let kind = classify(code, Some(status), &message, details);
    let mut err = Error::upstream(kind, redact(&message, secrets)).with_status(status);
    if err.is_retryable() {
        if let Some(after) = retry_delay(details).or_else(|| crate::http::retry_after(headers)) {
            err.retry = Retry::After(after);
        }
    }
    err
}

/// Google's error body, also when it comes as a one-element array (the shape of
/// `streamGenerateContent` without `alt=sse`).
fn parse(body: &[u8]) -> Option<GeminiError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let value = match value {
        Value::Array(items) => items.into_iter().next()?,
        other => other,
    };
    serde_json::from_value::<GeminiErrorResponse>(value)
        .ok()?
        .error
}

/// An `error` inside a 200 stream, or a 200 body that is an error.
pub(crate) fn in_stream(err: &GeminiError) -> Error {
    let message = err
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("upstream reported an error mid-stream");
    let status = err.code.and_then(|c| u16::try_from(c).ok());
    let kind = classify(err.status.as_deref(), status, message, &err.details);
    let mut e = Error::upstream(kind, redact(message, &[]));
    if e.is_retryable() {
        if let Some(after) = retry_delay(&err.details) {
            e.retry = Retry::After(after);
        }
    }
    e
}

/// A prompt Gemini refused to answer (`promptFeedback.blockReason`): 200 with no candidates.
pub(crate) fn prompt_blocked(reason: &str, message: Option<&str>) -> Error {
    let mut text = format!("the prompt was blocked by the upstream's content filter ({reason})");
    if let Some(m) = message.map(str::trim).filter(|m| !m.is_empty()) {
        text.push_str(": ");
        text.push_str(m);
    }
    Error::upstream(ErrorKind::ContentFiltered, redact(&text, &[]))
}

fn classify(
    code: Option<&str>,
    status: Option<u16>,
    message: &str,
    details: &[Value],
) -> ErrorKind {
    if is_bad_api_key(message, details) {
        return ErrorKind::Auth;
    }
    let kind = match code {
        Some("INVALID_ARGUMENT" | "OUT_OF_RANGE") => ErrorKind::BadRequest,
        Some("UNAUTHENTICATED") => ErrorKind::Auth,
        // FAILED_PRECONDITION is the account's state, not the request's: "User location is not
        // supported", a free tier not offered in a country, billing not enabled.
        Some("PERMISSION_DENIED" | "FAILED_PRECONDITION") => ErrorKind::PermissionDenied,
        // UNIMPLEMENTED: the model does not serve this method, as NOT_FOUND says for an unknown
        // model (`models/x is not found ... or is not supported for generateContent`).
        Some("NOT_FOUND" | "UNIMPLEMENTED") => ErrorKind::NotFound,
        Some("RESOURCE_EXHAUSTED") => ErrorKind::RateLimited,
        Some("UNAVAILABLE") => ErrorKind::Overloaded,
        Some("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
        Some("INTERNAL" | "UNKNOWN" | "ABORTED" | "CANCELLED" | "DATA_LOSS") => ErrorKind::Server,
        _ => match status {
            Some(400 | 422) => ErrorKind::BadRequest,
            Some(401) => ErrorKind::Auth,
            Some(402 | 403) => ErrorKind::PermissionDenied,
            Some(404) => ErrorKind::NotFound,
            Some(408 | 504) => ErrorKind::Timeout,
            Some(413) => ErrorKind::PayloadTooLarge,
            Some(429) => ErrorKind::RateLimited,
            Some(503 | 529) => ErrorKind::Overloaded,
            Some(409 | 499 | 500..=599) | None => ErrorKind::Server,
            Some(_) => ErrorKind::BadRequest,
        },
    };
    if kind == ErrorKind::BadRequest && is_context_overflow(message) {
        ErrorKind::ContextWindowExceeded
    } else {
        kind
    }
}

/// AI Studio answers a wrong or expired key with 400 `INVALID_ARGUMENT` ("API key not valid.
/// Please pass a valid API key.") and an `ErrorInfo` detail whose reason says so. It is the
/// gateway's credential that failed, not the client's request.
fn is_bad_api_key(message: &str, details: &[Value]) -> bool {
    let by_reason = details.iter().any(|d| {
        matches!(
            d.get("reason").and_then(Value::as_str),
            Some("API_KEY_INVALID" | "API_KEY_EXPIRED")
        )
    });
    by_reason || message.contains("API key not valid") || message.contains("API key expired")
}

/// Gemini reports an overlong prompt as a plain `INVALID_ARGUMENT`; only the message tells it
/// apart: "The input token count (1250000) exceeds the maximum number of tokens allowed
/// (1048576)." on both APIs.
fn is_context_overflow(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "input token count",
        "exceeds the maximum number of tokens",
        "context window",
        "context length",
        "prompt is too long",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The wait a `google.rpc.RetryInfo` detail asks for.
pub(crate) fn retry_delay(details: &[Value]) -> Option<Duration> {
    let info = details.iter().find(|d| {
        d.get("@type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
    })?;
    match info.get("retryDelay")? {
        Value::String(s) => parse_duration(s),
        // The proto form, which a proxy re-encoding the message might produce.
        Value::Object(d) => {
            let seconds = match d.get("seconds") {
                Some(Value::String(s)) => s.parse::<u64>().ok()?,
                Some(v) => v.as_u64()?,
                None => 0,
            };
            let nanos = d
                .get("nanos")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n < 1_000_000_000)
                .unwrap_or(0);
            Some(Duration::new(seconds.min(MAX_RETRY_DELAY_SECS), nanos))
        }
        _ => None,
    }
}

/// A protobuf JSON duration: decimal seconds with an `s` suffix (`"7s"`, `"1.5s"`, `"34.4s"`),
/// read exactly (no float rounding), capped at a day.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let number = text.trim().strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let seconds = if whole.is_empty() {
        0
    } else {
        // Longer than u64: more than a day anyway.
        whole.parse::<u64>().unwrap_or(u64::MAX)
    };
    if seconds >= MAX_RETRY_DELAY_SECS {
        return Some(Duration::from_secs(MAX_RETRY_DELAY_SECS));
    }
    let mut nanos: u32 = 0;
    for (i, b) in fraction.bytes().take(9).enumerate() {
        let place = 10u32.pow(8 - u32::try_from(i).unwrap_or(8));
        nanos += u32::from(b - b'0') * place;
    }
    Some(Duration::new(seconds, nanos))
}

/// Undecodable upstream output (see [`Error::protocol`]).
pub(crate) fn protocol(message: impl Into<String>) -> Error {
    Error::protocol(message)
}
