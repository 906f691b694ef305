//! Disaggregated prefill between two real workers on loopback: a decode worker asks a prefill worker for a
//! prompt's KV, which streams layer by layer over the TCP KV transport into the decode worker's blocks — on the
//! real default model, compared with the transformers golden tokens. Also: every failure falls back to local
//! prefill, and a cancelled request frees the blocks of both workers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_engine::{Engine, EngineConfig, ModelFiles, load_model};
use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_worker::{KvInbox, WorkerService, serve};
use tonic::transport::Channel;

const MODEL: &str = "smollm2-135m";

/// The golden "long" prompt (650 tokens) and its greedy output from transformers.
fn golden_document() -> (Vec<u32>, Vec<u32>) {
    let golden = cleave_testkit::golden_prompt("long");
    (golden.prompt_ids, golden.output_ids)
}

struct Running {
    client: WorkerClient<Channel>,
    engine: Arc<Engine>,
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// A worker serving `model`; with `kv_inbox`, it also receives remote KV (a decode worker).
async fn start(model: &str, kv_inbox: bool) -> Running {
    start_with_budget(model, kv_inbox, 512).await
}

/// `start` with `max_batch_tokens` tokens per engine step (the prefill chunk size).
async fn start_with_budget(model: &str, kv_inbox: bool, max_batch_tokens: usize) -> Running {
    let (weights, tokenizer) = load_model(ModelFiles::Gguf(&cleave_testkit::default_model_path())).unwrap();
    let config = EngineConfig {
        kv_cache_bytes: 64 << 20,
        scheduler: cleave_engine::scheduler::SchedulerConfig {
            max_batch_tokens,
            ..Default::default()
        },
    };
    let engine = Arc::new(Engine::start(weights, Arc::new(tokenizer), config).unwrap());
    let mut service = WorkerService::new(engine.clone(), engine.block_size()).with_model(model);
    if kv_inbox {
        let inbox = KvInbox::bind("127.0.0.1:0".parse().unwrap(), None, engine.clone(), model)
            .await
            .unwrap();
        service = service.with_kv_inbox(Arc::new(inbox), Duration::from_secs(20));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(service, listener, async move {
        let _ = rx.await;
    }));
    Running {
        client: WorkerClient::connect(url.clone()).await.unwrap(),
        engine,
        url,
        _shutdown: tx,
    }
}

fn greedy(prompt: Vec<u32>, max_tokens: u32, request_id: &str, prefill_url: Option<&str>) -> v1::WorkerGenerateRequest {
    v1::WorkerGenerateRequest {
        request_id: request_id.into(),
        prompt_token_ids: prompt,
        sampling: Some(v1::GenerateRequest {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        }),
        remote_prefill: prefill_url.map(|url| v1::RemotePrefill {
            prefill_addr: url.to_owned(),
        }),
    }
}

/// Streams a request to the end: its token ids and its usage.
async fn run(worker: &mut Running, request: v1::WorkerGenerateRequest) -> (Vec<u32>, v1::Usage) {
    let mut stream = worker.client.generate(request).await.unwrap().into_inner();
    let (mut ids, mut usage) = (Vec::new(), None);
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(&msg.token_ids);
        usage = msg.usage.or(usage);
    }
    (ids, usage.unwrap())
}

