//! Vertex AI's credentials: a service account key signs a short JWT (RS256), which Google's token
//! endpoint trades for an access token (RFC 7523, the "JWT bearer" grant); requests carry that
//! token as `Authorization: Bearer`.
//!
//! The token lives about an hour. It is cached until a minute before it expires, so no request
//! goes out with a token about to lapse in flight, and refreshed by one caller at a time: callers
//! that find it stale queue on a gate, and all but the first find a fresh one when they get in.
//! Tokens and assertions are [`Secret`]s: never logged, and removed from any error message.
//!
//! Base64 and PEM are small enough to write here rather than take a crate for.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relais_core::{Error, ErrorKind, Secret, redact};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Serialize;
use tokio::time::Instant;

use super::wire::{ServiceAccountFile, TokenErrorBody, TokenResponse};

/// What the token may do: Vertex AI accepts only the broad Cloud scope for `generateContent`.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, for key files that do not name one.
pub(crate) const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// `grant_type` of RFC 7523, form-encoded.
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// Lifetime of the signed assertion: Google's maximum, one hour.
const ASSERTION_SECS: u64 = 3600;
/// A cached token is replaced this long before it expires: a request that picks it up just
/// before then still has a minute to reach Google with it.
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Longest token lifetime believed (Google's are one hour); keeps a bogus `expires_in` from
/// overflowing the clock arithmetic or pinning a dead token.
const MAX_TOKEN_SECS: u64 = 86_400;
/// The token exchange is one small POST; a minute without an answer means the endpoint is down.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// A service account key, parsed and ready to sign.
pub(crate) struct ServiceAccount {
    pub(crate) client_email: String,
    pub(crate) token_uri: String,
    pub(crate) private_key_id: Option<String>,
    pub(crate) project_id: Option<String>,
    key: RsaKeyPair,
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl ServiceAccount {
    /// Parse a key file's JSON. Errors say what is wrong without quoting the file.
    pub(crate) fn from_json(json: &str) -> Result<Self, String> {
        let file: ServiceAccountFile = serde_json::from_str(json).map_err(|e| {
            format!(
                "is not a service account key: invalid JSON at line {}, column {}",
                e.line(),
                e.column()
            )
        })?;
        if let Some(kind) = file.kind.as_deref() {
            if kind != "service_account" {
                return Err(format!(
                    "is a '{kind}' credential; Vertex AI needs a service account key \
                     (\"type\": \"service_account\")"
                ));
            }
        }
        let client_email = file
            .client_email
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "is not a service account key: no client_email".to_owned())?;
        let token_uri = file
            .token_uri
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        if !(token_uri.starts_with("https://") || token_uri.starts_with("http://")) {
            return Err(format!(
                "has a token_uri '{token_uri}' that is not an http(s) URL"
            ));
        }
        let pem = file
            .private_key
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "is not a service account key: no private_key".to_owned())?;
        Ok(Self {
            client_email,
            token_uri,
            private_key_id: file.private_key_id.filter(|s| !s.is_empty()),
            project_id: file.project_id.filter(|s| !s.is_empty()),
            key: signing_key(&pem)?,
        })
    }

    /// The signed JWT asking for a token, issued at `now` (seconds since the epoch).
    pub(crate) fn assertion(&self, now: u64) -> Result<String, Error> {
        let header = serde_json::to_vec(&JwtHeader {
            alg: "RS256",
            typ: "JWT",
            kid: self.private_key_id.as_deref(),
        })
        .map_err(|e| Error::internal(format!("cannot encode the JWT header: {e}")))?;
        let claims = serde_json::to_vec(&JwtClaims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now.saturating_add(ASSERTION_SECS),
        })
        .map_err(|e| Error::internal(format!("cannot encode the JWT claims: {e}")))?;
        let mut jwt = b64url_encode(&header);
        jwt.push('.');
        jwt.push_str(&b64url_encode(&claims));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .map_err(|_| Error::internal("cannot sign the Vertex AI token request"))?;
        jwt.push('.');
        jwt.push_str(&b64url_encode(&signature));
        Ok(jwt)
    }

    /// The public half of the key (DER `RSAPublicKey`), to check signatures in tests.
    #[cfg(test)]
    pub(crate) fn public_key_der(&self) -> Vec<u8> {
        self.key.public().as_ref().to_vec()
    }
}

/// The RSA key of a PEM block: PKCS#8 (`PRIVATE KEY`, what Google issues) or PKCS#1
/// (`RSA PRIVATE KEY`).
fn signing_key(pem: &str) -> Result<RsaKeyPair, String> {
    let (label, der) =
        pem_decode(pem).ok_or_else(|| "has a private_key that is not a PEM block".to_owned())?;
    let parsed = match label {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
        other => {
            return Err(format!(
                "has a private_key of type '{other}'; an RSA private key is needed"
            ));
        }
    };
    parsed.map_err(|e| format!("has a private_key that is not a usable RSA key ({e})"))
}

