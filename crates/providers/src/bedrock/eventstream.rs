//! AWS event stream framing (`application/vnd.amazon.eventstream`), the binary envelope of
//! ConverseStream: bytes in any split, messages out.
//!
//! A message is a 12-byte prelude (total length, headers length, CRC32 of those eight bytes,
//! all big-endian), the headers, the payload, and a CRC32 of everything before it. Both
//! checksums are verified: the prelude's as soon as its 12 bytes are in, so a corrupt length can
//! never make the decoder wait for (or allocate) gigabytes that will not come.

/// Total length, headers length, prelude CRC.
const PRELUDE_LEN: usize = 12;
/// The prelude plus the message CRC: a message with no headers and no payload.
const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;
/// botocore's limits (`eventstream.py`): a message beyond them is not one AWS sends.
const MAX_HEADERS_LEN: usize = 128 * 1024;
const MAX_PAYLOAD_LEN: usize = 24 * 1024 * 1024;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), the checksum of both CRC fields.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// One decoded message. Only string headers are kept: they are the only type Bedrock sends
/// (`:message-type`, `:event-type`, `:exception-type`, `:content-type`, ...); headers of the
/// other types are read past, so that any of them leaves the framing intact.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// A string header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Feed it bytes as they arrive; it returns complete messages and keeps the partial tail.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Decode `bytes`, appending finished messages to `out`. An error (a checksum mismatch, an
    /// impossible length, a malformed header) means the stream cannot be trusted any further.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<Message>) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        let result = loop {
            match parse_one(self.buf.get(start..).unwrap_or_default()) {
                Ok(Some((message, used))) => {
                    out.push(message);
                    start += used;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // One drain per feed, not one per message.
        self.buf.drain(..start);
        result
    }

    /// Bytes of an unfinished message still buffered: a stream that ends here was cut.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The first message of `buf` and the bytes it used; `None` while it is incomplete.
fn parse_one(buf: &[u8]) -> Result<Option<(Message, usize)>, String> {
    let Some(prelude) = buf.get(..PRELUDE_LEN) else {
        return Ok(None);
    };
    let (lengths, prelude_crc) = prelude.split_at(8);
    if crc32(lengths) != be_u32(prelude_crc) {
        return Err("event stream prelude checksum mismatch".to_owned());
    }
    let (total, headers_len) = lengths.split_at(4);
    let total = be_u32(total) as usize;
    let headers_len = be_u32(headers_len) as usize;
    if headers_len > MAX_HEADERS_LEN {
        return Err(format!(
            "event stream headers of {headers_len} bytes exceed {MAX_HEADERS_LEN}"
        ));
    }
    let payload_len = total
        .checked_sub(MIN_MESSAGE_LEN + headers_len)
        .ok_or_else(|| {
            format!("event stream message of {total} bytes cannot hold {headers_len} header bytes")
        })?;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(format!(
            "event stream payload of {payload_len} bytes exceeds {MAX_PAYLOAD_LEN}"
        ));
    }
    let Some(message) = buf.get(..total) else {
        return Ok(None);
    };
    // `total >= MIN_MESSAGE_LEN` was checked above, so both splits are in range.
    let (body, message_crc) = message.split_at(total - 4);
    if crc32(body) != be_u32(message_crc) {
        return Err("event stream message checksum mismatch".to_owned());
    }
    let (headers, payload) = body
        .get(PRELUDE_LEN..)
        .and_then(|rest| rest.split_at_checked(headers_len))
        .ok_or_else(|| "event stream headers run past the message".to_owned())?;
    Ok(Some((
        Message {
            headers: parse_headers(headers)?,
            payload: payload.to_vec(),
        },
        total,
    )))
}

/// A big-endian u32 from exactly four bytes (callers split them off).
fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    for (slot, b) in word.iter_mut().zip(bytes) {
        *slot = *b;
    }
    u32::from_be_bytes(word)
}

/// Reads the headers section front to back; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("event stream header runs past the headers section".to_owned());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A u16 length, then that many bytes.
    fn sized(&mut self) -> Result<&'a [u8], String> {
        let len = u16::from_be_bytes(self.array()?);
        self.take(usize::from(len))
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| format!("event stream {what} is not UTF-8"))
}

