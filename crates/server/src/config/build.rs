//! Validation and building: a [`RawConfig`] becomes a [`Runtime`] of built providers and
//! routes, or a [`ConfigError`] that names the field and its line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relais_core::Price;
use relais_providers::{HttpSettings, build_provider, shared_client};
use relais_router::Route;

use super::deployment::Providers;
use super::plan_b::build_plan_b;
use super::raw::*;
use super::routes::{RouteParts, build_route};
use super::{AdminAccess, AdminCredential, ClientKey, ConfigError, Runtime, line_of};

pub(super) fn build_from(
    raw: &RawConfig,
    source: &str,
    origin: &str,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigError> {
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
    let (listen, tls, http) = server_part(raw, origin, previous)?;
    let (providers, provider_kinds) = providers_part(raw, origin, previous, &http)?;
    let prices = prices_part(raw, origin)?;
    let order = route_order(raw, origin, &at)?;
    let mut warnings = Vec::new();
    let mut routes: BTreeMap<String, Arc<Route>> = BTreeMap::new();
    let now = tokio::time::Instant::now();
    for name in order {
        let Some(rc) = raw.routes.get(name) else {
            continue;
        };
        let parts = RouteParts {
            origin,
            providers: &providers,
            prices: &prices,
            built: &routes,
            previous,
            now,
            at: &at,
        };
        let route = build_route(name, rc, &parts, &mut warnings)?;
        routes.insert(name.to_owned(), Arc::new(route));
    }

    let (shadows, plan_b) = build_plan_b(raw, origin, &routes, &providers, &prices, &at)?;

    let keys = client_keys(raw, &routes, origin, &at)?;

    alerts_part(raw, origin)?;
    let otel = match &raw.otel {
        Some(cfg) => {
            crate::otel::validate(cfg).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
            Some(crate::otel::Tracer::build(
                cfg,
                &http,
                previous.and_then(|p| p.otel.as_ref()),
            ))
        }
        None => None,
    };

    if let Some(p) = previous {
        if p.governance != raw.governance {
            warnings.push(
                "[governance] changed: the running gateway keeps its store until restarted"
                    .to_owned(),
            );
        }
        if p.listen != listen {
            warnings.push(format!(
                "server.listen changed to {listen}: a running gateway keeps listening on {} until restarted",
                p.listen
            ));
        }
    }

    let (cache, cached_routes) = build_cache(raw, origin, previous, &routes)?;
    let (guardrails, guarded_routes) = build_guardrails(raw, origin)?;
    // Process-wide like the connection pool; set only once the whole config is known good.
    relais_providers::set_max_stream_bytes(raw.upstream.max_stream_bytes);
    Ok(Runtime {
        listen,
        admin: admin_access(&raw.admin, origin)?,
        keyring: previous.and_then(|p| p.keyring.clone()),
        rate_limits: previous.map_or_else(Default::default, |p| p.rate_limits.clone()),
        ledger: previous.and_then(|p| p.ledger.clone()),
        governance: match previous {
            Some(p) => p.governance.clone(),
            None => raw.governance.clone(),
        },
        warnings,
        providers,
        max_body_bytes: raw.server.max_body_bytes,
        shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
        log_format: raw.server.log_format,
        client_limits: crate::listen::ClientLimits {
            header_read_timeout: Duration::from_secs(raw.server.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(raw.server.body_read_timeout_secs),
            idle_timeout: Duration::from_secs(raw.server.idle_timeout_secs),
            http2_cleartext: raw.server.http2_cleartext,
        },
        max_connections: raw.server.max_connections,
        metrics_key: raw.server.metrics_key.clone(),
        max_decoding_bytes: raw.server.max_decoding_bytes,
        tls,
        keys,
        routes,
        provider_kinds,
        shadows,
        cache,
        cache_config: raw.cache.clone(),
        cached_routes,
        guardrails,
        guarded_routes,
        plan_b,
        responses: raw.responses,
        otel,
        alerts: raw.alerts.clone(),
        http,
        source: Arc::from(source),
        origin: origin.to_owned(),
    })
}

/// Check `[alerts]`: the webhook is an http(s) URL, its headers are header names.
fn alerts_part(raw: &RawConfig, origin: &str) -> Result<(), ConfigError> {
    let a = &raw.alerts;
    if let Some(url) = &a.webhook_url {
        let u = url.expose();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(ConfigError(format!(
                "{origin}: alerts.webhook_url: must be an http:// or https:// URL"
            )));
        }
    }
    for name in a.webhook_headers.keys() {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError(format!(
                "{origin}: alerts.webhook_headers: '{name}' is not a header name"
            )));
        }
    }
    if a.webhook_attempts == 0 || a.check_secs == 0 {
        return Err(ConfigError(format!(
            "{origin}: alerts.webhook_attempts and alerts.check_secs: must be at least 1"
        )));
    }
    Ok(())
}

