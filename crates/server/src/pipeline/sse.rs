//! Stage 3 for streams: the response body that encodes events as SSE as they arrive, passes
//! each to the [`Settlement`] it owns, and finishes it at the end (or, dropped with the body
//! when the client disconnects, lets it finish as cancelled).

use axum::body::Body;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use relais_core::{Error, ErrorKind, EventStream, Side};
use tokio::sync::watch;

use super::{End, Settlement};
use crate::dialect::Encoder;
use crate::guardrails::AnswerGuard;

/// Resolves when the drain deadline of a shutdown cuts streams.
pub(super) async fn aborted(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct BodyState {
    stream: EventStream,
    encoder: Encoder,
    settlement: Settlement,
    abort: watch::Receiver<bool>,
    /// The guardrails' answer side: what the vendor wrote, restored and checked, is what the
    /// client gets (the settlement sees the vendor's events).
    answer: Option<AnswerGuard>,
    /// Events the answer guard let out, waiting to be encoded.
    out_events: Vec<relais_core::StreamEvent>,
    done: bool,
    /// The first write left: later writes may step aside to gather a burst.
    started: bool,
}

/// The error a stream cut at the drain deadline ends with.
pub(super) fn cut_at_drain() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        Side::Gateway,
        "gateway is shutting down; the stream was cut at the drain deadline",
    )
}

/// Largest write assembled from events that were ready at once.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Yields in a row that bring no event before a write leaves. One is not enough: the chunk is
/// often two scheduler turns away (measured with strace: one yield left 24 writes per 23-event
/// stream, three left 3).
const COALESCE_YIELDS: u32 = 3;

/// Encode events as SSE as they arrive, never waiting to batch them (an answer guard may hold
/// text back until it can be checked).
pub(crate) fn body(
    stream: EventStream,
    encoder: Encoder,
    settlement: Settlement,
    (abort, answer): (watch::Receiver<bool>, Option<AnswerGuard>),
) -> Body {
    let state = BodyState {
        stream,
        encoder,
        settlement,
        abort,
        answer,
        out_events: Vec::new(),
        done: false,
        started: false,
    };
    let frames = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = Vec::new();
        let mut fruitless = 0;
        let gather = std::mem::replace(&mut st.started, true);
        loop {
            // Wait for the first event of a write; after it, take whatever is already decoded
            // without waiting, so events that arrived together leave in one write (one syscall,
            // one chunk) instead of one each. Nothing is ever held back for later.
            let next = if out.is_empty() {
                tokio::select! {
                    biased;
                    () = aborted(&mut st.abort) => Err(cut_at_drain()),
                    item = st.stream.next() => Ok(item),
                }
            } else if out.len() >= COALESCE_LIMIT {
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(out)), st));
            } else {
                match st.stream.next().now_or_never() {
                    Some(item) => Ok(item),
                    None if gather && fruitless < COALESCE_YIELDS => {
                        // The upstream's next chunk may already have arrived, a task hop or two
                        // away (hyper's client connection task hands over one chunk per turn).
                        // Step aside so it can run: tokio resumes a yielded task after the
                        // tasks already queued and a non-blocking I/O poll, so this waits for
                        // nothing that has not arrived. A few yields in a row that bring
                        // nothing send the write. A burst then leaves in one write instead of
                        // one per event (measured: 23-event streams went from 23 writes to 3
                        // and from ~4,000 to ~8,000 streams/s on one core); tokens that come
                        // apart pay a few yields each. The first write never waits: time to
                        // first byte comes first.
                        fruitless += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    None => return Some((Ok(Bytes::from(out)), st)),
                }
            };
            // Each event is settled as the vendor sent it; the client gets what the answer
            // guard (when there is one) lets out, or the error it ends the stream with.
            let step = match next {
                Ok(Some(Ok(ev))) => {
                    st.settlement.observe(&ev);
                    match &mut st.answer {
                        None => {
                            st.encoder.event(&ev, &mut out);
                            Ok(Some(()))
                        }
                        Some(guard) => guard.event(ev, &mut st.out_events).map(Some),
                    }
                }
                Ok(None) => match &mut st.answer {
                    None => Ok(None),
                    Some(guard) => guard.end(&mut st.out_events).map(|()| None),
                },
                Ok(Some(Err(e))) | Err(e) => {
                    // What the guard held and can clear leaves before the error event.
                    if let Some(guard) = &mut st.answer {
                        let _ = guard.end(&mut st.out_events);
                    }
                    Err(e)
                }
            };
            for ev in st.out_events.drain(..) {
                st.encoder.event(&ev, &mut out);
            }
            match step {
                Ok(Some(())) => fruitless = 0,
                Ok(None) => {
                    st.encoder.end(&mut out);
                    st.settlement.finish(End::Answered);
                    st.done = true;
                    return Some((Ok(Bytes::from(out)), st));
                }
                Err(e) => {
                    tracing::warn!(class = e.kind.as_str(), message = %e.message, "stream failed after the first event");
                    st.encoder.error(&e, &mut out);
                    st.settlement.finish(End::Failed {
                        error: &e,
                        status: 200,
                    });
                    st.done = true;
                    return Some((Ok(Bytes::from(out)), st));
                }
            }
        }
    });
    Body::from_stream(frames)
}
