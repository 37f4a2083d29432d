//! Who is calling the admin API, and what that caller may do. A caller presents an admin
//! credential as a bearer key (scripts, the CLI) or a console session cookie (the browser);
//! either way it becomes a [`Principal`] with the credential's name and role, put on the
//! request for the handlers (team scoping) and the audit log.
//!
//! Sessions are stateless so that any instance with the same config accepts them: the cookie
//! holds the credential's name, an expiry and a random nonce, signed with HMAC-SHA256 under
//! the credential's own key (changing the key ends its sessions). A change made with a cookie
//! must carry the session's CSRF token (an HMAC of the nonce) in `x-relais-csrf`, which a page
//! of another origin cannot read; with `SameSite=Strict` it is two locks, not one. Signing out
//! forgets the cookie in the browser and refuses its nonce on this instance until it expires.
//!
//! A leaf of the admin API: it depends on the config and the HTTP helpers only.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, Method};
use relais_core::{Error, ErrorKind, Side, hex};
use ring::hmac;

use crate::config::{AdminAccess, AdminCredential, Role};
use crate::http::{bearer, constant_time_eq, header_str};

/// The console's session cookie.
pub(crate) const SESSION_COOKIE: &str = "relais_session";
/// The header a change made with a session cookie carries its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-relais-csrf";
/// Sign-outs remembered (until their sessions would have expired); past it, the oldest go.
const MAX_SIGNED_OUT: usize = 10_000;
/// Failed sign-ins a second, for the whole instance: guessing a 16-character key is hopeless
/// anyway, and this keeps a guesser from spending the instance's CPU on HMACs.
const FAILED_SIGN_INS_PER_SEC: u32 = 10;

/// The caller of an admin request.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub name: String,
    pub role: Role,
    /// The team (name or id) a `team_admin` manages.
    pub team: Option<String>,
    /// The client's address (the audit log's "from where").
    pub address: Option<String>,
}

/// Console sessions signed out on this instance, and the sign-in throttle.
#[derive(Default)]
pub(crate) struct Sessions {
    /// Nonce to expiry (Unix seconds).
    signed_out: Mutex<HashMap<String, u64>>,
    /// Failed sign-ins in the current second: (second, count).
    failures: Mutex<(u64, u32)>,
}

/// A session as its cookie says, once its signature is checked.
struct Session<'a> {
    credential: &'a AdminCredential,
    expires: u64,
    nonce: &'a str,
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn sign(credential: &AdminCredential, message: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, credential.key.expose().as_bytes());
    hex(hmac::sign(&key, message.as_bytes()).as_ref())
}

/// The CSRF token of a session: derived, so no instance needs to remember it.
fn csrf_of(credential: &AdminCredential, nonce: &str) -> String {
    sign(credential, &format!("csrf:{nonce}"))
}

fn denied(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::PermissionDenied, Side::Client, message)
}

fn unauthenticated(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Auth, Side::Client, message)
}