/// The `[server]`, `[admin]` and `[upstream]` sections: the listen address, TLS (a reload
/// keeps the listener's, as loaded at start) and the shared upstream client.
fn server_part(
    raw: &RawConfig,
    origin: &str,
    previous: Option<&Runtime>,
) -> Result<
    (
        SocketAddr,
        Option<Arc<crate::tls::Tls>>,
        relais_providers::HttpClient,
    ),
    ConfigError,
> {
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
    for (field, secs) in [
        (
            "header_read_timeout_secs",
            raw.server.header_read_timeout_secs,
        ),
        ("body_read_timeout_secs", raw.server.body_read_timeout_secs),
        ("idle_timeout_secs", raw.server.idle_timeout_secs),
    ] {
        if secs == 0 {
            return Err(ConfigError(format!(
                "{origin}: server.{field}: must be at least 1"
            )));
        }
    }
    if raw
        .server
        .metrics_key
        .as_ref()
        .is_some_and(|k| k.expose().len() < 16)
    {
        return Err(ConfigError(format!(
            "{origin}: server.metrics_key: must be at least 16 characters"
        )));
    }
    // A reload keeps the listener's TLS as loaded at start (its files are watched on their own).
    let tls = match (previous.and_then(|p| p.tls.clone()), &raw.server.tls) {
        (Some(kept), Some(cfg)) if kept.config() == cfg => Some(kept),
        (_, Some(cfg)) => Some(Arc::new(
            crate::tls::Tls::load(cfg).map_err(|e| ConfigError(format!("{origin}: {e}")))?,
        )),
        (_, None) => None,
    };
    if raw.admin.require_client_cert && !tls.as_ref().is_some_and(|t| t.verifies_clients()) {
        return Err(ConfigError(format!(
            "{origin}: admin.require_client_cert: needs server.tls.client_ca_file"
        )));
    }
    if raw.server.max_connections == 0 {
        return Err(ConfigError(format!(
            "{origin}: server.max_connections: must be at least 1"
        )));
    }
    let http = shared_client(&HttpSettings {
        connect_timeout: Duration::from_millis(raw.upstream.connect_timeout_ms.max(1)),
        pool_idle_timeout: Duration::from_secs(raw.upstream.pool_idle_timeout_secs),
        pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
    })
    .map_err(|e| ConfigError(format!("{origin}: upstream: {e}")))?;
    if raw.upstream.max_stream_bytes < 64 * 1024 {
        return Err(ConfigError(format!(
            "{origin}: upstream.max_stream_bytes: must be at least 65536"
        )));
    }

    Ok((listen, tls, http))
}

