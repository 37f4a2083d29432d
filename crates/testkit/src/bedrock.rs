//! The mock's Amazon Bedrock Runtime: `POST /model/{modelId}/converse` and
//! `/model/{modelId}/converse-stream`, with the same deterministic answers as the OpenAI side in
//! Converse's shapes: a whole JSON response, or binary `application/vnd.amazon.eventstream`
//! messages with both CRCs.
//!
//! Every request must carry a valid AWS Signature Version 4, recomputed here the way AWS does.
//! Credentials: the access key id [`MOCK_AWS_ACCESS_KEY_ID`], and as secret the mock's API key
//! (`--api-key`), or [`MOCK_AWS_SECRET_ACCESS_KEY`] when it has none. Any session token passes,
//! as long as it is signed. Failures answer 403 with AWS's exception names
//! (`MissingAuthenticationTokenException`, `UnrecognizedClientException`,
//! `InvalidSignatureException`, `IncompleteSignatureException`).
//!
//! The verifier and the event-stream encoder are small copies of what `relais-providers` does,
//! not calls into it: the mock is an oracle for the gateway's wire output, so it must not share
//! the gateway's code (or its bugs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ring::{digest, hmac};
use serde_json::{Map, Value, json};

use crate::behaviour::{self, Reply};
use crate::{Auth, Call, Fault, Killer, MockState, admit, drip};

/// The access key id the mock accepts; any other is an `UnrecognizedClientException`.
pub const MOCK_AWS_ACCESS_KEY_ID: &str = "AKIDRELAISMOCK";
/// The secret access key when the mock has no API key of its own.
pub const MOCK_AWS_SECRET_ACCESS_KEY: &str = "relais-mock-aws-secret-access-key";

/// How far `x-amz-date` may be from the mock's clock: AWS allows 15 minutes.
const MAX_SKEW_SECS: u64 = 15 * 60;

pub(crate) async fn converse(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Path(model): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(&s, &k, call(model, q, &uri, headers, body), false).await
}

pub(crate) async fn converse_stream(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Path(model): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(&s, &k, call(model, q, &uri, headers, body), true).await
}

/// The call as `admit` sees it: the path as it came over the wire (percent-encoded, as it was
/// signed), the model id decoded.
fn call(
    model: String,
    query: BTreeMap<String, String>,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Call {
    Call {
        path: uri.path().to_owned(),
        query,
        headers,
        body,
        auth: Auth::SigV4,
        dep: Some(model),
    }
}

async fn respond(s: &MockState, killer: &Killer, call: Call, stream: bool) -> Response {
    let (req, fault) = match admit(s, killer, &call).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let fault = fault.unwrap_or_default();
    let view = openai_view(&req);
    let reply = behaviour::reply_for(&view);
    let prompt = behaviour::prompt_tokens(&view);
    if stream {
        let mut frames = stream_frames(&reply, prompt);
        if fault.malformed {
            // A message whose CRC does not match its bytes.
            let mut bad = event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"text": "x"}}),
            );
            if let Some(last) = bad.last_mut() {
                *last ^= 0xff;
            }
            frames.insert(frames.len().min(2), bad);
        }
        if let Some(err) = &fault.stream_error {
            frames.insert(frames.len() / 2, exception("internalServerException", err));
        }
        return stream_response(frames, &fault);
    }
    let body = if fault.malformed {
        "{\"output\": {\"message\": ".to_owned()
    } else {
        converse_json(&reply, prompt).to_string()
    };
    drip(body, &fault)
}

/// Event-stream messages one by one, with the fault's pauses and cut; `drip_bytes` re-splits
/// them into pieces of that size, so message boundaries and read boundaries disagree.
fn stream_response(frames: Vec<Vec<u8>>, fault: &Fault) -> Response {
    let pieces: Vec<Vec<u8>> = match fault.drip_bytes.filter(|n| *n > 0) {
        Some(size) => frames.concat().chunks(size).map(<[u8]>::to_vec).collect(),
        None => frames,
    };
    let cut = fault.cut_after_chunks;
    let delay = fault.chunk_delay_ms.map(Duration::from_millis);
    let body = futures_util::stream::unfold(
        (pieces.into_iter(), 0usize, false),
        move |(mut it, n, done)| async move {
            if done {
                return None;
            }
            if cut == Some(n) {
                // Let hyper flush what was sent, so the cut lands mid-stream.
                tokio::time::sleep(Duration::from_millis(30)).await;
                return Some((
                    Err(std::io::Error::other("mock: stream cut")),
                    (it, n, true),
                ));
            }
            let piece = it.next()?;
            if n > 0 {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from(piece)),
                (it, n + 1, false),
            ))
        },
    );
    (
        [(header::CONTENT_TYPE, "application/vnd.amazon.eventstream")],
        Body::from_stream(body),
    )
        .into_response()
}

