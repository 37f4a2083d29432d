//! AWS Signature Version 4, as botocore computes it for `bedrock-runtime`.
//!
//! Pure functions of the request and the time, so tests can pin both; the test vectors below
//! were produced by botocore 1.44.5 (`SigV4Auth`) on the same inputs. What botocore does for this
//! service, and so what is done here:
//! - Signed headers: `content-type`, `host`, `x-amz-date`, and `x-amz-security-token` when a
//!   session token is used. `x-amz-content-sha256` is neither sent nor signed (only S3 wants it);
//!   the payload hash still goes into the canonical request.
//! - Canonical URI: the path as sent, dot segments and empty segments removed, then URI-encoded
//!   *again* (every byte but `A-Za-z0-9-_.~/`). A model id `a:b` travels as `a%3Ab` and is signed
//!   as `a%253Ab`; the `/` of an ARN travels as `%2F` and is signed as `%252F`.
//! - Scope `{yyyymmdd}/{region}/bedrock/aws4_request`: the signing name is `bedrock`, not the
//!   endpoint prefix `bedrock-runtime`.

use relais_core::{Secret, hex};
use ring::{digest, hmac};

/// The service name in the credential scope (`signingName` in the service model).
pub(crate) const SERVICE: &str = "bedrock";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// AWS credentials: a long-term key pair, or temporary ones with their session token.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// What is signed of one request.
pub(crate) struct SignRequest<'a> {
    pub method: &'a str,
    /// `host[:port]` exactly as the `Host` header (or HTTP/2 `:authority`) will carry it.
    pub host: &'a str,
    /// The path as sent on the wire, already percent-encoded.
    pub path: &'a str,
    /// The raw query string without `?`; empty when there is none.
    pub query: &'a str,
    pub content_type: &'a str,
    /// Lowercase hex SHA-256 of the body ([`sha256_hex`]), computed by the caller so that a
    /// large body can be hashed off the async workers.
    pub payload_hash: &'a str,
}

/// The two headers that carry a signature (the session token, when there is one, goes beside
/// them as `x-amz-security-token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    /// `x-amz-date`: `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// `authorization`.
    pub authorization: String,
}

/// Sign `req` for `region` at `unix_secs` (seconds since the epoch, UTC).
pub(crate) fn sign(
    req: &SignRequest<'_>,
    creds: &Credentials,
    region: &str,
    unix_secs: u64,
) -> Signature {
    let amz_date = amz_date(unix_secs);
    let date = amz_date.get(..8).unwrap_or_default();
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let (canonical, signed_headers) = canonical_request(req, creds, &amz_date);
    let to_sign = string_to_sign(&amz_date, &scope, &canonical);
    let key = signing_key(creds.secret_access_key.expose(), date, region);
    let signature = hex(hmac::sign(&key, to_sign.as_bytes()).as_ref());
    Signature {
        authorization: format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id.expose()
        ),
        amz_date,
    }
}

/// The canonical request and its `SignedHeaders` list.
pub(crate) fn canonical_request(
    req: &SignRequest<'_>,
    creds: &Credentials,
    amz_date: &str,
) -> (String, String) {
    let mut headers: Vec<(&str, String)> = vec![
        ("content-type", trim_all(req.content_type)),
        ("host", trim_all(req.host)),
        ("x-amz-date", amz_date.to_owned()),
    ];
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token", trim_all(token.expose())));
    }
    headers.sort_by_key(|h| h.0);
    let mut canonical_headers = String::new();
    for (name, value) in &headers {
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(value);
        canonical_headers.push('\n');
    }
    let signed_headers = headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        req.payload_hash
    );
    (canonical, signed_headers)
}

