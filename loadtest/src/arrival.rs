//! Arrival processes: when each request of a stage is sent. Open loop — Poisson at a rate, bursty gamma arrivals
//! (same mean rate, coefficient of variation `cv`), a constant rate, or a trace's own timestamps — and closed loop
//! (a fixed number of clients, each sending its next request when the previous one ends).
//!
//! Invariant: open-loop offsets are non-decreasing and depend only on the seed, never on how the target responds.
//! Cost: one RNG draw per request.

use rand::Rng;
use rand_distr::{Distribution, Exp, Gamma};
use serde::{Deserialize, Serialize};

use crate::error::LoadError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrival {
    /// Exponential gaps: a memoryless stream of `rate` requests/s.
    Poisson { rate: f64 },
    /// Gamma gaps with mean `1/rate` and coefficient of variation `cv` (> 1: bursts; 1: Poisson).
    Gamma { rate: f64, cv: f64 },
    /// Evenly spaced requests.
    Constant { rate: f64 },
    /// `concurrency` clients in a closed loop.
    Concurrency { concurrency: usize },
    /// The workload's own timestamps (trace replay), divided by `speedup`.
    Trace {
        #[serde(default = "one")]
        speedup: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl Arrival {
    pub fn validate(&self, field: &str) -> Result<(), LoadError> {
        let ok = match self {
            Arrival::Poisson { rate } | Arrival::Constant { rate } => *rate > 0.0 && rate.is_finite(),
            Arrival::Gamma { rate, cv } => *rate > 0.0 && rate.is_finite() && *cv > 0.0 && cv.is_finite(),
            Arrival::Concurrency { concurrency } => *concurrency > 0,
            Arrival::Trace { speedup } => *speedup > 0.0 && speedup.is_finite(),
        };
        if ok {
            Ok(())
        } else {
            Err(LoadError::invalid(
                field,
                "rate, cv, speedup must be > 0 and concurrency >= 1",
            ))
        }
    }

    /// The same process at another mean rate (sweeps); closed-loop and trace arrivals become Poisson.
    pub fn with_rate(&self, rate: f64) -> Arrival {
        match *self {
            Arrival::Gamma { cv, .. } => Arrival::Gamma { rate, cv },
            Arrival::Constant { .. } => Arrival::Constant { rate },
            _ => Arrival::Poisson { rate },
        }
    }

    /// The offered rate in requests/s, for open-loop processes with one.
    pub fn offered_rate(&self) -> Option<f64> {
        match *self {
            Arrival::Poisson { rate } | Arrival::Gamma { rate, .. } | Arrival::Constant { rate } => Some(rate),
            _ => None,
        }
    }

    pub fn concurrency(&self) -> Option<usize> {
        match *self {
            Arrival::Concurrency { concurrency } => Some(concurrency),
            _ => None,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Arrival::Poisson { rate } => format!("poisson {rate} req/s"),
            Arrival::Gamma { rate, cv } => format!("gamma {rate} req/s cv {cv}"),
            Arrival::Constant { rate } => format!("constant {rate} req/s"),
            Arrival::Concurrency { concurrency } => format!("closed loop, concurrency {concurrency}"),
            Arrival::Trace { speedup } => format!("trace timestamps ×{speedup}"),
        }
    }

    /// The send offset (seconds after the stage start) of each of `n` open-loop requests; `trace_s` are the
    /// workload's timestamps, used by [`Arrival::Trace`]. `None` for closed-loop arrivals.
    pub fn offsets(&self, n: usize, trace_s: &[Option<f64>], rng: &mut impl Rng) -> Option<Vec<f64>> {
        let mut t = 0.0;
        let mut gaps = |draw: &mut dyn FnMut() -> f64| {
            (0..n)
                .map(|i| {
                    if i > 0 {
                        t += draw();
                    }
                    t
                })
                .collect::<Vec<f64>>()
        };
        match *self {
            Arrival::Poisson { rate } => {
                let exp = Exp::new(rate).ok()?;
                Some(gaps(&mut || exp.sample(rng)))
            }
            Arrival::Gamma { rate, cv } => {
                let shape = 1.0 / (cv * cv);
                let gamma = Gamma::new(shape, 1.0 / (rate * shape)).ok()?;
                Some(gaps(&mut || gamma.sample(rng)))
            }
            Arrival::Constant { rate } => Some(gaps(&mut || 1.0 / rate)),
            Arrival::Concurrency { .. } => None,
            Arrival::Trace { speedup } => {
                let first = trace_s.iter().flatten().copied().fold(f64::INFINITY, f64::min);
                let first = if first.is_finite() { first } else { 0.0 };
                let mut last = 0.0_f64;
                Some(
                    (0..n)
                        .map(|i| {
                            let at = trace_s
                                .get(i)
                                .copied()
                                .flatten()
                                .map_or(last, |s| (s - first) / speedup);
                            last = last.max(at);
                            last
                        })
                        .collect(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn open_loop_rates_match() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for arrival in [
            Arrival::Poisson { rate: 200.0 },
            Arrival::Gamma { rate: 200.0, cv: 3.0 },
            Arrival::Constant { rate: 200.0 },
        ] {
            let offsets = arrival.offsets(20_000, &[], &mut rng).unwrap();
            assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
            let rate = (offsets.len() - 1) as f64 / offsets[offsets.len() - 1];
            assert!((rate - 200.0).abs() < 12.0, "{arrival:?}: {rate}");
        }
        assert!(
            Arrival::Concurrency { concurrency: 2 }
                .offsets(3, &[], &mut rng)
                .is_none()
        );
    }

    #[test]
    fn trace_offsets_start_at_zero_and_scale() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let offsets = Arrival::Trace { speedup: 2.0 }
            .offsets(3, &[Some(10.0), Some(12.0), Some(11.0)], &mut rng)
            .unwrap();
        assert_eq!(offsets, vec![0.0, 1.0, 1.0]);
    }
}
