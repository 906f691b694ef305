//! The decision against simulated traces: each test replays windows of signals through `decide`, applying every
//! target as an ideal executor would, and asserts the exact replica counts and reasons.

use super::*;

const INTERVAL: f64 = 10.0;

fn limits(min: u32, max: u32, gpus: u32) -> PhaseLimits {
    PhaseLimits {
        min,
        max,
        gpus_per_replica: gpus,
        tokens_per_s: None,
    }
}

/// TTFT 1 s, ITL 50 ms, 1..=8 replicas of 1 GPU each, cool-down 30 s, three windows of headroom to scale down.
fn config() -> PlannerConfig {
    PlannerConfig {
        cooldown_secs: 30.0,
        ..PlannerConfig::new(1.0, 0.050, limits(1, 8, 1), limits(1, 8, 1))
    }
}

/// A steady 10-second window: some traffic, latencies under the SLOs but above the headroom band, no queues.
fn calm() -> Signals {
    Signals {
        window_secs: INTERVAL,
        ttft_p50: Some(0.3),
        ttft_p90: Some(0.6),
        itl_p50: Some(0.02),
        itl_p90: Some(0.03),
        queue_wait_p90: Some(0.05),
        request_rate: 2.0,
        prefill_tokens_per_s: 400.0,
        decode_tokens_per_s: 200.0,
        mean_input_tokens: Some(200.0),
        mean_output_tokens: Some(100.0),
        kv_utilization: Some(0.3),
        ..Signals::default()
    }
}

/// No traffic at all.
fn idle() -> Signals {
    Signals {
        window_secs: INTERVAL,
        kv_utilization: Some(0.0),
        ..Signals::default()
    }
}

/// Replays `trace` one window per interval from `start`; returns every decision.
fn replay(config: &PlannerConfig, start: Replicas, trace: &[Signals]) -> Vec<Decision> {
    let mut state = PlannerState::default();
    let mut current = start;
    trace
        .iter()
        .enumerate()
        .map(|(i, signals)| {
            let d = decide(signals, current, config, &mut state, i as f64 * INTERVAL);
            assert!(d.prefill.target >= config.prefill.min && d.prefill.target <= config.prefill.max);
            assert!(d.decode.target >= config.decode.min && d.decode.target <= config.decode.max);
            current = d.targets();
            d
        })
        .collect()
}

fn counts(decisions: &[Decision]) -> Vec<(u32, u32)> {
    decisions.iter().map(|d| (d.prefill.target, d.decode.target)).collect()
}

fn replicas(prefill: u32, decode: u32) -> Replicas {
    Replicas { prefill, decode }
}

#[test]
fn a_long_prompt_shift_scales_prefill_and_not_decode() {
    // Prompts get long: TTFT p90 2.5x its SLO and a growing prefill backlog, while ITL stays fine.
    let long = Signals {
        ttft_p90: Some(2.5),
        mean_input_tokens: Some(4000.0),
        prefill_tokens_per_s: 8000.0,
        queued_prefill_tokens: 20_000.0,
        queued_prefill_tokens_peak: 20_000.0,
        queued_prefill_tokens_growth: 5_000.0,
        ..calm()
    };
    let trace = [calm(), long.clone(), long.clone(), long.clone(), long.clone(), calm()];
    let decisions = replay(&config(), replicas(2, 2), &trace);
    // Up by 2 (the step cap; 2.5x over asks for 3), then cooling down for 30 s, then up by 2 again.
    assert_eq!(counts(&decisions), [(2, 2), (4, 2), (4, 2), (4, 2), (6, 2), (6, 2)]);
    assert_eq!(decisions[1].prefill.reason, Reason::TtftOverSlo);
    assert_eq!(decisions[2].prefill.reason, Reason::CoolingDown);
    assert!(decisions.iter().all(|d| !d.decode.changes()), "decode never moves");
}

#[test]
fn an_itl_breach_scales_decode_and_not_prefill() {
    let slow_decode = Signals {
        itl_p90: Some(0.080),
        kv_utilization: Some(0.6),
        ..calm()
    };
    let decisions = replay(&config(), replicas(2, 2), &[slow_decode.clone(), slow_decode]);
    // 1.6x over: 2 + ceil(2 × 0.6) = 4.
    assert_eq!(counts(&decisions), [(2, 4), (2, 4)]);
    assert_eq!(decisions[0].decode.reason, Reason::ItlOverSlo);
    assert_eq!(decisions[1].decode.reason, Reason::CoolingDown);
    assert!(decisions.iter().all(|d| !d.prefill.changes()));
}