/// The value of cookie `name` in the request, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl Sessions {
    /// Sign in with `presented`: a new session's cookie value, its CSRF token and expiry; a
    /// wrong key is refused (and counted against the instance's sign-in throttle).
    pub(crate) fn sign_in<'a>(
        &self,
        access: &'a AdminAccess,
        presented: &str,
        now: u64,
    ) -> Result<(String, String, &'a AdminCredential), Error> {
        {
            let f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if f.0 == now && f.1 >= FAILED_SIGN_INS_PER_SEC {
                return Err(Error::new(
                    ErrorKind::RateLimited,
                    Side::Client,
                    "too many failed sign-ins; try again in a second",
                )
                .with_retry(relais_core::Retry::After(Duration::from_secs(1))));
            }
        }
        let Some(credential) = access.find(presented) else {
            let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            *f = if f.0 == now { (now, f.1 + 1) } else { (now, 1) };
            return Err(unauthenticated("invalid admin key"));
        };
        let mut nonce = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| Error::internal("the operating system's random source failed"))?;
        let nonce = hex(&nonce);
        let expires = now + access.session.as_secs();
        let payload = format!("{}.{expires}.{nonce}", hex(credential.name.as_bytes()));
        let mac = sign(credential, &payload);
        Ok((
            format!("{payload}.{mac}"),
            csrf_of(credential, &nonce),
            credential,
        ))
    }

    /// The session of a cookie value, when its signature holds, it has not expired and it was
    /// not signed out here.
    fn session<'a>(
        &self,
        access: &'a AdminAccess,
        value: &'a str,
        now: u64,
    ) -> Option<Session<'a>> {
        let mut parts = value.split('.');
        let (name, expires, nonce, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let name = unhex(name)?;
        let credential = access.credentials.iter().find(|c| c.name == name)?;
        let payload = value.get(..value.len() - mac.len() - 1)?;
        if !constant_time_eq(sign(credential, payload).as_bytes(), mac.as_bytes()) {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        if expires <= now {
            return None;
        }
        let out = self
            .signed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if out.contains_key(nonce) {
            return None;
        }
        Some(Session {
            credential,
            expires,
            nonce,
        })
    }

    /// Forget the session of this request's cookie on this instance.
    pub(crate) fn sign_out(&self, access: &AdminAccess, headers: &HeaderMap, now: u64) {
        let Some(value) = cookie(headers, SESSION_COOKIE) else {
            return;
        };
        let Some(s) = self.session(access, value, now) else {
            return;
        };
        let mut out = self
            .signed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        out.retain(|_, exp| *exp > now);
        if out.len() >= MAX_SIGNED_OUT {
            if let Some(oldest) = out.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                out.remove(&oldest);
            }
        }
        out.insert(s.nonce.to_owned(), s.expires);
    }

    /// Who the request comes from: an admin credential as a bearer key (or `x-api-key`), or a
    /// console session; with a session, a change must carry the session's CSRF token. Also
    /// the session's CSRF token and expiry, for `GET /admin/session`.
    pub(crate) fn principal(
        &self,
        access: &AdminAccess,
        method: &Method,
        headers: &HeaderMap,
        address: Option<String>,
        now: u64,
    ) -> Result<(Principal, Option<(String, u64)>), Error> {
        let who = |c: &AdminCredential| Principal {
            name: c.name.clone(),
            role: c.role,
            team: c.team.clone(),
            address: address.clone(),
        };
        if let Some(presented) = bearer(headers).or_else(|| header_str(headers, "x-api-key")) {
            return match access.find(presented) {
                Some(c) => Ok((who(c), None)),
                None => Err(unauthenticated("invalid or missing admin key")),
            };
        }
        let Some(value) = cookie(headers, SESSION_COOKIE) else {
            return Err(unauthenticated("invalid or missing admin key"));
        };
        let Some(s) = self.session(access, value, now) else {
            return Err(unauthenticated(
                "the console session has expired or was signed out; sign in again",
            ));
        };
        let csrf = csrf_of(s.credential, s.nonce);
        if !matches!(*method, Method::GET | Method::HEAD) {
            let sent = header_str(headers, CSRF_HEADER).unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                return Err(denied(format!(
                    "a change made with a console session needs its CSRF token in {CSRF_HEADER}"
                )));
            }
        }
        Ok((who(s.credential), Some((csrf, s.expires))))
    }
}

/// Whether `role` may call `method path` at all (a `team_admin` is scoped to its team further
/// by the handlers).
pub(crate) fn allowed(role: Role, method: &Method, path: &str) -> Result<(), Error> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match role {
        Role::Admin => Ok(()),
        Role::Viewer if read => Ok(()),
        Role::Viewer => Err(denied("the viewer role may look, not change anything")),
        Role::TeamAdmin => {
            let keys = path == "/admin/keys" || path.starts_with("/admin/keys/");
            let team_reads = read
                && (path == "/admin/teams"
                    || path == "/admin/usage"
                    || path == "/admin/requests"
                    || path == "/admin/series"
                    || path == "/admin/session"
                    || path == "/admin/openapi.json"
                    || path.starts_with("/admin/ledger/"));
            if keys || team_reads {
                Ok(())
            } else {
                Err(denied(
                    "a team_admin manages its team's keys and reads its team's usage; nothing else",
                ))
            }
        }
    }
}

