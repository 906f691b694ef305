//! `cleave load` against real local clusters on the CPU and the default model: a quick run against `cleave up`
//! (then `cleave load compare`), and a campaign that starts its own router and two workers as processes and
//! SIGKILLs one of them mid-stage, reporting the errors and the recovery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

use cleave_testkit::free_port;

fn cleave(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cleave")).args(args).output().unwrap()
}

fn run_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap()
}

#[test]
fn quick_run_against_cleave_up_and_compare() {
    let port = free_port();
    let _up = cleave_testkit::ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--prefill-workers", "0"])
            .args(["--kv-cache-mib", "64"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quick");
    let target = format!("grpc://127.0.0.1:{port}");
    let run = cleave(&[
        "load",
        "--target",
        &target,
        "--concurrency",
        "2",
        "--requests",
        "6",
        "--input-len",
        "32",
        "--output-len",
        "6",
        "--slo-ttft-ms",
        "5000",
        "--slo-tpot-ms",
        "1000",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let json = run_json(&out);
    let stage = &json["stages"][0];
    assert_eq!(stage["summary"]["requests"], 6);
    assert_eq!(stage["summary"]["succeeded"], 6, "{}", stage["summary"]["errors"]);
    for r in stage["requests"].as_array().unwrap() {
        assert_eq!(r["output_tokens"], 6);
        let prompt = r["prompt_tokens"].as_u64().unwrap();
        assert!((30..=36).contains(&prompt), "32 words gave {prompt} tokens");
        assert!(r["ttft_ms"].as_f64().unwrap() > 0.0 && r["tpot_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(stage["summary"]["goodput"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("| quick |"), "{stdout}");
    assert!(out.join("report.md").exists());
    assert!(!cleave_loadtest::plots_available() || out.join("plots/cdf_ttft.svg").exists());

    let compare = cleave(&[
        "load",
        "compare",
        out.to_str().unwrap(),
        out.join("run.json").to_str().unwrap(),
    ]);
    assert!(compare.status.success());
    assert!(String::from_utf8_lossy(&compare.stdout).contains("| quick | req/s |"));

    let bad = cleave(&[
        "load",
        "--target",
        &target,
        "--rate",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn campaign_starts_its_cluster_and_kills_a_worker() {
    let (a, b, router) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let campaign = dir.path().join("fault.toml");
    std::fs::write(
        &campaign,
        format!(
            r#"
name = "worker crash"
slo = {{ ttft_ms = 5000, tpot_ms = 1000 }}

[[processes]]
name = "worker-a"
command = ["cleave", "worker", "--listen", "127.0.0.1:{a}", "--kv-cache-mib", "64"]

[[processes]]
name = "worker-b"
command = ["cleave", "worker", "--listen", "127.0.0.1:{b}", "--kv-cache-mib", "64"]

[[processes]]
name = "router"
command = ["cleave", "router", "--listen", "127.0.0.1:{router}",
           "--worker", "http://127.0.0.1:{a}", "--worker", "http://127.0.0.1:{b}"]

[[targets]]
name = "local"
url = "grpc://127.0.0.1:{router}"
ready_timeout_s = 60

[[workloads]]
name = "short"
kind = "synthetic"
input = {{ dist = "uniform", min = 16, max = 48 }}
output = {{ dist = "fixed", value = 24 }}

[[stages]]
name = "crash"
workload = "short"
arrival = {{ kind = "concurrency", concurrency = 4 }}
requests = 24
duration_s = 30
timeout_s = 30

[[faults]]
stage = "crash"
at_s = 0.8
process = "worker-b"
action = "kill"
"#
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    // A stage the campaign does not have is refused before anything starts, naming the ones it has.
    let campaign = campaign.to_str().unwrap();
    let refused = cleave(&[
        "load",
        "--campaign",
        campaign,
        "--stages",
        "crash,warmup",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no stage 'warmup' (it has: crash)"), "{stderr}");
    let run = cleave(&[
        "load",
        "--campaign",
        campaign,
        "--stages",
        "crash",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let json = run_json(&out);
    let summary = &json["stages"][0]["summary"];
    let fault = &summary["faults"][0];
    assert_eq!(fault["process"], "worker-b");
    assert_eq!(fault["action"], "kill");
    // Requests running on worker-b fail; the rest, and everything after, go to worker-a.
    let succeeded = summary["succeeded"].as_u64().unwrap();
    assert!(succeeded >= 16, "{summary}");
    assert!(fault["recovery_s"].is_number(), "{fault}");
    let errors: u64 = fault["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(errors + succeeded, 24, "{summary}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Faults") && md.contains("worker-b"), "{md}");
    assert!(out.join("logs/router.log").exists());
}
