//! Wire request → the sampling parameters router and engine validate (`cleave_sampling::SamplingSpec::validate`).

use cleave_sampling::SamplingSpec;

use crate::v1;

/// A request's sampling fields, unvalidated; ranges are checked by `SamplingSpec::validate`.
pub fn sampling_spec(req: &v1::GenerateRequest) -> SamplingSpec {
    SamplingSpec {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        seed: req.seed,
        repetition_penalty: req.repetition_penalty,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        stop: req.stop.clone(),
        stop_token_ids: req.stop_token_ids.clone(),
        ignore_eos: req.ignore_eos,
        logprobs: req.logprobs,
        n: req.n,
    }
}
