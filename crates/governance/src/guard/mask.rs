//! Reversible masking: sensitive values in a request are replaced by stable placeholders
//! (`[EMAIL_1]`, the same value always the same placeholder within a request) before a vendor
//! sees them, and the placeholders the vendor writes back are restored in the answer the
//! client receives. The [`Vault`] that maps them lives as long as the request, in memory only.
//!
//! The answer side is an [`AnswerFilter`]: text arrives in pieces (stream deltas), so each
//! piece is held back until nothing in it can still be the start of a placeholder or of a
//! sensitive value; then the vendor's own sensitive values are masked (`[EMAIL_REDACTED]`) or
//! the answer is refused, per class, and the placeholders are restored. A value split across
//! deltas is seen whole: whatever could belong to an unfinished value stays held.

use std::collections::HashMap;

use super::{Detectors, Finding};

/// The longest placeholder: `[`, a tag of at most [`TAG_MAX`] bytes, `_`, a number, `]`.
pub const PLACEHOLDER_MAX: usize = 1 + TAG_MAX + 1 + 10 + 1;
const TAG_MAX: usize = 24;

/// How much of an answer's text is held back while answers are checked: a value shorter than
/// this that starts in the released text was whole in the buffer when it was scanned (the
/// longest built-in identifiers, vendor keys, are under 200 bytes). Longer values that are
/// still growing at the buffer's end (private-key blocks, long tokens) hold the buffer open
/// themselves, up to [`HELD_MAX`].
pub const ANSWER_HOLD: usize = 256;

/// The most an answer filter holds for one unfinished value; past it, the value is treated as
/// complete (masked or refused) rather than buffered without bound.
pub const HELD_MAX: usize = 32 * 1024;

/// While answers are checked, the held text is scanned again only once it has grown by this
/// much (a stream's deltas are a few bytes each: scanning each would repeat the work).
const SCAN_STEP: usize = 32;

/// The placeholders of one request and the values they stand for.
#[derive(Debug, Default)]
pub struct Vault {
    /// Value → placeholder.
    placeholders: HashMap<String, String>,
    /// Placeholder → value.
    values: HashMap<String, String>,
    /// Placeholders made so far, per tag.
    counters: HashMap<String, u32>,
}

/// A class's placeholder tag: upper case letters, digits and `_`, at most [`TAG_MAX`] bytes.
pub fn tag(class: &str) -> String {
    class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .take(TAG_MAX)
        .collect()
}

impl Vault {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// How many values are masked.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Replace in `text` the `findings` (of `text`, in order) whose class `masked` accepts;
    /// whether anything was replaced.
    pub fn mask(
        &mut self,
        text: &mut String,
        findings: &[Finding],
        masked: impl Fn(&str) -> bool,
    ) -> bool {
        if !findings.iter().any(|f| masked(&f.class)) {
            return false;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings.iter().filter(|f| masked(&f.class)) {
            out.push_str(&text[at..f.start]);
            out.push_str(self.placeholder(&f.class, &text[f.start..f.end]));
            at = f.end;
        }
        out.push_str(&text[at..]);
        *text = out;
        true
    }

    fn placeholder(&mut self, class: &str, value: &str) -> &str {
        if !self.placeholders.contains_key(value) {
            let tag = tag(class);
            let n = self.counters.entry(tag.clone()).or_insert(0);
            *n += 1;
            let p = format!("[{tag}_{n}]");
            self.values.insert(p.clone(), value.to_owned());
            self.placeholders.insert(value.to_owned(), p);
        }
        self.placeholders.get(value).map_or("", String::as_str)
    }

    /// `text` with every placeholder of this vault put back, appended to `out`; inside a JSON
    /// string (a tool call's arguments) the value is written escaped.
    pub fn restore_into(&self, text: &str, json: bool, out: &mut String) {
        if self.values.is_empty() {
            out.push_str(text);
            return;
        }
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            rest = &rest[open..];
            let found = rest[1..]
                .find(|c: char| !is_placeholder_char(c))
                .map(|n| n + 1)
                .filter(|&close| rest.as_bytes()[close] == b']')
                .and_then(|close| self.values.get(&rest[..=close]).map(|v| (close, v)));
            match found {
                Some((close, value)) => {
                    if json {
                        let quoted = serde_json::Value::from(value.as_str()).to_string();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    } else {
                        out.push_str(value);
                    }
                    rest = &rest[close + 1..];
                }
                None => {
                    out.push('[');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
    }
}

fn is_placeholder_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
}

/// What an answer may not carry, per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerRule {
    /// Replaced by `[CLASS_REDACTED]`.
    Mask,
    /// The answer is refused.
    Block,
}

/// An answer that carries a class its route refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub class: String,
}

