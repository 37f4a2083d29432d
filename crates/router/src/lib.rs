//! Routing: from a public model name (a route) to the deployment that answers it.
//!
//! Today a route tries its deployments in order and fails over on errors that another
//! deployment can cure (connect, timeout, 5xx, overload, rate limit), but only before the first
//! event of a response exists: that is the commit point, after which a retry would duplicate
//! output the client may already hold. Strategies, breakers and retry budgets build on
//! [`Route::chat`] without changing its contract.
//!
//! This crate must never depend on the server or on any wire format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relais_core::{
    ChatRequest, EmbedRequest, EmbedResponse, Error, ErrorKind, EventStream, Provider, StreamEvent,
};

/// What a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Chat,
    Embeddings,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embeddings => "embeddings",
        }
    }
}

/// One place a route can send a request: a provider and its name for the model.
pub struct Deployment {
    /// `provider/model`, unique within a route; used in headers, logs and metrics.
    pub id: String,
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
}

/// A public model name and the deployments behind it, in priority order.
pub struct Route {
    pub name: String,
    pub kind: RouteKind,
    pub deployments: Vec<Deployment>,
    /// How long one attempt may take to produce its first event before the next is tried.
    pub first_event_timeout: Duration,
}

/// One failed attempt, for metrics and logs.
#[derive(Debug, Clone)]
pub struct FailedAttempt {
    pub deployment: usize,
    pub error: Error,
    pub elapsed: Duration,
}

/// A committed response: the deployment that produced its first event, and the stream (first
/// event included).
pub struct Routed {
    pub deployment: usize,
    pub stream: EventStream,
    pub failed: Vec<FailedAttempt>,
    /// Time spent waiting on upstreams until the first event, all attempts included.
    pub upstream_wait: Duration,
}

/// The request failed on every deployment it was allowed to try.
pub struct Exhausted {
    pub error: Error,
    pub failed: Vec<FailedAttempt>,
    pub upstream_wait: Duration,
}

/// Whether an error before the commit point should move on to the next deployment.
pub fn should_fail_over(err: &Error) -> bool {
    err.is_retryable()
        && matches!(
            err.kind,
            ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::Server
                | ErrorKind::Overloaded
                | ErrorKind::RateLimited
                | ErrorKind::Protocol
        )
}

impl Route {
    /// Try deployments in order until one attempt succeeds, failing over only on errors another
    /// deployment can cure. `attempt` runs one deployment, identified by its index.
    async fn fail_over<T, F, Fut>(
        &self,
        mut attempt: F,
    ) -> Result<(usize, T, Vec<FailedAttempt>, Duration), Exhausted>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut failed = Vec::new();
        let mut waited = Duration::ZERO;
        for (i, d) in self.deployments.iter().enumerate() {
            let start = Instant::now();
            let outcome = attempt(i).await;
            let elapsed = start.elapsed();
            waited += elapsed;
            match outcome {
                Ok(value) => return Ok((i, value, failed, waited)),
                Err(error) => {
                    let next = should_fail_over(&error) && i + 1 < self.deployments.len();
                    tracing::debug!(
                        route = %self.name,
                        deployment = %d.id,
                        class = error.kind.as_str(),
                        fail_over = next,
                        "attempt failed"
                    );
                    failed.push(FailedAttempt {
                        deployment: i,
                        error: error.clone(),
                        elapsed,
                    });
                    if !next {
                        return Err(Exhausted {
                            error,
                            failed,
                            upstream_wait: waited,
                        });
                    }
                }
            }
        }
        Err(Exhausted {
            error: Error::internal(format!("route '{}' has no deployments", self.name)),
            failed,
            upstream_wait: waited,
        })
    }

    /// Run a chat request: try deployments in order until one produces a first event.
    pub async fn chat(&self, req: &ChatRequest) -> Result<Routed, Exhausted> {
        let (deployment, stream, failed, upstream_wait) = self
            .fail_over(|i| {
                let d = &self.deployments[i];
                let limit = self.first_event_timeout;
                async move {
                    tokio::time::timeout(limit, first_event(d, req))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::upstream(
                                ErrorKind::Timeout,
                                format!(
                                    "no response from upstream within {} ms",
                                    limit.as_millis()
                                ),
                            ))
                        })
                }
            })
            .await?;
        Ok(Routed {
            deployment,
            stream,
            failed,
            upstream_wait,
        })
    }

    /// Run an embeddings request with the same failover rule.
    pub async fn embed(
        &self,
        req: &EmbedRequest,
    ) -> Result<(usize, EmbedResponse, Vec<FailedAttempt>, Duration), Exhausted> {
        self.fail_over(|i| {
            let d = &self.deployments[i];
            d.provider.embed(&d.model, req)
        })
        .await
    }
}

