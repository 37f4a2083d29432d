//! The admin API as a handler, without a socket (`Router::oneshot`): the credential in front of
//! every endpoint, and the validations of drills and promotions.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use axum::Router;
use axum::body::Body;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::state::AppState;
use crate::testing::{self, TempDir};

const KEY: &str = "admin-key-0123456789abcdef";

const ROUTES: &str = "[providers.up]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
[routes.r]\ndeployments = [{ provider = \"up\", model = \"m\" }, { provider = \"up\", model = \"n\" }]\n\n\
[routes.one]\ndeployments = [{ provider = \"up\", model = \"m\" }]\n\n\
[routes.e]\nkind = \"embeddings\"\ndeployments = [{ provider = \"up\", model = \"e1\" }, { provider = \"up\", model = \"e2\" }]\n";

fn app(admin: bool) -> Router {
    let mut text = String::from(ROUTES);
    if admin {
        text.push_str(&format!("[admin]\nkey = \"{KEY}\"\n"));
    }
    let state = testing::state(&text);
    super::router(state.clone()).with_state(state)
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Body::from(body.to_string())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn status(app: &Router, method: &str, path: &str, key: Option<&str>) -> u16 {
    call(app, method, path, key, json!({})).await.0
}

const OPENAPI: &str = include_str!("../../../../docs/admin-openapi.json");

/// Every path and method the OpenAPI document lists, with its parameters filled in.
fn all_documented() -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let filled: Vec<String> = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "x".to_owned()
                } else {
                    seg.to_owned()
                }
            })
            .collect();
        for method in ops.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), filled.join("/")));
        }
    }
    out
}

/// The admin endpoints of the document that need a credential (all but sign-in and -out).
fn documented() -> Vec<(String, String)> {
    let out: Vec<_> = all_documented()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/admin/") && !p.starts_with("/admin/sign-"))
        .collect();
    assert_eq!(out.len(), 26, "{out:?}");
    out
}

