//! Sampling: validated parameters and the per-sequence sampler.

mod params;
mod sampler;

pub use params::{MAX_N, MAX_TOP_LOGPROBS, ModelLimits, SamplingParams, SamplingSpec, StopCriteria, ValidSampling};
pub use sampler::{Sampler, TokenLogprob, argmax};
