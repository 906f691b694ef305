//! `cleave load`: runs a load-test campaign (a TOML file, or one stage from flags) against a router and writes
//! its outputs, or compares two runs. The work is in `cleave-loadtest`; this only maps flags to a campaign.
//!
//! Invariant: bad flags or a bad campaign fail before any request is sent, with exit status 2. This command
//! reports its own errors (`error: …` on stderr) because `CliError` has no load-test variant yet.
//! Cost: a multi-threaded runtime for the run.

use std::io::Write;
use std::path::Path;

use cleave_loadtest::{Campaign, LoadError, QuickRun, RunOptions, quick_campaign};

use crate::args::{LoadArgs, LoadCommand};
use crate::error::CliError;

pub fn run_load(args: &LoadArgs) -> Result<(), CliError> {
    if let Err(e) = load(args) {
        eprintln!("error: {e}");
        let code = if matches!(
            e,
            LoadError::Invalid { .. } | LoadError::Toml { .. } | LoadError::Trace { .. }
        ) {
            2
        } else {
            1
        };
        std::process::exit(code);
    }
    Ok(())
}

fn load(args: &LoadArgs) -> Result<(), LoadError> {
    if let Some(LoadCommand::Compare { a, b, out }) = &args.command {
        let text = cleave_loadtest::compare(
            &cleave_loadtest::read_run(a)?,
            &cleave_loadtest::read_run(b)?,
            &a.display().to_string(),
            &b.display().to_string(),
        );
        if let Some(path) = out {
            std::fs::write(path, &text).map_err(|source| LoadError::Write {
                path: path.clone(),
                source,
            })?;
        }
        return print(&text);
    }
    let mut campaign = campaign(args)?;
    if !args.stages.is_empty() {
        campaign.keep_stages(&args.stages)?;
    }
    if let Some(t) = args.slo_ttft_ms {
        campaign.slo.ttft_ms = t;
    }
    if let Some(t) = args.slo_tpot_ms {
        campaign.slo.tpot_ms = t;
    }
    campaign.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| LoadError::Write {
            path: "tokio runtime".into(),
            source,
        })?;
    let options = RunOptions {
        progress: !args.no_progress,
    };
    let report = runtime.block_on(cleave_loadtest::run_campaign(&campaign, &args.out, options))?;
    cleave_loadtest::write_outputs(&report, &args.out)?;
    eprintln!("wrote {}", args.out.join("report.md").display());
    print(&cleave_loadtest::markdown(&report))
}

fn campaign(args: &LoadArgs) -> Result<Campaign, LoadError> {
    if let Some(path) = &args.campaign {
        let mut campaign = Campaign::from_file(path)?;
        if let Some(target) = &args.target {
            // --target replaces the first target's address (the same campaign against another cluster).
            if let Some(first) = campaign.targets.first_mut() {
                first.url = target.clone();
            }
        }
        resolve_trace_paths(&mut campaign, path.parent().unwrap_or(Path::new(".")));
        return Ok(campaign);
    }
    let target = args.target.clone().ok_or_else(|| LoadError::Invalid {
        field: "--target".into(),
        message: "is required without --campaign".into(),
    })?;
    quick_campaign(&QuickRun {
        rate: args.rate,
        concurrency: args.concurrency.map(|c| c as usize),
        requests: args.requests,
        duration_s: args.duration_s,
        input_len: args.input_len,
        output_len: args.output_len,
        seed: args.seed,
        ..QuickRun::new(&target)
    })
}

/// Trace paths in a campaign are relative to the campaign file.
fn resolve_trace_paths(campaign: &mut Campaign, dir: &Path) {
    for w in &mut campaign.workloads {
        if let cleave_loadtest::workload::WorkloadKind::Trace { path, .. } = &mut w.kind
            && path.is_relative()
        {
            *path = dir.join(&*path);
        }
    }
}

fn print(text: &str) -> Result<(), LoadError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|source| LoadError::Write {
        path: "stdout".into(),
        source,
    })
}
