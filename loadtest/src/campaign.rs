//! A campaign file (TOML): the targets to load, the workloads (what requests look like), the stages (how they
//! arrive, how many, for how long), the SLO that defines goodput, processes the tool starts itself and faults it
//! injects into them. See docs/loadtest.md for the format.
//!
//! Invariant: a [`Campaign`] that passed [`Campaign::validate`] names only targets, workloads and processes it
//! defines, and every stage is bounded in both requests and time. Cost: parsing only.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::arrival::Arrival;
use crate::error::LoadError;
use crate::workload::{WorkloadKind, WorkloadSpec};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    #[serde(default = "default_name")]
    pub name: String,
    /// Seeds prompt text, lengths and arrival times: the same campaign sends the same requests.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub slo: Slo,
    pub targets: Vec<TargetSpec>,
    pub workloads: Vec<WorkloadSpec>,
    pub stages: Vec<StageSpec>,
    #[serde(default)]
    pub processes: Vec<ProcessSpec>,
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
}

fn default_name() -> String {
    "campaign".into()
}

/// Latency targets: a request meets the SLO when it succeeded, its TTFT and its TPOT are both within them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(default = "default_ttft_ms")]
    pub ttft_ms: f64,
    #[serde(default = "default_tpot_ms")]
    pub tpot_ms: f64,
}

fn default_ttft_ms() -> f64 {
    1000.0
}

fn default_tpot_ms() -> f64 {
    100.0
}

