//! Sampling: validated parameters and the per-sequence sampler.

mod sampler;

pub use cleave_sampling::{
    InvalidArgument, MAX_N, MAX_TOP_LOGPROBS, ModelLimits, SamplingParams, SamplingSpec, StopCriteria, ValidSampling,
};
pub use sampler::{Sampler, TokenLogprob, argmax};
