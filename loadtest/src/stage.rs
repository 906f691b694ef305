//! Runs one stage: sends its requests on the arrival schedule (open loop) or from a fixed number of clients
//! (closed loop), fires its faults at their times, and collects every request's record.
//!
//! Invariant: a stage is bounded twice — no request is sent past `requests` or past `duration_s`, and requests
//! still running `drain_s` after that are cancelled and recorded as `Cancelled`. Each request runs in its own
//! task, so a slow response never delays the next send. Cost: one task per request; records go through one
//! channel to the collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::campaign::{FaultAction, StageSpec};
use crate::client::TargetClient;
use crate::metrics::RequestRecord;
use crate::processes::ProcessSet;
use crate::workload::RequestSpec;

/// A fault as scheduled for one stage run.
#[derive(Debug, Clone)]
pub struct StageFault {
    pub process: String,
    pub action: FaultAction,
    pub at_s: f64,
}

/// A fault as it happened: when (run time) and whether the signal was delivered.
#[derive(Debug, Clone)]
pub struct FiredFault {
    pub process: String,
    pub action: FaultAction,
    pub at_s: f64,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct StageRun {
    pub records: Vec<RequestRecord>,
    pub faults: Vec<FiredFault>,
}

/// Everything a stage needs besides its spec.
#[derive(Debug, Clone)]
pub struct StageContext {
    pub client: TargetClient,
    pub epoch: Instant,
    /// First request id of this stage (ids are unique over the run).
    pub first_id: u64,
    pub seed: u64,
    pub processes: Arc<ProcessSet>,
    pub progress: ProgressBar,
}

pub async fn run_stage(
    spec: &StageSpec,
    requests: Vec<RequestSpec>,
    faults: &[StageFault],
    ctx: &StageContext,
) -> StageRun {
    let n = requests.len().min(spec.requests);
    let trace_s: Vec<Option<f64>> = requests.iter().map(|r| r.at_s).collect();
    let requests = Arc::new(requests);
    let start = Instant::now();
    let stop_sending = start + Duration::from_secs_f64(spec.duration_s);
    let timeout = Duration::from_secs_f64(spec.timeout_s);
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<RequestRecord>();

    let fired = faults
        .iter()
        .map(|f| {
            let (f, processes, epoch) = (f.clone(), ctx.processes.clone(), ctx.epoch);
            tokio::spawn(async move {
                tokio::time::sleep_until((start + Duration::from_secs_f64(f.at_s)).into()).await;
                let at_s = epoch.elapsed().as_secs_f64();
                let error = processes.fault(&f.process, f.action).err().map(|e| e.to_string());
                FiredFault {
                    process: f.process,
                    action: f.action,
                    at_s,
                    error,
                }
            })
        })
        .collect::<Vec<_>>();

    let one = {
        let (client, epoch, first_id, cancel) = (ctx.client.clone(), ctx.epoch, ctx.first_id, cancel.clone());
        move |i: usize, requests: Arc<Vec<RequestSpec>>| {
            let (client, cancel) = (client.clone(), cancel.clone());
            async move {
                let id = first_id + i as u64;
                let sent_s = epoch.elapsed().as_secs_f64();
                tokio::select! {
                    record = client.send(id, &requests[i], epoch, timeout) => record,
                    () = cancel.cancelled() => {
                        let mut r = RequestRecord::new(id, &requests[i], sent_s);
                        r.e2e_ms = (epoch.elapsed().as_secs_f64() - sent_s) * 1e3;
                        r.fail("Cancelled", "still running at the stage's drain deadline");
                        r
                    }
                }
            }
        }
    };

    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
    let dispatcher = match spec.arrival.offsets(n, &trace_s, &mut rng) {
        None => {
            let clients = spec.arrival.concurrency().unwrap_or(1);
            let next = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let (next, tx, requests, one) = (next.clone(), tx.clone(), requests.clone(), one.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n || Instant::now() >= stop_sending {
                                break;
                            }
                            let _ = tx.send(one(i, requests.clone()).await);
                        }
                    })
                })
                .collect();
            tokio::spawn(async move {
                for t in tasks {
                    let _ = t.await;
                }
            })
        }
        Some(offsets) => {
            let (tx, requests) = (tx.clone(), requests.clone());
            let limit = spec.max_in_flight.map(|m| Arc::new(Semaphore::new(m)));
            tokio::spawn(async move {
                for (i, offset) in offsets.into_iter().enumerate() {
                    let at = start + Duration::from_secs_f64(offset);
                    if at > stop_sending {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    let permit = match &limit {
                        Some(l) => l.clone().acquire_owned().await.ok(),
                        None => None,
                    };
                    let (tx, request) = (tx.clone(), one(i, requests.clone()));
                    tokio::spawn(async move {
                        let record = request.await;
                        drop(permit);
                        let _ = tx.send(record);
                    });
                }
            })
        }
    };
    drop(tx);

    let mut records = Vec::with_capacity(n);
    let mut dispatcher = Some(dispatcher);
    let mut drain_deadline: Option<Instant> = None;
    let mut errors = 0usize;
    loop {
        let wait = match drain_deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => stop_sending.saturating_duration_since(Instant::now()) + Duration::from_millis(50),
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(record)) => {
                ctx.progress.inc(1);
                if record.error.is_some() {
                    errors += 1;
                    ctx.progress.set_message(format!("{errors} errors"));
                }
                records.push(record);
            }
            Ok(None) => break,
            Err(_) => {
                if let Some(d) = dispatcher.take_if(|d| d.is_finished() || Instant::now() >= stop_sending) {
                    // Sending is over (or past its time): what runs now gets `drain_s` more.
                    if !d.is_finished() {
                        d.abort();
                    }
                    drain_deadline = Some(Instant::now() + Duration::from_secs_f64(spec.drain_s));
                } else if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                    cancel.cancel();
                    drain_deadline = Some(Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }
    records.sort_by_key(|r| r.id);
    let mut fired_faults = Vec::new();
    for f in fired {
        if f.is_finished() {
            if let Ok(ff) = f.await {
                fired_faults.push(ff);
            }
        } else {
            f.abort();
        }
    }
    StageRun {
        records,
        faults: fired_faults,
    }
}
