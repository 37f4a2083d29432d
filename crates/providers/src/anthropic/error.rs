//! Anthropic failures → canonical errors, with the vendor's message kept but its secrets removed.
//!
//! Anthropic names the class of every error in `error.type`, in HTTP bodies and in-stream `error`
//! events alike, so the type decides and the status is only the fallback (for proxies and bodies
//! that are not Anthropic's). Its 529 `overloaded_error` is the one status no other vendor uses.

use relais_core::{Error, ErrorKind, Retry, Secret, redact};

use super::wire::{AnthropicError, AnthropicErrorResponse};

/// Classify a non-2xx response by its error type, status and message.
pub(crate) fn from_response(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    secrets: &[&Secret],
) -> Error {
    let parsed = serde_json::from_slice::<AnthropicErrorResponse>(body)
        .ok()
        .and_then(|r| r.error);
    let error_type = parsed.as_ref().and_then(|e| e.kind.as_deref());
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
    let kind = classify(error_type, Some(status), &message);
    let mut err = Error::upstream(kind, redact(&message, secrets)).with_status(status);
    if err.is_retryable() {
        if let Some(after) = crate::http::retry_after(headers) {
            err.retry = Retry::After(after);
        }
    }
    err
}

/// An `error` event inside a 200 stream (`overloaded_error` is the common one: capacity ran out
/// after the response started).
pub(crate) fn in_stream(err: Option<&AnthropicError>) -> Error {
    let error_type = err.and_then(|e| e.kind.as_deref());
    let message = err
        .and_then(|e| e.message.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("upstream reported an error mid-stream");
    Error::upstream(classify(error_type, None, message), redact(message, &[]))
}

fn classify(error_type: Option<&str>, status: Option<u16>, message: &str) -> ErrorKind {
    let kind = match error_type {
        Some("invalid_request_error") => ErrorKind::BadRequest,
        Some("authentication_error") => ErrorKind::Auth,
        // An account without credit: nothing the client can fix, and not an outage either.
        Some("permission_error" | "billing_error") => ErrorKind::PermissionDenied,
        Some("not_found_error") => ErrorKind::NotFound,
        Some("request_too_large") => ErrorKind::PayloadTooLarge,
        Some("rate_limit_error") => ErrorKind::RateLimited,
        Some("timeout_error") => ErrorKind::Timeout,
        Some("overloaded_error") => ErrorKind::Overloaded,
        Some("api_error") => ErrorKind::Server,
        _ => match status {
            Some(400 | 422) => ErrorKind::BadRequest,
            Some(401) => ErrorKind::Auth,
            Some(402 | 403) => ErrorKind::PermissionDenied,
            Some(404) => ErrorKind::NotFound,
            Some(408 | 504) => ErrorKind::Timeout,
            Some(413) => ErrorKind::PayloadTooLarge,
            Some(429) => ErrorKind::RateLimited,
            Some(503 | 529) => ErrorKind::Overloaded,
            Some(409 | 500..=599) | None => ErrorKind::Server,
            Some(_) => ErrorKind::BadRequest,
        },
    };
    if kind == ErrorKind::BadRequest && is_context_overflow(message) {
        ErrorKind::ContextWindowExceeded
    } else {
        kind
    }
}

/// Anthropic reports an overlong prompt as a plain `invalid_request_error`; only the message
/// tells it apart ("prompt is too long: 208164 tokens > 200000 maximum", "input length and
/// `max_tokens` exceed context limit: ...").
fn is_context_overflow(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "prompt is too long",
        "context limit",
        "context window",
        "context length",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// Undecodable upstream output. Retryable: when it happens before the first event reached the
/// client, another deployment can still answer.
pub(crate) fn protocol(message: impl Into<String>) -> Error {
    Error::protocol(message)
}
