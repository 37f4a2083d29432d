use std::fmt;

/// A credential read from config. It prints only as a masked prefix, so a `Debug` of any config
/// struct or a log line can never leak it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value, for the one place that must send it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// At most the first four characters, then a fixed mask: enough to tell two keys apart.
    pub fn masked(&self) -> String {
        if self.0.is_empty() {
            return "(empty)".to_owned();
        }
        let shown: String = self.0.chars().take(4).collect();
        if self.0.chars().count() <= 8 {
            "****".to_owned()
        } else {
            format!("{shown}****")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Remove credentials from a vendor's message before it reaches a client or a log: every
/// configured secret verbatim, and any token that looks like an API key (`sk-...`, `key-...`,
/// long opaque runs), because vendors echo partial keys in their 401 messages.
pub fn redact(message: &str, secrets: &[&Secret]) -> String {
    let mut out = message.to_owned();
    for secret in secrets {
        let s = secret.expose();
        if s.len() >= 4 {
            out = out.replace(s, "[REDACTED]");
        }
    }
    let mut result = String::with_capacity(out.len());
    for (i, word) in out.split(' ').enumerate() {
        if i > 0 {
            result.push(' ');
        }
        if looks_like_key(word) {
            result.push_str("[REDACTED]");
        } else {
            result.push_str(word);
        }
    }
    // Vendor messages can be long HTML pages; a client needs the gist, not the page.
    clip(&mut result, 1000);
    result
}

/// Lowercase hex of `bytes` (key hashes, signatures, nonces).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Cut `text` to at most `max` bytes (at a character boundary), marked with `...` when cut.
pub fn clip(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
}

/// [`redact`] applied to every string of an error that came from a vendor: message, code and
/// parameter. Providers pass every error through this on its way out, whatever field a vendor
/// chose to echo a key in.
pub fn redact_error(mut err: crate::Error, secrets: &[&Secret]) -> crate::Error {
    err.message = redact(&err.message, secrets);
    err.code = err.code.map(|c| redact(&c, secrets));
    err.param = err.param.map(|p| redact(&p, secrets));
    err
}

fn looks_like_key(word: &str) -> bool {
    let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
    let prefixed = ["sk-", "sk_", "key-", "AKIA", "AIza", "Bearer"]
        .iter()
        .any(|p| w.starts_with(p) && w.len() > p.len() + 6)
        // Google's OAuth access tokens (Vertex AI), however short a test makes them.
        || (w.starts_with("ya29.") && w.len() > 8);
    // Dots too: OAuth access tokens and JWTs are dot-separated runs.
    let opaque = w.len() >= 32
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && w.chars().any(|c| c.is_ascii_digit())
        && w.chars().any(|c| c.is_ascii_alphabetic());
    prefixed || opaque
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_whole() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn masked_never_shows_whole_key() {
        let s = Secret::new("sk-abcdefghijklmnop");
        assert_eq!(s.masked(), "sk-a****");
        assert_eq!(format!("{s:?}"), "sk-a****");
        assert_eq!(Secret::new("short").masked(), "****");
    }

    #[test]
    fn redact_removes_configured_and_key_like_tokens() {
        let s = Secret::new("my-upstream-secret");
        let msg = "Incorrect API key provided: sk-proj-abcdef1234. Also my-upstream-secret here.";
        let r = redact(msg, &[&s]);
        assert!(!r.contains("my-upstream-secret"), "{r}");
        assert!(!r.contains("sk-proj-abcdef1234"), "{r}");
        assert!(
            r.starts_with("Incorrect API key provided: [REDACTED]"),
            "{r}"
        );
    }

    #[test]
    fn redact_error_cleans_every_vendor_field() {
        let s = Secret::new("relais-upstream-plain-secret");
        let mut e =
            crate::Error::upstream(crate::ErrorKind::Server, "bad relais-upstream-plain-secret");
        e.code = Some("relais-upstream-plain-secret".into());
        e.param = Some("x ya29.a0AfH6SMBx3kK9q2Lm7nOpQrStUvWxYz0123456789".into());
        let e = redact_error(e, &[&s]);
        assert_eq!(e.message, "bad [REDACTED]");
        assert_eq!(e.code.as_deref(), Some("[REDACTED]"));
        assert_eq!(e.param.as_deref(), Some("x [REDACTED]"));
    }

    #[test]
    fn redact_keeps_ordinary_text_and_truncates() {
        let r = redact("This model's maximum context length is 8192 tokens.", &[]);
        assert_eq!(r, "This model's maximum context length is 8192 tokens.");
        let long = "word ".repeat(500);
        assert!(redact(&long, &[]).len() <= 1003);
    }
}
