//! What a request may ask of sampling and stopping, and the one validation of it — shared by the router (which
//! refuses bad input before it reaches a worker) and the engine (which accepts only validated values), so the two
//! can never disagree about what is valid.

mod params;

pub use params::{
    InvalidArgument, MAX_N, MAX_TOP_LOGPROBS, ModelLimits, SamplingParams, SamplingSpec, StopCriteria, ValidSampling,
};
