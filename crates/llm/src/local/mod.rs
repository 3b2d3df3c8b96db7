//! The built-in local model: a llama-architecture GGUF file run on the CPU with candle, so
//! that Sluice answers offline, with no key.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use sluice_llm::{ChatRequest, Delta, LocalConfig, LocalModel, Message, Provider, Role};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // models/SmolLM2-135M-Instruct.Q4_1.gguf, as scripts/fetch-model.sh installs it.
//! let model = LocalModel::load(LocalConfig::default())?;
//! let request = ChatRequest {
//!     messages: vec![Message::new(Role::User, "What is the capital of France?")],
//!     max_tokens: Some(32),
//!     temperature: Some(0.0),
//!     ..ChatRequest::default()
//! };
//! let mut answer = model.stream(request).await?;
//! while let Some(delta) = answer.next().await {
//!     if let Delta::Text(text) = delta? {
//!         print!("{text}");
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # How it runs
//!
//! One thread owns the model and generates one answer at a time: on a small machine a
//! second generation in parallel would only halve the speed of both (candle already spreads
//! each matrix product over the cores). [`Provider::stream`] renders the chat template,
//! tokenizes the prompt and puts the request in a bounded queue
//! ([`LocalConfig::queue_capacity`], 8 by default); when the queue is full it fails at once
//! with [`ProviderError::Busy`] and a `retry_after`, which the server turns into a 503 or a
//! fallback to another provider. The worker sends deltas through a bounded channel, so a slow
//! reader slows generation down instead of piling up text. Before each token the worker
//! checks whether the reader is still there: dropping the stream stops the generation within
//! one token, and the worker takes the next request.
//!
//! # Text
//!
//! Tokens become bytes (byte-level BPE spells bytes as printable characters; the mapping is
//! undone here), the bytes go through an incremental UTF-8 decoder that holds back a
//! character split across tokens, and the text goes through a stop-string filter that holds
//! back anything that may be the start of a stop string. A delta is therefore always whole
//! characters, and a stop string never shows, not even half of one.
//!
//! # Speed
//!
//! The forward pass is this crate's own (`llama.rs`): buffers allocated once, a key/value
//! cache that grows in place, and kernels (`quant.rs`) that multiply the file's Q4_1 or Q8_0
//! weights by activations quantized to 8 bits: on AVX2, with byte products kept in float lanes
//! across a row and a prompt's tokens four to a tile; elsewhere, plain loops. candle's
//! `quantized_llama`, which it replaces, built a tensor for every operation, copied its cache
//! each step and could multiply Q4_1 only with scalar code. Beside `llama-server` on the same
//! file and machine (BENCHMARKS.md), it decodes 1.25× as fast on one thread and on two, gives
//! the first token in 0.67–0.71× the time, and takes 0.91× the memory (165 MiB).
//!
//! # Threads
//!
//! The model runs on `CANDLE_NUM_THREADS` threads (`LocalConfig::threads` when set), else
//! `RAYON_NUM_THREADS`, else as many as the process may run on. The thread that runs a pass
//! and its helpers (`team.rs`) split each of its steps: every product by rows (the products
//! that read the same input, query, key and value, gate and up, as one step) and attention by
//! (token, head). Between steps the helpers spin rather than sleep, as llama.cpp's threads do:
//! a decoded token is some 150 steps, and a pool whose threads slept between them (rayon's,
//! before) paid a wake-up for most. Every value is computed by the same code whatever the
//! number of threads, so the answer does not depend on it. Spinning threads slow each other
//! down when the machine is busy with other work; there, `CANDLE_NUM_THREADS=1` costs little.

mod detok;
mod llama;
mod quant;
mod sampler;
mod team;
mod template;
mod tokenizer;

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use tokio::sync::mpsc;

use crate::types::{ChatRequest, Delta, DeltaStream, FinishReason, Provider, ProviderError, Usage};
use detok::{Filtered, StopFilter, Utf8Stream};
use llama::Llama;
use sampler::Sampler;
use template::ChatTemplate;
use tokenizer::GgufTokenizer;

