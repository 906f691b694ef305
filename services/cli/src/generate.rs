//! `cleave generate`: one prompt through the engine's serving path, streamed to stdout as text or reported as one
//! JSON object with ids, usage and timings.
//!
//! Invariant: sampling flags are validated by the engine's own rules before the model loads, so a bad flag costs
//! no load and is reported exactly as a server would report it. Cost: one model load plus the generation.

use std::io::Write;
use std::time::{Duration, Instant};

use cleave_engine::sampling::{ModelLimits, SamplingSpec, TokenLogprob};
use cleave_engine::scheduler::{FinishReason, Usage};
use cleave_engine::{Engine, EngineError};
use cleave_tokens::ChatMessage;
use serde::Serialize;

use crate::args::GenerateArgs;
use crate::error::CliError;
use crate::model::{locate, start_engine};

/// Limits that accept any prompt: the flags are checked for their ranges before the real model is known.
const ANY_MODEL: ModelLimits = ModelLimits {
    max_context: usize::MAX,
    vocab_size: usize::MAX,
};

pub fn generate(args: &GenerateArgs, device: cleave_engine::Device) -> Result<(), CliError> {
    let spec = sampling_spec(args);
    spec.validate(1, ANY_MODEL).map_err(EngineError::from)?;
    let (_, path) = locate(&args.model)?;
    let loading = Instant::now();
    let engine = start_engine(&path, device)?;
    let load = loading.elapsed();
    let prompt_ids = prompt_ids(&engine, args)?;
    let mut out = std::io::stdout().lock();
    let run = run(&engine, prompt_ids.clone(), &spec, |delta| {
        if args.json || delta.is_empty() {
            return Ok(());
        }
        out.write_all(delta.as_bytes())
            .and_then(|()| out.flush())
            .map_err(CliError::Stdout)
    })?;
    if args.json {
        let report = JsonReport::new(&engine, prompt_ids, run, load, args.logprobs.is_some());
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out).map_err(CliError::Stdout)
    } else {
        // End the line so the shell prompt does not follow the text.
        if !run.text.ends_with('\n') {
            writeln!(out).map_err(CliError::Stdout)?;
        }
        out.flush().map_err(CliError::Stdout)
    }
}

fn sampling_spec(args: &GenerateArgs) -> SamplingSpec {
    SamplingSpec {
        max_tokens: Some(args.max_tokens),
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        seed: args.seed,
        stop: args.stop.clone(),
        logprobs: args.logprobs,
        ..SamplingSpec::default()
    }
}

/// The prompt as the model sees it: with `--chat`, the chat template rendered (its special tokens recognised,
/// nothing added around it); otherwise the text as is, with whatever special tokens the model adds to prompts.
fn prompt_ids(engine: &Engine, args: &GenerateArgs) -> Result<Vec<u32>, CliError> {
    let tokenizer = engine.tokenizer();
    if !args.chat {
        return Ok(tokenizer.encode(&args.prompt, true)?);
    }
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", &args.prompt));
    let text = tokenizer.apply_chat_template(&messages, true)?;
    Ok(tokenizer.encode(&text, false)?)
}

/// What a finished generation produced, and when.
struct Run {
    output_ids: Vec<u32>,
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish_reason: FinishReason,
    usage: Usage,
    submitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    finished: Instant,
}

/// Submits the prompt and drains its stream, handing each text delta to `on_text` as it arrives.
fn run(
    engine: &Engine,
    prompt_ids: Vec<u32>,
    spec: &SamplingSpec,
    mut on_text: impl FnMut(&str) -> Result<(), CliError>,
) -> Result<Run, CliError> {
    let submitted = Instant::now();
    let mut stream = engine.submit(prompt_ids, spec, 0)?;
    let (mut output_ids, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
    let (mut first_token, mut last_token) = (None, None);
    while let Some(out) = stream.blocking_next() {
        let out = out?;
        if !out.token_ids.is_empty() {
            let now = Instant::now();
            first_token.get_or_insert(now);
            last_token = Some(now);
        }
        on_text(&out.text)?;
        output_ids.extend_from_slice(&out.token_ids);
        text.push_str(&out.text);
        logprobs.extend(out.logprobs);
        if let Some(finish) = out.finish {
            return Ok(Run {
                output_ids,
                text,
                logprobs,
                finish_reason: finish.reason,
                usage: finish.usage,
                submitted,
                first_token,
                last_token,
                finished: Instant::now(),
            });
        }
    }
    // A stream ends without a finish only if the engine went away, which `blocking_next` reports as an error.
    Err(cleave_engine::EngineError::Unavailable.into())
}

#[derive(Serialize)]
struct JsonReport {
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
    text: String,
    finish_reason: FinishReason,
    usage: Usage,
    timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<JsonLogprob>>,
}

#[derive(Serialize)]
struct Timings {
    /// Loading the weights and tokenizer and starting the engine.
    load_ms: f64,
    /// Submit to the first generated token.
    ttft_ms: Option<f64>,
    /// Decode rate after the first token: (tokens - 1) / (last token - first token).
    tokens_per_s: Option<f64>,
    /// Submit to finish.
    total_ms: f64,
}

#[derive(Serialize)]
struct JsonLogprob {
    token_id: u32,
    token: String,
    logprob: f32,
    top: Vec<JsonAlternative>,
}

#[derive(Serialize)]
struct JsonAlternative {
    token_id: u32,
    token: String,
    logprob: f32,
}

impl JsonReport {
    fn new(engine: &Engine, prompt_ids: Vec<u32>, run: Run, load: Duration, with_logprobs: bool) -> Self {
        let decode_rate = match (run.first_token, run.last_token) {
            (Some(first), Some(last)) if run.output_ids.len() > 1 && last > first => {
                Some((run.output_ids.len() - 1) as f64 / (last - first).as_secs_f64())
            }
            _ => None,
        };
        let token = |id: u32| engine.tokenizer().decode(&[id], false).unwrap_or_default();
        let logprobs = with_logprobs.then(|| {
            run.logprobs
                .iter()
                .map(|lp| JsonLogprob {
                    token_id: lp.token_id,
                    token: token(lp.token_id),
                    logprob: lp.logprob,
                    top: lp
                        .top
                        .iter()
                        .map(|&(token_id, logprob)| JsonAlternative {
                            token_id,
                            token: token(token_id),
                            logprob,
                        })
                        .collect(),
                })
                .collect()
        });
        JsonReport {
            prompt_ids,
            timings: Timings {
                load_ms: millis(load),
                ttft_ms: run.first_token.map(|t| millis(t - run.submitted)),
                tokens_per_s: decode_rate,
                total_ms: millis(run.finished - run.submitted),
            },
            output_ids: run.output_ids,
            text: run.text,
            finish_reason: run.finish_reason,
            usage: run.usage,
            logprobs,
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
