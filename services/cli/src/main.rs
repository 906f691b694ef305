//! The `cleave` command: parses flags, sets up logging and the compute threads, and hands each subcommand to the
//! libraries (model store, engine, benchmark). Everything it prints as a result goes to stdout; progress, logs
//! and errors go to stderr.
//!
//! Invariant: every failure ends as `error: <message>` on stderr and a non-zero exit status (2 for bad input),
//! never as a panic. Cost: startup is flag parsing; the work is the subcommand's.

mod args;
mod error;
mod generate;
mod model;
mod progress;
mod registry;
mod router;
mod up;
mod worker;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cleave_engine::bench::{BenchConfig, run_bench};
use tracing_subscriber::EnvFilter;

use crate::args::{BenchArgs, Cli, Command, Device, ModelCommand};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr at `RUST_LOG`'s levels, `warn` when it is unset or unparsable.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> Result<(), CliError> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(threads))
            .build_global()
            .map_err(|source| CliError::ThreadPool { threads, source })?;
    }
    match cli.device {
        Device::Cpu | Device::Auto => {
            tracing::debug!(device = ?cli.device, "running on the CPU backend")
        }
    }
    match cli.command {
        Command::Model(ModelCommand::Pull { name }) => model::pull_model(&name),
        Command::Model(ModelCommand::List) => model::list_models(),
        Command::Generate(args) => generate::generate(&args),
        Command::Bench(args) => bench(&args),
        Command::Worker(args) => worker::run_worker(&args),
        Command::Router(args) => router::run_router(&args),
        Command::Up(args) => up::run_up(&args),
    }
}

fn bench(args: &BenchArgs) -> Result<(), CliError> {
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
