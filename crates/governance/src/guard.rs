//! Data guardrails: detectors that find sensitive values in a request's text, in this
//! process, with no external service. Each detector names a data class; a value is reported
//! as (class, byte range), and its text never leaves this module in a message, a log or a
//! metric.
//!
//! A candidate is found by a pattern, then confirmed by the value's own rules where it has
//! some: the IBAN's mod-97 check, the payment card's Luhn digit and issuer prefix, the US
//! SSN's reserved numbers, the French NIR's key. Secrets are known key prefixes of the major
//! vendors and clouds, private-key blocks, and long random-looking tokens (high entropy, mixed
//! letters and digits). Where two findings overlap, the stronger class wins (a card number is
//! not also a phone number).

use std::net::{Ipv4Addr, Ipv6Addr};

pub mod mask;

use regex::Regex;

/// One sensitive value: its class and where it is in the text (bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub class: String,
    pub start: usize,
    pub end: usize,
}

/// A class from the configuration: its name and pattern.
#[derive(Debug, Clone)]
pub struct CustomDetector {
    pub class: String,
    pub pattern: String,
}

/// How a candidate is confirmed.
#[derive(Clone, Copy)]
enum Check {
    None,
    Iban,
    Card,
    Ssn,
    Nir,
    Ipv4,
    Ipv6,
    Entropy,
    Phone,
}

struct Detector {
    class: String,
    re: Regex,
    check: Check,
    /// Higher wins an overlap.
    rank: u8,
}

/// The built-in classes, strongest first.
pub const CLASSES: [&str; 8] = [
    "secret",
    "payment_card",
    "iban",
    "fr_nir",
    "us_ssn",
    "email",
    "phone",
    "ip_address",
];

/// Every detector, compiled once.
pub struct Detectors {
    all: Vec<Detector>,
}

fn built_in() -> Vec<(&'static str, &'static str, Check, u8)> {
    vec![
        // Vendor and cloud key formats, then private-key blocks, then random-looking tokens.
        (
            "secret",
            r"\b(?:sk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}|gho_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_\-]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35}|sk_live_[0-9A-Za-z]{24,}|rk_live_[0-9A-Za-z]{24,}|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{36})",
            Check::None,
            90,
        ),
        (
            "secret",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z)",
            Check::None,
            90,
        ),
        ("secret", r"[A-Za-z0-9+/_\-]{32,}={0,2}", Check::Entropy, 85),
        (
            "payment_card",
            r"\b\d(?:[ \-]?\d){12,18}\b",
            Check::Card,
            80,
        ),
        (
            "iban",
            r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b",
            Check::Iban,
            75,
        ),
        (
            "fr_nir",
            r"\b[12][ ]?\d{2}[ ]?(?:0[1-9]|1[0-2]|[2-9]\d)[ ]?(?:\d{2}|2[AB])[ ]?\d{3}[ ]?\d{3}[ ]?\d{2}\b",
            Check::Nir,
            70,
        ),
        ("us_ssn", r"\b\d{3}-\d{2}-\d{4}\b", Check::Ssn, 65),
        (
            "email",
            r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b",
            Check::None,
            60,
        ),
        (
            "phone",
            r"(?:\+\d{1,3}[ .\-]?|\(\d{1,4}\)[ .\-]?|\b)\d{1,4}(?:[ .\-]\d{2,4}){1,5}\b|\+\d{8,15}\b",
            Check::Phone,
            50,
        ),
        (
            "ip_address",
            r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
            Check::Ipv4,
            40,
        ),
        (
            "ip_address",
            r"(?i)\b(?:[0-9a-f]{1,4}:){1,7}(?::|(?::[0-9a-f]{1,4}){1,7}|[0-9a-f]{1,4})\b",
            Check::Ipv6,
            40,
        ),
    ]
}

impl Detectors {
    /// The built-in detectors and `custom` ones (a bad pattern is an error naming it).
    pub fn new(custom: &[CustomDetector]) -> Result<Self, String> {
        let mut all = Vec::new();
        for (class, pattern, check, rank) in built_in() {
            all.push(Detector {
                class: class.to_owned(),
                re: Regex::new(pattern).map_err(|e| format!("built-in {class}: {e}"))?,
                check,
                rank,
            });
        }
        for c in custom {
            let re = regex::RegexBuilder::new(&c.pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("the pattern of class '{}': {e}", c.class))?;
            all.push(Detector {
                class: c.class.clone(),
                re,
                check: Check::None,
                rank: 95,
            });
        }
        Ok(Self { all })
    }

    /// Whether `class` is one a detector names (built in or custom).
    pub fn knows(&self, class: &str) -> bool {
        self.all.iter().any(|d| d.class == class)
    }

