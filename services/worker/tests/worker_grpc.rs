//! The Worker gRPC service over a real socket, on the real default model, through the generated client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_engine::{Engine, EngineConfig, ModelFiles, load_model};
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_proto::v1::{self, FinishReason};
use cleave_worker::{WorkerService, serve};
use tonic::transport::Channel;

/// Golden ids from transformers for the "short" prompt (crates/engine/tests/golden/golden.json).
fn golden_short() -> (Vec<u32>, Vec<u32>) {
    let golden = cleave_testkit::golden_prompt("short");
    (golden.prompt_ids, golden.output_ids)
}

struct Running {
    client: WorkerClient<Channel>,
    engine: Arc<Engine>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Running {
    let (model, tokenizer) = load_model(ModelFiles::Gguf(&cleave_testkit::default_model_path())).unwrap();
    let engine = Arc::new(Engine::start(model, Arc::new(tokenizer), EngineConfig::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = WorkerService::new(engine.clone(), 16);
    tokio::spawn(serve(service, listener, async move {
        let _ = rx.await;
    }));
    let client = WorkerClient::connect(format!("http://{addr}")).await.unwrap();
    Running {
        client,
        engine,
        _shutdown: tx,
    }
}

fn greedy(prompt: Vec<u32>, max_tokens: u32, request_id: &str) -> v1::WorkerGenerateRequest {
    v1::WorkerGenerateRequest {
        request_id: request_id.into(),
        prompt_token_ids: prompt,
        sampling: Some(v1::GenerateRequest {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        }),
        remote_prefill: None,
    }
}

async fn wait_idle(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = engine.stats().await.unwrap();
        if s.running == 0 && s.waiting == 0 && s.free_blocks == s.total_blocks {
            return;
        }
        assert!(Instant::now() < deadline, "engine did not go idle: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streams_the_golden_tokens_with_usage() {
    let mut w = start().await;
    let (prompt, golden) = golden_short();
    let mut stream = w
        .client
        .generate(greedy(prompt.clone(), 16, "r1"))
        .await
        .unwrap()
        .into_inner();
    let (mut ids, mut text, mut last) = (Vec::<u32>::new(), String::new(), None);
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(&msg.token_ids);
        text.push_str(&msg.text);
        last = Some(msg);
    }
    assert_eq!(ids, golden[..16]);
    assert!(text.starts_with(" Paris."), "{text:?}");
    let last = last.unwrap();
    assert_eq!(last.finish_reason, FinishReason::Length as i32);
    let usage = last.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (prompt.len() as u32, 16)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_invalid_argument_naming_the_field() {
    let mut w = start().await;
    let mut req = greedy(vec![504, 3575], 8, "");
    req.sampling.as_mut().unwrap().top_p = Some(1.5);
    let err = w.client.generate(req).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("top_p"), "{}", err.message());
    let err = w
        .client
        .generate(greedy(vec![999_999], 8, ""))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("prompt"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_the_sequence() {
    let mut w = start().await;
    let (prompt, _) = golden_short();
    let mut stream = w
        .client
        .generate(greedy(prompt, 4000, "gone"))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    drop(stream);
    wait_idle(&w.engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_by_request_id_ends_the_stream_cancelled() {
    let mut w = start().await;
    let (prompt, _) = golden_short();
    let mut stream = w
        .client
        .generate(greedy(prompt, 4000, "to-abort"))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let found = w
        .client
        .abort(v1::AbortRequest {
            request_id: "to-abort".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(found.found);
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::Cancelled);
    let unknown = w
        .client
        .abort(v1::AbortRequest {
            request_id: "nope".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.found);
    wait_idle(&w.engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_and_snapshot_follow_the_prefix_cache() {
    let mut w = start().await;
    let mut events = w
        .client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest { from_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    // 40 prompt tokens: two full blocks are published once computed.
    let prompt: Vec<u32> = (0..40).map(|i| 504 + i).collect();
    let mut stream = w
        .client
        .generate(greedy(prompt.clone(), 2, ""))
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(batch.events);
    }
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(seen.iter().all(|e| !e.removed));
    let snapshot = w
        .client
        .kv_snapshot(v1::KvSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut hashes = snapshot.block_hashes.clone();
    hashes.sort_unstable();
    let mut want: Vec<u64> = cleave_tokens::block_hashes(&prompt, 16, 0)
        .iter()
        .map(|h| h.0)
        .collect();
    want.sort_unstable();
    assert_eq!(hashes, want);
    assert_eq!(snapshot.next_seq, 3);
    assert_eq!(snapshot.block_size, 16);
    let mut event_hashes: Vec<u64> = seen.iter().map(|e| e.block_hash).collect();
    event_hashes.sort_unstable();
    assert_eq!(event_hashes, want);

    // Resuming from sequence 2 replays exactly the second event.
    let mut resumed = w
        .client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest { from_seq: 2 })
        .await
        .unwrap()
        .into_inner();
    let replay = resumed.message().await.unwrap().unwrap();
    assert_eq!(replay.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    let gap = w
        .client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest { from_seq: 99 })
        .await
        .err()
        .unwrap();
    assert_eq!(gap.code(), tonic::Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_are_pushed() {
    let mut w = start().await;
    let mut load = w
        .client
        .subscribe_load(v1::SubscribeLoadRequest { interval_ms: 20 })
        .await
        .unwrap()
        .into_inner();
    let first = load.message().await.unwrap().unwrap();
    assert_eq!(first.running, 0);
    assert!(first.total_blocks > 0 && first.free_blocks == first.total_blocks);
    let second = load.message().await.unwrap().unwrap();
    assert_eq!(second.total_blocks, first.total_blocks);
}
