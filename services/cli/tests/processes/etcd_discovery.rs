//! Workers register in a real etcd and the router discovers them there: a worker that joins is used, one killed
//! with SIGKILL disappears when its lease expires, and serving goes on through the survivor.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{registered, until};
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_testkit::{ChildGuard, EtcdServer, free_port};

fn spawn(args: &[String]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn worker(etcd: &str, id: &str) -> ChildGuard {
    let port = free_port();
    spawn(&[
        "worker".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--kv-cache-mib".into(),
        "64".into(),
        "--etcd".into(),
        etcd.into(),
        "--id".into(),
        id.into(),
        "--lease-ttl-secs".into(),
        "2".into(),
    ])
}

async fn answer(client: &GenerationClient<tonic::transport::Channel>) -> Option<Vec<u32>> {
    let mut client = client.clone();
    let req = v1::GenerateRequest {
        prompt: "The capital of France is".into(),
        max_tokens: Some(4),
        temperature: Some(0.0),
        ..Default::default()
    };
    let mut stream = client.generate(req).await.ok()?.into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.ok()? {
        ids.extend(msg.token_ids);
    }
    Some(ids)
}

/// A router process discovering workers through `etcd`, and a client connected to it.
async fn router(etcd: &str) -> (ChildGuard, GenerationClient<tonic::transport::Channel>) {
    let port = free_port();
    let child = spawn(&[
        "router".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--etcd".into(),
        etcd.into(),
    ]);
    let mut client = None;
    until("the router", async || {
        client = GenerationClient::connect(format!("http://127.0.0.1:{port}")).await.ok();
        client.is_some()
    })
    .await;
    (child, client.expect("connected"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_workers_registered_in_etcd() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let first = worker(&endpoint, "w1");
    until("w1 registered", async || registered(&endpoint).await == 1).await;

    let (_router, client) = router(&endpoint).await;
    let golden = [7042, 30, 198, 198];
    until("an answer through w1", async || {
        answer(&client).await.as_deref() == Some(&golden[..])
    })
    .await;

    // A second worker joins; the first is killed without deregistering. Its lease (2 s) expires, and requests
    // keep being answered by the second.
    let _second = worker(&endpoint, "w2");
    until("w2 registered", async || registered(&endpoint).await == 2).await;
    drop(first);
    until("w1's lease expired", async || registered(&endpoint).await == 1).await;
    for _ in 0..3 {
        until("an answer through w2", async || {
            answer(&client).await.as_deref() == Some(&golden[..])
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_continues_through_an_etcd_outage_and_registrations_come_back() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let _worker = worker(&endpoint, "w1");
    until("w1 registered", async || registered(&endpoint).await == 1).await;
    let (_router, client) = router(&endpoint).await;
    let golden = [7042, 30, 198, 198];
    until("an answer", async || {
        answer(&client).await.as_deref() == Some(&golden[..])
    })
    .await;

    // etcd down for 3 s (longer than the worker's 2 s lease): the router keeps its last view and keeps serving.
    etcd.stop();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            answer(&client).await.as_deref(),
            Some(&golden[..]),
            "a request failed during the outage"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    etcd.restart().await.unwrap();
    // The worker's registration comes back (same key, new lease if the old one expired), and serving goes on.
    until("w1 registered again", async || registered(&endpoint).await == 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        registered(&endpoint).await,
        1,
        "the registration is kept alive after the outage"
    );
    assert_eq!(answer(&client).await.as_deref(), Some(&golden[..]));
}
