//! The one HTTP client every provider shares: one connection pool per process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Pool-wide settings, from the server config.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 512,
        }
    }
}

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

/// The shared client, built on first use with `settings` (later settings are ignored: a pool is
/// per process).
pub fn shared_client(settings: &HttpSettings) -> Result<reqwest::Client, String> {
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    // rustls needs a process-wide crypto provider; ring builds fast and has no cmake step.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(concat!("relais/", env!("CARGO_PKG_VERSION")))
        // Nagle plus delayed ACK adds ~40 ms to small writes under keep-alive.
        .tcp_nodelay(true)
        // Never follow a vendor's redirect: reqwest would re-send the body (with every header
        // but `Authorization`, so `api-key` and `x-api-key` too) to wherever `Location` points,
        // and a GET to an internal address would show its answer to the client. A 3xx is an
        // upstream error of its own (see `send`).
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.connect_timeout)
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// The most bytes one streamed upstream answer may deliver, unless configured otherwise.
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 256 * 1024 * 1024;

static MAX_STREAM_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_STREAM_BYTES);

/// Set the cap on one streamed upstream answer (`[upstream] max_stream_bytes`); streams that
/// start after the call use it. A stream has a time limit too, but a fast hostile upstream
/// could fill memory and the client's disk well within it.
pub fn set_max_stream_bytes(limit: u64) {
    MAX_STREAM_BYTES.store(limit.max(1), Ordering::Relaxed);
}

/// Counts the bytes a streamed answer delivered against the cap in force when it started.
pub(crate) struct StreamMeter {
    seen: u64,
    limit: u64,
}

impl StreamMeter {
    pub(crate) fn new() -> Self {
        Self {
            seen: 0,
            limit: MAX_STREAM_BYTES.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(&mut self, bytes: usize) -> Result<(), relais_core::Error> {
        self.seen = self.seen.saturating_add(bytes as u64);
        if self.seen > self.limit {
            return Err(relais_core::Error::upstream(
                relais_core::ErrorKind::Protocol,
                format!(
                    "upstream stream exceeds {} bytes (upstream.max_stream_bytes)",
                    self.limit
                ),
            ));
        }
        Ok(())
    }
}

/// Largest error body read from a vendor; error bodies are small, a bigger one is cut.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A vendor's non-2xx answer, read whole (up to 64 KiB) for the vendor's own error mapping.
pub(crate) struct Rejected {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// The W3C trace context header, built at compile time.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Send a request. A transport failure is a typed error; a non-2xx answer comes back as
/// [`Rejected`] so each provider maps it with its own `error::from_response`.
pub(crate) async fn send(
    mut rb: reqwest::RequestBuilder,
) -> Result<Result<reqwest::Response, Rejected>, relais_core::Error> {
    // A traced request tells the vendor its attempt's span (W3C trace context).
    if let Some(tp) = relais_core::trace::upstream_traceparent() {
        if let Ok(v) = http::HeaderValue::from_bytes(&tp) {
            rb = rb.header(TRACEPARENT, v);
        }
    }
    let resp = rb.send().await.map_err(|e| from_transport(&e, false))?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(Ok(resp));
    }
    if (300..400).contains(&status) {
        return Err(redirected(status));
    }
    let headers = resp.headers().clone();
    let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
    Ok(Err(Rejected {
        status,
        headers,
        body,
    }))
}

/// A vendor answered with a redirect. Its `Location` is never requested nor shown (it may name
/// an internal host), and the same request is not sent again: a vendor that redirects is
/// misconfigured or hostile, and the operator must see it.
pub(crate) fn redirected(status: u16) -> relais_core::Error {
    relais_core::Error::upstream(
        relais_core::ErrorKind::Protocol,
        format!(
            "upstream answered with a redirect (HTTP {status}); relais never follows redirects"
        ),
    )
    .with_status(status)
    .with_code("upstream_redirect")
    .with_retry(relais_core::Retry::No)
}

/// Read a whole upstream body, refusing one larger than `limit`.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, relais_core::Error> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(relais_core::Error::upstream(
                        relais_core::ErrorKind::Protocol,
                        format!("upstream response exceeds {limit} bytes"),
                    ));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(from_transport(&e, true)),
        }
    }
}

/// A transport failure of reqwest, before or during the body.
pub(crate) fn from_transport(err: &reqwest::Error, during_body: bool) -> relais_core::Error {
    use relais_core::{Error, ErrorKind, Retry};
    if err.is_timeout() {
        Error::upstream(ErrorKind::Timeout, "upstream timed out")
    } else if during_body {
        Error::upstream(
            ErrorKind::Protocol,
            "upstream connection broke while sending the response",
        )
        .with_retry(Retry::Yes)
    } else {
        // Connection refused, reset, closed before headers, TLS failure: all "could not get an
        // answer", all safe to try elsewhere because the upstream produced nothing.
        let mut msg = String::from("could not reach upstream");
        if err.is_connect() {
            msg.push_str(" (connect failed)");
        }
        Error::upstream(ErrorKind::Connect, msg)
    }
}

/// `retry-after-ms` (OpenAI, Azure) or `retry-after` in seconds, capped at a day. HTTP dates are
/// not used by any vendor we speak, so they are ignored rather than guessed at; so is a value
/// that is not a finite number (`NaN` and `inf` parse as f64 and would panic `Duration`).
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs = |name: &str, scale: f64| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite())
            .and_then(|s| Duration::try_from_secs_f64((s / scale).clamp(0.0, 86_400.0)).ok())
    };
    secs("retry-after-ms", 1000.0).or_else(|| secs("retry-after", 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_never_panics_on_odd_numbers() {
        for v in ["NaN", "inf", "-inf", "-5", "1e300", "abc", ""] {
            for name in ["retry-after", "retry-after-ms"] {
                let mut h = http::HeaderMap::new();
                h.insert(name, http::HeaderValue::from_static(v));
                let got = retry_after(&h);
                assert!(
                    got.is_none_or(|d| d <= Duration::from_secs(86_400)),
                    "{name}: {v}"
                );
            }
        }
        let mut h = http::HeaderMap::new();
        h.insert("retry-after-ms", http::HeaderValue::from_static("1500"));
        h.insert("retry-after", http::HeaderValue::from_static("9"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.remove("retry-after-ms");
        assert_eq!(retry_after(&h), Some(Duration::from_secs(9)));
    }
}
