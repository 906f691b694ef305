//! The decision: from a window of [`Signals`], the configuration and the replicas running now, the prefill and
//! decode replica counts to run, each with the reason. No I/O: the same function drives the Kubernetes and the
//! local executor, and the tests replay simulated traces through it.
//!
//! Per phase it forms a wish, then applies bounds, cool-down, hysteresis and the shared GPU budget:
//! - **Prefill** is under pressure when TTFT p90 is over its SLO (unless the decode side is the bottleneck: KV
//!   nearly full with no prefill backlog), when requests sit in the routers' queues with no first token inside the
//!   window, when the prefill backlog would take longer than the TTFT SLO to drain (or grows, while no capacity
//!   is known), or when the throughput model needs more replicas for the prefill tokens/s seen.
//! - **Decode** is under pressure when ITL p90 is over its SLO, KV utilisation is high, TTFT breaches come from
//!   the decode side, or the throughput model needs more replicas for the generated tokens/s seen.
//! - A phase scales up in proportion to its SLO overshoot (at least one, at most `max_step_up` replicas), and
//!   not again until `cooldown_secs` after its last scale-up, so replicas still starting are not double-counted.
//! - A phase scales down by one only after `scale_down_windows` consecutive decisions with headroom (latency
//!   under `headroom_fraction` of its SLO, no queue, and the throughput model content with one replica less) and
//!   `cooldown_secs` after its last change. Between "over the SLO" and "well under it" nothing moves: no flapping.
//! - Scale-ups that together exceed the GPU budget are granted in order of urgency (SLO overshoot).
//!
//! Invariant: a target always lies within the phase's [min, max]; a target above the current count fits the GPU
//! budget. Cost: constant time.

pub use crate::config::{Phase, PhaseLimits, PlannerConfig, Replicas};
use crate::signals::Signals;

/// Why a phase's target is what it is (the `reason` label of the planner's metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Nothing to change.
    Steady,
    /// Not enough metrics yet (a single snapshot): hold.
    NoSignals,
    BelowMin,
    AboveMax,
    TtftOverSlo,
    /// Requests wait at the routers with no first token in the window.
    RequestsQueued,
    /// The prefill backlog grows, or would take longer than the TTFT SLO to drain.
    PrefillBacklog,
    ItlOverSlo,
    KvPressure,
    /// The throughput model needs more replicas for the load seen.
    ThroughputModel,
    /// Sustained headroom: one replica less.
    Headroom,
    /// Headroom, but not yet for long enough (hysteresis).
    HeadroomPending,
    /// Under pressure, but the last scale-up is too recent.
    CoolingDown,
    /// Under pressure, but the GPU budget is spent.
    GpuBudget,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Steady => "steady",
            Reason::NoSignals => "no_signals",
            Reason::BelowMin => "below_min",
            Reason::AboveMax => "above_max",
            Reason::TtftOverSlo => "ttft_over_slo",
            Reason::RequestsQueued => "requests_queued",
            Reason::PrefillBacklog => "prefill_backlog",
            Reason::ItlOverSlo => "itl_over_slo",
            Reason::KvPressure => "kv_pressure",
            Reason::ThroughputModel => "throughput_model",
            Reason::Headroom => "headroom",
            Reason::HeadroomPending => "headroom_pending",
            Reason::CoolingDown => "cooling_down",
            Reason::GpuBudget => "gpu_budget",
        }
    }
}

/// One phase's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseDecision {
    pub current: u32,
    pub target: u32,
    pub reason: Reason,
}

impl PhaseDecision {
    pub fn changes(&self) -> bool {
        self.target != self.current
    }
}

/// Both phases' outcomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub prefill: PhaseDecision,
    pub decode: PhaseDecision,
}

impl Decision {
    pub fn phase(&self, phase: Phase) -> &PhaseDecision {
        match phase {
            Phase::Prefill => &self.prefill,
            Phase::Decode => &self.decode,
        }
    }

    pub fn targets(&self) -> Replicas {
        Replicas {
            prefill: self.prefill.target,
            decode: self.decode.target,
        }
    }
}

/// What one phase remembers between decisions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseState {
    pub last_scale_up: Option<f64>,
    pub last_change: Option<f64>,
    pub headroom_streak: u32,
    /// Per-replica throughput measured while the phase was saturated (when no profile gives it).
    pub estimated_tokens_per_s: Option<f64>,
}

/// The planner's memory: one [`PhaseState`] per phase.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlannerState {
    pub prefill: PhaseState,
    pub decode: PhaseState,
}

impl PlannerState {
    fn phase(&mut self, phase: Phase) -> &mut PhaseState {
        match phase {
            Phase::Prefill => &mut self.prefill,
            Phase::Decode => &mut self.decode,
        }
    }
}

/// A phase's wish before bounds, cool-down and budget.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wish {
    /// Up to `replicas`; `urgency` orders phases competing for the GPU budget.
    Up {
        replicas: u32,
        reason: Reason,
        urgency: f64,
    },
    Headroom,
    Hold,
}

