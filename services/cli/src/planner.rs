//! `cleave planner`: the per-phase autoscaler. Scrapes the routers' and workers' metrics, decides prefill and
//! decode replica counts against the TTFT/ITL targets, and applies them through the Kubernetes executor (scale the
//! prefill/decode workloads) or the local one (start/stop `cleave worker` processes on this machine).
//!
//! Invariant: the configuration is validated before anything connects or binds; errors inside the loop are
//! logged and the next interval retries. Cost: one scrape and decision per `--interval-secs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use cleave_planner::{
    CancellationToken, Executor, KubeExecutor, LocalExecutor, LocalWorkerConfig, PhaseLimits, PlacementWriter, Planner,
    PlannerConfig, PlannerError, Scraper, WorkerDiscovery, Workload,
};

use crate::args::RegistryArgs;
use crate::error::CliError;
use crate::registry;
use crate::worker::{bind, shutdown_signal};

/// Where the planner's decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// Patch the scale of the prefill/decode Deployments or StatefulSets (in-cluster or kubeconfig credentials).
    Kubernetes,
    /// Start and stop `cleave worker` processes on this machine.
    Local,
}

#[derive(Debug, Args)]
pub struct PlannerArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// The model the workers serve (the placement record's name; local workers load it).
    #[arg(long, default_value = cleave_modelstore::DEFAULT_MODEL)]
    pub model: String,

    /// A router's metrics endpoint (host:port or URL; /metrics is added without a path); repeat for each router.
    #[arg(long = "router-metrics", value_name = "URL")]
    pub router_metrics: Vec<String>,

    /// How decisions are applied.
    #[arg(long, value_enum, default_value_t = ExecutorKind::Kubernetes)]
    pub executor: ExecutorKind,

    /// Kubernetes namespace of the worker workloads (default: the client's, e.g. the pod's own).
    #[arg(long)]
    pub namespace: Option<String>,

    /// The prefill workload: NAME (a Deployment), deployment/NAME or statefulset/NAME.
    #[arg(long, required_if_eq("executor", "kubernetes"))]
    pub prefill_workload: Option<String>,

    /// The decode workload: NAME (a Deployment), deployment/NAME or statefulset/NAME.
    #[arg(long, required_if_eq("executor", "kubernetes"))]
    pub decode_workload: Option<String>,

    /// Time-to-first-token target (p90), milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttft_slo_ms: u64,

    /// Inter-token-latency target (p90), milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub itl_slo_ms: u64,

    /// Fewest prefill replicas (0: prompts are prefilled on the decode workers).
    #[arg(long, default_value_t = 0)]
    pub min_prefill: u32,

    /// Most prefill replicas.
    #[arg(long, default_value_t = 4)]
    pub max_prefill: u32,

    /// Fewest decode replicas.
    #[arg(long, default_value_t = 1)]
    pub min_decode: u32,

    /// Most decode replicas.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_decode: u32,

    /// GPUs both phases may use together; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub gpu_budget: u32,

    /// GPUs one prefill replica uses (counted against --gpu-budget).
    #[arg(long, default_value_t = 1)]
    pub gpus_per_prefill: u32,

    /// GPUs one decode replica uses (counted against --gpu-budget).
    #[arg(long, default_value_t = 1)]
    pub gpus_per_decode: u32,

    /// Seconds between decisions.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_secs: u64,

    /// Seconds the signals are measured over (quantiles and rates); default: three intervals.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub window_secs: Option<u64>,

    /// Seconds after a phase's scale-up before it scales up again, and after any change before it scales down.
    #[arg(long, default_value_t = 60)]
    pub cooldown_secs: u64,

    /// Consecutive intervals with headroom before a phase loses one replica.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub scale_down_intervals: u32,

    /// Profile: prompt tokens/s one prefill replica computes (default: learned while prefill is saturated).
    #[arg(long)]
    pub prefill_tokens_per_sec: Option<f64>,

    /// Profile: tokens/s one decode replica generates (default: learned while decode is saturated).
    #[arg(long)]
    pub decode_tokens_per_sec: Option<f64>,

    /// Serve the planner's Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Local executor: an argument for every `cleave worker` it starts (repeat; e.g. --worker-arg=--kv-cache-mib=64).
    #[arg(long = "worker-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,

    /// Local executor: the `cleave` binary to start workers with (default: this one).
    #[arg(long)]
    pub cleave_bin: Option<PathBuf>,

    /// Local executor: the address workers listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub worker_host: String,
}