// ---- answers ----

/// An OpenAI-shaped view of a Converse request, so one set of answer rules serves every API.
pub(crate) fn openai_view(req: &Value) -> Value {
    let mut messages = Vec::new();
    let system = text(req.get("system"));
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let results: Vec<&Value> = m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("toolResult"))
            .collect();
        if role == "user" && !results.is_empty() {
            for r in results {
                messages.push(json!({"role": "tool", "content": text(r.get("content"))}));
            }
        } else {
            messages.push(json!({"role": role, "content": text(m.get("content"))}));
        }
    }
    let mut view = Map::new();
    view.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.pointer("/inferenceConfig/maxTokens") {
        view.insert("max_tokens".into(), n.clone());
    }
    let tools: Vec<Value> = req
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("toolSpec"))
        .map(|spec| {
            json!({"type": "function", "function": {
                "name": spec.get("name"),
                "parameters": spec.pointer("/inputSchema/json"),
            }})
        })
        .collect();
    if !tools.is_empty() {
        view.insert("tools".into(), Value::Array(tools));
    }
    if let Some(name) = req.pointer("/toolConfig/toolChoice/tool/name") {
        view.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": name}}),
        );
    }
    // Converse takes the schema as JSON text.
    if let Some(schema) = req
        .pointer("/outputConfig/textFormat/structure/jsonSchema/schema")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        view.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}),
        );
    }
    Value::Object(view)
}

/// The text blocks of a block list, joined.
fn text(blocks: Option<&Value>) -> String {
    blocks
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

fn output_tokens(reply: &Reply) -> u64 {
    match reply {
        Reply::Text { words, .. } => words.len() as u64,
        Reply::Tools(calls) => calls.iter().map(|(_, _, a)| a.len() as u64 / 4 + 1).sum(),
    }
}

fn stop_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text {
            truncated: true, ..
        } => "max_tokens",
        Reply::Text { .. } => "end_turn",
        Reply::Tools(_) => "tool_use",
    }
}

fn tool_id(i: usize) -> String {
    format!("tooluse_mock_{i}")
}

/// Bedrock's usage: `inputTokens` without cache reads and writes (none here).
fn usage(prompt: u64, reply: &Reply) -> Value {
    let output = output_tokens(reply);
    json!({"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output,
           "cacheReadInputTokens": 0, "cacheWriteInputTokens": 0})
}

/// A whole Converse response.
pub(crate) fn converse_json(reply: &Reply, prompt: u64) -> Value {
    let content: Vec<Value> = match reply {
        Reply::Text { words, .. } => vec![json!({"text": words.concat()})],
        Reply::Tools(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, (_, name, args))| {
                let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                json!({"toolUse": {"toolUseId": tool_id(i), "name": name, "input": input}})
            })
            .collect(),
    };
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason(reply),
        "usage": usage(prompt, reply),
        "metrics": {"latencyMs": 1},
    })
}

/// The event-stream messages of a streamed answer, in ConverseStream's order. Payloads carry
/// Bedrock's `p` padding field, which a decoder must ignore.
pub(crate) fn stream_frames(reply: &Reply, prompt: u64) -> Vec<Vec<u8>> {
    let mut frames = vec![event(
        "messageStart",
        &json!({"role": "assistant", "p": "abcdefghijk"}),
    )];
    match reply {
        Reply::Text { words, .. } => {
            for w in words {
                frames.push(event(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": w}, "p": "abcd"}),
                ));
            }
            frames.push(event(
                "contentBlockStop",
                &json!({"contentBlockIndex": 0, "p": "abcdefgh"}),
            ));
        }
        Reply::Tools(calls) => {
            for (i, (_, name, args)) in calls.iter().enumerate() {
                frames.push(event(
                    "contentBlockStart",
                    &json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": tool_id(i), "name": name}}}),
                ));
                let mid = args
                    .char_indices()
                    .nth(args.chars().count() / 2)
                    .map_or(0, |(b, _)| b);
                for piece in [&args[..mid], &args[mid..]] {
                    frames.push(event(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": piece}}}),
                    ));
                }
                frames.push(event("contentBlockStop", &json!({"contentBlockIndex": i})));
            }
        }
    }
    frames.push(event(
        "messageStop",
        &json!({"stopReason": stop_reason(reply), "p": "ab"}),
    ));
    frames.push(event(
        "metadata",
        &json!({"usage": usage(prompt, reply), "metrics": {"latencyMs": 1}, "p": "abc"}),
    ));
    frames
}

