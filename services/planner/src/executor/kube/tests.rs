//! The Kubernetes executor against kube-rs's own test pattern: a `tower-test` mock service behind
//! `kube::Client::new`, answering like the API server (the `autoscaling/v1` Scale subresource of Deployments and
//! StatefulSets, core/v1 Events, `Status` errors) and recording every request, so each test asserts exactly which
//! calls the executor made. No Kubernetes API server can run on our build machines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::decision::{PhaseDecision, PhaseLimits, PlannerConfig, Reason};
use crate::scrape::Scraper;
use crate::{PlacementRecord, Planner};
use cleave_cluster::registry::{EmbeddedRegistry, KeyLayout, Registry};

/// One request the mock API server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

/// Starts the mock API server: `replicas` maps `deployments/NAME` or `statefulsets/NAME` to `spec.replicas`;
/// a workload not in the map answers 404 like the real server.
fn mock_api(replicas: HashMap<String, i32>) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut replicas = replicas;
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_owned();
            log.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: body.clone(),
            });
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let response = match (parts.method.as_str(), segments.as_slice()) {
                // /apis/apps/v1/namespaces/NS/KIND/NAME/scale
                (method, ["apis", "apps", "v1", "namespaces", ns, kind, name, "scale"]) => {
                    let key = format!("{kind}/{name}");
                    match replicas.get(&key).copied() {
                        None => not_found(kind, name),
                        Some(current) => {
                            let n = if method == "PATCH" {
                                let n = body["spec"]["replicas"].as_i64().unwrap() as i32;
                                replicas.insert(key, n);
                                n
                            } else {
                                current
                            };
                            ok(scale(ns, name, n, current))
                        }
                    }
                }
                ("POST", ["api", "v1", "namespaces", _, "events"]) => {
                    let mut event = body.clone();
                    event["metadata"]["name"] = json!("cleave-prefill.17f0c0ffee");
                    event["metadata"]["uid"] = json!("5a1e0000-0000-0000-0000-000000000001");
                    event["metadata"]["resourceVersion"] = json!("4242");
                    status(StatusCode::CREATED, event)
                }
                _ => status(StatusCode::NOT_FOUND, json!({})),
            };
            send.send_response(response);
        }
    });
    (kube::Client::new(service, "default"), seen)
}

/// An `autoscaling/v1` Scale as the API server returns it.
fn scale(namespace: &str, name: &str, spec: i32, observed: i32) -> Value {
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "0b6e2f6a-1111-2222-3333-444455556666",
            "resourceVersion": "1234",
            "creationTimestamp": "2026-11-27T10:00:00Z"
        },
        "spec": { "replicas": spec },
        "status": {
            "replicas": observed,
            "selector": format!("app.kubernetes.io/name=cleave,app.kubernetes.io/component={name}")
        }
    })
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("{kind}.apps \"{name}\" not found"),
            "reason": "NotFound",
            "details": { "name": name, "group": "apps", "kind": kind },
            "code": 404
        }),
    )
}

fn ok(body: Value) -> Response<Body> {
    status(StatusCode::OK, body)
}

