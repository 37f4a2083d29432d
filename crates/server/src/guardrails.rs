//! Data guardrails on the request path: the detectors of [`relais_governance::guard`] run on
//! every text of a request to a guarded route (messages, the system prompt, tool calls and
//! tool results), and the route's policy decides per data class: `allow`, `block` (400 in the
//! client's dialect, naming the class, never the value) or `route` (only deployments that list
//! the class in their `data_classes` may serve it; none: the request fails closed).
//! Detections are counted per class and action; no value is ever logged or kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use relais_core::{ChatRequest, ContentPart, Error, ErrorKind, Side};
use relais_governance::guard::Detectors;

use crate::config::GuardAction;

/// The detectors and what they found, for `/metrics`.
pub(crate) struct Guardrails {
    detectors: Detectors,
    counts: Mutex<HashMap<(String, &'static str), u64>>,
}

impl Guardrails {
    pub(crate) fn new(detectors: Detectors) -> Self {
        Self {
            detectors,
            counts: Mutex::default(),
        }
    }

    /// Check `req` against `policy`: the classes whose requests must stay on deployments
    /// that list them, or the refusal of a blocked class.
    pub(crate) fn check(
        &self,
        route: &str,
        req: &ChatRequest,
        policy: &BTreeMap<String, GuardAction>,
    ) -> Result<Vec<String>, Error> {
        let mut classes: Vec<String> = Vec::new();
        for m in &req.messages {
            for part in &m.content {
                let text = match part {
                    ContentPart::Text(t) => t.as_str(),
                    ContentPart::ToolResult { content, .. } => content.as_str(),
                    ContentPart::ToolCall(c) => c.arguments.as_str(),
                    _ => continue,
                };
                for c in self.detectors.classes(text) {
                    if !classes.contains(&c) {
                        classes.push(c);
                    }
                }
            }
        }
        let mut stay = Vec::new();
        let mut blocked = None;
        for c in classes {
            let action = policy.get(&c).copied().unwrap_or(GuardAction::Allow);
            self.count(&c, action.as_str());
            match action {
                // Mask is refused by config validation until it is built.
                GuardAction::Allow | GuardAction::Mask => {}
                GuardAction::Block => blocked = blocked.or(Some(c)),
                GuardAction::Route => stay.push(c),
            }
        }
        if let Some(c) = blocked {
            return Err(Error::new(
                ErrorKind::BadRequest,
                Side::Client,
                format!("the request contains data of class '{c}', which route '{route}' does not accept"),
            )
            .with_code("guardrail_blocked"));
        }
        Ok(stay)
    }

    fn count(&self, class: &str, action: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((class.to_owned(), action))
            .or_insert(0) += 1;
    }

    /// (class, action, detections) so far.
    pub(crate) fn counts(&self) -> Vec<(String, &'static str, u64)> {
        let mut v: Vec<_> = self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((c, a), n)| (c.clone(), *a, *n))
            .collect();
        v.sort();
        v
    }
}
