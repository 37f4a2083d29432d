//! An incremental Server-Sent Events parser: bytes in any split, events out.

/// One SSE event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Feed it bytes as they arrive; it returns complete events and keeps the partial tail.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Upper bound on one line and on one event's data, so a broken or hostile upstream cannot grow
/// memory without limit. The largest real events are single chunks carrying an inline image
/// (Gemini's base64 PNGs, a few MiB); text and tool deltas are bytes to kilobytes.
const MAX_EVENT: usize = 4 * 1024 * 1024;
/// A line buffer that grew past this is given back once its line is done, so one large event
/// does not keep its buffer for the rest of a long stream.
const KEEP_BUFFER: usize = 64 * 1024;

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse `bytes`, appending finished events to `out`. Errors only when a line exceeds the
    /// size bound.
    ///
    /// Lines are read in place from `bytes` (only an unfinished tail is copied aside), and a
    /// `data:` value goes straight into the event's text: no allocation per line, which matters
    /// at one event per token.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        let mut rest = bytes;
        if !self.buf.is_empty() {
            // Finish the line the previous chunk left unfinished.
            let Some(pos) = rest.iter().position(|b| *b == b'\n') else {
                self.buf.extend_from_slice(rest);
                return self.check_len();
            };
            if self.buf.len() + pos > MAX_EVENT {
                return Err(too_big());
            }
            self.buf.extend_from_slice(&rest[..pos]);
            let line = std::mem::take(&mut self.buf);
            self.line(trim_cr(&line), out);
            if line.capacity() <= KEEP_BUFFER {
                self.buf = line;
                self.buf.clear();
            }
            self.check_len()?;
            rest = &rest[pos + 1..];
        }
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.line(trim_cr(&rest[..pos]), out);
            self.check_len()?;
            rest = &rest[pos + 1..];
        }
        if self.buf.len() + rest.len() > MAX_EVENT {
            return Err(too_big());
        }
        self.buf.extend_from_slice(rest);
        Ok(())
    }

    /// An event's data is bounded like a line: many short `data:` lines with no blank line
    /// between them would otherwise grow one event forever.
    fn check_len(&self) -> Result<(), String> {
        if self.buf.len() > MAX_EVENT || self.data.len() > MAX_EVENT {
            return Err(too_big());
        }
        Ok(())
    }

    /// End of input: a final event without its blank line still counts.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(trim_cr(&line), out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                match std::str::from_utf8(value) {
                    Ok(v) => self.data.push_str(v),
                    Err(_) => self.data.push_str(&String::from_utf8_lossy(value)),
                }
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry: not used by any vendor we speak
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        self.event = None;
        self.has_data = false;
    }
}

fn too_big() -> String {
    format!(
        "an SSE line or event exceeds {} MiB",
        MAX_EVENT / (1024 * 1024)
    )
}

/// What one vendor's stream decoder does with the events of an upstream SSE body.
pub(crate) trait SseDecode: Send + 'static {
    /// Decode one event into canonical events; `true` once the response is complete (the
    /// vendor's end marker), after which nothing more is read.
    /// The event is the decoder's to take from (a decoder that forwards `data` as it came
    /// moves it out instead of copying it).
    fn event(
        &mut self,
        ev: &mut SseEvent,
        out: &mut Vec<relais_core::StreamEvent>,
    ) -> Result<bool, relais_core::Error>;

    /// The upstream closed the body without an end marker: whether what arrived is a whole
    /// response all the same (a finish reason was seen).
    fn complete(&self) -> bool;
}

/// Decoding state of one upstream SSE body.
struct SseBody<D> {
    resp: reqwest::Response,
    parser: SseParser,
    decoder: D,
    frames: Vec<SseEvent>,
    pending: std::collections::VecDeque<relais_core::StreamEvent>,
    ended: bool,
    done: bool,
    meter: crate::http::StreamMeter,
}