// ---- errors ----

/// An AWS JSON error: `{"message"}` with the exception named in `x-amzn-ErrorType`.
pub(crate) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"message": message}).to_string(),
    )
        .into_response();
    set_error_type(&mut resp, kind);
    resp
}

fn set_error_type(resp: &mut Response, kind: &str) {
    let value = format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/");
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
}

/// An injected status, as Bedrock would say it (a throttle is a `ThrottlingException`).
pub(crate) fn fault_response(status: u16, fault: &Fault) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, message) = match status {
        400 => ("ValidationException", format!("mock fault: HTTP {status}")),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.".to_owned(),
        ),
        404 => (
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.".to_owned(),
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request.".to_owned(),
        ),
        424 => (
            "ModelErrorException",
            "The system encountered an unexpected error during processing.".to_owned(),
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.".to_owned(),
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.".to_owned(),
        ),
        _ => (
            "InternalServerException",
            format!("mock fault: HTTP {status}"),
        ),
    };
    let body = fault
        .body
        .clone()
        .unwrap_or_else(|| json!({"message": message}).to_string());
    let mut resp = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    set_error_type(&mut resp, kind);
    if let Some(ra) = &fault.retry_after {
        if let Ok(v) = ra.parse() {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

// ---- SigV4 ----

/// The credentials a request must be signed with.
pub(crate) struct Keys<'a> {
    pub access_key_id: &'a str,
    pub secret: &'a str,
}

/// Check a call's signature against the mock's credentials; the 403 AWS answers otherwise.
pub(crate) fn authenticate(api_key: Option<&str>, call: &Call) -> Result<(), Response> {
    let keys = Keys {
        access_key_id: MOCK_AWS_ACCESS_KEY_ID,
        secret: api_key.unwrap_or(MOCK_AWS_SECRET_ACCESS_KEY),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    verify(
        &keys,
        "POST",
        &call.path,
        &call.query,
        &call.headers,
        &call.body,
        now,
    )
    .map_err(|(kind, message)| error(StatusCode::FORBIDDEN, kind, &message))
}

/// Verify a SigV4 `Authorization` header as AWS does for a JSON service: the canonical request
/// from the method, the wire path encoded once more, the query, the signed headers' values and
/// the body's SHA-256; the scope `{date}/{region}/bedrock/aws4_request`; the HMAC key chain.
pub(crate) fn verify(
    keys: &Keys<'_>,
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), (&'static str, String)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return Err((
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".to_owned(),
        ));
    };
    let incomplete = || {
        (
            "IncompleteSignatureException",
            format!(
                "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' \
                 parameters. Authorization={auth}"
            ),
        )
    };
    let params = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(incomplete)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(incomplete()),
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete());
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = scope.as_slice() else {
        return Err(incomplete());
    };
    if *key_id != keys.access_key_id {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    }
    let invalid = |message: String| ("InvalidSignatureException", message);
    if *service != "bedrock" || *terminator != "aws4_request" {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: 'bedrock'. Credential={credential}"
        )));
    }
    let Some(amz_date) = header("x-amz-date") else {
        return Err((
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .to_owned(),
        ));
    };
    if !amz_date.starts_with(*date) {
        return Err(invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
             HTTP: '{date}' != '{amz_date}'"
        )));
    }
    let when = unix_secs(amz_date)
        .ok_or_else(|| invalid(format!("'{amz_date}' is not an ISO-8601 basic date")))?;
    if now.abs_diff(when) > MAX_SKEW_SECS {
        return Err(invalid(format!(
            "Signature expired: {amz_date} is not within 15 minutes of the server's time"
        )));
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") || !names.contains(&"x-amz-date") {
        return Err(invalid(
            "'Host' and 'X-Amz-Date' must be signed headers".to_owned(),
        ));
    }
    if headers.contains_key("x-amz-security-token") && !names.contains(&"x-amz-security-token") {
        return Err(invalid(
            "'X-Amz-Security-Token' is present but not signed".to_owned(),
        ));
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(invalid(format!(
                "signed header '{name}' is not in the request"
            )));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        canonical_uri(path),
        canonical_query(query),
        sha256_hex(body)
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{}", keys.secret).as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    let expected = hex(step(k_signing.as_ref(), to_sign.as_str()).as_ref());
    if expected != signature {
        // AWS's own wording, with what it computed, which is what makes the error debuggable.
        return Err(invalid(format!(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.\n\nThe Canonical String for this request should have \
             been\n'{canonical}'\n\nThe String-to-Sign should have been\n'{to_sign}'\n"
        )));
    }
    Ok(())
}

