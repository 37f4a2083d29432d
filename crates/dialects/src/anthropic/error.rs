use relais_core::{Error, ErrorKind, Side};
use serde::Serialize;

/// HTTP status for an error in the Anthropic dialect.
///
/// The same classes as the OpenAI dialect, with Anthropic's own codes where it has them: 529 for
/// an overloaded upstream (the official SDKs retry it), 504 for a timeout. Failures of the
/// gateway's own upstream credentials or configuration become 502, because the client's key was
/// fine and it should not think otherwise.
pub fn error_status(err: &Error) -> u16 {
    // Every kind is named: a new `ErrorKind` must be placed here on purpose, not by a catch-all.
    match err.kind {
        ErrorKind::BadRequest
        | ErrorKind::Unsupported
        | ErrorKind::ContextWindowExceeded
        | ErrorKind::ContentFiltered => 400,
        ErrorKind::Auth if err.side == Side::Client => 401,
        ErrorKind::PermissionDenied if err.side == Side::Client => 403,
        ErrorKind::NotFound if err.side == Side::Client => 404,
        ErrorKind::Auth | ErrorKind::PermissionDenied | ErrorKind::NotFound => 502,
        ErrorKind::PayloadTooLarge => 413,
        ErrorKind::RateLimited => 429,
        ErrorKind::BudgetExceeded => 402,
        ErrorKind::Overloaded => 529,
        // Draining for shutdown: 503 is what a load balancer in front understands; the error
        // type (below) still tells the SDK it is a "try again later".
        ErrorKind::Unavailable => 503,
        // A client too slow to send its request: 408, not the 504 of a slow vendor.
        ErrorKind::Timeout if err.side == Side::Client => 408,
        ErrorKind::Timeout => 504,
        ErrorKind::Connect | ErrorKind::Protocol => 502,
        ErrorKind::Server => err
            .upstream_status
            .filter(|s| (500..=599).contains(s))
            .unwrap_or(502),
        ErrorKind::Internal => 500,
    }
}

/// Anthropic's `error.type`. The SDKs choose their exception class by status, but clients that
/// switch on the type (to retry, or to show a message) see Anthropic's own vocabulary.
fn error_type(err: &Error) -> &'static str {
    match err.kind {
        ErrorKind::BadRequest
        | ErrorKind::Unsupported
        | ErrorKind::ContextWindowExceeded
        | ErrorKind::ContentFiltered => "invalid_request_error",
        ErrorKind::Auth if err.side == Side::Client => "authentication_error",
        ErrorKind::PermissionDenied if err.side == Side::Client => "permission_error",
        ErrorKind::NotFound if err.side == Side::Client => "not_found_error",
        // The gateway's upstream key or route failed: not something the client can fix.
        ErrorKind::Auth | ErrorKind::PermissionDenied | ErrorKind::NotFound => "api_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::BudgetExceeded => "billing_error",
        ErrorKind::Overloaded | ErrorKind::Unavailable => "overloaded_error",
        ErrorKind::Timeout if err.side == Side::Client => "invalid_request_error",
        ErrorKind::Timeout => "timeout_error",
        ErrorKind::Connect | ErrorKind::Protocol | ErrorKind::Server | ErrorKind::Internal => {
            "api_error"
        }
    }
}

#[derive(Serialize)]
struct AnthropicErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicErrorDetail<'a>,
    /// Present in HTTP error bodies; Anthropic's in-stream `error` events carry none.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

fn body<'a>(err: &'a Error, request_id: Option<&'a str>) -> AnthropicErrorBody<'a> {
    AnthropicErrorBody {
        kind: "error",
        error: AnthropicErrorDetail {
            kind: error_type(err),
            message: &err.message,
        },
        request_id,
    }
}

/// The body of an error response:
/// `{"type":"error","error":{"type","message"},"request_id"}`.
///
/// Anthropic's shape has no `param`; the field at fault is already named in the message.
pub fn error_body(err: &Error, request_id: &str) -> Vec<u8> {
    let request_id = (!request_id.is_empty()).then_some(request_id);
    serde_json::to_vec(&body(err, request_id)).unwrap_or_default()
}