/// Every `.route("path", method(..).method(..))` of the routers' source: (METHOD, path).
fn routed() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for src in [
        include_str!("../app.rs"),
        include_str!("../api/mod.rs"),
        include_str!("mod.rs"),
        include_str!("../console.rs"),
    ] {
        let mut rest = src;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's text, up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .unwrap()
                .0;
            let call = &rest[..end];
            let path = call.split('"').nth(1).unwrap().to_owned();
            for method in ["get", "post", "patch", "delete", "put"] {
                let word = format!("{method}(");
                let named = call
                    .match_indices(&word)
                    .any(|(i, _)| !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                if named {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn issue20_the_openapi_document_matches_the_router() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    // Every route of the routers is documented (a `{param}` matches any documented segment).
    let routes = routed();
    assert!(routes.len() > 30, "{routes:?}");
    for (method, pattern) in &routes {
        let matches = |doc_path: &str| {
            let (a, b): (Vec<_>, Vec<_>) =
                (pattern.split('/').collect(), doc_path.split('/').collect());
            a.len() == b.len()
                && a.iter()
                    .zip(&b)
                    .all(|(r, d)| r == d || (r.starts_with('{') && !d.is_empty()))
        };
        assert!(
            paths
                .iter()
                .any(|(p, ops)| matches(p) && ops.get(method.to_lowercase()).is_some()),
            "{method} {pattern} is routed but not in docs/admin-openapi.json"
        );
    }
    // Every documented endpoint is routed: the real router answers it with something other
    // than "unknown path" or "wrong method".
    let state = testing::state(&format!("{ROUTES}[admin]\nkey = \"{KEY}\"\n"));
    let app = crate::app::router(state);
    for (method, path) in all_documented() {
        let (code, body) = call(&app, &method, &path, None, json!({})).await;
        assert_ne!(code, 405, "{method} {path}: {body}");
        assert!(
            code != 404 || body["error"]["code"] != "unknown_url",
            "{method} {path} is documented but not routed: {body}"
        );
    }
}

#[tokio::test]
async fn issue18_no_admin_endpoint_answers_without_the_key() {
    let app = app(true);
    for (method, path) in documented() {
        assert_eq!(
            status(&app, &method, &path, None).await,
            401,
            "{method} {path}"
        );
        assert_eq!(
            status(&app, &method, &path, Some("wrong-key-0123456789abc")).await,
            401,
            "{method} {path}"
        );
    }
    assert_eq!(status(&app, "GET", "/admin/routes", Some(KEY)).await, 200);
    assert_eq!(
        status(&app, "GET", "/admin/openapi.json", Some(KEY)).await,
        200
    );
    // With the key, a call that needs governance says it is off, not unauthorized.
    assert_eq!(status(&app, "GET", "/admin/keys", Some(KEY)).await, 404);
}

#[tokio::test]
async fn issue18_the_admin_api_is_off_without_a_key_in_the_config() {
    let app = app(false);
    for (method, path) in documented() {
        assert_eq!(
            status(&app, &method, &path, Some(KEY)).await,
            404,
            "{method} {path}"
        );
    }
}

/// A drill request with `patch` applied to a valid one.
fn drill(patch: Value) -> Value {
    let mut d = json!({
        "route": "r", "deployment": "up/m", "share": 0.5, "duration_secs": 60,
        "started_by": "oncall",
    });
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            d.as_object_mut().unwrap().remove(k);
        } else {
            d[k] = v.clone();
        }
    }
    d
}

#[tokio::test]
async fn issue18_drills_are_validated_before_they_start() {
    let app = app(true);
    // (change to a valid drill, the param named in the error, or "" when none is named)
    let refused = [
        (json!({"route": "nope"}), "route"),
        (json!({"route": "e", "deployment": "up/e1"}), "route"),
        (json!({"deployment": "up/zzz"}), "deployment"),
        (json!({"route": "one"}), ""),
        (json!({"share": 0.0}), "share"),
        (json!({"share": 1.5}), "share"),
        (json!({"duration_secs": 0}), "duration_secs"),
        (json!({"duration_secs": 86_401}), "duration_secs"),
        (json!({"abort_error_rate": 1.5}), "abort_error_rate"),
        (json!({"started_by": "  "}), "started_by"),
        (json!({"started_by": null}), ""),
        (json!({"surprise": true}), ""),
    ];
    for (patch, param) in refused {
        let (code, body) = call(
            &app,
            "POST",
            "/admin/drills",
            Some(KEY),
            drill(patch.clone()),
        )
        .await;
        assert_eq!(code, 400, "{patch}: {body}");
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{patch}: {body}"
        );
        if !param.is_empty() {
            assert_eq!(body["error"]["param"], param, "{patch}: {body}");
        }
    }
    // Nothing was started by the refusals.
    let (_, list) = call(&app, "GET", "/admin/drills", Some(KEY), json!({})).await;
    assert_eq!(list["drills"], json!([]));
    // A valid one starts; a second on the same route is refused while it runs; stopping needs
    // a name and then ends it.
    let (code, started) = call(&app, "POST", "/admin/drills", Some(KEY), drill(json!({}))).await;
    assert_eq!(code, 201, "{started}");
    assert_eq!(started["status"]["state"], "running");
    let (code, body) = call(&app, "POST", "/admin/drills", Some(KEY), drill(json!({}))).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already running"),
        "{body}"
    );
    let id = started["id"].as_str().unwrap();
    let stop = format!("/admin/drills/{id}/stop");
    let (code, _) = call(&app, "POST", &stop, Some(KEY), json!({})).await;
    assert_eq!(code, 400);
    let (code, stopped) = call(&app, "POST", &stop, Some(KEY), json!({"by": "oncall"})).await;
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["status"]["state"], "stopped");
    let (code, _) = call(
        &app,
        "GET",
        "/admin/drills/drill_none",
        Some(KEY),
        json!({}),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn issue18_promotions_are_validated_and_change_the_primary() {
    let dir = TempDir::new("admin-promote");
    let state = testing::governed(&format!("{ROUTES}[admin]\nkey = \"{KEY}\"\n"), &dir).await;
    let app = super::router(state.clone()).with_state(state.clone());
    let primary = |s: &AppState| s.live().entries["r"].route.primary().unwrap().id.clone();
    let refused = [
        json!({"to": "up/n", "by": "oncall"}),
        json!({"route": "nope", "to": "up/n", "by": "oncall"}),
        json!({"route": "r", "to": "up/zzz", "by": "oncall"}),
        json!({"route": "r", "by": "oncall"}),
        json!({"route": "r", "to": "up/m", "by": "oncall"}),
        json!({"route": "r", "to": "up/n", "by": 7}),
        json!({"route": "r", "undo": true, "by": "oncall"}),
    ];
    for body in refused {
        let (code, answer) = call(&app, "POST", "/admin/promote", Some(KEY), body.clone()).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert_eq!(primary(&state), "up/m", "{body}");
    }
    let (code, answer) = call(
        &app,
        "POST",
        "/admin/promote",
        Some(KEY),
        json!({"route": "r", "to": "up/n", "dry_run": true}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["dry_run"], true);
    assert_eq!(primary(&state), "up/m");
    let (code, answer) = call(
        &app,
        "POST",
        "/admin/promote",
        Some(KEY),
        json!({"route": "r", "to": "up/n", "by": "oncall"}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        (answer["from"].as_str(), answer["to"].as_str()),
        (Some("up/m"), Some("up/n"))
    );
    assert_eq!(primary(&state), "up/n");
    assert_eq!(
        state.promotions().get("r").map(String::as_str),
        Some("up/n")
    );
    let (code, answer) = call(
        &app,
        "POST",
        "/admin/promote",
        Some(KEY),
        json!({"route": "r", "undo": true, "by": "oncall"}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(primary(&state), "up/m");
    assert!(state.promotions().is_empty());
}