impl PlannerArgs {
    fn config(&self) -> PlannerConfig {
        let limits = |min, max, gpus_per_replica, tokens_per_s| PhaseLimits {
            min,
            max,
            gpus_per_replica,
            tokens_per_s,
        };
        PlannerConfig {
            gpu_budget: self.gpu_budget,
            cooldown_secs: self.cooldown_secs as f64,
            scale_down_windows: self.scale_down_intervals,
            ..PlannerConfig::new(
                self.ttft_slo_ms as f64 / 1e3,
                self.itl_slo_ms as f64 / 1e3,
                limits(
                    self.min_prefill,
                    self.max_prefill,
                    self.gpus_per_prefill,
                    self.prefill_tokens_per_sec,
                ),
                limits(
                    self.min_decode,
                    self.max_decode,
                    self.gpus_per_decode,
                    self.decode_tokens_per_sec,
                ),
            )
        }
    }
}

pub fn run_planner(args: &PlannerArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let result = runtime.block_on(run(args));
    // Shutting the runtime down stops the local executor's workers before the error is reported.
    drop(runtime);
    result
}

async fn run(args: &PlannerArgs) -> Result<(), CliError> {
    let config = args.config();
    config.validate().map_err(PlannerError::InvalidConfig)?;
    let interval = Duration::from_secs(args.interval_secs);
    let window = Duration::from_secs(args.window_secs.unwrap_or(3 * args.interval_secs));
    let connected = registry::connect(&args.registry).await?;
    let discovery = connected.as_ref().map(|(registry, layout)| WorkerDiscovery {
        registry: registry.clone(),
        layout: layout.clone(),
        // Every registered worker counts: records name the model as the worker resolved it, which need not
        // match this flag's spelling.
        model: String::new(),
    });
    let placement = connected
        .as_ref()
        .map(|(registry, layout)| PlacementWriter::new(registry.clone(), layout.clone(), &args.model));
    let scraper = Scraper::new(&args.router_metrics, discovery, interval.min(Duration::from_secs(5)));
    let shutdown = CancellationToken::new();
    match args.executor {
        ExecutorKind::Kubernetes => {
            let parse = |w: &Option<String>| w.as_deref().unwrap_or_default().parse::<Workload>();
            let (prefill, decode) = (parse(&args.prefill_workload)?, parse(&args.decode_workload)?);
            let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "cleave-planner".to_owned());
            let mut executor = KubeExecutor::connect(args.namespace.as_deref(), prefill, decode, &instance).await?;
            if let Some(placement) = placement {
                executor = executor.with_placement(placement);
            }
            let planner = Planner::new(config, interval, window, scraper, executor)?;
            serve(args, planner, shutdown).await?;
        }
        ExecutorKind::Local => {
            let program = match &args.cleave_bin {
                Some(path) => path.clone(),
                None => std::env::current_exe().map_err(|source| PlannerError::Spawn {
                    phase: "any",
                    program: "the current executable".to_owned(),
                    source,
                })?,
            };
            let mut executor = LocalExecutor::new(LocalWorkerConfig {
                program,
                model: args.model.clone(),
                etcd: args.registry.etcd.clone(),
                etcd_prefix: args.registry.etcd_prefix.clone(),
                host: args.worker_host.clone(),
                extra_args: args.worker_args.clone(),
            });
            if let Some(placement) = placement {
                executor = executor.with_placement(placement);
            }
            let planner = Planner::new(config, interval, window, scraper, executor)?;
            let executor = serve(args, planner, shutdown).await?;
            executor.shutdown(Duration::from_secs(30)).await;
        }
    }
    Ok(())
}

/// Serves the metrics (with `--metrics-listen`) and runs the loop until SIGINT/SIGTERM; returns the executor.
async fn serve<E: Executor + 'static>(
    args: &PlannerArgs,
    planner: Planner<E>,
    shutdown: CancellationToken,
) -> Result<E, CliError> {
    if let Some(addr) = args.metrics_listen {
        let (listener, local) = bind(addr).await?;
        eprintln!("cleave planner: metrics on http://{local}/metrics");
        let metrics = planner.metrics().clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics.serve(listener, stop).await {
                tracing::warn!(error = %e, "the planner's metrics endpoint failed");
            }
        });
    }
    eprintln!(
        "cleave planner: {:?} executor, deciding every {}s (TTFT p90 ≤ {} ms, ITL p90 ≤ {} ms)",
        args.executor, args.interval_secs, args.ttft_slo_ms, args.itl_slo_ms
    );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    Ok(planner.run(shutdown).await)
}
