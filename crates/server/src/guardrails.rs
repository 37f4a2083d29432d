//! Data guardrails on the request path: the detectors of [`relais_governance::guard`] run on
//! every text of a request to a guarded route (messages, the system prompt, tool calls and
//! tool results), and the route's policy decides per data class: `allow`, `block` (400 in the
//! client's dialect, naming the class, never the value) or `route` (only deployments that list
//! the class in their `data_classes` may serve it; none: the request fails closed).
//! Detections are counted per class and action; no value is ever logged or kept.
//!
//! A webhook (`[guardrails.webhook]`) is asked about each request to a guarded route before
//! anything is reserved, and about each non-streaming answer before it leaves: JSON over HTTP,
//! bounded in time and in the size of what it answers, failing closed (503) or open as
//! configured.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relais_core::{
    ChatRequest, ChatResponse, ContentPart, Error, ErrorKind, ResponseFormat, Role, Side,
};
use relais_governance::guard::Detectors;
use relais_governance::guard::mask::{AnswerFilter, AnswerRule, Vault};
use serde_json::{Value, json};

use crate::caller::Caller;
use crate::config::{GuardAction, GuardWebhookConfig, HookFailure};

mod answer;
pub(crate) use answer::AnswerGuard;

/// A route's guardrails: the action per class found in a request, and in an answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GuardPolicy {
    pub(crate) classes: BTreeMap<String, GuardAction>,
    pub(crate) answers: BTreeMap<String, GuardAction>,
}

/// The answer rules a request policy implies: what it blocks or masks in a request, it blocks
/// or masks in an answer.
pub(crate) fn answer_rules(
    policy: &BTreeMap<String, GuardAction>,
) -> BTreeMap<String, GuardAction> {
    policy
        .iter()
        .filter(|(_, a)| matches!(a, GuardAction::Block | GuardAction::Mask))
        .map(|(c, a)| (c.clone(), *a))
        .collect()
}

/// Two policies joined: per class, the stricter action.
fn join(
    into: &mut BTreeMap<String, GuardAction>,
    other: impl IntoIterator<Item = (String, GuardAction)>,
) {
    for (class, action) in other {
        let slot = into.entry(class).or_insert(action);
        *slot = (*slot).max(action);
    }
}

/// What inspecting a request found, for the rest of the pipeline (classes only, never values).
#[derive(Default)]
pub(crate) struct Inspection {
    /// Every class found, strongest first.
    pub(crate) classes: Vec<String>,
    /// The classes the policy names whose values still reach a vendor (found, not all
    /// masked): deployments that list the classes they accept must list these.
    pub(crate) sent: Vec<String>,
    /// Classes only deployments listing them may receive (`route`).
    pub(crate) stay: Vec<String>,
    /// The answer side: placeholders to restore, classes to refuse or mask.
    pub(crate) answer: Option<AnswerGuard>,
}

/// The most of a hook's answer that is read.
const HOOK_ANSWER_MAX: usize = 64 * 1024;
/// The most of a hook's reason that reaches a client.
const HOOK_REASON_MAX: usize = 200;