/// Where `scripts/fetch-model.sh` puts the default model, relative to the repository root.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model's name, as requests and `/v1/models` spell it.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m";

/// Deltas the worker may run ahead of the reader.
const DELTA_CHANNEL: usize = 64;

/// The longest context the model runs, whatever its file says it was trained for: the key and
/// value cache grows with the context (SmolLM2-135M: 45 KiB a token, 180 MiB at 4,096), and
/// so do a prompt chunk's attention scores (below).
pub const MAX_CONTEXT: usize = 4096;

/// Prompt tokens fed to the model per forward pass. Attention scores for a chunk take
/// `heads × chunk × context` floats; 512 keeps that under 100 MB for SmolLM2 at full context.
const PREFILL_CHUNK: usize = 512;

/// How to load and run the local model.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfig {
    /// The GGUF file (llama architecture, byte-level BPE tokenizer).
    pub path: PathBuf,
    /// The provider's name (what `/v1/models` lists as owner).
    pub provider_name: String,
    /// The model's name.
    pub model_name: String,
    /// Requests that may wait while one is generated; more are refused as busy.
    pub queue_capacity: usize,
    /// The most tokens (prompt and answer) one request may use; `None` is the model's own
    /// context length, capped at [`MAX_CONTEXT`].
    pub max_context: Option<usize>,
    /// The answer's length limit when the request sets none; `None` is the rest of the
    /// context.
    pub default_max_tokens: Option<u32>,
    /// The temperature when the request sets none (SmolLM2's card suggests 0.2).
    pub default_temperature: f32,
    /// The nucleus mass when the request sets none.
    pub default_top_p: f32,
    /// Threads the model runs on; `None` is `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`,
    /// else as many as the process may run on.
    pub threads: Option<usize>,
}

impl Default for LocalConfig {
    /// SmolLM2-135M-Instruct at [`DEFAULT_MODEL_PATH`], a queue of 8.
    fn default() -> Self {
        LocalConfig::new(DEFAULT_MODEL_PATH)
    }
}

impl LocalConfig {
    /// The defaults, with the model at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LocalConfig {
            path: path.into(),
            provider_name: "local".to_owned(),
            model_name: DEFAULT_MODEL_NAME.to_owned(),
            queue_capacity: 8,
            max_context: None,
            default_max_tokens: None,
            default_temperature: 0.2,
            default_top_p: 0.9,
            threads: None,
        }
    }
}

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("cannot read the model file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF model this provider can run.
    #[error("{path} is not a usable model: {message}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The model's thread could not be started.
    #[error("cannot start the model thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Counters of the local model since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalStats {
    /// Requests waiting for the worker now.
    pub queued: usize,
    /// Generations the worker started.
    pub started: u64,
    /// Generations that ran to their end (finish reason sent).
    pub completed: u64,
    /// Generations stopped because their reader left (before or during generation).
    pub cancelled: u64,
    /// Generations that failed inside the model.
    pub failed: u64,
    /// Requests refused because the queue was full.
    pub busy: u64,
    /// Tokens generated, over all generations.
    pub tokens_generated: u64,
    /// Tokens generated after their reader had already left (at most one per cancelled
    /// generation: the one in flight when the reader left).
    pub tokens_after_cancel: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicUsize,
    started: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    busy: AtomicU64,
    tokens_generated: AtomicU64,
    tokens_after_cancel: AtomicU64,
    /// A moving average of how long a generation takes, for `retry_after`.
    average_generation_ms: AtomicU64,
}

/// What the worker and the callers share.
#[derive(Debug)]
struct Shared {
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    counters: Counters,
    context: usize,
}

/// One request, ready for the worker.
struct Job {
    prompt: Vec<u32>,
    max_tokens: Option<u32>,
    sampler: Sampler,
    stop: StopFilter,
    deltas: mpsc::Sender<Result<Delta, ProviderError>>,
}

/// The built-in local model provider. See the [module docs](self).
pub struct LocalModel {
    provider_name: String,
    model_name: String,
    config: LocalConfig,
    shared: Arc<Shared>,
    jobs: SyncSender<Job>,
    load_time: Duration,
}

