//! Shared by the HTTP API tests: an in-process cluster (real CPU workers on the default model, a router serving
//! gRPC and HTTP on loopback) and a minimal HTTP/1.1 client over a real socket, with server-sent-event parsing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_engine::{Engine, EngineConfig, ModelFiles, load_model};
use cleave_router::http::HttpConfig;
use cleave_router::policy::PolicyConfig;
use cleave_router::{AdmissionConfig, Frontend, RouterModel, RouterService, WorkerEndpoint, WorkerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const MODEL: &str = "smollm2-135m";

pub struct Cluster {
    /// `host:port` of the HTTP API.
    pub http: String,
    /// `http://host:port` of the gRPC API.
    pub grpc: String,
    pub engines: Vec<Arc<Engine>>,
    pub frontend: Arc<Frontend>,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

pub struct Options {
    pub workers: usize,
    pub admission: AdmissionConfig,
    pub policy: PolicyConfig,
    pub http: HttpConfig,
    /// Worker URLs to add that nothing serves (to test an unreachable cluster).
    pub dead_workers: Vec<String>,
    /// Each worker's engine.
    pub engine: EngineConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            admission: AdmissionConfig::default(),
            policy: PolicyConfig::default(),
            http: HttpConfig::default(),
            dead_workers: Vec::new(),
            engine: EngineConfig::default(),
        }
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

fn stop_pair() -> (
    tokio::sync::oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

pub async fn start(options: Options) -> Cluster {
    let mut engines = Vec::new();
    let mut urls = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..options.workers {
        let (model, tokenizer) = load_model(ModelFiles::Gguf(&cleave_testkit::default_model_path())).unwrap();
        let engine = Arc::new(Engine::start(model, Arc::new(tokenizer), options.engine.clone()).unwrap());
        let (listener, addr) = listen().await;
        let (tx, stop) = stop_pair();
        tokio::spawn(cleave_worker::serve(
            cleave_worker::WorkerService::new(engine.clone(), 16),
            listener,
            stop,
        ));
        engines.push(engine);
        urls.push(format!("http://{addr}"));
        stops.push(tx);
    }
    let model = Arc::new(RouterModel::from_gguf(MODEL, &cleave_testkit::default_model_path()).unwrap());
    let endpoints: Vec<WorkerEndpoint> = urls
        .iter()
        .chain(&options.dead_workers)
        .map(WorkerEndpoint::both)
        .collect();
    let pool = Arc::new(WorkerPool::start(&endpoints, options.policy));
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.reachable() < urls.len() {
        assert!(Instant::now() < deadline, "workers never became reachable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frontend = Arc::new(Frontend::new(model, pool, "r0".into()).with_admission(options.admission));
    let (grpc_listener, grpc) = listen().await;
    let (tx, stop) = stop_pair();
    tokio::spawn(cleave_router::serve(
        RouterService::from_frontend(frontend.clone()),
        grpc_listener,
        stop,
    ));
    stops.push(tx);
    let (http_listener, http) = listen().await;
    let (tx, stop) = stop_pair();
    tokio::spawn(cleave_router::http::serve_http(
        frontend.clone(),
        options.http,
        http_listener,
        stop,
    ));
    stops.push(tx);
    Cluster {
        http,
        grpc: format!("http://{grpc}"),
        engines,
        frontend,
        _stops: stops,
    }
}

/// Waits until every engine has no running or waiting sequence and all its KV blocks are free again.
pub async fn assert_engines_drain(engines: &[Arc<Engine>], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut idle = true;
        for e in engines {
            let s = e.stats().await.unwrap();
            idle &= s.running == 0 && s.waiting == 0 && s.free_blocks == s.total_blocks;
        }
        if idle {
            return;
        }
        assert!(Instant::now() < deadline, "the workers still hold the request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of a server-sent-event body, in order.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .flat_map(|event| event.lines())
            .filter_map(|line| line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")))
            .map(str::to_string)
            .collect()
    }

    /// The error object of an OpenAI-shaped error body.
    pub fn error(&self) -> serde_json::Value {
        self.json()["error"].clone()
    }
}

/// One HTTP/1.1 request over a fresh loopback connection (`Connection: close`), read to the end.
pub async fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    if let Some(body) = body {
        stream.write_all(body.as_bytes()).await.unwrap();
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_reply(&raw)
}

pub async fn post(addr: &str, path: &str, body: &serde_json::Value) -> Reply {
    call(addr, "POST", path, &[], Some(&body.to_string())).await
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}
