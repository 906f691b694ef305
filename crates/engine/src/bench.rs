//! The CPU engine benchmark: prefill throughput, decode throughput at several batch sizes, and memory of a real
//! model, measured through the serving path (`Engine::submit` and its streams), never by calling the model directly.
//!
//! What each number means is spelled out in `PREFILL_DEFINITION`, `DECODE_DEFINITION` and `MEMORY_DEFINITION`, and
//! the report carries those texts, so a JSON report describes itself. Invariant: every timed request computes all of
//! its tokens — prefix caching is off and decode requests ignore EOS — so runs are comparable with each other and
//! across commits. Cost: one model load, `1 + runs` prefills of `prompt_tokens` tokens, and `runs` decodes of
//! `decode_tokens` steps per batch size (about a minute for the defaults on the default model with 2 cores).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{Engine, EngineConfig, GenerationStream};
use crate::error::EngineError;
use crate::loader::{ModelFiles, load_model};
use crate::sampling::SamplingSpec;
use crate::scheduler::SchedulerConfig;

pub const PREFILL_DEFINITION: &str = "time to first token (TTFT: submit to first output) of one request whose \
    prompt is exactly prompt_tokens tokens of English prose, max_tokens 1, prefix caching off; one untimed warm-up \
    run, then `runs` timed runs; tokens/s = prompt_tokens / median TTFT";
pub const DECODE_DEFINITION: &str = "B requests with distinct decode_prompt_tokens-token prompts, queued together \
    while the engine runs a 64-token prefill (so all B are admitted in one step), greedy, ignore_eos, max_tokens = \
    decode_tokens; the decode phase runs from the earliest first token among the B to the latest last token; \
    aggregate tokens/s = tokens generated after each request's first token (B x (decode_tokens - 1)) / decode-phase \
    time, median over `runs` runs; per-sequence tokens/s = aggregate / B; ms/step = decode-phase time / \
    (decode_tokens - 1)";
pub const MEMORY_DEFINITION: &str = "peak_rss = VmHWM of /proc/self/status after all runs: the whole process \
    (weights, KV cache, activations, tokenizer, runtime); weights and KV cache bytes are the engine's own \
    allocations, the KV cache sized to fit the largest measurement";

/// Real English prose: benchmark prompts should tokenize like real ones, not like one token repeated.
const PROSE: &str = "The river rises in the hills above the old mill town and runs for nearly two hundred miles \
    before it reaches the sea. In the spring the snow melts on the high ground, and the water comes down brown and \
    fast, carrying branches, stones and sometimes whole trees. The people who live along its banks have learned to \
    watch the sky and the level of the water, and many of the older houses stand on stone foundations raised well \
    above the fields. In the summer the river is slow and clear, and children swim in the deep pools below the \
    bridges while their parents fish for trout in the shade of the willows. ";

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BenchConfig {
    /// Prompt length of the prefill measurement.
    pub prompt_tokens: usize,
    /// Tokens each decode request generates, the first of which comes from its prefill.
    pub decode_tokens: usize,
    /// Batch sizes of the decode measurement.
    pub batches: Vec<usize>,
    /// Prompt length of each decode request.
    pub decode_prompt_tokens: usize,
    /// Timed runs per measurement; the median is reported.
    pub runs: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            prompt_tokens: 512,
            decode_tokens: 64,
            batches: vec![1, 8, 32],
            decode_prompt_tokens: 16,
            runs: 3,
        }
    }
}

/// The largest decode batch accepted: beyond it the benchmark measures the host's thread scheduler, not the engine.
pub const MAX_BATCH: usize = 1024;