/// `[admin]`: the credentials (each at least 16 characters, names and keys distinct, a team
/// for each `team_admin` and for no other role) and the session length.
fn admin_access(raw: &AdminConfig, origin: &str) -> Result<AdminAccess, ConfigError> {
    let mut credentials: Vec<AdminCredential> = raw
        .key
        .iter()
        .map(|key| AdminCredential {
            name: "admin".to_owned(),
            key: key.clone(),
            role: Role::Admin,
            team: None,
        })
        .collect();
    credentials.extend(raw.credentials.iter().map(|c| AdminCredential {
        name: c.name.clone(),
        key: c.key.clone(),
        role: c.role,
        team: c.team.clone(),
    }));
    for (i, c) in credentials.iter().enumerate() {
        let field = if raw.key.is_some() && i == 0 {
            "admin.key".to_owned()
        } else {
            format!("admin.credentials '{}'", c.name)
        };
        let bad = |what: &str| Err(ConfigError(format!("{origin}: {field}: {what}")));
        if c.key.expose().len() < 16 {
            return bad("the key must be at least 16 characters");
        }
        if c.name.trim().is_empty() {
            return bad("needs a name");
        }
        if credentials[..i].iter().any(|o| o.name == c.name) {
            return bad("another credential has this name");
        }
        if credentials[..i]
            .iter()
            .any(|o| o.key.expose() == c.key.expose())
        {
            return bad("another credential has this key");
        }
        match (c.role, &c.team) {
            (Role::TeamAdmin, None) => return bad("a team_admin needs a team"),
            (Role::Admin | Role::Viewer, Some(_)) => {
                return bad("only a team_admin has a team");
            }
            _ => {}
        }
    }
    if raw.session_secs < 60 {
        return Err(ConfigError(format!(
            "{origin}: admin.session_secs: must be at least 60"
        )));
    }
    Ok(AdminAccess {
        credentials,
        session: Duration::from_secs(raw.session_secs),
        client_cert: raw.require_client_cert,
    })
}

/// The providers, with each one's kind; one whose settings did not change is kept from
/// `previous`, so the built-in model is not loaded twice.
fn providers_part(
    raw: &RawConfig,
    origin: &str,
    previous: Option<&Runtime>,
    http: &relais_providers::HttpClient,
) -> Result<(Providers, BTreeMap<String, &'static str>), ConfigError> {
    let mut providers = BTreeMap::new();
    let mut provider_kinds = BTreeMap::new();
    for (name, cfg) in &raw.providers {
        let kept = previous
            .and_then(|p| p.providers.get(name))
            .filter(|(old, _)| old == cfg)
            .map(|(_, p)| p.clone());
        let p = match kept {
            Some(p) => p,
            None => build_provider(cfg, http.clone())
                .map_err(|e| ConfigError(format!("{origin}: providers.{name}.{e}")))?,
        };
        providers.insert(name.clone(), (cfg.clone(), p));
        provider_kinds.insert(name.clone(), cfg.kind());
    }
    Ok((providers, provider_kinds))
}

/// The price table: the shipped one, with the config's `[prices]` replacing it model by model.
fn prices_part(raw: &RawConfig, origin: &str) -> Result<BTreeMap<String, Price>, ConfigError> {
    // Shipped defaults first; the config's own entries replace them model by model.
    let shipped = super::raw::shipped_prices();
    let mut prices = BTreeMap::new();
    for (model, pc) in shipped.iter().chain(&raw.prices) {
        let field = |f: &str| format!("prices.{model}.{f}");
        let one = |v: &PriceValue, f: &str| {
            v.parse()
                .map_err(|e| ConfigError(format!("{origin}: {}: {e}", field(f))))
        };
        let opt = |v: &Option<PriceValue>, f: &str| v.as_ref().map(|v| one(v, f)).transpose();
        prices.insert(
            model.clone(),
            Price {
                input: one(&pc.input, "input")?,
                output: one(&pc.output, "output")?,
                cache_read: opt(&pc.cache_read, "cache_read")?,
                cache_write: opt(&pc.cache_write, "cache_write")?,
                reasoning: opt(&pc.reasoning, "reasoning")?,
            },
        );
    }
    Ok(prices)
}

