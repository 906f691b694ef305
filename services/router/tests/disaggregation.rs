//! Conditional disaggregation through the router, over loopback gRPC: fake workers (test doubles of the `Worker`
//! service that record each `WorkerGenerateRequest` and stream two tokens back) registered as decode and prefill
//! workers. A long prompt reaches the decode worker naming the prefill worker, a short one does not, a prefill
//! worker that goes away leaves requests prefilled locally, a prefill worker alone serves nothing, and the prefill
//! worker holding the prompt's prefix wins.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_proto::v1::worker_server::{Worker, WorkerServer};
use cleave_router::policy::PolicyConfig;
use cleave_router::{RouterModel, RouterService, WorkerEndpoint, WorkerPool, WorkerRole, serve};
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A worker that decodes nothing: it records what it is sent, answers two tokens, reports an idle load, and
/// publishes `cached` as its KV snapshot.
#[derive(Clone)]
struct FakeWorker {
    received: Arc<Mutex<Vec<v1::WorkerGenerateRequest>>>,
    cached: Vec<u64>,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl Worker for FakeWorker {
    type GenerateStream = RpcStream<v1::GenerateResponse>;
    type SubscribeKvEventsStream = RpcStream<v1::KvEventBatch>;
    type SubscribeLoadStream = RpcStream<v1::LoadReport>;

    async fn generate(
        &self,
        request: Request<v1::WorkerGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        let prompt_tokens = req.prompt_token_ids.len() as u32;
        self.received.lock().unwrap().push(req);
        let responses = vec![
            Ok(v1::GenerateResponse {
                token_ids: vec![7],
                ..Default::default()
            }),
            Ok(v1::GenerateResponse {
                token_ids: vec![8],
                finish_reason: v1::FinishReason::Length as i32,
                usage: Some(v1::Usage {
                    prompt_tokens,
                    cached_tokens: 0,
                    completion_tokens: 2,
                }),
                ..Default::default()
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(responses))))
    }

    async fn prefill(&self, _: Request<v1::PrefillRequest>) -> Result<Response<v1::PrefillResponse>, Status> {
        Err(Status::unimplemented("the router never calls Prefill"))
    }

    async fn abort(&self, _: Request<v1::AbortRequest>) -> Result<Response<v1::AbortResponse>, Status> {
        Ok(Response::new(v1::AbortResponse { found: false }))
    }

    async fn subscribe_kv_events(
        &self,
        _: Request<v1::SubscribeKvEventsRequest>,
    ) -> Result<Response<Self::SubscribeKvEventsStream>, Status> {
        let events = futures_util::stream::pending().take_until(self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }

    async fn kv_snapshot(&self, _: Request<v1::KvSnapshotRequest>) -> Result<Response<v1::KvSnapshotResponse>, Status> {
        Ok(Response::new(v1::KvSnapshotResponse {
            block_hashes: self.cached.clone(),
            next_seq: 1,
            block_size: 16,
        }))
    }

    async fn subscribe_load(
        &self,
        request: Request<v1::SubscribeLoadRequest>,
    ) -> Result<Response<Self::SubscribeLoadStream>, Status> {
        let interval = Duration::from_millis(u64::from(request.into_inner().interval_ms.max(10)));
        let reports = futures_util::stream::unfold((), move |()| async move {
            tokio::time::sleep(interval).await;
            let report = v1::LoadReport {
                running: 0,
                waiting: 0,
                free_blocks: 100,
                total_blocks: 100,
                queued_prefill_tokens: 0,
            };
            Some((Ok(report), ()))
        })
        .take_until(self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(reports)))
    }
}

impl FakeWorker {
    fn requests(&self) -> Vec<v1::WorkerGenerateRequest> {
        self.received.lock().unwrap().clone()
    }

