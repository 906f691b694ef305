//! `cleave worker` as a real process: it serves the Worker gRPC API on a socket and exits cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_testkit::{ChildGuard, free_port};

/// Starts `cleave worker` on a free port with `extra` flags and waits until it answers.
async fn start_worker(extra: &[&str]) -> (ChildGuard, WorkerClient<tonic::transport::Channel>) {
    let port = free_port();
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args(["worker", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = WorkerClient::connect(format!("http://127.0.0.1:{port}")).await {
            return (child, client);
        }
        assert!(Instant::now() < deadline, "worker did not come up");
        assert!(child.running(), "worker exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn greedy(max_tokens: u32, ignore_eos: bool) -> v1::WorkerGenerateRequest {
    v1::WorkerGenerateRequest {
        request_id: "cli-1".into(),
        prompt_token_ids: vec![504, 3575, 282, 4649, 314],
        sampling: Some(v1::GenerateRequest {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ignore_eos,
            ..Default::default()
        }),
        remote_prefill: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process_serves_generate_and_stops_on_sigterm() {
    let (mut child, mut client) = start_worker(&["--kv-cache-mib", "64"]).await;
    let mut stream = client.generate(greedy(4, false)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(msg.token_ids);
    }
    // transformers' greedy continuation of "The capital of France is": " Paris.\n\n"
    assert_eq!(ids, vec![7042, 30, 198, 198]);

    // SIGTERM: the process exits by itself, successfully.
    child.sigterm();
    let exit = child.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "worker exit status {exit:?}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args(["worker", "--listen", &addr.to_string(), "--kv-cache-mib", "16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unknown_kv_transport_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args(["worker", "--kv-transports", "nccl,ib"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--kv-transports") && stderr.contains("'ib'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_aborts_at_the_deadline() {
    let (mut child, mut client) = start_worker(&["--kv-cache-mib", "128", "--drain-secs", "2"]).await;
    let mut stream = client.generate(greedy(2000, true)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    let signalled = Instant::now();
    child.sigterm();
    let mut after = 0;
    while let Ok(Some(msg)) = stream.message().await {
        after += msg.token_ids.len();
    }
    assert!(
        after > 5,
        "the in-flight request kept running while draining ({after} tokens)"
    );
    let exit = child.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "stopped before the drain deadline"
    );
}