/// Start a response on `d` and wait for its first event with content: the commit point.
///
/// A bare `Start` (the upstream accepted the request: Anthropic's `message_start`, an OpenAI
/// role-only chunk) is held back rather than committed to: vendors report overload and rate
/// limits in the stream right after it (Anthropic's in-stream `overloaded_error`), and nothing
/// the client can see depends on it yet, so such an error still fails over.
async fn first_event(d: &Deployment, req: &ChatRequest) -> Result<EventStream, Error> {
    let mut stream = d.provider.chat(&d.model, req).await?;
    // Providers send one Start; should one send more, the first carries what the response
    // needs (the collector keeps the first id and model), so only it is held: no allocation.
    let mut start: Option<StreamEvent> = None;
    loop {
        match stream.next().await {
            Some(Ok(ev @ StreamEvent::Start { .. })) => {
                start.get_or_insert(ev);
            }
            Some(Ok(first)) => {
                let head = start.into_iter().chain(std::iter::once(first)).map(Ok);
                return Ok(Box::pin(futures_util::stream::iter(head).chain(stream)));
            }
            Some(Err(e)) => return Err(e),
            None => match start {
                // Accepted, then ended with nothing: let the decoder's own judgement stand.
                Some(ev) => return Ok(Box::pin(futures_util::stream::iter([Ok(ev)]))),
                None => {
                    return Err(Error::upstream(
                        ErrorKind::Protocol,
                        "upstream closed the response without any event",
                    ));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A provider scripted with one outcome per call.
    struct Scripted {
        outcomes: Vec<Result<Vec<Result<StreamEvent, Error>>, Error>>,
        calls: AtomicUsize,
    }

    impl Provider for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn chat<'a>(
            &'a self,
            _model: &'a str,
            _request: &'a ChatRequest,
        ) -> BoxFuture<'a, Result<EventStream, Error>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let outcome = self.outcomes[n.min(self.outcomes.len() - 1)].clone();
            Box::pin(async move {
                outcome.map(|events| Box::pin(futures_util::stream::iter(events)) as EventStream)
            })
        }
        fn embed<'a>(
            &'a self,
            _model: &'a str,
            _request: &'a EmbedRequest,
        ) -> BoxFuture<'a, Result<EmbedResponse, Error>> {
            Box::pin(async { Err(Error::unsupported("no embeddings")) })
        }
    }

    fn route(providers: Vec<Arc<Scripted>>) -> Route {
        Route {
            name: "r".into(),
            kind: RouteKind::Chat,
            deployments: providers
                .into_iter()
                .enumerate()
                .map(|(i, p)| Deployment {
                    id: format!("p{i}/m"),
                    provider_name: format!("p{i}"),
                    provider: p,
                    model: "m".into(),
                })
                .collect(),
            first_event_timeout: Duration::from_secs(5),
        }
    }

    fn ok_events() -> Vec<Result<StreamEvent, Error>> {
        vec![
            Ok(StreamEvent::TextDelta("hi".into())),
            Ok(StreamEvent::Finish(relais_core::FinishReason::Stop)),
        ]
    }

    fn scripted(outcomes: Vec<Result<Vec<Result<StreamEvent, Error>>, Error>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            outcomes,
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn fails_over_on_server_error_before_first_event() {
        let a = scripted(vec![Err(Error::upstream(ErrorKind::Server, "boom"))]);
        let b = scripted(vec![Ok(ok_events())]);
        let r = route(vec![a.clone(), b.clone()]);
        let routed = r.chat(&ChatRequest::default()).await.ok().unwrap();
        assert_eq!(routed.deployment, 1);
        assert_eq!(routed.failed.len(), 1);
        let events: Vec<_> = routed.stream.collect().await;
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn error_as_first_stream_item_still_fails_over() {
        let a = scripted(vec![Ok(vec![Err(Error::upstream(
            ErrorKind::Protocol,
            "cut",
        )
        .with_retry(relais_core::Retry::Yes))])]);
        let b = scripted(vec![Ok(ok_events())]);
        let routed = route(vec![a, b])
            .chat(&ChatRequest::default())
            .await
            .ok()
            .unwrap();
        assert_eq!(routed.deployment, 1);
    }

    /// Anthropic sends `message_start`, then may report `overloaded_error` in the stream:
    /// nothing reached the client, so the next deployment answers.
    #[tokio::test]
    async fn error_right_after_start_still_fails_over() {
        let a = scripted(vec![Ok(vec![
            Ok(StreamEvent::Start {
                id: Some("msg_1".into()),
                model: None,
            }),
            Err(Error::upstream(ErrorKind::Overloaded, "overloaded")),
        ])]);
        let b = scripted(vec![Ok(ok_events())]);
        let routed = route(vec![a, b])
            .chat(&ChatRequest::default())
            .await
            .ok()
            .unwrap();
        assert_eq!(routed.deployment, 1);
        assert_eq!(routed.failed[0].error.kind, ErrorKind::Overloaded);
        let events: Vec<_> = routed.stream.collect().await;
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn start_is_kept_in_front_of_the_first_content() {
        let a = scripted(vec![Ok(vec![
            Ok(StreamEvent::Start {
                id: Some("x".into()),
                model: None,
            }),
            Ok(StreamEvent::TextDelta("hi".into())),
        ])]);
        let routed = route(vec![a])
            .chat(&ChatRequest::default())
            .await
            .ok()
            .unwrap();
        let events: Vec<_> = routed.stream.collect().await;
        assert!(matches!(events[0], Ok(StreamEvent::Start { .. })));
        assert!(matches!(events[1], Ok(StreamEvent::TextDelta(_))));
    }

    #[tokio::test]
    async fn client_errors_do_not_fail_over() {
        let a = scripted(vec![Err(Error::upstream(ErrorKind::BadRequest, "bad"))]);
        let b = scripted(vec![Ok(ok_events())]);
        let r = route(vec![a, b.clone()]);
        let err = r.chat(&ChatRequest::default()).await.err().unwrap();
        assert_eq!(err.error.kind, ErrorKind::BadRequest);
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn errors_after_first_event_are_not_retried() {
        let a = scripted(vec![Ok(vec![
            Ok(StreamEvent::TextDelta("partial".into())),
            Err(Error::upstream(ErrorKind::Protocol, "cut").with_retry(relais_core::Retry::Yes)),
        ])]);
        let b = scripted(vec![Ok(ok_events())]);
        let r = route(vec![a, b.clone()]);
        let routed = r.chat(&ChatRequest::default()).await.ok().unwrap();
        assert_eq!(routed.deployment, 0);
        let events: Vec<_> = routed.stream.collect().await;
        assert!(events[1].is_err());
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn all_failing_returns_last_error() {
        let a = scripted(vec![Err(Error::upstream(
            ErrorKind::RateLimited,
            "slow down",
        ))]);
        let b = scripted(vec![Err(Error::upstream(ErrorKind::Overloaded, "busy"))]);
        let err = route(vec![a, b])
            .chat(&ChatRequest::default())
            .await
            .err()
            .unwrap();
        assert_eq!(err.error.kind, ErrorKind::Overloaded);
        assert_eq!(err.failed.len(), 2);
    }
}
