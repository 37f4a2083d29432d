//! The client side of the socket: accepting connections and keeping each one bounded in time
//! and number, so that no client, however slow or silent, can hold the gateway's resources.
//!
//! - At most `server.max_connections` connections are open; past that the listener stops
//!   accepting (the kernel's backlog holds the rest) until one closes.
//! - A connection with no request in flight is closed after `idle_timeout_secs` without a byte,
//!   and once the first byte of a request head has arrived the whole head must follow within
//!   `header_read_timeout_secs` (a head sent a byte a second is cut, however lively it looks).
//! - A request body must be whole within `body_read_timeout_secs` of its head; the handler
//!   then answers 408 in the client's dialect and the connection closes.
//! - When file descriptors run out, `accept` fails: the loop backs off (up to a second), logs
//!   once per episode, and keeps serving the connections it has.
//! - HTTP/2 without TLS (h2c) is spoken only when `server.http2_cleartext` is set.
//!
//! Every timeout here is in tokio's clock and none applies while a response is being produced:
//! a ten-minute stream is not idle.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

/// How the listener treats its clients; from `[server]`, read again for each new connection so
/// a reload applies to connections opened after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_cleartext: bool,
}

/// The error a request body yields when it was not whole in time; the handler turns it into a
/// 408 in the client's dialect.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not received in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// Accept and serve connections until `shutdown` resolves; then stop accepting, ask every
/// connection to finish its request in flight and close, and return once all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<crate::tls::Tls>>,
    max_connections: usize,
    limits: impl Fn() -> ClientLimits + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let max = u32::try_from(max_connections.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok((tcp, peer)) => {
                if !backoff.is_zero() {
                    tracing::info!("accepting connections again");
                    backoff = Duration::ZERO;
                }
                (tcp, peer)
            }
            Err(e) => {
                drop(slot);
                if backoff.is_zero() {
                    if is_out_of_descriptors(&e) {
                        tracing::error!(error = %e, "cannot accept connections: out of file descriptors; backing off (raise `ulimit -n` or lower server.max_connections)");
                    } else {
                        tracing::warn!(error = %e, "cannot accept a connection; backing off");
                    }
                }
                // Never spin: the error repeats until a descriptor is freed.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        // Nagle plus delayed ACK holds a response's last small write for ~40 ms under keep-alive.
        let _ = tcp.set_nodelay(true);
        let limits = limits();
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let peer = Peer {
                        addr: peer,
                        tls: false,
                    };
                    serve_connection(tcp, app, limits, false, peer, &mut stop).await;
                }
                Some(tls) => {
                    // The handshake is bounded like a request head.
                    let shake = tokio::time::timeout(
                        limits.header_read_timeout,
                        tls.acceptor().accept(tcp),
                    )
                    .await;
                    match shake {
                        Ok(Ok(stream)) => {
                            // With a client CA configured, a certificate that was presented
                            // has been verified by the handshake.
                            let verified = stream.get_ref().1.peer_certificates().is_some();
                            let peer = Peer {
                                addr: peer,
                                tls: true,
                            };
                            serve_connection(stream, app, limits, verified, peer, &mut stop).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it has closed.
    let _all = slots.acquire_many_owned(max).await;
    Ok(())
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// A private header relais sets on each request of a connection whose client certificate was
/// verified (and removes from every request it did not set it on), for the admin API.
pub(crate) const CLIENT_CERT_HEADER: &str = "x-relais-internal-client-cert";

async fn serve_connection<T>(
    io: T,
    app: Router,
    limits: ClientLimits,
    client_cert: bool,
    peer: Peer,
    stop: &mut watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watch = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo::new(io, watch.clone(), limits));
    let service = ConnService {
        app: TowerToHyperService::new(app),
        watch,
        body_read_timeout: limits.body_read_timeout,
        client_cert,
        peer,
    };
    // With upgrades: a WebSocket (`GET /v1/responses`) takes the connection over. HTTP/1.1
    // alone unless cleartext HTTP/2 is configured (auto-detection reads the preface).
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            // Shutting down: finish the request in flight, take no other.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }};
    }
    if limits.http2_cleartext {
        let builder = auto::Builder::new(TokioExecutor::new());
        drive!(builder.serve_connection_with_upgrades(io, service));
    } else {
        let builder = hyper::server::conn::http1::Builder::new();
        drive!(builder.serve_connection(io, service).with_upgrades());
    }
}

/// What a connection is doing, shared by its socket wrapper and its requests.
struct Activity {
    /// Requests whose response is not yet fully written.
    busy: AtomicUsize,
    /// When the last response ended (tokio's clock, as nanoseconds since `origin`).
    idle_since: AtomicU64,
    origin: Instant,
    /// The socket's reader, parked while a request was in flight: woken when the last response
    /// ends, so that the idle deadline is armed even if no byte ever comes.
    reader: AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            origin: Instant::now(),
            reader: AtomicWaker::new(),
        }
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }
}

