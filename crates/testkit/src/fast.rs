//! The mock's fast mode, for benchmarks: a fixed answer with no parsing, recording or faults, so
//! the mock costs as little as possible next to the gateway being measured. A body that contains
//! `"stream":true` (with or without a space) gets an SSE stream of `chunks` content chunks.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the fast mock answers.
#[derive(Clone, Debug)]
pub struct FastOptions {
    /// Wait this long before answering (models a vendor's latency).
    pub delay: Duration,
    /// Content chunks in a streamed answer.
    pub chunks: usize,
    /// Pause between streamed chunks.
    pub chunk_delay: Duration,
}

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"This is a fixed answer from the benchmark mock, long enough to look like a short real reply.","refusal":null},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}"#;

fn chunk(content: &str, finish: Option<&str>) -> String {
    let finish = finish.map_or("null".to_owned(), |f| format!("\"{f}\""));
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

fn stream_frames(chunks: usize) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(chunks + 3);
    for i in 0..chunks {
        frames.push(Bytes::from(chunk(&format!("tok{i} "), None)));
    }
    frames.push(Bytes::from(chunk("", Some("stop"))));
    frames.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":20,\"total_tokens\":32}}\n\n",
    ));
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    opts: Arc<FastOptions>,
    frames: Arc<Vec<Bytes>>,
) -> Result<Response<BoxBody>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let stream = body.windows(13).any(|w| w == b"\"stream\":true")
        || body.windows(14).any(|w| w == b"\"stream\": true");
    if !opts.delay.is_zero() {
        tokio::time::sleep(opts.delay).await;
    }
    let response = if stream {
        let delay = opts.chunk_delay;
        let frames = frames.clone();
        let s = futures_util::stream::unfold(0usize, move |i| {
            let frames = frames.clone();
            async move {
                let f = frames.get(i)?.clone();
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<_, Infallible>(Frame::data(f)), i + 1))
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(s)))
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(Full::new(Bytes::from_static(
                COMPLETION.as_bytes(),
            ))))
    };
    Ok(response.unwrap_or_else(|_| Response::new(BodyExt::boxed(Full::new(Bytes::new())))))
}

/// Serve the fast mock on `listener` until the task is dropped.
pub async fn serve_fast(listener: TcpListener, opts: FastOptions) {
    let frames = Arc::new(stream_frames(opts.chunks));
    let opts = Arc::new(opts);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (opts, frames) = (opts.clone(), frames.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| answer(req, opts.clone(), frames.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
