//! A short load test past saturation, over real loopback HTTP: two simulated workers (timing model, real gRPC)
//! behind the router, requests arriving open-loop at about five times what the workers can serve. With admission
//! control, every request gets 200 or 429; every 429 is immediate, and admitted requests' latency stays bounded
//! near one service time. The same load without admission (bounds opened wide) queues: its latency grows with the
//! backlog — the contrast the test prints and checks. Numbers are recorded in docs/perf.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::post;
use cleave_router::policy::PolicyConfig;
use cleave_router::{AdmissionConfig, Frontend, RouterModel, WorkerEndpoint, WorkerPool};
use cleave_simworker::{SimConfig, SimWorker};
use serde_json::json;

const ARRIVAL_INTERVAL: Duration = Duration::from_millis(1); // 1000 requests/s for 0.6 s
const ARRIVALS: usize = 600;

#[derive(Debug)]
struct Outcome {
    admitted: Vec<Duration>,
    refused: Vec<Duration>,
    other: Vec<u16>,
    wall: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run_load(policy: PolicyConfig, admission: AdmissionConfig) -> Outcome {
    // 16 blocks of 16 tokens hold 8 to 16 requests of a ~10-token prompt plus 16 tokens, ~162 ms each: at most
    // ~100 requests/s per worker, a fifth of the arrival rate for both.
    let config = SimConfig {
        kv_blocks: 16,
        time_to_first_token: Duration::from_millis(2),
        inter_token_latency: Duration::from_millis(10),
        ..SimConfig::default()
    };
    let mut endpoints = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        endpoints.push(WorkerEndpoint::both(format!(
            "http://{}",
            listener.local_addr().unwrap()
        )));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cleave_simworker::serve_worker(
            SimWorker::new(config.clone()).unwrap(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        stops.push(tx);
    }
    let model = Arc::new(RouterModel::from_gguf("smollm2-135m", &cleave_testkit::default_model_path()).unwrap());
    let pool = Arc::new(WorkerPool::start(&endpoints, policy));
    let wait = Instant::now() + Duration::from_secs(10);
    while pool.reachable() < 2 {
        assert!(Instant::now() < wait, "simulated workers never became reachable");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frontend = Arc::new(Frontend::new(model, pool, "load".into()).with_admission(admission));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cleave_router::http::serve_http(
        frontend,
        Default::default(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    stops.push(tx);

    let body = json!({"prompt": "The quick brown fox jumps over the lazy dog", "max_tokens": 16});
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(ARRIVALS);
    let mut ticker = tokio::time::interval(ARRIVAL_INTERVAL);
    for _ in 0..ARRIVALS {
        ticker.tick().await;
        let (addr, body) = (addr.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let reply = post(&addr, "/v1/completions", &body).await;
            (
                reply.status,
                reply.header("retry-after").map(str::to_string),
                sent.elapsed(),
            )
        }));
    }
    let mut outcome = Outcome {
        admitted: Vec::new(),
        refused: Vec::new(),
        other: Vec::new(),
        wall: Duration::ZERO,
    };
    for task in tasks {
        let (status, retry_after, took) = task.await.unwrap();
        match status {
            200 => outcome.admitted.push(took),
            429 => {
                assert_eq!(retry_after.as_deref(), Some("1"), "a 429 says when to retry");
                outcome.refused.push(took);
            }
            other => outcome.other.push(other),
        }
    }
    outcome.wall = started.elapsed();
    outcome.admitted.sort();
    outcome.refused.sort();
    outcome
}

fn report(name: &str, o: &Outcome) {
    eprintln!(
        "{name}: {} admitted (p50 {:?}, p99 {:?}, max {:?}), {} refused (p50 {:?}, p99 {:?}, max {:?}), \
         other {:?}, wall {:?}",
        o.admitted.len(),
        percentile(&o.admitted, 0.5),
        percentile(&o.admitted, 0.99),
        o.admitted.last().copied().unwrap_or_default(),
        o.refused.len(),
        percentile(&o.refused, 0.5),
        percentile(&o.refused, 0.99),
        o.refused.last().copied().unwrap_or_default(),
        o.other,
        o.wall,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_saturation_admitted_latency_stays_bounded_and_refusals_are_immediate() {
    let bounded = run_load(
        PolicyConfig {
            max_waiting_per_worker: 4,
            ..PolicyConfig::default()
        },
        AdmissionConfig {
            max_queued_requests: 16,
            retry_after: Duration::from_secs(1),
        },
    )
    .await;
    report("with admission", &bounded);
    let open = run_load(
        PolicyConfig {
            max_waiting_per_worker: u32::MAX,
            kv_headroom: false,
            ..PolicyConfig::default()
        },
        AdmissionConfig {
            max_queued_requests: usize::MAX,
            retry_after: Duration::from_secs(1),
        },
    )
    .await;
    report("without admission", &open);
    eprintln!(
        "served rate: {:.0}/s with admission, {:.0}/s without",
        bounded.admitted.len() as f64 / bounded.wall.as_secs_f64(),
        open.admitted.len() as f64 / open.wall.as_secs_f64()
    );

    assert!(bounded.other.is_empty(), "only 200 or 429: {:?}", bounded.other);
    assert!(open.other.is_empty(), "only 200: {:?}", open.other);
    assert!(
        bounded.refused.len() > ARRIVALS / 2,
        "five times past saturation most requests are refused"
    );
    // ...and the workers stay busy: the served rate is at least half what an unbounded queue gets out of them.
    let rate = |o: &Outcome| o.admitted.len() as f64 / o.wall.as_secs_f64();
    assert!(
        rate(&bounded) > rate(&open) / 2.0,
        "served {:.0}/s vs {:.0}/s",
        rate(&bounded),
        rate(&open)
    );
    assert!(open.refused.is_empty());
    // Refusals are immediate: no queueing, no worker involved (generous bound for a loaded 2-core machine).
    assert!(
        bounded.refused.last().copied().unwrap() < Duration::from_millis(300),
        "slowest refusal {:?}",
        bounded.refused.last()
    );
    // Admitted requests take about one service time (~162 ms simulated) plus a short bounded wait...
    let bounded_p99 = percentile(&bounded.admitted, 0.99);
    assert!(bounded_p99 < Duration::from_millis(800), "admitted p99 {bounded_p99:?}");
    // ...while without admission the backlog makes the tail several times longer.
    let open_p99 = percentile(&open.admitted, 0.99);
    assert!(
        open_p99 > bounded_p99 * 2,
        "open p99 {open_p99:?} vs bounded {bounded_p99:?}"
    );
}