#[test]
fn idle_scales_down_one_at_a_time_to_min_after_headroom_and_cooldown() {
    let decisions = replay(&config(), replicas(3, 3), &vec![idle(); 10]);
    // Three windows of headroom, then one less; the next step waits for the 30 s cool-down (and a new streak).
    assert_eq!(
        counts(&decisions),
        [
            (3, 3),
            (3, 3),
            (2, 2),
            (2, 2),
            (2, 2),
            (1, 1),
            (1, 1),
            (1, 1),
            (1, 1),
            (1, 1)
        ]
    );
    assert_eq!(decisions[0].prefill.reason, Reason::HeadroomPending);
    assert_eq!(decisions[2].prefill.reason, Reason::Headroom);
    assert_eq!(decisions[9].prefill.reason, Reason::Steady);
}

#[test]
fn a_slower_cooldown_delays_scale_down() {
    let config = PlannerConfig {
        cooldown_secs: 45.0,
        ..config()
    };
    let decisions = replay(&config, replicas(3, 1), &vec![idle(); 9]);
    // Down at t=20 (no earlier change), then not before t=65: at t=70 (the 8th window).
    let prefill: Vec<u32> = decisions.iter().map(|d| d.prefill.target).collect();
    assert_eq!(prefill, [3, 3, 2, 2, 2, 2, 2, 1, 1]);
}

#[test]
fn the_gpu_budget_grants_the_more_urgent_phase_first() {
    // 6 GPUs; prefill replicas take 2, decode 1. Running 1 prefill + 2 decode = 4 GPUs.
    let config = PlannerConfig {
        gpu_budget: 6,
        prefill: limits(1, 8, 2),
        ..config()
    };
    let both_breach = Signals {
        ttft_p90: Some(3.0),
        itl_p90: Some(0.075),
        ..calm()
    };
    let decisions = replay(&config, replicas(1, 2), &[both_breach]);
    // Prefill (3x over) wants 3 and decode (1.5x over) wants 3; the 2 spare GPUs buy one prefill replica.
    assert_eq!(counts(&decisions), [(2, 2)]);
    assert_eq!(decisions[0].prefill.reason, Reason::GpuBudget);
    assert_eq!(decisions[0].decode.reason, Reason::GpuBudget);

    // Decode more urgent: it gets the GPUs first (two decode replicas), prefill none.
    let decode_worse = Signals {
        ttft_p90: Some(1.2),
        itl_p90: Some(0.2),
        ..calm()
    };
    let decisions = replay(&config, replicas(1, 2), &[decode_worse]);
    assert_eq!(counts(&decisions), [(1, 4)]);
    assert_eq!(decisions[0].decode.reason, Reason::ItlOverSlo);
    assert_eq!(decisions[0].prefill.reason, Reason::GpuBudget);
}

#[test]
fn latencies_between_headroom_and_the_slo_hold_steady_without_flapping() {
    // A burst pushes TTFT over the SLO once; afterwards TTFT wanders between 50% and 100% of it.
    let burst = Signals {
        ttft_p90: Some(1.4),
        ..calm()
    };
    let wandering = |ttft: f64, itl: f64| Signals {
        ttft_p90: Some(ttft),
        itl_p90: Some(itl),
        ..calm()
    };
    let mut trace = vec![calm(), burst];
    for i in 0..12 {
        let (ttft, itl) = if i % 2 == 0 { (0.55, 0.03) } else { (0.95, 0.045) };
        trace.push(wandering(ttft, itl));
    }
    let decisions = replay(&config(), replicas(2, 2), &trace);
    // 1.4x over: 2 + ceil(2 × 0.4) = 3, then nothing moves for 120 s.
    assert_eq!(decisions[1].targets(), replicas(3, 2));
    assert!(decisions[2..].iter().all(|d| d.targets() == replicas(3, 2)));
    assert!(decisions[2..].iter().all(|d| d.prefill.reason == Reason::Steady));
}

