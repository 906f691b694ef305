//! Router throughput and added latency, over real loopback gRPC: simulated workers (`cleave-simworker`, no model
//! math) behind a real in-process router, driven through the public `Generation/Generate` streaming RPC by many
//! client tasks over a few HTTP/2 connections.
//!
//! Per scenario (worker timing model), each phase `PHASE` long after a short warm-up:
//! - directly against the workers: throughput (`THROUGHPUT_CLIENTS` clients) and latency at light load
//!   (`LATENCY_CLIENTS` clients);
//! - the same two through the router, once via `cleave_router::serve` and once via the same `RouterService` on a
//!   server that sets TCP_NODELAY on accepted sockets (the only difference).
//!
//! Reported: completed streamed requests per second; p50/p99 of end-to-end request time (call → last message) and
//! the router's added latency (router minus direct, same run); process CPU per request through the router minus
//! directly, i.e. what the router itself costs; how evenly the router spread requests over the workers.
//!
//! Run: `cargo bench -p cleave-router --bench throughput`. Everything shares one 2-thread runtime, like a 2-core
//! box: the request rates include the clients' and the workers' CPU, so they bound the router from below.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)] // a benchmark binary

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_proto::v1::generation_server::GenerationServer;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_router::policy::PolicyConfig;
use cleave_router::{RouterModel, RouterService, WorkerEndpoint, WorkerPool, serve};
use cleave_simworker::{SimConfig, SimWorker};
use cleave_tokens::block_hashes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};

const WORKERS: usize = 4;
const CONNECTIONS: usize = 4;
const THROUGHPUT_CLIENTS: usize = 64;
const LATENCY_CLIENTS: usize = 4;
const WARMUP: Duration = Duration::from_millis(300);
const PHASE: Duration = Duration::from_millis(1500);
const PROMPTS: usize = 64;

struct Scenario {
    name: &'static str,
    sim: SimConfig,
    max_tokens: u32,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "instant workers, 4 tokens",
            sim: SimConfig::instant(),
            max_tokens: 4,
        },
        Scenario {
            name: "2 ms TTFT + 1 ms/token, 4 tokens",
            sim: SimConfig {
                time_to_first_token: Duration::from_millis(2),
                prefill_per_token: Duration::ZERO,
                inter_token_latency: Duration::from_millis(1),
                ..SimConfig::default()
            },
            max_tokens: 4,
        },
    ]
}

/// Distinct prompts (30–60 tokens), so routing has prefixes to match and several workers to spread over.
fn prompt_text(i: usize) -> String {
    format!(
        "Request family {i}: summarise the following notes about cache-aware routing in a serving cluster, \
         then list {} open questions.",
        i % 7 + 2
    )
}

/// CPU time this process has used (all threads, user + system), from `/proc/self/stat` (10 ms ticks).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// One measured phase: how many streams completed, and each one's end-to-end time.
struct PhaseResult {
    completed: u64,
    /// CPU the whole process (clients, router, workers) spent during the measured window.
    cpu: Duration,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl PhaseResult {
    /// Process CPU per completed request, in µs.
    fn cpu_per_request_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.completed.max(1) as f64
    }

    fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_us(&self, p: f64) -> f64 {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return f64::NAN;
        }
        f64::from(v[((v.len() as f64 * p) as usize).min(v.len() - 1)])
    }
}

/// How one client task issues a request and waits for its stream to end.
#[derive(Clone)]
enum Target {
    Router(GenerationClient<Channel>),
    Direct(WorkerClient<Channel>),
}

impl Target {
    async fn one(&mut self, i: usize, prompts: &[(String, Vec<u32>)], max_tokens: u32) -> Result<(), tonic::Status> {
        let (text, ids) = &prompts[i % prompts.len()];
        let sampling = v1::GenerateRequest {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        };
        let mut messages = 0;
        match self {
            Target::Router(client) => {
                let req = v1::GenerateRequest {
                    prompt: text.clone(),
                    ..sampling
                };
                let mut stream = client.generate(req).await?.into_inner();
                while stream.message().await?.is_some() {
                    messages += 1;
                }
            }
            Target::Direct(client) => {
                let req = v1::WorkerGenerateRequest {
                    request_id: String::new(),
                    prompt_token_ids: ids.clone(),
                    sampling: Some(sampling),
                    remote_prefill: None,
                };
                let mut stream = client.generate(req).await?.into_inner();
                while stream.message().await?.is_some() {
                    messages += 1;
                }
            }
        }
        if messages == max_tokens {
            Ok(())
        } else {
            Err(tonic::Status::data_loss(format!(
                "{messages} messages, wanted {max_tokens}"
            )))
        }
    }
}

