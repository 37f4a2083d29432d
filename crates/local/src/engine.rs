//! The inference worker: one thread that owns the model and its context and decodes every
//! active sequence together, one token each per step (continuous batching). Requests arrive
//! through a bounded queue; tokens leave through a channel per request, so tokio's workers never
//! wait on inference and a client that goes away frees its sequence at the next step.

use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use relais_core::{Error, ErrorKind, FinishReason, Retry, StreamEvent, Usage};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::LocalConfig;

/// Tokens decoded per `decode` call while reading a prompt.
const PROMPT_BATCH: usize = 512;

/// How one request wants to be sampled.
#[derive(Debug, Clone)]
pub(crate) struct Sampling {
    pub max_tokens: Option<u32>,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub seed: Option<u32>,
    pub stop: Vec<String>,
    /// GBNF grammar constraining the output.
    pub grammar: Option<String>,
}

pub(crate) type EventSender = UnboundedSender<Result<StreamEvent, Error>>;

/// One request handed to the worker.
pub(crate) struct Job {
    pub prompt: String,
    pub sampling: Sampling,
    pub tx: EventSender,
}

/// What the loaded file says about itself.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub file: PathBuf,
    pub architecture: String,
    pub parameters: u64,
    pub quantization: String,
    pub trained_context: u32,
    pub size_bytes: u64,
    pub chat_template: Option<String>,
    pub bos: String,
    pub eos: String,
}

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// llama.cpp's backend may be initialised once per process (tests run many providers in one).
fn backend() -> Result<&'static LlamaBackend, String> {
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))?;
            // Its own log lines would interleave with ours; failures are reported as errors.
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Check the file before handing it to llama.cpp, whose own failure says only "null".
fn check_file(path: &Path) -> Result<u64, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "model file {} cannot be read: {e} (run scripts/fetch-model, or set model_path)",
            path.display()
        )
    })?;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map_err(|e| format!("model file {} cannot be read: {e}", path.display()));
    if read.is_err() || &magic != b"GGUF" {
        return Err(format!(
            "model file {} is not a GGUF file (bad magic bytes)",
            path.display()
        ));
    }
    Ok(meta.len())
}

/// llama.cpp's `general.file_type` numbers, for display.
fn quantization_name(file_type: &str) -> String {
    let name = match file_type.trim() {
        "0" => "F32",
        "1" => "F16",
        "2" => "Q4_0",
        "3" => "Q4_1",
        "7" => "Q8_0",
        "8" => "Q5_0",
        "9" => "Q5_1",
        "10" => "Q2_K",
        "11" => "Q3_K_S",
        "12" => "Q3_K_M",
        "13" => "Q3_K_L",
        "14" => "Q4_K_S",
        "15" => "Q4_K_M",
        "16" => "Q5_K_S",
        "17" => "Q5_K_M",
        "18" => "Q6_K",
        "32" => "BF16",
        other => return format!("file_type {other}"),
    };
    name.to_owned()
}

/// The inference thread's queue. Dropping it closes the queue and waits for the thread to free
/// the model and context: llama.cpp's GPU backend must release its memory before the process
/// exits, or CUDA's exit handlers tear the runtime down under it and the process aborts.
pub(crate) struct Worker {
    jobs: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why a job was not queued.
pub(crate) enum Refused {
    Full,
    Stopped,
}

impl Worker {
    pub(crate) fn try_send(&self, job: Job) -> Result<(), Refused> {
        match &self.jobs {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => Refused::Full,
                std::sync::mpsc::TrySendError::Disconnected(_) => Refused::Stopped,
            }),
            None => Err(Refused::Stopped),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the worker once its running sequences are done; their clients
        // are gone by now, so each ends at its next step.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start the worker: load the model on its own thread and report what it found.
pub(crate) fn spawn(cfg: &LocalConfig) -> Result<(Worker, Facts), String> {
    let path = PathBuf::from(&cfg.model_path.0);
    let size = check_file(&path)?;
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(cfg.queue_depth.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Facts, String>>();
    let cfg = cfg.clone();
    let thread = std::thread::Builder::new()
        .name("relais-local".into())
        .spawn(move || worker(&cfg, &path, size, &ready_tx, &job_rx))
        .map_err(|e| format!("cannot start the inference thread: {e}"))?;
    let facts = ready_rx
        .recv()
        .map_err(|_| "the inference thread stopped while loading".to_owned())??;
    Ok((
        Worker {
            jobs: Some(job_tx),
            thread: Some(thread),
        },
        facts,
    ))
}

fn worker(
    cfg: &LocalConfig,
    path: &Path,
    size: u64,
    ready: &std::sync::mpsc::Sender<Result<Facts, String>>,
    jobs: &Receiver<Job>,
) {
    let loaded = load(cfg, path, size);
    let (model, facts) = match loaded {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let Ok(backend) = backend() else {
        return;
    };
    let parallel = cfg.parallel.max(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cfg.context_tokens.max(64) * parallel))
        .with_n_seq_max(parallel)
        .with_n_batch(PROMPT_BATCH as u32)
        .with_n_ubatch(PROMPT_BATCH as u32)
        .with_n_threads(cfg.threads())
        .with_n_threads_batch(cfg.threads());
    let ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "cannot create an inference context for {}: {e}",
                path.display()
            )));
            return;
        }
    };
    let facts_bos = facts.bos.clone();
    let _ = ready.send(Ok(facts));
    Scheduler {
        model: &model,
        ctx,
        slots: (0..parallel).map(|_| None).collect(),
        batch: LlamaBatch::new(PROMPT_BATCH.max(parallel as usize), 1),
        context_tokens: cfg.context_tokens.max(64),
        bos: facts_bos,
    }
    .run(jobs);
}

