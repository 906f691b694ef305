//! Measurement accuracy, at a low rate and at 2,000 requests/s, against two backends in this process over loopback
//! gRPC: a stub `Generation` server with exact token times (the generator's own error), and simulated workers with
//! a fixed timing model (TTFT, inter-token latency) behind the real router (the whole path). Prints, per rate, what
//! the tool measured against the configured timing, the send rate it achieved against the one asked for, and the
//! CPU the whole process (generator + backend) used.
//!
//! Run: `cargo run --release -p cleave-loadtest --example accuracy` (needs the default model's tokenizer:
//! `cleave model pull`). Everything shares one 2-thread runtime, like a 2-core box.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/precise.rs"]
mod precise;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use cleave_loadtest::{Campaign, RunOptions, run_campaign};

const TTFT_MS: f64 = 20.0;
const ITL_MS: f64 = 5.0;
const OUTPUT: u32 = 4;
const WORKERS: usize = 4;

fn campaign(url: &str, rate: f64, requests: usize) -> Campaign {
    toml::from_str(&format!(
        r#"
name = "accuracy"
[[targets]]
name = "sim"
url = "{url}"
connections = 4
[[workloads]]
name = "w"
kind = "synthetic"
input = {{ dist = "fixed", value = 32 }}
output = {{ dist = "fixed", value = {OUTPUT} }}
[[stages]]
name = "rate-{rate}"
workload = "w"
arrival = {{ kind = "poisson", rate = {rate} }}
requests = {requests}
duration_s = 30
"#
    ))
    .unwrap()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The generator alone: a stub server with exact token times (a spinning timer thread, no router).
        let stub = precise::start(
            Duration::from_secs_f64(TTFT_MS / 1e3),
            Duration::from_secs_f64(ITL_MS / 1e3),
        )
        .await;
        println!("generator alone, against a stub with exact timing (TTFT {TTFT_MS} ms, inter-token {ITL_MS} ms):");
        table_header();
        measure(&stub, &[(200.0, 400, false), (50.0, 500, true), (2000.0, 20_000, true)]).await;
        // The floor: the same path with no simulated TTFT (no timer in the worker before the first token), i.e.
        // what the router, loopback gRPC and the client add on their own.
        let floor_cluster = support::start(
            support::fixed_timing(Duration::ZERO, Duration::from_secs_f64(ITL_MS / 1e3)),
            WORKERS,
            |_| {},
        )
        .await;
        let dir = std::env::temp_dir().join("cleave-accuracy");
        run_campaign(
            &campaign(&floor_cluster.url, 200.0, 400),
            &dir,
            RunOptions { progress: false },
        )
        .await
        .unwrap();
        let floor = run_campaign(
            &campaign(&floor_cluster.url, 50.0, 500),
            &dir,
            RunOptions { progress: false },
        )
        .await
        .unwrap();
        let f = &floor.stages[0].summary.ttft_ms;
        println!(
            "floor (TTFT 0 configured, 50 req/s): TTFT p50 / p99 {:.3} / {:.3} ms",
            f.p50, f.p99
        );
        drop(floor_cluster);
        let sim = support::fixed_timing(
            Duration::from_secs_f64(TTFT_MS / 1e3),
            Duration::from_secs_f64(ITL_MS / 1e3),
        );
        let cluster = support::start(sim, WORKERS, |_| {}).await;
        println!(
            "{WORKERS} simulated workers: TTFT {TTFT_MS} ms, inter-token {ITL_MS} ms, {OUTPUT} tokens; 32-word prompts"
        );
        table_header();
        // Warm-up (connections, tokenizer caches), then the two measured rates.
        measure(
            &cluster.url,
            &[(200.0, 400, false), (50.0, 500, true), (2000.0, 20_000, true)],
        )
        .await;
    });
}

fn table_header() {
    println!(
        "| offered req/s | requests | achieved send req/s | completed req/s | errors | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | ITL p50 / p99 (ms) | TTFT p50 error | TPOT p50 error | process CPU (of 2 cores) |"
    );
    println!("|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|");
}

/// One stage per `(rate, requests, print)`; prints a table row for those with `print`.
async fn measure(url: &str, stages: &[(f64, usize, bool)]) {
    let dir = std::env::temp_dir().join("cleave-accuracy");
    for &(rate, requests, print) in stages {
        let report = run_campaign(&campaign(url, rate, requests), &dir, RunOptions { progress: false })
            .await
            .unwrap();
        let st = &report.stages[0];
        let s = &st.summary;
        let first = st.requests.first().map_or(0.0, |r| r.sent_s);
        let last = st.requests.iter().map(|r| r.sent_s).fold(0.0, f64::max);
        let send_rate = (st.requests.len() - 1) as f64 / (last - first).max(1e-9);
        if print {
            println!(
                "| {rate} | {} | {send_rate:.0} | {:.0} | {} | {:.2} / {:.2} | {:.3} / {:.3} | {:.3} / {:.3} | {:+.2} ms | {:+.3} ms | {:.0}% |",
                s.requests,
                s.request_rate,
                s.requests - s.succeeded,
                s.ttft_ms.p50,
                s.ttft_ms.p99,
                s.tpot_ms.p50,
                s.tpot_ms.p99,
                s.itl_ms.p50,
                s.itl_ms.p99,
                s.ttft_ms.p50 - TTFT_MS,
                s.tpot_ms.p50 - ITL_MS,
                s.generator_cpu_share * 100.0
            );
            if !s.errors.is_empty() {
                println!("  errors: {:?}", s.errors);
            }
        }
    }
}
