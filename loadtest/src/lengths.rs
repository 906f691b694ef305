//! Token-length distributions for prompts and outputs: fixed, uniform, normal, log-normal, or a weighted histogram.
//!
//! Invariant: every sample is clamped to `[1, u32::MAX]` — a request never asks for zero tokens. Cost: one draw from
//! the campaign's seeded RNG per sample.

use rand::Rng;
use rand_distr::weighted::WeightedIndex;
use rand_distr::{Distribution, LogNormal, Normal};
use serde::{Deserialize, Serialize};

use crate::error::LoadError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum LengthDist {
    Fixed {
        value: u32,
    },
    Uniform {
        min: u32,
        max: u32,
    },
    Normal {
        mean: f64,
        std: f64,
    },
    /// `median` tokens, `sigma` the standard deviation of the length's logarithm.
    LogNormal {
        median: f64,
        sigma: f64,
    },
    /// `[length, weight]` pairs; a sample is one of the lengths.
    Histogram {
        buckets: Vec<(u32, f64)>,
    },
}

impl LengthDist {
    pub fn validate(&self, field: &str) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::invalid(field, m));
        match self {
            LengthDist::Fixed { value } if *value == 0 => bad("must be at least 1"),
            LengthDist::Uniform { min, max } if min > max || *max == 0 => bad("needs 0 < max and min <= max"),
            LengthDist::Normal { mean, std } if !(mean.is_finite() && std.is_finite() && *std >= 0.0) => {
                bad("needs a finite mean and std >= 0")
            }
            LengthDist::LogNormal { median, sigma } if !(*median > 0.0 && sigma.is_finite() && *sigma >= 0.0) => {
                bad("needs median > 0 and sigma >= 0")
            }
            LengthDist::Histogram { buckets }
                if buckets.is_empty() || buckets.iter().any(|(_, w)| !(w.is_finite() && *w >= 0.0)) =>
            {
                bad("needs at least one [length, weight] pair with weights >= 0")
            }
            LengthDist::Histogram { buckets } if WeightedIndex::new(buckets.iter().map(|b| b.1)).is_err() => {
                bad("needs a positive total weight")
            }
            _ => Ok(()),
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        let raw = match self {
            LengthDist::Fixed { value } => f64::from(*value),
            LengthDist::Uniform { min, max } => f64::from(rng.random_range(*min..=*max)),
            LengthDist::Normal { mean, std } => Normal::new(*mean, *std).map_or(*mean, |d| d.sample(rng)),
            LengthDist::LogNormal { median, sigma } => {
                LogNormal::new(median.ln(), *sigma).map_or(*median, |d| d.sample(rng))
            }
            LengthDist::Histogram { buckets } => match WeightedIndex::new(buckets.iter().map(|b| b.1)) {
                Ok(index) => f64::from(buckets[index.sample(rng)].0),
                Err(_) => 1.0,
            },
        };
        raw.round().clamp(1.0, f64::from(u32::MAX)) as u32
    }

    /// A short label for reports, e.g. `fixed(128)`.
    pub fn label(&self) -> String {
        match self {
            LengthDist::Fixed { value } => format!("fixed({value})"),
            LengthDist::Uniform { min, max } => format!("uniform({min}..={max})"),
            LengthDist::Normal { mean, std } => format!("normal({mean}, {std})"),
            LengthDist::LogNormal { median, sigma } => format!("lognormal(median {median}, sigma {sigma})"),
            LengthDist::Histogram { buckets } => format!("histogram({} buckets)", buckets.len()),
        }
    }
}
