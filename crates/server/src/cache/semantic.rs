//! The semantic cache: a request whose last user message means the same as an earlier one's
//! (cosine similarity of their embeddings at or above the route's threshold), everything else
//! equal, is answered with the earlier answer.
//!
//! "Everything else" is the request's context: the scope that may see the entry, the route,
//! the earlier turns, the system prompt, tools, response format and sampling parameters, digested
//! like the exact key. Only questions with the same context are compared, so a paraphrase never
//! crosses a team, a system prompt or a tool set. The index lives in this process, bounded by
//! entries (the oldest leave first); it holds vectors and exact keys, and an entry found by it
//! is read from the route's store like an exact hit (an expired one is dropped from the index).
//! The question's embedding comes from the configured embeddings route, once per miss of the
//! exact cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use relais_core::{ChatRequest, ContentPart, EmbedRequest, Role};
use relais_router::Route;

/// A route's semantic matching, validated.
#[derive(Clone)]
pub(crate) struct Semantic {
    /// The cached route (whose index this is).
    pub route: String,
    /// The embeddings route that embeds questions.
    pub embeddings: Arc<Route>,
    pub threshold: f32,
    pub max_entries: usize,
}

impl std::fmt::Debug for Semantic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semantic")
            .field("embeddings", &self.embeddings.name)
            .field("threshold", &self.threshold)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

/// The longest question embedded (bytes); longer ones use the exact cache only.
const QUESTION_MAX: usize = 8 * 1024;

/// The question of a request: the text of its last message, when a user wrote it.
pub(crate) fn question(req: &ChatRequest) -> Option<String> {
    let last = req.messages.last().filter(|m| m.role == Role::User)?;
    let mut text = String::new();
    for part in &last.content {
        match part {
            ContentPart::Text(t) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            }
            ContentPart::CacheBreakpoint(_) => {}
            // An image or a document is not a question text can stand for.
            _ => return None,
        }
    }
    (!text.trim().is_empty() && text.len() <= QUESTION_MAX).then_some(text)
}

/// What a miss asked, kept until its answer is stored.
pub(crate) struct Probe {
    pub context: [u8; 32],
    pub vector: Vec<f32>,
}

impl Semantic {
    /// The question's unit vector, from the embeddings route's deployments that `allow`
    /// admits (`None` when it fails or none may take it).
    pub(crate) async fn embed(
        &self,
        question: String,
        allow: Option<relais_router::Allow<'_>>,
    ) -> Option<Vec<f32>> {
        let req = EmbedRequest {
            model: self.embeddings.name.clone(),
            input: vec![question],
            ..EmbedRequest::default()
        };
        match self.embeddings.embed(&req, allow).await {
            Ok((_, resp, ..)) => resp.embeddings.into_iter().next().and_then(unit),
            Err(ex) => {
                tracing::debug!(
                    class = ex.error.kind.as_str(),
                    "semantic cache: embedding failed; exact matching only"
                );
                None
            }
        }
    }
}

/// `v` scaled to length 1 (`None` for an empty or zero vector).
fn unit(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if v.is_empty() || !norm.is_finite() || norm == 0.0 {
        return None;
    }
    for x in &mut v {
        *x /= norm;
    }
    Some(v)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct Item {
    vector: Vec<f32>,
    key: String,
}

/// One route's questions, by context, bounded by entries.
#[derive(Default)]
pub(crate) struct Index {
    by_context: HashMap<[u8; 32], VecDeque<Item>>,
    /// Contexts in the order their items came: the front one's oldest item leaves first.
    order: VecDeque<[u8; 32]>,
}

impl Index {
    /// The closest question of `context` at or above `threshold`: its similarity and key.
    pub(crate) fn nearest(
        &self,
        context: &[u8; 32],
        vector: &[f32],
        threshold: f32,
    ) -> Option<(f32, String)> {
        let items = self.by_context.get(context)?;
        items
            .iter()
            .filter(|i| i.vector.len() == vector.len())
            .map(|i| (dot(&i.vector, vector), &i.key))
            .filter(|(s, _)| *s >= threshold)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(s, k)| (s, k.clone()))
    }

    /// Keep a question (once per key), dropping the oldest past `max`.
    pub(crate) fn insert(&mut self, probe: Probe, key: &str, max: usize) {
        let items = self.by_context.entry(probe.context).or_default();
        if items.iter().any(|i| i.key == key) {
            return;
        }
        items.push_back(Item {
            vector: probe.vector,
            key: key.to_owned(),
        });
        self.order.push_back(probe.context);
        while self.order.len() > max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(items) = self.by_context.get_mut(&oldest) {
                items.pop_front();
                if items.is_empty() {
                    self.by_context.remove(&oldest);
                }
            }
        }
    }

    /// Forget `key` (its entry expired or was evicted from the store).
    pub(crate) fn remove(&mut self, context: &[u8; 32], key: &str) {
        let Some(items) = self.by_context.get_mut(context) else {
            return;
        };
        let Some(at) = items.iter().position(|i| i.key == key) else {
            return;
        };
        items.remove(at);
        if items.is_empty() {
            self.by_context.remove(context);
        }
        // The context's places in `order` are its items' in the same order: drop the one of
        // the item removed, so evictions keep taking the oldest.
        if let Some(slot) = self
            .order
            .iter()
            .enumerate()
            .filter(|(_, c)| *c == context)
            .nth(at)
            .map(|(i, _)| i)
        {
            self.order.remove(slot);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_context.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_question_above_the_threshold_within_its_context_and_the_oldest_leave() {
        let mut ix = Index::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let v = |x: f32, y: f32| unit(vec![x, y]).unwrap();
        ix.insert(
            Probe {
                context: a,
                vector: v(1.0, 0.0),
            },
            "k1",
            3,
        );
        ix.insert(
            Probe {
                context: a,
                vector: v(0.0, 1.0),
            },
            "k2",
            3,
        );
        ix.insert(
            Probe {
                context: b,
                vector: v(1.0, 0.1),
            },
            "k3",
            3,
        );
        let (s, k) = ix.nearest(&a, &v(1.0, 0.05), 0.9).unwrap();
        assert_eq!(k, "k1");
        assert!(s > 0.99);
        assert!(
            ix.nearest(&a, &v(1.0, 1.0), 0.9).is_none(),
            "0.707 is below 0.9"
        );
        assert!(ix.nearest(&[3u8; 32], &v(1.0, 0.0), 0.5).is_none());
        // A fourth question: the oldest (k1) leaves.
        ix.insert(
            Probe {
                context: b,
                vector: v(0.0, 1.0),
            },
            "k4",
            3,
        );
        assert_eq!(ix.len(), 3);
        assert!(ix.nearest(&a, &v(1.0, 0.0), 0.9).is_none());
        ix.remove(&b, "k3");
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.order.len(), 2, "the removed item's place went with it");
        // The next insertions evict the oldest left (k2), never a newer one.
        ix.insert(
            Probe {
                context: a,
                vector: v(1.0, 0.0),
            },
            "k5",
            3,
        );
        ix.insert(
            Probe {
                context: a,
                vector: v(0.5, 0.5),
            },
            "k6",
            3,
        );
        assert_eq!(ix.len(), 3);
        assert!(
            ix.nearest(&a, &v(0.0, 1.0), 0.99).is_none(),
            "k2 left first"
        );
        assert!(ix.nearest(&b, &v(0.0, 1.0), 0.99).is_some(), "k4 stays");
        assert!(unit(vec![0.0, 0.0]).is_none());
    }
}
