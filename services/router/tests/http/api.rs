//! The OpenAI-compatible HTTP API over real loopback HTTP, in front of a real CPU worker on the default model:
//! completions and chat (JSON and server-sent events, `n`, `stop`, `seed`, `logprobs`, usage), models, health and
//! readiness, and every error status in OpenAI's shape (400 naming the field, 401, 404, 503).

use crate::common::{MODEL, Options, call, post, start};
use serde_json::{Value, json};

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        "max_tokens": 12,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Chunks of an SSE body (everything before `[DONE]`), asserting the stream was complete.
fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_json_and_streamed_agree_with_the_golden_tokens() {
    let c = start(Options::default()).await;
    let short = cleave_testkit::golden_prompt("short");
    let body = json!({"model": MODEL, "prompt": short.text, "max_tokens": 24, "temperature": 0, "logprobs": 2});
    let reply = post(&c.http, "/v1/completions", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let r = reply.json();
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["model"], MODEL);
    let text = r["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.starts_with(" Paris."), "{text:?}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 24);
    assert_eq!(r["usage"]["prompt_tokens"], short.prompt_ids.len());
    assert_eq!(r["usage"]["total_tokens"], 24 + short.prompt_ids.len());
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 24);
    assert_eq!(lp["tokens"].as_array().unwrap().concat_str(), text);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    // Greedy: the chosen token is the most likely one.
    let best = lp["top_logprobs"][0]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert!((lp["token_logprobs"][0].as_f64().unwrap() - best).abs() < 1e-5);

    let streamed = post(
        &c.http,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": short.text, "max_tokens": 24, "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(streamed.status, 200);
    assert!(
        streamed
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let chunks = chunks(&streamed.events());
    let (usage_chunk, deltas) = chunks.split_last().unwrap();
    let joined: String = deltas
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text);
    assert_eq!(deltas.last().unwrap()["choices"][0]["finish_reason"], "length");
    assert!(deltas.iter().all(|c| c["usage"].is_null()));
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 24);
}

trait ConcatStr {
    fn concat_str(&self) -> String;
}

impl ConcatStr for Vec<Value> {
    fn concat_str(&self) -> String {
        self.iter().map(|v| v.as_str().unwrap()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_json_streamed_n_stop_seed_and_logprobs() {
    let c = start(Options::default()).await;
    let reply = post(&c.http, "/v1/chat/completions", &chat_body(json!({}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let r = reply.json();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["message"]["content"], "The capital of France is Paris.");
    assert_eq!(r["usage"]["prompt_tokens"], 42);

    // Streamed: the role comes first, then the same text; no usage chunk unless asked for.
    let streamed = post(&c.http, "/v1/chat/completions", &chat_body(json!({"stream": true}))).await;
    let chunks = chunks(&streamed.events());
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, "The capital of France is Paris.");
    assert!(chunks.iter().all(|c| !c["choices"].as_array().unwrap().is_empty()));

    // `stop` ends the answer before the stop string; max_completion_tokens is honoured.
    let stopped = post(&c.http, "/v1/chat/completions", &chat_body(json!({"stop": [" Paris"]}))).await;
    let r = stopped.json();
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], "The capital of France is");
    let capped = post(
        &c.http,
        "/v1/chat/completions",
        &chat_body(json!({"max_completion_tokens": 3})),
    )
    .await;
    assert_eq!(capped.json()["usage"]["completion_tokens"], 3);

    // n samples with a seed: two choices, reproducible, usage summed over both.
    let sampled = json!({"n": 2, "seed": 7, "temperature": 1.0, "max_tokens": 8});
    let a = post(&c.http, "/v1/chat/completions", &chat_body(sampled.clone()))
        .await
        .json();
    let b = post(&c.http, "/v1/chat/completions", &chat_body(sampled)).await.json();
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    assert_eq!(a["choices"][1]["index"], 1);
    assert_eq!(a["choices"], b["choices"], "the same seed gives the same samples");
    assert_eq!(a["usage"]["prompt_tokens"], 42);
    let completion: u64 = a["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion > 8 && completion <= 16, "{completion}");

    // logprobs with top_logprobs alternatives.
    let lp = post(
        &c.http,
        "/v1/chat/completions",
        &chat_body(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 4})),
    )
    .await
    .json();
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[0]["token"], "The");
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(content[0]["top_logprobs"][0]["token"], "The");
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
    assert_eq!(content[0]["bytes"], json!(b"The".to_vec()));

