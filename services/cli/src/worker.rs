//! `cleave worker`: one engine replica serving the internal Worker gRPC API, registered in etcd with `--etcd`.

use std::sync::Arc;
use std::time::Duration;

use cleave_cluster::registry::{ParallelLayout, Registry, WorkerRecord, WorkerRole, register_worker};
use cleave_cluster::tls::ClusterTls;
use cleave_engine::model::PipelineStage;
use cleave_engine::parallel::TpRank;
use cleave_engine::scheduler::SchedulerConfig;
use cleave_engine::{Device, Engine, EngineConfig};
use cleave_telemetry::{Telemetry, WorkerLabels};
use cleave_worker::kv_inbox::{CUDA_IPC, TCP};
use cleave_worker::nccl_links::NCCL;
use cleave_worker::{KvInbox, NcclLinks, WorkerService, register_worker_metrics, serve_with};

use crate::args::{DisaggArgs, WorkerArgs};
use crate::error::CliError;
use crate::router::start_metrics;
use crate::{model, parallel, registry};

pub fn run_worker(args: &WorkerArgs, device: cleave_engine::Device) -> Result<(), CliError> {
    let (name, path) = model::locate(&args.model)?;
    let loaded = model::load(&path)?;
    let world = args.parallel.world();
    let model_config = match &loaded {
        model::Loaded::Weights(weights, _) => weights.config().clone(),
        model::Loaded::Synthetic(config, _) if world == 1 => config.clone(),
        model::Loaded::Synthetic(..) => {
            return Err(CliError::SyntheticModel {
                spec: args.model.clone(),
            });
        }
    };
    let stages = usize::from(args.parallel.pipeline_parallel);
    let [tensor, _, expert, context] = args.parallel.kinds();
    let tensor_in_stages = stages > 1 && tensor > 1 && expert == 1 && context == 1;
    if args.parallel.kinds().iter().filter(|&&n| n > 1).count() > 1 && !tensor_in_stages {
        return Err(CliError::ParallelCombined);
    }
    if stages > 1 && WorkerRole::from(args.disagg.role) == WorkerRole::Prefill {
        return Err(CliError::PipelinePrefill);
    }
    TpRank::check(&model_config, usize::from(args.parallel.tensor_parallel))?;
    PipelineStage::new(model_config.n_layers, stages, 0, 1)?;
    if args.parallel.expert_parallel > 1 {
        TpRank::check_experts(&model_config, usize::from(args.parallel.expert_parallel))?;
    }
    let rank = args.parallel.group_rank.map_or(0, usize::from);
    if rank >= world {
        return Err(CliError::GroupRank { rank, world });
    }
    // The first GPU of a GPU parallel group (rank r runs on the one r above it); every group the checks above let
    // through runs on GPUs too.
    let mut gpus = None;
    if world > 1 {
        if args.registry.etcd.is_empty() {
            return Err(CliError::ParallelNeedsEtcd);
        }
        if let Device::Cuda(first) = device.resolve() {
            gpus = Some(first);
        }
    }
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_batch_tokens: args.max_batch_tokens as usize,
            ..SchedulerConfig::default()
        },
        kv_cache_bytes: (args.kv_cache_mib as usize) << 20,
    };
    let (weights, tokenizer) = match loaded {
        model::Loaded::Weights(weights, tokenizer) => (Some(*weights), tokenizer),
        model::Loaded::Synthetic(_, tokenizer) => (None, tokenizer),
    };
    if rank > 0 {
        let weights = weights.ok_or_else(|| CliError::SyntheticModel {
            spec: args.model.clone(),
        })?;
        return parallel::follow(args, weights, rank, gpus.map(|first| (first, &config)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let (listener, addr) = bind(args.listen).await?;
        let id = args
            .id
            .clone()
            .unwrap_or_else(|| format!("worker-{}-{}", addr.ip(), addr.port()));
        let cluster_tls = args.cluster_tls.load()?;
        let scheme = if cluster_tls.is_some() { "https" } else { "http" };
        let grpc_url = args.advertise.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
        let registry = registry::connect(&args.registry).await?;
        let failure = Arc::new(parallel::FailureSignal::default());
        // Declared before the engine so it is dropped after it: the ranks this worker started exit once the
        // engine ends the group.
        let mut group = None;
        let engine = match &registry {
            Some((registry, layout)) if world > 1 => {
                let weights = weights.ok_or_else(|| CliError::SyntheticModel {
                    spec: args.model.clone(),
                })?;
                let led =
                    group.insert(parallel::lead(args, registry.as_ref(), layout, &id, (addr, &grpc_url), gpus).await?);
                let comm: Arc<dyn cleave_comm::Communicator> = led.comm.clone();
                let (tokenizer, heartbeat) = (Arc::new(tokenizer), led.heartbeat);
                Arc::new(match gpus {
                    Some(first) => {
                        let cache = model::kernel_cache_dir();
                        let part = parallel::gpu_part(&args.parallel, weights.config(), 0)?;
                        let local = cleave_engine::device::cuda_rank(weights, part, first, &config, cache.as_deref())?;
                        Engine::start_group(local, comm, tokenizer, config.scheduler, heartbeat, failure.hook())?
                    }
                    None => Engine::start_parallel(
                        parallel::split(weights, led.comm.clone(), &args.parallel)?,
                        comm,
                        tokenizer,
                        config,
                        heartbeat,
                        failure.hook(),
                    )?,
                })
            }
            _ => Arc::new(match weights {
                Some(weights) => model::start_engine_with(weights, tokenizer, config, device)?,
                None => model::start_synthetic(model_config, tokenizer, config, device)?,
            }),
        };
        let telemetry = Telemetry::new();
        let labels = worker_labels(&id, WorkerRole::from(args.disagg.role));
        let (service, mut record) = prepare_worker(
            engine.clone(),
            &name,
            (id, grpc_url, addr),
            &args.disagg,
            &telemetry,
            cluster_tls.as_ref(),
            registry
                .as_ref()
                .map(|(registry, layout)| (registry.clone(), layout.prefix())),
        )
        .await?;
        record.parallel.tensor = u32::from(args.parallel.tensor_parallel);
        record.parallel.pipeline = u32::from(args.parallel.pipeline_parallel);
        record.parallel.expert = u32::from(args.parallel.expert_parallel);
        record.parallel.context = u32::from(args.parallel.context_parallel);
        record.group = group.as_ref().map(|g| g.name.clone()).unwrap_or_default();
        // Serve metrics before registering, so the record can say where to scrape them.
        if let Some(local) = start_metrics(args.metrics_listen, &telemetry, "worker").await? {
            record.metrics_addr = advertised(local, &record.grpc_addr);
        }
        let registration = match &registry {
            Some((registry, layout)) => {
                let ttl = Duration::from_secs(args.lease_ttl_secs);
                Some(register_worker(registry.as_ref(), layout, &record, ttl).await?)
            }
            None => None,
        };
        telemetry.workers.set_lease_held(&labels, registration.is_some());
        let kv = if record.kv_addr.is_empty() {
            String::new()
        } else {
            format!(", KV transfers on {}", record.kv_addr)
        };
        eprintln!(
            "cleave worker: {name} as {:?} on grpc://{addr} ({} KV blocks{kv})",
            record.role,
            engine.kv_blocks()
        );
        // On SIGTERM: deregister first, so routers stop sending here, then let in-flight streams finish (the
        // server stops accepting new calls and waits for the open ones).
        // Requests still running `--drain-secs` after the signal are aborted (their KV blocks freed).
        // A broken tensor-parallel group leaves the same way, and the worker then exits with its cause.
        let (signalled, drain_started) = tokio::sync::oneshot::channel::<()>();
        let group_failure = failure.clone();
        let drain = async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = group_failure.failed() => eprintln!("cleave worker: the tensor-parallel group failed; leaving"),
            }
            let _ = signalled.send(());
            if let Some(lease) = registration {
                lease.revoke().await;
                telemetry.workers.set_lease_held(&labels, false);
            }
        };
        let drain_timeout = Duration::from_secs(args.drain_secs);
        let deadline = async move {
            if drain_started.await.is_ok() {
                tokio::time::sleep(drain_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = serve_with(service, listener, cluster_tls.as_ref(), drain) => {
                served.map_err(CliError::Serve)
            }
            () = deadline => {
                eprintln!("cleave worker: drain timed out after {drain_timeout:?}; aborting in-flight requests");
                Ok(())
            }
        };
        engine.shutdown();
        drop(group);
        match failure.cause() {
            Some(cause) => Err(CliError::GroupFailed(cause)),
            None => served,
        }
    })
}

