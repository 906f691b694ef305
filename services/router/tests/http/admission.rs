//! Admission control and deadlines through both public APIs, against a real CPU worker: a full router queue is
//! refused at once (HTTP 429 with Retry-After, gRPC RESOURCE_EXHAUSTED with retry-after metadata), and a request
//! whose deadline passes (HTTP `X-Request-Timeout`, gRPC `grpc-timeout`) is answered 504 / DEADLINE_EXCEEDED while
//! its worker aborts it and frees every KV block; a client that hangs up (streamed or not) aborts its request too.

use std::time::{Duration, Instant};

use crate::common::{MODEL, Options, assert_engines_drain, call, post, start};
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_router::AdmissionConfig;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_at_once_over_http_and_grpc() {
    let c = start(Options {
        admission: AdmissionConfig {
            max_queued_requests: 1,
            retry_after: Duration::from_secs(2),
        },
        ..Options::default()
    })
    .await;
    // A long prompt keeps the one queue place busy for seconds of CPU prefill.
    let long = cleave_testkit::golden_prompt("long");
    let http = c.http.clone();
    let first = tokio::spawn(async move {
        post(
            &http,
            "/v1/completions",
            &json!({"prompt": long.text, "max_tokens": 2, "temperature": 0}),
        )
        .await
    });
    let wait = Instant::now() + Duration::from_secs(10);
    while c.frontend.queued_requests() == 0 {
        assert!(Instant::now() < wait, "the first request never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let asked = Instant::now();
    let refused = post(&c.http, "/v1/completions", &json!({"prompt": "hi", "max_tokens": 2})).await;
    let took = asked.elapsed();
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("2"));
    assert_eq!(refused.error()["type"], "rate_limit_error");
    assert_eq!(refused.error()["code"], "rate_limit_exceeded");
    assert!(took < Duration::from_millis(500), "refused after {took:?}");

    let mut grpc = GenerationClient::connect(c.grpc.clone()).await.unwrap();
    let asked = Instant::now();
    let status = grpc
        .generate(v1::GenerateRequest {
            prompt: "hi".into(),
            max_tokens: Some(2),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{}", status.message());
    assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
    assert!(asked.elapsed() < Duration::from_millis(500));

    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(c.frontend.queued_requests(), 0);
    let again = post(&c.http, "/v1/completions", &json!({"prompt": "hi", "max_tokens": 2})).await;
    assert_eq!(again.status, 200, "{}", again.body);
}

fn endless(stream: bool) -> Value {
    json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true, "stream": stream})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_deadline_answers_504_and_frees_the_workers_blocks() {
    let c = start(Options::default()).await;
    let timeout = [("X-Request-Timeout", "0.5")];
    let asked = Instant::now();
    let body = endless(false).to_string();
    let reply = call(&c.http, "POST", "/v1/completions", &timeout, Some(&body)).await;
    let took = asked.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert_eq!(reply.error()["code"], "deadline_exceeded");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_engines_drain(&c.engines, Duration::from_secs(2)).await;

    // Streamed: tokens flow until the deadline (2 s: the machine may be busy), then one error event, no [DONE].
    let body = endless(true).to_string();
    let two_secs = [("X-Request-Timeout", "2")];
    let reply = call(&c.http, "POST", "/v1/completions", &two_secs, Some(&body)).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert!(events.len() > 1, "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "deadline_exceeded", "{last}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_engines_drain(&c.engines, Duration::from_secs(2)).await;

    let bad = call(
        &c.http,
        "POST",
        "/v1/completions",
        &[("X-Request-Timeout", "soon")],
        Some(&body),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error()["param"], "x-request-timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_ends_the_stream_with_deadline_exceeded_and_frees_the_workers_blocks() {
    let c = start(Options::default()).await;
    let mut grpc = GenerationClient::connect(c.grpc.clone()).await.unwrap();
    let mut request = tonic::Request::new(v1::GenerateRequest {
        prompt: "Once upon a time".into(),
        max_tokens: Some(4000),
        ignore_eos: true,
        priority: -1,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(1500));
    let asked = Instant::now();
    let mut stream = grpc.generate(request).await.unwrap().into_inner();
    let mut tokens = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(msg)) => tokens += msg.token_ids.len(),
            Ok(None) => panic!("the stream ended without an error after {tokens} tokens"),
            Err(status) => break status,
        }
    };
    let took = asked.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{}", status.message());
    assert!(tokens > 0, "tokens flowed before the deadline");
    assert!(
        took >= Duration::from_millis(1450) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_engines_drain(&c.engines, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_the_queue_a_request_waits_in() {
    // One sequence runs at a time on the worker, so the next two requests queue behind the first.
    let mut engine = cleave_engine::EngineConfig::default();
    engine.scheduler.max_running = 1;
    let c = start(Options {
        engine,
        ..Options::default()
    })
    .await;
    let grpc = GenerationClient::connect(c.grpc.clone()).await.unwrap();
    let send = |priority: i32, max_tokens: u32| {
        let mut grpc = grpc.clone();
        async move {
            let request = v1::GenerateRequest {
                prompt: "Once upon a time".into(),
                max_tokens: Some(max_tokens),
                ignore_eos: true,
                priority,
                ..Default::default()
            };
            let mut stream = grpc.generate(request).await.unwrap().into_inner();
            let mut first = None;
            while let Some(msg) = stream.message().await.unwrap() {
                if !msg.token_ids.is_empty() {
                    first.get_or_insert_with(Instant::now);
                }
            }
            (first.unwrap(), Instant::now())
        }
    };
    let running = tokio::spawn(send(0, 48));
    // Wait until the first request runs, then queue a low-priority request and, after it, an urgent one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.engines[0].stats().await.unwrap().running == 0 {
        assert!(Instant::now() < deadline, "the first request never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let low = tokio::spawn(send(10, 4));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let urgent = tokio::spawn(send(-10, 4));
    let (running, low, urgent) = (running.await.unwrap(), low.await.unwrap(), urgent.await.unwrap());
    assert!(urgent.0 >= running.0, "nothing overtook the running request");
    assert!(
        urgent.1 <= low.0,
        "the urgent request (sent last) should finish before the low-priority one starts"
    );
    assert_engines_drain(&c.engines, Duration::from_secs(2)).await;
}

/// Sends `body` to `/v1/completions` on a raw connection, waits until the worker runs the request, and drops the
/// connection.
async fn hang_up_once_running(c: &crate::common::Cluster, body: &Value) {
    use tokio::io::AsyncWriteExt;
    let body = body.to_string();
    let addr = &c.http;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let wait = Instant::now() + Duration::from_secs(10);
    while c.engines[0].stats().await.unwrap().running == 0 {
        assert!(Instant::now() < wait, "the request never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_aborts_its_request_on_the_worker() {
    let c = start(Options::default()).await;
    // Streamed: the SSE body is dropped with the connection, and with it the worker stream.
    hang_up_once_running(&c, &endless(true)).await;
    assert_engines_drain(&c.engines, Duration::from_secs(3)).await;
    // Not streamed: hyper drops the handler (and the worker stream it awaits) when the connection closes.
    hang_up_once_running(&c, &endless(false)).await;
    assert_engines_drain(&c.engines, Duration::from_secs(3)).await;
}
