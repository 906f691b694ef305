//! The `cleave` command: parses flags, sets up logging and the compute threads, and hands each subcommand to the
//! libraries (model store, engine, benchmark). Everything it prints as a result goes to stdout; progress, logs
//! and errors go to stderr.
//!
//! Invariant: every failure ends as `error: <message>` on stderr and a non-zero exit status (2 for bad input),
//! never as a panic. Cost: startup is flag parsing; the work is the subcommand's.

mod args;
mod error;
mod generate;
mod load;
mod model;
mod parallel;
mod planner;
mod progress;
mod registry;
mod router;
mod security;
mod up;
mod worker;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cleave_engine::bench::{BenchConfig, run_bench};

use crate::args::{BenchArgs, Cli, Command, Device, ModelCommand};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs to stderr (RUST_LOG, `warn` by default); traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    // Dropped at the end of main, which flushes the spans still buffered.
    let _traces = cleave_telemetry::trace::init(service_name(&cli.command));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

/// The service name traces carry unless `OTEL_SERVICE_NAME` sets one.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Router(_) => "cleave-router",
        Command::Worker(_) => "cleave-worker",
        Command::Up(_) => "cleave-up",
        _ => "cleave",
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(threads))
            .build_global()
            .map_err(|source| CliError::ThreadPool { threads, source })?;
    }
    let device = cli.device;
    tracing::debug!(requested = ?device, resolved = ?device.resolve(), "compute device");
    match cli.command {
        Command::Model(ModelCommand::Pull { name }) => model::pull_model(&name),
        Command::Model(ModelCommand::List) => model::list_models(),
        Command::Generate(args) => generate::generate(&args, device),
        Command::Bench(args) => bench(&args, device),
        Command::Worker(args) => worker::run_worker(&args, device),
        Command::Router(args) => router::run_router(&args),
        Command::Load(args) => load::run_load(&args),
        Command::Up(args) => up::run_up(&args, device),
        Command::Planner(args) => planner::run_planner(&args),
    }
}

fn bench(args: &BenchArgs, device: Device) -> Result<(), CliError> {
    if let Some(shape) = args.model.strip_prefix(cleave_modelstore::SYNTHETIC_PREFIX) {
        return cuda_bench(args, device, shape);
    }
    let config = BenchConfig {
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        batches: args.batches.clone(),
        runs: args.runs,
        ..BenchConfig::default()
    };
    // Fail on bad settings before a model is pulled or loaded.
    config.validate()?;
    let (name, path) = model::locate(&args.model)?;
    if !args.json {
        eprintln!("benchmarking {name} on {} threads...", rayon::current_num_threads());
    }
    let report = run_bench(path.files(), &config)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out).map_err(CliError::Stdout)
    } else {
        writeln!(out, "{report}").map_err(CliError::Stdout)
    }
}

/// `cleave bench --device cuda --model synthetic:<shape>`: the GPU benchmark on random weights of a named shape.
fn cuda_bench(args: &BenchArgs, device: Device, shape: &str) -> Result<(), CliError> {
    use cleave_engine::cuda::bench::{CudaBenchConfig, run_cuda_bench};
    use cleave_engine::cuda::{CudaOptions, synthetic_config};
    let Device::Cuda(ordinal) = device.resolve() else {
        return Err(CliError::SyntheticModel {
            spec: args.model.clone(),
        });
    };
    let config = synthetic_config(shape)?;
    let cache = model::kernel_cache_dir();
    let options = CudaOptions {
        ordinal,
        kv_cache_bytes: (args.kv_cache_gib as usize) << 30,
        block_size: 16,
        kernel_cache: cache.as_deref(),
    };
    let bench = CudaBenchConfig {
        prompt_tokens: args.prompt_tokens,
        batches: args.batches.clone(),
        decode_steps: args.decode_tokens,
        runs: args.runs,
        kv_cache_bytes: options.kv_cache_bytes,
        ..CudaBenchConfig::default()
    };
    if let Some(dir) = &args.reference_dir {
        let mut backend = cleave_engine::cuda::CudaBackend::synthetic(config, 0x5eed, &options)
            .map_err(cleave_engine::EngineError::from)?;
        backend.write_reference(dir, 64)?;
        eprintln!("wrote {} (weights, config, prompt, logits)", dir.display());
        return Ok(());
    }
    let report = run_cuda_bench(&args.model, config, &options, &bench)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out).map_err(CliError::Stdout)
    } else {
        writeln!(out, "{report}").map_err(CliError::Stdout)
    }
}
