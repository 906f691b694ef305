//! The planner's configuration: the phases it sizes, their bounds and per-replica cost and throughput, the SLO
//! targets and the knobs of the correction loop (cool-down, hysteresis, KV thresholds), with the checks the
//! decision relies on.
//!
//! Invariant: a configuration that passed [`PlannerConfig::validate`] has min ≤ max per phase, positive SLOs and
//! minimum replicas that fit the GPU budget. Cost: none.

/// The two pools the planner sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    pub const ALL: [Phase; 2] = [Phase::Prefill, Phase::Decode];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

/// Replicas per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replicas {
    pub prefill: u32,
    pub decode: u32,
}

impl Replicas {
    pub fn get(&self, phase: Phase) -> u32 {
        match phase {
            Phase::Prefill => self.prefill,
            Phase::Decode => self.decode,
        }
    }
}

/// One phase's bounds and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseLimits {
    pub min: u32,
    pub max: u32,
    pub gpus_per_replica: u32,
    /// The throughput one replica sustains (prefill: prompt tokens/s; decode: generated tokens/s), from a
    /// profile; `None` lets the planner estimate it from windows where the phase was saturated.
    pub tokens_per_s: Option<f64>,
}

/// Everything the decision depends on besides the signals.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerConfig {
    /// Time-to-first-token target for p90, seconds.
    pub ttft_slo: f64,
    /// Inter-token-latency target for p90, seconds.
    pub itl_slo: f64,
    pub prefill: PhaseLimits,
    pub decode: PhaseLimits,
    /// GPUs both phases may use together; 0 for no limit.
    pub gpu_budget: u32,
    /// Seconds after a phase's scale-up before it scales up again, and after any change before it scales down.
    pub cooldown_secs: f64,
    /// Consecutive decisions with headroom before one replica is removed.
    pub scale_down_windows: u32,
    /// Latency under this fraction of its SLO counts as headroom.
    pub headroom_fraction: f64,
    /// Decode KV utilisation at or above which decode scales up, and below which it may scale down.
    pub kv_high: f64,
    pub kv_low: f64,
    /// The throughput model sizes each phase to run at this fraction of its capacity.
    pub target_utilization: f64,
    /// Replicas added to a phase in one decision at most.
    pub max_step_up: u32,
}

impl PlannerConfig {
    /// A configuration with the given SLOs and bounds and the defaults for the rest.
    pub fn new(ttft_slo: f64, itl_slo: f64, prefill: PhaseLimits, decode: PhaseLimits) -> Self {
        Self {
            ttft_slo,
            itl_slo,
            prefill,
            decode,
            gpu_budget: 0,
            cooldown_secs: 60.0,
            scale_down_windows: 3,
            headroom_fraction: 0.5,
            kv_high: 0.85,
            kv_low: 0.5,
            target_utilization: 0.8,
            max_step_up: 2,
        }
    }

    pub fn limits(&self, phase: Phase) -> &PhaseLimits {
        match phase {
            Phase::Prefill => &self.prefill,
            Phase::Decode => &self.decode,
        }
    }

    /// Checks the rules the decision relies on; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.ttft_slo > 0.0 && self.itl_slo > 0.0) {
            return Err("the TTFT and ITL SLOs must be positive".into());
        }
        for phase in Phase::ALL {
            let l = self.limits(phase);
            if l.min > l.max {
                return Err(format!(
                    "{} min ({}) is above its max ({})",
                    phase.as_str(),
                    l.min,
                    l.max
                ));
            }
            if l.tokens_per_s.is_some_and(|t| t <= 0.0) {
                return Err(format!("{} tokens/s per replica must be positive", phase.as_str()));
            }
        }
        if self.decode.max == 0 {
            return Err("decode max must be at least 1: decode workers serve every request".into());
        }
        let floor = self.prefill.min * self.prefill.gpus_per_replica + self.decode.min * self.decode.gpus_per_replica;
        if self.gpu_budget > 0 && floor > self.gpu_budget {
            return Err(format!(
                "the minimum replicas need {floor} GPUs, over the GPU budget of {}",
                self.gpu_budget
            ));
        }
        if !(0.0 < self.target_utilization && self.target_utilization <= 1.0) {
            return Err("target utilization must be in (0, 1]".into());
        }
        Ok(())
    }
}