/// Append an in-stream `error` event, for errors after the first byte went out.
pub(super) fn write_stream_error(err: &Error, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: error\ndata: ");
    if serde_json::to_writer(&mut *out, &body(err, None)).is_err() {
        // Serialising our own structs cannot fail; keep the stream well-formed regardless.
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

/// An in-stream `error` event: `event: error` with the error body as its data.
pub fn stream_error_event(err: &Error) -> Vec<u8> {
    let mut out = Vec::new();
    write_stream_error(err, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn statuses_by_class() {
        let up = |k| Error::upstream(k, "x");
        let client = |k| Error::new(k, Side::Client, "x");
        assert_eq!(error_status(&Error::bad_request("x")), 400);
        assert_eq!(error_status(&Error::unsupported("x")), 400);
        assert_eq!(error_status(&up(ErrorKind::ContextWindowExceeded)), 400);
        assert_eq!(error_status(&client(ErrorKind::Auth)), 401);
        assert_eq!(error_status(&client(ErrorKind::PermissionDenied)), 403);
        assert_eq!(error_status(&client(ErrorKind::NotFound)), 404);
        assert_eq!(error_status(&up(ErrorKind::Auth)), 502);
        assert_eq!(error_status(&up(ErrorKind::NotFound)), 502);
        assert_eq!(error_status(&client(ErrorKind::PayloadTooLarge)), 413);
        assert_eq!(error_status(&up(ErrorKind::RateLimited)), 429);
        assert_eq!(error_status(&up(ErrorKind::Overloaded)), 529);
        assert_eq!(error_status(&up(ErrorKind::Timeout)), 504);
        assert_eq!(error_status(&up(ErrorKind::Server).with_status(503)), 503);
        assert_eq!(error_status(&up(ErrorKind::Server)), 502);
        assert_eq!(error_status(&Error::internal("x")), 500);
    }

    #[test]
    fn types_by_class() {
        let t = |e: &Error| {
            let v: Value = serde_json::from_slice(&error_body(e, "req_1")).unwrap();
            v["error"]["type"].as_str().unwrap().to_owned()
        };
        let client = |k| Error::new(k, Side::Client, "x");
        assert_eq!(t(&Error::bad_request("x")), "invalid_request_error");
        assert_eq!(t(&client(ErrorKind::Auth)), "authentication_error");
        assert_eq!(t(&client(ErrorKind::PermissionDenied)), "permission_error");
        assert_eq!(t(&client(ErrorKind::NotFound)), "not_found_error");
        assert_eq!(t(&client(ErrorKind::PayloadTooLarge)), "request_too_large");
        assert_eq!(
            t(&Error::upstream(ErrorKind::RateLimited, "x")),
            "rate_limit_error"
        );
        assert_eq!(
            t(&Error::upstream(ErrorKind::Overloaded, "x")),
            "overloaded_error"
        );
        assert_eq!(
            t(&Error::upstream(ErrorKind::Timeout, "x")),
            "timeout_error"
        );
        assert_eq!(t(&Error::upstream(ErrorKind::Auth, "x")), "api_error");
        assert_eq!(t(&Error::internal("x")), "api_error");
    }

    #[test]
    fn every_kind_renders_a_consistent_error() {
        for kind in ErrorKind::ALL {
            for side in [Side::Client, Side::Upstream, Side::Gateway] {
                let err = Error::new(kind, side, "boom");
                let status = error_status(&err);
                let v: Value = serde_json::from_slice(&error_body(&err, "req_1")).unwrap();
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["message"], "boom");
                assert_eq!(v["request_id"], "req_1");
                let ty = v["error"]["type"].as_str().unwrap();
                // A server-side status never claims the client was at fault, and vice versa.
                let client_type = matches!(
                    ty,
                    "invalid_request_error"
                        | "authentication_error"
                        | "permission_error"
                        | "not_found_error"
                        | "request_too_large"
                        | "rate_limit_error"
                        | "billing_error"
                );
                assert_eq!(
                    client_type,
                    status < 500,
                    "{kind:?} {side:?}: {status} {ty}"
                );
            }
        }
    }

    #[test]
    fn body_and_stream_event_shapes() {
        let err = Error::upstream(ErrorKind::Overloaded, "Overloaded");
        let v: Value = serde_json::from_slice(&error_body(&err, "req_9")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
                "request_id": "req_9"
            })
        );
        let v: Value = serde_json::from_slice(&error_body(&err, "")).unwrap();
        assert!(v.get("request_id").is_none());

        let frame = String::from_utf8(stream_error_event(&err)).unwrap();
        let data = frame
            .strip_prefix("event: error\ndata: ")
            .and_then(|d| d.strip_suffix("\n\n"))
            .unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(v.get("request_id").is_none());
    }
}
