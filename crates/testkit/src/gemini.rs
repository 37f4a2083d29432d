//! The mock's Gemini API, as AI Studio and as Vertex AI: the same deterministic answers as the
//! OpenAI side, in Gemini's shapes (a whole response, SSE chunks with running usage, a JSON array
//! without `alt=sse`, Google's error bodies with `RetryInfo`), plus Vertex's OAuth token
//! endpoint.
//!
//! - `POST /v1beta/models/{model}:{method}` (AI Studio) takes `x-goog-api-key`, checked like the
//!   other APIs' keys when the mock has one.
//! - `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}` (Vertex)
//!   takes `Authorization: Bearer` with a token `/token` issued, always.
//! - `POST /token` takes the JWT-bearer grant (RFC 7523) and checks the assertion as Google does:
//!   an RS256 signature by the key in `vertex-test-key.json`, the key's `client_email` as
//!   issuer, the cloud-platform scope, at most an hour of life around now. That key is a
//!   THROWAWAY generated with openssl for these tests; it belongs to no Google account and
//!   grants nothing. Faults for the token endpoint are queued with `model = "oauth-token"`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::behaviour::{self, Reply};
use crate::{Auth, Call, Fault, Killer, MockState, Recorded, admit, drip};

/// The throwaway test service account (see the module docs and the file's `_comment`).
const TEST_KEY_JSON: &str = include_str!("vertex-test-key.json");
/// The scope Vertex AI needs.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Queue a fault with this model to make `/token` fail.
pub const TOKEN_FAULT_MODEL: &str = "oauth-token";

/// The test service account's key file, with its `token_uri` pointing at `token_uri` (the mock's
/// `{url}/token`), ready to write to a file or pass inline.
pub fn vertex_test_key(token_uri: &str) -> String {
    let mut key: Value = serde_json::from_str(TEST_KEY_JSON).unwrap_or(Value::Null);
    if let Some(map) = key.as_object_mut() {
        map.insert("token_uri".into(), Value::String(token_uri.to_owned()));
    }
    key.to_string()
}

/// Tokens the mock's `/token` issued; Vertex requests must present one.
#[derive(Default)]
pub(crate) struct GeminiState {
    tokens: Mutex<Vec<String>>,
}

/// Google's error body for a status: `{"error": {"code", "message", "status", "details"}}`,
/// with a `RetryInfo` detail when a wait (in seconds) is given.
pub(crate) fn error_body(status: u16, message: &str, retry_after: Option<&str>) -> String {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    };
    let mut details = Vec::new();
    if let Some(wait) = retry_after {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", wait.trim()),
        }));
    }
    json!({"error": {"code": status, "message": message, "status": name, "details": details}})
        .to_string()
}

fn error_response(status: u16, body: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// AI Studio's answer to a wrong key: a 400, told apart by its `ErrorInfo` reason.
pub(crate) fn bad_api_key() -> Response {
    let body = json!({"error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        }],
    }});
    error_response(400, body.to_string())
}

/// Vertex: the bearer token must be one `/token` issued.
pub(crate) fn check_bearer(state: &GeminiState, headers: &HeaderMap) -> Result<(), Response> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let known = state
        .tokens
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .any(|t| t == presented);
    if known {
        return Ok(());
    }
    Err(error_response(
        401,
        error_body(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential.",
            None,
        ),
    ))
}

/// `POST /v1beta/models/{model}:{method}`
pub(crate) async fn studio(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Path(model_action): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: format!("/v1beta/models/{model_action}"),
        query: q,
        headers,
        body,
        auth: Auth::GoogApiKey,
        dep: None,
    };
    serve(&s, &k, call, &model_action).await
}

/// `POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}`
pub(crate) async fn vertex(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Path((project, location, model_action)): Path<(String, String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: format!(
            "/v1/projects/{project}/locations/{location}/publishers/google/models/{model_action}"
        ),
        query: q,
        headers,
        body,
        auth: Auth::VertexBearer,
        dep: None,
    };
    serve(&s, &k, call, &model_action).await
}

async fn serve(s: &MockState, killer: &Killer, mut call: Call, model_action: &str) -> Response {
    // axum captures `gemini-2.5-flash:generateContent` as one segment.
    let Some((model, method)) = model_action.rsplit_once(':') else {
        return error_response(
            404,
            error_body(404, &format!("no method in '{model_action}'"), None),
        );
    };
    let embed_method = if call.auth == Auth::VertexBearer {
        "predict"
    } else {
        "batchEmbedContents"
    };
    let known = ["generateContent", "streamGenerateContent", embed_method].contains(&method);
    if !known {
        return error_response(
            404,
            error_body(404, &format!("method '{method}' not found"), None),
        );
    }
    let sse = call.query.get("alt").map(String::as_str) == Some("sse");
    // Faults select by model, as for an Azure deployment.
    call.dep = Some(model.to_owned());
    let (req, fault) = match admit(s, killer, &call).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let fault = fault.unwrap_or_default();
    match method {
        "generateContent" => generate(&req, model, &fault),
        "streamGenerateContent" => stream(&req, model, sse, &fault),
        "predict" => {
            if fault.malformed {
                return drip("{\"predictions\": [".to_owned(), &fault);
            }
            drip(vertex_embeddings(&req).to_string(), &fault)
        }
        _ => {
            if fault.malformed {
                return drip("{\"embeddings\": [".to_owned(), &fault);
            }
            drip(studio_embeddings(&req).to_string(), &fault)
        }
    }
}