    fn last_remote_prefill(&self) -> Option<String> {
        let requests = self.requests();
        let last = requests.last().expect("the worker got a request");
        last.remote_prefill.as_ref().map(|r| r.prefill_addr.clone())
    }
}

/// Serves a fake worker on a loopback port until its `stop` token is cancelled; returns it and its URL.
async fn start_fake(cached: Vec<u64>) -> (FakeWorker, String) {
    let fake = FakeWorker {
        received: Arc::default(),
        cached,
        stop: CancellationToken::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(WorkerServer::new(fake.clone()))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            fake.stop.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    (fake, url)
}

fn router_model() -> Arc<RouterModel> {
    Arc::new(RouterModel::from_gguf("smollm2-135m", &cleave_testkit::default_model_path()).unwrap())
}

/// A router over `pool`; dropping the sender stops it.
async fn start_router(pool: Arc<WorkerPool>) -> (GenerationClient<Channel>, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        RouterService::new(router_model(), pool, "r0".into()),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    (GenerationClient::new(channel), tx)
}

async fn wait_reachable(pool: &WorkerPool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.reachable() != n {
        assert!(
            Instant::now() < deadline,
            "reachable workers stayed {}",
            pool.reachable()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a request to completion; returns the token ids.
async fn generate(client: &mut GenerationClient<Channel>, prompt: &str) -> Vec<u32> {
    let request = v1::GenerateRequest {
        prompt: prompt.into(),
        max_tokens: Some(2),
        ..Default::default()
    };
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(msg.token_ids);
    }
    ids
}

fn long_prompt() -> String {
    "the quick brown fox jumps over the lazy dog ".repeat(80)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_name_the_prefill_worker_short_ones_and_an_unreachable_one_stay_local() {
    let (decode, decode_url) = start_fake(Vec::new()).await;
    let (prefill, prefill_url) = start_fake(Vec::new()).await;
    let pool = Arc::new(WorkerPool::start(
        &[
            WorkerEndpoint::new(&decode_url, WorkerRole::Decode),
            WorkerEndpoint::new(&prefill_url, WorkerRole::Prefill),
        ],
        PolicyConfig::default(),
    ));
    wait_reachable(&pool, 2).await;
    assert_eq!(pool.reachable_where(|r| r == WorkerRole::Prefill), 1);
    let (mut client, _stop) = start_router(pool.clone()).await;

    assert_eq!(generate(&mut client, &long_prompt()).await, vec![7, 8]);
    assert!(decode.requests()[0].prompt_token_ids.len() >= 256);
    assert_eq!(decode.last_remote_prefill(), Some(prefill_url.clone()));

    assert_eq!(generate(&mut client, "The capital of France is").await, vec![7, 8]);
    assert_eq!(decode.last_remote_prefill(), None);
    assert_eq!(decode.requests().len(), 2);
    assert!(prefill.requests().is_empty(), "requests go to the decode worker only");

    // The prefill worker goes away: long prompts are prefilled by the decode worker itself.
    prefill.stop.cancel();
    wait_reachable(&pool, 1).await;
    assert_eq!(generate(&mut client, &long_prompt()).await, vec![7, 8]);
    assert_eq!(decode.last_remote_prefill(), None);
    assert_eq!(decode.requests().len(), 3);

    // Bad input is still refused before any worker sees it.
    let bad = v1::GenerateRequest {
        prompt: long_prompt(),
        temperature: Some(-1.0),
        ..Default::default()
    };
    let err = client.generate(bad).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
    assert_eq!(decode.requests().len(), 3);

    // A prefill worker alone cannot serve: with no decode worker left the router answers UNAVAILABLE.
    let (_prefill_again, prefill_again_url) = start_fake(Vec::new()).await;
    pool.set_workers(&[
        WorkerEndpoint::new(&decode_url, WorkerRole::Decode),
        WorkerEndpoint::new(&prefill_again_url, WorkerRole::Prefill),
    ]);
    wait_reachable(&pool, 2).await;
    decode.stop.cancel();
    wait_reachable(&pool, 1).await;
    assert_eq!(pool.reachable_where(|r| r == WorkerRole::Prefill), 1);
    let err = client
        .generate(v1::GenerateRequest {
            prompt: long_prompt(),
            ..Default::default()
        })
        .await
        .expect_err("no decode worker");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefill_worker_holding_the_prefix_wins_and_role_changes_are_followed() {
    let prompt = long_prompt();
    let ids = router_model().tokenizer.encode(&prompt, true).unwrap();
    let hashes: Vec<u64> = cleave_tokens::block_hashes(&ids, 16, 0).iter().map(|h| h.0).collect();
    let (decode, decode_url) = start_fake(Vec::new()).await;
    let (_cold, cold_url) = start_fake(Vec::new()).await;
    let (warm, warm_url) = start_fake(hashes[..hashes.len() / 2].to_vec()).await;
    let mut members = vec![
        WorkerEndpoint::new(&decode_url, WorkerRole::Decode),
        WorkerEndpoint::new(&cold_url, WorkerRole::Prefill),
        WorkerEndpoint::new(&warm_url, WorkerRole::Prefill),
    ];
    let pool = Arc::new(WorkerPool::start(&members, PolicyConfig::default()));
    wait_reachable(&pool, 3).await;
    let (mut client, _stop) = start_router(pool.clone()).await;
    // The snapshot reaches the index shortly after the load stream comes up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    generate(&mut client, &prompt).await;
    assert_eq!(decode.last_remote_prefill(), Some(warm_url.clone()));

    // The warm worker becomes a decode worker and the old decode worker leaves: the warm one now decodes (its
    // cache kept), and the cold one prefills for it.
    members.remove(0);
    members[1].role = WorkerRole::Decode;
    pool.set_workers(&members);
    assert_eq!(pool.reachable_where(|r| r == WorkerRole::Prefill), 1);
    let half_cached = hashes.len() / 2 * 16;
    let uncached = ids.len() - half_cached;
    assert!(
        uncached >= 256,
        "the test prompt must stay long after the cached half: {uncached}"
    );
    generate(&mut client, &prompt).await;
    assert_eq!(warm.last_remote_prefill(), Some(cold_url));
    assert_eq!(decode.requests().len(), 1);
}