/// The detectors, the webhook, and what they found, for `/metrics`.
pub(crate) struct Guardrails {
    detectors: Detectors,
    hook: Option<GuardWebhookConfig>,
    counts: Mutex<HashMap<(String, &'static str), u64>>,
    /// Answers' detections by (class, action).
    answer_counts: Mutex<HashMap<(String, &'static str), u64>>,
    /// Hook checks by outcome: allowed, blocked, failed.
    pub(crate) hook_counts: [AtomicU64; 3],
}

impl Guardrails {
    pub(crate) fn new(detectors: Detectors, hook: Option<GuardWebhookConfig>) -> Self {
        Self {
            detectors,
            hook,
            counts: Mutex::default(),
            answer_counts: Mutex::default(),
            hook_counts: Default::default(),
        }
    }

    /// Ask the webhook about a request (its messages' text and the classes found in it).
    pub(crate) async fn hook_request(
        &self,
        http: &relais_providers::HttpClient,
        (route, request_id): (&str, &str),
        req: &ChatRequest,
    ) -> Result<(), Error> {
        let Some(hook) = &self.hook else {
            return Ok(());
        };
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| {
                let text: Vec<&str> = m
                    .content
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Text(t) => Some(t.as_str()),
                        ContentPart::ToolResult { content, .. } => Some(content.as_str()),
                        ContentPart::ToolCall(c) => Some(c.arguments.as_str()),
                        _ => None,
                    })
                    .collect();
                json!({"role": role_name(m.role), "text": text.join("\n")})
            })
            .collect();
        let body = json!({"stage": "request", "route": route, "request_id": request_id, "messages": messages});
        self.ask(http, hook, &body).await
    }

    /// Ask the webhook about an answer before it leaves (when it checks answers).
    pub(crate) async fn hook_answer(
        &self,
        http: &relais_providers::HttpClient,
        (route, request_id): (&str, &str),
        answer: &ChatResponse,
    ) -> Result<(), Error> {
        let Some(hook) = self.hook.as_ref().filter(|h| h.answers) else {
            return Ok(());
        };
        let calls: Vec<Value> = answer
            .tool_calls
            .iter()
            .map(|c| json!({"name": c.name, "arguments": c.arguments}))
            .collect();
        let body = json!({"stage": "response", "route": route, "request_id": request_id,
                          "text": answer.text, "tool_calls": calls});
        self.ask(http, hook, &body).await
    }

    async fn ask(
        &self,
        http: &relais_providers::HttpClient,
        hook: &GuardWebhookConfig,
        body: &Value,
    ) -> Result<(), Error> {
        let timeout = Duration::from_millis(hook.timeout_ms.max(1));
        let verdict = tokio::time::timeout(timeout, async {
            let mut rb = http
                .post(hook.url.expose())
                .header("content-type", "application/json");
            for (k, v) in &hook.headers {
                rb = rb.header(k.as_str(), v.expose());
            }
            let mut resp = rb
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| relais_core::redact(&e.to_string(), &[&hook.url]))?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status().as_u16()));
            }
            let mut got = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                got.extend_from_slice(&chunk);
                if got.len() > HOOK_ANSWER_MAX {
                    return Err("an answer over 64 KiB".to_owned());
                }
            }
            Ok(got)
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())));
        let answer = verdict.and_then(|raw| {
            if raw.iter().all(u8::is_ascii_whitespace) {
                return Ok(json!({}));
            }
            serde_json::from_slice::<Value>(&raw)
                .map_err(|_| "an answer that is not JSON".to_owned())
        });
        match answer {
            Ok(v) if v["action"] == "block" => {
                self.hook_counts[1].fetch_add(1, Ordering::Relaxed);
                let mut reason = v["reason"].as_str().unwrap_or("").to_owned();
                relais_core::clip(&mut reason, HOOK_REASON_MAX);
                let stage = body["stage"].as_str().unwrap_or("request");
                let what = if stage == "response" {
                    "the answer"
                } else {
                    "the request"
                };
                let message = if reason.is_empty() {
                    format!("the guardrail hook refused {what}")
                } else {
                    format!("the guardrail hook refused {what}: {reason}")
                };
                Err(Error::new(ErrorKind::BadRequest, Side::Client, message)
                    .with_code("guardrail_blocked"))
            }
            Ok(v) if v.get("action").is_none_or(|a| a == "allow") => {
                self.hook_counts[0].fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(_) => self.hook_failed(hook, "an action that is neither allow nor block"),
            Err(why) => self.hook_failed(hook, &why),
        }
    }

    fn hook_failed(&self, hook: &GuardWebhookConfig, why: &str) -> Result<(), Error> {
        self.hook_counts[2].fetch_add(1, Ordering::Relaxed);
        match hook.on_error {
            HookFailure::Open => {
                tracing::warn!(
                    error = why,
                    "guardrail hook failed; going on (on_error = \"open\")"
                );
                Ok(())
            }
            HookFailure::Closed => {
                tracing::warn!(
                    error = why,
                    "guardrail hook failed; refusing (on_error = \"closed\")"
                );
                Err(Error::new(
                    ErrorKind::Unavailable,
                    Side::Gateway,
                    "the guardrail check could not be made; try again shortly",
                ))
            }
        }
    }

    /// `text` with every value the detectors find replaced by its class (`[EMAIL]`), for
    /// payloads recorded elsewhere (traces).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in self.detectors.scan(text) {
            out.push_str(&text[at..f.start]);
            out.push('[');
            out.push_str(&relais_governance::guard::mask::tag(&f.class));
            out.push(']');
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// Whether `class` is one the detectors name (built in or `[guardrails] custom`).
    pub(crate) fn knows(&self, class: &str) -> bool {
        self.detectors.knows(class)
    }

    pub(crate) fn has_hook(&self) -> bool {
        self.hook.is_some()
    }

    /// Whether the webhook checks answers (a streamed answer is then gathered before it leaves).
    pub(crate) fn hook_checks_answers(&self) -> bool {
        self.hook.as_ref().is_some_and(|h| h.answers)
    }

    /// The policy for a request: the route's joined with the caller's key's and team's (the
    /// strictest action per class wins), for requests and for answers; `None` when nothing
    /// applies.
    pub(crate) fn policy<'p>(
        route: Option<&'p GuardPolicy>,
        caller: &Caller<'_>,
    ) -> Option<Cow<'p, GuardPolicy>> {
        let own: BTreeMap<String, GuardAction> = caller
            .guardrails()
            .filter_map(|(c, a)| GuardAction::parse(a).map(|a| (c.to_owned(), a)))
            .collect();
        if own.is_empty() {
            return route.map(Cow::Borrowed);
        }
        let mut joined = route.cloned().unwrap_or_else(|| GuardPolicy {
            classes: BTreeMap::new(),
            answers: BTreeMap::new(),
        });
        join(&mut joined.answers, answer_rules(&own));
        join(&mut joined.classes, own);
        Some(Cow::Owned(joined))
    }

    /// Inspect `req` under `policy`: a blocked class refuses it; masked values are replaced by
    /// placeholders in place (and the answer side set up to restore them); the classes found,
    /// those whose values still reach a vendor, and those that must stay on deployments that
    /// list them are returned for routing, shadowing and the ledger.
    pub(crate) fn inspect(
        self: &Arc<Self>,
        route: &str,
        req: &mut ChatRequest,
        GuardPolicy {
            classes: policy,
            answers,
        }: &GuardPolicy,
    ) -> Result<Inspection, Error> {
        let action = |c: &str| policy.get(c).copied().unwrap_or(GuardAction::Allow);
        let mut scan = Scan {
            detectors: &self.detectors,
            action: &action,
            vault: Vault::default(),
            found: Vec::new(),
        };
        for m in &mut req.messages {
            for part in &mut m.content {
                scan.part(part);
            }
        }
        let Scan { vault, found, .. } = scan;
        let mut out = Inspection::default();
        let mut blocked = None;
        for (c, all_masked) in found {
            let a = action(&c);
            self.count(&c, a.as_str());
            match a {
                GuardAction::Allow | GuardAction::Mask => {}
                GuardAction::Block => blocked = blocked.or(Some(c.clone())),
                GuardAction::Route => out.stay.push(c.clone()),
            }
            // A class the policy names and whose values reach the vendor joins the request's
            // data class; classes it does not name are counted, not routed on.
            if !all_masked && policy.contains_key(&c) {
                out.sent.push(c.clone());
            }
            out.classes.push(c);
        }
        if let Some(c) = blocked {
            return Err(Error::new(
                ErrorKind::BadRequest,
                Side::Client,
                format!("the request contains data of class '{c}', which route '{route}' does not accept"),
            )
            .with_code("guardrail_blocked"));
        }
        let rules: Vec<(String, AnswerRule)> = answers
            .iter()
            .filter_map(|(c, a)| match a {
                GuardAction::Block => Some((c.clone(), AnswerRule::Block)),
                GuardAction::Mask => Some((c.clone(), AnswerRule::Mask)),
                _ => None,
            })
            .collect();
        let json = matches!(
            req.response_format,
            Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
        );
        let filter = AnswerFilter::new(vault, rules).json_text(json);
        if filter.is_active() || self.hook_checks_answers() {
            // The filter rewrites, and the hook reads, the answer folded from decoded events:
            // nothing may skip them.
            canonical_only(route, req, "masks or checks answers")?;
            req.decode_answer();
        }
        if filter.is_active() {
            out.answer = Some(AnswerGuard::new(self.clone(), filter, route));
        }
        Ok(out)
    }

    fn count(&self, class: &str, action: &'static str) {
        bump(&self.counts, class, action);
    }

    fn count_answer(&self, class: &str, action: &'static str) {
        bump(&self.answer_counts, class, action);
    }

    /// (class, action, detections) so far, in requests and in answers.
    pub(crate) fn counts(&self) -> [Vec<(String, &'static str, u64)>; 2] {
        [listed(&self.counts), listed(&self.answer_counts)]
    }
}