/// The metric labels of worker `id` in `role`.
pub fn worker_labels(id: &str, role: WorkerRole) -> WorkerLabels {
    WorkerLabels {
        worker: id.to_owned(),
        role: format!("{role:?}").to_lowercase(),
    }
}

/// The Worker service over `engine` in its role, and the record that registers it (`id`, the URL routers dial,
/// the bound gRPC address). Decode and both-role workers get a KV listener (`--kv-listen`, default: `grpc_addr`'s
/// host on a free port) so prefill workers can ship prompt KV to them. The worker's engine and KV transfers are
/// measured in `telemetry`. With `tls` (the cluster's mutual TLS), the KV listener and the connections the worker
/// opens to other workers use it. With `registry` (and its key prefix) and no cluster TLS, a GPU worker also moves KV
/// over NCCL links to GPU workers anywhere, meeting them through the registry.
pub async fn prepare_worker(
    engine: Arc<Engine>,
    model: &str,
    (id, grpc_url, grpc_addr): (String, String, std::net::SocketAddr),
    disagg: &DisaggArgs,
    telemetry: &Telemetry,
    tls: Option<&ClusterTls>,
    registry: Option<(Arc<dyn Registry>, &str)>,
) -> Result<(WorkerService, WorkerRecord), CliError> {
    let role = WorkerRole::from(disagg.role);
    let block_size = engine.block_size();
    let kv_metrics = register_worker_metrics(&telemetry.workers, worker_labels(&id, role), engine.clone());
    let mut service = WorkerService::new(engine.clone(), block_size)
        .with_model(model)
        .with_kv_metrics(kv_metrics.clone());
    if let Some(tls) = tls {
        service = service.with_cluster_tls(tls.clone());
    }
    let mut kv_addr = String::new();
    // NCCL moves bytes unencrypted: with the cluster's mutual TLS on, KV stays on TLS connections (or CUDA IPC,
    // which never leaves the host).
    let registry = registry.filter(|_| tls.is_none());
    let links = NcclLinks::default();
    if let Some((registry, prefix)) = &registry {
        links.enable(&engine, registry.clone(), prefix).await;
    }
    // A GPU engine holding the whole model also moves KV through CUDA IPC with workers of its host, and over NCCL
    // links with GPU workers anywhere.
    let mut kv_transports = match engine.export_kv_pool().await {
        Ok(Some(_)) => vec![CUDA_IPC.to_owned()],
        _ => vec![],
    };
    if links.enabled() {
        kv_transports.push(NCCL.to_owned());
    }
    kv_transports.push(TCP.to_owned());
    service = service.with_nccl_links(links);
    if role != WorkerRole::Prefill {
        let listen = disagg
            .kv_listen
            .unwrap_or_else(|| std::net::SocketAddr::new(grpc_addr.ip(), 0));
        let advertise = disagg.kv_advertise.clone();
        let mut inbox = KvInbox::bind_with_metrics(listen, advertise, engine.clone(), model, kv_metrics, tls.cloned())
            .await
            .map_err(|source| CliError::KvListen { addr: listen, source })?;
        if let Some((registry, prefix)) = registry {
            inbox.nccl_links().enable(&engine, registry, prefix).await;
        }
        if !disagg.kv_transports.is_empty() {
            inbox.offer_only(&disagg.kv_transports);
        }
        kv_addr = inbox.addr().to_owned();
        kv_transports = inbox.transports().into_iter().map(str::to_owned).collect();
        let timeout = Duration::from_secs(disagg.remote_prefill_timeout_secs);
        service = service.with_kv_inbox(Arc::new(inbox), timeout);
    }
    let record = WorkerRecord {
        id,
        role,
        model: model.to_owned(),
        grpc_addr: grpc_url,
        kv_addr,
        kv_transports,
        block_size: block_size as u32,
        capacity_blocks: engine.kv_blocks() as u64,
        parallel: ParallelLayout::default(),
        metrics_addr: String::new(),
        group: String::new(),
    };
    Ok((service, record))
}

/// A listener's address as others should dial it (`host:port`): on an unspecified IP (`0.0.0.0`), the host the
/// worker advertises its gRPC API on (`http://host:port`).
pub(crate) fn advertised(local: std::net::SocketAddr, grpc_url: &str) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let authority = grpc_url.split_once("://").map_or(grpc_url, |(_, rest)| rest);
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
    format!("{host}:{}", local.port())
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), CliError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| CliError::Listen { addr, source })?;
    Ok((listener, local))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