/// Which text of an answer a piece belongs to: each is held and released on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Text,
    Refusal,
    Reasoning,
    /// A tool call's arguments (JSON text), by the call's index.
    ToolArguments(u32),
}

/// The answer side of one request: restores its vault's placeholders and applies the rules to
/// what the vendor wrote, holding back what cannot be decided yet.
#[derive(Debug)]
pub struct AnswerFilter {
    vault: Vault,
    rules: Vec<(String, AnswerRule)>,
    /// Per part: the text held, and its length when it was last scanned.
    held: Vec<(Part, String, usize)>,
    /// Classes masked in the answer so far, one entry per value (for the metrics).
    masked: Vec<String>,
    /// The answer's text is JSON (JSON mode): values are put back escaped, like a tool
    /// call's arguments.
    json_text: bool,
}

impl AnswerFilter {
    pub fn new(vault: Vault, rules: Vec<(String, AnswerRule)>) -> Self {
        Self {
            vault,
            rules,
            held: Vec::new(),
            masked: Vec::new(),
            json_text: false,
        }
    }

    /// The answer's text is JSON (the request asked for a JSON object or schema).
    pub fn json_text(mut self, json: bool) -> Self {
        self.json_text = json;
        self
    }

    /// The classes of the values masked since the last call, one entry per value.
    pub fn take_masked(&mut self) -> Vec<String> {
        std::mem::take(&mut self.masked)
    }

    /// Whether the filter does anything (placeholders to restore, or rules).
    pub fn is_active(&self) -> bool {
        !self.vault.is_empty() || !self.rules.is_empty()
    }

