use super::*;

fn cand(worker: WorkerIdx, running: u32, queued: u64, cached_blocks: usize) -> Candidate {
    Candidate {
        worker,
        load: WorkerLoad {
            running,
            queued_prefill_tokens: queued,
            total_blocks: 100,
            free_blocks: 50,
            waiting: 0,
        },
        cached_blocks,
    }
}

#[test]
fn the_worker_holding_the_prefix_wins_when_loads_are_equal() {
    let config = PolicyConfig::default();
    let d = choose(1000, &[cand(0, 2, 0, 0), cand(1, 2, 0, 40)], &config).unwrap();
    assert_eq!(d.worker, 1);
    assert_eq!(d.cached_tokens, 640);
}

#[test]
fn a_hot_worker_loses_once_its_queue_outweighs_the_cache() {
    let config = PolicyConfig::default();
    // 640 cached tokens are worth less than 2000 queued prefill tokens.
    let d = choose(1000, &[cand(0, 2, 0, 0), cand(1, 2, 2000, 40)], &config).unwrap();
    assert_eq!(d.worker, 0);
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_token() {
    let d = choose(32, &[cand(0, 0, 0, 2)], &PolicyConfig::default()).unwrap();
    assert_eq!(d.cached_tokens, 31);
    assert_eq!(d.cost, 1.0);
}

#[test]
fn ties_go_to_the_less_loaded_then_the_lower_index() {
    let config = PolicyConfig {
        sequence_cost_tokens: 0.0,
        ..PolicyConfig::default()
    };
    assert_eq!(
        choose(10, &[cand(3, 5, 0, 0), cand(1, 1, 0, 0)], &config)
            .unwrap()
            .worker,
        1
    );
    assert_eq!(
        choose(10, &[cand(3, 1, 0, 0), cand(1, 1, 0, 0)], &config)
            .unwrap()
            .worker,
        1
    );
    assert!(choose(10, &[], &config).is_none());
}

fn prefill_cand(worker: WorkerIdx, queued: u64, free_blocks: u32, cached_blocks: usize) -> Candidate {
    Candidate {
        load: WorkerLoad {
            queued_prefill_tokens: queued,
            free_blocks,
            ..cand(worker, 0, 0, 0).load
        },
        ..cand(worker, 0, 0, cached_blocks)
    }
}

#[test]
fn a_long_uncached_prompt_is_prefilled_remotely_on_the_cheapest_prefill_worker() {
    let config = PolicyConfig::default();
    // Prefill worker 3 holds 20 blocks of the prompt; worker 2 holds none and has the same (empty) queue.
    let plan = plan_route(
        1000,
        &[cand(0, 1, 0, 0)],
        &[prefill_cand(2, 0, 10, 0), prefill_cand(3, 0, 10, 20)],
        &config,
    )
    .unwrap();
    assert_eq!(plan.reason, PrefillReason::Remote);
    assert_eq!(plan.decode.worker, 0);
    let p = plan.prefill.unwrap();
    assert_eq!(p.worker, 3);
    assert_eq!(p.cached_tokens, 320);
    assert_eq!(p.cost, 680.0);
    assert_eq!(plan.uncached_tokens(1000), 1000);
    assert_eq!(plan.reason.to_string(), "remote");
}

#[test]
fn a_short_prompt_is_prefilled_where_it_decodes() {
    let config = PolicyConfig::default();
    let plan = plan_route(255, &[cand(0, 0, 0, 0)], &[prefill_cand(1, 0, 10, 0)], &config).unwrap();
    assert_eq!(plan.reason, PrefillReason::ShortPrompt);
    assert_eq!(plan.prefill, None);
    assert_eq!(plan.reason.to_string(), "local: short prompt");
    // Exactly at the threshold the prompt goes remote.
    let plan = plan_route(256, &[cand(0, 0, 0, 0)], &[prefill_cand(1, 0, 10, 0)], &config).unwrap();
    assert_eq!(plan.reason, PrefillReason::Remote);
}

#[test]
fn a_long_prompt_mostly_cached_on_the_decode_worker_stays_local() {
    let config = PolicyConfig::default();
    // 1000 tokens, 50 blocks (800 tokens) cached on D: 200 left to compute, below 256.
    let plan = plan_route(1000, &[cand(0, 0, 0, 50)], &[prefill_cand(1, 0, 10, 0)], &config).unwrap();
    assert_eq!(plan.reason, PrefillReason::ShortPrompt);
    assert_eq!(plan.decode.cached_tokens, 800);
    assert_eq!(plan.uncached_tokens(1000), 200);
}

#[test]
fn without_prefill_headroom_the_prompt_is_prefilled_locally() {
    let config = PolicyConfig::default();
    let decode = [cand(0, 0, 0, 0)];
    for prefill in [
        vec![],
        vec![prefill_cand(1, 8192, 10, 0)],
        vec![prefill_cand(1, 0, 0, 0)],
        vec![prefill_cand(1, 9000, 10, 0), prefill_cand(2, 100, 0, 40)],
    ] {
        let plan = plan_route(1000, &decode, &prefill, &config).unwrap();
        assert_eq!(plan.reason, PrefillReason::NoPrefillHeadroom, "{prefill:?}");
        assert_eq!(plan.prefill, None);
        assert_eq!(plan.reason.to_string(), "local: no prefill worker with headroom");
    }
    // A worker just under the limit with one free block still qualifies, even if a busier-but-cached one does not.
    let plan = plan_route(
        1000,
        &decode,
        &[prefill_cand(1, 8191, 1, 0), prefill_cand(2, 9000, 10, 60)],
        &config,
    )
    .unwrap();
    assert_eq!(plan.prefill.unwrap().worker, 1);
}

#[test]
fn a_loaded_prefill_worker_loses_to_an_idle_one_despite_its_cache() {
    let config = PolicyConfig::default();
    // 320 cached tokens are worth less than 4000 queued.
    let plan = plan_route(
        1000,
        &[cand(0, 0, 0, 0)],
        &[prefill_cand(1, 4000, 10, 20), prefill_cand(2, 0, 10, 0)],
        &config,
    )
    .unwrap();
    assert_eq!(plan.prefill.unwrap().worker, 2);
}

#[test]
fn the_decode_worker_is_chosen_by_the_same_cost_and_none_without_one() {
    let config = PolicyConfig::default();
    let plan = plan_route(
        1000,
        &[cand(0, 2, 0, 0), cand(1, 2, 0, 40)],
        &[prefill_cand(2, 0, 10, 0)],
        &config,
    )
    .unwrap();
    assert_eq!(
        plan.decode,
        choose(1000, &[cand(0, 2, 0, 0), cand(1, 2, 0, 40)], &config).unwrap()
    );
    assert_eq!(plan.decode.worker, 1);
    assert_eq!(plan.reason, PrefillReason::Remote);
    assert!(plan_route(1000, &[], &[prefill_cand(2, 0, 10, 0)], &config).is_none());
}

#[test]
fn decode_headroom_needs_a_short_queue_and_room_for_the_prompt() {
    let config = PolicyConfig {
        max_waiting_per_worker: 2,
        ..PolicyConfig::default()
    };
    let load = |free_blocks, total_blocks| WorkerLoad {
        free_blocks,
        total_blocks,
        ..WorkerLoad::default()
    };
    assert_eq!(prompt_blocks(33, &config), 3);
    assert!(has_decode_headroom(&load(3, 100), 1, 33, &config));
    assert!(
        !has_decode_headroom(&load(100, 100), 2, 33, &config),
        "queue at its bound"
    );
    assert!(
        !has_decode_headroom(&load(2, 100), 0, 33, &config),
        "prompt does not fit"
    );
    assert!(
        has_decode_headroom(&load(0, 0), 0, 33, &config),
        "capacity not reported yet"
    );
    assert!(
        has_decode_headroom(&load(1, 2), 0, 33, &config),
        "larger than the whole cache: the worker decides"
    );
    let queue_only = PolicyConfig {
        kv_headroom: false,
        ..config
    };
    assert!(has_decode_headroom(&load(2, 100), 0, 33, &queue_only));
}
