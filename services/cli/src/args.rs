//! The command line: every subcommand and flag of `cleave`, parsed by clap before anything loads.
//!
//! Invariant: values clap can check alone (types, ranges, the device name) are rejected here with exit status 2;
//! sampling ranges are checked by the engine's own validation, once, so the two never disagree. Cost: none.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cleave",
    version,
    about = "cleave: LLM serving with disaggregated prefill and decode"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Compute device: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (the first GPU when there is one, else the CPU).
    #[arg(long, global = true, default_value = "auto", value_parser = parse_device)]
    pub device: Device,

    /// Compute threads (rayon's global pool); default: one per core.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download and list models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Generate a completion for one prompt.
    Generate(GenerateArgs),
    /// Benchmark the engine: prefill and decode throughput, memory.
    Bench(BenchArgs),
    /// Serve one engine replica over the internal Worker gRPC API until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Serve the public Generation gRPC API, routing each request to a worker by prefix cache and load.
    Router(RouterArgs),
    /// One process, the whole cluster: a router and workers on loopback, with an embedded registry (or --etcd).
    Up(UpArgs),
    /// Autoscale prefill and decode workers against TTFT/ITL targets (Kubernetes workloads or local processes).
    Planner(crate::planner::PlannerArgs),
    /// Load-test a router: a quick run from flags or a campaign file; writes run.json, report.md and plots.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// A model name, a .gguf file or a Hugging Face model directory; a named model is pulled on first use.
    #[arg(long, default_value = cleave_modelstore::DEFAULT_MODEL)]
    pub model: String,

    /// Address the router serves the public gRPC API on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,

    /// Decode worker replicas to start (each loads the model).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub workers: u16,

    /// Prefill worker replicas to start; 0 serves every request aggregated on the decode workers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=16))]
    pub prefill_workers: u16,

    /// Memory for each worker's KV cache, in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_cache_mib: u32,

    /// Once up, stream a greedy completion of this prompt through the router (then keep serving).
    #[arg(long)]
    pub prompt: Option<String>,

    /// Tokens for the --prompt sample.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,

    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub routing: RoutingArgs,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RouterArgs {
    /// The model the workers serve (its tokenizer and chat template are loaded, not its weights).
    #[arg(long, default_value = cleave_modelstore::DEFAULT_MODEL)]
    pub model: String,

    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,

    /// A worker's gRPC URL, e.g. http://127.0.0.1:50061; repeat for each worker. With --etcd, workers are also
    /// discovered from the registry.
    #[arg(long = "worker", required_unless_present = "etcd")]
    pub workers: Vec<String>,

    /// A prefill-only worker's gRPC URL; repeat for each. Decode workers are sent long prompts' prefill here.
    #[arg(long = "prefill-worker")]
    pub prefill_workers: Vec<String>,

    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub routing: RoutingArgs,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub cluster_tls: crate::security::ClusterTlsArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// When the router sends a prompt's prefill to a prefill worker.
#[derive(Debug, Args)]
pub struct RoutingArgs {
    /// Prefill on a prefill worker only when the decode worker would compute at least this many prompt tokens.
    #[arg(long, default_value_t = 256)]
    pub remote_prefill_min_tokens: usize,

    /// A prefill worker with this many prefill tokens queued (or more) is given no further prompts.
    #[arg(long, default_value_t = 8192)]
    pub prefill_max_queued_tokens: u64,

    /// Admission: requests waiting for their first token across this router; past it, RESOURCE_EXHAUSTED / 429.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_requests: u64,

    /// Admission: a decode worker with this many requests waiting for their first token takes no new request (nor
    /// one without free KV blocks for its prompt); when no decode worker is left, RESOURCE_EXHAUSTED / 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waiting_per_worker: u32,
}

impl RoutingArgs {
    pub fn policy(&self) -> cleave_router::policy::PolicyConfig {
        cleave_router::policy::PolicyConfig {
            remote_prefill_min_tokens: self.remote_prefill_min_tokens,
            prefill_max_queued_tokens: self.prefill_max_queued_tokens,
            max_waiting_per_worker: self.max_waiting_per_worker,
            ..Default::default()
        }
    }

    pub fn admission(&self) -> cleave_router::AdmissionConfig {
        cleave_router::AdmissionConfig {
            max_queued_requests: usize::try_from(self.max_queued_requests).unwrap_or(usize::MAX),
            ..Default::default()
        }
    }
}

/// The OpenAI-compatible HTTP API, and the public endpoints' TLS and API keys (gRPC and HTTP alike).
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address to serve the OpenAI-compatible HTTP API on (/v1/completions, /v1/chat/completions, /v1/models,
    /// /health, /ready); off unless given.
    #[arg(long)]
    pub http_listen: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub api_keys: crate::security::ApiKeyArgs,

    #[command(flatten)]
    pub tls: crate::security::PublicTlsArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// A model name, a .gguf file or a Hugging Face model directory; a named model is pulled on first use.
    #[arg(long, default_value = cleave_modelstore::DEFAULT_MODEL)]
    pub model: String,

    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub listen: std::net::SocketAddr,

    /// Memory for the KV cache, in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_cache_mib: u32,

    /// Tokens per scheduler step (prefill chunks plus decodes).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,

    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// This worker's id in the registry (default: worker-<host>-<port>).
    #[arg(long)]
    pub id: Option<String>,

    /// The URL routers should use to reach this worker (default: http://<listen address>).
    #[arg(long)]
    pub advertise: Option<String>,

    /// On SIGTERM, seconds to let in-flight requests finish before aborting them.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,

    /// Seconds the registration outlives this process if it dies without deregistering.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl_secs: u64,

    #[command(flatten)]
    pub disagg: DisaggArgs,

    #[command(flatten)]
    pub parallel: ParallelArgs,

    #[command(flatten)]
    pub cluster_tls: crate::security::ClusterTlsArgs,
}

/// A worker whose model is split across several ranks acting as one engine replica (every kind on the CPU backend;
/// each kind alone on GPUs too, one GPU per rank).
#[derive(Debug, Args)]
pub struct ParallelArgs {
    /// Tensor-parallel ranks: attention heads, KV heads and MLP split across them, one all-reduce after each block
    /// half (over NCCL with --device cuda: rank r on GPU first+r). Without --group-rank this worker is rank 0 and
    /// starts ranks 1.. on this machine itself; the group forms through etcd (--etcd is required).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub tensor_parallel: u16,

    /// Pipeline-parallel stages: contiguous layer ranges per rank, activations passed stage to stage, each batch
    /// cut into --micro-batches pieces so the stages overlap (over NCCL with --device cuda: stage s on GPU first+s).
    /// Started and formed like --tensor-parallel; with --tensor-parallel T too, the group has T × N ranks and ranks
    /// s·T..(s+1)·T split stage s (tensor parallelism inside a node, the pipeline across nodes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pipeline_parallel: u16,

    /// Expert-parallel ranks for a mixture-of-experts model (Mixtral-style): each rank holds 1/N of every layer's
    /// experts and attention is split by heads; tokens go to their experts' ranks and back with all-to-alls (with
    /// --device cuda, rank r on GPU first+r, every rank runs its experts over the rows routed to them and one
    /// all-reduce sums the shares, the rows being on every rank after attention).
    /// Started and formed like --tensor-parallel (not combined with the other kinds in this version).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub expert_parallel: u16,

    /// Context-parallel ranks: each holds the whole model and takes 1/N of every prompt chunk's tokens, attention
    /// runs as ring attention (key/value blocks passed rank to rank; with --device cuda, rank r on GPU first+r, each
    /// layer's new blocks exchanged over NCCL before attention), and every rank keeps the whole KV, so a
    /// context-parallel prefill worker ships KV like any other. Started and formed like --tensor-parallel (not
    /// combined with the other kinds in this version).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub context_parallel: u16,

    /// Pieces each batch is cut into on a pipeline (default: one per stage).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub micro_batches: Option<u16>,

    /// This process's rank in a parallel group whose ranks are started separately (e.g. one per node):
    /// rank 0 serves and registers; ranks above 0 follow it. Requires --group.
    #[arg(long, requires = "group")]
    pub group_rank: Option<u16>,

    /// The parallel group's name in etcd (under <etcd-prefix>groups/); every rank gives the same one, fresh
    /// for each start of the group. Default for a group this worker starts itself: <id>-<start time>.
    #[arg(long)]
    pub group: Option<String>,

    /// Where this rank accepts its peers' connections (default: the --listen host, a free port); the address is
    /// announced through etcd.
    #[arg(long, value_name = "ADDR")]
    pub group_listen: Option<std::net::SocketAddr>,

    /// Seconds to wait for every rank of the group to arrive before giving up.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub group_timeout_secs: u64,
}

impl ParallelArgs {
    /// Ranks in the group: tensor × pipeline × expert × context.
    pub fn world(&self) -> usize {
        self.kinds().iter().product()
    }

    /// Tensor, pipeline, expert and context sizes.
    pub fn kinds(&self) -> [usize; 4] {
        [
            self.tensor_parallel,
            self.pipeline_parallel,
            self.expert_parallel,
            self.context_parallel,
        ]
        .map(usize::from)
    }
}

/// A worker's part in disaggregated serving.
#[derive(Debug, Args)]
pub struct DisaggArgs {
    /// `prefill` computes prompts' KV for decode workers; `decode` owns sequences and receives prompt KV;
    /// `both` serves requests end to end and can also receive prompt KV.
    #[arg(long, value_enum, default_value_t = Role::Both)]
    pub role: Role,

    /// Where to accept KV-cache transfers (decode and both roles); default: the --listen host, a free port.
    #[arg(long)]
    pub kv_listen: Option<std::net::SocketAddr>,

    /// The `host:port` prefill workers dial for KV transfers (default: the bound --kv-listen address).
    #[arg(long)]
    pub kv_advertise: Option<String>,

    /// KV transports this worker offers prefill workers, most preferred first (default: every one it speaks —
    /// `cuda_ipc` to GPUs of its host, `nccl` between GPU workers of a registry, `tcp`).
    #[arg(long, value_delimiter = ',', value_parser = ["cuda_ipc", "nccl", "tcp"])]
    pub kv_transports: Vec<String>,

    /// Seconds a decode worker waits for a prompt's KV from a prefill worker before prefilling it itself.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub remote_prefill_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Prefill,
    Decode,
    Both,
}

impl From<Role> for cleave_cluster::registry::WorkerRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Prefill => Self::Prefill,
            Role::Decode => Self::Decode,
            Role::Both => Self::Both,
        }
    }
}