impl fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalModel")
            .field("provider_name", &self.provider_name)
            .field("model_name", &self.model_name)
            .field("path", &self.config.path)
            .field("context", &self.shared.context)
            .field("load_time", &self.load_time)
            .finish_non_exhaustive()
    }
}

/// What a GGUF file's header says the model is: its metadata and tensor index, the tokenizer
/// and chat template built from the metadata, and the context it was trained for. Untrusted
/// input as far as this goes: a file that is not a llama-family GGUF is an error, never a panic.
pub(crate) struct Header {
    pub(crate) content: gguf_file::Content,
    pub(crate) tokenizer: GgufTokenizer,
    pub(crate) template: ChatTemplate,
    pub(crate) trained_context: usize,
}

impl Header {
    /// Reads the header (not the weights) from `reader`.
    pub(crate) fn read<R: std::io::Read + std::io::Seek>(reader: &mut R) -> Result<Header, String> {
        let content = gguf_file::Content::read(reader).map_err(|e| e.to_string())?;
        let metadata = &content.metadata;
        let architecture = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map_or("unknown", String::as_str);
        if architecture != "llama" {
            return Err(format!(
                "its architecture is {architecture:?}; the local provider runs \"llama\" models"
            ));
        }
        let trained_context = metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_CONTEXT, |n| n as usize);
        let tokenizer =
            GgufTokenizer::from_metadata(metadata).map_err(|e| format!("its tokenizer: {e}"))?;
        let special = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id)).unwrap_or_default().to_owned()
        };
        let (bos, eos) = (special(tokenizer.bos()), special(tokenizer.eos()));
        let source = metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok());
        let template = ChatTemplate::new(source.map(String::as_str), &bos, &eos)
            .map_err(|e| format!("its chat template: {e}"))?;
        Ok(Header { content, tokenizer, template, trained_context })
    }
}

impl LocalModel {
    /// Loads the model and starts its worker thread. Takes about half a second for
    /// SmolLM2-135M (the file is read, not mapped); call it from a blocking context.
    pub fn load(config: LocalConfig) -> Result<LocalModel, LoadError> {
        let started = Instant::now();
        let path = config.path.clone();
        let bad = |message: String| LoadError::Model { path: path.clone(), message };
        let file = File::open(&config.path)
            .map_err(|source| LoadError::Io { path: path.clone(), source })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let Header { content, tokenizer, template, trained_context } =
            Header::read(&mut reader).map_err(bad)?;
        let context =
            trained_context.min(MAX_CONTEXT).min(config.max_context.unwrap_or(usize::MAX));
        if context < 2 {
            return Err(bad(format!("a context of {context} tokens is too small")));
        }

        let threads = config.threads.unwrap_or_else(llama::threads_from_env);
        let model = Llama::read(&content, &mut reader, threads).map_err(bad)?;
        let load_time = started.elapsed();
        tracing::info!(
            path = %config.path.display(),
            vocab = tokenizer.vocab_size(),
            context,
            load_ms = load_time.as_millis() as u64,
            "local model loaded"
        );

        let shared =
            Arc::new(Shared { tokenizer, template, counters: Counters::default(), context });
        let (jobs, queue) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sluice-local-model".to_owned())
            .spawn(move || work(model, &worker_shared, &queue))
            .map_err(LoadError::Thread)?;

        Ok(LocalModel {
            provider_name: config.provider_name.clone(),
            model_name: config.model_name.clone(),
            config,
            shared,
            jobs,
            load_time,
        })
    }

    /// The model's name (what requests route by).
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// How long [`load`](Self::load) took to read the file and build the model.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The most tokens, prompt and answer together, one request may use.
    pub fn context_length(&self) -> usize {
        self.shared.context
    }

    /// The counters, now.
    pub fn stats(&self) -> LocalStats {
        let c = &self.shared.counters;
        LocalStats {
            queued: c.queued.load(Ordering::Relaxed),
            started: c.started.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            tokens_generated: c.tokens_generated.load(Ordering::Relaxed),
            tokens_after_cancel: c.tokens_after_cancel.load(Ordering::Relaxed),
        }
    }