fn status(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn executor(client: kube::Client) -> KubeExecutor {
    KubeExecutor::new(
        client,
        "cleave",
        "cleave-prefill".parse().unwrap(),
        "statefulset/cleave-decode".parse().unwrap(),
        "cleave-planner-7d9f-abcde",
    )
}

fn workloads(prefill: i32, decode: i32) -> HashMap<String, i32> {
    HashMap::from([
        ("deployments/cleave-prefill".to_owned(), prefill),
        ("statefulsets/cleave-decode".to_owned(), decode),
    ])
}

#[test]
fn workloads_parse_with_an_optional_kind() {
    let w: Workload = "cleave-prefill".parse().unwrap();
    assert_eq!((w.kind, w.name.as_str()), (WorkloadKind::Deployment, "cleave-prefill"));
    let w: Workload = "statefulset/cleave-decode".parse().unwrap();
    assert_eq!((w.kind, w.name.as_str()), (WorkloadKind::StatefulSet, "cleave-decode"));
    let w: Workload = "deploy/x".parse().unwrap();
    assert_eq!(w.kind, WorkloadKind::Deployment);
    assert!("daemonset/x".parse::<Workload>().is_err());
    assert!("deployment/".parse::<Workload>().is_err());
}

#[tokio::test]
async fn replicas_are_read_from_the_scale_subresource_of_each_workload() {
    let (client, seen) = mock_api(workloads(2, 3));
    let mut exec = executor(client);
    let replicas = exec.replicas().await.unwrap();
    assert_eq!(replicas, Replicas { prefill: 2, decode: 3 });
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<(&str, &str)> = seen.iter().map(|s| (s.method.as_str(), s.uri.as_str())).collect();
    assert_eq!(
        calls,
        [
            (
                "GET",
                "/apis/apps/v1/namespaces/cleave/deployments/cleave-prefill/scale"
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/cleave/statefulsets/cleave-decode/scale"
            ),
        ]
    );
}

#[tokio::test]
async fn scaling_patches_only_spec_replicas_with_a_merge_patch() {
    let (client, seen) = mock_api(workloads(1, 1));
    let mut exec = executor(client);
    exec.scale(Phase::Prefill, 3).await.unwrap();
    exec.scale(Phase::Decode, 2).await.unwrap();
    assert_eq!(exec.replicas().await.unwrap(), Replicas { prefill: 3, decode: 2 });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(
        seen[0].uri,
        "/apis/apps/v1/namespaces/cleave/deployments/cleave-prefill/scale?&fieldManager=cleave-planner"
    );
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    assert_eq!(seen[0].body, json!({ "spec": { "replicas": 3 } }));
    assert_eq!(
        seen[1].uri,
        "/apis/apps/v1/namespaces/cleave/statefulsets/cleave-decode/scale?&fieldManager=cleave-planner"
    );
    assert_eq!(seen[1].body, json!({ "spec": { "replicas": 2 } }));
}

#[tokio::test]
async fn a_decision_becomes_one_event_per_changed_phase_and_a_placement_record() {
    let (client, seen) = mock_api(workloads(2, 2));
    let registry = Arc::new(EmbeddedRegistry::new());
    let layout = KeyLayout::default();
    let mut exec = executor(client).with_placement(PlacementWriter::new(registry.clone(), layout.clone(), "smollm2"));
    let decision = Decision {
        prefill: PhaseDecision {
            current: 2,
            target: 3,
            reason: Reason::TtftOverSlo,
        },
        decode: PhaseDecision {
            current: 2,
            target: 2,
            reason: Reason::Steady,
        },
    };
    exec.record(&decision, "TTFT p90 2400ms").await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let event = &seen[0];
    assert_eq!(
        (event.method.as_str(), event.uri.as_str()),
        ("POST", "/api/v1/namespaces/cleave/events?")
    );
    let body = &event.body;
    assert_eq!(body["metadata"]["generateName"], "cleave-prefill.");
    assert_eq!(body["metadata"]["namespace"], "cleave");
    assert_eq!(
        body["involvedObject"],
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": "cleave-prefill", "namespace": "cleave" })
    );
    assert_eq!(body["reason"], "ScaledUp");
    assert_eq!(body["type"], "Normal");
    assert_eq!(
        body["message"],
        "prefill replicas 2 -> 3 (ttft_over_slo); TTFT p90 2400ms"
    );
    assert_eq!(body["reportingComponent"], "cleave-planner");
    assert_eq!(body["reportingInstance"], "cleave-planner-7d9f-abcde");
    assert!(body["lastTimestamp"].as_str().unwrap().ends_with('Z'));

    let listing = registry
        .get_prefix(&format!("{}placement/", layout.prefix()))
        .await
        .unwrap();
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].0, "/cleave/v1/placement/smollm2/replicas");
    let record: PlacementRecord = serde_json::from_str(&listing.entries[0].1).unwrap();
    assert_eq!((record.prefill_replicas, record.decode_replicas), (3, 2));
    assert_eq!(record.prefill_reason, "ttft_over_slo");
}

#[tokio::test]
async fn a_missing_workload_is_an_error_that_names_it() {
    let (client, _) = mock_api(HashMap::from([("statefulsets/cleave-decode".to_owned(), 1)]));
    let err = executor(client).replicas().await.unwrap_err();
    let text = format!("{err}");
    assert!(
        text.contains("Deployment cleave-prefill") && text.contains("namespace cleave"),
        "{text}"
    );
    match err {
        PlannerError::Kube {
            source: kube::Error::Api(status),
            ..
        } => assert_eq!(status.code, 404),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_planner_round_with_the_kube_executor_raises_a_workload_to_its_minimum() {
    // The prefill Deployment was scaled to 0 by hand; the planner's minimum is 1.
    let (client, seen) = mock_api(workloads(0, 2));
    let limits = |min, max| PhaseLimits {
        min,
        max,
        gpus_per_replica: 1,
        tokens_per_s: None,
    };
    let config = PlannerConfig::new(1.0, 0.05, limits(1, 4), limits(1, 4));
    let scraper = Scraper::new(&[], None, Duration::from_secs(1));
    let mut planner = Planner::new(
        config,
        Duration::from_secs(1),
        Duration::from_secs(10),
        scraper,
        executor(client),
    )
    .unwrap();
    let (decision, _) = planner.tick().await.unwrap();
    assert_eq!(decision.prefill.target, 1);
    assert_eq!(decision.prefill.reason, Reason::BelowMin);
    assert_eq!(decision.decode.target, 2);
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(calls, ["GET", "GET", "PATCH", "POST"]);
    assert_eq!(seen[2].body, json!({ "spec": { "replicas": 1 } }));
    assert_eq!(seen[3].body["involvedObject"]["name"], "cleave-prefill");
    let metrics = planner.metrics().render();
    assert!(
        metrics.contains("cleave_planner_desired_replicas{phase=\"prefill\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cleave_planner_decisions_total{phase=\"prefill\",reason=\"below_min\"} 1"));
}
