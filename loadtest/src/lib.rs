//! cleave's load tester: campaigns of stages that send realistic workloads to a router's public gRPC API on a
//! chosen arrival process, measure every request (TTFT, inter-token latency, TPOT, end-to-end, cached tokens,
//! errors by code), summarise each stage (throughput, percentiles, SLO goodput), inject faults into named
//! processes, and write a JSON run, a Markdown report and plots. `cleave load` is its command line.
//!
//! Invariant: the generator measures, it does not shape: requests are built before a stage starts, each runs in its
//! own task, and the generator's own CPU use is reported beside the results. Cost: see each module.
//!
//! ```no_run
//! # async fn run() -> Result<(), cleave_loadtest::LoadError> {
//! let campaign = cleave_loadtest::quick_campaign(&cleave_loadtest::QuickRun::new("grpc://127.0.0.1:50051"))?;
//! let out = std::path::Path::new("loadtest-out");
//! let report = cleave_loadtest::run_campaign(&campaign, out, cleave_loadtest::RunOptions { progress: true }).await?;
//! cleave_loadtest::write_outputs(&report, out)?;
//! # Ok(()) }
//! ```

pub mod arrival;
pub mod campaign;
pub mod client;
pub mod cpu;
mod error;
pub mod lengths;
pub mod metrics;
mod openai;
mod plot;
mod processes;
pub mod prompt;
mod quick;
mod report;
mod run;
mod stage;
pub mod workload;

pub use campaign::{Campaign, FaultAction, FaultSpec, ProcessSpec, Slo, StageSpec, Sweep, TargetSpec};
pub use error::LoadError;
pub use plot::plots_available;
pub use quick::{QuickRun, quick_campaign};
pub use report::{compare, markdown, read_run, write_outputs};
pub use run::{RunOptions, RunReport, StageResult, run_campaign};
