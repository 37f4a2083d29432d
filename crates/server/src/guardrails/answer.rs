//! The answer side of the guardrails, on canonical events: each text (the answer's text, its
//! refusal, its reasoning, each tool call's arguments) goes through the request's
//! [`AnswerFilter`], which restores the placeholders the request was masked with and masks or
//! refuses the classes the policy names in what the vendor wrote. A text held back is
//! released, in order, before any event of another kind.

use std::sync::Arc;

use relais_core::{ChatResponse, Error, ErrorKind, Side, StreamEvent};
use relais_governance::guard::mask::{AnswerFilter, Blocked, Part};

use super::Guardrails;

/// One request's answer filter, with the detectors it runs.
pub(crate) struct AnswerGuard {
    guard: Arc<Guardrails>,
    filter: AnswerFilter,
    route: String,
}

impl AnswerGuard {
    pub(super) fn new(guard: Arc<Guardrails>, filter: AnswerFilter, route: &str) -> Self {
        Self {
            guard,
            filter,
            route: route.to_owned(),
        }
    }

    /// Take one event of the vendor's answer; what the client gets goes to `out`.
    pub(crate) fn event(
        &mut self,
        ev: StreamEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        let (part, piece, signature) = match ev {
            StreamEvent::TextDelta(t) => (Part::Text, t, None),
            StreamEvent::RefusalDelta(t) => (Part::Refusal, t, None),
            StreamEvent::ReasoningDelta { text, signature } => (Part::Reasoning, text, signature),
            StreamEvent::ToolCallDelta { index, arguments } => {
                (Part::ToolArguments(index), arguments, None)
            }
            // Usage may come at any time and writes no text: it need not wait for held text.
            StreamEvent::Usage(_) => {
                out.push(ev);
                return Ok(());
            }
            other => {
                self.end(out)?;
                out.push(other);
                return Ok(());
            }
        };
        for held in self.filter.holding() {
            if held != part {
                let text = self.filter.flush(&self.guard.detectors, held);
                self.emit(held, text, None, out)?;
            }
        }
        let mut text = self.filter.push(&self.guard.detectors, part, &piece);
        if signature.is_some() {
            // A signature closes the reasoning it signs.
            let rest = self.filter.flush(&self.guard.detectors, part);
            text = text.and_then(|mut t| {
                t.push_str(&rest?);
                Ok(t)
            });
        }
        self.emit(part, text, signature, out)
    }

    /// The answer ended: everything held leaves.
    pub(crate) fn end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        for part in self.filter.holding() {
            let text = self.filter.flush(&self.guard.detectors, part);
            self.emit(part, text, None, out)?;
        }
        Ok(())
    }

    /// A whole answer at once.
    pub(crate) fn response(&mut self, r: &mut ChatResponse) -> Result<(), Error> {
        let det = &self.guard.detectors;
        let mut texts: Vec<(Part, &mut String)> = vec![
            (Part::Text, &mut r.text),
            (Part::Reasoning, &mut r.reasoning),
        ];
        if let Some(refusal) = &mut r.refusal {
            texts.push((Part::Refusal, refusal));
        }
        for (i, call) in r.tool_calls.iter_mut().enumerate() {
            texts.push((Part::ToolArguments(i as u32), &mut call.arguments));
        }
        let mut failed = None;
        for (part, text) in texts {
            match self.filter.whole(det, part, text) {
                Ok(t) => *text = t,
                Err(b) => {
                    failed = Some(b);
                    break;
                }
            }
        }
        match failed {
            Some(b) => Err(self.blocked(b)),
            None => {
                self.count_masked();
                Ok(())
            }
        }
    }

    fn emit(
        &mut self,
        part: Part,
        text: Result<String, Blocked>,
        signature: Option<String>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        let text = text.map_err(|b| self.blocked(b))?;
        self.count_masked();
        if text.is_empty() && signature.is_none() {
            return Ok(());
        }
        out.push(match part {
            Part::Text => StreamEvent::TextDelta(text),
            Part::Refusal => StreamEvent::RefusalDelta(text),
            Part::Reasoning => StreamEvent::ReasoningDelta { text, signature },
            Part::ToolArguments(index) => StreamEvent::ToolCallDelta {
                index,
                arguments: text,
            },
        });
        Ok(())
    }

    fn count_masked(&mut self) {
        for class in self.filter.take_masked() {
            self.guard.count_answer(&class, "mask");
        }
    }

    fn blocked(&self, b: Blocked) -> Error {
        self.guard.count_answer(&b.class, "block");
        Error::new(
            ErrorKind::ContentFiltered,
            Side::Upstream,
            format!(
                "the answer carried data of class '{}', which route '{}' does not return",
                b.class, self.route
            ),
        )
        .with_code("guardrail_blocked")
    }
}
