//! Scraping: `GET /metrics` from the routers given on the command line and from every worker whose registry
//! record names a `metrics_addr`, folded into one [`Snapshot`].
//!
//! Invariant: a target that fails (down, slow, starting) is skipped and counted, never fatal — the planner
//! decides from what it can see, and a worker that has not registered yet is simply not in the picture.
//! Cost: one registry listing and one HTTP request per target per interval, each bounded by `timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_cluster::registry::{KeyLayout, Registry, WorkerRecord};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::PlannerError;
use crate::exposition::{self, Sample};
use crate::signals::Snapshot;

/// `http://HOST:PORT/metrics` from `host:port`, a URL without a path, or a full URL.
pub fn metrics_url(target: &str) -> String {
    let with_scheme = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let after_scheme = with_scheme.split_once("://").map_or("", |(_, rest)| rest);
    if after_scheme.contains('/') {
        with_scheme
    } else {
        format!("{with_scheme}/metrics")
    }
}

/// Where to find the workers' metrics.
#[derive(Debug, Clone)]
pub struct WorkerDiscovery {
    pub registry: Arc<dyn Registry>,
    pub layout: KeyLayout,
    /// Only workers serving this model count (empty: all).
    pub model: String,
}

/// Scrapes the cluster.
#[derive(Debug, Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    routers: Vec<String>,
    workers: Option<WorkerDiscovery>,
    timeout: Duration,
    epoch: Instant,
}

/// What one scrape saw.
#[derive(Debug)]
pub struct Scrape {
    pub snapshot: Snapshot,
    pub targets: usize,
    pub failures: Vec<PlannerError>,
}

impl Scraper {
    pub fn new(routers: &[String], workers: Option<WorkerDiscovery>, timeout: Duration) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            routers: routers.iter().map(|r| metrics_url(r)).collect(),
            workers,
            timeout,
            epoch: Instant::now(),
        }
    }

    /// The metrics URLs of the registered workers (of the model).
    pub async fn worker_targets(&self) -> Result<Vec<String>, PlannerError> {
        let Some(discovery) = &self.workers else {
            return Ok(Vec::new());
        };
        let listing = discovery.registry.get_prefix(&discovery.layout.workers()).await?;
        Ok(listing
            .entries
            .iter()
            .filter_map(|(key, value)| match WorkerRecord::from_json(key, value) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::debug!(%key, error = %e, "skipping a worker record");
                    None
                }
            })
            .filter(|r| !r.metrics_addr.is_empty() && (discovery.model.is_empty() || r.model == discovery.model))
            .map(|r| metrics_url(&r.metrics_addr))
            .collect())
    }

    /// Scrapes every target once and folds what answered.
    pub async fn scrape(&self) -> Scrape {
        let mut failures = Vec::new();
        let mut targets = self.routers.clone();
        match self.worker_targets().await {
            Ok(workers) => targets.extend(workers),
            Err(e) => failures.push(e),
        }
        let at = self.epoch.elapsed().as_secs_f64();
        let fetches = targets.iter().map(|url| self.fetch(url));
        // A slow target must not delay the rest: fetch them together, each bounded by the timeout.
        let results = futures_util::future::join_all(fetches).await;
        let mut expositions: Vec<Vec<Sample>> = Vec::new();
        for result in results {
            match result {
                Ok(samples) => expositions.push(samples),
                Err(e) => failures.push(e),
            }
        }
        Scrape {
            snapshot: Snapshot::fold(at, expositions.iter().map(Vec::as_slice)),
            targets: targets.len(),
            failures,
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<Sample>, PlannerError> {
        let error = |reason: String| PlannerError::Scrape {
            url: url.to_owned(),
            reason,
        };
        let uri: hyper::Uri = url.parse().map_err(|e| error(format!("{e}")))?;
        let fetch = async {
            let response = self.client.get(uri).await.map_err(|e| error(format!("{e}")))?;
            if !response.status().is_success() {
                return Err(error(format!("status {}", response.status())));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| error(format!("{e}")))?;
            String::from_utf8(body.to_bytes().to_vec()).map_err(|e| error(format!("{e}")))
        };
        let text = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| error(format!("no answer within {:?}", self.timeout)))??;
        Ok(exposition::parse(&text))
    }
}