impl BenchConfig {
    /// Checks the settings that do not depend on the model, naming the first bad one.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.prompt_tokens == 0 {
            return Err(EngineError::invalid("prompt_tokens", "must be at least 1"));
        }
        if self.decode_tokens < 2 {
            return Err(EngineError::invalid(
                "decode_tokens",
                format!(
                    "must be at least 2 (decode speed is measured after the first token), got {}",
                    self.decode_tokens
                ),
            ));
        }
        if self.decode_prompt_tokens == 0 {
            return Err(EngineError::invalid("decode_prompt_tokens", "must be at least 1"));
        }
        if self.batches.is_empty() {
            return Err(EngineError::invalid("batches", "name at least one batch size"));
        }
        if let Some(&bad) = self.batches.iter().find(|&&b| b == 0 || b > MAX_BATCH) {
            return Err(EngineError::invalid(
                "batches",
                format!("each batch size must be in [1, {MAX_BATCH}], got {bad}"),
            ));
        }
        if self.runs == 0 {
            return Err(EngineError::invalid("runs", "must be at least 1"));
        }
        Ok(())
    }

    fn check_context(&self, max_context: usize) -> Result<(), EngineError> {
        if self.prompt_tokens + 1 > max_context {
            return Err(EngineError::invalid(
                "prompt_tokens",
                format!(
                    "{} tokens and one generated exceed the model's context of {max_context}",
                    self.prompt_tokens
                ),
            ));
        }
        if self.decode_prompt_tokens + self.decode_tokens > max_context {
            return Err(EngineError::invalid(
                "decode_tokens",
                format!(
                    "{} generated after a {}-token prompt exceed the model's context of {max_context}",
                    self.decode_tokens, self.decode_prompt_tokens
                ),
            ));
        }
        Ok(())
    }

    fn max_batch(&self) -> usize {
        self.batches.iter().copied().max().unwrap_or(1)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: ModelSummary,
    pub config: BenchConfig,
    /// Threads of rayon's global pool, which runs the kernels.
    pub threads: usize,
    pub block_size: usize,
    pub max_batch_tokens: usize,
    pub load_ms: f64,
    pub prefill: PrefillResult,
    pub decode: Vec<DecodeResult>,
    pub memory: MemoryReport,
    pub definitions: Definitions,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// The file or directory loaded.
    pub source: String,
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub params: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillResult {
    pub prompt_tokens: usize,
    /// TTFT of each timed run, in order.
    pub ttft_ms: Vec<f64>,
    pub median_ttft_ms: f64,
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    pub batch: usize,
    /// Tokens counted in each run's rate: generated after each request's first token.
    pub counted_tokens: usize,
    /// Decode-phase wall time of each timed run, in order.
    pub decode_ms: Vec<f64>,
    pub tokens_per_s: f64,
    pub per_sequence_tokens_per_s: f64,
    pub ms_per_step: f64,
    /// Largest gap, over the runs, between the batch's earliest and latest first token: near zero when the whole
    /// batch was prefilled in one step, so the decode phase holds no prefill work.
    pub first_token_spread_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub weights_bytes: usize,
    pub kv_cache_bytes: usize,
    pub kv_bytes_per_token: usize,
    /// VmRSS right after loading; `None` where /proc/self/status is unavailable.
    pub rss_after_load_bytes: Option<u64>,
    /// VmHWM after all runs; `None` where /proc/self/status is unavailable.
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Definitions {
    pub prefill: &'static str,
    pub decode: &'static str,
    pub memory: &'static str,
}

/// Loads the model and runs every measurement in `config`, in order: prefill, then each decode batch size.
pub fn run_bench(files: ModelFiles<'_>, config: &BenchConfig) -> Result<BenchReport, EngineError> {
    config.validate()?;
    let (ModelFiles::Gguf(path) | ModelFiles::HfDir(path)) = files;
    let started = Instant::now();
    let (model, tokenizer) = load_model(files)?;
    let load_ms = millis(started.elapsed());
    let rss_after_load_bytes = proc_status_bytes("VmRSS:");
    let cfg = model.config();
    config.check_context(cfg.max_context)?;
    let model_summary = ModelSummary {
        source: path.display().to_string(),
        architecture: cfg.architecture.clone(),
        n_layers: cfg.n_layers,
        hidden: cfg.hidden,
        params: cfg.n_params(),
    };
    let kv_bytes_per_token = model.kv_shape(1, 1).bytes_per_token();
    let engine_config = engine_config(config, kv_bytes_per_token);
    let weights_bytes = model.weights_bytes();
    let corpus = prose_tokens(&tokenizer, corpus_len(config))?;
    let scheduler = engine_config.scheduler.clone();
    let engine = Engine::start(model, Arc::new(tokenizer), engine_config)?;

    let prefill = measure_prefill(&engine, &corpus, config)?;
    let decode = config
        .batches
        .iter()
        .map(|&b| measure_decode(&engine, &corpus, config, b))
        .collect::<Result<_, _>>()?;
    let kv_cache_bytes = engine.kv_blocks() * scheduler.block_size * kv_bytes_per_token;
    drop(engine);
    Ok(BenchReport {
        model: model_summary,
        config: config.clone(),
        threads: rayon::current_num_threads(),
        block_size: scheduler.block_size,
        max_batch_tokens: scheduler.max_batch_tokens,
        load_ms,
        prefill,
        decode,
        memory: MemoryReport {
            weights_bytes,
            kv_cache_bytes,
            kv_bytes_per_token,
            rss_after_load_bytes,
            peak_rss_bytes: proc_status_bytes("VmHWM:"),
        },
        definitions: Definitions {
            prefill: PREFILL_DEFINITION,
            decode: DECODE_DEFINITION,
            memory: MEMORY_DEFINITION,
        },
    })
}

/// The serving defaults, except: no prefix caching (repeats must recompute), room for the largest batch to decode
/// in one step, and a KV cache just large enough for the largest measurement, so its size is meaningful.
fn engine_config(config: &BenchConfig, kv_bytes_per_token: usize) -> EngineConfig {
    let defaults = SchedulerConfig::default();
    let bs = defaults.block_size;
    let max_batch = config.max_batch();
    let prefill_blocks = (config.prompt_tokens + 1).div_ceil(bs);
    let decode_blocks = max_batch * (config.decode_prompt_tokens + config.decode_tokens).div_ceil(bs)
        + (BLOCKER_TOKENS + 1).div_ceil(bs);
    // One spare block per sequence absorbs the scheduler's per-request admission rounding.
    let blocks = prefill_blocks.max(decode_blocks) + max_batch + 1;
    EngineConfig {
        scheduler: SchedulerConfig {
            prefix_caching: false,
            max_running: defaults.max_running.max(max_batch + 1),
            max_batch_tokens: defaults.max_batch_tokens.max(max_batch),
            ..defaults
        },
        kv_cache_bytes: blocks * bs * kv_bytes_per_token,
    }
}

/// Step between the start offsets of consecutive decode prompts in the corpus.
const PROMPT_STRIDE: usize = 7;

/// Prompt length of the request that keeps the engine busy while a decode batch is queued behind it. Without it
/// the engine wakes on the batch's first request and may start a step before the rest arrive, and the decode
/// phase would then hold the late requests' prefill.
const BLOCKER_TOKENS: usize = 64;

/// Time the engine gets to start the blocker's step before the batch is queued; far shorter than that step.
const BLOCKER_HEAD_START: Duration = Duration::from_millis(5);

fn corpus_len(config: &BenchConfig) -> usize {
    let prefill = config.prompt_tokens.max(BLOCKER_TOKENS) + config.runs + 1;
    let decode = config.decode_prompt_tokens + PROMPT_STRIDE * (config.max_batch() * config.runs + 1);
    prefill.max(decode)
}

/// At least `len` tokens of the prose, repeated as text and tokenized once (no special tokens).
fn prose_tokens(tokenizer: &cleave_tokens::Tokenizer, len: usize) -> Result<Vec<u32>, EngineError> {
    let per_copy = tokenizer.encode(PROSE, false)?.len().max(1);
    let text = PROSE.repeat(len.div_ceil(per_copy) + 1);
    let tokens = tokenizer.encode(&text, false)?;
    if tokens.len() < len {
        return Err(EngineError::Internal(format!(
            "the benchmark prose gave {} tokens, {len} needed",
            tokens.len()
        )));
    }
    Ok(tokens)
}

/// When a request's tokens arrived.
struct Trace {
    first: Instant,
    last: Instant,
    tokens: usize,
}

fn trace(mut stream: GenerationStream) -> Result<Trace, EngineError> {
    let mut first = None;
    let mut last = None;
    let mut tokens = 0;
    while let Some(out) = stream.blocking_next() {
        let out = out?;
        let now = Instant::now();
        if !out.token_ids.is_empty() {
            first.get_or_insert(now);
            last = Some(now);
            tokens += out.token_ids.len();
        }
    }
    match (first, last) {
        (Some(first), Some(last)) => Ok(Trace { first, last, tokens }),
        _ => Err(EngineError::Internal(
            "a benchmark request finished without producing a token".into(),
        )),
    }
}

/// Reads every stream on its own thread, so each token's arrival time is taken when the engine sends it.
fn trace_all(streams: Vec<GenerationStream>) -> Result<Vec<Trace>, EngineError> {
    std::thread::scope(|scope| {
        let mut readers = Vec::with_capacity(streams.len());
        for stream in streams {
            let reader = std::thread::Builder::new()
                .name("cleave-bench-reader".into())
                .spawn_scoped(scope, move || trace(stream))
                .map_err(|e| EngineError::Internal(format!("cannot start a benchmark reader thread: {e}")))?;
            readers.push(reader);
        }
        readers
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(EngineError::Internal("a benchmark reader thread panicked".into())))
            })
            .collect()
    })
}

