//! A worker's response stream in OpenAI's two forms: collected into whole choices (non-streaming), or relayed as
//! server-sent events (`data: {chunk}` … `data: [DONE]`), with the request's usage summed over its `n` choices.
//!
//! Invariant: a stream that fails after its headers went out ends with one `data: {"error": …}` event and no
//! `[DONE]`, so clients never mistake a cut stream for a complete one. Dropping the SSE body (the client went away)
//! drops the worker stream, which aborts the request. Cost: one JSON serialization per worker response.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use cleave_proto::v1;
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use super::errors::ApiError;
use crate::frontend::ResponseStream;

/// OpenAI's `usage` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl Usage {
    /// Adds one choice's final usage: the prompt is counted once (the choices share it), completions add up.
    pub fn add(&mut self, usage: &v1::Usage) {
        self.prompt_tokens = self.prompt_tokens.max(usage.prompt_tokens);
        self.prompt_tokens_details.cached_tokens = self.prompt_tokens_details.cached_tokens.max(usage.cached_tokens);
        self.completion_tokens += usage.completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
    }
}

/// OpenAI's `finish_reason` for the proto's.
pub fn finish_reason(reason: i32) -> Option<&'static str> {
    match v1::FinishReason::try_from(reason).ok()? {
        v1::FinishReason::Stop => Some("stop"),
        v1::FinishReason::Length => Some("length"),
        v1::FinishReason::Abort => Some("abort"),
        v1::FinishReason::Unspecified => None,
    }
}

/// One choice, collected.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    pub text: String,
    pub logprobs: Vec<v1::TokenLogprob>,
    pub finish_reason: i32,
}

/// Reads the whole stream: `n` choices in index order and the summed usage.
pub async fn collect(mut stream: ResponseStream, n: u32) -> Result<(Vec<Choice>, Usage), ApiError> {
    let mut choices = vec![Choice::default(); n.max(1) as usize];
    let mut usage = Usage::default();
    while let Some(item) = stream.next().await {
        let response = item.map_err(|s| ApiError::from_status(&s))?;
        if let Some(u) = &response.usage {
            usage.add(u);
        }
        let index = response.index as usize;
        if index >= choices.len() {
            choices.resize(index + 1, Choice::default());
        }
        let choice = &mut choices[index];
        choice.text.push_str(&response.text);
        choice.logprobs.extend(response.logprobs);
        if response.finish_reason != 0 {
            choice.finish_reason = response.finish_reason;
        }
    }
    Ok((choices, usage))
}

/// What a streaming endpoint renders: a chunk for one worker response, or the closing usage chunk.
pub enum ChunkSource<'a> {
    Response(&'a v1::GenerateResponse),
    Usage(Usage),
}

/// Relays `stream` as server-sent events, one `render`ed chunk per worker response (`None` skips it), then the
/// usage chunk when `include_usage`, then `[DONE]`.
pub fn relay<F>(
    stream: ResponseStream,
    include_usage: bool,
    render: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    F: FnMut(ChunkSource<'_>) -> Option<String> + Send + 'static,
{
    struct State<F> {
        stream: Option<ResponseStream>,
        render: F,
        usage: Usage,
        include_usage: bool,
        done: bool,
    }
    let state = State {
        stream: Some(stream),
        render,
        usage: Usage::default(),
        include_usage,
        done: false,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            let Some(stream) = state.stream.as_mut() else {
                state.done = true;
                return Some((Event::default().data("[DONE]"), state));
            };
            match stream.next().await {
                Some(Ok(response)) => {
                    if let Some(u) = &response.usage {
                        state.usage.add(u);
                    }
                    if let Some(chunk) = (state.render)(ChunkSource::Response(&response)) {
                        return Some((Event::default().data(chunk), state));
                    }
                }
                Some(Err(status)) => {
                    state.stream = None;
                    state.done = true;
                    let error = ApiError::from_status(&status);
                    return Some((Event::default().data(error.body_json()), state));
                }
                None => {
                    state.stream = None;
                    if state.include_usage
                        && let Some(chunk) = (state.render)(ChunkSource::Usage(state.usage))
                    {
                        return Some((Event::default().data(chunk), state));
                    }
                }
            }
        }
    });
    Sse::new(events.map(Ok)).keep_alive(KeepAlive::default())
}
