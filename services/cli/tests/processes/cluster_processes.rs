//! A router and two workers as separate `cleave` processes on loopback: requests flow through the router, and a
//! worker killed with SIGKILL ends its in-flight request with UNAVAILABLE while new requests succeed elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::greedy;
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_testkit::{ChildGuard, free_port};

fn spawn(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A greedy 4-token answer to "The capital of France is" through the router; `None` while it cannot answer.
async fn answer(client: &GenerationClient<tonic::transport::Channel>) -> Option<Vec<u32>> {
    let mut client = client.clone();
    let mut stream = client
        .generate(greedy("The capital of France is", 4))
        .await
        .ok()?
        .into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.ok()? {
        ids.extend(msg.token_ids);
    }
    Some(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_and_workers_as_processes_survive_a_killed_worker() {
    let ports = [free_port(), free_port()];
    let mut workers: Vec<Option<ChildGuard>> = ports
        .iter()
        .map(|p| {
            Some(spawn(&[
                "worker",
                "--listen",
                &format!("127.0.0.1:{p}"),
                "--kv-cache-mib",
                "128",
            ]))
        })
        .collect();
    let router_port = free_port();
    let worker_urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let mut router_args = vec![
        "router".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{router_port}"),
    ];
    for url in &worker_urls {
        router_args.extend(["--worker".to_string(), url.clone()]);
    }
    let _router = spawn(&router_args.iter().map(String::as_str).collect::<Vec<_>>());

    let mut client = until("router", || async {
        GenerationClient::connect(format!("http://127.0.0.1:{router_port}"))
            .await
            .ok()
    })
    .await;
    // Both workers must be up and known to the router before the first request.
    for url in &worker_urls {
        until("worker", || async { WorkerClient::connect(url.clone()).await.ok() }).await;
    }
    let first = until("a first answer", || answer(&client)).await;
    assert_eq!(first, vec![7042, 30, 198, 198]);

    // A long generation; find the worker running it, then SIGKILL that worker.
    let mut long = client
        .generate(greedy("Count from one to one thousand:", 2000))
        .await
        .unwrap()
        .into_inner();
    long.message().await.unwrap().unwrap();
    let mut busy = None;
    for (i, url) in worker_urls.iter().enumerate() {
        let mut w = WorkerClient::connect(url.clone()).await.unwrap();
        let mut load = w
            .subscribe_load(v1::SubscribeLoadRequest { interval_ms: 10 })
            .await
            .unwrap()
            .into_inner();
        if load.message().await.unwrap().unwrap().running > 0 {
            busy = Some(i);
        }
    }
    let busy = busy.expect("one worker runs the long request");
    drop(workers[busy].take());
    let err = loop {
        match long.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended cleanly although its worker was killed"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // New requests go to the surviving worker.
    let again = until("an answer after the kill", || answer(&client)).await;
    assert_eq!(again, vec![7042, 30, 198, 198]);
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleave_up_streams_the_sample_and_serves_requests_until_sigterm() {
    use std::io::Read;
    let port = free_port();
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--prompt",
                "The capital of France is",
            ])
            .args([
                "--max-tokens",
                "4",
                "--kv-cache-mib",
                "64",
                "--remote-prefill-min-tokens",
                "64",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 256];
        while !text.contains('\n') {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    let mut client = until("cleave up's router", || async {
        GenerationClient::connect(format!("http://127.0.0.1:{port}")).await.ok()
    })
    .await;
    let sample = reader.join().unwrap();
    assert!(sample.starts_with("The capital of France is Paris."), "{sample:?}");
    let mut stream = client
        .generate(greedy("The capital of France is", 2))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(msg.token_ids);
    }
    assert_eq!(ids, vec![7042, 30]);

    // A long prompt takes the disaggregated path (prefill worker → KV transfer → decode worker): same tokens.
    let long = cleave_testkit::golden_prompt("long");
    let mut stream = client.generate(greedy(&long.text, 4)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        ids.extend(msg.token_ids);
    }
    assert_eq!(ids, long.output_ids[..4]);

    child.sigterm();
    let exit = child.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
}
