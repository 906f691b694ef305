//! A simulated cluster in this process: `cleave-simworker` workers (timing model, no model math) behind the real
//! router (`cleave_router::serve`), all on loopback gRPC. Shared by the tests and the accuracy example.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_router::policy::PolicyConfig;
use cleave_router::{RouterModel, RouterService, WorkerEndpoint, WorkerPool};
use cleave_simworker::{SimConfig, SimWorker};

pub struct SimCluster {
    pub url: String,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, format!("http://{addr}"))
}

/// `workers` simulated workers with `sim`'s timing behind one router; returns once the router reaches them all.
/// `with_router` sees the router before it serves (e.g. to serve its HTTP API too).
pub async fn start(sim: SimConfig, workers: usize, with_router: impl FnOnce(&RouterService)) -> SimCluster {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut urls = Vec::new();
    for _ in 0..workers {
        let (listener, url) = listen().await;
        let worker = SimWorker::new(sim.clone()).unwrap();
        tokio::spawn(cleave_simworker::serve_worker(
            worker,
            listener,
            shutdown(stop_rx.clone()),
        ));
        urls.push(url);
    }
    let model = Arc::new(RouterModel::from_gguf("smollm2-135m", &cleave_testkit::default_model_path()).unwrap());
    let endpoints: Vec<WorkerEndpoint> = urls.iter().map(WorkerEndpoint::both).collect();
    let pool = Arc::new(WorkerPool::start(&endpoints, PolicyConfig::default()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.reachable() < workers {
        assert!(Instant::now() < deadline, "simulated workers never became reachable");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (listener, _) = listen().await;
    let addr = listener.local_addr().unwrap();
    let service = RouterService::new(model, pool, "loadtest".into());
    with_router(&service);
    tokio::spawn(cleave_router::serve(service, listener, shutdown(stop_rx.clone())));
    SimCluster {
        url: format!("grpc://{addr}"),
        stop,
    }
}

/// Fixed timing: `ttft` to the first token (no per-token prefill), `itl` per later token, no batch slowdown.
pub fn fixed_timing(ttft: Duration, itl: Duration) -> SimConfig {
    SimConfig {
        time_to_first_token: ttft,
        prefill_per_token: Duration::ZERO,
        inter_token_latency: itl,
        per_running_slowdown: Duration::ZERO,
        ..SimConfig::default()
    }
}