fn parse_headers(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut cur = Cursor { bytes };
    let mut names: Vec<String> = Vec::new();
    let mut headers: Vec<(String, String)> = Vec::new();
    while !cur.bytes.is_empty() {
        let [name_len] = cur.array::<1>()?;
        let name = utf8(cur.take(usize::from(name_len))?, "header name")?;
        let [kind] = cur.array::<1>()?;
        // The value's size is fixed by its type, or given by a u16 before it.
        let value = match kind {
            // true, false: no value bytes.
            0 | 1 => None,
            // byte, short, integer, long, timestamp (a long), uuid.
            2 => cur.take(1).map(|_| None)?,
            3 => cur.take(2).map(|_| None)?,
            4 => cur.take(4).map(|_| None)?,
            5 | 8 => cur.take(8).map(|_| None)?,
            9 => cur.take(16).map(|_| None)?,
            // byte array.
            6 => cur.sized().map(|_| None)?,
            7 => Some(utf8(cur.sized()?, "header value")?),
            other => {
                return Err(format!(
                    "event stream header '{name}' has unknown value type {other}"
                ));
            }
        };
        if names.contains(&name) {
            return Err(format!("event stream header '{name}' appears twice"));
        }
        names.push(name.clone());
        if let Some(value) = value {
            headers.push((name, value));
        }
    }
    Ok(headers)
}

/// A string header as encoded on the wire, for building test messages.
#[cfg(test)]
pub(crate) fn string_header(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(7);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
    out
}