/// Text of the `parts` of a content.
fn parts_text(parts: Option<&Value>) -> String {
    parts
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An OpenAI-shaped view of a Gemini request, so one set of answer rules serves every API.
pub(crate) fn openai_view(req: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = req.get("systemInstruction") {
        messages.push(json!({"role": "system", "content": parts_text(system.get("parts"))}));
    }
    for content in req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = match content.get("role").and_then(Value::as_str) {
            Some("model") => "assistant",
            _ => "user",
        };
        let responses: Vec<&Value> = content
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("functionResponse"))
            .collect();
        if responses.is_empty() {
            messages.push(json!({"role": role, "content": parts_text(content.get("parts"))}));
            continue;
        }
        for r in responses {
            let response = r.get("response");
            let result = response.and_then(|v| v.get("output").or_else(|| v.get("error")));
            let text = match result {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => response.map(Value::to_string).unwrap_or_default(),
            };
            messages.push(json!({"role": "tool", "content": text}));
        }
    }
    let mut view = Map::new();
    view.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.pointer("/generationConfig/maxOutputTokens") {
        view.insert("max_tokens".into(), n.clone());
    }
    let tools: Vec<Value> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .map(|f| {
            let parameters = f
                .get("parametersJsonSchema")
                .or_else(|| f.get("parameters"))
                .cloned()
                .unwrap_or(Value::Null);
            json!({"type": "function", "function": {"name": f.get("name"), "parameters": parameters}})
        })
        .collect();
    if !tools.is_empty() {
        view.insert("tools".into(), Value::Array(tools));
    }
    let calling = req.pointer("/toolConfig/functionCallingConfig");
    match calling.and_then(|c| c.get("mode")).and_then(Value::as_str) {
        Some("NONE") => {
            view.insert("tool_choice".into(), json!("none"));
        }
        Some("ANY") => {
            let allowed = calling
                .and_then(|c| c.get("allowedFunctionNames"))
                .and_then(Value::as_array)
                .filter(|names| names.len() == 1)
                .and_then(|names| names.first())
                .cloned();
            if let Some(name) = allowed {
                view.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": name}}),
                );
            }
        }
        _ => {}
    }
    if req.pointer("/generationConfig/responseMimeType") == Some(&json!("application/json")) {
        let schema = req
            .pointer("/generationConfig/responseJsonSchema")
            .or_else(|| req.pointer("/generationConfig/responseSchema"));
        let format = match schema {
            Some(schema) => {
                json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
            }
            None => json!({"type": "json_object"}),
        };
        view.insert("response_format".into(), format);
    }
    Value::Object(view)
}

fn output_tokens(reply: &Reply) -> u64 {
    match reply {
        Reply::Text { words, .. } => words.len() as u64,
        Reply::Tools(calls) => calls.iter().map(|(_, _, a)| a.len() as u64 / 4 + 1).sum(),
    }
}

fn finish_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text {
            truncated: true, ..
        } => "MAX_TOKENS",
        // Gemini says STOP after function calls too.
        _ => "STOP",
    }
}

fn usage(prompt: u64, output: u64) -> Value {
    json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output,
    })
}

fn function_call(name: &str, args: &str) -> Value {
    let args: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
    json!({"functionCall": {"name": name, "args": args}})
}

/// One response (a whole answer, or one stream chunk).
fn response(parts: Vec<Value>, finish: Option<&str>, usage: Value, model: &str) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if let (Some(f), Some(map)) = (finish, candidate.as_object_mut()) {
        map.insert("finishReason".into(), json!(f));
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "mock-response",
    })
}

fn answer(req: &Value) -> (Reply, u64) {
    let view = openai_view(req);
    (behaviour::reply_for(&view), behaviour::prompt_tokens(&view))
}

/// A whole `generateContent` answer.
fn generate(req: &Value, model: &str, fault: &Fault) -> Response {
    if fault.malformed {
        return drip("{\"candidates\": [".to_owned(), fault);
    }
    let (reply, prompt) = answer(req);
    let parts = match &reply {
        Reply::Text { words, .. } => vec![json!({"text": words.concat()})],
        Reply::Tools(calls) => calls
            .iter()
            .map(|(_, name, args)| function_call(name, args))
            .collect(),
    };
    let body = response(
        parts,
        Some(finish_reason(&reply)),
        usage(prompt, output_tokens(&reply)),
        model,
    );
    drip(body.to_string(), fault)
}