/// One request's scan: every text part read, values of masked classes replaced in place.
struct Scan<'a> {
    detectors: &'a Detectors,
    action: &'a dyn Fn(&str) -> GuardAction,
    vault: Vault,
    /// Each class found, and whether every value of it was masked.
    found: Vec<(String, bool)>,
}

/// Keys of an opaque part that hold no text a person wrote (identifiers, types, signatures,
/// encoded files).
const NOT_TEXT: &[&str] = &[
    "type",
    "media_type",
    "signature",
    "id",
    "tool_use_id",
    "name",
    "url",
    "file_id",
    "file_data",
    "image_url",
    "format",
    "detail",
];

impl Scan<'_> {
    fn part(&mut self, part: &mut ContentPart) {
        match part {
            ContentPart::Text(t) => {
                self.text(t, true);
            }
            ContentPart::ToolResult { content, .. } => {
                self.json_or_text(content);
            }
            ContentPart::ToolCall(c) => {
                self.json_or_text(&mut c.arguments);
            }
            // Signed reasoning is the vendor's own text, returned as it was written (relais
            // never restores values in it): read, never rewritten, or its signature breaks.
            ContentPart::Reasoning { text, signature } => {
                let unsigned = signature.is_none();
                self.text(text, unsigned);
            }
            // Parts relais forwards as they came (a text document, a cited one): their text
            // leaves are read and masked where they stand.
            ContentPart::Opaque { value, .. } => {
                self.value(value);
            }
            ContentPart::Image { .. }
            | ContentPart::Document { .. }
            | ContentPart::CacheBreakpoint(_) => {}
        }
    }

    /// Scan `t`; mask (when `may_mask`) the values of masked classes. Whether it changed.
    fn text(&mut self, t: &mut String, may_mask: bool) -> bool {
        let findings = self.detectors.scan(t);
        for f in &findings {
            let masked = may_mask && (self.action)(&f.class) == GuardAction::Mask;
            match self.found.iter_mut().find(|(c, _)| *c == f.class) {
                Some((_, all_masked)) => *all_masked &= masked,
                None => self.found.push((f.class.clone(), masked)),
            }
        }
        let action = self.action;
        may_mask
            && self
                .vault
                .mask(t, &findings, |c| action(c) == GuardAction::Mask)
    }

    /// JSON text (a tool call's arguments, a tool's result) is masked inside its strings, so
    /// it stays JSON and the vault keeps values as they read; other text as text.
    fn json_or_text(&mut self, s: &mut String) {
        let trimmed = s.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            if let Ok(mut v) = serde_json::from_str::<Value>(s) {
                if self.value(&mut v) {
                    *s = v.to_string();
                }
                return;
            }
        }
        self.text(s, true);
    }

    /// Every text leaf of `v` (identifiers skipped, and `data` unless its object says it is
    /// text: base64 images, audio and PDFs would read as secrets). Whether any changed.
    fn value(&mut self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => self.text(s, true),
            Value::Array(items) => items.iter_mut().fold(false, |c, i| self.value(i) | c),
            Value::Object(obj) => {
                let text_data = obj.get("type").and_then(Value::as_str) == Some("text");
                let mut changed = false;
                for (k, item) in obj.iter_mut() {
                    if NOT_TEXT.contains(&k.as_str()) || (k == "data" && !text_data) {
                        continue;
                    }
                    changed |= self.value(item);
                }
                changed
            }
            _ => false,
        }
    }
}