async fn wait_idle(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = engine.stats().await.unwrap();
        if s.running == 0 && s.waiting == 0 && s.remote_prefill.awaiting == 0 && s.free_blocks == s.total_blocks {
            return;
        }
        assert!(Instant::now() < deadline, "engine did not go idle: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_prefill_streams_the_golden_tokens_and_frees_both_workers() {
    let prefill = start(MODEL, false).await;
    let mut decode = start(MODEL, true).await;
    let (prompt, golden) = golden_document();
    let (ids, usage) = run(&mut decode, greedy(prompt.clone(), 12, "doc-1", Some(&prefill.url))).await;
    assert_eq!(ids, golden[..12]);
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (prompt.len() as u32, 12)
    );
    let stats = decode.engine.stats().await.unwrap();
    assert_eq!((stats.remote_prefill.completed, stats.remote_prefill.fell_back), (1, 0));
    // The prefill worker computed the prompt (all but its last token) and published it to its own prefix cache.
    let published = prefill.engine.kv_snapshot().await.unwrap().hashes.len();
    assert_eq!(published, (prompt.len() - 1) / 16);
    wait_idle(&prefill.engine).await;
    wait_idle(&decode.engine).await;

    // Again: the decode worker now holds the prefix itself and reports it as cached.
    let (again, usage) = run(&mut decode, greedy(prompt.clone(), 12, "doc-2", Some(&prefill.url))).await;
    assert_eq!(again, golden[..12]);
    assert!(
        usage.cached_tokens as usize >= (prompt.len() - 1) / 16 * 16,
        "{usage:?}"
    );
    wait_idle(&decode.engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_mismatched_prefill_worker_means_local_prefill() {
    let (prompt, golden) = golden_document();
    let prompt = prompt[..200].to_vec();
    let mut decode = start(MODEL, true).await;
    let mut local = start(MODEL, false).await;
    let (expected, _) = run(&mut local, greedy(prompt.clone(), 8, "local", None)).await;

    let nobody = format!("http://127.0.0.1:{}", cleave_testkit::free_port());
    let (ids, _) = run(&mut decode, greedy(prompt.clone(), 8, "a", Some(&nobody))).await;
    assert_eq!(ids, expected);
    assert_eq!(decode.engine.stats().await.unwrap().remote_prefill.fell_back, 1);

    // A prefill worker of another model refuses before computing anything.
    let other = start("another-model", false).await;
    let (ids, _) = run(&mut decode, greedy(prompt.clone(), 8, "b", Some(&other.url))).await;
    assert_eq!(ids, expected);
    let stats = decode.engine.stats().await.unwrap();
    assert_eq!((stats.remote_prefill.completed, stats.remote_prefill.fell_back), (0, 2));
    assert_eq!(
        other.engine.kv_snapshot().await.unwrap().hashes.len(),
        0,
        "nothing was computed"
    );
    wait_idle(&decode.engine).await;
    let _ = golden;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_remote_request_aborts_the_prefill_and_frees_every_block() {
    // 128-token chunks: the engine answers between steps, so the prompt must take several.
    let prefill = start_with_budget(MODEL, false, 128).await;
    let mut decode = start(MODEL, true).await;
    let (prompt, _) = golden_document();
    let stream = decode
        .client
        .generate(greedy(prompt.clone(), 64, "cancelled", Some(&prefill.url)))
        .await
        .unwrap()
        .into_inner();
    // Wait until the prefill worker is computing the prompt, then walk away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while prefill.engine.stats().await.unwrap().running == 0 {
        assert!(Instant::now() < deadline, "the prefill worker never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stream);
    wait_idle(&decode.engine).await;
    wait_idle(&prefill.engine).await;
    // The prefill stopped early: the prompt's later blocks were never computed.
    let published = prefill.engine.kv_snapshot().await.unwrap().hashes.len();
    assert!(published < (prompt.len() - 1) / 16, "{published} blocks published");
    let stats = decode.engine.stats().await.unwrap();
    assert_eq!(stats.remote_prefill.completed, 0);
}

/// KV transports on CPU workers: an inbox speaks TCP only, and keeps offering it when an operator restricts it to
/// transports it does not speak; a prefill worker asked for NCCL alone (it has no links) refuses, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transports_a_worker_cannot_use_fall_back_to_tcp_or_are_refused() {
    let mut prefill = start(MODEL, false).await;
    let mut inbox = KvInbox::bind("127.0.0.1:0".parse().unwrap(), None, prefill.engine.clone(), MODEL)
        .await
        .unwrap();
    assert_eq!(inbox.transports(), ["tcp"]);
    inbox.offer_only(&["nccl".to_owned(), "cuda_ipc".to_owned()]);
    assert_eq!(inbox.transports(), ["tcp"], "TCP stays the fallback");

    let block_size = prefill.engine.block_size() as u32;
    let request = |transport: &str| v1::PrefillRequest {
        request_id: "transport-check".to_owned(),
        prompt_token_ids: (1..=40).collect(),
        destination: Some(v1::KvDestination {
            kv_addr: inbox.addr().to_owned(),
            transport: transport.to_owned(),
            host_id: String::new(),
            block_ids: (0..40u32.div_ceil(block_size)).collect(),
            first_block: 0,
            transfer_id: "kv-transport-check".to_owned(),
        }),
        model: MODEL.to_owned(),
        block_size,
        return_logits: true,
    };
    let refused = prefill.client.prefill(request("nccl")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("destination.transport"),
        "{}",
        refused.message()
    );
    // Offered NCCL first, it falls through to TCP and starts sending layers; the inbox expects no such transfer and
    // drops it — a transfer error, not a transport refusal.
    let over_tcp = prefill.client.prefill(request("nccl,tcp")).await.unwrap_err();
    assert_eq!(over_tcp.code(), tonic::Code::Aborted, "{}", over_tcp.message());
    assert!(over_tcp.message().contains("layers"), "{}", over_tcp.message());
    wait_idle(&prefill.engine).await;
}
