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

    /// Compute device: `cpu`, or `auto` (picks the best available; the CPU in this build).
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

    #[command(flatten)]
    pub routing: RoutingArgs,

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

    #[command(flatten)]
    pub routing: RoutingArgs,

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
}

impl RoutingArgs {
    pub fn policy(&self) -> cleave_router::policy::PolicyConfig {
        cleave_router::policy::PolicyConfig {
            remote_prefill_min_tokens: self.remote_prefill_min_tokens,
            prefill_max_queued_tokens: self.prefill_max_queued_tokens,
            ..Default::default()
        }
    }
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
}

/// Where the kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The best device available; only the CPU backend is built so far.
    Auto,
}

fn parse_device(value: &str) -> Result<Device, String> {
    match value {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::Auto),
        "cuda" | "gpu" => Err("the CUDA backend is not built yet; use cpu or auto".to_string()),
        _ => Err("expected cpu or auto".to_string()),
    }
}