    /// The prompt the chat template makes of `request`'s messages, ending where the
    /// assistant's answer begins.
    pub fn render_prompt(&self, request: &ChatRequest) -> Result<String, ProviderError> {
        self.shared.template.render(&request.messages).map_err(ProviderError::InvalidRequest)
    }

    /// The token ids of `text`; special tokens written in it (`<|im_start|>`) are single
    /// tokens.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ProviderError> {
        self.shared.tokenizer.encode(text).map_err(ProviderError::Internal)
    }

    /// The text of the given tokens, as the stream would produce it (control tokens add
    /// nothing; a character cut off at the end becomes U+FFFD).
    pub fn detokenize(&self, tokens: &[u32]) -> String {
        let mut utf8 = Utf8Stream::default();
        let mut text: String =
            tokens.iter().map(|&t| utf8.push(self.shared.tokenizer.token_bytes(t))).collect();
        text.push_str(&utf8.finish());
        text
    }

    /// Checks the request, tokenizes its prompt and queues it.
    fn start(&self, request: &ChatRequest) -> Result<DeltaStream, ProviderError> {
        if request.max_tokens == Some(0) {
            return Err(ProviderError::InvalidRequest("max_tokens must be at least 1".into()));
        }
        let prompt = self.tokenize(&self.render_prompt(request)?)?;
        let context = self.shared.context;
        if prompt.len() >= context {
            return Err(ProviderError::InvalidRequest(format!(
                "the prompt is {} tokens; this model's context is {context} tokens, prompt and \
                 answer together",
                prompt.len()
            )));
        }
        let temperature = request.temperature.unwrap_or(self.config.default_temperature);
        let top_p = request.top_p.unwrap_or(self.config.default_top_p);
        let seed = request.seed.unwrap_or_else(rand::random);
        let (deltas, receiver) = mpsc::channel(DELTA_CHANNEL);
        let job = Job {
            prompt,
            max_tokens: request.max_tokens.or(self.config.default_max_tokens),
            sampler: Sampler::new(temperature, top_p, seed),
            stop: StopFilter::new(&request.stop),
            deltas,
        };

        let counters = &self.shared.counters;
        counters.queued.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                counters.queued.fetch_sub(1, Ordering::Relaxed);
                counters.busy.fetch_add(1, Ordering::Relaxed);
                // The next place frees up when the running generation ends.
                let average = counters.average_generation_ms.load(Ordering::Relaxed);
                let retry_after = Duration::from_secs(average.div_ceil(1000).clamp(1, 60));
                return Err(ProviderError::Busy {
                    message: format!(
                        "the local model is generating and {} more requests are waiting",
                        self.config.queue_capacity
                    ),
                    retry_after: Some(retry_after),
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                counters.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(ProviderError::Internal("the local model's worker has stopped".into()));
            }
        }
        let mut receiver = receiver;
        Ok(futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed())
    }
}

impl Provider for LocalModel {
    fn name(&self) -> &str {
        &self.provider_name
    }

    fn system(&self) -> &'static str {
        "sluice.local"
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, ProviderError>> {
        let started = self.start(&request);
        Box::pin(async move { started })
    }

    fn count_tokens(&self, request: &ChatRequest) -> Option<Result<u32, ProviderError>> {
        let tokens = self.render_prompt(request).and_then(|prompt| self.tokenize(&prompt));
        Some(tokens.map(|tokens| u32::try_from(tokens.len()).unwrap_or(u32::MAX)))
    }
}

