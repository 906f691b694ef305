//! Parallel groups as real processes: `cleave worker --tensor-parallel 3` starts its two follower ranks itself,
//! forms the group through a real etcd and a TCP mesh, registers once (tensor = 3) and serves the golden tokens
//! through a router — as a prefill worker too, its KV gathered from every rank and shipped to a decode worker.
//! `--expert-parallel 2` serves the tiny Mixtral fixture with transformers' greedy tokens; a `--context-parallel 2`
//! prefill worker (ring attention) feeds a decode worker the golden prompts' KV.
//! A `--pipeline-parallel 2 --tensor-parallel 3` decode worker (two stages of three tensor-parallel ranks, six
//! processes) takes its prompts' KV from a prefill worker, each rank writing its layers' KV heads, and decodes the
//! golden tokens. SIGTERM ends a whole group cleanly; a follower SIGKILLed
//! in a group started rank by rank fails the next request (no hang) and takes the leader out of the registry with
//! exit status 1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{greedy, registered, spawn_cleave, stream_ids, until};
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_testkit::{ChildGuard, EtcdServer, free_port, golden_prompt};
use tonic::transport::Channel;

fn worker(etcd: &str, id: &str, port: u16, extra: &[&str]) -> ChildGuard {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "worker",
        "--device",
        "cpu",
        "--listen",
        &listen,
        "--kv-cache-mib",
        "64",
        "--etcd",
        etcd,
        "--id",
        id,
        "--lease-ttl-secs",
        "2",
    ];
    args.extend_from_slice(extra);
    spawn_cleave(&args)
}

async fn router(etcd: &str, extra: &[&str]) -> (ChildGuard, GenerationClient<Channel>) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "router",
        "--listen",
        &listen,
        "--etcd",
        etcd,
        "--remote-prefill-min-tokens",
        "16",
    ];
    args.extend_from_slice(extra);
    let child = spawn_cleave(&args);
    let mut client = None;
    until("the router", async || {
        client = GenerationClient::connect(format!("http://127.0.0.1:{port}")).await.ok();
        client.is_some()
    })
    .await;
    (child, client.unwrap())
}

