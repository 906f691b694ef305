//! `--metrics-listen` on real processes: a real etcd, a worker and a router, each serving Prometheus `/metrics`;
//! after a request through the router, the router counts it and the worker shows its etcd lease held and its
//! engine sampled.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use crate::common::{registered, spawn_cleave, stream_ids, until};
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_testkit::{EtcdServer, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of `GET /metrics` at `addr` (classic text format), or `None` while nothing answers.
async fn scrape(addr: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_and_worker_processes_serve_metrics() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let (worker_port, router_port) = (free_port(), free_port());
    let (worker_metrics, router_metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _worker = spawn_cleave(&[
        "worker",
        "--listen",
        &format!("127.0.0.1:{worker_port}"),
        "--kv-cache-mib",
        "64",
        "--etcd",
        &endpoint,
        "--id",
        "w1",
        "--metrics-listen",
        &worker_metrics,
    ]);
    until("the worker registered", async || registered(&endpoint).await == 1).await;
    let _router = spawn_cleave(&[
        "router",
        "--listen",
        &format!("127.0.0.1:{router_port}"),
        "--etcd",
        &endpoint,
        "--metrics-listen",
        &router_metrics,
    ]);
    let url = format!("http://127.0.0.1:{router_port}");
    let request = v1::GenerateRequest {
        prompt: "The capital of France is".into(),
        max_tokens: Some(4),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    };
    let mut answered = None;
    until("the router answered", async || {
        let Ok(client) = GenerationClient::connect(url.clone()).await else {
            return false;
        };
        answered = stream_ids(&client, request.clone()).await;
        answered.is_some()
    })
    .await;
    assert_eq!(answered.unwrap().len(), 4);

    let router = scrape(&router_metrics).await.expect("the router serves /metrics");
    assert!(
        value(&router, r#"cleave_router_requests_total{outcome="ok"}"#).unwrap() >= 1.0,
        "{router}"
    );
    assert!(
        value(&router, "cleave_router_generated_tokens_total").unwrap() >= 4.0,
        "{router}"
    );
    assert!(value(&router, "cleave_router_time_to_first_token_seconds_count").unwrap() >= 1.0);

    let worker = scrape(&worker_metrics).await.expect("the worker serves /metrics");
    let labels = r#"{worker="w1",role="both"}"#;
    assert_eq!(
        value(&worker, &format!("cleave_worker_etcd_lease_held{labels}")),
        Some(1.0),
        "{worker}"
    );
    assert!(
        value(&worker, &format!("cleave_worker_kv_blocks_free{labels}")).unwrap() > 0.0,
        "{worker}"
    );
    assert_eq!(
        value(&worker, &format!("cleave_worker_running_sequences{labels}")),
        Some(0.0),
        "{worker}"
    );
    // The prompt is shorter than one block: nothing to look up in the prefix cache, but the series is there.
    let queried = format!("cleave_worker_prefix_cache_queried_blocks_total{labels}");
    assert_eq!(value(&worker, &queried), Some(0.0), "{worker}");
}