/// A cached access token.
struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// Access tokens for one service account: cached, refreshed one caller at a time.
pub(crate) struct TokenSource {
    account: ServiceAccount,
    http: reqwest::Client,
    /// Read on every request; held only to copy or replace the token, never across an await.
    cached: Mutex<Option<Cached>>,
    /// Held across the token exchange, on purpose: it is what makes a refresh single-flight.
    refresh: tokio::sync::Mutex<()>,
}

impl TokenSource {
    pub(crate) fn new(account: ServiceAccount, http: reqwest::Client) -> Self {
        Self {
            account,
            http,
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    #[cfg(test)]
    pub(crate) fn account(&self) -> &ServiceAccount {
        &self.account
    }

    /// A token good for at least [`REFRESH_MARGIN`] more, fetching one when needed.
    pub(crate) async fn token(&self) -> Result<Secret, Error> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _gate = self.refresh.lock().await;
        // Whoever held the gate before us may have refreshed it.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let (token, lifetime) = self.exchange().await?;
        // A token that lives less than the margin is used once and fetched again next time.
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN);
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            token: token.clone(),
            refresh_at,
        });
        Ok(token)
    }

    /// The cached token while it is fresh.
    fn fresh(&self) -> Option<Secret> {
        let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    /// When the cached token will be replaced, if there is one.
    #[cfg(test)]
    pub(crate) fn refresh_at(&self) -> Option<Instant> {
        self.cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.refresh_at)
    }

    /// Drop the cached token (Google refused it): the next request fetches a new one.
    pub(crate) fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Trade a fresh assertion for a token and its lifetime.
    async fn exchange(&self) -> Result<(Secret, Duration), Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let assertion = Secret::new(self.account.assertion(now)?);
        let body = format!("grant_type={GRANT_TYPE}&assertion={}", assertion.expose());
        let resp = self
            .http
            .post(self.account.token_uri.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .timeout(TOKEN_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let mut err = crate::http::from_transport(&e, false);
                err.message = format!("Vertex AI token exchange: {}", err.message);
                err
            })?;
        let status = resp.status().as_u16();
        let body = crate::http::read_limited(resp, MAX_TOKEN_BODY).await?;
        if !(200..300).contains(&status) {
            return Err(exchange_error(status, &body, &[&assertion]));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            Error::upstream(
                ErrorKind::Auth,
                "Vertex AI token exchange: the token endpoint answered without JSON",
            )
        })?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::upstream(
                    ErrorKind::Auth,
                    "Vertex AI token exchange: the token endpoint answered without an access token",
                )
            })?;
        let lifetime = Duration::from_secs(
            parsed
                .expires_in
                .unwrap_or(ASSERTION_SECS)
                .min(MAX_TOKEN_SECS),
        );
        Ok((Secret::new(token), lifetime))
    }
}

/// A refused token exchange. The credential is the gateway's, so a refusal is an upstream auth
/// failure; a throttled or failing endpoint stays retryable.
pub(crate) fn exchange_error(status: u16, body: &[u8], secrets: &[&Secret]) -> Error {
    let parsed = serde_json::from_slice::<TokenErrorBody>(body).unwrap_or_default();
    let reason = match (parsed.error.as_deref(), parsed.error_description.as_deref()) {
        (Some(code), Some(description)) => format!("{code}: {description}"),
        (Some(text), None) | (None, Some(text)) => text.to_owned(),
        (None, None) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "no reason given".to_owned()
            } else {
                text.to_owned()
            }
        }
    };
    let kind = match status {
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::Auth,
    };
    let message = format!("Vertex AI token exchange failed (HTTP {status}): {reason}");
    Error::upstream(kind, redact(&message, secrets)).with_status(status)
}

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with the URL-safe alphabet and no padding, as JWTs use it (RFC 7515 section 2).
pub(crate) fn b64url_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        // One byte makes two symbols, two make three, three make four.
        for i in 0..=chunk.len() {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(URL_SAFE[index as usize]));
        }
    }
    out
}

/// Decode base64 in either alphabet (standard `+/` or URL-safe `-_`), with or without padding,
/// skipping whitespace (PEM bodies are wrapped). `None` for anything else.
pub(crate) fn b64_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    let mut symbols: usize = 0;
    let mut padded = false;
    for c in input.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                padded = true;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        if padded {
            return None;
        }
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        symbols += 1;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone symbol in the last group holds less than a byte.
    if symbols % 4 == 1 {
        return None;
    }
    Some(out)
}

/// The label and DER bytes of the first PEM block in `pem`.
pub(crate) fn pem_decode(pem: &str) -> Option<(&str, Vec<u8>)> {
    const BEGIN: &str = "-----BEGIN ";
    let start = pem.find(BEGIN)?;
    let rest = pem.get(start + BEGIN.len()..)?;
    let label_end = rest.find("-----")?;
    let label = rest.get(..label_end)?;
    let body = rest.get(label_end + 5..)?;
    let end_marker = format!("-----END {label}-----");
    let end = body.find(end_marker.as_str())?;
    let der = b64_decode(body.get(..end)?)?;
    if der.is_empty() {
        return None;
    }
    Some((label, der))
}
