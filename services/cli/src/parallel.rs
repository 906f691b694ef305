//! `cleave worker --tensor-parallel N` (or `--pipeline-`, `--expert-`, `--context-parallel N`): one engine
//! replica split across N ranks (CPU backend). Rank 0 serves and registers; ranks above 0 follow it. The group forms
//! through etcd (each rank announces where its communicator listens under `<prefix>groups/<group>/`), then
//! connects a TCP mesh.
//!
//! Invariant: a worker that starts its own ranks (no `--group-rank`) runs them as child processes of itself with
//! the same flags, and reaps them when it exits; a follower outlives SIGINT/SIGTERM only until its leader ends the
//! group, which is how a whole group stops cleanly (the leader drains first).
//! Cost: per rank, a full copy of the checkpoint while loading (each keeps only its shard afterwards).

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleave_cluster::registry::{KeyLayout, Registry};
use cleave_comm::{Communicator, GroupSpec, Membership, TcpCommunicator, TcpConfig, form_tcp_group};
use cleave_engine::config::ModelConfig;
use cleave_engine::device::GpuPart;
use cleave_engine::model::PipelineStage;
use cleave_engine::parallel::{GroupFailure, TpRank};
use cleave_engine::{EngineConfig, LlamaModel};

use crate::args::{ParallelArgs, WorkerArgs};
use crate::error::CliError;
use crate::registry;
use crate::worker::{advertised, shutdown_signal};

/// How long followers wait for the leader's next message; the leader's heartbeat comes four times as often.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
const HEARTBEAT: Duration = Duration::from_secs(15);

/// This rank's communicator, its membership in the group (kept as long as the communicator), and the ranks it
/// started on this machine.
#[derive(Debug)]
pub struct Group {
    /// The group's name in etcd (`<prefix>groups/<name>/`).
    pub name: String,
    pub comm: Arc<TcpCommunicator>,
    pub heartbeat: Duration,
    _membership: Membership,
    _local_ranks: LocalRanks,
}

/// Starts ranks 1.. here when this worker leads a group of its own, then joins the group as rank 0.
pub async fn lead(
    args: &WorkerArgs,
    registry: &dyn Registry,
    layout: &KeyLayout,
    id: &str,
    grpc: (SocketAddr, &str),
    gpus: Option<usize>,
) -> Result<Group, CliError> {
    let parallel = &args.parallel;
    let world = parallel.world();
    let (group, local_ranks) = match parallel.group_rank {
        Some(_) => (parallel.group.clone().unwrap_or_default(), LocalRanks::default()),
        None => {
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let group = parallel.group.clone().unwrap_or_else(|| format!("{id}-{started}"));
            let ranks = LocalRanks::spawn(world, parallel.group.is_none().then_some(group.as_str()))?;
            (group, ranks)
        }
    };
    let placement = placement(parallel, 0, gpus);
    let (comm, membership) = join(parallel, registry, layout, (&group, 0, placement), grpc).await?;
    eprintln!("cleave worker: leading parallel group `{group}` of {world} ranks");
    Ok(Group {
        name: group,
        comm,
        heartbeat: HEARTBEAT,
        _membership: membership,
        _local_ranks: local_ranks,
    })
}

