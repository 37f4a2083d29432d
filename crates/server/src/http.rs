//! HTTP plumbing every endpoint shares: header helpers, the per-request context that ends in
//! the response headers and renders errors in the client's dialect, and reading a body within
//! its limits and the decoding budget.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use relais_core::{Error, ErrorKind, Side};

use crate::clock::Instant;
use crate::dialect::Dialect;

/// Room held in the decoding budget while a body is read and parsed; given back on drop.
pub(crate) type Decoding = Option<tokio::sync::OwnedSemaphorePermit>;

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = header_str(headers, "authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client's `x-request-id` when it is sane, otherwise a fresh random one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    match header_str(headers, "x-request-id") {
        Some(id) if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_owned(),
        _ => format!("{:032x}", fastrand::u128(..)),
    }
}

/// Per-request bookkeeping that ends in the response headers.
pub(crate) struct Ctx {
    pub(crate) start: Instant,
    pub(crate) id: String,
    /// The client's API: errors are rendered in its shape.
    pub(crate) dialect: Dialect,
    /// The client's W3C `traceparent`, when it sent a valid one.
    pub(crate) traceparent: Option<relais_core::trace::TraceParent>,
}

impl Ctx {
    pub(crate) fn new(headers: &HeaderMap) -> Self {
        Self::for_dialect(headers, Dialect::OpenAi)
    }

    pub(crate) fn for_dialect(headers: &HeaderMap, dialect: Dialect) -> Self {
        Self {
            start: Instant::now(),
            id: request_id(headers),
            dialect,
            traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(relais_core::trace::TraceParent::parse),
        }
    }

    pub(crate) fn headers(&self, resp: &mut Response, upstream: Duration) {
        let overhead = self.start.elapsed().saturating_sub(upstream);
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            // Anthropic's SDKs read their own header name for the request id.
            if self.dialect == Dialect::Anthropic {
                h.insert(HeaderName::from_static("request-id"), v.clone());
            }
            h.insert(HeaderName::from_static("x-request-id"), v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0)) {
            h.insert(HeaderName::from_static("x-relais-overhead-ms"), v);
        }
    }

    pub(crate) fn error(&self, err: &Error, upstream: Duration) -> Response {
        let status = StatusCode::from_u16(self.dialect.error_status(err))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.dialect.error_body(err, &self.id)).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            HeaderName::from_static("x-relais-error-class"),
            HeaderValue::from_static(err.kind.as_str()),
        );
        if let Some(after) = err.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                h.insert(header::RETRY_AFTER, v);
            }
        }
        self.headers(&mut resp, upstream);
        resp
    }
}

/// Bytes in whole KiB, rounded up (the decoding budget's unit).
pub(crate) fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Parsing a body costs several times its size (300k tiny messages in 9 MB made ~65 MiB of
/// canonical request): the budget bounds how many bytes are being read and decoded at once,
/// and a request past it is turned away at once with 503 and `retry-after`, not queued.
pub(crate) fn take_decoding(
    budget: &Arc<tokio::sync::Semaphore>,
    bytes: usize,
    held: &mut Decoding,
) -> Result<(), Error> {
    let want = kib(bytes).saturating_sub(held.as_ref().map_or(0, |p| p.num_permits() as u32));
    if want == 0 {
        return Ok(());
    }
    match budget.clone().try_acquire_many_owned(want) {
        Ok(p) => {
            crate::memory::large_body_seen();
            match held {
                Some(h) => h.merge(p),
                None => *held = Some(p),
            }
            Ok(())
        }
        Err(_) => Err(Error::new(
            ErrorKind::Overloaded,
            Side::Gateway,
            "too many large request bodies are being decoded at once; retry shortly",
        )
        .with_retry(relais_core::Retry::After(Duration::from_secs(1)))),
    }
}

/// Read the body up to `limit`, refusing early when `content-length` already says too much,
/// and holding its size in the decoding budget (released when the returned guard drops, after
/// the caller parsed it).
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    budget: Option<&Arc<tokio::sync::Semaphore>>,
) -> Result<(Bytes, Decoding), Error> {
    let mut decoding: Decoding = None;
    let too_large = || {
        Error::new(
            ErrorKind::PayloadTooLarge,
            Side::Client,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(len) = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(too_large());
        }
        // Small bodies (most) cost the budget nothing worth counting.
        if let Some(budget) = budget.filter(|_| len > SMALL_BODY as u64) {
            if let Err(e) = take_decoding(budget, len as usize, &mut decoding) {
                // Read and drop the body (no memory, bounded by the body timeout) so the client
                // reads this 503 instead of a broken pipe, and retries.
                let mut stream = body.into_data_stream();
                while let Some(Ok(_)) = stream.next().await {}
                return Err(e);
            }
        }
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let timed_out = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<crate::listen::BodyTimedOut>())
                || e.into_inner().is::<crate::listen::BodyTimedOut>();
            if timed_out {
                Error::new(
                    ErrorKind::Timeout,
                    Side::Client,
                    "the request body was not received in time",
                )
            } else {
                Error::bad_request("could not read the request body")
            }
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        if let Some(budget) = budget.filter(|_| buf.len() + chunk.len() > SMALL_BODY) {
            take_decoding(budget, buf.len() + chunk.len(), &mut decoding)?;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buf), decoding))
}

/// The largest admin API body; admin bodies are small and not counted against the budget.
pub(crate) const ADMIN_BODY: usize = 64 * 1024;

/// Bodies up to this size are not counted against the decoding budget.
pub(crate) const SMALL_BODY: usize = 64 * 1024;

/// A small JSON or text answer with the headers every response carries.
pub(crate) fn plain(
    headers: &HeaderMap,
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response {
    let ctx = Ctx::new(headers);
    let mut resp = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}

/// `a=1&b=x%20y` as a map (the last value of a repeated name wins).
pub(crate) fn query_params(query: &str) -> std::collections::BTreeMap<String, String> {
    pub(crate) fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
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
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}
