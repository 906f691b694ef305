//! The planner's local executor end to end on a CPU cluster of real processes: a real etcd, a `cleave router`,
//! and a `cleave planner --executor local` that starts its own `cleave worker` processes. The planner first
//! brings decode up to its minimum; a ramp of long prompts then pushes TTFT over its target and the planner adds
//! a prefill worker (which registers, so the router sends it prompts); once the load stops, the planner removes
//! it again after the headroom windows and the cool-down.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{registered, spawn_cleave, stream_ids, until};
use cleave_proto::v1;
use cleave_testkit::{EtcdServer, free_port, golden_prompt};

/// Registered workers by role: (prefill, decode).
async fn roles(etcd: &str) -> Option<(usize, usize)> {
    let mut client = etcd_client::Client::connect([etcd], None).await.ok()?;
    let opts = etcd_client::GetOptions::new().with_prefix();
    let response = client.get("/cleave/v1/workers/", Some(opts)).await.ok()?;
    let mut counts = (0, 0);
    for kv in response.kvs() {
        let record: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
        match record["role"].as_str() {
            Some("prefill") => counts.0 += 1,
            Some("decode") => counts.1 += 1,
            _ => {}
        }
    }
    Some(counts)
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    start.elapsed()
}

async fn metrics(port: u16) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_planner_adds_a_prefill_worker_under_long_prompts_and_removes_it_after() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let (router_port, router_metrics, planner_metrics) = (free_port(), free_port(), free_port());
    let _router = spawn_cleave(&[
        "router",
        "--listen",
        &format!("127.0.0.1:{router_port}"),
        "--etcd",
        &endpoint,
        "--remote-prefill-min-tokens",
        "16",
        "--metrics-listen",
        &format!("127.0.0.1:{router_metrics}"),
    ]);
    let mut planner = spawn_cleave(&[
        "planner",
        "--executor",
        "local",
        "--etcd",
        &endpoint,
        "--router-metrics",
        &format!("127.0.0.1:{router_metrics}"),
        "--ttft-slo-ms",
        "1500",
        "--itl-slo-ms",
        "60000",
        "--min-prefill",
        "0",
        "--max-prefill",
        "1",
        "--min-decode",
        "1",
        "--max-decode",
        "1",
        "--interval-secs",
        "1",
        "--window-secs",
        "4",
        "--cooldown-secs",
        "8",
        "--scale-down-intervals",
        "3",
        "--metrics-listen",
        &format!("127.0.0.1:{planner_metrics}"),
        "--worker-arg=--kv-cache-mib=64",
        "--worker-arg=--lease-ttl-secs=2",
        "--worker-arg=--drain-secs=5",
    ]);

    // The planner raises decode to its minimum: one decode worker, no prefill worker.
    wait_for("the planner's decode worker", Duration::from_secs(60), async || {
        roles(&endpoint).await == Some((0, 1))
    })
    .await;
    let client = v1::generation_client::GenerationClient::connect(format!("http://127.0.0.1:{router_port}"))
        .await
        .unwrap();
    let short = golden_prompt("short");
    let greedy = |text: &str, max_tokens: u32| v1::GenerateRequest {
        prompt: text.into(),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    };
    until("a first answer through the router", async || {
        stream_ids(&client, greedy(&short.text, 2)).await.is_some()
    })
    .await;

    // The ramp: three clients sending ~650-token prompts back to back, prefilled on the decode worker itself.
    let long = golden_prompt("long");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (client, request, stop, served) = (client.clone(), greedy(&long.text, 4), stop.clone(), served.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if stream_ids(&client, request.clone()).await.is_some() {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let up = wait_for(
        "the planner to add a prefill worker",
        Duration::from_secs(90),
        async || roles(&endpoint).await.is_some_and(|(prefill, _)| prefill == 1),
    )
    .await;
    eprintln!("prefill worker registered {up:?} into the ramp");
    // Keep the load on a little while the router starts using the new worker, then stop it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c).await.unwrap().unwrap();
    }
    assert!(served.load(Ordering::Relaxed) > 0, "no long prompt was served");
    let text = metrics(planner_metrics).await;
    let scaled_up: f64 = [
        "ttft_over_slo",
        "requests_queued",
        "prefill_backlog",
        "throughput_model",
    ]
    .iter()
    .map(|reason| {
        sample(
            &text,
            &format!("cleave_planner_decisions_total{{phase=\"prefill\",reason=\"{reason}\"}}"),
        )
    })
    .sum();
    assert!(scaled_up >= 1.0, "the prefill scale-up was not for load:\n{text}");

    // Idle: headroom for three intervals after the 8 s cool-down, then the prefill worker is stopped.
    let down = wait_for(
        "the planner to remove the prefill worker",
        Duration::from_secs(60),
        async || roles(&endpoint).await == Some((0, 1)),
    )
    .await;
    eprintln!("prefill worker gone {down:?} after the load stopped");
    let text = metrics(planner_metrics).await;
    for line in text.lines().filter(|l| l.starts_with("cleave_planner_decisions_total")) {
        eprintln!("{line}");
    }
    assert!(
        sample(
            &text,
            "cleave_planner_decisions_total{phase=\"prefill\",reason=\"headroom\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "cleave_planner_desired_replicas{phase=\"prefill\"}"), 0.0);

    // The placement record follows the decisions.
    let mut etcd_client = etcd_client::Client::connect([endpoint.as_str()], None).await.unwrap();
    let response = etcd_client
        .get(
            "/cleave/v1/placement/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(response.kvs()[0].value()).unwrap();
    assert_eq!(record["prefill_replicas"], 0);
    assert_eq!(record["decode_replicas"], 1);

    // SIGTERM stops the planner, and with it its workers.
    planner.sigterm();
    planner.wait_exit(Duration::from_secs(40));
    until("the planner's workers to deregister", async || {
        registered(&endpoint).await == 0
    })
    .await;
}