fn greedy(max_tokens: usize) -> SamplingSpec {
    SamplingSpec {
        max_tokens: Some(u32::try_from(max_tokens).unwrap_or(u32::MAX)),
        temperature: Some(0.0),
        ignore_eos: true,
        ..SamplingSpec::default()
    }
}

fn measure_prefill(engine: &Engine, corpus: &[u32], config: &BenchConfig) -> Result<PrefillResult, EngineError> {
    let spec = greedy(1);
    let n = config.prompt_tokens;
    let mut ttft_ms = Vec::with_capacity(config.runs);
    // Run 0 is the warm-up: it spins up rayon's workers and faults in the weights and KV pages.
    for run in 0..=config.runs {
        let prompt = corpus[run..run + n].to_vec();
        let submitted = Instant::now();
        let trace = trace(engine.submit(prompt, &spec, 0)?)?;
        if run > 0 {
            ttft_ms.push(millis(trace.first - submitted));
        }
    }
    let median_ttft_ms = median(&ttft_ms);
    Ok(PrefillResult {
        prompt_tokens: n,
        tokens_per_s: n as f64 / (median_ttft_ms / 1e3),
        median_ttft_ms,
        ttft_ms,
    })
}

fn measure_decode(
    engine: &Engine,
    corpus: &[u32],
    config: &BenchConfig,
    batch: usize,
) -> Result<DecodeResult, EngineError> {
    let spec = greedy(config.decode_tokens);
    let len = config.decode_prompt_tokens;
    let (mut decode_ms, mut rates) = (Vec::with_capacity(config.runs), Vec::with_capacity(config.runs));
    let (mut counted_tokens, mut spread_ms) = (0, 0.0f64);
    for run in 0..config.runs {
        let blocker = engine.submit(corpus[run..run + BLOCKER_TOKENS].to_vec(), &greedy(1), 0)?;
        std::thread::sleep(BLOCKER_HEAD_START);
        let streams = (0..batch)
            .map(|i| {
                let at = PROMPT_STRIDE * (run * batch + i);
                engine.submit(corpus[at..at + len].to_vec(), &spec, 0)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let traces = trace_all(streams)?;
        trace(blocker)?;
        let (Some(start), Some(latest_first), Some(end)) = (
            traces.iter().map(|t| t.first).min(),
            traces.iter().map(|t| t.first).max(),
            traces.iter().map(|t| t.last).max(),
        ) else {
            return Err(EngineError::Internal("a decode run produced no requests".into()));
        };
        counted_tokens = traces.iter().map(|t| t.tokens - 1).sum();
        let elapsed = millis(end - start);
        spread_ms = spread_ms.max(millis(latest_first - start));
        rates.push(counted_tokens as f64 / (elapsed / 1e3));
        decode_ms.push(elapsed);
    }
    let tokens_per_s = median(&rates);
    Ok(DecodeResult {
        batch,
        counted_tokens,
        ms_per_step: median(&decode_ms) / (config.decode_tokens - 1) as f64,
        decode_ms,
        tokens_per_s,
        per_sequence_tokens_per_s: tokens_per_s / batch as f64,
        first_token_spread_ms: spread_ms,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A `kB` line of /proc/self/status (`VmRSS:`, `VmHWM:`) in bytes.
fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn mib_or_na(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".to_string(), mib)
}

/// The report as a table, then the definitions of its numbers.
impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.model;
        writeln!(f, "model    {}", m.source)?;
        writeln!(
            f,
            "         {}, {} layers, hidden {}, {:.1} M params; {} threads",
            m.architecture,
            m.n_layers,
            m.hidden,
            m.params as f64 / 1e6,
            self.threads
        )?;
        writeln!(f, "load     {:.0} ms", self.load_ms)?;
        let p = &self.prefill;
        writeln!(
            f,
            "prefill  {} tokens: TTFT {:.1} ms (median of {}) -> {:.1} tokens/s",
            p.prompt_tokens,
            p.median_ttft_ms,
            p.ttft_ms.len(),
            p.tokens_per_s
        )?;
        writeln!(
            f,
            "decode   {} tokens per request, median of {} runs",
            self.config.decode_tokens, self.config.runs
        )?;
        writeln!(
            f,
            "         {:>5}  {:>10}  {:>8}  {:>14}  {:>16}",
            "batch", "tokens/s", "ms/step", "per-seq tok/s", "1st-token spread"
        )?;
        for d in &self.decode {
            writeln!(
                f,
                "         {:>5}  {:>10.1}  {:>8.2}  {:>14.1}  {:>13.1} ms",
                d.batch, d.tokens_per_s, d.ms_per_step, d.per_sequence_tokens_per_s, d.first_token_spread_ms
            )?;
        }
        let mem = &self.memory;
        writeln!(
            f,
            "memory   weights {}, KV cache {} ({} B/token), RSS after load {}, peak RSS {}",
            mib(mem.weights_bytes as u64),
            mib(mem.kv_cache_bytes as u64),
            mem.kv_bytes_per_token,
            mib_or_na(mem.rss_after_load_bytes),
            mib_or_na(mem.peak_rss_bytes)
        )?;
        writeln!(f)?;
        writeln!(f, "prefill: {}", self.definitions.prefill)?;
        writeln!(f, "decode: {}", self.definitions.decode)?;
        write!(f, "memory: {}", self.definitions.memory)
    }
}
