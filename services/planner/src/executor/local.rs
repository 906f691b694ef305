//! The local executor: each replica is a `cleave worker --role prefill|decode` child process on this machine,
//! on free loopback ports, registered in the same etcd as the router so the router finds it.
//!
//! Scaling up spawns workers; scaling down sends SIGTERM to the newest ones (a worker drains its in-flight
//! requests, then deregisters and exits). Invariant: every child is owned here and killed when the executor
//! drops (`kill_on_drop`), so no worker outlives the planner; a worker that exits on its own stops counting at
//! the next `replicas` call, and the planner replaces it if the bounds ask for it. Cost: one process spawn (and a
//! model load in the child) per replica added.

use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::Executor;
use super::placement::PlacementWriter;
use crate::decision::{Decision, Phase, Replicas};
use crate::error::PlannerError;

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct LocalWorkerConfig {
    /// The `cleave` binary.
    pub program: PathBuf,
    /// The model the workers serve.
    pub model: String,
    /// etcd endpoints and key prefix the workers register under.
    pub etcd: Vec<String>,
    pub etcd_prefix: String,
    /// The loopback (or other local) address workers listen on.
    pub host: String,
    /// Extra arguments for every worker (e.g. `--kv-cache-mib 64`).
    pub extra_args: Vec<String>,
}

#[derive(Debug)]
struct LocalWorker {
    id: String,
    child: Child,
}

/// Starts and stops `cleave worker` processes.
#[derive(Debug)]
pub struct LocalExecutor {
    config: LocalWorkerConfig,
    prefill: Vec<LocalWorker>,
    decode: Vec<LocalWorker>,
    /// Workers sent SIGTERM, reaped once they exit.
    stopping: Vec<LocalWorker>,
    started: u64,
    placement: Option<PlacementWriter>,
}

impl LocalExecutor {
    pub fn new(config: LocalWorkerConfig) -> Self {
        Self {
            config,
            prefill: Vec::new(),
            decode: Vec::new(),
            stopping: Vec::new(),
            started: 0,
            placement: None,
        }
    }

    /// Also writes every changing decision to `placement/` in the registry.
    pub fn with_placement(mut self, placement: PlacementWriter) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Stops every worker: SIGTERM, then up to `grace` for them to drain and exit; stragglers are killed.
    pub async fn shutdown(mut self, grace: std::time::Duration) {
        let _ = self.scale(Phase::Prefill, 0).await;
        let _ = self.scale(Phase::Decode, 0).await;
        let deadline = tokio::time::Instant::now() + grace;
        for worker in &mut self.stopping {
            if tokio::time::timeout_at(deadline, worker.child.wait()).await.is_err() {
                tracing::warn!(id = %worker.id, "a worker did not exit within {grace:?}; killing it");
                let _ = worker.child.kill().await;
            }
        }
    }

    /// The registry ids of the workers running now, by phase.
    pub fn worker_ids(&self, phase: Phase) -> Vec<String> {
        self.pool(phase).iter().map(|w| w.id.clone()).collect()
    }

    fn pool(&self, phase: Phase) -> &Vec<LocalWorker> {
        match phase {
            Phase::Prefill => &self.prefill,
            Phase::Decode => &self.decode,
        }
    }

    fn pool_mut(&mut self, phase: Phase) -> &mut Vec<LocalWorker> {
        match phase {
            Phase::Prefill => &mut self.prefill,
            Phase::Decode => &mut self.decode,
        }
    }

    fn spawn(&mut self, phase: Phase) -> Result<LocalWorker, PlannerError> {
        self.started += 1;
        let id = format!("planner-{}-{}-{}", phase.as_str(), std::process::id(), self.started);
        let spawn_error = |source| PlannerError::Spawn {
            phase: phase.as_str(),
            program: self.config.program.display().to_string(),
            source,
        };
        let (grpc, metrics) = (free_port().map_err(spawn_error)?, free_port().map_err(spawn_error)?);
        let host = &self.config.host;
        let mut command = Command::new(&self.config.program);
        command
            .arg("worker")
            .args(["--role", phase.as_str(), "--model", &self.config.model, "--id", &id])
            .args(["--listen", &format!("{host}:{grpc}")])
            .args(["--metrics-listen", &format!("{host}:{metrics}")]);
        if !self.config.etcd.is_empty() {
            command.args([
                "--etcd",
                &self.config.etcd.join(","),
                "--etcd-prefix",
                &self.config.etcd_prefix,
            ]);
        }
        command
            .args(&self.config.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().map_err(spawn_error)?;
        tracing::info!(%id, pid = ?child.id(), grpc, metrics, "started a {} worker", phase.as_str());
        Ok(LocalWorker { id, child })
    }

    /// Forgets workers that exited.
    fn reap(&mut self) {
        for phase in Phase::ALL {
            self.pool_mut(phase).retain_mut(|w| match w.child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    tracing::warn!(id = %w.id, %status, "a {} worker exited on its own", phase.as_str());
                    false
                }
                Err(_) => false,
            });
        }
        self.stopping.retain_mut(|w| matches!(w.child.try_wait(), Ok(None)));
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[async_trait]
impl Executor for LocalExecutor {
    async fn replicas(&mut self) -> Result<Replicas, PlannerError> {
        self.reap();
        Ok(Replicas {
            prefill: self.prefill.len() as u32,
            decode: self.decode.len() as u32,
        })
    }

    async fn scale(&mut self, phase: Phase, replicas: u32) -> Result<(), PlannerError> {
        let target = replicas as usize;
        while self.pool(phase).len() < target {
            let worker = self.spawn(phase)?;
            self.pool_mut(phase).push(worker);
        }
        while self.pool(phase).len() > target {
            let Some(worker) = self.pool_mut(phase).pop() else {
                break;
            };
            match worker.child.id() {
                Some(pid) => {
                    tracing::info!(id = %worker.id, pid, "stopping a {} worker (SIGTERM)", phase.as_str());
                    if let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
                        tracing::warn!(id = %worker.id, error = %e, "SIGTERM failed");
                    }
                    self.stopping.push(worker);
                }
                None => tracing::debug!(id = %worker.id, "the worker had already exited"),
            }
        }
        Ok(())
    }

    async fn record(&mut self, decision: &Decision, summary: &str) -> Result<(), PlannerError> {
        for phase in Phase::ALL {
            let d = decision.phase(phase);
            if d.changes() {
                tracing::info!(
                    phase = phase.as_str(),
                    from = d.current,
                    to = d.target,
                    reason = d.reason.as_str(),
                    "{summary}"
                );
            }
        }
        if let Some(placement) = &self.placement {
            placement.write(decision).await?;
        }
        Ok(())
    }
}
