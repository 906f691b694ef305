//! `cleave router`: the public Generation API in front of workers given by `--worker` / `--prefill-worker` and/or
//! found in etcd.

use std::sync::Arc;

use cleave_cluster::registry::{RegistryView, WorkerRole};
use cleave_cluster::tls::PublicTls;
use cleave_router::auth::ApiKeys;
use cleave_router::{Frontend, RouterService, ServeOptions, WorkerEndpoint, WorkerPool, grpc_url, serve_with};
use cleave_telemetry::Telemetry;

use crate::args::{HttpArgs, RouterArgs};
use crate::error::CliError;
use crate::model;
use crate::registry;
use crate::worker::{bind, shutdown_signal};

pub fn run_router(args: &RouterArgs) -> Result<(), CliError> {
    let (name, path) = model::locate(&args.model)?;
    let router_model = model::router_model(&name, &path)?;
    let cluster_tls = args.cluster_tls.load()?;
    let public = PublicSecurity::load(&args.http)?;
    for url in args.workers.iter().chain(&args.prefill_workers) {
        if let Err(source) = tonic::transport::Endpoint::from_shared(url.clone()) {
            return Err(CliError::WorkerUrl {
                url: url.clone(),
                source,
            });
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let static_workers: Vec<WorkerEndpoint> = args
            .workers
            .iter()
            .map(WorkerEndpoint::both)
            .chain(
                args.prefill_workers
                    .iter()
                    .map(|url| WorkerEndpoint::new(url, WorkerRole::Prefill)),
            )
            .collect();
        let policy = args.routing.policy();
        let pool = WorkerPool::new(policy).with_cluster_tls(cluster_tls);
        pool.set_workers(&static_workers);
        let pool = Arc::new(pool);
        // Kept alive for the router's lifetime: dropping the view stops following the registry.
        let _view = match registry::connect(&args.registry).await? {
            Some((registry, layout)) => {
                let view = RegistryView::start(registry, &layout);
                tokio::spawn(follow_registry(
                    view.subscribe(),
                    pool.clone(),
                    static_workers.clone(),
                    name.clone(),
                ));
                Some(view)
            }
            None => None,
        };
        let (listener, addr) = bind(args.listen).await?;
        eprintln!("cleave router: {name} on {}{}", grpc_url(addr), public.describe());
        let telemetry = Telemetry::new();
        start_metrics(args.metrics_listen, &telemetry, "router").await?;
        let frontend = Frontend::new(Arc::new(router_model), pool, format!("router-{}", std::process::id()))
            .with_admission(args.routing.admission())
            .with_metrics(telemetry.router.clone());
        let service = RouterService::from_frontend(Arc::new(frontend));
        start_http(&args.http, &public, &service).await?;
        serve_with(service, listener, public.grpc(), shutdown_signal()).await?;
        Ok(())
    })
}

/// With `--http-listen`, serves the OpenAI-compatible HTTP API on the gRPC service's request path until
/// SIGINT/SIGTERM. Binding fails here, before anything serves; a failure while serving is logged.
pub async fn start_http(args: &HttpArgs, public: &PublicSecurity, service: &RouterService) -> Result<(), CliError> {
    let Some(addr) = args.http_listen else { return Ok(()) };
    let (listener, local) = bind(addr).await?;
    eprintln!(
        "cleave router: OpenAI-compatible HTTP on {}{}",
        cleave_router::http::http_url(local, public.tls.is_some()),
        public.describe()
    );
    let (frontend, config) = (service.frontend(), public.http());
    tokio::spawn(async move {
        if let Err(e) = cleave_router::http::serve_http(frontend, config, listener, shutdown_signal()).await {
            eprintln!("cleave router: the HTTP server failed: {e}");
        }
    });
    Ok(())
}

/// The public endpoints' TLS and API keys, loaded from the flags.
#[derive(Debug)]
pub struct PublicSecurity {
    pub tls: Option<PublicTls>,
    pub api_keys: ApiKeys,
}

impl PublicSecurity {
    pub fn load(args: &HttpArgs) -> Result<Self, CliError> {
        Ok(Self {
            tls: args.tls.load()?,
            api_keys: args.api_keys.load()?,
        })
    }

    pub fn grpc(&self) -> ServeOptions {
        ServeOptions {
            tls: self.tls.as_ref().map(PublicTls::grpc_server),
            api_keys: self.api_keys.clone(),
        }
    }

    pub fn http(&self) -> cleave_router::http::HttpConfig {
        cleave_router::http::HttpConfig {
            api_keys: self.api_keys.clone(),
            tls: self.tls.clone(),
        }
    }

    /// ` (TLS, API key required)` and the like, for the startup lines.
    pub fn describe(&self) -> String {
        let mut notes = Vec::new();
        if self.tls.is_some() {
            notes.push("TLS");
        }
        if !self.api_keys.is_open() {
            notes.push("API key required");
        }
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        }
    }
}

