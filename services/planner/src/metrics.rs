//! The planner's own Prometheus metrics: desired and current replicas per phase, decisions by phase and reason,
//! the SLO signals it decided from, and scrape failures — served on `GET /metrics` like every cleave component.
//!
//! Invariant: the gauges hold the last decision's values; the counters count every decision once.
//! Cost: atomic updates per decision; a scrape encodes a handful of families.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::decision::{Decision, Phase};
use crate::signals::Signals;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    phase: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The planner's metrics and the registry that serves them.
#[derive(Debug, Clone)]
pub struct PlannerMetrics {
    registry: Arc<Registry>,
    desired: Family<PhaseLabels, Gauge>,
    current: Family<PhaseLabels, Gauge>,
    decisions: Family<ReasonLabels, Counter>,
    latency: Family<SignalLabels, FloatGauge>,
    scrape_failures: Counter,
}

impl Default for PlannerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PlannerMetrics {
    pub fn new() -> Self {
        let mut registry = cleave_telemetry::registry();
        let (desired, current, decisions, latency, scrape_failures) = Default::default();
        let m = PlannerMetrics {
            registry: Arc::new(Registry::default()),
            desired,
            current,
            decisions,
            latency,
            scrape_failures,
        };
        registry.register(
            "planner_desired_replicas",
            "Replicas the planner wants per phase",
            m.desired.clone(),
        );
        registry.register(
            "planner_current_replicas",
            "Replicas the executor ran per phase when the planner last decided",
            m.current.clone(),
        );
        registry.register(
            "planner_decisions",
            "Planner decisions by phase and reason (one per phase per interval)",
            m.decisions.clone(),
        );
        registry.register_with_unit(
            "planner_signal",
            "The windowed latency signals the planner last decided from (ttft_p50, ttft_p90, itl_p50, itl_p90, \
             queue_wait_p90)",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "planner_scrape_failures",
            "Metrics targets that did not answer a scrape",
            m.scrape_failures.clone(),
        );
        PlannerMetrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Records one decision and the signals behind it.
    pub fn observe(&self, decision: &Decision, signals: &Signals) {
        for phase in Phase::ALL {
            let d = decision.phase(phase);
            let labels = PhaseLabels { phase: phase.as_str() };
            self.desired.get_or_create(&labels).set(i64::from(d.target));
            self.current.get_or_create(&labels).set(i64::from(d.current));
            self.decisions
                .get_or_create(&ReasonLabels {
                    phase: phase.as_str(),
                    reason: d.reason.as_str(),
                })
                .inc();
        }
        for (signal, value) in [
            ("ttft_p50", signals.ttft_p50),
            ("ttft_p90", signals.ttft_p90),
            ("itl_p50", signals.itl_p50),
            ("itl_p90", signals.itl_p90),
            ("queue_wait_p90", signals.queue_wait_p90),
        ] {
            self.latency
                .get_or_create(&SignalLabels { signal })
                .set(value.unwrap_or(0.0));
        }
    }

    pub fn count_scrape_failures(&self, n: usize) {
        self.scrape_failures.inc_by(n as u64);
    }

    /// The exposition in the classic Prometheus text format.
    pub fn render(&self) -> String {
        cleave_telemetry::render(&self.registry)
            .map(|text| cleave_telemetry::to_prometheus_text(&text))
            .unwrap_or_default()
    }

    /// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }

    /// An axum router answering `GET /metrics`.
    pub fn router(&self) -> axum::Router {
        let metrics = self.clone();
        axum::Router::new().route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, cleave_telemetry::TEXT_CONTENT_TYPE)], text).into_response() }
            }),
        )
    }
}