/// Decides both phases at time `now` (seconds, monotonic); updates `state` as if the targets were applied.
pub fn decide(
    signals: &Signals,
    current: Replicas,
    config: &PlannerConfig,
    state: &mut PlannerState,
    now: f64,
) -> Decision {
    let have_window = signals.window_secs > 0.0;
    if have_window {
        estimate_capacity(signals, current, state);
    }
    let capacity = |phase: Phase, state: &PlannerState| {
        let limits = config.limits(phase);
        let estimate = match phase {
            Phase::Prefill => state.prefill.estimated_tokens_per_s,
            Phase::Decode => state.decode.estimated_tokens_per_s,
        };
        limits.tokens_per_s.or(estimate)
    };
    let wishes = [
        prefill_wish(signals, current.prefill, config, capacity(Phase::Prefill, state)),
        decode_wish(signals, current.decode, config, capacity(Phase::Decode, state)),
    ];
    let mut decisions = [Phase::Prefill, Phase::Decode].map(|phase| {
        let wish = if have_window {
            wishes[phase as usize]
        } else {
            Wish::Hold
        };
        let base = if have_window { Reason::Steady } else { Reason::NoSignals };
        apply_limits(phase, wish, base, current.get(phase), config, state.phase(phase), now)
    });
    fit_budget(&mut decisions, &wishes, current, config);
    for phase in Phase::ALL {
        let d = decisions[phase as usize];
        let st = state.phase(phase);
        if d.target > d.current {
            st.last_scale_up = Some(now);
        }
        if d.changes() {
            st.last_change = Some(now);
            st.headroom_streak = 0;
        }
    }
    Decision {
        prefill: decisions[0],
        decode: decisions[1],
    }
}

/// Learns per-replica throughput from a window where a phase was saturated (work queued throughout). Prompts
/// prefilled locally on decode workers count too, so this errs high; the correction loop covers the rest.
fn estimate_capacity(signals: &Signals, current: Replicas, state: &mut PlannerState) {
    let learn = |estimate: &mut Option<f64>, rate: f64, replicas: u32| {
        if replicas == 0 || rate <= 0.0 {
            return;
        }
        let measured = rate / f64::from(replicas);
        *estimate = Some(estimate.map_or(measured, |old| 0.5 * old + 0.5 * measured));
    };
    if current.prefill > 0 && signals.queued_prefill_tokens_low > 0.0 {
        learn(
            &mut state.prefill.estimated_tokens_per_s,
            signals.prefill_tokens_per_s,
            current.prefill,
        );
    }
    // Sequences waiting while prompts are queued may wait for prefill, not decode: learn only when decode is the
    // bottleneck.
    let decode_bound = signals.decode_waiting > 0.0 && signals.queued_prefill_tokens_peak <= 0.0;
    if decode_bound || signals.kv_utilization.is_some_and(|u| u >= 0.95) {
        learn(
            &mut state.decode.estimated_tokens_per_s,
            signals.decode_tokens_per_s,
            current.decode,
        );
    }
}

/// Replicas the throughput model needs for `tokens_per_s` at the target utilisation.
fn model_need(tokens_per_s: f64, capacity: Option<f64>, config: &PlannerConfig) -> Option<u32> {
    let capacity = capacity?;
    Some((tokens_per_s / (capacity * config.target_utilization)).ceil().max(0.0) as u32)
}

/// `current` plus a step in proportion to `ratio` (how far over the SLO), at least 1 and at most `max_step_up`.
fn step_up(current: u32, ratio: f64, config: &PlannerConfig) -> u32 {
    let proportional = (f64::from(current) * (ratio - 1.0)).ceil();
    let step = proportional.clamp(1.0, f64::from(config.max_step_up.max(1))) as u32;
    current + step
}

fn decode_bound(signals: &Signals, config: &PlannerConfig) -> bool {
    signals.kv_utilization.is_some_and(|u| u >= config.kv_high) && signals.queued_prefill_tokens <= 0.0
}

fn prefill_wish(signals: &Signals, current: u32, config: &PlannerConfig, capacity: Option<f64>) -> Wish {
    let need = model_need(signals.prefill_tokens_per_s, capacity, config);
    let ttft_ratio = signals.ttft_p90.map_or(0.0, |t| t / config.ttft_slo);
    let up = |replicas: u32, reason: Reason, urgency: f64| Wish::Up {
        replicas: replicas.max(need.unwrap_or(0)),
        reason,
        urgency,
    };
    if ttft_ratio > 1.0 && !decode_bound(signals, config) {
        return up(step_up(current, ttft_ratio, config), Reason::TtftOverSlo, ttft_ratio);
    }
    if signals.queued_requests > 0.0 && signals.ttft_p90.is_none() && !decode_bound(signals, config) {
        return up(step_up(current, 2.0, config), Reason::RequestsQueued, 2.0);
    }
    let backlog = match capacity {
        Some(c) => signals.queued_prefill_tokens / (c * f64::from(current.max(1))) > config.ttft_slo,
        None => signals.queued_prefill_tokens > 0.0 && signals.queued_prefill_tokens_growth > 0.0,
    };
    if backlog {
        return up(current + 1, Reason::PrefillBacklog, 1.0);
    }
    if let Some(n) = need.filter(|&n| n > current) {
        return up(n, Reason::ThroughputModel, 1.0);
    }
    let calm = signals
        .ttft_p90
        .is_none_or(|t| t < config.headroom_fraction * config.ttft_slo);
    let idle_queue = signals.queued_prefill_tokens_peak <= 0.0 && signals.queued_requests <= 0.0;
    let model_ok = need.is_none_or(|n| n < current);
    if calm && idle_queue && model_ok {
        Wish::Headroom
    } else {
        Wish::Hold
    }
}