/// The worker: one generation at a time, until the model is dropped.
fn work(mut model: Llama, shared: &Shared, queue: &Receiver<Job>) {
    let counters = &shared.counters;
    while let Ok(mut job) = queue.recv() {
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        if job.deltas.is_closed() {
            // Its reader left while it waited.
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.started.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = generate(&mut model, shared, &mut job);
        model.clear();
        let elapsed = started.elapsed().as_millis() as u64;
        let average = counters.average_generation_ms.load(Ordering::Relaxed);
        let average = if average == 0 { elapsed } else { (average * 3 + elapsed) / 4 };
        counters.average_generation_ms.store(average, Ordering::Relaxed);
        match outcome {
            Ok(Outcome::Finished) => counters.completed.fetch_add(1, Ordering::Relaxed),
            Ok(Outcome::Cancelled) => counters.cancelled.fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                tracing::error!(%error, "local model generation failed");
                // The reader may have left too; nothing to do then.
                let _ = job.deltas.blocking_send(Err(error));
                counters.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
    tracing::debug!("local model worker stopped");
}

/// How a generation ended (errors aside).
enum Outcome {
    /// Usage and finish were sent.
    Finished,
    /// The reader left.
    Cancelled,
}

fn model_error(error: &str) -> ProviderError {
    ProviderError::Internal(format!("local model: {error}"))
}

/// Runs one generation, sending its deltas.
fn generate(model: &mut Llama, shared: &Shared, job: &mut Job) -> Result<Outcome, ProviderError> {
    let counters = &shared.counters;
    let tokenizer = &shared.tokenizer;
    let send = |delta: Delta| job.deltas.blocking_send(Ok(delta)).is_ok();
    let mut forward = |tokens: &[u32], logits: &mut Vec<f32>| {
        logits.clear();
        logits.extend_from_slice(model.forward(tokens).map_err(|e| model_error(&e))?);
        Ok::<_, ProviderError>(())
    };

    let started = Instant::now();
    let mut logits = Vec::new();
    for chunk in job.prompt.chunks(PREFILL_CHUNK) {
        if job.deltas.is_closed() {
            return Ok(Outcome::Cancelled);
        }
        forward(chunk, &mut logits)?;
    }
    let prefill = started.elapsed();

    let mut utf8 = Utf8Stream::default();
    let mut position = job.prompt.len();
    let mut completion: u32 = 0;
    let mut stopped_by_string = false;
    let finish = loop {
        let token = job.sampler.sample(&logits);
        completion += 1;
        counters.tokens_generated.fetch_add(1, Ordering::Relaxed);
        if job.deltas.is_closed() {
            counters.tokens_after_cancel.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Cancelled);
        }
        if tokenizer.ends_generation(token) {
            break FinishReason::Stop;
        }
        let text = utf8.push(tokenizer.token_bytes(token));
        match job.stop.push(&text) {
            Filtered::Go(text) => {
                if !text.is_empty() && !send(Delta::Text(text)) {
                    return Ok(Outcome::Cancelled);
                }
            }
            Filtered::Stop(text) => {
                if !text.is_empty() && !send(Delta::Text(text)) {
                    return Ok(Outcome::Cancelled);
                }
                stopped_by_string = true;
                break FinishReason::Stop;
            }
        }
        if job.max_tokens == Some(completion) || position + 1 >= shared.context {
            break FinishReason::Length;
        }
        forward(&[token], &mut logits)?;
        position += 1;
    };

    let mut finish = finish;
    if !stopped_by_string {
        // What was held back (a character cut off at the end, text that looked like the
        // start of a stop string) was not a stop string after all.
        let tail = utf8.finish();
        let tail = match job.stop.push(&tail) {
            Filtered::Go(text) => text + &job.stop.finish(),
            Filtered::Stop(text) => {
                finish = FinishReason::Stop;
                text
            }
        };
        if !tail.is_empty() && !send(Delta::Text(tail)) {
            return Ok(Outcome::Cancelled);
        }
    }
    let prompt_tokens = job.prompt.len() as u32;
    tracing::debug!(
        prompt_tokens,
        completion_tokens = completion,
        prefill_ms = prefill.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        finish = finish.as_str(),
        "local model generation"
    );
    if !send(Delta::Usage(Usage::new(prompt_tokens, completion))) || !send(Delta::Finish(finish)) {
        return Ok(Outcome::Cancelled);
    }
    Ok(Outcome::Finished)
}