/// The order routes are built in: fallback routes must exist, serve chat and form no cycle,
/// and are built before the routes that fall back to them.
fn route_order<'a>(
    raw: &'a RawConfig,
    origin: &str,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<Vec<&'a str>, ConfigError> {
    for (name, rc) in &raw.routes {
        for (field, target) in [
            ("context_window", &rc.fallbacks.context_window),
            ("content_filter", &rc.fallbacks.content_filter),
        ] {
            if let Some(t) = target {
                let f = format!("routes.{name}.fallbacks.{field}");
                match raw.routes.get(t.get_ref()) {
                    None => {
                        return Err(at(
                            t.span(),
                            &f,
                            format!("no route named '{}'", t.get_ref()),
                        ));
                    }
                    Some(other)
                        if other.kind != RouteKindSetting::Chat
                            || rc.kind != RouteKindSetting::Chat =>
                    {
                        return Err(at(t.span(), &f, "fallbacks are for chat routes".to_owned()));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let mut order: Vec<&str> = Vec::with_capacity(raw.routes.len());
    {
        // Depth-first, children first; `visiting` catches a cycle.
        fn visit<'a>(
            name: &'a str,
            raw: &'a RawConfig,
            order: &mut Vec<&'a str>,
            visiting: &mut Vec<&'a str>,
        ) -> Result<(), String> {
            if order.contains(&name) {
                return Ok(());
            }
            if visiting.contains(&name) {
                visiting.push(name);
                return Err(visiting.join(" -> "));
            }
            visiting.push(name);
            if let Some(rc) = raw.routes.get(name) {
                for t in [&rc.fallbacks.context_window, &rc.fallbacks.content_filter]
                    .into_iter()
                    .flatten()
                {
                    visit(t.get_ref(), raw, order, visiting)?;
                }
            }
            visiting.pop();
            order.push(name);
            Ok(())
        }
        for name in raw.routes.keys() {
            let mut visiting = Vec::new();
            visit(name, raw, &mut order, &mut visiting).map_err(|cycle| {
                ConfigError(format!(
                    "{origin}: routes.{name}.fallbacks: fallbacks form a cycle: {cycle}"
                ))
            })?;
        }
    }
    Ok(order)
}

/// The static client keys of `[auth]`, each checked against the routes it names.
fn client_keys(
    raw: &RawConfig,
    routes: &BTreeMap<String, Arc<Route>>,
    origin: &str,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<Vec<ClientKey>, ConfigError> {
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
    Ok(keys)
}

/// The response cache: the routes that use it and its stores (kept from `previous` while
/// `[cache]` is the same, so a reload keeps what is cached).
type CacheParts = (
    Option<Arc<crate::cache::ResponseCache>>,
    BTreeMap<String, crate::cache::Policy>,
);

fn build_cache(
    raw: &RawConfig,
    origin: &str,
    previous: Option<&Runtime>,
    built: &BTreeMap<String, Arc<Route>>,
) -> Result<CacheParts, ConfigError> {
    let mut routes = BTreeMap::new();
    for (name, r) in &raw.routes {
        let Some(c) = &r.cache else { continue };
        if relais_router::RouteKind::from(r.kind) != relais_router::RouteKind::Chat {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.cache: only chat routes are cached"
            )));
        }
        if c.backend == super::raw::CacheBackendSetting::Redis && raw.cache.redis_url.is_none() {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.cache.backend: \"redis\" needs [cache] redis_url"
            )));
        }
        let mut policy = crate::cache::Policy::from(c);
        if let Some(s) = &c.semantic {
            let at = format!("{origin}: routes.{name}.cache.semantic");
            let route = built
                .get(&s.embeddings)
                .filter(|r| r.kind == relais_router::RouteKind::Embeddings)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{at}.embeddings: no embeddings route named '{}'",
                        s.embeddings
                    ))
                })?;
            if !(s.threshold > 0.0 && s.threshold <= 1.0) {
                return Err(ConfigError(format!(
                    "{at}.threshold: a cosine similarity in (0, 1]"
                )));
            }
            if s.max_entries == 0 {
                return Err(ConfigError(format!("{at}.max_entries: at least 1")));
            }
            policy.semantic = Some(crate::cache::semantic::Semantic {
                route: name.clone(),
                embeddings: route.clone(),
                threshold: s.threshold as f32,
                max_entries: s.max_entries,
            });
        }
        routes.insert(name.clone(), policy);
    }
    if routes.is_empty() {
        return Ok((None, routes));
    }
    if let Some(p) = previous.filter(|p| p.cache_config == raw.cache) {
        if let Some(c) = &p.cache {
            return Ok((Some(c.clone()), routes));
        }
    }
    let redis = match &raw.cache.redis_url {
        None => None,
        Some(url) => Some(
            crate::cache::store::Redis::new(url.expose(), &raw.cache.redis_prefix)
                .map_err(|e| ConfigError(format!("{origin}: cache.redis_url: {e}")))?,
        ),
    };
    let mb = usize::try_from(raw.cache.memory_mb).unwrap_or(usize::MAX);
    let kb = usize::try_from(raw.cache.max_entry_kb).unwrap_or(usize::MAX);
    Ok((
        Some(Arc::new(crate::cache::ResponseCache::new(
            mb.saturating_mul(1 << 20),
            kb.saturating_mul(1 << 10),
            redis,
        ))),
        routes,
    ))
}