/// `clients` tasks, spread over `targets`, each issuing requests back to back for WARMUP + PHASE.
async fn drive(
    targets: &[Target],
    clients: usize,
    prompts: Arc<Vec<(String, Vec<u32>)>>,
    max_tokens: u32,
) -> PhaseResult {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut target = targets[c % targets.len()].clone();
        let (measuring, stop, completed, errors, prompts) = (
            measuring.clone(),
            stop.clone(),
            completed.clone(),
            errors.clone(),
            prompts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c * 7919;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let ok = target.one(i, &prompts, max_tokens).await;
                let took = t.elapsed();
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    match ok {
                        Ok(()) => {
                            completed.fetch_add(1, Ordering::Relaxed);
                            latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        }
                        Err(status) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                println!("  first error: {status}");
                            }
                        }
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let (start, cpu_start) = (Instant::now(), process_cpu());
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    let (elapsed, cpu) = (start.elapsed(), process_cpu().saturating_sub(cpu_start));
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.expect("client task"));
    }
    PhaseResult {
        completed: completed.load(Ordering::Relaxed),
        cpu,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    (listener, url)
}

/// `n` separate HTTP/2 connections to `url`.
async fn connections(url: &str, n: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..n {
        let channel = Endpoint::from_shared(url.to_string())
            .expect("url")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        channels.push(channel);
    }
    channels
}

/// How the router's gRPC server is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouterServer {
    /// `cleave_router::serve`, as shipped.
    Serve,
    /// The same `RouterService` on a tonic server whose accepted sockets set TCP_NODELAY.
    NoDelay,
}

impl RouterServer {
    fn label(self) -> &'static str {
        match self {
            RouterServer::Serve => "cleave_router::serve",
            RouterServer::NoDelay => "same service, TCP_NODELAY",
        }
    }
}

struct Row {
    scenario: &'static str,
    server: &'static str,
    router_rate: f64,
    direct_rate: f64,
    router_p50: f64,
    router_p99: f64,
    direct_p50: f64,
    direct_p99: f64,
    /// Process CPU per request through the router minus directly: what the router itself costs.
    router_cpu_us: f64,
    errors: u64,
}