/// The chunks of a streamed answer: a word or a call each, every one with the usage so far, the
/// last with the finish reason.
fn chunks(reply: &Reply, model: &str, prompt: u64) -> Vec<Value> {
    let pieces: Vec<Value> = match reply {
        Reply::Text { words, .. } if words.is_empty() => vec![json!({"text": ""})],
        Reply::Text { words, .. } => words.iter().map(|w| json!({"text": w})).collect(),
        Reply::Tools(calls) => calls
            .iter()
            .map(|(_, name, args)| function_call(name, args))
            .collect(),
    };
    let last = pieces.len().saturating_sub(1);
    let total = output_tokens(reply);
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let (finish, so_far) = if i == last {
                (Some(finish_reason(reply)), total)
            } else {
                (None, (i as u64 + 1).min(total))
            };
            response(vec![piece], finish, usage(prompt, so_far), model)
        })
        .collect()
}

/// A `streamGenerateContent` answer: SSE with `alt=sse`, else one JSON array, as Gemini does.
fn stream(req: &Value, model: &str, sse: bool, fault: &Fault) -> Response {
    let (reply, prompt) = answer(req);
    let chunks = chunks(&reply, model, prompt);
    if !sse {
        if fault.malformed {
            return drip("[{\"candidates\": [".to_owned(), fault);
        }
        return drip(Value::Array(chunks).to_string(), fault);
    }
    let mut frames: Vec<String> = chunks
        .iter()
        .map(|c| format!("data: {c}\r\n\r\n"))
        .collect();
    if fault.malformed {
        frames.insert(
            frames.len().min(1),
            "data: {\"candidates\": [{\"content\": \r\n\r\n".to_owned(),
        );
    }
    if let Some(err) = &fault.stream_error {
        frames.insert(frames.len() / 2, format!("data: {err}\r\n\r\n"));
    }
    sse_response(frames, fault)
}

/// SSE frames as a body, with the fault's delays and cut.
fn sse_response(frames: Vec<String>, fault: &Fault) -> Response {
    let cut = fault.cut_after_chunks;
    let delay = fault.chunk_delay_ms.map(Duration::from_millis);
    let body = futures_util::stream::unfold(
        (frames.into_iter(), 0usize, false),
        move |(mut it, n, done)| async move {
            if done {
                return None;
            }
            if cut == Some(n) {
                // Let hyper flush the frames already yielded, so the cut lands mid-stream.
                tokio::time::sleep(Duration::from_millis(30)).await;
                return Some((
                    Err(std::io::Error::other("mock: stream cut")),
                    (it, n, true),
                ));
            }
            let frame = it.next()?;
            if n > 0 {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from(frame)),
                (it, n + 1, false),
            ))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Deterministic vectors for `texts`, from the OpenAI side's embeddings.
fn vectors(texts: &[String], dimensions: Option<&Value>) -> Vec<Value> {
    let mut view = json!({"input": texts});
    if let (Some(d), Some(map)) = (dimensions, view.as_object_mut()) {
        map.insert("dimensions".into(), d.clone());
    }
    behaviour::embeddings_json(&view)
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| d.get("embedding").cloned().unwrap_or(Value::Null))
        .collect()
}