#[test]
fn a_ramp_follows_the_throughput_model() {
    // A profile: one prefill replica computes 1000 prompt tokens/s; sized for 80% utilisation.
    let config = PlannerConfig {
        prefill: PhaseLimits {
            tokens_per_s: Some(1000.0),
            ..limits(1, 8, 1)
        },
        ..config()
    };
    let at = |rate: f64| Signals {
        prefill_tokens_per_s: rate,
        ..calm()
    };
    // One window per rate, each 40 s apart so cool-down never binds: replay with a spacing of 4 intervals.
    let mut trace = Vec::new();
    for rate in [500.0, 1500.0, 2500.0, 3500.0] {
        trace.extend(std::iter::repeat_n(at(rate), 4));
    }
    let decisions = replay(&config, replicas(1, 1), &trace);
    let prefill: Vec<u32> = decisions.iter().step_by(4).map(|d| d.prefill.target).collect();
    // ceil(rate / 800): 1, 2, 4, 5.
    assert_eq!(prefill, [1, 2, 4, 5]);
    assert_eq!(decisions[4].prefill.reason, Reason::ThroughputModel);
    // The model also keeps the phase from scaling down below what the rate needs while latency is fine.
    assert!(decisions[12..].iter().all(|d| d.prefill.target == 5));
}

#[test]
fn requests_stuck_in_the_router_queue_scale_prefill_before_any_ttft_is_seen() {
    // A burst: 40 requests admitted, none has a first token yet, so the TTFT histogram is empty.
    let stuck = Signals {
        ttft_p50: None,
        ttft_p90: None,
        queued_requests: 40.0,
        queued_prefill_tokens: 30_000.0,
        queued_prefill_tokens_peak: 30_000.0,
        queued_prefill_tokens_growth: 30_000.0,
        ..calm()
    };
    let decisions = replay(&config(), replicas(1, 1), &[stuck]);
    assert_eq!(counts(&decisions), [(2, 1)]);
    assert_eq!(decisions[0].prefill.reason, Reason::RequestsQueued);
}

#[test]
fn a_growing_prefill_backlog_scales_prefill_while_ttft_still_looks_fine() {
    let growing = Signals {
        queued_prefill_tokens: 3_000.0,
        queued_prefill_tokens_peak: 3_000.0,
        queued_prefill_tokens_growth: 1_500.0,
        ..calm()
    };
    let decisions = replay(&config(), replicas(1, 1), &[growing]);
    assert_eq!(decisions[0].prefill.target, 2);
    assert_eq!(decisions[0].prefill.reason, Reason::PrefillBacklog);

    // With a known capacity, a backlog that drains within the SLO is fine, one that does not is not.
    let profiled = PlannerConfig {
        prefill: PhaseLimits {
            tokens_per_s: Some(5_000.0),
            ..limits(1, 8, 1)
        },
        ..config()
    };
    let decisions = replay(
        &profiled,
        replicas(1, 1),
        &[Signals {
            queued_prefill_tokens: 4_000.0,
            ..calm()
        }],
    );
    assert_eq!(decisions[0].prefill.target, 1);
    let decisions = replay(
        &profiled,
        replicas(1, 1),
        &[Signals {
            queued_prefill_tokens: 6_000.0,
            ..calm()
        }],
    );
    assert_eq!(decisions[0].prefill.target, 2);
}

#[test]
fn a_full_kv_cache_blames_decode_for_slow_first_tokens() {
    let decode_bound = Signals {
        ttft_p90: Some(2.0),
        kv_utilization: Some(0.95),
        decode_waiting: 12.0,
        ..calm()
    };
    let decisions = replay(&config(), replicas(2, 2), &[decode_bound]);
    assert_eq!(counts(&decisions), [(2, 4)]);
    assert_eq!(decisions[0].decode.reason, Reason::TtftOverSlo);
    assert_eq!(decisions[0].prefill.reason, Reason::Steady);

    let kv_high = Signals {
        kv_utilization: Some(0.9),
        ..calm()
    };
    let decisions = replay(&config(), replicas(2, 2), &[kv_high]);
    assert_eq!(counts(&decisions), [(2, 3)]);
    assert_eq!(decisions[0].decode.reason, Reason::KvPressure);
}

