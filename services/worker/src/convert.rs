//! From the engine's outputs and errors to the wire types of `cleave.v1`.
//!
//! The mapping from error category to gRPC code lives here, in one place, for every worker RPC.

use cleave_engine::sampling::TokenLogprob;
use cleave_engine::scheduler::{FinishReason, SeqOutput};
use cleave_engine::{EngineError, ErrorCategory};
use cleave_proto::v1;

pub fn response(out: SeqOutput) -> v1::GenerateResponse {
    let (finish_reason, usage) = match out.finish {
        Some(f) => (
            match f.reason {
                FinishReason::Stop => v1::FinishReason::Stop,
                FinishReason::Length => v1::FinishReason::Length,
                FinishReason::Abort => v1::FinishReason::Abort,
                // Prefill-only requests end inside the worker; nothing streams them to a client.
                FinishReason::Prefilled => v1::FinishReason::Unspecified,
            },
            Some(v1::Usage {
                prompt_tokens: saturate(f.usage.prompt_tokens),
                cached_tokens: saturate(f.usage.cached_tokens),
                completion_tokens: saturate(f.usage.completion_tokens),
            }),
        ),
        None => (v1::FinishReason::Unspecified, None),
    };
    v1::GenerateResponse {
        index: out.index,
        token_ids: out.token_ids,
        text: out.text,
        logprobs: out.logprobs.into_iter().map(logprob).collect(),
        finish_reason: finish_reason as i32,
        usage,
    }
}

fn logprob(lp: TokenLogprob) -> v1::TokenLogprob {
    v1::TokenLogprob {
        token_id: lp.token_id,
        logprob: lp.logprob,
        top: lp
            .top
            .into_iter()
            .map(|(token_id, logprob)| v1::TopLogprob { token_id, logprob })
            .collect(),
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The gRPC status for an engine error, by its category.
pub fn status(e: &EngineError) -> tonic::Status {
    let code = match e.category() {
        ErrorCategory::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCategory::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCategory::Unavailable => tonic::Code::Unavailable,
        ErrorCategory::Cancelled => tonic::Code::Cancelled,
        ErrorCategory::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorCategory::Internal => tonic::Code::Internal,
    };
    tonic::Status::new(code, e.to_string())
}
