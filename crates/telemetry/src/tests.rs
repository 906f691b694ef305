use std::sync::Arc;
use std::time::Duration;

use super::*;

struct Fixed(WorkerSample);

impl WorkerSampler for Fixed {
    fn sample(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<WorkerSample>> + Send + '_>> {
        Box::pin(std::future::ready(Some(self.0)))
    }
}

#[test]
fn router_metrics_render_with_conventional_names() {
    let mut registry = registry();
    let router = RouterMetrics::register(&mut registry);
    router.observe_time_to_first_token(Duration::from_millis(30));
    router.observe_inter_token(Duration::from_millis(20), 2);
    router.count_request("ok");
    router.count_routed("remote", 40);
    router.count_generated_tokens(7);
    let text = render(&registry).unwrap();
    assert!(
        text.contains("# TYPE cleave_router_time_to_first_token_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("cleave_router_time_to_first_token_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("cleave_router_inter_token_latency_seconds_count 2"),
        "{text}"
    );
    assert!(
        text.contains("cleave_router_requests_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("cleave_router_routing_decisions_total{reason=\"remote\"} 1"),
        "{text}"
    );
    assert!(text.contains("cleave_router_prompt_tokens_total 40"), "{text}");
    assert!(text.contains("cleave_router_generated_tokens_total 7"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    // The encoder ends registered help texts with a period itself.
    assert!(!text.contains("..\n"), "{text}");
}

#[tokio::test]
async fn worker_samples_are_read_at_scrape_time_per_worker() {
    let telemetry = Telemetry::new();
    let workers = telemetry.workers.clone();
    let labels = |worker: &str, role: &str| WorkerLabels {
        worker: worker.into(),
        role: role.into(),
    };
    let sample = WorkerSample {
        running: 3,
        kv_blocks_used: 10,
        kv_blocks_free: 90,
        prefix_cache_queried_blocks: 4,
        prefix_cache_hit_blocks: 1,
        preemptions: 2,
        ..WorkerSample::default()
    };
    let kv = workers.worker(labels("p0", "prefill"), Arc::new(Fixed(sample)));
    workers.worker(labels("d0", "decode"), Arc::new(Fixed(WorkerSample::default())));
    kv.record(KvDirection::Sent, "tcp", 4096, Duration::from_millis(3), true);
    workers.set_lease_held(&labels("p0", "prefill"), true);
    let text = telemetry.scrape().await.unwrap();
    let p0 = "{worker=\"p0\",role=\"prefill\"}";
    for line in [
        format!("cleave_worker_running_sequences{p0} 3"),
        format!("cleave_worker_kv_blocks_free{p0} 90"),
        format!("cleave_worker_prefix_cache_hit_ratio{p0} 0.25"),
        format!("cleave_worker_preemptions_total{p0} 2"),
        format!("cleave_worker_etcd_lease_held{p0} 1"),
        "cleave_worker_running_sequences{worker=\"d0\",role=\"decode\"} 0".to_string(),
        "cleave_worker_kv_transfer_bytes_total{worker=\"p0\",role=\"prefill\",direction=\"sent\"} 4096".to_string(),
        "cleave_worker_kv_transfers_total{worker=\"p0\",role=\"prefill\",direction=\"sent\",transport=\"tcp\",outcome=\"ok\"} 1"
            .to_string(),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert_eq!(
        text.matches("# TYPE cleave_worker_running_sequences gauge").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("..\n"), "{text}");
}

#[test]
fn the_classic_text_format_names_counters_with_total_and_drops_openmetrics_lines() {
    let mut registry = registry();
    let router = RouterMetrics::register(&mut registry);
    router.count_request("ok");
    let text = to_prometheus_text(&render(&registry).unwrap());
    assert!(
        text.contains("# HELP cleave_router_requests_total Requests by outcome."),
        "{text}"
    );
    assert!(text.contains("# TYPE cleave_router_requests_total counter"), "{text}");
    assert!(
        text.contains("cleave_router_requests_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE cleave_router_queue_wait_seconds histogram"),
        "{text}"
    );
    assert!(!text.contains("# UNIT") && !text.contains("# EOF"), "{text}");
}
