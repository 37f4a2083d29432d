//! Configuration in two stages: the raw TOML form ([`raw`]: serde, unknown fields rejected,
//! `${VAR}` expanded), then a validated runtime form holding built providers and routes
//! ([`build`], with Plan B's part in [`plan_b`] and promotions in [`promotions`]). Errors name
//! the file, the line and the field. The stores are opened in [`open`], the only I/O here.
//!
//! Depends on the providers, router, planb and governance crates; nothing in this crate but
//! the listener's and TLS's settings types.

mod build;
mod deployment;
mod open;
mod plan_b;
mod promotions;
mod raw;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relais_core::Secret;
use relais_providers::ProviderConfig;
use relais_router::Route;

pub use open::{Governed, open_governance, open_ledger, open_rate_limits, open_state, relais_home};
pub use plan_b::{PlanBSettings, ShadowRoute};
pub use promotions::apply_promotions;
pub use raw::*;

/// A config error: where and what.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// This error with the line of the field it names (`origin: a.b.c: problem` becomes
    /// `origin:LINE: a.b.c: problem`), when it has none yet: every check after parsing names a
    /// dotted path, and the source says where that path was written. A field that is missing
    /// points at the nearest table that holds it.
    pub fn located(self, source: &str, origin: &str) -> Self {
        let Some(rest) = self
            .0
            .strip_prefix(origin)
            .and_then(|r| r.strip_prefix(": "))
        else {
            return self;
        };
        let path = rest.split(": ").next().unwrap_or_default();
        match line_of_path(source, path) {
            Some(line) => Self(format!("{origin}:{line}: {rest}")),
            None => self,
        }
    }
}

/// The line where the dotted `path` (`routes.a.retry.attempts`, `auth.keys[0].key`) was
/// written, or of the deepest part of it that was.
fn line_of_path(source: &str, path: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(source).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            break;
        };
        found = Some(k.span().start);
        let mut value = v;
        if let Some(i) = index {
            match value.get_ref() {
                toml::de::DeValue::Array(items) => match items.get(i) {
                    Some(item) => {
                        found = Some(item.span().start);
                        value = item;
                    }
                    None => break,
                },
                _ => break,
            }
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ => {
                if parts.peek().is_some() {
                    break;
                }
            }
        }
    }
    found.map(|offset| line_of(source, offset))
}

/// A client key as the server checks it.
pub struct ClientKey {
    pub name: String,
    pub key: Secret,
    pub routes: Option<Vec<String>>,
}

/// An admin credential in force.
#[derive(Debug, Clone)]
pub struct AdminCredential {
    pub name: String,
    pub key: Secret,
    pub role: Role,
    /// The team (name or id) of a `team_admin`.
    pub team: Option<String>,
}

/// The admin API's credentials (`admin.key` first, as `admin`), console sessions and the
/// client-certificate requirement. No credential: the admin API and the console are off.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    pub credentials: Vec<AdminCredential>,
    pub session: Duration,
    /// The admin API asks for a verified client certificate too.
    pub client_cert: bool,
}

impl AdminAccess {
    /// Whether the admin API is on.
    pub fn is_on(&self) -> bool {
        !self.credentials.is_empty()
    }

    /// The credential `presented` is, compared in constant time with every one.
    pub fn find(&self, presented: &str) -> Option<&AdminCredential> {
        let mut found = None;
        for c in &self.credentials {
            if crate::http::constant_time_eq(c.key.expose().as_bytes(), presented.as_bytes()) {
                found = found.or(Some(c));
            }
        }
        found
    }
}