/// Marks a request in flight on its connection until its response body is dropped (written
/// whole, or abandoned).
pub(crate) struct Busy(Arc<Activity>);

/// The connection a request came on, in its extensions: a handler that takes the connection
/// over (a WebSocket) holds it busy for as long as it keeps it, so the listener's idle and
/// header deadlines, which know nothing of WebSocket frames, leave it alone; the handler
/// bounds it in time itself.
#[derive(Clone)]
pub(crate) struct Connection(Arc<Activity>);

impl Connection {
    pub(crate) fn hold(&self) -> Busy {
        Busy::new(&self.0)
    }
}

impl Busy {
    fn new(watch: &Arc<Activity>) -> Self {
        watch.busy.fetch_add(1, Ordering::AcqRel);
        Self(watch.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .idle_since
            .store(self.0.now_nanos(), Ordering::Release);
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// The client socket, closed (as a read error) when it stays silent too long while no request
/// is in flight, or when a request head takes too long to arrive whole.
struct WatchedIo<T> {
    tcp: T,
    watch: Arc<Activity>,
    limits: ClientLimits,
    /// The first byte of the head now being read, if one arrived since the last response.
    head_started: Option<(u64, Instant)>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> WatchedIo<T> {
    fn new(tcp: T, watch: Arc<Activity>, limits: ClientLimits) -> Self {
        Self {
            tcp,
            watch,
            limits,
            // A new connection's first head is bounded from the connect: a client that opens a
            // socket and sends nothing is cut after the header timeout, not the idle one.
            head_started: Some((0, Instant::now())),
            timer: None,
        }
    }

    /// When this connection must have made progress, if anything bounds it now.
    fn deadline(&self) -> Option<Instant> {
        if self.watch.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = self.watch.idle_since.load(Ordering::Acquire);
        match self.head_started {
            // A head began after the last response ended: it must be whole in time.
            Some((after, at)) if after == idle_since => Some(at + self.limits.header_read_timeout),
            _ => Some(self.watch.at(idle_since) + self.limits.idle_timeout),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.watch.busy.load(Ordering::Acquire) == 0 {
                    let idle_since = this.watch.idle_since.load(Ordering::Acquire);
                    if this
                        .head_started
                        .is_none_or(|(after, _)| after != idle_since)
                    {
                        this.head_started = Some((idle_since, Instant::now()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.watch.reader.register(cx.waker());
                let Some(deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client connection timed out",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The app as one connection serves it: each request counted busy until its response is
/// written, its body bounded in time.
#[derive(Clone)]
struct ConnService {
    app: TowerToHyperService<Router>,
    watch: Arc<Activity>,
    body_read_timeout: Duration,
    /// The connection's client certificate was verified.
    client_cert: bool,
    peer: Peer,
}

/// Who is at the other end of a connection, and whether it is TLS: set on admin and console
/// requests only (the audit log's address, the session cookie's `Secure`), so the hot path
/// allocates no extension map for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub addr: std::net::SocketAddr,
    pub tls: bool,
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for ConnService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        let busy = Busy::new(&self.watch);
        // Never the client's to claim.
        req.headers_mut().remove(CLIENT_CERT_HEADER);
        if self.client_cert {
            req.headers_mut().insert(
                CLIENT_CERT_HEADER,
                http::HeaderValue::from_static("verified"),
            );
        }
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(Connection(self.watch.clone()));
        }
        let path = req.uri().path();
        if path.starts_with("/admin") || path.starts_with("/ui") {
            req.extensions_mut().insert(self.peer);
        }
        let deadline = Instant::now() + self.body_read_timeout;
        let req = req.map(|body| Body::new(TimedBody::new(body, deadline)));
        let answer = hyper::service::Service::call(&self.app, req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|body| Body::new(TrackedBody { body, _busy: busy })))
        })
    }
}

/// A request body that fails with [`BodyTimedOut`] if it is not whole by its deadline. The timer
/// is made only when the body is not already there (most are, in the head's packet).
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(body: Incoming, deadline: Instant) -> Self {
        Self {
            body,
            deadline,
            timer: None,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its connection busy until it is dropped.
struct TrackedBody {
    body: Body,
    _busy: Busy,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
