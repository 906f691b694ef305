//! A simulated worker on a loopback port, driven by the real generated tonic client: token counts and timing
//! against the config, prefix-cache hits on a repeated prompt, KV events and snapshots, abort, dropped streams,
//! load reports under KV pressure, and the refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_simworker::{SimConfig, SimWorker, TokenPattern};
use cleave_tokens::block_hashes;
use tonic::transport::Channel;

struct Sim {
    client: WorkerClient<Channel>,
    worker: SimWorker,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(config: SimConfig) -> Sim {
    let worker = SimWorker::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cleave_simworker::serve_worker(worker.clone(), listener, async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    Sim {
        client: WorkerClient::new(channel),
        worker,
        _stop: stop,
    }
}

fn request(id: &str, prompt: Vec<u32>, max_tokens: u32) -> v1::WorkerGenerateRequest {
    v1::WorkerGenerateRequest {
        request_id: id.into(),
        prompt_token_ids: prompt,
        sampling: Some(v1::GenerateRequest {
            max_tokens: Some(max_tokens),
            ..Default::default()
        }),
        remote_prefill: None,
    }
}

fn prompt(len: u32, salt: u32) -> Vec<u32> {
    (0..len).map(|i| i * 7 + salt * 10_000).collect()
}

/// Every response of a stream, with the time each arrived after the call started.
async fn collect(
    client: &mut WorkerClient<Channel>,
    req: v1::WorkerGenerateRequest,
) -> Vec<(Duration, v1::GenerateResponse)> {
    let start = Instant::now();
    let mut stream = client.generate(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        out.push((start.elapsed(), msg));
    }
    out
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_arrive_at_the_configured_ttft_and_inter_token_latency() {
    let config = SimConfig {
        time_to_first_token: Duration::from_millis(20),
        prefill_per_token: Duration::from_micros(100),
        inter_token_latency: Duration::from_millis(10),
        tokens: TokenPattern::Cycle { first: 5, period: 3 },
        token_text: "x".into(),
        ..SimConfig::default()
    };
    let mut sim = start(config).await;
    // 100 uncached tokens × 100 µs = 10 ms of prefill on top of the 20 ms.
    let out = collect(&mut sim.client, request("r1", prompt(100, 0), 12)).await;
    assert_eq!(out.len(), 12);
    let ids: Vec<u32> = out.iter().flat_map(|(_, m)| m.token_ids.clone()).collect();
    assert_eq!(ids, [5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6, 7]);
    assert!(out.iter().all(|(_, m)| m.text == "x"));
    let ttft = out[0].0;
    assert!(
        ttft >= Duration::from_millis(30) && ttft < Duration::from_millis(45),
        "TTFT {ttft:?}, configured 30 ms"
    );
    let total = out[11].0 - ttft;
    let itl = total / 11;
    assert!(
        itl >= Duration::from_micros(9_500) && itl < Duration::from_micros(11_500),
        "mean ITL {itl:?}, configured 10 ms"
    );
    let (_, last) = &out[11];
    assert_eq!(last.finish_reason, v1::FinishReason::Length as i32);
    let usage = last.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens),
        (100, 0, 12)
    );
    assert!(out[..11].iter().all(|(_, m)| m.usage.is_none() && m.finish_reason == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prompt_reuses_its_cached_blocks() {
    let mut sim = start(SimConfig::instant()).await;
    let first = collect(&mut sim.client, request("a", prompt(40, 1), 2)).await;
    assert_eq!(first.last().unwrap().1.usage.unwrap().cached_tokens, 0);
    // 40 tokens, blocks of 16: two full blocks are reusable (the last token is always recomputed).
    let second = collect(&mut sim.client, request("b", prompt(40, 1), 2)).await;
    assert_eq!(second.last().unwrap().1.usage.unwrap().cached_tokens, 32);
    let other = collect(&mut sim.client, request("c", prompt(40, 2), 2)).await;
    assert_eq!(other.last().unwrap().1.usage.unwrap().cached_tokens, 0);
    let stats = sim.worker.stats();
    assert_eq!((stats.running, stats.free_blocks, stats.total_blocks), (0, 4096, 4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_follow_the_cache_and_resume_from_a_sequence_number() {
    let config = SimConfig {
        kv_event_log: 4,
        ..SimConfig::instant()
    };
    let mut sim = start(config).await;
    let snapshot = sim
        .client
        .kv_snapshot(v1::KvSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((snapshot.next_seq, snapshot.block_size), (1, 16));
    assert!(snapshot.block_hashes.is_empty());
    let mut live = sim
        .client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    let tokens = prompt(48, 3);
    collect(&mut sim.client, request("a", tokens.clone(), 1)).await;
    // 48 prompt tokens, 1 generated: 49 tokens, 48 computed → three full blocks published.
    let want: Vec<u64> = block_hashes(&tokens, 16, 0).iter().map(|h| h.0).collect();
    let mut got = Vec::new();
    while got.len() < 3 {
        for e in live.message().await.unwrap().unwrap().events {
            assert!(!e.removed);
            got.push((e.seq, e.block_hash));
        }
    }
    assert_eq!(got, [(1, want[0]), (2, want[1]), (3, want[2])]);
    let snapshot = sim
        .client
        .kv_snapshot(v1::KvSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut held = snapshot.block_hashes.clone();
    held.sort_unstable();
    let mut want_sorted = want.clone();
    want_sorted.sort_unstable();
    assert_eq!((held, snapshot.next_seq), (want_sorted, 4));

    // Resuming replays the backlog from that number on.
    let mut resumed = sim
        .client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest { from_seq: 2 })
        .await
        .unwrap()
        .into_inner();
    let backlog = resumed.message().await.unwrap().unwrap().events;
    assert_eq!(backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);

    // Two more prompts overflow the 4-record log: resuming from 1 is a gap.
    collect(&mut sim.client, request("b", prompt(48, 4), 1)).await;
    let err = sim
        .client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest { from_seq: 1 })
        .await
        .expect_err("sequence 1 was dropped from the log");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    let err = sim
        .client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest { from_seq: 100 })
        .await
        .expect_err("sequence 100 does not exist yet");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_a_dropped_stream_free_the_request() {
    let config = SimConfig {
        time_to_first_token: Duration::ZERO,
        inter_token_latency: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let mut sim = start(config).await;
    let mut stream = sim
        .client
        .generate(request("long", prompt(20, 5), 1000))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    assert_eq!(sim.worker.stats().running, 1);
    let found = sim
        .client
        .abort(v1::AbortRequest {
            request_id: "long".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .found;
    assert!(found);
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("an aborted stream ends with CANCELLED"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Cancelled);
    let stats = sim.worker.stats();
    assert_eq!((stats.running, stats.free_blocks), (0, stats.total_blocks));
    let again = sim
        .client
        .abort(v1::AbortRequest {
            request_id: "long".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.found, "the id leaves the table with its request");

    let mut stream = sim
        .client
        .generate(request("dropped", prompt(20, 6), 1000))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    drop(stream);
    let worker = sim.worker.clone();
    eventually("the dropped request is freed", || worker.stats().running == 0).await;
    assert_eq!(worker.stats().free_blocks, worker.stats().total_blocks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_show_waiting_requests_and_queued_prefill_under_kv_pressure() {
    let config = SimConfig {
        time_to_first_token: Duration::ZERO,
        inter_token_latency: Duration::from_millis(10),
        kv_blocks: 4,
        ..SimConfig::default()
    };
    let mut sim = start(config).await;
    // 60 prompt tokens + 4 generated = 64 tokens = all 4 blocks.
    let mut first = sim.client.clone();
    let holder = tokio::spawn(async move { collect(&mut first, request("a", prompt(60, 7), 4)).await });
    let worker = sim.worker.clone();
    eventually("the first request runs", || worker.stats().running == 1).await;
    let mut second = sim.client.clone();
    let waiter = tokio::spawn(async move { collect(&mut second, request("b", prompt(50, 8), 2)).await });
    let mut load = sim
        .client
        .subscribe_load(v1::SubscribeLoadRequest { interval_ms: 10 })
        .await
        .unwrap()
        .into_inner();
    let mut saw_waiting = false;
    for _ in 0..100 {
        let report = load.message().await.unwrap().unwrap();
        assert_eq!(report.total_blocks, 4);
        if report.waiting == 1 {
            assert_eq!(report.queued_prefill_tokens, 50);
            saw_waiting = true;
            break;
        }
    }
    assert!(saw_waiting, "the second request never showed as waiting");
    assert_eq!(holder.await.unwrap().len(), 4);
    let out = waiter.await.unwrap();
    assert_eq!(out.len(), 2, "the waiting request runs once blocks free up");
    // Reports already in flight may predate the end; a later one shows the worker idle.
    loop {
        let report = load.message().await.unwrap().unwrap();
        if (report.running, report.waiting, report.queued_prefill_tokens) == (0, 0, 0) {
            break;
        }
    }
    assert_eq!(sim.worker.stats().free_blocks, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_like_the_real_worker() {
    let config = SimConfig {
        inter_token_latency: Duration::from_millis(50),
        kv_blocks: 8,
        ..SimConfig::default()
    };
    let mut sim = start(config).await;
    let err = sim.client.generate(request("e", Vec::new(), 4)).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("'prompt'"), "{err}");
    let err = sim.client.generate(request("z", prompt(4, 0), 0)).await.err().unwrap();
    assert!(err.message().contains("'max_tokens'"), "{err}");
    let err = sim
        .client
        .generate(request("big", prompt(100, 0), 100))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    let _running = sim.client.generate(request("dup", prompt(4, 0), 100)).await.unwrap();
    let err = sim
        .client
        .generate(request("dup", prompt(4, 0), 100))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);

    let err = sim.client.prefill(v1::PrefillRequest::default()).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_out_of_blocks_is_preempted_and_still_completes() {
    let config = SimConfig {
        time_to_first_token: Duration::ZERO,
        inter_token_latency: Duration::from_millis(2),
        kv_blocks: 3,
        ..SimConfig::default()
    };
    let sim = start(config).await;
    // A: 20 + 20 tokens (2 blocks, then 3); B: 2 + 30 tokens (1 block, then 2). Both cannot grow at once.
    let mut a_client = sim.client.clone();
    let a = tokio::spawn(async move { collect(&mut a_client, request("a", prompt(20, 9), 20)).await });
    let mut b_client = sim.client.clone();
    let b = tokio::spawn(async move { collect(&mut b_client, request("b", prompt(2, 10), 30)).await });
    let worker = sim.worker.clone();
    eventually("one sequence is preempted", || {
        let s = worker.stats();
        s.running == 1 && s.waiting == 1
    })
    .await;
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.len(), 20);
    assert_eq!(b.len(), 30);
    assert_eq!(a.last().unwrap().1.usage.unwrap().completion_tokens, 20);
    assert_eq!(b.last().unwrap().1.usage.unwrap().completion_tokens, 30);
    let stats = sim.worker.stats();
    assert_eq!((stats.running, stats.waiting, stats.free_blocks), (0, 0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sample_of_n_gets_its_own_responses() {
    let mut sim = start(SimConfig::instant()).await;
    let mut req = request("n", prompt(8, 11), 3);
    req.sampling.as_mut().unwrap().n = Some(2);
    let out = collect(&mut sim.client, req).await;
    assert_eq!(out.len(), 6);
    for index in 0..2 {
        let mine: Vec<_> = out.iter().filter(|(_, m)| m.index == index).collect();
        assert_eq!(mine.len(), 3);
        assert_eq!(mine[2].1.finish_reason, v1::FinishReason::Length as i32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_a_prefill_worker_is_prefilled_locally() {
    let mut sim = start(SimConfig::instant()).await;
    let mut req = request("remote", prompt(8, 12), 2);
    req.remote_prefill = Some(v1::RemotePrefill {
        prefill_addr: "http://127.0.0.1:9".into(),
    });
    let out = collect(&mut sim.client, req).await;
    assert_eq!(out.len(), 2);
}