    /// Every sensitive value in `text`, in order, without overlaps.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut found: Vec<(usize, usize, u8, &str)> = Vec::new();
        for d in &self.all {
            for m in d.re.find_iter(text) {
                let (start, end) = trim(text, m.start(), m.end(), d.check);
                // A number written after a `+` is a phone number, never a card.
                let after_plus = start > 0 && text.as_bytes()[start - 1] == b'+';
                if matches!(d.check, Check::Card) && after_plus {
                    continue;
                }
                if start < end && confirmed(d.check, &text[start..end]) {
                    found.push((start, end, d.rank, &d.class));
                }
            }
        }
        // Strongest first; a finding that overlaps a stronger one is dropped.
        found.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let mut kept: Vec<(usize, usize, u8, &str)> = Vec::new();
        for f in found {
            if !kept.iter().any(|k| f.0 < k.1 && k.0 < f.1) {
                kept.push(f);
            }
        }
        kept.sort_by_key(|k| k.0);
        kept.into_iter()
            .map(|(start, end, _, class)| Finding {
                class: class.to_owned(),
                start,
                end,
            })
            .collect()
    }

    /// The classes found in `text`, each once, strongest first.
    pub fn classes(&self, text: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in self.scan(text) {
            if !out.contains(&f.class) {
                out.push(f.class);
            }
        }
        out
    }
}

/// A phone candidate may have taken a separator or a leading space; nothing else moves.
fn trim(text: &str, mut start: usize, mut end: usize, check: Check) -> (usize, usize) {
    if let Check::Phone = check {
        let b = text.as_bytes();
        while start < end && matches!(b[start], b' ' | b'.' | b'-') {
            start += 1;
        }
        while end > start && matches!(b[end - 1], b' ' | b'.' | b'-') {
            end -= 1;
        }
    }
    (start, end)
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn confirmed(check: Check, v: &str) -> bool {
    match check {
        Check::None => true,
        Check::Iban => iban_valid(v),
        Check::Card => card_valid(v),
        Check::Ssn => ssn_valid(v),
        Check::Nir => nir_valid(v),
        Check::Ipv4 => {
            v.parse::<Ipv4Addr>().is_ok()
                && !v.split('.').any(|o| o.len() > 1 && o.starts_with('0'))
        }
        Check::Ipv6 => {
            v.parse::<Ipv6Addr>().is_ok() && (v.contains("::") || v.matches(':').count() == 7)
        }
        Check::Entropy => high_entropy(v),
        Check::Phone => phone_plausible(v),
    }
}

/// ISO 13616: the country's length where known, and the whole number mod 97 is 1.
pub fn iban_valid(v: &str) -> bool {
    let s: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() < 15 || s.len() > 34 || !s.is_ascii() {
        return false;
    }
    let expected = match &s[..2] {
        "DE" => 22,
        "FR" | "IT" | "MC" => 27,
        "GB" | "IE" => 22,
        "ES" | "SE" | "SK" | "CZ" => 24,
        "NL" => 18,
        "BE" => 16,
        "CH" | "LI" => 21,
        "AT" | "LU" => 20,
        "PT" => 25,
        "PL" | "HU" => 28,
        "DK" | "FI" => 18,
        "NO" => 15,
        _ => 0,
    };
    if expected != 0 && s.len() != expected {
        return false;
    }
    let rearranged = format!("{}{}", &s[4..], &s[..4]);
    let mut rem: u32 = 0;
    for c in rearranged.chars() {
        let n = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if n >= 10 {
            (rem * 100 + n) % 97
        } else {
            (rem * 10 + n) % 97
        };
    }
    rem == 1
}

/// The Luhn digit, and a prefix and length some card network issues.
pub fn card_valid(v: &str) -> bool {
    let d = digits(v);
    if d.len() < 13 || d.len() > 19 {
        return false;
    }
    let prefix = |n: usize| d.iter().take(n).fold(0u32, |a, x| a * 10 + x);
    let issued = match d[0] {
        4 => matches!(d.len(), 13 | 16 | 19),
        5 => (51..=55).contains(&prefix(2)) && d.len() == 16,
        2 => (2221..=2720).contains(&prefix(4)) && d.len() == 16,
        3 => {
            matches!(prefix(2), 34 | 37) && d.len() == 15
                || (3528..=3589).contains(&prefix(4)) && d.len() >= 16
        }
        6 => {
            (prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)))
                && d.len() >= 16
        }
        _ => false,
    };
    issued && luhn(&d)
}

fn luhn(d: &[u32]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum % 10 == 0
}