async fn start_router(
    server: RouterServer,
    model: Arc<RouterModel>,
    worker_urls: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> String {
    let endpoints: Vec<WorkerEndpoint> = worker_urls.iter().map(WorkerEndpoint::both).collect();
    let pool = Arc::new(WorkerPool::start(&endpoints, PolicyConfig::default()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.reachable() < worker_urls.len() {
        assert!(Instant::now() < deadline, "simulated workers never became reachable");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (listener, url) = listen().await;
    let service = RouterService::new(model, pool, "bench".into());
    match server {
        RouterServer::Serve => {
            tokio::spawn(serve(service, listener, shutdown));
        }
        RouterServer::NoDelay => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(GenerationServer::new(service))
                    .serve_with_incoming_shutdown(incoming, shutdown),
            );
        }
    }
    url
}

async fn run_scenario(scenario: &Scenario, model: Arc<RouterModel>) -> Vec<Row> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut worker_urls = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (listener, url) = listen().await;
        let worker = SimWorker::new(scenario.sim.clone()).expect("valid sim config");
        let stopped = shutdown(stop_rx.clone());
        tokio::spawn(cleave_simworker::serve_worker(worker.clone(), listener, stopped));
        worker_urls.push(url);
        workers.push(worker);
    }
    let accepted = |workers: &[SimWorker]| workers.iter().map(|w| w.stats().accepted).collect::<Vec<_>>();
    let prompts: Arc<Vec<(String, Vec<u32>)>> = Arc::new(
        (0..PROMPTS)
            .map(|i| {
                let text = prompt_text(i);
                let ids = model.tokenizer.encode(&text, true).expect("tokenize");
                (text, ids)
            })
            .collect(),
    );
    let max = scenario.max_tokens;
    let mut direct = Vec::new();
    for url in &worker_urls {
        let channel = connections(url, 1).await.swap_remove(0);
        direct.push(Target::Direct(WorkerClient::new(channel)));
    }
    let direct_tp = drive(&direct, THROUGHPUT_CLIENTS, prompts.clone(), max).await;
    let direct_lat = drive(&direct, LATENCY_CLIENTS, prompts.clone(), max).await;
    println!(
        "  {}: direct, {THROUGHPUT_CLIENTS} clients: p50/p99 {:.0}/{:.0} µs, process CPU {:.0} µs/request",
        scenario.name,
        direct_tp.percentile_us(0.5),
        direct_tp.percentile_us(0.99),
        direct_tp.cpu_per_request_us(),
    );
    let mut rows = Vec::new();
    for server in [RouterServer::Serve, RouterServer::NoDelay] {
        let url = start_router(server, model.clone(), &worker_urls, shutdown(stop_rx.clone())).await;
        let router: Vec<Target> = connections(&url, CONNECTIONS)
            .await
            .into_iter()
            .map(|c| Target::Router(GenerationClient::new(c)))
            .collect();
        let before = accepted(&workers);
        let router_tp = drive(&router, THROUGHPUT_CLIENTS, prompts.clone(), max).await;
        let spread: Vec<u64> = accepted(&workers).iter().zip(&before).map(|(a, b)| a - b).collect();
        println!("  requests per worker through the router: {spread:?}");
        let router_lat = drive(&router, LATENCY_CLIENTS, prompts.clone(), max).await;
        println!(
            "  {} via {}, {THROUGHPUT_CLIENTS} clients: p50/p99 {:.0}/{:.0} µs, process CPU {:.0} µs/request",
            scenario.name,
            server.label(),
            router_tp.percentile_us(0.5),
            router_tp.percentile_us(0.99),
            router_tp.cpu_per_request_us(),
        );
        rows.push(Row {
            scenario: scenario.name,
            server: server.label(),
            router_rate: router_tp.rate(),
            direct_rate: direct_tp.rate(),
            router_p50: router_lat.percentile_us(0.5),
            router_p99: router_lat.percentile_us(0.99),
            direct_p50: direct_lat.percentile_us(0.5),
            direct_p99: direct_lat.percentile_us(0.99),
            router_cpu_us: router_tp.cpu_per_request_us() - direct_tp.cpu_per_request_us(),
            errors: router_tp.errors + direct_tp.errors + router_lat.errors + direct_lat.errors,
        });
    }
    let _ = stop_tx.send(true);
    rows
}

/// The router's own per-request work outside gRPC: tokenizing the prompt and hashing its blocks.
fn component_costs(model: &RouterModel) {
    const ROUNDS: usize = 50;
    let texts: Vec<String> = (0..PROMPTS).map(prompt_text).collect();
    let t = Instant::now();
    let mut tokens = 0;
    for _ in 0..ROUNDS {
        for text in &texts {
            let ids = model.tokenizer.encode(text, true).expect("tokenize");
            tokens += ids.len();
            std::hint::black_box(block_hashes(&ids, 16, 0));
        }
    }
    let n = (ROUNDS * PROMPTS) as f64;
    println!(
        "tokenize + block hashes: {:.1} µs per prompt ({:.0} tokens on average)",
        t.elapsed().as_secs_f64() * 1e6 / n,
        tokens as f64 / n
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let model =
        Arc::new(RouterModel::from_gguf("smollm2-135m", &cleave_testkit::default_model_path()).expect("router model"));
    component_costs(&model);
    println!(
        "{WORKERS} simulated workers, {CONNECTIONS} client connections, throughput with {THROUGHPUT_CLIENTS} clients, \
         latency with {LATENCY_CLIENTS} clients; {:.1?} per phase",
        PHASE
    );
    let rows: Vec<Row> = scenarios()
        .iter()
        .flat_map(|s| runtime.block_on(run_scenario(s, model.clone())))
        .collect();
    println!();
    println!(
        "| scenario | router server | router req/s | direct req/s | router CPU µs/req | router p50 / p99 (µs) | direct p50 / p99 (µs) | added p50 / p99 (µs) | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {} |",
            r.scenario,
            r.server,
            r.router_rate,
            r.direct_rate,
            r.router_cpu_us,
            r.router_p50,
            r.router_p99,
            r.direct_p50,
            r.direct_p99,
            r.router_p50 - r.direct_p50,
            r.router_p99 - r.direct_p99,
            r.errors
        );
    }
}
