//! The control loop: every interval, scrape → fold into the window → decide → scale → record, until cancelled.
//!
//! Invariant: one decision per interval, made from the replicas the executor reports at that moment; a failed
//! scale is logged and retried by the next interval's decision (the state still moved, so cool-down applies).
//! Cost: one scrape of every target and at most two scale calls per interval.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::decision::{Decision, Phase, PlannerConfig, PlannerState, decide};
use crate::error::PlannerError;
use crate::executor::Executor;
use crate::metrics::PlannerMetrics;
use crate::scrape::Scraper;
use crate::signals::{SignalWindow, Signals};

/// The planner: its configuration, its view of the cluster and its executor.
#[derive(Debug)]
pub struct Planner<E> {
    config: PlannerConfig,
    interval: Duration,
    scraper: Scraper,
    executor: E,
    window: SignalWindow,
    state: PlannerState,
    metrics: PlannerMetrics,
    epoch: Instant,
}

impl<E: Executor> Planner<E> {
    pub fn new(
        config: PlannerConfig,
        interval: Duration,
        window: Duration,
        scraper: Scraper,
        executor: E,
    ) -> Result<Self, PlannerError> {
        config.validate().map_err(PlannerError::InvalidConfig)?;
        Ok(Self {
            config,
            interval,
            scraper,
            executor,
            window: SignalWindow::new(window.as_secs_f64()),
            state: PlannerState::default(),
            metrics: PlannerMetrics::new(),
            epoch: Instant::now(),
        })
    }

    pub fn metrics(&self) -> &PlannerMetrics {
        &self.metrics
    }

    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// One round: scrape, decide, apply. Returns the decision and the signals it came from.
    pub async fn tick(&mut self) -> Result<(Decision, Signals), PlannerError> {
        let scrape = self.scraper.scrape().await;
        self.metrics.count_scrape_failures(scrape.failures.len());
        for failure in &scrape.failures {
            tracing::debug!(error = %failure, "scrape failed");
        }
        self.window.push(scrape.snapshot);
        let signals = self.window.signals().unwrap_or_default();
        let current = self.executor.replicas().await?;
        let now = self.epoch.elapsed().as_secs_f64();
        let decision = decide(&signals, current, &self.config, &mut self.state, now);
        self.metrics.observe(&decision, &signals);
        tracing::debug!(?decision, ?signals, "planner decision");
        let mut changed = false;
        for phase in Phase::ALL {
            let d = decision.phase(phase);
            if d.changes() {
                changed = true;
                self.executor.scale(phase, d.target).await?;
            }
        }
        if changed {
            self.executor.record(&decision, &summary(&signals)).await?;
        }
        Ok((decision, signals))
    }

    /// Runs until `shutdown` is cancelled; errors of one round are logged and the loop goes on.
    pub async fn run(mut self, shutdown: CancellationToken) -> E {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "planner round failed");
            }
        }
        self.executor
    }
}

/// The signals in one line, for Events and logs.
pub fn summary(s: &Signals) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.0}ms", v * 1e3));
    format!(
        "TTFT p90 {}, ITL p90 {}, queue wait p90 {}, {:.2} req/s, {:.0} prefill tok/s, {:.0} decode tok/s, \
         {:.0} prefill tokens queued, KV {}",
        ms(s.ttft_p90),
        ms(s.itl_p90),
        ms(s.queue_wait_p90),
        s.request_rate,
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        s.queued_prefill_tokens,
        s.kv_utilization
            .map_or_else(|| "-".to_owned(), |u| format!("{:.0}%", u * 100.0)),
    )
}