/// Where the control plane is.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// etcd endpoint(s), comma-separated, e.g. http://127.0.0.1:2379. Without it nothing registers.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// Key prefix in etcd.
    #[arg(long, default_value = cleave_cluster::registry::DEFAULT_PREFIX)]
    pub etcd_prefix: String,

    /// Seconds to keep retrying at start while etcd cannot be reached (pods may start before etcd); 0 fails at once.
    #[arg(long = "etcd-startup-wait", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub etcd_startup_wait_secs: u64,

    #[command(flatten)]
    pub security: crate::security::EtcdSecurityArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a model into the cache ($CLEAVE_HOME, else ~/.cache/cleave) and verify it.
    Pull {
        /// A model name from `cleave model list`.
        #[arg(default_value = cleave_modelstore::DEFAULT_MODEL)]
        name: String,
    },
    /// List the models cleave knows by name and where each is cached.
    List,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,

    /// A model name, a .gguf file or a Hugging Face model directory; a named model is pulled on first use.
    #[arg(long, default_value = cleave_modelstore::DEFAULT_MODEL)]
    pub model: String,

    /// Render the model's chat template with the prompt as the user's message.
    #[arg(long)]
    pub chat: bool,

    /// A system message placed before the prompt (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,

    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,

    /// Sampling temperature; 0 is greedy (default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,

    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,

    /// Keep only the K most likely tokens (default: no cut).
    #[arg(long)]
    pub top_k: Option<u32>,

    /// Drop tokens less likely than P times the most likely one (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,

    /// Random seed, for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Stop when this text appears (repeatable); the stop text is not printed.
    #[arg(long)]
    pub stop: Vec<String>,

    /// Report each token's log-probability and this many top alternatives.
    #[arg(long)]
    pub logprobs: Option<u32>,

    /// Print one JSON object (ids, text, usage, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A model name, a .gguf file or a Hugging Face model directory.
    #[arg(long, default_value = cleave_modelstore::DEFAULT_MODEL)]
    pub model: String,

    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,

    /// Tokens generated by each decode request.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,

    /// Decode batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<usize>,

    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// GPU memory for the KV pool of the CUDA benchmark, in GiB.
    #[arg(long, default_value_t = 8)]
    pub kv_cache_gib: u32,

    /// Instead of benchmarking a synthetic model on CUDA, write its weights as a Hugging Face checkpoint and its
    /// logits for a fixed prompt into this directory (scripts/gpu_reference_check.py compares with transformers).
    #[arg(long)]
    pub reference_dir: Option<std::path::PathBuf>,
}