    // Content as a list of text parts is the same message.
    let parts = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is the capital of France?"},
        {"type": "text", "text": " Answer in one sentence."}]}]});
    let r = post(&c.http, "/v1/chat/completions", &chat_body(parts)).await.json();
    assert_eq!(r["choices"][0]["message"]["content"], "The capital of France is Paris.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_ready_and_unknown_routes() {
    let c = start(Options::default()).await;
    let models = call(&c.http, "GET", "/v1/models", &[], None).await;
    assert_eq!(models.status, 200);
    let m = models.json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(m["data"][0]["max_model_len"], 8192);
    let one = call(&c.http, "GET", &format!("/v1/models/{MODEL}"), &[], None).await;
    assert_eq!((one.status, one.json()["id"].clone()), (200, json!(MODEL)));
    let missing = call(&c.http, "GET", "/v1/models/gpt-9", &[], None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error()["code"], "model_not_found");

    assert_eq!(call(&c.http, "GET", "/health", &[], None).await.status, 200);
    let ready = call(&c.http, "GET", "/ready", &[], None).await;
    assert_eq!((ready.status, ready.json()["status"].clone()), (200, json!("ready")));

    let nowhere = call(&c.http, "POST", "/v1/embeddings", &[], Some("{}")).await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(nowhere.error()["type"], "invalid_request_error");
    let wrong_method = call(&c.http, "GET", "/v1/completions", &[], None).await;
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.error()["message"].as_str().unwrap().contains("GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_naming_the_field_and_reach_no_worker() {
    let c = start(Options::default()).await;
    let before = c.engines[0].stats().await.unwrap().prefix_cache.queried_blocks;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/chat/completions",
            chat_body(json!({"temperature": -1})),
            "temperature",
        ),
        ("/v1/chat/completions", chat_body(json!({"top_p": 0})), "top_p"),
        (
            "/v1/chat/completions",
            chat_body(json!({"max_completion_tokens": 0})),
            "max_completion_tokens",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"max_tokens": 0})),
            "max_tokens",
        ),
        ("/v1/chat/completions", chat_body(json!({"n": 0})), "n"),
        (
            "/v1/chat/completions",
            chat_body(json!({"logprobs": true, "top_logprobs": 50})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"top_logprobs": 2})),
            "top_logprobs",
        ),
        ("/v1/chat/completions", chat_body(json!({"stop": [""]})), "stop"),
        (
            "/v1/chat/completions",
            chat_body(json!({"temperature": "hot"})),
            "temperature",
        ),
        ("/v1/chat/completions", chat_body(json!({"messages": []})), "messages"),
        ("/v1/chat/completions", json!({"model": MODEL}), "messages"),
        (
            "/v1/chat/completions",
            chat_body(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]})),
            "messages[0].content",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 9000}),
            "max_tokens",
        ),
        ("/v1/completions", json!({"prompt": "", "max_tokens": 4}), "prompt"),
        ("/v1/completions", json!({"prompt": ["a", "b"]}), "prompt"),
        ("/v1/completions", json!({"prompt": "hi", "logprobs": 21}), "logprobs"),
        ("/v1/completions", json!({"prompt": "hi", "echo": true}), "echo"),
        ("/v1/completions", json!({"prompt": "hi", "seed": -3}), "seed"),
        ("/v1/completions", json!({"max_tokens": 4}), "prompt"),
    ];
    for (path, body, field) in cases {
        let reply = post(&c.http, path, &body).await;
        assert_eq!(reply.status, 400, "{field}: {}", reply.body);
        let error = reply.error();
        assert_eq!(error["param"], field, "{}", reply.body);
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].is_string());
    }
    let syntax = call(&c.http, "POST", "/v1/completions", &[], Some("{\"prompt\": ")).await;
    assert_eq!(syntax.status, 400);
    assert_eq!(syntax.error()["type"], "invalid_request_error");

    let unknown = post(&c.http, "/v1/chat/completions", &chat_body(json!({"model": "gpt-9"}))).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error()["code"], "model_not_found");
    assert_eq!(unknown.error()["param"], "model");

    let after = c.engines[0].stats().await.unwrap().prefix_cache.queried_blocks;
    assert_eq!(before, after, "no request reached the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_v1_but_not_the_probes() {
    let c = start(Options {
        http: cleave_router::http::HttpConfig {
            api_keys: cleave_router::auth::ApiKeys::new(["sk-test-123".to_owned()]),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let body = chat_body(json!({"max_tokens": 2})).to_string();
    let none = call(&c.http, "POST", "/v1/chat/completions", &[], Some(&body)).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.error()["code"], "invalid_api_key");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = call(
        &c.http,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer sk-test-124")],
        None,
    )
    .await;
    assert_eq!(wrong.status, 401);
    let right = [("Authorization", "Bearer sk-test-123")];
    assert_eq!(call(&c.http, "GET", "/v1/models", &right, None).await.status, 200);
    let ok = call(&c.http, "POST", "/v1/chat/completions", &right, Some(&body)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(call(&c.http, "GET", "/health", &[], None).await.status, 200);
    assert_eq!(call(&c.http, "GET", "/ready", &[], None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_worker_ready_and_requests_are_503() {
    // Nothing listens on this port: the pool knows the worker but never reaches it.
    let dead = format!("http://127.0.0.1:{}", cleave_testkit::free_port());
    let c = start(Options {
        workers: 0,
        dead_workers: vec![dead],
        ..Options::default()
    })
    .await;
    let ready = call(&c.http, "GET", "/ready", &[], None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.error()["type"], "server_error");
    assert_eq!(call(&c.http, "GET", "/health", &[], None).await.status, 200);
    let reply = post(&c.http, "/v1/chat/completions", &chat_body(json!({}))).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.error()["code"], "service_unavailable");
}
