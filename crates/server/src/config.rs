//! Configuration in two stages: the raw TOML form (serde, unknown fields rejected, `${VAR}`
//! expanded), then a validated runtime form holding built providers and routes. Errors name the
//! file, the line and the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relais_core::Secret;
use relais_providers::{HttpSettings, ProviderConfig, build_provider, shared_client};
use relais_router::{Deployment, Route, RouteKind};
use serde::Deserialize;
use toml::Spanned;

/// The whole config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body accepted, in bytes; larger bodies get 413 before being read.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_secs: 30,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    pub pool_idle_timeout_secs: u64,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let d = HttpSettings::default();
        Self {
            connect_timeout_ms: u64::try_from(d.connect_timeout.as_millis()).unwrap_or(10_000),
            pool_idle_timeout_secs: d.pool_idle_timeout.as_secs(),
            pool_max_idle_per_host: d.pool_max_idle_per_host,
        }
    }
}

/// Client credentials. With no keys configured, the gateway is open (fine on loopback, warned
/// about elsewhere); virtual keys with teams and budgets replace this with governance.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub key: Secret,
    /// Routes this key may use; all when absent.
    pub routes: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default = "default_kind")]
    pub kind: Spanned<String>,
    pub deployments: Vec<DeploymentConfig>,
    /// Per attempt: time allowed until the first event before trying the next deployment.
    pub first_token_timeout_secs: Option<f64>,
}