type GuardParts = (
    Arc<crate::guardrails::Guardrails>,
    BTreeMap<String, crate::guardrails::GuardPolicy>,
);

/// The guardrails: the detectors (built-in and `[guardrails] custom`; keys and teams may have
/// policies too, so they are always built) and each route's policy, its classes checked
/// against the known ones.
fn build_guardrails(raw: &RawConfig, origin: &str) -> Result<GuardParts, ConfigError> {
    let custom: Vec<relais_governance::guard::CustomDetector> = raw
        .guardrails
        .custom
        .iter()
        .map(|c| relais_governance::guard::CustomDetector {
            class: c.class.clone(),
            pattern: c.pattern.clone(),
        })
        .collect();
    let detectors = relais_governance::guard::Detectors::new(&custom)
        .map_err(|e| ConfigError(format!("{origin}: guardrails.custom: {e}")))?;
    let guard = crate::guardrails::Guardrails::new(detectors, raw.guardrails.webhook.clone());
    let mut routes = BTreeMap::new();
    for (name, r) in &raw.routes {
        if r.guardrails.is_none() && r.answer_guardrails.is_none() {
            continue;
        }
        if relais_router::RouteKind::from(r.kind) != relais_router::RouteKind::Chat {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.guardrails: only chat routes are guarded (an embeddings input is not checked)"
            )));
        }
        let empty = BTreeMap::new();
        let policy = r.guardrails.as_ref().unwrap_or(&empty);
        let answers = r
            .answer_guardrails
            .clone()
            .unwrap_or_else(|| crate::guardrails::answer_rules(policy));
        for (table, rules) in [("guardrails", policy), ("answer_guardrails", &answers)] {
            if let Some(class) = rules.keys().find(|c| !guard.knows(c)) {
                return Err(ConfigError(format!(
                    "{origin}: routes.{name}.{table}.{class}: not a class relais detects (built in: {}; or add it under [guardrails] custom)",
                    relais_governance::guard::CLASSES.join(", ")
                )));
            }
        }
        if let Some((class, _)) = answers.iter().find(|(_, a)| **a == GuardAction::Route) {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.answer_guardrails.{class}: \"route\" applies to requests; an answer's class is allowed, masked or blocked"
            )));
        }
        routes.insert(
            name.clone(),
            crate::guardrails::GuardPolicy {
                classes: policy.clone(),
                answers,
            },
        );
    }
    Ok((Arc::new(guard), routes))
}
