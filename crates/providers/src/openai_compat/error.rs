//! Upstream failures → canonical errors, with the vendor's message kept but its secrets removed.

use relais_core::{Error, ErrorKind, Retry, Secret, redact};
use serde_json::Value;

/// Classify an error response by status, code and message.
pub(crate) fn from_response(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    secrets: &[&Secret],
) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err_obj = parsed.as_ref().map(|v| v.get("error").unwrap_or(v));
    let field = |k: &str| -> Option<String> {
        err_obj.and_then(|e| e.get(k)).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let message = field("message")
        .or_else(|| field("detail"))
        .or_else(|| err_obj.and_then(validation_detail))
        .or_else(|| match err_obj {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("upstream answered HTTP {status}")
            } else {
                text.to_owned()
            }
        });
    let code = field("code");
    let kind_hint = field("type").unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    let code_or_type = |needle: &str| {
        code.as_deref().is_some_and(|c| c.contains(needle)) || kind_hint.contains(needle)
    };
    let kind = match status {
        400 | 422 => {
            if code_or_type("context_length")
                || lower.contains("maximum context length")
                || lower.contains("context window")
                || lower.contains("context length")
            {
                ErrorKind::ContextWindowExceeded
            } else if code_or_type("content_filter") || code_or_type("content_policy") {
                ErrorKind::ContentFiltered
            } else {
                ErrorKind::BadRequest
            }
        }
        401 => ErrorKind::Auth,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Timeout,
        413 => ErrorKind::PayloadTooLarge,
        429 => ErrorKind::RateLimited,
        503 | 529 => ErrorKind::Overloaded,
        504 => ErrorKind::Timeout,
        409 | 500..=599 => ErrorKind::Server,
        _ => ErrorKind::BadRequest,
    };
    let mut err = Error::upstream(kind, redact(&message, secrets)).with_status(status);
    err.code = code.map(|c| redact(&c, secrets));
    err.param = field("param");
    if let Some(after) = crate::http::retry_after(headers) {
        if err.is_retryable() {
            err.retry = Retry::After(after);
        }
    }
    err
}

/// FastAPI-style validation errors (Mistral's 422 `HTTPValidationError`, vLLM's):
/// `{"detail":[{"loc":["body","messages",0,"role"],"msg":"...","type":"..."}]}` becomes
/// `body.messages.0.role: ...; ...`, so the client learns which field was refused.
fn validation_detail(err: &Value) -> Option<String> {
    let items = err.get("detail")?.as_array()?;
    let parts: Vec<String> = items
        .iter()
        .filter_map(|d| {
            let msg = d.get("msg")?.as_str()?;
            let loc: Vec<String> = d
                .get("loc")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .map(|p| match p {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(if loc.is_empty() {
                msg.to_owned()
            } else {
                format!("{}: {msg}", loc.join("."))
            })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// An `{"error": ...}` object sent inside a 200 stream.
pub(crate) fn in_stream_error(err: &Value) -> Error {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| err.as_str())
        .unwrap_or("upstream reported an error mid-stream");
    let code = err.get("code").and_then(Value::as_str).map(str::to_owned);
    let kind = match code.as_deref() {
        Some(c) if c.contains("rate_limit") => ErrorKind::RateLimited,
        Some(c) if c.contains("context_length") => ErrorKind::ContextWindowExceeded,
        Some(c) if c.contains("content_filter") => ErrorKind::ContentFiltered,
        _ => ErrorKind::Server,
    };
    let mut e = Error::upstream(kind, redact(message, &[]));
    e.code = code;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> http::HeaderMap {
        http::HeaderMap::new()
    }

    #[test]
    fn classifies_fixture_error() {
        let body = std::fs::read(crate::openai_compat::tests::fixture(
            "openai/reasoning-model-legacy-parameter-error.json",
        ))
        .unwrap();
        let e = from_response(400, &h(), &body, &[]);
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(e.message.contains("max_completion_tokens"));
    }

    #[test]
    fn context_window_and_retry_after() {
        let e = from_response(
            400,
            &h(),
            br#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#,
            &[],
        );
        assert_eq!(e.kind, ErrorKind::ContextWindowExceeded);
        let mut headers = h();
        headers.insert("retry-after", http::HeaderValue::from_static("7"));
        let e = from_response(429, &headers, b"{}", &[]);
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
        let e = from_response(529, &h(), b"overloaded", &[]);
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.message, "overloaded");
    }

    /// Mistral's two error shapes (specs/mistral): a flat `{"object":"error",...}` and the
    /// 422 `HTTPValidationError` whose `detail` is a list of field errors.
    #[test]
    fn mistral_error_bodies() {
        let e = from_response(
            422,
            &h(),
            br#"{"detail":[{"loc":["body","messages",0,"role"],"msg":"Input should be 'user'","type":"literal_error"},{"loc":["body","model"],"msg":"Field required","type":"missing"}]}"#,
            &[],
        );
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(
            e.message,
            "body.messages.0.role: Input should be 'user'; body.model: Field required"
        );
        let e = from_response(
            400,
            &h(),
            br#"{"object":"error","message":"Prompt contains 40000 tokens, too large for model with 32768 maximum context length","type":"invalid_request_error","param":null,"code":null}"#,
            &[],
        );
        assert_eq!(e.kind, ErrorKind::ContextWindowExceeded);
        let e = from_response(
            429,
            &h(),
            br#"{"object":"error","message":"Requests rate limit exceeded","type":"rate_limited","param":null,"code":"1300"}"#,
            &[],
        );
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.message, "Requests rate limit exceeded");
    }

    #[test]
    fn secrets_are_redacted() {
        let key = Secret::new("sk-live-0123456789abcdef");
        let e = from_response(
            401,
            &h(),
            br#"{"error":{"message":"Incorrect API key provided: sk-live-0123456789abcdef.","code":"invalid_api_key"}}"#,
            &[&key],
        );
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(!e.message.contains("0123456789abcdef"), "{}", e.message);
    }
}
