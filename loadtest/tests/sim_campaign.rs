//! Short campaigns against simulated workers behind the real router, in process over loopback gRPC: the tool
//! measures back the workers' configured timing, counts what it sent, sees the prefix cache, writes its outputs
//! and compares runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use cleave_loadtest::{Campaign, RunOptions, read_run, run_campaign, write_outputs};

const TTFT_MS: f64 = 10.0;
const ITL_MS: f64 = 3.0;

fn campaign(url: &str, trace: &std::path::Path) -> Campaign {
    let text = format!(
        r#"
name = "sim"
seed = 3
slo = {{ ttft_ms = 50, tpot_ms = 20 }}

[[targets]]
name = "sim"
url = "{url}"

[[workloads]]
name = "fixed"
kind = "synthetic"
input = {{ dist = "fixed", value = 64 }}
output = {{ dist = "fixed", value = 8 }}

[[workloads]]
name = "chat"
kind = "sessions"
sessions = 4
turns = 3
input = {{ dist = "uniform", min = 20, max = 40 }}
output = {{ dist = "fixed", value = 4 }}

[[workloads]]
name = "trace"
kind = "trace"
path = "{trace}"
block_tokens = 32

[[stages]]
name = "poisson"
workload = "fixed"
arrival = {{ kind = "poisson", rate = 200 }}
requests = 120
duration_s = 10

[[stages]]
name = "closed"
workload = "fixed"
arrival = {{ kind = "concurrency", concurrency = 1 }}
requests = 16
sweep = {{ concurrency = [1, 8] }}

[[stages]]
name = "chat"
workload = "chat"
arrival = {{ kind = "gamma", rate = 100, cv = 2 }}
requests = 24

[[stages]]
name = "replay"
workload = "trace"
arrival = {{ kind = "trace", speedup = 10 }}
requests = 100

[[stages]]
name = "bounded"
workload = "fixed"
arrival = {{ kind = "constant", rate = 20 }}
requests = 1000
duration_s = 0.5
"#,
        trace = trace.display()
    );
    let campaign: Campaign = toml::from_str(&text).unwrap();
    campaign.validate().unwrap();
    campaign
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_against_simulated_workers_measures_their_timing() {
    let cluster = support::start(
        support::fixed_timing(
            Duration::from_secs_f64(TTFT_MS / 1e3),
            Duration::from_secs_f64(ITL_MS / 1e3),
        ),
        2,
        |_| {},
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let lines: String = (0..10)
        .map(|i| {
            format!(
                "{{\"timestamp\": {}, \"input_length\": 70, \"output_length\": 3, \"hash_ids\": [1, 2, {}]}}\n",
                i * 100,
                100 + i
            )
        })
        .collect();
    std::fs::write(&trace, lines).unwrap();
    let campaign = campaign(&cluster.url, &trace);
    let out = dir.path().join("out");
    let report = run_campaign(&campaign, &out, RunOptions { progress: false })
        .await
        .unwrap();
    write_outputs(&report, &out).unwrap();

    for s in report.stages.iter().map(|s| &s.summary) {
        eprintln!(
            "{}: TTFT p50/p99 {:.2}/{:.2} TPOT p50 {:.2} cached {:.2} rate {:.1}",
            s.name, s.ttft_ms.p50, s.ttft_ms.p99, s.tpot_ms.p50, s.cache_hit_ratio, s.request_rate
        );
    }
    let names: Vec<&str> = report.stages.iter().map(|s| s.summary.name.as_str()).collect();
    assert_eq!(
        names,
        ["poisson", "closed@c1", "closed@c8", "chat", "replay", "bounded"]
    );
    for stage in &report.stages {
        let s = &stage.summary;
        assert!(s.errors.is_empty(), "{}: {:?}", s.name, s.errors);
        if s.name == "bounded" {
            // 0.5 s at 20 req/s: about 10 requests, never the 1000 asked for.
            assert!((8..=12).contains(&s.requests), "bounded stage sent {}", s.requests);
            continue;
        }
        let expected = match s.name.as_str() {
            "poisson" => 120,
            "closed@c1" | "closed@c8" => 16,
            "chat" => 24,
            _ => 10,
        };
        assert_eq!(s.requests, expected, "{}", s.name);
        // The simulated worker's fixed timing, measured back through the router (loopback + router overhead,
        // on a busy 2-core CI box: a few ms of slack).
        assert!(
            s.ttft_ms.p50 >= TTFT_MS && s.ttft_ms.p50 < TTFT_MS + 6.0,
            "{}: TTFT p50 {}",
            s.name,
            s.ttft_ms.p50
        );
        assert!(
            (s.tpot_ms.p50 - ITL_MS).abs() < 1.0,
            "{}: TPOT p50 {}",
            s.name,
            s.tpot_ms.p50
        );
        assert!(s.prompt_tokens.p50 > 0.0);
        assert!(
            (0.0..=1.0).contains(&s.generator_cpu_share),
            "{}",
            s.generator_cpu_share
        );
    }
    let poisson = &report.stages[0].summary;
    assert_eq!(poisson.output_tokens.p50, 8.0);
    // 64 words ≈ 64 tokens (+ BOS): the word list is one token per word.
    assert!(
        (60.0..=72.0).contains(&poisson.prompt_tokens.p50),
        "{}",
        poisson.prompt_tokens.p50
    );
    assert!(poisson.request_rate > 120.0, "{}", poisson.request_rate);
    assert!(poisson.goodput > 0.0 && poisson.slo_attainment > 0.9);
    // Closed loop with 8 clients keeps 8 in flight: higher throughput than with 1.
    assert!(report.stages[2].summary.request_rate > report.stages[1].summary.request_rate * 2.0);
    // Later chat turns and trace lines sharing hash blocks hit the simulated prefix cache (open-loop chat turns
    // may start before the previous turn's blocks are computed, so only some of them hit).
    assert!(
        report.stages[3].summary.cache_hit_ratio > 0.02,
        "{}",
        report.stages[3].summary.cache_hit_ratio
    );
    assert!(
        report.stages[4].summary.cache_hit_ratio > 0.3,
        "{}",
        report.stages[4].summary.cache_hit_ratio
    );
    // Trace replay at 10×: 10 lines 100 ms apart arrive over ~90 ms.
    let replay = &report.stages[4].requests;
    let spread = replay.last().unwrap().sent_s - replay[0].sent_s;
    assert!((0.08..0.2).contains(&spread), "replay spread {spread}");

    for file in ["run.json", "report.md"] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    // Plots need a TrueType font (DejaVu/Liberation or CLEAVE_PLOT_FONT); without one they are skipped.
    if cleave_loadtest::plots_available() {
        for file in [
            "plots/cdf_ttft.svg",
            "plots/cdf_ttft.png",
            "plots/throughput_vs_load.svg",
            "plots/ttft_over_time.png",
        ] {
            assert!(out.join(file).exists(), "{file} missing");
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| closed@c8 |") && md.contains("goodput"));
    let back = read_run(&out).unwrap();
    assert_eq!(back.stages.len(), report.stages.len());
    assert_eq!(back.stages[0].requests.len(), 120);
    let cmp = cleave_loadtest::compare(&report, &back, "a", "b");
    assert!(cmp.contains("| poisson | TTFT p50 ms |") && cmp.contains("+0.0%"));
}

/// The same simulated cluster through the router's OpenAI-compatible HTTP API (server-sent events): every request
/// succeeds and the measured first-token and inter-token times are the simulated workers'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_http_target_is_measured_like_grpc() {
    // The router's HTTP API on a listener of its own, served for the test's lifetime.
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_url = format!("http://{}/v1", http.local_addr().unwrap());
    // Held to the end: dropping it stops the simulated workers and the router.
    let _cluster = support::start(
        support::fixed_timing(Duration::from_millis(10), Duration::from_millis(4)),
        2,
        |router| {
            let (frontend, config) = (router.frontend(), cleave_router::http::HttpConfig::default());
            tokio::spawn(cleave_router::http::serve_http(
                frontend,
                config,
                http,
                std::future::pending(),
            ));
        },
    )
    .await;
    let mut q = cleave_loadtest::QuickRun::new(&http_url);
    q.rate = Some(40.0);
    q.requests = 40;
    q.input_len = 32;
    q.output_len = 8;
    let campaign = cleave_loadtest::quick_campaign(&q).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = run_campaign(&campaign, dir.path(), RunOptions { progress: false })
        .await
        .unwrap();
    let s = &report.stages[0].summary;
    assert_eq!((s.requests, s.succeeded), (40, 40), "{:?}", s.errors);
    assert!((10.0..18.0).contains(&s.ttft_ms.p50), "TTFT p50 {}", s.ttft_ms.p50);
    assert!((3.0..6.0).contains(&s.tpot_ms.p50), "TPOT p50 {}", s.tpot_ms.p50);
    assert_eq!(s.output_tokens.p50, 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_and_bad_campaigns_fail_cleanly() {
    let port = cleave_testkit::free_port();
    let mut c =
        cleave_loadtest::quick_campaign(&cleave_loadtest::QuickRun::new(&format!("grpc://127.0.0.1:{port}"))).unwrap();
    c.targets[0].ready_timeout_s = 0.3;
    let dir = tempfile::tempdir().unwrap();
    let err = run_campaign(&c, dir.path(), RunOptions { progress: false })
        .await
        .unwrap_err();
    assert!(matches!(err, cleave_loadtest::LoadError::Target { .. }), "{err}");
    c.stages[0].workload = "nope".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("stages.quick.workload"), "{err}");
}

#[test]
fn example_campaigns_parse_and_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/campaigns");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let campaign = Campaign::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!campaign.expanded_stages().is_empty());
        n += 1;
    }
    assert!(n >= 2);
}
