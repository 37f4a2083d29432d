//! The config's unit tests: parsing, validation and where errors point.

use super::*;
use relais_router::Strategy;

fn check(src: &str) -> Result<Runtime, ConfigError> {
    let raw = parse(src, "t.toml")?;
    build(&raw, src, "t.toml")
}

#[test]
fn shipped_prices_parse_and_the_config_overrides_them() {
    let shipped = shipped_prices();
    assert!(shipped.len() >= 20, "{}", shipped.len());
    for (model, pc) in &shipped {
        assert!(pc.input.parse().is_ok(), "{model}");
        assert!(pc.output.parse().is_ok(), "{model}");
    }
    let rt = check(&format!(
        "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"gpt-4o-mini\" }}, {{ provider = \"b\", model = \"gpt-4o\" }}]\n[prices.\"gpt-4o\"]\ninput = \"1\"\noutput = \"2\"\n"
    ))
    .unwrap();
    let d = &rt.routes["r"].deployments;
    assert_eq!(
        d[0].price.map(|p| (p.input, p.output)),
        Some((150_000, 600_000))
    );
    assert_eq!(
        d[1].price.map(|p| (p.input, p.output)),
        Some((1_000_000, 2_000_000))
    );
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
fn issue17_every_config_error_names_its_line() {
    let route = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\n[routes.a]\ndeployments = [{ provider = \"a\", model = \"m\" }]\n";
    for (src, line, field) in [
        (format!("[admin]\nkey = \"short\"\n{route}"), 2, "admin.key"),
        (
            format!("{route}idle_timeout_secs = -5\n"),
            7,
            "routes.a.idle_timeout_secs",
        ),
        (
            format!("[server]\nlisten = \"127.0.0.1:1\"\nheader_read_timeout_secs = 0\n{route}"),
            3,
            "server.header_read_timeout_secs",
        ),
        (
            format!("[server]\n\nmax_body_bytes = 5\n{route}"),
            3,
            "server.max_body_bytes",
        ),
        (
            format!("{route}[routes.a.retry]\nattempts = 0\n"),
            8,
            "routes.a.retry.attempts",
        ),
        (
            format!("[auth]\nkeys = [\n  {{ name = \"n\", key = \"k\" }},\n]\n{route}"),
            3,
            "auth.keys[0].key",
        ),
    ] {
        let e = check(&src)
            .err()
            .unwrap_or_else(|| panic!("accepted: {src}"));
        assert!(
            e.0.starts_with(&format!("t.toml:{line}: {field}")),
            "{e}\n{src}"
        );
    }
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
    let src = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://x\"\napi_kee = \"k\"\n";
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

const TWO_PROVIDERS: &str = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[providers.b]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";

#[test]
fn routing_options_are_validated_with_lines() {
    let src = format!(
        "{TWO_PROVIDERS}[routes.r]\nstrategy = \"fastest\"\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\n"
    );
    let e = check(&src).err().unwrap();
    assert!(e.0.starts_with("t.toml:8: routes.r.strategy"), "{e}");
    assert!(e.0.contains("least_latency"), "{e}");
    let src = format!(
        "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\nfallbacks = {{ context_window = \"nowhere\" }}\n"
    );
    let e = check(&src).err().unwrap();
    assert!(
        e.0.starts_with("t.toml:9: routes.r.fallbacks.context_window"),
        "{e}"
    );
    let src = format!(
        "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\nfallbacks = {{ context_window = \"s\" }}\n[routes.s]\ndeployments = [{{ provider = \"b\", model = \"m\" }}]\nfallbacks = {{ content_filter = \"r\" }}\n"
    );
    let e = check(&src).err().unwrap();
    assert!(e.0.contains("cycle: r -> s -> r"), "{e}");
    let src = format!(
        "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\n[routes.r.breaker]\nmax_ejected_percent = 150\n"
    );
    let e = check(&src).err().unwrap();
    assert!(e.0.contains("routes.r.breaker.max_ejected_percent"), "{e}");
    let src = format!(
        "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\n[prices.m]\ninput = \"0.1234567\"\noutput = 1\n"
    );
    let e = check(&src).err().unwrap();
    assert!(e.0.contains("prices.m.input"), "{e}");
}

#[test]
fn routing_options_build_and_warn_about_lost_capabilities() {
    let src = format!(
        r#"{TWO_PROVIDERS}
[prices.m]
input = 0.15
output = "0.6"
[routes.r]
strategy = "least_cost"
request_timeout_secs = 30
deployments = [
  {{ provider = "a", model = "m", context_window = 128000, rpm = 100 }},
  {{ provider = "b", model = "n", tools = false, context_window = 8000, weight = 3 }},
]
fallbacks = {{ context_window = "big" }}
[routes.r.retry]
attempts = 4
budget_ratio = 0.1
[routes.r.breaker]
consecutive_failures = 2
max_ejected_percent = 34
[routes.big]
deployments = [{{ provider = "a", model = "huge" }}]
"#
    );
    let rt = check(&src).ok().unwrap();
    let r = &rt.routes["r"];
    assert_eq!(r.strategy, Strategy::LeastCost);
    assert_eq!(r.retry.max_attempts, 4);
    assert_eq!(r.budget.policy().ratio, 0.1);
    assert_eq!(r.breaker.consecutive_failures, 2);
    assert!((r.breaker.max_ejected_share - 0.34).abs() < 1e-9);
    assert_eq!(r.timeouts.request, Some(Duration::from_secs(30)));
    assert_eq!(
        r.deployments[0].price.map(|p| (p.input, p.output)),
        Some((150_000, 600_000))
    );
    assert_eq!(r.deployments[0].limits.rpm, Some(100));
    assert_eq!(r.deployments[1].weight, 3);
    assert!(!r.deployments[1].capabilities.tools);
    assert_eq!(
        r.fallbacks.context_window.as_ref().map(|f| f.name.as_str()),
        Some("big")
    );
    let warnings = rt.warnings.join("\n");
    assert!(warnings.contains("b/n lacks tools"), "{warnings}");
    assert!(warnings.contains("context window"), "{warnings}");
    assert!(warnings.contains("no [prices.\"n\"]"), "{warnings}");
}

#[test]
fn a_rebuild_keeps_live_health_and_unchanged_providers() {
    let src = format!(
        "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}, {{ provider = \"b\", model = \"m\" }}]\n"
    );
    let old = check(&src).ok().unwrap();
    let changed = src.replace(
        "[providers.b]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"",
        "[providers.b]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:10/v1\"",
    );
    let raw = parse(&changed, "t.toml").unwrap();
    let new = rebuild(&raw, &changed, "t.toml", &old).ok().unwrap();
    let (o, n) = (&old.routes["r"], &new.routes["r"]);
    assert!(Arc::ptr_eq(
        &o.deployments[0].health,
        &n.deployments[0].health
    ));
    assert!(Arc::ptr_eq(&old.providers["a"].1, &new.providers["a"].1));
    assert!(!Arc::ptr_eq(&old.providers["b"].1, &new.providers["b"].1));
}
