use relais_core::{Error, ErrorKind, Side};
use serde_json::{Value, json};

/// HTTP status for an error in the OpenAI dialect.
///
/// Upstream failures the client can act on keep their class (429 stays 429, a context-window
/// error stays 400); failures of the gateway's own upstream credentials or configuration become
/// 502, because the client's key was fine and it should not think otherwise.
pub fn error_status(err: &Error) -> u16 {
    match err.kind {
        ErrorKind::BadRequest | ErrorKind::Unsupported => match err.upstream_status {
            Some(422) => 422,
            _ => 400,
        },
        ErrorKind::ContextWindowExceeded | ErrorKind::ContentFiltered => 400,
        ErrorKind::Auth if err.side == Side::Client => 401,
        ErrorKind::PermissionDenied if err.side == Side::Client => 403,
        ErrorKind::NotFound if err.side == Side::Client => 404,
        ErrorKind::Auth | ErrorKind::PermissionDenied | ErrorKind::NotFound => 502,
        ErrorKind::PayloadTooLarge => 413,
        ErrorKind::RateLimited => 429,
        // Not 429: OpenAI's SDKs retry a 429, and waiting does not refill a budget.
        ErrorKind::BudgetExceeded => 402,
        ErrorKind::Overloaded | ErrorKind::Unavailable => 503,
        // A client too slow to send its request: 408, not the 504 of a slow vendor.
        ErrorKind::Timeout if err.side == Side::Client => 408,
        ErrorKind::Timeout => 504,
        ErrorKind::Connect | ErrorKind::Protocol => 502,
        ErrorKind::Server => match err.upstream_status {
            Some(s @ 500..=599) if s != 529 => s,
            _ => 502,
        },
        ErrorKind::Internal => 500,
    }
}

fn error_type(err: &Error) -> &'static str {
    match err.kind {
        ErrorKind::BadRequest
        | ErrorKind::Unsupported
        | ErrorKind::ContextWindowExceeded
        | ErrorKind::ContentFiltered
        | ErrorKind::PayloadTooLarge => "invalid_request_error",
        ErrorKind::Auth if err.side == Side::Client => "invalid_request_error",
        ErrorKind::NotFound if err.side == Side::Client => "invalid_request_error",
        ErrorKind::PermissionDenied if err.side == Side::Client => "permission_error",
        ErrorKind::Timeout if err.side == Side::Client => "invalid_request_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::BudgetExceeded => "insufficient_quota",
        ErrorKind::Auth | ErrorKind::PermissionDenied | ErrorKind::NotFound => "upstream_error",
        _ => "server_error",
    }
}

fn default_code(err: &Error) -> Option<&'static str> {
    Some(match (err.kind, err.side) {
        (ErrorKind::Auth, Side::Client) => "invalid_api_key",
        (ErrorKind::NotFound, Side::Client) => "model_not_found",
        (ErrorKind::Auth, _) => "upstream_auth_failed",
        (ErrorKind::PermissionDenied, Side::Upstream) => "upstream_permission_denied",
        (ErrorKind::NotFound, _) => "upstream_not_found",
        (ErrorKind::RateLimited, _) => "rate_limit_exceeded",
        (ErrorKind::BudgetExceeded, _) => "budget_exceeded",
        (ErrorKind::Overloaded, _) => "overloaded",
        (ErrorKind::Timeout, Side::Client) => "request_timeout",
        (ErrorKind::Timeout, _) => "upstream_timeout",
        (ErrorKind::Connect, _) => "upstream_unreachable",
        (ErrorKind::ContextWindowExceeded, _) => "context_length_exceeded",
        (ErrorKind::ContentFiltered, _) => "content_filter",
        (ErrorKind::PayloadTooLarge, _) => "payload_too_large",
        (ErrorKind::Protocol, _) => "upstream_protocol_error",
        (ErrorKind::Unavailable, _) => "unavailable",
        (ErrorKind::Internal, _) => "internal_error",
        (ErrorKind::Unsupported, _) => "unsupported_feature",
        _ => return None,
    })
}

pub(crate) fn error_object(err: &Error) -> Value {
    let code = err
        .code
        .as_deref()
        .or_else(|| default_code(err))
        .map(|c| Value::String(c.to_owned()))
        .unwrap_or(Value::Null);
    let mut obj = json!({
        "message": err.message,
        "type": error_type(err),
        "param": err.param,
        "code": code,
    });
    if let (Some(status), Some(map)) = (err.upstream_status, obj.as_object_mut()) {
        map.insert("upstream_status".into(), Value::from(status));
    }
    obj
}

/// The body of an error response: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(err: &Error) -> Vec<u8> {
    serde_json::to_vec(&json!({ "error": error_object(err) })).unwrap_or_default()
}

pub(crate) fn write_stream_error(err: &Error, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&error_body(err));
    out.extend_from_slice(b"\n\n");
}

/// An in-stream error frame, for errors after the first byte went out.
pub fn stream_error_chunk(err: &Error) -> Vec<u8> {
    let mut out = Vec::new();
    write_stream_error(err, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_by_class() {
        let up = |k| Error::upstream(k, "x");
        assert_eq!(error_status(&up(ErrorKind::RateLimited)), 429);
        assert_eq!(error_status(&up(ErrorKind::Auth)), 502);
        assert_eq!(
            error_status(&Error::new(ErrorKind::Auth, Side::Client, "x")),
            401
        );
        assert_eq!(error_status(&up(ErrorKind::Server).with_status(503)), 503);
        assert_eq!(error_status(&up(ErrorKind::Server)), 502);
        assert_eq!(error_status(&up(ErrorKind::Timeout)), 504);
        assert_eq!(error_status(&up(ErrorKind::ContextWindowExceeded)), 400);
        let body: Value = serde_json::from_slice(&error_body(&Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "no such route",
        )))
        .unwrap();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
