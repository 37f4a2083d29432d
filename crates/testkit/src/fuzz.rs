//! Bounded fuzzing on stable Rust: property tests that feed every decoder relais runs on
//! untrusted bytes (vendor answers, client bodies, config files) with real inputs mutated at
//! random, and with plain garbage. The invariant everywhere: a value or an error, never a panic,
//! never output out of proportion to the input.
//!
//! `.ci/run` runs each target for [`DEFAULT_CASES`] cases; `RELAIS_FUZZ_CASES=100000 cargo test
//! fuzz` runs longer. A failing input is shrunk and written by proptest under
//! `proptest-regressions/` beside the crate; those files are committed, and every later run
//! replays them first.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per target in an ordinary test run: about twenty seconds for all of them on two cores in a debug build.
pub const DEFAULT_CASES: u32 = 2000;

/// The proptest config of every fuzz target: [`DEFAULT_CASES`] unless `RELAIS_FUZZ_CASES` says
/// otherwise.
pub fn config() -> Config {
    let cases = std::env::var("RELAIS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        // Shrinking a large input can take long; a bounded number of steps keeps a failing run
        // short while still giving a small case.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// Byte strings that trip parsers: JSON structure, numbers at the edges, escapes, SSE and
/// event-stream framing.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"1.5",
    b"\\u0000",
    b"\\ud800",
    b"\\",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"event: error\n",
    b"data: [DONE]\n\n",
    b":\n",
    b"\xff\xfe",
    b"\x00\x00\x00\x10",
    b"\"type\"",
    b"\"error\"",
    b"\"content\"",
    b"\"choices\"",
    b"\"text\"",
    b"\"tool_calls\"",
    b"\"usage\"",
    b"\"index\"",
    b"\"arguments\"",
];

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Token(usize, usize),
    Remove(usize, usize),
    Repeat(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Token(at, t)),
        (any::<usize>(), 1..64usize).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<usize>(), 1..32usize, 2..64usize)
            .prop_map(|(at, n, times)| Edit::Repeat(at, n, times)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Flip(i, b) if len > 0 => bytes[i % len] ^= b | 1,
            Edit::Flip(..) => {}
            Edit::Truncate(i) => bytes.truncate(at(*i)),
            Edit::Insert(i, more) => {
                let p = at(*i);
                bytes.splice(p..p, more.iter().copied());
            }
            Edit::Token(i, t) => {
                let p = at(*i);
                bytes.splice(p..p, TOKENS[*t].iter().copied());
            }
            Edit::Remove(i, n) => {
                let p = at(*i);
                let end = (p + n).min(len);
                bytes.drain(p..end);
            }
            Edit::Repeat(i, n, times) => {
                let p = at(*i);
                let end = (p + n).min(len);
                let piece = bytes[p..end].to_vec();
                for _ in 1..*times {
                    bytes.splice(end..end, piece.iter().copied());
                }
            }
        }
    }
    bytes
}

/// Real inputs (`seeds`) with up to eight random edits each, or (one case in eight) random
/// bytes.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len().max(1);
    prop_oneof![
        7 => (0..n, prop::collection::vec(edit(), 0..8)).prop_map(move |(i, edits)| {
            apply(seeds.get(i).cloned().unwrap_or_default(), &edits)
        }),
        1 => prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

/// Where to cut an input into the pieces a network would deliver: sorted offsets.
pub fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

/// `bytes` cut at `cuts` (taken modulo its length).
pub fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for c in at {
        out.push(&bytes[start..c]);
        start = c;
    }
    out.push(&bytes[start..]);
    out
}