impl Default for Slo {
    fn default() -> Self {
        Slo {
            ttft_ms: default_ttft_ms(),
            tpot_ms: default_tpot_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    /// `grpc://HOST:PORT` (or `http://`): a router's public `cleave.v1.Generation` API.
    pub url: String,
    /// Model name sent with each request; empty means the cluster's default.
    #[serde(default)]
    pub model: String,
    /// HTTP/2 connections requests are spread over.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// How long to wait for the target to answer `ListModels` before the first stage.
    #[serde(default = "default_ready_s")]
    pub ready_timeout_s: f64,
}

fn default_connections() -> usize {
    4
}

fn default_ready_s() -> f64 {
    60.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    /// Target name; default: the first target.
    #[serde(default)]
    pub target: Option<String>,
    pub workload: String,
    pub arrival: Arrival,
    /// At most this many requests are sent.
    pub requests: usize,
    /// No request is sent after this many seconds; requests still running then get `drain_s` more to finish.
    #[serde(default = "default_duration_s")]
    pub duration_s: f64,
    #[serde(default = "default_drain_s")]
    pub drain_s: f64,
    /// Per-request deadline (a request past it counts as `DeadlineExceeded`).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Open-loop arrivals only: requests in flight beyond this wait (default: unbounded).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Runs the stage once per value, replacing the arrival's rate or concurrency.
    #[serde(default)]
    pub sweep: Option<Sweep>,
}

fn default_duration_s() -> f64 {
    600.0
}

fn default_drain_s() -> f64 {
    60.0
}

fn default_timeout_s() -> f64 {
    300.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Sweep {
    Rates(Vec<f64>),
    Concurrency(Vec<usize>),
}

/// A process the campaign starts before its first stage (and stops after the last), or one it only knows by PID.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    pub name: String,
    /// Program and arguments; a program named `cleave` runs the current `cleave` binary when that is what runs.
    #[serde(default)]
    pub command: Vec<String>,
    /// A running process to fault, by the PID in this file (instead of `command`).
    #[serde(default)]
    pub pid_file: Option<String>,
    /// Seconds to wait after starting it before the next process starts.
    #[serde(default)]
    pub start_delay_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The stage during which it fires (for a swept stage, each of its runs).
    pub stage: String,
    /// Seconds after the stage started.
    pub at_s: f64,
    pub process: String,
    #[serde(default)]
    pub action: FaultAction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// SIGKILL: the process dies at once (a crash).
    #[default]
    Kill,
    /// SIGTERM: a graceful stop.
    Term,
}

impl Campaign {
    pub fn from_file(path: &Path) -> Result<Campaign, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let campaign: Campaign = toml::from_str(&text).map_err(|source| LoadError::Toml {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        campaign.validate()?;
        Ok(campaign)
    }

    /// Keeps only the stages named in `names` (in the campaign's order) and the faults that fire during them; a
    /// name the campaign does not have is refused, listing the ones it has.
    pub fn keep_stages(&mut self, names: &[String]) -> Result<(), LoadError> {
        if let Some(unknown) = names.iter().find(|n| !self.stages.iter().any(|s| &s.name == *n)) {
            let known: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
            return Err(LoadError::invalid(
                "stages",
                format!("the campaign has no stage '{unknown}' (it has: {})", known.join(", ")),
            ));
        }
        self.stages.retain(|s| names.contains(&s.name));
        self.faults.retain(|f| names.contains(&f.stage));
        Ok(())
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        if self.targets.is_empty() {
            return Err(LoadError::invalid("targets", "needs at least one target"));
        }
        if self.stages.is_empty() {
            return Err(LoadError::invalid("stages", "needs at least one stage"));
        }
        if !(self.slo.ttft_ms > 0.0 && self.slo.tpot_ms > 0.0) {
            return Err(LoadError::invalid("slo", "ttft_ms and tpot_ms must be > 0"));
        }
        let targets: BTreeSet<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        let workloads: BTreeSet<&str> = self.workloads.iter().map(|w| w.name.as_str()).collect();
        let processes: BTreeSet<&str> = self.processes.iter().map(|p| p.name.as_str()).collect();
        let stages: BTreeSet<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        for t in &self.targets {
            if t.connections == 0 {
                return Err(LoadError::invalid(
                    format!("targets.{}.connections", t.name),
                    "must be >= 1",
                ));
            }
        }
        for w in &self.workloads {
            w.validate()?;
        }
        for s in &self.stages {
            let field = |f: &str| format!("stages.{}.{f}", s.name);
            if let Some(t) = &s.target
                && !targets.contains(t.as_str())
            {
                return Err(LoadError::invalid(field("target"), format!("names no target '{t}'")));
            }
            if !workloads.contains(s.workload.as_str()) {
                return Err(LoadError::invalid(
                    field("workload"),
                    format!("names no workload '{}'", s.workload),
                ));
            }
            if s.requests == 0 {
                return Err(LoadError::invalid(field("requests"), "must be >= 1"));
            }
            if !(s.duration_s > 0.0 && s.duration_s.is_finite()) {
                return Err(LoadError::invalid(field("duration_s"), "must be a finite number > 0"));
            }
            if !(s.drain_s >= 0.0 && s.timeout_s > 0.0) {
                return Err(LoadError::invalid(
                    field("timeout_s"),
                    "timeout_s > 0 and drain_s >= 0 needed",
                ));
            }
            s.arrival.validate(&field("arrival"))?;
            let is_trace = |w: &&WorkloadSpec| matches!(w.kind, WorkloadKind::Trace { .. });
            if matches!(s.arrival, Arrival::Trace { .. })
                && !self
                    .workloads
                    .iter()
                    .filter(|w| w.name == s.workload)
                    .any(|w| is_trace(&w))
            {
                return Err(LoadError::invalid(
                    field("arrival"),
                    "kind = \"trace\" needs a trace workload",
                ));
            }
        }
        for p in &self.processes {
            if p.command.is_empty() == p.pid_file.is_none() {
                return Err(LoadError::invalid(
                    format!("processes.{}", p.name),
                    "needs exactly one of command and pid_file",
                ));
            }
        }
        for f in &self.faults {
            if !stages.contains(f.stage.as_str()) {
                return Err(LoadError::invalid(
                    "faults.stage",
                    format!("names no stage '{}'", f.stage),
                ));
            }
            if !processes.contains(f.process.as_str()) {
                return Err(LoadError::invalid(
                    "faults.process",
                    format!("names no process '{}'", f.process),
                ));
            }
            if f.at_s.is_nan() || f.at_s < 0.0 {
                return Err(LoadError::invalid("faults.at_s", "must be >= 0"));
            }
        }
        Ok(())
    }

    /// The stages as run: each swept stage becomes one stage per value, named `NAME@VALUE`.
    pub fn expanded_stages(&self) -> Vec<(StageSpec, String)> {
        let mut out = Vec::new();
        for s in &self.stages {
            match &s.sweep {
                None => out.push((s.clone(), s.name.clone())),
                Some(Sweep::Rates(rates)) => {
                    for &r in rates {
                        let mut one = s.clone();
                        one.arrival = s.arrival.with_rate(r);
                        one.name = format!("{}@{r}rps", s.name);
                        one.sweep = None;
                        out.push((one, s.name.clone()));
                    }
                }
                Some(Sweep::Concurrency(values)) => {
                    for &c in values {
                        let mut one = s.clone();
                        one.arrival = Arrival::Concurrency { concurrency: c };
                        one.name = format!("{}@c{c}", s.name);
                        one.sweep = None;
                        out.push((one, s.name.clone()));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--stages` keeps the named stages in the campaign's order and only their faults; an unknown name is refused.
    #[test]
    fn keeping_stages_drops_the_others_and_their_faults() {
        let text = r#"
name = "two"
slo = { ttft_ms = 100, tpot_ms = 10 }
[[targets]]
name = "t"
url = "grpc://127.0.0.1:1"
[[workloads]]
name = "w"
kind = "synthetic"
input = { dist = "fixed", value = 8 }
output = { dist = "fixed", value = 8 }
[[processes]]
name = "p"
command = ["true"]
[[faults]]
stage = "a"
at_s = 1.0
process = "p"
"#;
        let stages: String = ["a", "b"]
            .iter()
            .map(|name| {
                format!(
                    "[[stages]]\nname = \"{name}\"\nworkload = \"w\"\nrequests = 1\nduration_s = 1\n\
                     arrival = {{ kind = \"concurrency\", concurrency = 1 }}\n"
                )
            })
            .collect();
        let mut campaign: Campaign = toml::from_str(&format!("{text}{stages}")).unwrap();
        campaign.validate().unwrap();
        let refused = campaign.keep_stages(&["c".to_owned()]).unwrap_err().to_string();
        assert!(refused.contains("no stage 'c' (it has: a, b)"), "{refused}");
        campaign.keep_stages(&["b".to_owned()]).unwrap();
        let names: Vec<&str> = campaign.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert!(campaign.faults.is_empty());
        campaign.validate().unwrap();
    }
}
