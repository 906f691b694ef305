//! `cleave up`: the whole cluster in one process — a router, a prefill worker and a decode worker (by default)
//! talking gRPC on loopback, prompt KV moving between the workers over the TCP KV transport, discovering each other
//! through an embedded registry (the same leases and watches as etcd), or through etcd with `--etcd`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_cluster::registry::{EmbeddedRegistry, KeyLayout, LeaseGuard, Registry, RegistryView, register_worker};
use cleave_engine::EngineConfig;
use cleave_proto::v1;
use cleave_router::{Frontend, RouterService, WorkerPool, WorkerRole, grpc_url, serve_with};
use cleave_telemetry::Telemetry;

use crate::args::{DisaggArgs, Role, UpArgs};
use crate::error::CliError;
use crate::model::{self, ModelPath};
use crate::registry;
use crate::router::{PublicSecurity, follow_registry, start_http, start_metrics};
use crate::worker::{bind, prepare_worker, shutdown_signal, worker_labels};

const LEASE_TTL: Duration = Duration::from_secs(10);

pub fn run_up(args: &UpArgs, device: cleave_engine::Device) -> Result<(), CliError> {
    let (name, path) = model::locate(&args.model)?;
    let router_model = model::router_model(&name, &path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let (registry, layout): (Arc<dyn Registry>, KeyLayout) = match registry::connect(&args.registry).await? {
            Some(found) => found,
            None => (
                Arc::new(EmbeddedRegistry::new()),
                KeyLayout::new(&args.registry.etcd_prefix)?,
            ),
        };
        let telemetry = Telemetry::new();
        let mut leases = Vec::new();
        let roles = std::iter::repeat_n(Role::Prefill, args.prefill_workers as usize)
            .chain(std::iter::repeat_n(Role::Decode, args.workers as usize));
        for (i, role) in roles.enumerate() {
            let worker = (i, role, device);
            leases.push(start_worker(args, &path, &name, worker, (registry.as_ref(), &layout), &telemetry).await?);
        }
        let pool = Arc::new(WorkerPool::new(args.routing.policy()));
        let view = RegistryView::start(registry.clone(), &layout);
        tokio::spawn(follow_registry(
            view.subscribe(),
            pool.clone(),
            Vec::new(),
            name.clone(),
        ));

        let public = PublicSecurity::load(&args.http)?;
        let (listener, addr) = bind(args.listen).await?;
        eprintln!(
            "cleave up: {name}, {} prefill + {} decode worker(s), router on {}{}",
            args.prefill_workers,
            args.workers,
            grpc_url(addr),
            public.describe()
        );
        eprintln!(
            "try: grpcurl -plaintext -d '{{\"prompt\":\"The capital of France is\",\"max_tokens\":16}}' {addr} \
             cleave.v1.Generation/Generate"
        );
        match args.prompt.clone() {
            // The sample is a plain-text client without a key: it cannot reach a secured router.
            Some(_) if public.tls.is_some() || !public.api_keys.is_open() => {
                eprintln!("cleave up: --prompt is skipped: the router requires TLS or an API key");
            }
            Some(prompt) => {
                tokio::spawn(sample(format!("http://{addr}"), prompt, args.max_tokens, pool.clone()));
            }
            None => {}
        }
        start_metrics(args.metrics_listen, &telemetry, "up").await?;
        let frontend = Frontend::new(Arc::new(router_model), pool, "up".to_string())
            .with_admission(args.routing.admission())
            .with_metrics(telemetry.router.clone());
        let service = RouterService::from_frontend(Arc::new(frontend));
        start_http(&args.http, &public, &service).await?;
        let served = serve_with(service, listener, public.grpc(), shutdown_signal()).await;
        for (lease, labels) in leases {
            lease.revoke().await;
            telemetry.workers.set_lease_held(&labels, false);
        }
        drop(view);
        served.map_err(CliError::from)
    })
}

/// Loads one engine, serves it in `role` on an ephemeral loopback port, and registers it. Returns its lease and
/// its metric labels.
async fn start_worker(
    args: &UpArgs,
    path: &ModelPath,
    name: &str,
    (i, role, device): (usize, Role, cleave_engine::Device),
    (registry, layout): (&dyn Registry, &KeyLayout),
    telemetry: &Telemetry,
) -> Result<(LeaseGuard, cleave_telemetry::WorkerLabels), CliError> {
    let config = EngineConfig {
        kv_cache_bytes: (args.kv_cache_mib as usize) << 20,
        ..EngineConfig::default()
    };
    let engine = Arc::new(model::start(path, config, device)?);
    let (listener, addr) = bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let disagg = DisaggArgs {
        role,
        kv_listen: None,
        kv_advertise: None,
        kv_transports: Vec::new(),
        remote_prefill_timeout_secs: 30,
    };
    let id = format!("up-{}-{i}", format!("{role:?}").to_lowercase());
    let labels = worker_labels(&id, role.into());
    let (service, record) = prepare_worker(
        engine,
        name,
        (id, format!("http://{addr}"), addr),
        &disagg,
        telemetry,
        None,
        None,
    )
    .await?;
    tokio::spawn(async move {
        if let Err(e) = cleave_worker::serve(service, listener, shutdown_signal()).await {
            tracing::error!(error = %e, "worker {i} stopped");
        }
    });
    let lease = register_worker(registry, layout, &record, LEASE_TTL).await?;
    telemetry.workers.set_lease_held(&labels, true);
    Ok((lease, labels))
}

/// Streams one greedy completion through the router to stdout, once a worker is reachable.
async fn sample(url: String, prompt: String, max_tokens: u32, pool: Arc<WorkerPool>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.reachable_where(|role| role != WorkerRole::Prefill) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request = v1::GenerateRequest {
        prompt: prompt.clone(),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..Default::default()
    };
    let result = async {
        let mut client = v1::generation_client::GenerationClient::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = client.generate(request).await.map_err(|e| e.to_string())?.into_inner();
        print_flushed(&prompt);
        while let Some(msg) = stream.message().await.map_err(|e| e.to_string())? {
            print_flushed(&msg.text);
        }
        print_flushed("\n");
        Ok::<(), String>(())
    };
    if let Err(e) = result.await {
        eprintln!("sample request failed: {e}");
    }
}

/// Writes text to stdout at once (no lock held across awaits).
fn print_flushed(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout only loses the sample's echo; the cluster keeps serving.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