/// The `Set-Cookie` value of a new session (`Secure` over TLS), or of a sign-out (`value`
/// empty: the browser forgets it).
pub(crate) fn session_cookie(value: &str, max_age: Duration, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::Secret;

    fn access() -> AdminAccess {
        let c = |name: &str, key: &str, role| AdminCredential {
            name: name.to_owned(),
            key: Secret::new(key.to_owned()),
            role,
            team: None,
        };
        AdminAccess {
            credentials: vec![
                c("admin", "admin-key-0123456789", Role::Admin),
                c("viewer", "viewer-key-0123456789", Role::Viewer),
            ],
            session: Duration::from_secs(3600),
            client_cert: false,
        }
    }

    fn with_cookie(value: &str, csrf: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            format!("other=1; {SESSION_COOKIE}={value}")
                .parse()
                .unwrap(),
        );
        if let Some(t) = csrf {
            h.insert(CSRF_HEADER, t.parse().unwrap());
        }
        h
    }

    #[test]
    fn sessions_sign_expire_need_csrf_and_sign_out() {
        let (a, s) = (access(), Sessions::default());
        assert!(s.sign_in(&a, "wrong-key-0123456789", 100).is_err());
        let (value, csrf, who) = s.sign_in(&a, "viewer-key-0123456789", 100).unwrap();
        assert_eq!(who.name, "viewer");
        // Reads need no token; a change needs the right one.
        let (p, session) = s
            .principal(&a, &Method::GET, &with_cookie(&value, None), None, 200)
            .unwrap();
        assert_eq!((p.name.as_str(), p.role), ("viewer", Role::Viewer));
        assert_eq!(session.unwrap().0, csrf);
        for bad in [None, Some("0000")] {
            let e = s
                .principal(&a, &Method::POST, &with_cookie(&value, bad), None, 200)
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::PermissionDenied);
        }
        assert!(
            s.principal(
                &a,
                &Method::POST,
                &with_cookie(&value, Some(&csrf)),
                None,
                200
            )
            .is_ok()
        );
        // Tampering with the name, expiry or signature, or waiting past the expiry: refused.
        let forged = value.replacen(&hex(b"viewer"), &hex(b"admin"), 1);
        let later = value.replacen(".3700.", ".99999.", 1);
        for v in [forged.as_str(), later.as_str(), "x.y.z.w", ""] {
            assert!(
                s.principal(&a, &Method::GET, &with_cookie(v, None), None, 200)
                    .is_err(),
                "{v}"
            );
        }
        assert!(
            s.principal(&a, &Method::GET, &with_cookie(&value, None), None, 3700)
                .is_err()
        );
        // Signed out: refused from then on.
        s.sign_out(&a, &with_cookie(&value, None), 300);
        assert!(
            s.principal(&a, &Method::GET, &with_cookie(&value, None), None, 301)
                .is_err()
        );
    }

    #[test]
    fn failed_sign_ins_are_throttled() {
        let (a, s) = (access(), Sessions::default());
        for _ in 0..FAILED_SIGN_INS_PER_SEC {
            assert_eq!(s.sign_in(&a, "nope", 5).unwrap_err().kind, ErrorKind::Auth);
        }
        let e = s.sign_in(&a, "admin-key-0123456789", 5).unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert!(s.sign_in(&a, "admin-key-0123456789", 6).is_ok());
    }

    #[test]
    fn roles_reach_what_they_should() {
        let get = Method::GET;
        let post = Method::POST;
        assert!(allowed(Role::Viewer, &get, "/admin/keys").is_ok());
        assert!(allowed(Role::Viewer, &post, "/admin/keys").is_err());
        assert!(allowed(Role::Viewer, &Method::PATCH, "/admin/teams/t").is_err());
        assert!(allowed(Role::TeamAdmin, &post, "/admin/keys").is_ok());
        assert!(allowed(Role::TeamAdmin, &Method::PATCH, "/admin/keys/k").is_ok());
        assert!(allowed(Role::TeamAdmin, &get, "/admin/usage").is_ok());
        assert!(allowed(Role::TeamAdmin, &post, "/admin/teams").is_err());
        assert!(allowed(Role::TeamAdmin, &post, "/admin/promote").is_err());
        assert!(allowed(Role::TeamAdmin, &get, "/admin/readiness").is_err());
        assert!(allowed(Role::TeamAdmin, &get, "/admin/audit").is_err());
        assert!(allowed(Role::Admin, &post, "/admin/promote").is_ok());
    }
}
