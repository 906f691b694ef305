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