/// The hosted tools (`web_search`, ...) of a Responses API request bound for an upstream that
/// speaks it natively, by type: only the native body carries them.
pub(crate) fn hosted_tools(req: &ChatRequest) -> Vec<String> {
    let Some(tools) = req
        .responses_body
        .as_ref()
        .and_then(|b| b.get("tools"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|t| t.get("type").and_then(Value::as_str))
        .filter(|t| *t != "function")
        .map(str::to_owned)
        .collect()
}

/// A request relais must rewrite (`why`) cannot keep hosted tools, which only travel in the
/// native body: refused by name rather than dropped.
fn canonical_only(route: &str, req: &ChatRequest, why: &str) -> Result<(), Error> {
    let hosted = hosted_tools(req);
    if hosted.is_empty() {
        return Ok(());
    }
    Err(Error::unsupported(format!(
        "hosted tools are not supported ({}): route '{route}' {why}, which needs the request in relais's own form; offer them as function tools",
        hosted.join(", ")
    ))
    .with_param("tools"))
}

fn bump(counts: &Mutex<HashMap<(String, &'static str), u64>>, class: &str, action: &'static str) {
    *counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((class.to_owned(), action))
        .or_insert(0) += 1;
}

fn listed(
    counts: &Mutex<HashMap<(String, &'static str), u64>>,
) -> Vec<(String, &'static str, u64)> {
    let mut v: Vec<_> = counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|((c, a), n)| (c.clone(), *a, *n))
        .collect();
    v.sort();
    v
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}
