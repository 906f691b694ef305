//! `cleave worker`: one engine replica serving the internal Worker gRPC API, registered in etcd with `--etcd`.

use std::sync::Arc;
use std::time::Duration;

use cleave_cluster::registry::{ParallelLayout, WorkerRecord, WorkerRole, register_worker};
use cleave_engine::scheduler::SchedulerConfig;
use cleave_engine::{Engine, EngineConfig, load_model};
use cleave_worker::{WorkerService, serve};

use crate::args::WorkerArgs;
use crate::error::CliError;
use crate::{model, registry};

pub fn run_worker(args: &WorkerArgs) -> Result<(), CliError> {
    let (name, path) = model::locate(&args.model)?;
    let (weights, tokenizer) = load_model(path.files())?;
    let scheduler = SchedulerConfig {
        max_batch_tokens: args.max_batch_tokens as usize,
        ..SchedulerConfig::default()
    };
    let block_size = scheduler.block_size;
    let config = EngineConfig {
        scheduler,
        kv_cache_bytes: (args.kv_cache_mib as usize) << 20,
    };
    let engine = Arc::new(Engine::start(weights, Arc::new(tokenizer), config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let (listener, addr) = bind(args.listen).await?;
        let registration = match registry::connect(&args.registry).await? {
            Some((registry, layout)) => {
                let record = WorkerRecord {
                    id: args
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("worker-{}-{}", addr.ip(), addr.port())),
                    role: WorkerRole::Both,
                    model: name.clone(),
                    grpc_addr: args.advertise.clone().unwrap_or_else(|| format!("http://{addr}")),
                    kv_addr: String::new(),
                    kv_transports: Vec::new(),
                    block_size: block_size as u32,
                    capacity_blocks: engine.kv_blocks() as u64,
                    parallel: ParallelLayout::default(),
                };
                let ttl = Duration::from_secs(args.lease_ttl_secs);
                Some(register_worker(registry.as_ref(), &layout, &record, ttl).await?)
            }
            None => None,
        };
        eprintln!(
            "cleave worker: {name} on grpc://{addr} ({} KV blocks)",
            engine.kv_blocks()
        );
        // On SIGTERM: deregister first, so routers stop sending here, then let in-flight streams finish (the
        // server stops accepting new calls and waits for the open ones).
        // Requests still running `--drain-secs` after the signal are aborted (their KV blocks freed).
        let (signalled, drain_started) = tokio::sync::oneshot::channel::<()>();
        let drain = async move {
            shutdown_signal().await;
            let _ = signalled.send(());
            if let Some(lease) = registration {
                lease.revoke().await;
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
        tokio::select! {
            served = serve(WorkerService::new(engine.clone(), block_size), listener, drain) => {
                served.map_err(CliError::Serve)
            }
            () = deadline => {
                eprintln!("cleave worker: drain timed out after {drain_timeout:?}; aborting in-flight requests");
                Ok(())
            }
        }
    })
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
