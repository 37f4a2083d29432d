//! W3C trace context: the `traceparent` a client sent, the request's own span, and which
//! attempt an upstream call belongs to, so providers can send each vendor a `traceparent` whose
//! parent is that attempt's span.
//!
//! The context travels with the request's future, not through every signature: [`scope`] wraps
//! the routing future and makes the context current on the thread while it is polled (what
//! `tokio::task_local!` does, without tying this crate to tokio). The router marks each attempt
//! with [`set_attempt`]; a provider asks [`upstream_traceparent`] when it builds the upstream
//! request. Attempt span ids are derived from the request's span id and the attempt number, so
//! the spans exported when the request settles carry the ids the vendors were sent.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The request's span (the gateway's server span).
    pub span_id: u64,
    /// The client's span, when it sent a `traceparent`.
    pub parent_span_id: Option<u64>,
    /// Recorded and exported; vendors are told with the `traceparent` flags.
    pub sampled: bool,
}

/// A parsed `traceparent` header: trace id, parent span id, sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Parse `version-traceid-spanid-flags` (W3C Trace Context, level 1): lowercase hex, ids
    /// not all zeros, version `ff` invalid. A later version may append fields after the four.
    pub fn parse(header: &str) -> Option<Self> {
        let h = header.trim();
        let mut parts = h.splitn(5, '-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if ![version, trace, span, flags].into_iter().all(lower_hex) || version == "ff" {
            return None;
        }
        if version == "00" && rest.is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

impl TraceContext {
    /// The span id of attempt `n` (0-based, across fallback routes): derived, never zero, and
    /// distinct from the request's span.
    pub fn attempt_span_id(&self, n: u32) -> u64 {
        let mut z = self.span_id.wrapping_add(
            u64::from(n)
                .wrapping_add(1)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z == 0 || z == self.span_id {
            z ^ 0x5555
        } else {
            z
        }
    }

    /// The `traceparent` value naming `span` as the parent: `00-{trace}-{span}-{flags}`, 55
    /// bytes of ASCII, built without allocating.
    pub fn header_bytes(&self, span: u64) -> [u8; 55] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        for i in 0..32 {
            out[3 + i] = DIGITS[((self.trace_id >> ((31 - i) * 4)) & 0xf) as usize];
        }
        for i in 0..16 {
            out[36 + i] = DIGITS[((span >> ((15 - i) * 4)) & 0xf) as usize];
        }
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }

    /// [`TraceContext::header_bytes`] as a string.
    pub fn header(&self, span: u64) -> String {
        String::from_utf8_lossy(&self.header_bytes(span)).into_owned()
    }
}

#[derive(Clone, Copy)]
struct Current {
    ctx: TraceContext,
    attempt: u32,
}

thread_local! {
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

pin_project_lite::pin_project! {
    /// A future with a trace context current while it is polled; see [`scope`].
    pub struct Scoped<F> {
        #[pin]
        inner: F,
        current: Option<Current>,
    }
}

/// Run `fut` with `ctx` current (no allocation: the future is wrapped in place).
pub fn scope<F: Future>(ctx: TraceContext, fut: F) -> Scoped<F> {
    Scoped {
        inner: fut,
        current: Some(Current { ctx, attempt: 0 }),
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let outer = CURRENT.with(|c| c.replace(*this.current));
        let out = this.inner.poll(cx);
        // Keep what the inner future set (the attempt number) for its next poll.
        *this.current = CURRENT.with(|c| c.replace(outer));
        out
    }
}

/// The router starts attempt `n` of the current request (no effect outside a [`scope`]).
pub fn set_attempt(n: u32) {
    CURRENT.with(|c| {
        if let Some(mut cur) = c.get() {
            cur.attempt = n;
            c.set(Some(cur));
        }
    });
}

/// The `traceparent` to send upstream for the current attempt, if the request is traced.
pub fn upstream_traceparent() -> Option<[u8; 55]> {
    CURRENT
        .with(Cell::get)
        .map(|cur| cur.ctx.header_bytes(cur.ctx.attempt_span_id(cur.attempt)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;

    #[test]
    fn traceparent_parses_as_the_w3c_spec_says() {
        let p =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(p.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(p.span_id, 0x00f0_67aa_0ba9_02b7);
        assert!(p.sampled);
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        // A later version may carry more fields; version 00 may not.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba9g2b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn attempts_get_distinct_span_ids_and_the_header_names_them() {
        let ctx = TraceContext {
            trace_id: 1,
            span_id: 7,
            parent_span_id: None,
            sampled: true,
        };
        let ids: std::collections::BTreeSet<u64> =
            (0..100).map(|n| ctx.attempt_span_id(n)).collect();
        assert_eq!(ids.len(), 100);
        assert!(!ids.contains(&0) && !ids.contains(&7));
        assert_eq!(
            ctx.header(0xab),
            "00-00000000000000000000000000000001-00000000000000ab-01"
        );
        let full = TraceContext {
            trace_id: u128::MAX - 1,
            span_id: 1,
            parent_span_id: None,
            sampled: false,
        };
        assert_eq!(
            full.header(u64::MAX),
            format!("00-{:032x}-{:016x}-00", u128::MAX - 1, u64::MAX)
        );
        assert!(TraceParent::parse(&full.header(3)).is_some());
    }

    #[test]
    fn the_context_is_current_only_inside_its_scope() {
        let ctx = TraceContext {
            trace_id: 9,
            span_id: 5,
            parent_span_id: None,
            sampled: false,
        };
        assert_eq!(upstream_traceparent(), None);
        let fut = scope(ctx, async {
            let first = upstream_traceparent();
            set_attempt(1);
            (first, upstream_traceparent())
        });
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut fut = Box::pin(fut);
        let Poll::Ready((first, second)) = fut.as_mut().poll(&mut cx) else {
            panic!("the scope did not finish");
        };
        assert_eq!(first, Some(ctx.header_bytes(ctx.attempt_span_id(0))));
        assert_eq!(second, Some(ctx.header_bytes(ctx.attempt_span_id(1))));
        assert!(first.unwrap().ends_with(b"-00"));
        assert_eq!(upstream_traceparent(), None);
    }
}
