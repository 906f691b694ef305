//! Prometheus metrics end to end: a router in front of a real prefill worker and a real decode worker (loopback
//! gRPC, prompt KV over the TCP KV transport), all measured in one registry as `cleave up` does, scraped over HTTP
//! from `/metrics` after real requests. The exposition is linted with `promtool check metrics` when promtool is
//! installed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_engine::{Engine, EngineConfig, ModelFiles, load_model};
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_router::policy::PolicyConfig;
use cleave_router::{Frontend, RouterModel, RouterService, WorkerEndpoint, WorkerPool, WorkerRole, serve};
use cleave_telemetry::{Telemetry, WorkerLabels};
use cleave_worker::{KvInbox, WorkerService, register_worker_metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const MODEL: &str = "smollm2-135m";

/// Serves a worker in `role` until the returned sender drops; its engine and KV transfers count in `telemetry`.
async fn start_worker(telemetry: &Telemetry, id: &str, role: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (model, tokenizer) = load_model(ModelFiles::Gguf(&cleave_testkit::default_model_path())).unwrap();
    let config = EngineConfig {
        kv_cache_bytes: 64 << 20,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::start(model, Arc::new(tokenizer), config).unwrap());
    let labels = WorkerLabels {
        worker: id.into(),
        role: role.into(),
    };
    // No registry here: the lease is marked held as `cleave up` does once a worker registered.
    telemetry.workers.set_lease_held(&labels, true);
    let kv = register_worker_metrics(&telemetry.workers, labels, engine.clone());
    let mut service = WorkerService::new(engine.clone(), engine.block_size())
        .with_model(MODEL)
        .with_kv_metrics(kv.clone());
    if role == "decode" {
        let inbox = KvInbox::bind_with_metrics("127.0.0.1:0".parse().unwrap(), None, engine.clone(), MODEL, kv, None)
            .await
            .unwrap();
        service = service.with_kv_inbox(Arc::new(inbox), Duration::from_secs(20));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cleave_worker::serve(service, listener, async move {
        let _ = rx.await;
    }));
    (url, tx)
}

/// `GET /metrics` over a real HTTP/1 connection, asking for OpenMetrics as Prometheus does or for the classic text
/// format as curl does; returns the status line and headers, and the body.
async fn scrape(addr: std::net::SocketAddr, openmetrics: bool) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = if openmetrics {
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    } else {
        "*/*"
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// The value of the series named exactly `series` (name and labels as exposed).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn generate(client: &mut GenerationClient<Channel>, prompt: &str, max_tokens: u32) -> (u32, v1::Usage) {
    let request = v1::GenerateRequest {
        prompt: prompt.into(),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    };
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let (mut tokens, mut usage) = (0, None);
    while let Some(msg) = stream.message().await.unwrap() {
        tokens += msg.token_ids.len() as u32;
        usage = msg.usage.or(usage);
    }
    (tokens, usage.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_requests_and_scrape_over_http() {
    let telemetry = Telemetry::new();
    let (prefill_url, _stop_prefill) = start_worker(&telemetry, "p0", "prefill").await;
    let (decode_url, _stop_decode) = start_worker(&telemetry, "d0", "decode").await;
    let policy = PolicyConfig {
        remote_prefill_min_tokens: 32,
        ..PolicyConfig::default()
    };
    let workers = [
        WorkerEndpoint::new(&decode_url, WorkerRole::Decode),
        WorkerEndpoint::new(&prefill_url, WorkerRole::Prefill),
    ];
    let pool = Arc::new(WorkerPool::start(&workers, policy));
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.reachable() < 2 {
        assert!(Instant::now() < deadline, "workers never became reachable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let model = Arc::new(RouterModel::from_gguf(MODEL, &cleave_testkit::default_model_path()).unwrap());
    let frontend = Frontend::new(model, pool, "r0".into()).with_metrics(telemetry.router.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop_router, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        RouterService::from_frontend(Arc::new(frontend)),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    tokio::spawn(cleave_telemetry::serve_metrics(
        telemetry.clone(),
        metrics_listener,
        std::future::pending(),
    ));
    let mut client = GenerationClient::connect(url).await.unwrap();

    // Before any request: the families exist, the counters are zero, the workers' engines are sampled.
    let (head, before) = scrape(metrics_addr, true).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert_eq!(value(&before, "cleave_router_time_to_first_token_seconds_count"), 0.0);
    assert_eq!(
        value(&before, r#"cleave_worker_running_sequences{worker="d0",role="decode"}"#),
        0.0
    );
    let free_before = value(&before, r#"cleave_worker_kv_blocks_free{worker="d0",role="decode"}"#);
    assert!(free_before > 0.0, "{before}");

    // A long prompt is prefilled remotely, a short one locally, a bad one is refused before any worker.
    let long = "The history of the Roman Empire spans many centuries, from the founding of the city to the fall \
                of Constantinople, and includes emperors, senators, soldiers, merchants and farmers alike.";
    let (long_tokens, long_usage) = generate(&mut client, long, 8).await;
    let (short_tokens, _) = generate(&mut client, "The capital of France is", 6).await;
    assert!(long_usage.prompt_tokens >= 32, "{long_usage:?}");
    let refused = client
        .generate(v1::GenerateRequest {
            model: "no-such-model".into(),
            prompt: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let (_, text) = scrape(metrics_addr, true).await;
    assert_eq!(value(&text, r#"cleave_router_requests_total{outcome="ok"}"#), 2.0);
    assert_eq!(
        value(&text, r#"cleave_router_requests_total{outcome="invalid_argument"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"cleave_router_routing_decisions_total{reason="remote"}"#),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"cleave_router_routing_decisions_total{reason="local_short_prompt"}"#
        ),
        1.0
    );
    assert_eq!(value(&text, "cleave_router_time_to_first_token_seconds_count"), 2.0);
    assert!(value(&text, "cleave_router_time_to_first_token_seconds_sum") > 0.0);
    assert_eq!(value(&text, "cleave_router_request_duration_seconds_count"), 3.0);
    assert_eq!(value(&text, "cleave_router_queue_wait_seconds_count"), 2.0);
    assert_eq!(
        value(&text, "cleave_router_inter_token_latency_seconds_count"),
        f64::from(long_tokens + short_tokens - 2)
    );
    assert_eq!(
        value(&text, "cleave_router_generated_tokens_total"),
        f64::from(long_tokens + short_tokens)
    );
    assert!(value(&text, "cleave_router_prompt_tokens_total") >= f64::from(long_usage.prompt_tokens));
    assert_eq!(value(&text, "cleave_router_queued_requests"), 0.0);

    // The long prompt's KV went from p0 to d0 and was used.
    let sent = r#"{worker="p0",role="prefill",direction="sent"}"#;
    let received = r#"{worker="d0",role="decode",direction="received"}"#;
    let transfers = |labels: &str, outcome: &str| {
        let labels = labels.trim_end_matches('}');
        value(
            &text,
            &format!("cleave_worker_kv_transfers_total{labels},transport=\"tcp\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(transfers(sent, "ok"), 1.0);
    assert_eq!(transfers(received, "ok"), 1.0);
    let bytes_sent = value(&text, &format!("cleave_worker_kv_transfer_bytes_total{sent}"));
    assert!(bytes_sent > 0.0, "{text}");
    assert_eq!(
        bytes_sent,
        value(&text, &format!("cleave_worker_kv_transfer_bytes_total{received}"))
    );
    assert_eq!(
        value(
            &text,
            &format!("cleave_worker_kv_transfer_duration_seconds_count{sent}")
        ),
        1.0
    );
    let decode = r#"{worker="d0",role="decode"}"#;
    assert_eq!(
        value(&text, &format!("cleave_worker_remote_prefills_completed_total{decode}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("cleave_worker_remote_prefills_fell_back_total{decode}")),
        0.0
    );
    assert!(
        value(
            &text,
            &format!("cleave_worker_prefix_cache_queried_blocks_total{decode}")
        ) > 0.0
    );
    let ratio = value(&text, &format!("cleave_worker_prefix_cache_hit_ratio{decode}"));
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    assert_eq!(value(&text, &format!("cleave_worker_running_sequences{decode}")), 0.0);
    assert!(text.ends_with("# EOF\n"));

    // The classic text format carries the same samples, and is what promtool lints.
    let (head, classic) = scrape(metrics_addr, false).await;
    assert!(
        head.to_lowercase().contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        classic.contains("# TYPE cleave_router_requests_total counter"),
        "{classic}"
    );
    assert_eq!(value(&classic, r#"cleave_router_requests_total{outcome="ok"}"#), 2.0);
    promtool_check(&classic);

    // Every metric the Grafana dashboard charts is one this cluster exposes.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/cleave.json")).unwrap();
    let mut charted = 0;
    for (at, _) in dashboard.match_indices("cleave_") {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        assert!(
            classic.contains(&format!("\n{name}")),
            "the dashboard charts {name}, which is not exposed"
        );
        charted += 1;
    }
    assert!(charted > 20, "{charted}");
}

/// Lints the exposition with `promtool check metrics`; skips (saying so) where promtool is not installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("promtool not found ({e}); skipping the exposition lint (apt-get install prometheus)");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
