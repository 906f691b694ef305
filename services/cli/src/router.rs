//! `cleave router`: the public Generation API in front of a set of workers.

use std::sync::Arc;

use cleave_router::policy::PolicyConfig;
use cleave_router::{RouterModel, RouterService, WorkerPool, grpc_url, serve};

use crate::args::RouterArgs;
use crate::error::CliError;
use crate::model::{self, ModelPath};
use crate::worker::shutdown_signal;

pub fn run_router(args: &RouterArgs) -> Result<(), CliError> {
    let (name, path) = model::locate(&args.model)?;
    let router_model = match &path {
        ModelPath::Gguf(file) => RouterModel::from_gguf(&name, file)?,
        ModelPath::HfDir(dir) => RouterModel::from_hf_dir(&name, dir)?,
    };
    for url in &args.workers {
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
        let pool = WorkerPool::start(&args.workers, PolicyConfig::default()).map_err(|source| CliError::WorkerUrl {
            url: args.workers.join(","),
            source,
        })?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| CliError::Listen {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| CliError::Listen {
            addr: args.listen,
            source,
        })?;
        eprintln!(
            "cleave router: {name} on {} -> {} worker(s)",
            grpc_url(addr),
            args.workers.len()
        );
        let service = RouterService::new(
            Arc::new(router_model),
            Arc::new(pool),
            format!("router-{}", std::process::id()),
        );
        serve(service, listener, shutdown_signal()).await?;
        Ok(())
    })
}
