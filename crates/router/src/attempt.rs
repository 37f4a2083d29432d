//! One attempt after its commit point: the upstream's event stream, watched for an idle stall and
//! the attempt's deadline, with its outcome reported to the deployment's health when it ends.
//! Dropping it (the client left) drops the upstream response, which closes the upstream request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use relais_core::{Error, ErrorKind, EventStream, StreamEvent};
use tokio::time::{Instant, Sleep};

use crate::Route;

/// Holds an attempt's place in its deployment's in-flight count (and the half-open probe, if it
/// is one) until the attempt ends, however it ends.
pub(crate) struct AttemptGuard {
    pub(crate) route: Arc<Route>,
    pub(crate) index: usize,
    pub(crate) probe: bool,
    /// An outcome was recorded (success or failure), so a probe needs no release.
    pub(crate) settled: bool,
}

impl AttemptGuard {
    pub(crate) fn new(route: Arc<Route>, index: usize, probe: bool) -> Self {
        Self {
            route,
            index,
            probe,
            settled: false,
        }
    }

    /// The attempt's outcome reached the breaker.
    pub(crate) fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        let health = &self.route.deployments[self.index].health;
        health.end();
        if self.probe && !self.settled {
            health.release_probe();
        }
    }
}

pub(crate) struct AttemptStream {
    inner: Option<EventStream>,
    guard: AttemptGuard,
    /// The idle limit, its timer, and when the last event came. The timer is not re-armed per
    /// event (that would touch the timer wheel on every token); when it fires, it is moved to
    /// the last event plus the limit if events came meanwhile.
    idle: Option<(Duration, Pin<Box<Sleep>>, Instant)>,
    deadline: Option<(Duration, Pin<Box<Sleep>>)>,
    output_tokens: u64,
}

impl AttemptStream {
    /// `deadline` is when the attempt (or the whole request) must be over; `budget` says how
    /// long that was, for the error message.
    pub(crate) fn new(
        inner: EventStream,
        guard: AttemptGuard,
        idle: Option<Duration>,
        deadline: Option<(Duration, Instant)>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner: Some(inner),
            guard,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep_until(now + d)), now)),
            deadline: deadline.map(|(d, at)| (d, Box::pin(tokio::time::sleep_until(at)))),
            output_tokens: 0,
        }
    }

    fn fail(&mut self, err: Error) -> Poll<Option<Result<StreamEvent, Error>>> {
        self.inner = None;
        self.guard
            .route
            .record_failure(self.guard.index, &err, Instant::now());
        self.guard.settled = true;
        Poll::Ready(Some(Err(err)))
    }

    fn finish(&mut self) {
        self.inner = None;
        let now = Instant::now();
        self.guard.route.deployments[self.guard.index]
            .health
            .add_tokens(now, self.output_tokens);
    }
}

impl Stream for AttemptStream {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(ev))) => {
                if let StreamEvent::Usage(u) = &ev {
                    this.output_tokens = this.output_tokens.max(u.output_tokens);
                }
                if let Some((_, _, last)) = this.idle.as_mut() {
                    *last = Instant::now();
                }
                return Poll::Ready(Some(Ok(ev)));
            }
            Poll::Ready(Some(Err(e))) => {
                let out = this.fail(e);
                this.finish();
                return out;
            }
            Poll::Ready(None) => {
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some((d, sleep)) = this.deadline.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                let err = Error::upstream(
                    ErrorKind::Timeout,
                    format!(
                        "the response did not finish within its {} ms deadline",
                        d.as_millis()
                    ),
                );
                let out = this.fail(err);
                this.finish();
                return out;
            }
        }
        if let Some((d, sleep, last)) = this.idle.as_mut() {
            while sleep.as_mut().poll(cx).is_ready() {
                let due = *last + *d;
                if due > Instant::now() {
                    sleep.as_mut().reset(due);
                    continue;
                }
                let err = Error::upstream(
                    ErrorKind::Timeout,
                    format!("the upstream sent nothing for {} ms", d.as_millis()),
                );
                let out = this.fail(err);
                this.finish();
                return out;
            }
        }
        Poll::Pending
    }
}