/// Runs a follower rank (`--group-rank` above 0) until its leader ends the group: on the CPU, or with `gpu` (the
/// group's first GPU and the engine configuration) on GPU `first + rank`.
pub fn follow(
    args: &WorkerArgs,
    model: LlamaModel,
    rank: usize,
    gpu: Option<(usize, &EngineConfig)>,
) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let group = args.parallel.group.clone().unwrap_or_default();
    let (comm, membership) = runtime.block_on(async {
        let Some((registry, layout)) = registry::connect(&args.registry).await? else {
            return Err(CliError::ParallelNeedsEtcd);
        };
        let grpc_url = args.advertise.clone().unwrap_or_default();
        let placement = placement(&args.parallel, rank, gpu.map(|(first, _)| first));
        join(
            &args.parallel,
            registry.as_ref(),
            &layout,
            (&group, rank, placement),
            (args.listen, &grpc_url),
        )
        .await
    })?;
    // The leader drains and then ends the group; a signal to the whole process group must not cut that short.
    runtime.spawn(async move {
        loop {
            shutdown_signal().await;
            eprintln!("cleave worker: rank {rank} of `{group}` stays until rank 0 ends the group");
        }
    });
    let world = comm.world_size();
    eprintln!("cleave worker: rank {rank} of {world} following");
    // The runtime's own threads keep serving the signal task and the membership's leases meanwhile.
    let followed = match gpu {
        Some((first, config)) => {
            // The rank's part goes to the GPU before the handshake, as the leader's does, so the ranks' uploads
            // overlap and neither waits out the other's inside a timed group operation.
            let part = gpu_part(&args.parallel, model.config(), rank)?;
            let agreed = part.agreed_config(model.config());
            let cache = crate::model::kernel_cache_dir();
            match cleave_engine::device::cuda_rank(model, part, first + rank, config, cache.as_deref()) {
                Ok(local) => cleave_engine::parallel::run_member(&agreed, comm, move |_, _| Ok(local)),
                Err(e) => Err(e),
            }
        }
        None => cleave_engine::parallel::run_follower(split(model, comm.clone(), &args.parallel)?, comm),
    };
    runtime.block_on(membership.leave());
    followed.map_err(CliError::from)
}

/// What GPU rank `rank` of a group holds: its stage of a pipeline (and its tensor-parallel shard of it when both are
/// asked for), the whole model in a context-parallel group, its share of the experts (and heads) in an
/// expert-parallel one, else its tensor-parallel shard.
pub fn gpu_part(args: &ParallelArgs, config: &ModelConfig, rank: usize) -> Result<GpuPart, CliError> {
    if args.context_parallel > 1 {
        let world = usize::from(args.context_parallel);
        return Ok(GpuPart::Context(TpRank { rank, world }));
    }
    if args.expert_parallel > 1 {
        let world = usize::from(args.expert_parallel);
        return Ok(GpuPart::Expert(TpRank { rank, world }));
    }
    let (stages, tensor) = (usize::from(args.pipeline_parallel), usize::from(args.tensor_parallel));
    if stages > 1 {
        let micro_batches = args.micro_batches.map_or(stages, usize::from);
        // Ranks s·T..(s+1)·T form stage s (tensor parallelism inside a node, the pipeline across nodes).
        let stage = PipelineStage::new(config.n_layers, stages, rank / tensor, micro_batches)?;
        return Ok(match tensor {
            1 => GpuPart::Pipeline(stage),
            _ => GpuPart::TensorPipeline {
                tensor: TpRank {
                    rank: rank % tensor,
                    world: tensor,
                },
                stage,
            },
        });
    }
    Ok(GpuPart::Tensor(TpRank {
        rank,
        world: usize::from(args.tensor_parallel),
    }))
}

/// This rank's part of `model`: its stage's layers on a pipeline (with its tensor-parallel shard of them when both
/// are asked for: ranks `s·T..(s+1)·T` form stage s), its experts under expert parallelism, the whole
/// model under context parallelism, else its tensor-parallel shard.
pub fn split(model: LlamaModel, comm: Arc<TcpCommunicator>, args: &ParallelArgs) -> Result<LlamaModel, CliError> {
    let stages = usize::from(args.pipeline_parallel);
    if stages > 1 {
        let micro_batches = args.micro_batches.map_or(stages, usize::from);
        if args.tensor_parallel > 1 {
            return Ok(model.tensor_pipeline(comm, usize::from(args.tensor_parallel), micro_batches)?);
        }
        return Ok(model.pipeline_parallel(comm, micro_batches)?);
    }
    if args.expert_parallel > 1 {
        return Ok(model.expert_parallel(comm)?);
    }
    if args.context_parallel > 1 {
        return Ok(model.context_parallel(comm));
    }
    Ok(model.tensor_parallel(comm)?)
}