/// AI Studio's `batchEmbedContents`: `{"embeddings": [{"values": [...]}]}`.
fn studio_embeddings(req: &Value) -> Value {
    let requests: Vec<&Value> = req
        .get("requests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let texts: Vec<String> = requests
        .iter()
        .map(|r| parts_text(r.pointer("/content/parts")))
        .collect();
    let dimensions = requests.first().and_then(|r| r.get("outputDimensionality"));
    let embeddings: Vec<Value> = vectors(&texts, dimensions)
        .into_iter()
        .map(|v| json!({"values": v}))
        .collect();
    json!({"embeddings": embeddings})
}

/// Vertex's `predict` for a text-embedding model, with token counts per input.
fn vertex_embeddings(req: &Value) -> Value {
    let texts: Vec<String> = req
        .get("instances")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| {
            i.get("content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let dimensions = req.pointer("/parameters/outputDimensionality");
    let predictions: Vec<Value> = vectors(&texts, dimensions)
        .into_iter()
        .zip(&texts)
        .map(|(values, text)| {
            json!({"embeddings": {
                "statistics": {"token_count": text.split_whitespace().count(), "truncated": false},
                "values": values,
            }})
        })
        .collect();
    json!({"predictions": predictions, "metadata": {"billableCharacterCount": texts.iter().map(String::len).sum::<usize>()}})
}

/// `POST /token`: Google's OAuth token endpoint for the JWT-bearer grant.
pub(crate) async fn token(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let checked = form
        .get("assertion")
        .ok_or("Missing required parameter: assertion")
        .and_then(|jwt| verify_assertion(jwt.as_str()));
    s.requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Recorded {
            method: "POST".into(),
            path: "/token".into(),
            query: BTreeMap::new(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: json!({
                "grant_type": grant_type,
                "claims": checked.as_ref().ok().cloned().unwrap_or(Value::Null),
            }),
            body_raw: String::from_utf8_lossy(&body).into_owned(),
        });
    if let Some(f) = take_token_fault(&s) {
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(status) = f.status {
            let body = f.body.clone().unwrap_or_else(|| {
                json!({"error": "mock_fault", "error_description": format!("mock fault: HTTP {status}")})
                    .to_string()
            });
            return error_response(status, body);
        }
    }
    let oauth_error = |status: u16, error: &str, description: &str| {
        error_response(
            status,
            json!({"error": error, "error_description": description}).to_string(),
        )
    };
    if grant_type != JWT_BEARER {
        return oauth_error(400, "unsupported_grant_type", "Invalid grant_type.");
    }
    if let Err(why) = checked {
        return oauth_error(400, "invalid_grant", why);
    }
    let token = {
        let mut tokens = s
            .gemini
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let token = format!("ya29.mock-{}", tokens.len() + 1);
        tokens.push(token.clone());
        token
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
    )
        .into_response()
}

/// A fault queued for the token endpoint (`model = "oauth-token"`); other faults are left for
/// the API calls.
fn take_token_fault(s: &MockState) -> Option<Fault> {
    let mut faults = s.faults.lock().unwrap_or_else(PoisonError::into_inner);
    let pos = faults
        .iter()
        .position(|f| f.model.as_deref() == Some(TOKEN_FAULT_MODEL))?;
    let f = faults[pos].clone();
    match f.times.unwrap_or(1) {
        0 => {}
        1 => {
            faults.remove(pos);
        }
        n => faults[pos].times = Some(n - 1),
    }
    Some(f)
}

/// Check a JWT-bearer assertion as Google does; its claims, or Google's reason for refusing it.
fn verify_assertion(jwt: &str) -> Result<Value, &'static str> {
    let mut segments = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err("Invalid JWT: the assertion is not three segments.");
    };
    let decode_json =
        |s: &str| b64_decode(s).and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let header_json = decode_json(header).ok_or("Invalid JWT: the header is not base64 JSON.")?;
    if header_json.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: the algorithm must be RS256.");
    }
    let claims_json = decode_json(claims).ok_or("Invalid JWT: the claims are not base64 JSON.")?;
    let signature = b64_decode(signature).ok_or("Invalid JWT Signature.")?;
    let public = test_public_key().ok_or("mock: the test key cannot be read")?;
    let signed = format!("{header}.{claims}");
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "Invalid JWT Signature.")?;
    let key: Value = serde_json::from_str(TEST_KEY_JSON).unwrap_or(Value::Null);
    if claims_json.get("iss") != key.get("client_email") {
        return Err("Invalid JWT: the issuer is not the service account.");
    }
    let scoped = claims_json
        .get("scope")
        .and_then(Value::as_str)
        .is_some_and(|s| s.split(' ').any(|scope| scope == CLOUD_PLATFORM));
    if !scoped {
        return Err("Invalid JWT: the scope must include cloud-platform.");
    }
    let audience = claims_json.get("aud").and_then(Value::as_str);
    if !audience.is_some_and(|a| a.ends_with("/token")) {
        return Err("Invalid JWT: the audience must be the token endpoint.");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let timely = match (
        claims_json.get("iat").and_then(Value::as_u64),
        claims_json.get("exp").and_then(Value::as_u64),
    ) {
        // Five minutes of clock skew either way, as Google allows.
        (Some(iat), Some(exp)) => {
            exp > iat && exp - iat <= 3600 && iat <= now + 300 && exp + 300 >= now
        }
        _ => false,
    };
    if !timely {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
             timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    Ok(claims_json)
}

/// The DER `RSAPublicKey` of the test service account.
fn test_public_key() -> Option<Vec<u8>> {
    let key: Value = serde_json::from_str(TEST_KEY_JSON).ok()?;
    let pem = key.get("private_key")?.as_str()?;
    let body = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)?
        .split("-----END PRIVATE KEY-----")
        .next()?;
    let der = b64_decode(body)?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).ok()?;
    Some(pair.public().as_ref().to_vec())
}

/// Base64 in either alphabet, padded or not, whitespace skipped.
fn b64_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// An `application/x-www-form-urlencoded` body.
fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