fn decode_wish(signals: &Signals, current: u32, config: &PlannerConfig, capacity: Option<f64>) -> Wish {
    let need = model_need(signals.decode_tokens_per_s, capacity, config);
    let itl_ratio = signals.itl_p90.map_or(0.0, |t| t / config.itl_slo);
    let up = |replicas: u32, reason: Reason, urgency: f64| Wish::Up {
        replicas: replicas.max(need.unwrap_or(0)),
        reason,
        urgency,
    };
    if itl_ratio > 1.0 {
        return up(step_up(current, itl_ratio, config), Reason::ItlOverSlo, itl_ratio);
    }
    let ttft_ratio = signals.ttft_p90.map_or(0.0, |t| t / config.ttft_slo);
    if ttft_ratio > 1.0 && decode_bound(signals, config) {
        return up(step_up(current, ttft_ratio, config), Reason::TtftOverSlo, ttft_ratio);
    }
    if signals.kv_utilization.is_some_and(|u| u >= config.kv_high) {
        return up(current + 1, Reason::KvPressure, 1.0);
    }
    if let Some(n) = need.filter(|&n| n > current) {
        return up(n, Reason::ThroughputModel, 1.0);
    }
    let calm = signals
        .itl_p90
        .is_none_or(|t| t < config.headroom_fraction * config.itl_slo);
    let kv_ok = signals.kv_utilization.is_none_or(|u| u < config.kv_low);
    let model_ok = need.is_none_or(|n| n < current);
    if calm && kv_ok && signals.decode_waiting <= 0.0 && model_ok {
        Wish::Headroom
    } else {
        Wish::Hold
    }
}

/// Bounds, cool-down and hysteresis for one phase.
fn apply_limits(
    phase: Phase,
    wish: Wish,
    base: Reason,
    current: u32,
    config: &PlannerConfig,
    state: &mut PhaseState,
    now: f64,
) -> PhaseDecision {
    let limits = config.limits(phase);
    let decision = |target: u32, reason: Reason| PhaseDecision {
        current,
        target,
        reason,
    };
    if current < limits.min {
        return decision(limits.min, Reason::BelowMin);
    }
    if current > limits.max {
        return decision(limits.max, Reason::AboveMax);
    }
    let since = |t: Option<f64>| t.map_or(f64::INFINITY, |t| now - t);
    match wish {
        Wish::Up { replicas, reason, .. } => {
            state.headroom_streak = 0;
            let target = replicas.min(limits.max);
            if target <= current {
                decision(current, reason)
            } else if since(state.last_scale_up) < config.cooldown_secs {
                decision(current, Reason::CoolingDown)
            } else {
                decision(target, reason)
            }
        }
        Wish::Headroom if current > limits.min => {
            state.headroom_streak += 1;
            if state.headroom_streak >= config.scale_down_windows && since(state.last_change) >= config.cooldown_secs {
                decision(current - 1, Reason::Headroom)
            } else {
                decision(current, Reason::HeadroomPending)
            }
        }
        Wish::Headroom | Wish::Hold => {
            if matches!(wish, Wish::Hold) {
                state.headroom_streak = 0;
            }
            decision(current, base)
        }
    }
}

/// Cuts scale-ups that together exceed the GPU budget, granting the more urgent phase first.
fn fit_budget(decisions: &mut [PhaseDecision; 2], wishes: &[Wish; 2], current: Replicas, config: &PlannerConfig) {
    if config.gpu_budget == 0 {
        return;
    }
    let gpus = |phase: Phase| config.limits(phase).gpus_per_replica;
    // GPUs held after every decrease, before any increase.
    let held: u32 = Phase::ALL
        .iter()
        .map(|&p| decisions[p as usize].target.min(current.get(p)) * gpus(p))
        .sum();
    let mut left = config.gpu_budget.saturating_sub(held);
    let urgency = |p: Phase| match wishes[p as usize] {
        Wish::Up { urgency, .. } => urgency,
        _ => 0.0,
    };
    let mut order = Phase::ALL;
    if urgency(Phase::Decode) > urgency(Phase::Prefill) {
        order.reverse();
    }
    for phase in order {
        let d = &mut decisions[phase as usize];
        if d.target <= d.current || d.reason == Reason::BelowMin {
            continue;
        }
        let per = gpus(phase);
        if per == 0 {
            continue;
        }
        let granted = (d.target - d.current).min(left / per);
        left -= granted * per;
        if granted < d.target - d.current {
            d.target = d.current + granted;
            d.reason = Reason::GpuBudget;
        }
    }
}

#[cfg(test)]
mod tests;