/// The validated, built form the server runs on.
pub struct Runtime {
    pub listen: SocketAddr,
    /// Who may use the admin API and the console.
    pub admin: AdminAccess,
    /// Virtual keys and teams, when `[governance]` is configured; opened by the caller with
    /// [`open_governance`] (it is async) and kept across reloads.
    pub keyring: Option<Arc<relais_governance::KeyRing>>,
    /// Where key and team limits are counted (in this process unless the caller installs
    /// Redis with [`open_rate_limits`]); kept across reloads.
    pub rate_limits: relais_governance::RateLimits,
    /// The ledger's write path, opened by the caller with [`open_ledger`]; kept across
    /// reloads. `None`: no ledger (no `[governance]`).
    pub ledger: Option<Arc<relais_governance::Ledger>>,
    pub governance: Option<GovernanceConfig>,
    /// Things that are allowed but probably not meant (shown by `relais check`, logged at start).
    pub warnings: Vec<String>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// How the listener bounds its clients in time (read for each new connection).
    pub client_limits: crate::listen::ClientLimits,
    /// Client connections open at once (fixed at start: the listener outlives reloads).
    pub max_connections: usize,
    /// The credential `/metrics` asks for, if any.
    pub metrics_key: Option<Secret>,
    /// Request bytes being decoded at once (fixed at start).
    pub max_decoding_bytes: usize,
    /// TLS on the listener, loaded (fixed at start; the certificate files are watched).
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub keys: Vec<ClientKey>,
    pub routes: BTreeMap<String, Arc<Route>>,
    /// Providers by name, with the settings they were built from (a reload keeps unchanged ones).
    pub providers: BTreeMap<String, (ProviderConfig, Arc<dyn relais_core::Provider>)>,
    /// Provider kinds by name, for `relais check`.
    pub provider_kinds: BTreeMap<String, &'static str>,
    /// Shadow traffic by route name.
    pub shadows: BTreeMap<String, Arc<ShadowRoute>>,
    /// The response cache's stores (kept across reloads while `[cache]` is unchanged), and the
    /// cache settings of the routes that use it.
    pub(crate) cache: Option<Arc<crate::cache::ResponseCache>>,
    pub(crate) cache_config: raw::CacheConfig,
    pub(crate) cached_routes: BTreeMap<String, crate::cache::Policy>,
    /// The guardrails' detectors and webhook, and each guarded route's policy.
    pub(crate) guardrails: Arc<crate::guardrails::Guardrails>,
    pub(crate) guarded_routes: BTreeMap<String, crate::guardrails::GuardPolicy>,
    pub plan_b: PlanBSettings,
    /// Responses API storage: retention and memory (fixed at start for the memory).
    pub responses: raw::ResponsesConfig,
    /// `[alerts]`: the webhook and how often conditions are checked.
    pub(crate) alerts: AlertsConfig,
    /// The shared upstream client (also used for trace export and alert webhooks).
    pub(crate) http: relais_providers::HttpClient,
    /// Trace export, when `[otel]` is configured (rebuilt by a reload only if it changed).
    pub(crate) otel: Option<Arc<crate::otel::Tracer>>,
    /// The config text this was built from and where it came from, so a promotion can
    /// rebuild it the way a reload does.
    pub source: Arc<str>,
    pub origin: String,
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// Errors inside a provider table carry the span of the whole table (its `type` tag makes serde
/// buffer it); point at the line that holds the field or variable the message names instead.
fn refine_line(source: &str, span: std::ops::Range<usize>, msg: &str) -> usize {
    let needle = if let Some(rest) = msg.split("environment variable ").nth(1) {
        rest.split_whitespace().next().map(|v| format!("${{{v}"))
    } else {
        msg.split('`').nth(1).map(|f| f.to_owned())
    };
    let start = span.start.min(source.len());
    // The span may cover only the table's key; search to the next table header.
    let next_table = source[span.end.min(source.len())..]
        .find("\n[")
        .map_or(source.len(), |i| span.end.min(source.len()) + i);
    let end = next_table.max(start);
    if let Some(needle) = needle.filter(|n| !n.is_empty()) {
        let mut offset = start;
        for line in source[start..end].split_inclusive('\n') {
            let t = line.trim_start();
            let hit = if needle.starts_with('$') {
                t.contains(&needle)
            } else {
                t.starts_with(&needle)
                    && t[needle.len()..].trim_start().starts_with(['=', '.', ' '])
            };
            if hit {
                return line_of(source, offset);
            }
            offset += line.len();
        }
    }
    line_of(source, start)
}

/// Parse TOML text. `origin` names the source in error messages.
pub fn parse(source: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(source).map_err(|e| {
        let msg = e.message().trim_end().to_owned();
        let line = e.span().map(|s| refine_line(source, s, &msg));
        match line {
            Some(l) => ConfigError(format!("{origin}:{l}: {msg}")),
            None => ConfigError(format!("{origin}: {msg}")),
        }
    })
}

/// Read and parse a config file.
pub fn load(path: &Path) -> Result<(RawConfig, String), ConfigError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    let raw = parse(&source, &path.display().to_string())?;
    Ok((raw, source))
}

/// Validate a parsed config and build its providers and routes.
pub fn build(raw: &RawConfig, source: &str, origin: &str) -> Result<Runtime, ConfigError> {
    build::build_from(raw, source, origin, None).map_err(|e| e.located(source, origin))
}

/// Build a config that replaces `previous` (a reload): providers whose settings did not change
/// are kept (the built-in model is not loaded twice), and deployments still there keep their
/// live health (breaker, cool-down, latency estimate).
pub fn rebuild(
    raw: &RawConfig,
    source: &str,
    origin: &str,
    previous: &Runtime,
) -> Result<Runtime, ConfigError> {
    build::build_from(raw, source, origin, Some(previous)).map_err(|e| e.located(source, origin))
}