#[test]
fn bounds_apply_even_before_signals_and_cap_every_scale_up() {
    let config = PlannerConfig {
        prefill: limits(0, 2, 1),
        decode: limits(1, 3, 1),
        ..config()
    };
    let first = Signals::default(); // one snapshot: no window yet
    let decisions = replay(&config, replicas(0, 0), std::slice::from_ref(&first));
    assert_eq!(counts(&decisions), [(0, 1)]);
    assert_eq!(decisions[0].prefill.reason, Reason::NoSignals);
    assert_eq!(decisions[0].decode.reason, Reason::BelowMin);

    let decisions = replay(&config, replicas(5, 5), &[first]);
    assert_eq!(counts(&decisions), [(2, 3)]);
    assert_eq!(decisions[0].prefill.reason, Reason::AboveMax);

    let overload = Signals {
        ttft_p90: Some(10.0),
        itl_p90: Some(1.0),
        ..calm()
    };
    let decisions = replay(&config, replicas(1, 2), &[overload]);
    assert_eq!(counts(&decisions), [(2, 3)]);
}

#[test]
fn prefill_scales_from_zero_and_back_to_zero() {
    let config = PlannerConfig {
        prefill: limits(0, 2, 1),
        decode: limits(1, 1, 1),
        cooldown_secs: 20.0,
        scale_down_windows: 2,
        ..config()
    };
    let long = Signals {
        ttft_p90: Some(3.0),
        queued_prefill_tokens: 2_000.0,
        queued_prefill_tokens_peak: 2_000.0,
        ..calm()
    };
    let trace = [long.clone(), long, idle(), idle(), idle(), idle()];
    let decisions = replay(&config, replicas(0, 1), &trace);
    let prefill: Vec<u32> = decisions.iter().map(|d| d.prefill.target).collect();
    assert_eq!(prefill, [1, 1, 1, 0, 0, 0]);
    assert_eq!(decisions[3].prefill.reason, Reason::Headroom);
}

#[test]
fn capacity_is_learned_from_saturated_windows() {
    let mut state = PlannerState::default();
    let config = config();
    let saturated = Signals {
        prefill_tokens_per_s: 3_000.0,
        queued_prefill_tokens: 10_000.0,
        queued_prefill_tokens_peak: 10_000.0,
        queued_prefill_tokens_low: 8_000.0,
        queued_prefill_tokens_growth: 0.0,
        ..calm()
    };
    let saturated = Signals {
        decode_waiting: 6.0,
        ..saturated
    };
    decide(&saturated, replicas(2, 2), &config, &mut state, 0.0);
    assert_eq!(state.prefill.estimated_tokens_per_s, Some(1_500.0));
    // Decode sequences waiting behind a prefill backlog say nothing about decode capacity.
    assert_eq!(state.decode.estimated_tokens_per_s, None);
    // Later, 6000 tokens/s of prompts need ceil(6000 / (1500 × 0.8)) = 5 replicas.
    let busy = Signals {
        prefill_tokens_per_s: 6_000.0,
        ..calm()
    };
    let d = decide(&busy, replicas(2, 2), &config, &mut state, 100.0);
    assert_eq!(d.prefill.target, 5);
    assert_eq!(d.prefill.reason, Reason::ThroughputModel);

    // Decode saturated on its own (sequences waiting, no prompts queued): 400 tokens/s from 2 replicas.
    let decode_bound = Signals {
        decode_waiting: 4.0,
        decode_tokens_per_s: 400.0,
        ..calm()
    };
    decide(&decode_bound, replicas(5, 2), &config, &mut state, 200.0);
    assert_eq!(state.decode.estimated_tokens_per_s, Some(200.0));
}

#[test]
fn invalid_configurations_are_rejected_with_the_setting_named() {
    let mut c = config();
    c.prefill.min = 9;
    assert!(c.validate().unwrap_err().contains("prefill min"));
    let mut c = config();
    c.gpu_budget = 1;
    assert!(c.validate().unwrap_err().contains("GPU budget"));
    let mut c = config();
    c.ttft_slo = 0.0;
    assert!(c.validate().is_err());
    assert!(config().validate().is_ok());
}