fn load(cfg: &LocalConfig, path: &Path, size: u64) -> Result<(LlamaModel, Facts), String> {
    let backend = backend()?;
    let gpu_layers = cfg
        .gpu_layers
        .unwrap_or(if cfg!(feature = "cuda") { 999 } else { 0 });
    let show = std::io::stderr().is_terminal();
    let mut last = -1i32;
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(gpu_layers)
        .with_progress_callback(move |p| {
            let pct = (p * 100.0) as i32;
            if show && pct != last {
                last = pct;
                eprint!("\rrelais: loading model {pct:3}%");
                if pct >= 100 {
                    eprintln!();
                }
            }
            true
        });
    let started = Instant::now();
    let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
        format!(
            "model file {} could not be loaded by llama.cpp ({e}): corrupt, truncated or an unsupported architecture",
            path.display()
        )
    })?;
    let meta = |k: &str| model.meta_val_str(k).ok();
    let vocab = model.vocab();
    let piece =
        |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let facts = Facts {
        file: path.to_path_buf(),
        architecture: meta("general.architecture").unwrap_or_else(|| "unknown".into()),
        parameters: model.n_params(),
        quantization: meta("general.file_type")
            .map(|t| quantization_name(&t))
            .unwrap_or_else(|| "unknown".into()),
        trained_context: model.n_ctx_train(),
        size_bytes: size,
        chat_template: meta("tokenizer.chat_template"),
        bos: piece(vocab.bos()),
        eos: piece(vocab.eos()),
    };
    tracing::info!(
        file = %path.display(),
        architecture = %facts.architecture,
        parameters = facts.parameters,
        quantization = %facts.quantization,
        trained_context = facts.trained_context,
        gpu_layers,
        threads = cfg.threads(),
        load_ms = started.elapsed().as_millis() as u64,
        "local model loaded"
    );
    Ok((model, facts))
}

/// One sequence being generated.
struct Seq {
    tx: EventSender,
    sampling: Sampling,
    sampler: LlamaSampler,
    /// Position of the next token in this sequence.
    pos: i32,
    prompt_tokens: u32,
    output_tokens: u32,
    /// Bytes of a UTF-8 character split across tokens.
    pending: Vec<u8>,
    /// Decoded text held back because it may be the start of a stop sequence.
    held: String,
    /// The token to feed at the next step.
    next: LlamaToken,
    /// Where this sequence's logits are in the last batch.
    batch_index: i32,
}

enum Step {
    Continue,
    Done(FinishReason),
    /// The client went away: free the sequence silently.
    Abandoned,
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    slots: Vec<Option<Seq>>,
    batch: LlamaBatch<'static>,
    context_tokens: u32,
    /// The BOS token's text, to see whether the template already wrote it.
    bos: String,
}

