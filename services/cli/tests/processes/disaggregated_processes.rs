//! Disaggregated serving as separate processes on loopback: a real etcd, a router, a prefill worker and a decode
//! worker. Prompts long enough go decode worker → prefill worker → KV over TCP → decode, and stream exactly the
//! transformers golden tokens; a prefill worker SIGKILLed in the middle of a prompt leaves the request to finish by
//! local prefill on the decode worker, with the same tokens and no hang.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::time::{Duration, Instant};

use crate::common::{greedy, registered, spawn_cleave, stream_ids, until};
use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_testkit::{EtcdServer, free_port, golden_prompt};

fn worker(etcd: &str, id: &str, role: &str, port: u16) -> cleave_testkit::ChildGuard {
    spawn_cleave(&[
        "worker",
        "--role",
        role,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--kv-cache-mib",
        "64",
        "--etcd",
        etcd,
        "--id",
        id,
        "--lease-ttl-secs",
        "2",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaggregated_requests_give_the_golden_tokens_and_survive_a_killed_prefill_worker() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let (prefill_port, decode_port, router_port) = (free_port(), free_port(), free_port());
    let mut prefill = Some(worker(&endpoint, "p1", "prefill", prefill_port));
    let _decode = worker(&endpoint, "d1", "decode", decode_port);
    until("both workers registered", async || registered(&endpoint).await == 2).await;
    let _router = spawn_cleave(&[
        "router",
        "--listen",
        &format!("127.0.0.1:{router_port}"),
        "--etcd",
        &endpoint,
        "--remote-prefill-min-tokens",
        "16",
    ]);
    let router_url = format!("http://127.0.0.1:{router_port}");
    let prefill_url = format!("http://127.0.0.1:{prefill_port}");

    // A long prompt whose prefill runs on the prefill worker, its KV shipped to the decode worker.
    let long = golden_prompt("long");
    let mut client = None;
    until("the router", async || {
        client = v1::generation_client::GenerationClient::connect(router_url.clone())
            .await
            .ok();
        client.is_some()
    })
    .await;
    let client = client.unwrap();
    // A short prompt first (prefilled locally), then time for the router to see both workers' load.
    let short = golden_prompt("short");
    let mut ids = None;
    until("a first answer", async || {
        ids = stream_ids(&client, greedy(&short.text, 4)).await;
        ids.is_some()
    })
    .await;
    assert_eq!(ids.unwrap(), short.output_ids[..4]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let numbers = golden_prompt("numbers");
    let ids = stream_ids(&client, greedy(&numbers.text, 8)).await;
    assert_eq!(ids.unwrap(), numbers.output_ids[..8]);
    let mut p = WorkerClient::connect(prefill_url.clone()).await.unwrap();
    let published = p.kv_snapshot(v1::KvSnapshotRequest {}).await.unwrap().into_inner();
    assert!(
        !published.block_hashes.is_empty(),
        "the prefill worker computed the prompt (its prefix cache holds it)"
    );

    // The prefill worker dies while it computes a 650-token prompt: the request still ends with the golden tokens.
    let mut load = p
        .subscribe_load(v1::SubscribeLoadRequest { interval_ms: 10 })
        .await
        .unwrap()
        .into_inner();
    let request = tokio::spawn({
        let client = client.clone();
        let req = greedy(&long.text, 8);
        async move { stream_ids(&client, req).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.message().await.unwrap().unwrap().running == 0 {
        assert!(
            Instant::now() < deadline,
            "the prefill worker never took the long prompt"
        );
    }
    drop(prefill.take());
    let ids = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .expect("the request hangs after its prefill worker died")
        .unwrap();
    assert_eq!(ids.expect("the request failed"), long.output_ids[..8]);

    // With the prefill worker gone, requests are prefilled on the decode worker.
    until("the prefill worker's lease expired", async || {
        registered(&endpoint).await == 1
    })
    .await;
    let ids = stream_ids(&client, greedy(&numbers.text, 8)).await;
    assert_eq!(ids.unwrap(), numbers.output_ids[..8]);
}
