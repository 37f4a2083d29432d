//! `${VAR}` interpolation for config values, so secrets live in the environment, not in files.

use serde::{Deserialize, Deserializer};

use crate::Secret;

/// Expand `${VAR}` and `${VAR:-default}` in `input` from the environment. A referenced variable
/// that is unset (and has no default) is an error naming it.
pub fn expand_env(input: &str) -> Result<String, String> {
    expand_with(input, |name| std::env::var(name).ok())
}

fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '${{' in {input:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match (lookup(name), default) {
            // `${VAR:-d}` uses `d` when VAR is unset or empty, as in POSIX shells.
            (Some(v), Some(d)) => out.push_str(if v.is_empty() { d } else { &v }),
            (Some(v), None) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!("environment variable {name} is not set"));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A config string with `${VAR}` expanded at load time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvString(pub String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw)
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

impl std::ops::Deref for EnvString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw)
            .map(Secret::new)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_defaults() {
        assert_eq!(expand_with("Bearer ${KEY}", env).unwrap(), "Bearer sk-123");
        assert_eq!(expand_with("${NOPE:-x}/${KEY}", env).unwrap(), "x/sk-123");
        assert_eq!(expand_with("${EMPTY:-d}", env).unwrap(), "d");
        assert_eq!(expand_with("plain", env).unwrap(), "plain");
        let e = expand_with("${MISSING}", env).unwrap_err();
        assert!(e.contains("MISSING"));
        assert!(expand_with("${KEY", env).is_err());
    }
}
