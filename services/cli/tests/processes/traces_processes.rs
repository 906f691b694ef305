//! OpenTelemetry traces across processes: a router, a decode worker and a prefill worker export spans over
//! OTLP/gRPC to a receiver this test serves on loopback. One request whose prefill runs on the prefill worker is
//! one trace, continuing the client's W3C context, with every span linked to the right parent: router → decode
//! worker → remote prefill → prefill worker → KV transfer, and the decode phase under the decode worker's span.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::common::{registered, spawn_cleave, spawn_cleave_with_env, stream_ids, until};
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_testkit::{ChildGuard, EtcdServer, free_port, golden_prompt};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<HashMap<String, Vec<Received>>>>);

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                    .collect();
                spans.entry(span.name.clone()).or_default().push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn spawn_traced(args: &[&str], collector: &str) -> ChildGuard {
    spawn_cleave_with_env(
        args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
}

/// The spans of the last request prefilled remotely, each found through its parent link: router.generate,
/// worker.generate, worker.remote_prefill, worker.prefill, kv_transfer.send, worker.decode.
fn linked(spans: &HashMap<String, Vec<Received>>) -> Option<[Received; 6]> {
    let prefill = spans.get("worker.prefill")?.last()?;
    let child_of =
        |name: &str, parent: &Received| spans.get(name)?.iter().find(|s| s.parent == parent.span_id).cloned();
    let parent_of = |name: &str, child: &Received| spans.get(name)?.iter().find(|s| s.span_id == child.parent).cloned();
    let remote = parent_of("worker.remote_prefill", prefill)?;
    let decode_request = parent_of("worker.generate", &remote)?;
    let routed = parent_of("router.generate", &decode_request)?;
    let transfer = child_of("kv_transfer.send", prefill)?;
    let decoding = child_of("worker.decode", &decode_request)?;
    Some([routed, decode_request, remote, prefill.clone(), transfer, decoding])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_router_decode_and_prefill_workers() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let etcd = EtcdServer::start().await.unwrap();
    let endpoint = etcd.endpoint();

    let (prefill_port, decode_port, router_port) = (free_port(), free_port(), free_port());
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let (prefill_addr, decode_addr) = (listen(prefill_port), listen(decode_port));
    let worker = |role: &str, addr: &str| {
        let args = [
            "worker",
            "--role",
            role,
            "--listen",
            addr,
            "--kv-cache-mib",
            "64",
            "--etcd",
            &endpoint,
        ];
        spawn_traced(&args, &collector)
    };
    let _prefill = worker("prefill", &prefill_addr);
    let _decode = worker("decode", &decode_addr);
    let (prefill_url, decode_url) = (format!("http://{prefill_addr}"), format!("http://{decode_addr}"));
    until("both workers registered", async || registered(&endpoint).await == 2).await;
    let router_listen = listen(router_port);
    let _router = spawn_traced(
        &[
            "router",
            "--listen",
            &router_listen,
            "--etcd",
            &endpoint,
            "--remote-prefill-min-tokens",
            "16",
        ],
        &collector,
    );
    // An untraced process beside them exports nothing and changes nothing.
    let _untraced = spawn_cleave(&["model", "list"]);

    let mut client = None;
    until("the router", async || {
        client = GenerationClient::connect(format!("http://{router_listen}")).await.ok();
        client.is_some()
    })
    .await;
    let client = client.unwrap();
    // A short warm-up request without trace context (prefilled on the decode worker).
    let short = golden_prompt("short");
    let mut warm = None;
    until("a first answer", async || {
        warm = stream_ids(
            &client,
            v1::GenerateRequest {
                prompt: short.text.clone(),
                max_tokens: Some(2),
                temperature: Some(0.0),
                ignore_eos: true,
                ..Default::default()
            },
        )
        .await;
        warm.is_some()
    })
    .await;
    assert_eq!(warm.unwrap(), short.output_ids[..2]);
    let long = golden_prompt("long");
    let request = |max_tokens: u32| {
        let mut request = tonic::Request::new(v1::GenerateRequest {
            prompt: long.text.clone(),
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        });
        let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        request
    };
    // The workers need a moment to load and to report their load before the router sends prefill away.
    let mut ids = None;
    until("an answer", async || {
        let Ok(response) = client.clone().generate(request(8)).await else {
            return false;
        };
        let mut stream = response.into_inner();
        let mut got = Vec::new();
        while let Ok(Some(msg)) = stream.message().await {
            got.extend(msg.token_ids);
        }
        ids = Some(got);
        receiver.0.lock().unwrap().contains_key("worker.prefill")
    })
    .await;
    assert_eq!(ids.unwrap(), long.output_ids[..8]);

    // Spans end (and are exported) as each process finishes its part: wait for the whole chain.
    let mut chain = None;
    until("every span of the request exported", async || {
        chain = linked(&receiver.0.lock().unwrap());
        chain.is_some()
    })
    .await;
    let spans = receiver.0.lock().unwrap().clone();
    let [routed, decode_request, remote, prefill, transfer, decoding] = chain.unwrap();
    let transfer = &transfer;
    let decoding = &decoding;
    for span in [&routed, &decode_request, &remote, &prefill, transfer, decoding] {
        assert_eq!(span.trace_id, TRACE_ID, "one trace, the client's: {span:?}");
    }
    assert_eq!(routed.parent, CLIENT_SPAN, "the router continues the client's context");
    assert_eq!(routed.service, "cleave-router");
    assert_eq!(decode_request.service, "cleave-worker");
    assert_eq!(prefill.service, "cleave-worker");

    let prompt_tokens = routed.attributes["prompt_tokens"].parse::<usize>().unwrap();
    assert_eq!(prompt_tokens, long.prompt_ids.len());
    assert_eq!(routed.attributes["generated_tokens"], "8");
    assert_eq!(routed.attributes["decode_worker"], decode_url);
    assert_eq!(routed.attributes["prefill_worker"], prefill_url);
    assert_eq!(routed.attributes["routing_reason"], "remote");
    assert!(routed.attributes.contains_key("routing_cost"));
    assert!(routed.attributes.contains_key("cached_tokens"));
    assert_eq!(routed.attributes["outcome"], "ok");
    assert_eq!(decode_request.attributes["generated_tokens"], "8");
    assert_eq!(decoding.attributes["generated_tokens"], "8");
    assert_eq!(remote.attributes["outcome"], "ok");
    assert!(transfer.attributes["bytes"].parse::<u64>().unwrap() > 0);
    // Only cleave's spans are exported, not the transport's.
    assert!(
        spans
            .keys()
            .all(|name| !name.starts_with("h2") && !name.starts_with("hyper"))
    );
}