/// What rank `rank` holds and where, as its member key says: e.g. `pipeline stage 1 of 2, tensor rank 2 of 3 on
/// cpu` or `tensor rank 1 of 2 on cuda:1` (GPU ranks run on the group's first GPU plus their rank).
pub fn placement(parallel: &ParallelArgs, rank: usize, first_gpu: Option<usize>) -> String {
    let [tensor, pipeline, expert, context] = parallel.kinds();
    let mut parts = Vec::new();
    if pipeline > 1 {
        parts.push(format!("pipeline stage {} of {pipeline}", rank / tensor));
    }
    if tensor > 1 {
        parts.push(format!("tensor rank {} of {tensor}", rank % tensor));
    }
    if expert > 1 {
        parts.push(format!("expert rank {rank} of {expert}"));
    }
    if context > 1 {
        parts.push(format!("context rank {rank} of {context}"));
    }
    let device = first_gpu.map_or_else(|| "cpu".to_owned(), |first| format!("cuda:{}", first + rank));
    format!("{} on {device}", parts.join(", "))
}

/// Joins the rendezvous as `rank` and connects the mesh.
async fn join(
    parallel: &ParallelArgs,
    registry: &dyn Registry,
    layout: &KeyLayout,
    (group, rank, placement): (&str, usize, String),
    (grpc_addr, grpc_url): (SocketAddr, &str),
) -> Result<(Arc<TcpCommunicator>, Membership), CliError> {
    let listen = parallel
        .group_listen
        .unwrap_or_else(|| SocketAddr::new(grpc_addr.ip(), 0));
    let listener = std::net::TcpListener::bind(listen).map_err(|source| CliError::Listen { addr: listen, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| CliError::Listen { addr: listen, source })?;
    let announce = if local.ip().is_unspecified() && grpc_url.is_empty() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), local.port()).to_string()
    } else {
        advertised(local, grpc_url)
    };
    let spec = GroupSpec::new(group, parallel.world(), rank)
        .with_prefix(layout.prefix())
        .with_placement(placement);
    let config = TcpConfig {
        op_timeout: OP_TIMEOUT,
        ..TcpConfig::default()
    };
    let timeout = Duration::from_secs(parallel.group_timeout_secs);
    let (comm, membership) = form_tcp_group(registry, &spec, listener, &announce, timeout, config).await?;
    Ok((Arc::new(comm), membership))
}

/// The ranks a leader started on this machine: child processes of this binary with this worker's flags plus
/// `--group-rank`. Dropping waits for them to finish (they exit once the leader's engine ends the group), then
/// kills what is left.
#[derive(Debug, Default)]
struct LocalRanks {
    children: Vec<(usize, Child)>,
}

impl LocalRanks {
    /// Starts ranks `1..world`; `group` is passed when the command line has no `--group` of its own.
    fn spawn(world: usize, group: Option<&str>) -> Result<Self, CliError> {
        let exe =
            std::env::current_exe().map_err(|e| CliError::GroupFailed(format!("cannot find this binary: {e}")))?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let mut ranks = Self::default();
        for rank in 1..world {
            let mut command = Command::new(&exe);
            command.args(&args).arg("--group-rank").arg(rank.to_string());
            if let Some(group) = group {
                command.arg("--group").arg(group);
            }
            let child = command
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| CliError::GroupFailed(format!("cannot start rank {rank}: {e}")))?;
            ranks.children.push((rank, child));
        }
        Ok(ranks)
    }
}

impl Drop for LocalRanks {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for (rank, child) in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("cleave worker: rank {rank} did not stop; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Where a leader learns that its group broke: the engine's failure hook records the cause and wakes the
/// worker, which then leaves the cluster and exits with the cause.
#[derive(Debug, Default)]
pub struct FailureSignal {
    notify: tokio::sync::Notify,
    cause: Mutex<Option<String>>,
}

impl FailureSignal {
    pub fn hook(self: &Arc<Self>) -> GroupFailure {
        let signal = self.clone();
        Arc::new(move |error| {
            if let Ok(mut cause) = signal.cause.lock() {
                *cause = Some(error.to_string());
            }
            signal.notify.notify_one();
        })
    }

    /// Resolves once the group has failed.
    pub async fn failed(&self) {
        self.notify.notified().await;
    }

    /// The failure's cause, if the group failed.
    pub fn cause(&self) -> Option<String> {
        self.cause.lock().ok().and_then(|cause| cause.clone())
    }
}
