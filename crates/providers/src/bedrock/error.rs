//! Bedrock failures → canonical errors, with the vendor's message kept but its secrets removed.
//!
//! AWS names the class of an error in the `x-amzn-ErrorType` header of an HTTP error
//! (`ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/`), in a body's
//! `__type` (`com.amazon.coral.service#UnrecognizedClientException`), or in the
//! `:exception-type` header of an in-stream exception (`throttlingException`, first letter in
//! lower case). The name decides; the status is the fallback for proxies and unknown names.
//! The name is not kept as the error's `code`: dialects then give the codes their clients know
//! (`rate_limit_exceeded`, `context_length_exceeded`, ...).

use relais_core::{Error, ErrorKind, Retry, Secret, redact};
use serde_json::Value;

/// Classify a non-2xx response by its error type, status and message.
pub(crate) fn from_response(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    secrets: &[&Secret],
) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(message_of).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            format!("upstream answered HTTP {status}")
        } else {
            text.to_owned()
        }
    });
    let error_type = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("__type"))
                .and_then(Value::as_str)
        })
        .and_then(type_name);
    let kind = classify(error_type, Some(status), &message);
    let mut err = Error::upstream(kind, redact(&message, secrets)).with_status(status);
    if err.is_retryable() {
        if let Some(after) = crate::http::retry_after(headers) {
            err.retry = Retry::After(after);
        }
    }
    err
}

/// An `exception` message inside a 200 event stream (`:exception-type` names it, the payload is
/// `{"message": ...}`).
pub(crate) fn exception(exception_type: Option<&str>, payload: &[u8]) -> Error {
    let message = serde_json::from_slice::<Value>(payload)
        .ok()
        .as_ref()
        .and_then(message_of)
        .unwrap_or_else(|| "upstream reported an error mid-stream".to_owned());
    let name = exception_type.and_then(type_name);
    Error::upstream(classify(name, None, &message), redact(&message, &[]))
}

/// An `error` message inside an event stream: a failure of the stream itself, named by its
/// `:error-code` and `:error-message` headers.
pub(crate) fn stream_error(code: Option<&str>, message: Option<&str>) -> Error {
    let message = message
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("upstream reported an error mid-stream");
    let name = code.and_then(type_name);
    Error::upstream(classify(name, None, message), redact(message, &[]))
}

/// Undecodable upstream output. Retryable: when it happens before the first event reached the
/// client, another deployment can still answer.
pub(crate) fn protocol(message: impl Into<String>) -> Error {
    Error::protocol(message)
}

/// `message` (AWS JSON protocols) or `Message` (some AWS front ends).
fn message_of(body: &Value) -> Option<String> {
    body.get("message")
        .or_else(|| body.get("Message"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}

/// The bare name of an AWS error type: no `:namespace-url` suffix, no `namespace#` prefix.
fn type_name(raw: &str) -> Option<&str> {
    let name = raw.split(':').next().unwrap_or_default();
    let name = name.rsplit('#').next().unwrap_or_default().trim();
    (!name.is_empty()).then_some(name)
}

fn classify(error_type: Option<&str>, status: Option<u16>, message: &str) -> ErrorKind {
    let by_type = error_type.and_then(|t| match t.to_ascii_lowercase().as_str() {
        "throttlingexception" | "toomanyrequestsexception" | "servicequotaexceededexception" => {
            Some(ErrorKind::RateLimited)
        }
        // A model still loading, or no capacity: another deployment may have some.
        "serviceunavailableexception" | "modelnotreadyexception" => Some(ErrorKind::Overloaded),
        // `modelErrorException` (424): the model itself failed; `modelStreamErrorException`: it
        // failed mid-stream. Both say "retry your request".
        "internalserverexception"
        | "internalfailure"
        | "modelerrorexception"
        | "modelstreamerrorexception" => Some(ErrorKind::Server),
        "modeltimeoutexception" | "requesttimeoutexception" => Some(ErrorKind::Timeout),
        "validationexception" => Some(ErrorKind::BadRequest),
        // The gateway's credentials are wrong, expired or badly signed.
        "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "incompletesignatureexception"
        | "missingauthenticationtokenexception"
        | "expiredtokenexception"
        | "invalidclienttokenid"
        | "signaturedoesnotmatch" => Some(ErrorKind::Auth),
        // The credentials are valid but may not use this model (IAM policy, model access not
        // granted): nothing the client can fix, and not an outage either.
        "accessdeniedexception" => Some(ErrorKind::PermissionDenied),
        "resourcenotfoundexception" => Some(ErrorKind::NotFound),
        _ => None,
    });
    let kind = by_type.unwrap_or(match status {
        Some(400 | 422) => ErrorKind::BadRequest,
        Some(401) => ErrorKind::Auth,
        Some(402 | 403) => ErrorKind::PermissionDenied,
        Some(404) => ErrorKind::NotFound,
        Some(408 | 504) => ErrorKind::Timeout,
        Some(413) => ErrorKind::PayloadTooLarge,
        Some(429) => ErrorKind::RateLimited,
        Some(503) => ErrorKind::Overloaded,
        Some(409 | 424 | 500..=599) | None => ErrorKind::Server,
        Some(_) => ErrorKind::BadRequest,
    });
    if kind == ErrorKind::BadRequest && is_context_overflow(message) {
        ErrorKind::ContextWindowExceeded
    } else {
        kind
    }
}

/// Bedrock reports an overlong prompt as a plain `ValidationException`; only the message tells
/// it apart: "Input is too long for requested model.", or the model's own words passed through
/// ("prompt is too long: 208164 tokens > 200000 maximum", "input length and `max_tokens` exceed
/// context limit", "...exceeds the maximum number of input tokens").
fn is_context_overflow(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "input is too long",
        "prompt is too long",
        "too many input tokens",
        "maximum number of input tokens",
        "context limit",
        "context window",
        "context length",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}