/// A US SSN in its written form: no area 000, 666 or 9xx, no group 00, no serial 0000.
pub fn ssn_valid(v: &str) -> bool {
    let d = digits(v);
    if d.len() != 9 {
        return false;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// The French NIR: 13 characters (Corsica's 2A and 2B count as 19 and 18) and a key of
/// 97 minus the number mod 97.
pub fn nir_valid(v: &str) -> bool {
    let s: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() != 15 {
        return false;
    }
    let (body, key) = s.split_at(13);
    let body = body.replace("2A", "19").replace("2B", "18");
    let (Ok(n), Ok(k)) = (body.parse::<u64>(), key.parse::<u64>()) else {
        return false;
    };
    k == 97 - n % 97
}

/// Long tokens that look random: at least 32 characters, letters of both cases and digits,
/// and over 4.2 bits of entropy per character (hex digests and words stay below).
fn high_entropy(v: &str) -> bool {
    let v = v.trim_end_matches('=');
    if v.len() < 32 {
        return false;
    }
    let (mut upper, mut lower, mut digit) = (false, false, false);
    let mut counts = [0u32; 128];
    for b in v.bytes() {
        upper |= b.is_ascii_uppercase();
        lower |= b.is_ascii_lowercase();
        digit |= b.is_ascii_digit();
        counts[usize::from(b & 0x7f)] += 1;
    }
    if !(upper && lower && digit) {
        return false;
    }
    let n = v.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits > 4.2
}

/// A phone number: 8 to 15 digits, written as one (a leading `+`, or groups split by one kind
/// of separator), and not a date or a version.
fn phone_plausible(v: &str) -> bool {
    let d = digits(v);
    if d.len() < 8 || d.len() > 15 {
        return false;
    }
    if v.starts_with('+') || v.starts_with('(') {
        return true;
    }
    // A national number starts with its trunk prefix (0 then an area digit in most of the
    // world), its groups split by one kind of separator; bare digit groups are as often order
    // numbers, dates or identifiers.
    let seps: Vec<char> = v.chars().filter(|c| matches!(c, ' ' | '.' | '-')).collect();
    let one_kind = seps.windows(2).all(|w| w[0] == w[1]);
    let trunk = v.starts_with('0')
        && v.as_bytes()
            .get(1)
            .is_some_and(|b| (b'1'..=b'9').contains(b));
    one_kind && trunk && !seps.is_empty()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn checks_accept_valid_values_and_refuse_near_misses() {
        assert!(iban_valid("DE89 3704 0044 0532 0130 00"));
        assert!(iban_valid("FR1420041010050500013M02606"));
        assert!(!iban_valid("DE89 3704 0044 0532 0130 01"));
        assert!(card_valid("4111 1111 1111 1111"));
        assert!(card_valid("5500-0000-0000-0004"));
        assert!(card_valid("378282246310005"));
        assert!(!card_valid("4111 1111 1111 1112"));
        assert!(!card_valid("1234 5678 9012 3456"));
        assert!(ssn_valid("123-45-6789"));
        assert!(
            !ssn_valid("000-45-6789") && !ssn_valid("666-45-6789") && !ssn_valid("923-45-6789")
        );
        assert!(!ssn_valid("123-00-6789") && !ssn_valid("123-45-0000"));
        assert!(nir_valid("2 84 12 76 451 089 93"));
        assert!(!nir_valid("2 84 12 76 451 089 94"));
        assert!(
            nir_valid("1 85 05 2A 004 123 56"),
            "Corsica: 2A counts as 19"
        );
        assert!(!nir_valid("1 85 05 2A 004 123 57"));
    }

    #[test]
    fn scan_finds_each_class_once_without_overlaps() {
        let d = Detectors::new(&[CustomDetector {
            class: "employee_id".into(),
            pattern: r"\bEMP-\d{6}\b".into(),
        }])
        .unwrap();
        let text = "Mail jane.doe@example.com or call +33 6 12 34 56 78; card 4111-1111-1111-1111, \
                    IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789, host 10.0.12.7, \
                    key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z, badge EMP-004211. \
                    Released 2024-05-17 as v1.2.3, order 12345678.";
        let classes: Vec<String> = d.scan(text).into_iter().map(|f| f.class).collect();
        assert_eq!(
            classes,
            [
                "email",
                "phone",
                "payment_card",
                "iban",
                "us_ssn",
                "ip_address",
                "secret",
                "employee_id"
            ]
        );
        let f = &d.scan("x jane@example.org y")[0];
        assert_eq!(&"x jane@example.org y"[f.start..f.end], "jane@example.org");
    }

    #[test]
    fn a_bad_custom_pattern_is_named() {
        let e = Detectors::new(&[CustomDetector {
            class: "broken".into(),
            pattern: "(".into(),
        }])
        .err()
        .unwrap();
        assert!(e.contains("broken"), "{e}");
    }
}
