//! `GET /metrics`: a process's registry in the OpenMetrics text format when the scraper asks for it (Prometheus
//! does), else in the classic Prometheus text format 0.0.4 (curl, `promtool check metrics`), served with axum.
//!
//! Invariant: the registry is complete before serving starts; a scrape samples the workers' engines, then only
//! reads. Cost: one engine round trip per worker and one encode of the whole registry per scrape.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::{RouterMetrics, WorkerMetrics};

/// One process's metrics: the router's and the workers' families in one `cleave_` registry. A process that runs
/// no router (or no worker) simply never updates that set; its families stay empty.
#[derive(Debug, Clone)]
pub struct Telemetry {
    registry: Arc<Registry>,
    pub router: RouterMetrics,
    pub workers: WorkerMetrics,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = crate::registry();
        let router = RouterMetrics::register(&mut registry);
        let workers = WorkerMetrics::register(&mut registry);
        Telemetry {
            registry: Arc::new(registry),
            router,
            workers,
        }
    }

    /// The exposition now, after sampling the workers.
    pub async fn scrape(&self) -> Result<String, std::fmt::Error> {
        self.workers.refresh().await;
        render(&self.registry)
    }
}

/// The OpenMetrics text format's content type (Prometheus 2.x and later negotiate it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format's content type.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the classic Prometheus text format: a counter family is named with its `_total` suffix,
/// and the `# UNIT` and `# EOF` lines, which the classic format lacks, are dropped. Samples are unchanged.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match descriptor {
            Some((tag, rest)) if counters.contains(rest.split(' ').next().unwrap_or_default()) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(&format!("{tag}{name}_total {tail}"));
            }
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// The registry's exposition as text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// An axum router answering `GET /metrics` from `telemetry`.
pub fn metrics_router(telemetry: Telemetry) -> axum::Router {
    axum::Router::new().route("/metrics", get(scrape)).with_state(telemetry)
}

async fn scrape(State(telemetry): State<Telemetry>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match telemetry.scrape().await {
        Ok(text) if openmetrics => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], to_prometheus_text(&text)).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics").into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    telemetry: Telemetry,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, metrics_router(telemetry))
        .with_graceful_shutdown(shutdown)
        .await
}