/// With `--metrics-listen`, serves Prometheus `/metrics` from `telemetry` until SIGINT/SIGTERM. Binding fails
/// here, before anything serves; a failure while serving is logged.
pub async fn start_metrics(
    addr: Option<std::net::SocketAddr>,
    telemetry: &Telemetry,
    who: &str,
) -> Result<Option<std::net::SocketAddr>, CliError> {
    let Some(addr) = addr else { return Ok(None) };
    let (listener, local) = bind(addr).await?;
    eprintln!("cleave {who}: Prometheus metrics on http://{local}/metrics");
    let (telemetry, who) = (telemetry.clone(), who.to_owned());
    tokio::spawn(async move {
        if let Err(e) = cleave_telemetry::serve_metrics(telemetry, listener, shutdown_signal()).await {
            eprintln!("cleave {who}: the metrics server failed: {e}");
        }
    });
    Ok(Some(local))
}

/// How a registered parallel group serves as one replica: its name under `groups/` (where each rank's placement
/// is) and its split; empty for a worker on one device.
fn group_of(w: &cleave_cluster::registry::WorkerRecord) -> String {
    if w.group.is_empty() {
        return String::new();
    }
    let p = &w.parallel;
    let kinds = [
        ("tensor", p.tensor),
        ("pipeline", p.pipeline),
        ("expert", p.expert),
        ("context", p.context),
    ];
    let split: Vec<String> = kinds
        .iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!("{} ({})", w.group, split.join(" × "))
}

/// The registered workers this router routes to: those serving `model` with KV blocks of `block_size` tokens
/// (prefix hashes and KV transfers need one block size across the pool). The others come back as refusals, each
/// naming the worker and why.
fn routable<'a>(
    records: impl Iterator<Item = &'a cleave_cluster::registry::WorkerRecord>,
    model: &str,
    block_size: usize,
) -> (Vec<WorkerEndpoint>, Vec<(String, String)>) {
    let (mut workers, mut refused) = (Vec::new(), Vec::new());
    for w in records.filter(|w| w.model == model) {
        if w.block_size as usize != block_size {
            refused.push((
                w.id.clone(),
                format!(
                    "it registers {}-token KV blocks and this router's pool uses {block_size}-token blocks (prefix \
                     hashes and KV transfers need one block size); not routed to",
                    w.block_size
                ),
            ));
            continue;
        }
        workers.push(WorkerEndpoint::new(w.grpc_addr.clone(), w.role).in_group(group_of(w)));
    }
    (workers, refused)
}

/// Keeps the pool equal to the static workers plus the registered workers serving this model, each with its
/// registered role (a role change in the registry reaches the pool; a static worker's flag wins over its record).
/// A worker whose KV block size differs from the pool's is refused, with an error logged once per registration.
/// While etcd is unreachable the view keeps its last snapshot, so the pool does not change.
pub async fn follow_registry(
    mut snapshots: tokio::sync::watch::Receiver<Arc<cleave_cluster::registry::WorkerSnapshot>>,
    pool: Arc<WorkerPool>,
    static_workers: Vec<WorkerEndpoint>,
    model: String,
) {
    let mut reported = std::collections::HashSet::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.synced {
            let mut workers = static_workers.clone();
            let (registered, refused) = routable(snapshot.workers.values(), &model, pool.block_size());
            workers.extend(registered);
            for (id, why) in &refused {
                if reported.insert(id.clone()) {
                    tracing::error!(worker = %id, "worker refused: {why}");
                }
            }
            reported.retain(|id| refused.iter().any(|(r, _)| r == id));
            pool.set_workers(&workers);
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use cleave_cluster::registry::{WorkerRecord, WorkerRole};

    use super::routable;

    fn record(id: &str, model: &str, block_size: u32) -> WorkerRecord {
        WorkerRecord {
            id: id.to_owned(),
            role: WorkerRole::Decode,
            model: model.to_owned(),
            grpc_addr: format!("http://{id}:50061"),
            kv_addr: format!("{id}:50071"),
            kv_transports: vec!["tcp".to_owned()],
            block_size,
            capacity_blocks: 100,
            parallel: Default::default(),
            metrics_addr: String::new(),
            group: String::new(),
        }
    }

    #[test]
    fn workers_of_another_block_size_are_refused_by_name() {
        let records = [record("d0", "m", 16), record("d1", "m", 32), record("d2", "other", 16)];
        let (workers, refused) = routable(records.iter(), "m", 16);
        assert_eq!(workers.len(), 1, "only d0 serves this model with 16-token blocks");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "d1");
        assert!(refused[0].1.contains("32-token KV blocks"), "{}", refused[0].1);
    }
}
