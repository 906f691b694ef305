//! `cleave worker` as a real process: it serves the Worker gRPC API on a socket and exits cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_testkit::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process_serves_generate_and_stops_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args([
            "worker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kv-cache-mib",
            "64",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        if let Ok(c) = WorkerClient::connect(format!("http://127.0.0.1:{port}")).await {
            break c;
        }
        assert!(Instant::now() < deadline, "worker did not come up");
        assert!(child.try_wait().unwrap().is_none(), "worker exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let request = v1::WorkerGenerateRequest {
        request_id: "cli-1".into(),
        prompt_token_ids: vec![504, 3575, 282, 4649, 314],
        sampling: Some(v1::GenerateRequest {
            max_tokens: Some(4),
            temperature: Some(0.0),
            ..Default::default()
        }),
        remote_prefill: None,
    };
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(msg.token_ids);
    }
    // transformers' greedy continuation of "The capital of France is": " Paris.\n\n"
    assert_eq!(ids, vec![7042, 30, 198, 198]);

    // SIGTERM: the process exits by itself, successfully.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "worker ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_aborts_at_the_deadline() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args([
            "worker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kv-cache-mib",
            "128",
            "--drain-secs",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        if let Ok(c) = WorkerClient::connect(format!("http://127.0.0.1:{port}")).await {
            break c;
        }
        assert!(Instant::now() < deadline, "worker did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let request = v1::WorkerGenerateRequest {
        request_id: "long".into(),
        prompt_token_ids: vec![504, 3575, 282, 4649, 314],
        sampling: Some(v1::GenerateRequest {
            max_tokens: Some(2000),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        }),
        remote_prefill: None,
    };
    let mut stream = client.generate(request).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut after = 0;
    while let Ok(Some(msg)) = stream.message().await {
        after += msg.token_ids.len();
    }
    assert!(
        after > 5,
        "the in-flight request kept running while draining ({after} tokens)"
    );
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "worker did not stop after its drain deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "stopped before the drain deadline"
    );
}
