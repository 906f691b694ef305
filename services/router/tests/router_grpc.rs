//! The router in front of two real workers, everything over loopback gRPC: golden tokens through the router,
//! prefix affinity with cached tokens reported, bad input refused before any worker, health and reflection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_engine::{Engine, EngineConfig, ModelFiles, load_model};
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_router::policy::PolicyConfig;
use cleave_router::{RouterModel, RouterService, WorkerEndpoint, WorkerPool, serve};
use cleave_worker::WorkerService;
use tonic::transport::Channel;

fn golden() -> serde_json::Value {
    let path = cleave_testkit::golden_json_path();
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn golden_prompt(name: &str) -> (String, Vec<u32>) {
    let g = golden();
    let p = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone();
    let ids = p["output_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (p["text"].as_str().unwrap().to_string(), ids)
}

struct Cluster {
    client: GenerationClient<Channel>,
    channel: Channel,
    engines: Vec<Arc<Engine>>,
    worker_urls: Vec<String>,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, format!("http://{addr}"))
}

async fn start_cluster(n_workers: usize) -> Cluster {
    let mut engines = Vec::new();
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..n_workers {
        let (model, tokenizer) = load_model(ModelFiles::Gguf(&cleave_testkit::default_model_path())).unwrap();
        let engine = Arc::new(Engine::start(model, Arc::new(tokenizer), EngineConfig::default()).unwrap());
        let (listener, url) = listen().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cleave_worker::serve(
            WorkerService::new(engine.clone(), 16),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        engines.push(engine);
        addrs.push(url);
        stops.push(tx);
    }
    let (client, channel, stop) = start_router(&addrs).await;
    stops.push(stop);
    Cluster {
        client,
        channel,
        engines,
        worker_urls: addrs,
        _stops: stops,
    }
}

/// A router over these workers, once all of them report load; dropping the sender stops it.
async fn start_router(addrs: &[String]) -> (GenerationClient<Channel>, Channel, tokio::sync::oneshot::Sender<()>) {
    let model = Arc::new(RouterModel::from_gguf("smollm2-135m", &cleave_testkit::default_model_path()).unwrap());
    let workers: Vec<WorkerEndpoint> = addrs.iter().map(WorkerEndpoint::both).collect();
    let pool = Arc::new(WorkerPool::start(&workers, PolicyConfig::default()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.reachable() < addrs.len() {
        assert!(Instant::now() < deadline, "workers never became reachable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (listener, url) = listen().await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        RouterService::new(model, pool, "r0".into()),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    (GenerationClient::new(channel.clone()), channel, tx)
}

fn greedy_prompt(prompt: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: prompt.into(),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    }
}

async fn run(client: &mut GenerationClient<Channel>, req: v1::GenerateRequest) -> (Vec<u32>, String, v1::Usage) {
    let mut stream = client.generate(req).await.unwrap().into_inner();
    let (mut ids, mut text, mut usage) = (Vec::new(), String::new(), None);
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(msg.token_ids);
        text.push_str(&msg.text);
        if msg.usage.is_some() {
            usage = msg.usage;
        }
    }
    (ids, text, usage.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_through_the_router_equals_the_engine_and_transformers() {
    let mut c = start_cluster(1).await;
    let (text, golden) = golden_prompt("short");
    let (ids, out, usage) = run(&mut c.client, greedy_prompt(&text, 24)).await;
    assert_eq!(ids, golden[..24]);
    assert!(out.starts_with(" Paris."), "{out:?}");
    assert_eq!(usage.completion_tokens, 24);

    // Chat messages are rendered with the model's template by the router.
    let req = v1::GenerateRequest {
        messages: vec![v1::ChatMessage {
            role: "user".into(),
            content: "What is the capital of France? Answer in one sentence.".into(),
        }],
        max_tokens: Some(12),
        temperature: Some(0.0),
        ..Default::default()
    };
    let (_, chat, usage) = run(&mut c.client, req).await;
    assert_eq!(chat, "The capital of France is Paris.");
    assert_eq!(usage.prompt_tokens, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prefix_goes_to_the_worker_holding_it_and_reports_cached_tokens() {
    let mut c = start_cluster(2).await;
    let (document, golden) = golden_prompt("long");
    let (ids, _, first) = run(&mut c.client, greedy_prompt(&document, 4)).await;
    assert_eq!(ids, golden[..4]);
    assert_eq!(first.cached_tokens, 0);
    // The router learns of the cached blocks from the worker's KV events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let (_, _, usage) = run(&mut c.client, greedy_prompt(&document, 4)).await;
        assert!(usage.cached_tokens >= 600, "cached tokens {}", usage.cached_tokens);
    }
    // Only one worker ever computed the document.
    let mut hits = Vec::new();
    for e in &c.engines {
        hits.push(e.stats().await.unwrap().prefix_cache.hit_blocks);
    }
    assert!(
        hits.iter().filter(|&&h| h > 0).count() == 1,
        "prefix hits per worker: {hits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_reaches_no_worker() {
    let mut c = start_cluster(1).await;
    let before = c.engines[0].stats().await.unwrap().prefix_cache.queried_blocks;
    let cases: Vec<(v1::GenerateRequest, &str)> = vec![
        (
            v1::GenerateRequest {
                temperature: Some(-1.0),
                ..greedy_prompt("hi", 4)
            },
            "temperature",
        ),
        (
            v1::GenerateRequest {
                top_p: Some(0.0),
                ..greedy_prompt("hi", 4)
            },
            "top_p",
        ),
        (greedy_prompt("hi", 0), "max_tokens"),
        (greedy_prompt("", 4), "prompt"),
        (
            v1::GenerateRequest {
                messages: vec![v1::ChatMessage {
                    role: "user".into(),
                    content: "x".into(),
                }],
                ..greedy_prompt("hi", 4)
            },
            "prompt",
        ),
        (
            v1::GenerateRequest {
                prompt: String::new(),
                messages: vec![v1::ChatMessage {
                    role: String::new(),
                    content: "x".into(),
                }],
                ..greedy_prompt("", 4)
            },
            "messages",
        ),
        (
            v1::GenerateRequest {
                model: "gpt-9".into(),
                ..greedy_prompt("hi", 4)
            },
            "model",
        ),
        (greedy_prompt(&"word ".repeat(9000), 4), "prompt"),
    ];
    for (req, field) in cases {
        let err = c.client.generate(req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {}", err.message());
        assert!(
            err.message().contains(&format!("'{field}'")),
            "{field}: {}",
            err.message()
        );
    }
    let after = c.engines[0].stats().await.unwrap().prefix_cache.queried_blocks;
    assert_eq!(before, after, "no request reached the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_list_models_health_and_reflection() {
    let mut c = start_cluster(1).await;
    let tokens = c
        .client
        .tokenize(v1::TokenizeRequest {
            prompt: "The capital of France is".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.token_ids, vec![504, 3575, 282, 4649, 314]);
    let models = c
        .client
        .list_models(v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(models.models[0].id, "smollm2-135m");
    assert_eq!(models.models[0].max_context, 8192);

    let mut health = tonic_health::pb::health_client::HealthClient::new(c.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cleave.v1.Generation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(c.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"cleave.v1.Generation".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_router_learns_existing_caches_from_worker_snapshots() {
    let c = start_cluster(2).await;
    let (document, _) = golden_prompt("long");
    // Warm the second worker directly, behind every router's back.
    let tokenizer = RouterModel::from_gguf("smollm2-135m", &cleave_testkit::default_model_path())
        .unwrap()
        .tokenizer;
    let prompt_ids = tokenizer.encode(&document, true).unwrap();
    let mut worker = cleave_proto::v1::worker_client::WorkerClient::connect(c.worker_urls[1].clone())
        .await
        .unwrap();
    let warm = v1::WorkerGenerateRequest {
        request_id: String::new(),
        prompt_token_ids: prompt_ids,
        sampling: Some(greedy_prompt("", 1)),
        remote_prefill: None,
    };
    let mut stream = worker.generate(warm).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}

    // A router started now has no history: only the workers' snapshots can tell it where the document is. With
    // equal loads and no index, ties would go to worker 0, which has nothing cached.
    let (mut fresh, _, _stop) = start_router(&c.worker_urls).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, usage) = run(&mut fresh, greedy_prompt(&document, 4)).await;
    assert!(usage.cached_tokens >= 600, "cached tokens {}", usage.cached_tokens);
}