pub(crate) fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn signing_key(secret: &str, date: &str, region: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), SERVICE);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// Header values are trimmed and inner runs of whitespace become one space (SigV4's Trimall).
fn trim_all(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// botocore's canonical URI: dot segments and empty segments removed, then every byte outside
/// the unreserved set and `/` percent-encoded, `%` of the wire encoding included.
pub(crate) fn canonical_uri(path: &str) -> String {
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
    let mut normalized = String::with_capacity(path.len() + 1);
    normalized.push('/');
    normalized.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    uri_encode(&normalized, true)
}

/// The query's `key=value` pairs sorted, as botocore signs a query already in the URL.
fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encode every byte but the unreserved ones (`A-Za-z0-9-_.~`), and `/` when `keep_slash`.
/// Also the encoding of a model id in the URL (`keep_slash` false), as botocore encodes a URI
/// label.
pub(crate) fn uri_encode(input: &str, keep_slash: bool) -> String {
    const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(UPPER_HEX[usize::from(b >> 4)]));
            out.push(char::from(UPPER_HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// `YYYYMMDDTHHMMSSZ` for a time in seconds since the epoch, UTC.
pub(crate) fn amz_date(unix_secs: u64) -> String {
    let (year, month, day) = civil_from_days(unix_secs / 86_400);
    let secs = unix_secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// restricted to days after the epoch, so all of it is unsigned).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01: leap days then fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of the 400-year era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year, [0, 365]
    let mp = (5 * doy + 2) / 153; // March-based month, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCESS_KEY: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str =
        "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJGMEQCIExampleSessionToken+/=";
    /// 2015-08-30T12:36:00Z.
    const WHEN: u64 = 1_440_938_160;
    /// The body botocore serialised for `converse(messages=[user "hi"])`.
    const BODY: &[u8] = br#"{"messages": [{"role": "user", "content": [{"text": "hi"}]}]}"#;
    const BODY_SHA256: &str = "23aab397f4d1f51b8846a1cea8ead51c4766038fe8b80730645a50f05af4d41e";

    fn creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: Secret::new(ACCESS_KEY),
            secret_access_key: Secret::new(SECRET),
            session_token: token.map(Secret::new),
        }
    }

    fn request<'a>(host: &'a str, path: &'a str, hash: &'a str) -> SignRequest<'a> {
        SignRequest {
            method: "POST",
            host,
            path,
            query: "",
            content_type: "application/json",
            payload_hash: hash,
        }
    }

    const AWS_HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";

    #[test]
    fn plain_request_matches_botocore() {
        assert_eq!(sha256_hex(BODY), BODY_SHA256);
        let req = request(AWS_HOST, "/model/amazon.nova-lite-v1/converse", BODY_SHA256);
        let (canonical, signed) = canonical_request(&req, &creds(None), "20150830T123600Z");
        assert_eq!(
            canonical,
            "POST\n/model/amazon.nova-lite-v1/converse\n\ncontent-type:application/json\n\
             host:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             content-type;host;x-amz-date\n\
             23aab397f4d1f51b8846a1cea8ead51c4766038fe8b80730645a50f05af4d41e"
        );
        assert_eq!(signed, "content-type;host;x-amz-date");
        assert_eq!(
            string_to_sign(
                "20150830T123600Z",
                "20150830/us-east-1/bedrock/aws4_request",
                &canonical
            ),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/bedrock/aws4_request\n\
             46a964d6fd7c086aa6ced4176e0d1348ce22041271eda98f89ab3125f75e3970"
        );
        assert_eq!(
            sign(&req, &creds(None), "us-east-1", WHEN),
            Signature {
                amz_date: "20150830T123600Z".into(),
                authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0f655e65c048bcb5b6503b343d78425616275e3e4821b5cd5c0cc515e3b93b47".into(),
            }
        );
    }

    #[test]
    fn session_token_is_signed() {
        let req = request(AWS_HOST, "/model/amazon.nova-lite-v1/converse", BODY_SHA256);
        let (canonical, signed) = canonical_request(&req, &creds(Some(TOKEN)), "20150830T123600Z");
        assert!(canonical.contains(&format!("\nx-amz-security-token:{TOKEN}\n")));
        assert_eq!(signed, "content-type;host;x-amz-date;x-amz-security-token");
        assert_eq!(
            sign(&req, &creds(Some(TOKEN)), "us-east-1", WHEN).authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=b271336ce520a8adcce2d768056590145af085552e8ed97666d8917e89f9ac20"
        );
    }

    #[test]
    fn model_id_with_colon_is_encoded_twice() {
        let model = "anthropic.claude-3-haiku-20240307-v1:0";
        let path = format!("/model/{}/converse-stream", uri_encode(model, false));
        assert_eq!(
            path,
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
        );
        assert_eq!(
            canonical_uri(&path),
            "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse-stream"
        );
        let req = request(AWS_HOST, &path, BODY_SHA256);
        assert_eq!(
            sign(&req, &creds(None), "us-east-1", WHEN).authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=d21bd73f9972e527a7324e439b2fa300ae3525cb70ec788ba216cf63f588e64f"
        );
    }

    #[test]
    fn arn_model_id_keeps_its_slash_inside_the_segment() {
        let model = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0";
        let path = format!("/model/{}/converse", uri_encode(model, false));
        assert_eq!(
            path,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"
        );
        assert_eq!(
            canonical_uri(&path),
            "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Ainference-profile%252Fus.anthropic.claude-3-5-sonnet-20241022-v2%253A0/converse"
        );
        let req = request(AWS_HOST, &path, BODY_SHA256);
        assert_eq!(
            sign(&req, &creds(None), "us-east-1", WHEN).authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=dcbdba72c6f9c7525e280eb688d4491aa533922f9aab62a130d3e14041e9b51c"
        );
    }

    #[test]
    fn endpoint_override_signs_its_host_and_port() {
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        let req = request("127.0.0.1:8080", path, BODY_SHA256);
        let (canonical, _) = canonical_request(&req, &creds(None), "20150830T123600Z");
        assert!(canonical.contains("\nhost:127.0.0.1:8080\n"), "{canonical}");
        assert_eq!(
            sign(&req, &creds(None), "eu-west-3", WHEN).authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-3/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=a219d0a8434a82e3f06c94a3145e735761b62de0afa9846e75874b2691cc6787"
        );
    }

    #[test]
    fn canonical_uri_follows_botocore() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/a//b/./c/../d/"), "/a/b/d/");
        assert_eq!(
            canonical_uri("/prefix/model/x%3Ay"),
            "/prefix/model/x%253Ay"
        );
        assert_eq!(canonical_uri("/a b~"), "/a%20b~");
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(uri_encode("ü/ +", false), "%C3%BC%2F%20%2B");
    }

    #[test]
    fn header_values_are_trimmed() {
        assert_eq!(trim_all("  a   b \t c  "), "a b c");
    }

    #[test]
    fn dates_match_python() {
        // `datetime.fromtimestamp(s, UTC).strftime("%Y%m%dT%H%M%SZ")` for each.
        for (secs, expected) in [
            (0, "19700101T000000Z"),
            (1_440_938_160, "20150830T123600Z"),
            (951_782_400, "20000229T000000Z"),
            (951_868_799, "20000229T235959Z"),
            (1_709_210_096, "20240229T123456Z"),
            (1_735_689_599, "20241231T235959Z"),
            (4_102_444_799, "20991231T235959Z"),
            (253_402_300_799, "99991231T235959Z"),
        ] {
            assert_eq!(amz_date(secs), expected, "{secs}");
        }
        // Every day boundary for a few centuries: monotonic and well-formed.
        let mut previous = String::new();
        for day in (0..150_000u64).step_by(7) {
            let d = amz_date(day * 86_400);
            assert_eq!(d.len(), 16);
            assert!(d > previous, "{d} after {previous}");
            previous = d;
        }
        assert!(amz_date(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn sha256_hex_is_lowercase() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