/// Keys under the default prefix's `sub` (e.g. `workers/`, `groups/`), as (key, JSON value).
async fn listing(etcd: &str, sub: &str) -> Vec<(String, serde_json::Value)> {
    let mut client = etcd_client::Client::connect([etcd], None).await.unwrap();
    let opts = etcd_client::GetOptions::new().with_prefix();
    let response = client.get(format!("/cleave/v1/{sub}"), Some(opts)).await.unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| {
            let value = serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null);
            (kv.key_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// The registry record of worker `id`.
async fn record(etcd: &str, id: &str) -> serde_json::Value {
    let workers = listing(etcd, "workers/").await;
    let found = workers.into_iter().find(|(key, _)| key.ends_with(&format!("/{id}")));
    found.map(|(_, v)| v).unwrap()
}

/// The golden tokens of three prompts through the router (the first retried until the router sees the workers),
/// then whether the worker at `port` computed some of them (its prefix cache publishes blocks).
async fn golden_through(client: &GenerationClient<Channel>, port: u16) -> usize {
    let short = golden_prompt("short");
    assert_eq!(
        first_answer(client, greedy(&short.text, 4)).await,
        short.output_ids[..4]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in ["long", "numbers"] {
        let p = golden_prompt(name);
        let ids = stream_ids(client, greedy(&p.text, 8)).await;
        assert_eq!(ids.unwrap(), p.output_ids[..8], "{name}");
    }
    let mut worker = WorkerClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    let snapshot = worker.kv_snapshot(v1::KvSnapshotRequest {}).await.unwrap();
    snapshot.into_inner().block_hashes.len()
}

/// Each member's placement, by rank.
fn placements(members: &[(String, serde_json::Value)]) -> Vec<String> {
    let mut by_rank: Vec<(u64, String)> = members
        .iter()
        .map(|(_, v)| {
            (
                v["rank"].as_u64().unwrap(),
                v["placement"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    by_rank.sort();
    by_rank.into_iter().map(|(_, p)| p).collect()
}

/// Asks until `request` streams its tokens (the router may not have seen the workers' load yet).
async fn first_answer(client: &GenerationClient<Channel>, request: v1::GenerateRequest) -> Vec<u32> {
    let mut ids = None;
    until("a first answer", async || {
        ids = stream_ids(client, request.clone()).await;
        ids.is_some()
    })
    .await;
    ids.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_rank_worker_serves_the_golden_tokens_as_prefill_and_stops_as_a_group() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let (tp_port, decode_port) = (free_port(), free_port());
    let mut tp = worker(
        &endpoint,
        "tp",
        tp_port,
        &["--tensor-parallel", "3", "--role", "prefill"],
    );
    let _decode = worker(&endpoint, "decode", decode_port, &["--role", "decode"]);
    until("both workers registered", async || registered(&endpoint).await == 2).await;
    let record = record(&endpoint, "tp").await;
    assert_eq!(record["parallel"]["tensor"], 3, "{record}");
    let members = listing(&endpoint, "groups/").await;
    assert_eq!(members.len(), 3, "one member key per rank: {members:?}");
    let group = record["group"].as_str().unwrap();
    let placements = placements(&members);
    assert!(
        members
            .iter()
            .all(|(key, _)| key.contains(&format!("/groups/{group}/members/"))),
        "{members:?}"
    );
    assert_eq!(
        placements,
        [
            "tensor rank 0 of 3 on cpu",
            "tensor rank 1 of 3 on cpu",
            "tensor rank 2 of 3 on cpu"
        ]
    );

    let (_router, client) = router(&endpoint, &[]).await;
    assert!(
        golden_through(&client, tp_port).await > 0,
        "the tensor-parallel group prefilled the prompts (its prefix cache holds them)"
    );

    tp.sigterm();
    let status = tp.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the leader exited with {status}");
    until("the followers left the group", async || {
        listing(&endpoint, "groups/").await.is_empty()
    })
    .await;
    until("the leader deregistered", async || registered(&endpoint).await == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipeline_stages_of_three_tensor_ranks_decode_the_golden_tokens_from_a_prefill_workers_kv() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let (pp_port, prefill_port) = (free_port(), free_port());
    let mut pp = worker(
        &endpoint,
        "pp",
        pp_port,
        &[
            "--pipeline-parallel",
            "2",
            "--tensor-parallel",
            "3",
            "--micro-batches",
            "2",
            "--role",
            "decode",
        ],
    );
    let _prefill = worker(&endpoint, "prefill", prefill_port, &["--role", "prefill"]);
    until("both workers registered", async || registered(&endpoint).await == 2).await;
    let record = record(&endpoint, "pp").await;
    assert_eq!(record["parallel"]["pipeline"], 2, "{record}");
    assert_eq!(record["parallel"]["tensor"], 3, "{record}");
    let members = listing(&endpoint, "groups/").await;
    assert_eq!(members.len(), 6, "one member key per rank");
    assert_eq!(
        placements(&members)[5],
        "pipeline stage 1 of 2, tensor rank 2 of 3 on cpu",
        "rank 5 is stage 1's third tensor rank"
    );

    let (_router, client) = router(&endpoint, &[]).await;
    assert!(
        golden_through(&client, prefill_port).await > 0,
        "the prefill worker computed the prompts whose KV the pipeline decoded from"
    );

    pp.sigterm();
    let status = pp.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the first stage exited with {status}");
    until("the second stage left the group", async || {
        listing(&endpoint, "groups/").await.is_empty()
    })
    .await;
}

/// The tiny Mixtral fixture (8 experts, top-2) and transformers' greedy continuation of its reference text.
fn tiny_mixtral() -> (String, String, Vec<u32>) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/engine/tests/fixtures");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("tiny-mixtral-reference.json")).unwrap()).unwrap();
    let greedy = reference["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let dir = fixtures.join("tiny-mixtral").to_string_lossy().into_owned();
    (dir, reference["text"].as_str().unwrap().to_owned(), greedy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_rank_expert_parallel_worker_serves_a_mixture_of_experts() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let (dir, text, greedy_ids) = tiny_mixtral();
    let mut ep = worker(
        &endpoint,
        "ep",
        free_port(),
        &["--model", &dir, "--expert-parallel", "2"],
    );
    until("the group registered", async || registered(&endpoint).await == 1).await;
    let record = record(&endpoint, "ep").await;
    assert_eq!(record["parallel"]["expert"], 2, "{record}");
    assert_eq!(listing(&endpoint, "groups/").await.len(), 2, "one member key per rank");

    let (_router, client) = router(&endpoint, &["--model", &dir]).await;
    let ids = first_answer(&client, greedy(&text, greedy_ids.len() as u32)).await;
    assert_eq!(
        ids, greedy_ids,
        "transformers' greedy tokens through two expert-parallel ranks"
    );

    ep.sigterm();
    assert!(ep.wait_exit(Duration::from_secs(30)).success());
    until("the group ended", async || {
        listing(&endpoint, "groups/").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_parallel_prefill_worker_feeds_a_decode_worker() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let cp_port = free_port();
    let mut cp = worker(
        &endpoint,
        "cp",
        cp_port,
        &["--context-parallel", "2", "--role", "prefill"],
    );
    let _decode = worker(&endpoint, "decode", free_port(), &["--role", "decode"]);
    until("both workers registered", async || registered(&endpoint).await == 2).await;
    let record = record(&endpoint, "cp").await;
    assert_eq!(record["parallel"]["context"], 2, "{record}");

    let (_router, client) = router(&endpoint, &[]).await;
    assert!(
        golden_through(&client, cp_port).await > 0,
        "the context-parallel group prefilled the prompts (ring attention) and the decode worker continued them"
    );
    cp.sigterm();
    assert!(cp.wait_exit(Duration::from_secs(30)).success());
    until("the group ended", async || {
        listing(&endpoint, "groups/").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_fails_requests_promptly_and_takes_the_leader_out() {
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let group = ["--tensor-parallel", "3", "--group", "g1", "--group-rank"];
    let rank = |r: &'static str, port: u16| {
        let mut extra = group.to_vec();
        extra.push(r);
        worker(&endpoint, &format!("tp-rank-{r}"), port, &extra)
    };
    let (p0, p1, p2) = (free_port(), free_port(), free_port());
    let mut leader = rank("0", p0);
    let _follower = rank("1", p1);
    let victim = rank("2", p2);
    until("the leader registered", async || registered(&endpoint).await == 1).await;
    let (_router, client) = router(&endpoint, &[]).await;
    let numbers = golden_prompt("numbers");
    assert_eq!(
        first_answer(&client, greedy(&numbers.text, 8)).await,
        numbers.output_ids[..8]
    );

    drop(victim);
    let started = Instant::now();
    let failed = tokio::time::timeout(Duration::from_secs(30), stream_ids(&client, greedy(&numbers.text, 8)))
        .await
        .expect("a request to a broken group hangs");
    assert!(failed.is_none(), "a broken group answered: {failed:?}");
    let status = leader.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(1),
        "the leader of a broken group exits with status 1"
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    until("the leader deregistered", async || registered(&endpoint).await == 0).await;
}

#[test]
fn group_sizes_that_do_not_fit_are_refused_at_start() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let etcd = "http://127.0.0.1:1";
    let (code, err) = run(&["worker", "--device", "cpu", "--tensor-parallel", "2", "--etcd", etcd]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("9 attention heads") && err.contains("allows 1, 3"),
        "{err}"
    );
    let (code, err) = run(&["worker", "--device", "cpu", "--tensor-parallel", "3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("needs --etcd"), "{err}");
    let (code, err) = run(&[
        "worker",
        "--device",
        "cpu",
        "--tensor-parallel",
        "3",
        "--etcd",
        etcd,
        "--group",
        "g",
        "--group-rank",
        "3",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--group-rank 3 is outside"), "{err}");
    let cpu_worker = ["worker", "--device", "cpu", "--etcd", etcd];
    let refused = [
        (
            &["--pipeline-parallel", "2", "--expert-parallel", "3"][..],
            "only tensor with pipeline combine",
        ),
        (
            &["--context-parallel", "2", "--tensor-parallel", "3"][..],
            "only tensor with pipeline combine",
        ),
        (
            &["--pipeline-parallel", "31"][..],
            "31 stages cannot split the model's 30 layers",
        ),
        (
            &["--pipeline-parallel", "2", "--role", "prefill"][..],
            "cannot take --role prefill",
        ),
        (&["--expert-parallel", "3"][..], "has no experts"),
    ];
    let cases = refused
        .iter()
        .map(|(extra, expected)| ([&cpu_worker[..], extra].concat(), expected));
    for (args, expected) in cases {
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