fn default_kind() -> Spanned<String> {
    Spanned::new(0..0, "chat".to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A key of `[providers]`.
    pub provider: Spanned<String>,
    /// The upstream's name for the model (Azure: the deployment name).
    pub model: String,
}

/// A config error: where and what.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A client key as the server checks it.
pub struct ClientKey {
    pub name: String,
    pub key: Secret,
    pub routes: Option<Vec<String>>,
}

/// The validated, built form the server runs on.
pub struct Runtime {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub keys: Vec<ClientKey>,
    pub routes: BTreeMap<String, Arc<Route>>,
    /// Provider kinds by name, for `relais check`.
    pub provider_kinds: BTreeMap<String, &'static str>,
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
    let at = |span: std::ops::Range<usize>, field: &str, msg: String| {
        if span.is_empty() && span.start == 0 {
            ConfigError(format!("{origin}: {field}: {msg}"))
        } else {
            ConfigError(format!(
                "{origin}:{}: {field}: {msg}",
                line_of(source, span.start)
            ))
        }
    };
    let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
        ConfigError(format!(
            "{origin}: server.listen: '{}' is not an address like 127.0.0.1:8080",
            raw.server.listen
        ))
    })?;
    if raw.server.max_body_bytes < 1024 {
        return Err(ConfigError(format!(
            "{origin}: server.max_body_bytes: must be at least 1024"
        )));
    }
    let http = shared_client(&HttpSettings {
        connect_timeout: Duration::from_millis(raw.upstream.connect_timeout_ms.max(1)),
        pool_idle_timeout: Duration::from_secs(raw.upstream.pool_idle_timeout_secs),
        pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
    })
    .map_err(|e| ConfigError(format!("{origin}: upstream: {e}")))?;

    let mut providers = BTreeMap::new();
    let mut provider_kinds = BTreeMap::new();
    for (name, cfg) in &raw.providers {
        let p = build_provider(cfg, http.clone())
            .map_err(|e| ConfigError(format!("{origin}: providers.{name}.{e}")))?;
        providers.insert(name.clone(), p);
        provider_kinds.insert(name.clone(), cfg.kind());
    }

    let mut routes = BTreeMap::new();
    for (name, rc) in &raw.routes {
        let kind = match rc.kind.get_ref().as_str() {
            "chat" => RouteKind::Chat,
            "embeddings" => RouteKind::Embeddings,
            other => {
                return Err(at(
                    rc.kind.span(),
                    &format!("routes.{name}.kind"),
                    format!("'{other}' is not one of: chat, embeddings"),
                ));
            }
        };
        if rc.deployments.is_empty() {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.deployments: at least one deployment is required"
            )));
        }
        let mut deployments = Vec::with_capacity(rc.deployments.len());
        for (i, d) in rc.deployments.iter().enumerate() {
            let pname = d.provider.get_ref();
            let provider = providers.get(pname).ok_or_else(|| {
                let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                at(
                    d.provider.span(),
                    &format!("routes.{name}.deployments[{i}].provider"),
                    format!(
                        "no provider named '{pname}' (defined: {})",
                        known.join(", ")
                    ),
                )
            })?;
            let id = format!("{pname}/{}", d.model);
            if deployments.iter().any(|x: &Deployment| x.id == id) {
                return Err(at(
                    d.provider.span(),
                    &format!("routes.{name}.deployments[{i}]"),
                    format!("'{id}' is listed twice"),
                ));
            }
            deployments.push(Deployment {
                id,
                provider_name: pname.clone(),
                provider: provider.clone(),
                model: d.model.clone(),
            });
        }
        let timeout = rc.first_token_timeout_secs.unwrap_or(120.0);
        if !(timeout > 0.0 && timeout <= 3600.0) {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.first_token_timeout_secs: must be within (0, 3600]"
            )));
        }
        routes.insert(
            name.clone(),
            Arc::new(Route {
                name: name.clone(),
                kind,
                deployments,
                first_event_timeout: Duration::from_secs_f64(timeout),
            }),
        );
    }

    let mut keys = Vec::with_capacity(raw.auth.keys.len());
    for (i, k) in raw.auth.keys.iter().enumerate() {
        if k.key.expose().len() < 8 {
            return Err(ConfigError(format!(
                "{origin}: auth.keys[{i}].key: must be at least 8 characters"
            )));
        }
        let allowed = match &k.routes {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for r in list {
                    if !routes.contains_key(r.get_ref()) {
                        return Err(at(
                            r.span(),
                            &format!("auth.keys[{i}].routes"),
                            format!("no route named '{}'", r.get_ref()),
                        ));
                    }
                    out.push(r.get_ref().clone());
                }
                Some(out)
            }
        };
        keys.push(ClientKey {
            name: k.name.clone(),
            key: k.key.clone(),
            routes: allowed,
        });
    }

    Ok(Runtime {
        listen,
        max_body_bytes: raw.server.max_body_bytes,
        shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
        log_format: raw.server.log_format,
        keys,
        routes,
        provider_kinds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> Result<Runtime, ConfigError> {
        let raw = parse(src, "t.toml")?;
        build(&raw, src, "t.toml")
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let e = check("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .err()
            .unwrap();
        assert!(e.0.starts_with("t.toml:3:"), "{e}");
        assert!(e.0.contains("lisen"), "{e}");
    }

    #[test]
    fn unknown_provider_in_route_names_line() {
        let src = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\n[routes.r]\ndeployments = [\n  { provider = \"b\", model = \"m\" },\n]\n";
        let e = check(src).err().unwrap();
        assert!(
            e.0.starts_with("t.toml:7: routes.r.deployments[0].provider"),
            "{e}"
        );
    }

    #[test]
    fn provider_field_errors_name_the_provider() {
        let src =
            "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://x\"\napi_kee = \"k\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("api_kee"), "{e}");
        assert!(e.0.starts_with("t.toml:"), "{e}");
        let src = "[providers.a]\ntype = \"openai_compat\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("providers.a.base_url"), "{e}");
        let src = "[providers.a]\ntype = \"nope\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("nope"), "{e}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let src = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://x\"\napi_key = \"${RELAIS_TEST_SURELY_UNSET_VAR}\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("RELAIS_TEST_SURELY_UNSET_VAR"), "{e}");
        assert!(e.0.starts_with("t.toml:4"), "{e}");
    }

    #[test]
    fn valid_config_builds() {
        let src = r#"
[server]
listen = "127.0.0.1:0"
[providers.up]
type = "openai_compat"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-test-123456"
[providers.az]
type = "azure"
endpoint = "http://127.0.0.1:9"
api_key = "azkey-123456"
[routes.chat]
deployments = [{ provider = "up", model = "gpt" }, { provider = "az", model = "dep" }]
[routes.emb]
kind = "embeddings"
deployments = [{ provider = "up", model = "e" }]
[[auth.keys]]
name = "team"
key = "relais-key-1"
routes = ["chat"]
"#;
        let rt = check(src).ok().unwrap();
        assert_eq!(rt.routes.len(), 2);
        assert_eq!(rt.routes["chat"].deployments[1].id, "az/dep");
        assert_eq!(rt.keys[0].routes.as_deref(), Some(&["chat".to_owned()][..]));
    }
}
