//! Signals from real exposition text: `cleave-telemetry` renders the router's and workers' metrics exactly as a
//! running cluster serves them, and the window must see only what happened between two scrapes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cleave_telemetry::{Telemetry, WorkerLabels, WorkerSample, WorkerSampler, to_prometheus_text};

use super::*;
use crate::exposition::parse;

struct FixedSample(Mutex<WorkerSample>);

impl WorkerSampler for FixedSample {
    fn sample(&self) -> Pin<Box<dyn Future<Output = Option<WorkerSample>> + Send + '_>> {
        let sample = *self.0.lock().unwrap();
        Box::pin(async move { Some(sample) })
    }
}

fn worker(telemetry: &Telemetry, id: &str, role: &str, sample: WorkerSample) -> Arc<FixedSample> {
    let sampler = Arc::new(FixedSample(Mutex::new(sample)));
    let labels = WorkerLabels {
        worker: id.into(),
        role: role.into(),
    };
    telemetry.workers.worker(labels, sampler.clone());
    sampler
}

async fn snapshot(telemetry: &Telemetry, at: f64, classic: bool) -> Snapshot {
    let text = telemetry.scrape().await.unwrap();
    let text = if classic { to_prometheus_text(&text) } else { text };
    let samples = parse(&text);
    Snapshot::fold(at, [samples.as_slice()])
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test]
async fn windowed_quantiles_and_rates_see_only_the_window() {
    for classic in [false, true] {
        let telemetry = Telemetry::new();
        let r = &telemetry.router;
        // Before the window: 100 fast requests.
        for _ in 0..100 {
            r.observe_time_to_first_token(Duration::from_millis(100));
            r.observe_inter_token(Duration::from_millis(10), 1);
            r.count_request("ok");
            r.count_routed("local", 50);
        }
        let first = snapshot(&telemetry, 0.0, classic).await;
        // Inside the 10-second window: 10 slow requests of 1000 prompt tokens (200 cached), 20 tokens each.
        for _ in 0..10 {
            r.observe_time_to_first_token(Duration::from_secs(3));
            r.observe_queue_wait(Duration::from_millis(1500));
            for _ in 0..20 {
                r.observe_inter_token(Duration::from_millis(40), 1);
            }
            r.count_request("ok");
            r.count_routed("remote", 1000);
            r.count_cached_tokens(200);
            r.count_generated_tokens(20);
        }
        let last = snapshot(&telemetry, 10.0, classic).await;
        let s = signals_between(&first, &last, [&first, &last].into_iter());
        // All ten TTFTs lie in the (2.048, 4.096] bucket: Prometheus-style interpolation inside it.
        assert!(close(s.ttft_p50, 2.048 + 2.048 * 0.5), "{classic}: {:?}", s.ttft_p50);
        assert!(close(s.ttft_p90, 2.048 + 2.048 * 0.9), "{:?}", s.ttft_p90);
        // 40 ms per token lies in (0.032, 0.064].
        assert!(close(s.itl_p90, 0.032 + 0.032 * 0.9), "{:?}", s.itl_p90);
        assert!(close(s.queue_wait_p90, 1.024 + 1.024 * 0.9), "{:?}", s.queue_wait_p90);
        assert_eq!(s.window_secs, 10.0);
        assert!((s.request_rate - 1.0).abs() < 1e-9);
        assert!((s.prefill_tokens_per_s - 800.0).abs() < 1e-9);
        assert!((s.decode_tokens_per_s - 20.0).abs() < 1e-9);
        assert!(close(s.mean_input_tokens, 1000.0));
        assert!(close(s.mean_output_tokens, 20.0));
        // The whole history, by contrast, is dominated by the fast requests.
        let whole = last.ttft.quantile(0.5).unwrap();
        assert!(whole < 0.2, "{whole}");
    }
}

#[tokio::test]
async fn worker_gauges_fold_by_phase_with_queue_peak_growth_and_kv_utilisation() {
    let telemetry = Telemetry::new();
    let p1 = worker(
        &telemetry,
        "p1",
        "prefill",
        WorkerSample {
            queued_prefill_tokens: 1000,
            running: 1,
            ..WorkerSample::default()
        },
    );
    worker(
        &telemetry,
        "d1",
        "decode",
        WorkerSample {
            kv_blocks_used: 30,
            kv_blocks_free: 70,
            waiting: 2,
            running: 5,
            queued_prefill_tokens: 100,
            ..WorkerSample::default()
        },
    );
    worker(
        &telemetry,
        "b1",
        "both",
        WorkerSample {
            kv_blocks_used: 60,
            kv_blocks_free: 40,
            ..WorkerSample::default()
        },
    );
    let mut window = SignalWindow::new(30.0);
    window.push(snapshot(&telemetry, 0.0, false).await);
    let first = window.signals().unwrap();
    assert_eq!(first.window_secs, 0.0);
    assert_eq!((first.prefill_workers_seen, first.decode_workers_seen), (1, 2));

    p1.0.lock().unwrap().queued_prefill_tokens = 9000;
    window.push(snapshot(&telemetry, 10.0, false).await);
    p1.0.lock().unwrap().queued_prefill_tokens = 4000;
    window.push(snapshot(&telemetry, 20.0, false).await);
    let s = window.signals().unwrap();
    assert_eq!(s.queued_prefill_tokens, 4100.0);
    assert_eq!(s.queued_prefill_tokens_peak, 9100.0);
    assert_eq!(s.queued_prefill_tokens_low, 1100.0);
    assert_eq!(s.queued_prefill_tokens_growth, 3000.0);
    assert!(close(s.kv_utilization, 90.0 / 200.0));
    assert_eq!(s.decode_waiting, 2.0);
    assert_eq!(s.ttft_p90, None, "no requests, no quantile");

    // Snapshots older than the window go, keeping the last one at or before its start (t=10 for t=15).
    window.push(snapshot(&telemetry, 45.0, false).await);
    assert_eq!(window.len(), 3);
    assert_eq!(window.signals().unwrap().window_secs, 35.0);
}

#[test]
fn a_counter_reset_counts_from_zero() {
    let hist = |counts: &[(f64, f64)]| Histogram {
        buckets: counts.to_vec(),
    };
    let before = Snapshot {
        at: 0.0,
        requests: 500.0,
        ttft: hist(&[(0.5, 400.0), (1.0, 500.0), (f64::INFINITY, 500.0)]),
        ..Snapshot::default()
    };
    // The router restarted: its totals went down.
    let after = Snapshot {
        at: 10.0,
        requests: 20.0,
        ttft: hist(&[(0.5, 0.0), (1.0, 20.0), (f64::INFINITY, 20.0)]),
        ..Snapshot::default()
    };
    let s = signals_between(&before, &after, [&before, &after].into_iter());
    assert!((s.request_rate - 2.0).abs() < 1e-9);
    assert!(close(s.ttft_p50, 0.75));
}

#[test]
fn quantiles_interpolate_and_stop_at_the_highest_finite_bound() {
    let h = Histogram {
        buckets: vec![(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 110.0)],
    };
    assert!(close(h.quantile(0.25), 0.055));
    assert!(close(h.quantile(0.5), 0.1 + 0.1 * (5.0 / 50.0)));
    assert!(close(h.quantile(0.99), 0.2));
    assert_eq!(Histogram::default().quantile(0.5), None);
}