pub use cleave_engine::Device;

fn parse_device(value: &str) -> Result<Device, String> {
    match value {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::Auto),
        "cuda" | "gpu" => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(ordinal)) => Ok(Device::Cuda(ordinal)),
            _ => Err("expected cpu, cuda, cuda:N or auto".to_string()),
        },
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,

    /// A campaign file (TOML, see docs/loadtest.md); without it, one stage built from the flags below.
    #[arg(long)]
    pub campaign: Option<std::path::PathBuf>,

    /// The router's public gRPC API, e.g. grpc://127.0.0.1:50051 (required without --campaign).
    #[arg(long, required_unless_present = "campaign")]
    pub target: Option<String>,

    /// Poisson arrivals at this many requests/s (with --concurrency: at most that many in flight).
    #[arg(long, conflicts_with = "campaign")]
    pub rate: Option<f64>,

    /// Closed loop: this many clients, each sending its next request when the last one ends (default 1).
    #[arg(long, conflicts_with = "campaign", value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,

    /// Requests to send.
    #[arg(long, default_value_t = 100, conflicts_with = "campaign")]
    pub requests: usize,

    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 600.0, conflicts_with = "campaign")]
    pub duration_s: f64,

    /// Prompt length in tokens (words from a one-token-per-word list; the report shows the router's count).
    #[arg(long, default_value_t = 128, conflicts_with = "campaign")]
    pub input_len: u32,

    /// Tokens to generate per request (sent as max_tokens with ignore_eos).
    #[arg(long, default_value_t = 64, conflicts_with = "campaign")]
    pub output_len: u32,

    /// Runs only these stages of the campaign (comma-separated names), with the faults that fire during them.
    #[arg(long, value_delimiter = ',', requires = "campaign")]
    pub stages: Vec<String>,

    /// TTFT target for goodput, in ms (overrides the campaign's).
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,

    /// Time-per-output-token target for goodput, in ms (overrides the campaign's).
    #[arg(long)]
    pub slo_tpot_ms: Option<f64>,

    /// Seed for prompts, lengths and arrival times.
    #[arg(long, default_value_t = 0, conflicts_with = "campaign")]
    pub seed: u64,

    /// Output directory: run.json, report.md, plots/.
    #[arg(long, default_value = "loadtest-out")]
    pub out: std::path::PathBuf,

    /// No live progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// Put two runs side by side (each a run.json or the directory holding it); Markdown to stdout.
    Compare {
        a: std::path::PathBuf,
        b: std::path::PathBuf,
        /// Also write the comparison to this file.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}