/// A whole message around encoded `headers` and `payload`, both checksums computed.
#[cfg(test)]
pub(crate) fn frame(headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let total = (MIN_MESSAGE_LEN + headers.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// An `event` message as Bedrock sends it: event type, JSON content type, message type.
#[cfg(test)]
pub(crate) fn event(event_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut headers = string_header(":event-type", event_type);
    headers.extend(string_header(":content-type", "application/json"));
    headers.extend(string_header(":message-type", "event"));
    frame(&headers, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode_all<P: AsRef<[u8]>>(parts: &[P]) -> Result<Vec<Message>, String> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for p in parts {
            d.feed(p.as_ref(), &mut out)?;
        }
        assert_eq!(d.pending(), 0, "bytes left over");
        Ok(out)
    }

    /// Encoded by a Python encoder and read back by botocore's `EventStreamBuffer`.
    const MESSAGE_START: &str = "000000760000005296d5fade0b3a6576656e742d7479706507000c6d65737361676553746172740d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b22726f6c65223a22617373697374616e74227d6fa8c599";

    /// Every header value type (true, false, byte -5, short -300, int 70000, long -1, bytes
    /// 00 01 02, timestamp 1700000000000, uuid 00..0f), then the two string headers; botocore
    /// decodes it to the same values.
    const ALL_TYPES: &str = "000000a200000079461cda07017400016601016202fb017303fed401690400011170016c05ffffffffffffffff026261060003000102027473080000018bcfe56800017509000102030405060708090a0b0c0d0e0f0d3a6d6573736167652d747970650700056576656e740b3a6576656e742d7479706507000b6d65737361676553746f707b2273746f70526561736f6e223a22656e645f7475726e227d8cb75fc2";

    #[test]
    fn crc32_check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn encodes_like_the_reference_and_decodes_it() {
        let bytes = unhex(MESSAGE_START);
        assert_eq!(event("messageStart", br#"{"role":"assistant"}"#), bytes);
        let messages = decode_all(&[&bytes]).unwrap();
        assert_eq!(messages.len(), 1);
        let m = &messages[0];
        assert_eq!(m.header(":event-type"), Some("messageStart"));
        assert_eq!(m.header(":content-type"), Some("application/json"));
        assert_eq!(m.header(":message-type"), Some("event"));
        assert_eq!(m.header(":exception-type"), None);
        assert_eq!(m.payload, br#"{"role":"assistant"}"#);
        // The smallest message: no headers, no payload.
        let empty = decode_all(&[&unhex("000000100000000005c248eb7d98c8ff")]).unwrap();
        assert_eq!(empty, [Message::default()]);
        assert_eq!(frame(&[], &[]), unhex("000000100000000005c248eb7d98c8ff"));
    }

    #[test]
    fn every_header_type_is_read_past() {
        let messages = decode_all(&[&unhex(ALL_TYPES)]).unwrap();
        let m = &messages[0];
        // The nine typed headers are skipped by their sizes; the strings after them survive.
        assert_eq!(
            m.headers,
            [
                (":message-type".to_owned(), "event".to_owned()),
                (":event-type".to_owned(), "messageStop".to_owned()),
            ]
        );
        assert_eq!(m.header(":event-type"), Some("messageStop"));
        assert_eq!(m.header("t"), None, "not a string header");
        assert_eq!(m.payload, br#"{"stopReason":"end_turn"}"#);
    }

    #[test]
    fn any_split_gives_the_same_messages() {
        let mut stream = unhex(MESSAGE_START);
        stream.extend(unhex(ALL_TYPES));
        stream.extend(event("contentBlockDelta", br#"{"contentBlockIndex":0}"#));
        let whole = decode_all(&[&stream]).unwrap();
        assert_eq!(whole.len(), 3);
        for i in 0..=stream.len() {
            for j in (i..=stream.len()).step_by(7) {
                let got = decode_all(&[&stream[..i], &stream[i..j], &stream[j..]]).unwrap();
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), whole);
    }

    #[test]
    fn corruption_anywhere_is_an_error() {
        let bytes = unhex(ALL_TYPES);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                let mut d = FrameDecoder::new();
                let mut out = Vec::new();
                // A flipped length is caught by the prelude checksum before it is believed.
                let result = d.feed(&bad, &mut out);
                assert!(out.is_empty(), "byte {i} bit {bit:#x} decoded");
                assert!(result.is_err(), "byte {i} bit {bit:#x} accepted");
            }
        }
    }

    #[test]
    fn bad_lengths_and_headers_are_errors_not_waits() {
        // A valid prelude CRC over an absurd headers length: refused at once.
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&u32::MAX.to_be_bytes());
        prelude.extend_from_slice(&(1u32 << 20).to_be_bytes());
        let crc = crc32(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        let mut d = FrameDecoder::new();
        assert!(d.feed(&prelude, &mut Vec::new()).is_err());
        // Total smaller than its own headers.
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&20u32.to_be_bytes());
        prelude.extend_from_slice(&10u32.to_be_bytes());
        let crc = crc32(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        assert!(FrameDecoder::new().feed(&prelude, &mut Vec::new()).is_err());
        // A payload over the limit.
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&((MAX_PAYLOAD_LEN + 17) as u32).to_be_bytes());
        prelude.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        assert!(FrameDecoder::new().feed(&prelude, &mut Vec::new()).is_err());

        // Well-framed messages with broken headers.
        let dup = [string_header("a", "1"), string_header("a", "2")].concat();
        let unknown = vec![1, b'x', 42];
        let short = vec![1, b'x', 4, 0, 0];
        let long_name = vec![200, b'x'];
        let bad_utf8 = vec![1, b'x', 7, 0, 2, 0xff, 0xfe];
        for headers in [dup, unknown, short, long_name, bad_utf8] {
            let bytes = frame(&headers, b"{}");
            assert!(
                FrameDecoder::new().feed(&bytes, &mut Vec::new()).is_err(),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn truncation_waits_and_leaves_bytes_pending() {
        let bytes = unhex(MESSAGE_START);
        for cut in 0..bytes.len() {
            let mut d = FrameDecoder::new();
            let mut out = Vec::new();
            d.feed(&bytes[..cut], &mut out).unwrap();
            assert!(out.is_empty());
            assert_eq!(d.pending(), cut);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 5u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as u8
        };
        for _ in 0..2000 {
            let len = usize::from(next()) * 4;
            let mut bytes: Vec<u8> = (0..len).map(|_| next()).collect();
            // Half the time, a plausible prelude with a valid CRC, so the body parser runs too.
            if next() < 128 && bytes.len() >= 16 {
                let total = bytes.len() as u32;
                let headers = u32::from(next()) % total;
                bytes[..4].copy_from_slice(&total.to_be_bytes());
                bytes[4..8].copy_from_slice(&headers.to_be_bytes());
                let crc = crc32(&bytes[..8]);
                bytes[8..12].copy_from_slice(&crc.to_be_bytes());
                let end = bytes.len() - 4;
                let crc = crc32(&bytes[..end]);
                bytes[end..].copy_from_slice(&crc.to_be_bytes());
            }
            let mut d = FrameDecoder::new();
            let _ = d.feed(&bytes, &mut Vec::new());
        }
    }
}
