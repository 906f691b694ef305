//! Runs a whole campaign: starts its processes, waits for its targets, runs each (expanded) stage in order with
//! its faults, summarises every stage and keeps every request.
//!
//! Invariant: stages never overlap; each stage's requests are built before its clock starts, and the generator's
//! CPU is read around each stage. Processes started here are stopped when the run ends, however it ends.
//! Cost: all records are kept in memory (about 100 bytes plus the ITLs per request).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::campaign::Campaign;
use crate::client::TargetClient;
use crate::cpu;
use crate::error::LoadError;
use crate::metrics::{RequestRecord, StageSummary, fault_outcome};
use crate::processes::ProcessSet;
use crate::stage::{StageContext, StageFault, run_stage};

/// Everything a run produced: the campaign as run, one summary per stage, every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub campaign: Campaign,
    /// Unix time the run started.
    pub started_unix_s: u64,
    pub generator_cores: usize,
    pub stages: Vec<StageResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageResult {
    pub summary: StageSummary,
    pub requests: Vec<RequestRecord>,
}

#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Draw a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// Runs `campaign`; started processes log to `out_dir/logs/`.
pub async fn run_campaign(campaign: &Campaign, out_dir: &Path, options: RunOptions) -> Result<RunReport, LoadError> {
    campaign.validate()?;
    let processes = Arc::new(ProcessSet::start(&campaign.processes, &out_dir.join("logs")).await?);
    let mut clients = BTreeMap::new();
    for t in &campaign.targets {
        let client = TargetClient::new(&t.url, &t.model, t.connections)?;
        client.wait_ready(Duration::from_secs_f64(t.ready_timeout_s)).await?;
        clients.insert(t.name.clone(), client);
    }
    let workloads: BTreeMap<&str, _> = campaign.workloads.iter().map(|w| (w.name.as_str(), w)).collect();
    let epoch = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut stages = Vec::new();
    let mut first_id = 0u64;
    let stage_list = campaign.expanded_stages();
    for (index, (spec, group)) in stage_list.iter().enumerate() {
        let target_name = spec.target.clone().unwrap_or_else(|| campaign.targets[0].name.clone());
        let (Some(client), Some(workload)) = (clients.get(&target_name), workloads.get(spec.workload.as_str())) else {
            return Err(LoadError::invalid(
                format!("stages.{}", spec.name),
                "names an unknown target or workload",
            ));
        };
        let seed = campaign.seed.wrapping_add(index as u64 * 0x1000_0001);
        let requests = workload.build(spec.requests, seed)?;
        let faults: Vec<StageFault> = campaign
            .faults
            .iter()
            .filter(|f| f.stage == *group || f.stage == spec.name)
            .map(|f| StageFault {
                process: f.process.clone(),
                action: f.action,
                at_s: f.at_s,
            })
            .collect();
        let progress = progress_bar(
            options.progress,
            requests.len().min(spec.requests),
            &spec.name,
            index,
            stage_list.len(),
        );
        let ctx = StageContext {
            client: client.clone(),
            epoch,
            first_id,
            seed,
            processes: processes.clone(),
            progress: progress.clone(),
        };
        let (cpu_before, wall) = (cpu::process_cpu(), Instant::now());
        let run = run_stage(spec, requests, &faults, &ctx).await;
        let (cpu_s, wall_s) = (
            (cpu::process_cpu() - cpu_before).as_secs_f64(),
            wall.elapsed().as_secs_f64(),
        );
        progress.finish_and_clear();
        first_id += spec.requests as u64;
        let mut summary = StageSummary {
            name: spec.name.clone(),
            group: group.clone(),
            target: target_name,
            workload: workload.label(),
            arrival: spec.arrival.label(),
            offered_rate: spec.arrival.offered_rate(),
            concurrency: spec.arrival.concurrency(),
            generator_cpu_s: cpu_s,
            generator_cpu_share: cpu_s / (wall_s.max(1e-9) * cpu::cores() as f64),
            ..StageSummary::default()
        };
        summary.measure(&run.records, &campaign.slo);
        for f in &run.faults {
            let mut outcome = fault_outcome(
                &run.records,
                &f.process,
                &format!("{:?}", f.action).to_lowercase(),
                f.at_s,
            );
            if let Some(e) = &f.error {
                outcome.action = format!("{} (failed: {e})", outcome.action);
            }
            summary.faults.push(outcome);
        }
        stages.push(StageResult {
            summary,
            requests: run.records,
        });
    }
    processes.stop_all();
    Ok(RunReport {
        campaign: campaign.clone(),
        started_unix_s,
        generator_cores: cpu::cores(),
        stages,
    })
}

fn progress_bar(enabled: bool, len: usize, name: &str, index: usize, stages: usize) -> ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(format!("stage {}/{stages} {name}", index + 1));
    bar
}