/// Dot segments and empty segments removed, then every byte outside `A-Za-z0-9-_.~/` encoded:
/// the wire path's `%3A` becomes `%253A`.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    uri_encode(&normalized, true)
}

fn canonical_query(query: &BTreeMap<String, String>) -> String {
    let mut pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs.join("&")
}

fn uri_encode(input: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the epoch of `YYYYMMDDTHHMMSSZ`.
fn unix_secs(amz_date: &str) -> Option<i64> {
    let bytes = amz_date.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let s = amz_date.get(from..to)?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, m, d) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (hh, mm, ss) = (num(9, 11)?, num(11, 13)?, num(13, 15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---- event stream ----

/// One `event` message: `:event-type`, `:content-type`, `:message-type` string headers, the
/// JSON payload, and both CRC32s.
pub(crate) fn event(event_type: &str, payload: &Value) -> Vec<u8> {
    let headers = string_headers(&[
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ]);
    frame(&headers, payload.to_string().as_bytes())
}

/// Event-stream headers, each of the string type (7).
fn string_headers(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in pairs {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    headers
}

/// One `exception` message, as Bedrock sends a failure inside a stream.
pub(crate) fn exception(exception_type: &str, payload: &str) -> Vec<u8> {
    let headers = string_headers(&[
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ]);
    frame(&headers, payload.as_bytes())
}

fn frame(headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let total = (16 + headers.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// CRC-32 (IEEE), bit by bit: the mock sends little enough that a table buys nothing.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// botocore 1.44.5 signed `converse_stream` for this model at 2015-08-30T12:36:00Z.
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const BODY: &[u8] = br#"{"messages": [{"role": "user", "content": [{"text": "hi"}]}]}"#;
    const PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream";
    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=d21bd73f9972e527a7324e439b2fa300ae3525cb70ec788ba216cf63f588e64f";
    const TOKEN: &str =
        "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJGMEQCIExampleSessionToken+/=";
    const TOKEN_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=b271336ce520a8adcce2d768056590145af085552e8ed97666d8917e89f9ac20";
    const WHEN: i64 = 1_440_938_160;

    fn keys() -> Keys<'static> {
        Keys {
            access_key_id: "AKIDEXAMPLE",
            secret: SECRET,
        }
    }

    fn headers(auth: &str, token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert(
            "host",
            HeaderValue::from_static("bedrock-runtime.us-east-1.amazonaws.com"),
        );
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h.insert("authorization", HeaderValue::from_str(auth).unwrap());
        if let Some(t) = token {
            h.insert("x-amz-security-token", HeaderValue::from_str(t).unwrap());
        }
        // Unsigned headers a client adds do not matter.
        h.insert("user-agent", HeaderValue::from_static("relais/0.1.0"));
        h
    }

    fn check(h: &HeaderMap, path: &str, body: &[u8], now: i64) -> Result<(), &'static str> {
        verify(&keys(), "POST", path, &BTreeMap::new(), h, body, now).map_err(|(kind, _)| kind)
    }

    #[test]
    fn accepts_what_botocore_signed() {
        assert_eq!(check(&headers(AUTH, None), PATH, BODY, WHEN), Ok(()));
        assert_eq!(
            check(
                &headers(TOKEN_AUTH, Some(TOKEN)),
                "/model/amazon.nova-lite-v1/converse",
                BODY,
                WHEN + 60
            ),
            Ok(())
        );
    }

    #[test]
    fn refuses_what_aws_refuses() {
        let h = headers(AUTH, None);
        // Another body, path, secret, key, time.
        assert_eq!(
            check(&h, PATH, b"{}", WHEN),
            Err("InvalidSignatureException")
        );
        assert_eq!(
            check(
                &h,
                "/model/anthropic.claude-3-haiku-20240307-v1:0/converse-stream",
                BODY,
                WHEN
            ),
            Err("InvalidSignatureException")
        );
        let wrong_secret = Keys {
            access_key_id: "AKIDEXAMPLE",
            secret: "not-the-secret",
        };
        assert_eq!(
            verify(
                &wrong_secret,
                "POST",
                PATH,
                &BTreeMap::new(),
                &h,
                BODY,
                WHEN
            )
            .map_err(|(k, _)| k),
            Err("InvalidSignatureException")
        );
        let other_key = Keys {
            access_key_id: MOCK_AWS_ACCESS_KEY_ID,
            secret: SECRET,
        };
        assert_eq!(
            verify(&other_key, "POST", PATH, &BTreeMap::new(), &h, BODY, WHEN).map_err(|(k, _)| k),
            Err("UnrecognizedClientException")
        );
        assert_eq!(
            check(&h, PATH, BODY, WHEN + 16 * 60),
            Err("InvalidSignatureException")
        );
        // A session token that is sent but not signed.
        assert_eq!(
            check(&headers(AUTH, Some(TOKEN)), PATH, BODY, WHEN),
            Err("InvalidSignatureException")
        );
        let mut missing = h.clone();
        missing.remove("authorization");
        assert_eq!(
            check(&missing, PATH, BODY, WHEN),
            Err("MissingAuthenticationTokenException")
        );
        assert_eq!(
            check(&headers("Bearer abc", None), PATH, BODY, WHEN),
            Err("IncompleteSignatureException")
        );
    }

    #[test]
    fn dates_and_paths() {
        assert_eq!(unix_secs("20150830T123600Z"), Some(WHEN));
        assert_eq!(unix_secs("19700101T000000Z"), Some(0));
        assert_eq!(unix_secs("20000229T235959Z"), Some(951_868_799));
        assert_eq!(unix_secs("2015-08-30T12:36"), None);
        assert_eq!(unix_secs("20151330T123600Z"), None);
        assert_eq!(
            canonical_uri(PATH),
            "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse-stream"
        );
        let mut q = BTreeMap::new();
        q.insert("b".to_owned(), "x y".to_owned());
        q.insert("a".to_owned(), "1".to_owned());
        assert_eq!(canonical_query(&q), "a=1&b=x%20y");
    }

    #[test]
    fn frames_match_the_reference_encoding() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        // Encoded in Python and read back by botocore's EventStreamBuffer.
        let expected = "000000760000005296d5fade0b3a6576656e742d7479706507000c6d65737361676553746172740d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b22726f6c65223a22617373697374616e74227d6fa8c599";
        assert_eq!(
            hex(&event("messageStart", &json!({"role": "assistant"}))),
            expected
        );
    }

    #[test]
    fn view_of_a_converse_request() {
        let req = json!({
            "system": [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
            "messages": [
                {"role": "user", "content": [{"text": "hi"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "42"}]}}]},
            ],
            "inferenceConfig": {"maxTokens": 5},
            "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}],
                           "toolChoice": {"tool": {"name": "f"}}},
        });
        let view = openai_view(&req);
        assert_eq!(
            view["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            view["messages"][3],
            json!({"role": "tool", "content": "42"})
        );
        assert_eq!(view["max_tokens"], 5);
        assert_eq!(view["tools"][0]["function"]["name"], "f");
        assert_eq!(view["tool_choice"]["function"]["name"], "f");
        // The last message is a tool result: the mock echoes it.
        assert_eq!(
            behaviour::reply_for(&view),
            Reply::Text {
                words: vec![
                    "Tool ".into(),
                    "result ".into(),
                    "received: ".into(),
                    "42".into()
                ],
                truncated: false,
            }
        );
    }
}