impl Scheduler<'_> {
    fn run(mut self, jobs: &Receiver<Job>) {
        loop {
            // Admit work: block when idle, take what is waiting when busy.
            if self.slots.iter().all(Option::is_none) {
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while self.slots.iter().any(Option::is_none) {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if self.slots.iter().all(Option::is_none) {
                            return;
                        }
                        break;
                    }
                }
            }
            self.step();
        }
    }

    fn free(&mut self, slot: usize) {
        self.slots[slot] = None;
        let _ = self
            .ctx
            .clear_kv_cache_seq(u32::try_from(slot).ok(), None, None);
    }

    fn admit(&mut self, job: Job) {
        if job.tx.is_closed() {
            return;
        }
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            let _ = job.tx.send(Err(Error::upstream(
                ErrorKind::Overloaded,
                "no free sequence",
            )
            .with_retry(Retry::Yes)));
            return;
        };
        match self.start(slot, &job) {
            Ok(seq) => {
                self.slots[slot] = Some(seq);
                self.after_sample(slot);
            }
            Err(e) => {
                let _ = job.tx.send(Err(e));
                self.free(slot);
            }
        }
    }

    /// Read the prompt into sequence `slot` and sample its first token.
    fn start(&mut self, slot: usize, job: &Job) -> Result<Seq, Error> {
        let vocab = self.model.vocab();
        // A template that writes the BOS token itself must not get a second one.
        let add_bos = self.bos.is_empty() || !job.prompt.starts_with(&self.bos);
        let tokens = vocab.tokenize(job.prompt.as_bytes(), add_bos, true);
        let n_prompt = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        let limit = self.context_tokens;
        let wanted = job.sampling.max_tokens.unwrap_or(0);
        if n_prompt >= limit || (wanted > 0 && n_prompt.saturating_add(wanted) > limit) {
            return Err(Error::upstream(
                ErrorKind::ContextWindowExceeded,
                format!(
                    "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({n_prompt} in the messages, {wanted} in the completion).",
                    n_prompt.saturating_add(wanted)
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let sampler = sampler(self.model, &job.sampling)?;
        let seq_id = i32::try_from(slot).unwrap_or(0);
        let _ = self
            .ctx
            .clear_kv_cache_seq(u32::try_from(slot).ok(), None, None);
        let internal = |what: String| Error::internal(format!("local model: {what}"));
        let mut pos = 0i32;
        let chunks = tokens.chunks(PROMPT_BATCH);
        let n_chunks = chunks.len();
        let mut last_index = 0;
        for (ci, chunk) in chunks.enumerate() {
            self.batch.clear();
            for (i, t) in chunk.iter().enumerate() {
                let last = ci + 1 == n_chunks && i + 1 == chunk.len();
                self.batch
                    .add(*t, pos, &[seq_id], last)
                    .map_err(|e| internal(e.to_string()))?;
                pos += 1;
            }
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| internal(format!("prompt decode failed: {e}")))?;
            last_index = self.batch.n_tokens() - 1;
        }
        let _ = job.tx.send(Ok(StreamEvent::Start {
            id: None,
            model: None,
        }));
        let mut seq = Seq {
            tx: job.tx.clone(),
            sampling: job.sampling.clone(),
            sampler,
            pos,
            prompt_tokens: n_prompt,
            output_tokens: 0,
            pending: Vec::new(),
            held: String::new(),
            next: LlamaToken(0),
            batch_index: last_index,
        };
        seq.next = seq.sampler.sample(&self.ctx, last_index);
        Ok(seq)
    }

    /// Decode one token for every active sequence, then sample each one's next token.
    fn step(&mut self) {
        self.batch.clear();
        let mut any = false;
        for (slot, s) in self.slots.iter_mut().enumerate() {
            let Some(seq) = s else { continue };
            let seq_id = i32::try_from(slot).unwrap_or(0);
            seq.batch_index = self.batch.n_tokens();
            if self.batch.add(seq.next, seq.pos, &[seq_id], true).is_ok() {
                seq.pos += 1;
                any = true;
            }
        }
        if !any {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            let err = Error::internal(format!("local model: decode failed: {e}"));
            for slot in 0..self.slots.len() {
                if let Some(seq) = &self.slots[slot] {
                    let _ = seq.tx.send(Err(err.clone()));
                    self.free(slot);
                }
            }
            return;
        }
        for slot in 0..self.slots.len() {
            if let Some(seq) = &mut self.slots[slot] {
                seq.next = seq.sampler.sample(&self.ctx, seq.batch_index);
                self.after_sample(slot);
            }
        }
    }

    /// Turn the freshly sampled `next` token of `slot` into output, and end the sequence when
    /// it is done or abandoned.
    fn after_sample(&mut self, slot: usize) {
        let vocab = self.model.vocab();
        let limit = i32::try_from(self.context_tokens).unwrap_or(i32::MAX);
        let Some(seq) = &mut self.slots[slot] else {
            return;
        };
        let outcome = if seq.tx.is_closed() {
            Step::Abandoned
        } else if vocab.is_eog(seq.next) {
            Step::Done(FinishReason::Stop)
        } else {
            seq.output_tokens += 1;
            seq.pending
                .extend(vocab.token_to_piece(seq.next, false, None));
            take_utf8(&mut seq.pending, &mut seq.held);
            let outcome = emit(seq);
            match outcome {
                Step::Continue
                    if seq
                        .sampling
                        .max_tokens
                        .is_some_and(|m| seq.output_tokens >= m)
                        || seq.pos + 1 >= limit =>
                {
                    Step::Done(FinishReason::Length)
                }
                other => other,
            }
        };
        match outcome {
            Step::Continue => {}
            Step::Abandoned => self.free(slot),
            Step::Done(reason) => {
                if reason != FinishReason::Stop || seq.held.is_empty() {
                    // Held-back text that did not turn into a stop sequence belongs to the answer.
                }
                flush(seq);
                let usage = Usage {
                    input_tokens: u64::from(seq.prompt_tokens),
                    output_tokens: u64::from(seq.output_tokens),
                    ..Usage::default()
                };
                let _ = seq.tx.send(Ok(StreamEvent::Usage(usage)));
                let _ = seq.tx.send(Ok(StreamEvent::Finish(reason)));
                self.free(slot);
            }
        }
    }
}

/// Move the longest valid UTF-8 prefix of `pending` into `out`.
fn take_utf8(pending: &mut Vec<u8>, out: &mut String) {
    loop {
        match std::str::from_utf8(pending) {
            Ok(s) => {
                out.push_str(s);
                pending.clear();
                return;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
                match e.error_len() {
                    // An incomplete character at the end: wait for the next token.
                    None => {
                        pending.drain(..valid);
                        return;
                    }
                    // Bytes that can never be valid: replace them and go on.
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        pending.drain(..valid + bad);
                    }
                }
            }
        }
    }
}

/// Send what can be sent of the held text: everything before a stop sequence (then finish), or
/// everything except a tail that could still become one.
fn emit(seq: &mut Seq) -> Step {
    let stops = &seq.sampling.stop;
    if let Some(at) = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| seq.held.find(s.as_str()))
        .min()
    {
        seq.held.truncate(at);
        return if send_text(seq) {
            Step::Done(FinishReason::Stop)
        } else {
            Step::Abandoned
        };
    }
    let keep = stops
        .iter()
        .map(|s| partial_suffix(&seq.held, s))
        .max()
        .unwrap_or(0);
    let cut = seq.held.len() - keep;
    if cut == 0 {
        return Step::Continue;
    }
    let tail = seq.held.split_off(cut);
    let ok = send_text(seq);
    seq.held = tail;
    if ok { Step::Continue } else { Step::Abandoned }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            stop.is_char_boundary(n)
                && text.is_char_boundary(text.len() - n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

fn send_text(seq: &mut Seq) -> bool {
    if seq.held.is_empty() {
        return true;
    }
    let text = std::mem::take(&mut seq.held);
    seq.tx.send(Ok(StreamEvent::TextDelta(text))).is_ok()
}

/// At the end: whatever is still held is part of the answer.
fn flush(seq: &mut Seq) {
    take_utf8(&mut seq.pending, &mut seq.held);
    let _ = send_text(seq);
}

fn sampler(model: &LlamaModel, s: &Sampling) -> Result<LlamaSampler, Error> {
    let mut chain = Vec::new();
    if let Some(g) = &s.grammar {
        let grammar = LlamaSampler::grammar(model, g, "root").map_err(|e| {
            Error::unsupported(format!("the output grammar could not be built: {e}"))
                .with_param("response_format")
        })?;
        chain.push(grammar);
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if let Some(k) = s.top_k.filter(|k| *k > 0) {
            chain.push(LlamaSampler::top_k(i32::try_from(k).unwrap_or(i32::MAX)));
        }
        if let Some(p) = s.top_p.filter(|p| *p < 1.0) {
            chain.push(LlamaSampler::top_p(p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed.unwrap_or_else(rand_seed)));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

fn rand_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens() {
        let mut pending = vec![0xE2, 0x82];
        let mut out = String::new();
        take_utf8(&mut pending, &mut out);
        assert_eq!(out, "");
        pending.push(0xAC);
        take_utf8(&mut pending, &mut out);
        assert_eq!(out, "€");
        let mut bad = vec![b'a', 0xFF, b'b'];
        take_utf8(&mut bad, &mut out);
        assert_eq!(out, "€a\u{FFFD}b");
    }

    #[test]
    fn partial_stop_suffix() {
        assert_eq!(partial_suffix("hello EN", "END"), 2);
        assert_eq!(partial_suffix("hello", "END"), 0);
        assert_eq!(partial_suffix("E", "END"), 1);
        assert_eq!(partial_suffix("xx</s", "</stop>"), 3);
    }
}