    /// Whether the vendor's text is checked (so pieces are held back by [`ANSWER_HOLD`]).
    pub fn checks(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Take a piece of `part`; what may leave now (possibly nothing).
    pub fn push(&mut self, det: &Detectors, part: Part, piece: &str) -> Result<String, Blocked> {
        let i = match self.held.iter().position(|(p, ..)| *p == part) {
            Some(i) => i,
            None => {
                self.held.push((part, String::new(), 0));
                self.held.len() - 1
            }
        };
        let checks = self.checks();
        let (_, buf, scanned) = &mut self.held[i];
        buf.push_str(piece);
        if checks && buf.len() < *scanned + SCAN_STEP {
            return Ok(String::new());
        }
        let mut buf = std::mem::take(buf);
        let out = self.release(det, part, &mut buf, false);
        self.held[i].2 = buf.len();
        self.held[i].1 = buf;
        out
    }

    /// The end of `part`: everything held of it.
    pub fn flush(&mut self, det: &Detectors, part: Part) -> Result<String, Blocked> {
        let Some(i) = self.held.iter().position(|(p, ..)| *p == part) else {
            return Ok(String::new());
        };
        let (_, mut buf, _) = self.held.remove(i);
        self.release(det, part, &mut buf, true)
    }

    /// The parts still holding text, so a caller can flush them before a boundary.
    pub fn holding(&self) -> Vec<Part> {
        self.held
            .iter()
            .filter(|(_, b, _)| !b.is_empty())
            .map(|(p, ..)| *p)
            .collect()
    }

    /// A whole text at once.
    pub fn whole(&mut self, det: &Detectors, part: Part, text: &str) -> Result<String, Blocked> {
        let mut buf = text.to_owned();
        self.release(det, part, &mut buf, true)
    }

    fn rule(&self, class: &str) -> Option<AnswerRule> {
        self.rules.iter().find(|(c, _)| c == class).map(|(_, r)| *r)
    }

    /// Release the front of `buf` that can be decided: all of it when `last`. A value still
    /// unfinished past [`HELD_MAX`] is treated as complete (masked or refused whole).
    fn release(
        &mut self,
        det: &Detectors,
        part: Part,
        buf: &mut String,
        last: bool,
    ) -> Result<String, Blocked> {
        let hold = if self.checks() { ANSWER_HOLD } else { 0 };
        if !last && buf.len() <= hold && (hold > 0 || buf.is_empty()) {
            return Ok(String::new());
        }
        let forced = !last && buf.len() > HELD_MAX;
        let findings: Vec<Finding> = if self.checks() {
            det.scan(buf)
                .into_iter()
                .filter(|f| self.rule(&f.class).is_some())
                .collect()
        } else {
            Vec::new()
        };
        let cut = if last {
            buf.len()
        } else {
            cut_at(buf, buf.len() - hold, hold > 0, &findings, forced)
        };
        let json = matches!(part, Part::ToolArguments(_)) || (part == Part::Text && self.json_text);
        // Reasoning keeps the placeholders: it is the vendor's own text, and signed reasoning
        // must come back to it as it was written.
        let restore = part != Part::Reasoning;
        let mut out = String::with_capacity(cut);
        let mut at = 0;
        for f in findings.iter().filter(|f| f.end <= cut) {
            match self.rule(&f.class) {
                Some(AnswerRule::Block) => {
                    return Err(Blocked {
                        class: f.class.clone(),
                    });
                }
                Some(AnswerRule::Mask) => {
                    self.masked.push(f.class.clone());
                    put(&self.vault, restore, &buf[at..f.start], json, &mut out);
                    out.push('[');
                    out.push_str(&tag(&f.class));
                    out.push_str("_REDACTED]");
                    at = f.end;
                }
                None => {}
            }
        }
        put(&self.vault, restore, &buf[at..cut], json, &mut out);
        buf.drain(..cut);
        Ok(out)
    }
}

/// `text` into `out`, its placeholders restored when `restore`.
fn put(vault: &Vault, restore: bool, text: &str, json: bool, out: &mut String) {
    if restore {
        vault.restore_into(text, json, out);
    } else {
        out.push_str(text);
    }
}

/// Where to cut `buf` (before `want`, the length minus what is held back) so that the text
/// released can be decided: at a space when one is near (the next scan starts at a word), never
/// inside a finding that runs past it (it waits whole; when `forced`, it leaves whole) nor
/// inside a placeholder.
fn cut_at(buf: &str, want: usize, at_space: bool, findings: &[Finding], forced: bool) -> usize {
    let mut cut = floor_boundary(buf, want);
    if at_space {
        let from = floor_boundary(buf, cut.saturating_sub(64));
        if let Some(ws) = buf[from..cut].rfind([' ', '\n', '\t']) {
            cut = from + ws + 1;
        }
    }
    if forced {
        if let Some(f) = findings.iter().find(|f| f.start < cut && f.end > cut) {
            cut = f.end;
        }
        return cut;
    }
    // Each step only moves the cut back, to the start of a finding or of a placeholder: it
    // ends when neither straddles it.
    loop {
        let before = cut;
        if let Some(f) = findings.iter().find(|f| f.start < cut && f.end > cut) {
            cut = f.start;
        }
        let from = floor_boundary(buf, cut.saturating_sub(PLACEHOLDER_MAX));
        if let Some(open) = buf[from..cut].rfind('[') {
            let open = from + open;
            if buf[open + 1..cut].chars().all(is_placeholder_char) {
                cut = open;
            }
        }
        if cut == before {
            return cut;
        }
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, mut at: usize) -> usize {
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det() -> Detectors {
        Detectors::new(&[]).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn masked(text: &str, vault: &mut Vault, d: &Detectors) -> String {
        let mut t = text.to_owned();
        let f = d.scan(&t);
        vault.mask(&mut t, &f, |c| c == "email" || c == "iban");
        t
    }

    #[test]
    fn placeholders_are_stable_and_restored() {
        let d = det();
        let mut v = Vault::default();
        let a = masked(
            "write to jane.doe@example.com and bob@example.org, then jane.doe@example.com again",
            &mut v,
            &d,
        );
        assert_eq!(a, "write to [EMAIL_1] and [EMAIL_2], then [EMAIL_1] again");
        let b = masked("IBAN FR1420041010050500013M02606", &mut v, &d);
        assert_eq!(b, "IBAN [IBAN_1]");
        let mut out = String::new();
        v.restore_into(
            "Sent to [EMAIL_2] from [IBAN_1]; [EMAIL_9] [x] [",
            false,
            &mut out,
        );
        assert_eq!(
            out,
            "Sent to bob@example.org from FR1420041010050500013M02606; [EMAIL_9] [x] ["
        );
    }

    #[test]
    fn a_placeholder_split_across_pieces_is_restored_whole() {
        let d = det();
        let mut v = Vault::default();
        masked("mail jane.doe@example.com", &mut v, &d);
        let text = "Dear [EMAIL_1], your [note] is filed under [EMAIL_1].";
        // Every way of cutting the text in three.
        for i in 0..text.len() {
            for j in i..text.len() {
                let mut v2 = Vault::default();
                masked("mail jane.doe@example.com", &mut v2, &d);
                let mut f = AnswerFilter::new(v2, Vec::new());
                let mut got = String::new();
                for piece in [&text[..i], &text[i..j], &text[j..]] {
                    got.push_str(&f.push(&d, Part::Text, piece).unwrap_or_default());
                }
                got.push_str(&f.flush(&d, Part::Text).unwrap_or_default());
                assert_eq!(
                    got,
                    "Dear jane.doe@example.com, your [note] is filed under jane.doe@example.com."
                );
            }
        }
    }

    #[test]
    fn reasoning_keeps_its_placeholders() {
        let d = det();
        let mut v = Vault::default();
        masked("mail jane.doe@example.com", &mut v, &d);
        let mut f = AnswerFilter::new(v, Vec::new());
        let thought = f
            .whole(&d, Part::Reasoning, "Reply to [EMAIL_1].")
            .unwrap_or_default();
        assert_eq!(thought, "Reply to [EMAIL_1].");
        let said = f
            .whole(&d, Part::Text, "Reply to [EMAIL_1].")
            .unwrap_or_default();
        assert_eq!(said, "Reply to jane.doe@example.com.");
    }

    #[test]
    fn a_value_split_across_pieces_is_caught_in_a_stream() {
        let d = det();
        let rules = vec![
            ("payment_card".to_owned(), AnswerRule::Block),
            ("email".to_owned(), AnswerRule::Mask),
        ];
        let filler = "The quick brown fox jumps over the lazy dog. ".repeat(8);
        let text = format!("{filler}Write to ops@vendor.example today. {filler}");
        for step in [1, 3, 7, 50] {
            let mut f = AnswerFilter::new(Vault::default(), rules.clone());
            let mut got = String::new();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(step) {
                let piece: String = piece.iter().collect();
                got.push_str(&f.push(&d, Part::Text, &piece).unwrap_or_default());
            }
            got.push_str(&f.flush(&d, Part::Text).unwrap_or_default());
            assert_eq!(
                got,
                format!("{filler}Write to [EMAIL_REDACTED] today. {filler}")
            );
        }
        let text = format!("{filler}card 4111 1111 1111 1111 ok {filler}");
        let mut f = AnswerFilter::new(Vault::default(), rules);
        let mut released = String::new();
        let mut refused = None;
        for piece in text.as_bytes().chunks(2) {
            match f.push(
                &d,
                Part::Text,
                std::str::from_utf8(piece).unwrap_or_default(),
            ) {
                Ok(s) => released.push_str(&s),
                Err(b) => {
                    refused = Some(b.class);
                    break;
                }
            }
        }
        assert_eq!(refused.as_deref(), Some("payment_card"));
        assert!(!released.contains("4111"), "{released}");
    }

    #[test]
    fn tool_arguments_get_values_json_escaped() {
        let d = det();
        let mut v = Vault::default();
        let mut t =
            "key: -----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----".to_owned();
        let f = d.scan(&t);
        v.mask(&mut t, &f, |c| c == "secret");
        assert_eq!(t, "key: [SECRET_1]");
        let mut f = AnswerFilter::new(v, Vec::new());
        let got = f
            .whole(&d, Part::ToolArguments(0), r#"{"pem":"[SECRET_1]"}"#)
            .unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_str(&got).unwrap_or_default();
        assert_eq!(
            parsed["pem"],
            "-----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----"
        );
        // A JSON-mode answer's text too; plain text gets the value as it was.
        let mut v = Vault::default();
        let mut t =
            "key: -----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----".to_owned();
        let found = d.scan(&t);
        v.mask(&mut t, &found, |c| c == "secret");
        let mut f = AnswerFilter::new(v, Vec::new()).json_text(true);
        let got = f
            .whole(&d, Part::Text, r#"{"answer":"[SECRET_1]"}"#)
            .unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_str(&got).unwrap_or_default();
        assert!(
            parsed["answer"]
                .as_str()
                .unwrap_or_default()
                .contains("\nMIIabc\n")
        );
    }
}