impl<D: SseDecode> SseBody<D> {
    /// Decode the buffered frames; the events of a batch that fails are not delivered.
    fn drain(&mut self) -> Result<(), relais_core::Error> {
        let mut out = Vec::new();
        for mut frame in self.frames.drain(..) {
            if self.ended {
                break;
            }
            self.ended = self.decoder.event(&mut frame, &mut out)?;
        }
        self.pending.extend(out);
        if self.ended {
            self.done = true;
        }
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<relais_core::StreamEvent, relais_core::Error>> {
        use relais_core::{Error, ErrorKind};
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            let step = match self.resp.chunk().await {
                Ok(Some(bytes)) => self
                    .meter
                    .add(bytes.len())
                    .and_then(|()| {
                        self.parser
                            .feed(&bytes, &mut self.frames)
                            .map_err(|e| Error::upstream(ErrorKind::Protocol, e))
                    })
                    .and_then(|()| self.drain()),
                Ok(None) => {
                    self.parser.finish(&mut self.frames);
                    self.done = true;
                    match self.drain() {
                        Ok(()) if self.ended || self.decoder.complete() => Ok(()),
                        Ok(()) => Err(Error::upstream(
                            ErrorKind::Protocol,
                            "upstream stream ended before the response finished",
                        )),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(crate::http::from_transport(&e, true)),
            };
            if let Err(e) = step {
                self.done = true;
                self.pending.clear();
                return Some(Err(e));
            }
        }
    }
}

/// Canonical events from an upstream SSE body, decoded by `decoder` as bytes arrive. Dropping
/// the stream drops the response and with it the upstream request.
pub(crate) fn sse_stream<D: SseDecode>(
    resp: reqwest::Response,
    decoder: D,
) -> relais_core::EventStream {
    let state = SseBody {
        resp,
        parser: SseParser::new(),
        decoder,
        frames: Vec::new(),
        pending: std::collections::VecDeque::new(),
        ended: false,
        done: false,
        meter: crate::http::StreamMeter::new(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue17_lines_and_events_are_bounded_well_below_16_mib() {
        // One 5 MiB line, fed in 64 KiB pieces, is refused before it is whole.
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let piece = vec![b'a'; 64 * 1024];
        assert!(p.feed(b"data: ", &mut out).is_ok());
        let mut refused_at = None;
        for i in 0..80 {
            if p.feed(&piece, &mut out).is_err() {
                refused_at = Some(i);
                break;
            }
        }
        assert!(refused_at.is_some_and(|i| i <= 64), "{refused_at:?}");
        // Short `data:` lines that never end their event cannot grow it past the bound either.
        let mut p = SseParser::new();
        let line = format!("data: {}\n", "b".repeat(1000));
        let mut refused = false;
        for _ in 0..10_000 {
            if p.feed(line.as_bytes(), &mut out).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "an endless event was accepted");
        assert!(out.is_empty());
        // A real large event (a 3 MiB inline image) still passes, and the buffer it needed is
        // given back afterwards.
        let mut p = SseParser::new();
        let big = format!("data: {}\n\n", "c".repeat(3 * 1024 * 1024));
        for chunk in big.as_bytes().chunks(100_000) {
            p.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.len(), 3 * 1024 * 1024);
        assert!(p.buf.capacity() <= KEEP_BUFFER, "{}", p.buf.capacity());
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn any_split_gives_same_events() {
        let input = b"event: a\ndata: {\"x\":1}\n\n: ping\r\ndata: line1\r\ndata: line2\r\n\r\ndata: [DONE]\n\n";
        let whole = parse_all(&[input]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].event.as_deref(), Some("a"));
        assert_eq!(whole[1].data, "line1\nline2");
        assert_eq!(whole[2].data, "[DONE]");
        for i in 0..input.len() {
            for j in i..input.len() {
                let got = parse_all(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 7u64;
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..256)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = parse_all(&[&bytes]);
        }
    }
}
