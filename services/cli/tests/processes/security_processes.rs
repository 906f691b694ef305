//! A secured cluster as separate processes: etcd over TLS with client certificates and password authentication,
//! prefill and decode workers and a router speaking mutual TLS to each other (gRPC and the KV transfer), the
//! router's public gRPC and HTTP APIs over TLS behind API keys from a key file. A long prompt goes through the
//! disaggregated path with the golden tokens; missing or wrong keys get UNAUTHENTICATED / 401; a plain-text client
//! gets nothing; a worker whose certificate comes from another CA is refused by its peers; a wrong etcd password
//! stops a worker with an error that says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{greedy, spawn_cleave, stream_ids, until};
use cleave_cluster::tls::ClusterTls;
use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_testkit::{EtcdServer, EtcdTls, LeafFiles, TestCa, free_port, golden_prompt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const API_KEY: &str = "sk-secure-test";
const ETCD_PASSWORD: &str = "etcd-s3cret";

struct Pki {
    dir: tempfile::TempDir,
    cluster: TestCa,
    rogue: TestCa,
    public: TestCa,
    etcd: TestCa,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name| TestCa::new(dir.path(), name).unwrap();
        let (cluster, rogue, public, etcd) = (ca("cluster"), ca("rogue"), ca("public"), ca("etcd"));
        Pki {
            dir,
            cluster,
            rogue,
            public,
            etcd,
        }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// The flags that reach the TLS, password-protected etcd.
fn etcd_flags(pki: &Pki, endpoint: &str, client: &LeafFiles, password_file: &str) -> Vec<String> {
    [
        "--etcd",
        endpoint,
        "--etcd-ca",
        &s(&pki.etcd.ca_path()),
        "--etcd-cert",
        &s(&client.cert),
        "--etcd-key",
        &s(&client.key),
        "--etcd-user",
        "root",
        "--etcd-password-file",
        password_file,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn cluster_flags(ca: &TestCa, member: &LeafFiles) -> Vec<String> {
    [
        "--cluster-ca",
        &s(&ca.ca_path()),
        "--cluster-cert",
        &s(&member.cert),
        "--cluster-key",
        &s(&member.key),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn worker(role: &str, id: &str, port: u16, mut extra: Vec<String>) -> cleave_testkit::ChildGuard {
    let mut args: Vec<String> = [
        "worker",
        "--role",
        role,
        "--id",
        id,
        "--kv-cache-mib",
        "64",
        "--lease-ttl-secs",
        "2",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
    args.append(&mut extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_cleave(&args)
}

/// Workers registered, read with etcd's TLS client certificate and the root password.
async fn registered(etcd: &EtcdServer) -> usize {
    let options = etcd.connect_options().unwrap().with_user("root", ETCD_PASSWORD);
    let Ok(mut client) = etcd_client::Client::connect([etcd.endpoint()], Some(options)).await else {
        return usize::MAX;
    };
    let opts = etcd_client::GetOptions::new().with_prefix();
    client
        .get("/cleave/v1/workers/", Some(opts))
        .await
        .map_or(usize::MAX, |r| r.kvs().len())
}

fn with_key(request: v1::GenerateRequest, key: Option<&str>) -> tonic::Request<v1::GenerateRequest> {
    let mut request = tonic::Request::new(request);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

/// Streams a request to its end: the token ids, or the status that stopped it.
async fn generate(
    client: &GenerationClient<Channel>,
    request: tonic::Request<v1::GenerateRequest>,
) -> Result<Vec<u32>, tonic::Status> {
    let mut stream = client.clone().generate(request).await?.into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await? {
        ids.extend(msg.token_ids);
    }
    Ok(ids)
}

/// A worker client over mutual TLS with `member`'s certificate, trusting `ca`.
async fn worker_client(ca: &TestCa, member: &LeafFiles, port: u16) -> Result<WorkerClient<Channel>, String> {
    let tls = ClusterTls::from_flags(Some(&ca.ca_path()), Some(&member.cert), Some(&member.key), None)
        .unwrap()
        .unwrap();
    let endpoint = tls.endpoint(&format!("http://127.0.0.1:{port}")).unwrap();
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(WorkerClient::new(channel))
}

/// One HTTPS request to the router's HTTP API (trusting the public CA); returns the status code.
async fn https_status(ca: &Path, port: u16, path: &str, key: Option<&str>) -> u16 {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_cluster_serves_over_tls_and_refuses_strangers() {
    let pki = Pki::new();
    let etcd_server = pki.etcd.leaf("etcd-server").unwrap();
    let etcd_client = pki.etcd.leaf("cleave").unwrap();
    let etcd = EtcdServer::start_tls(EtcdTls {
        ca: pki.etcd.ca_path(),
        cert: etcd_server.cert.clone(),
        key: etcd_server.key.clone(),
        client: etcd_client.clone(),
    })
    .await
    .unwrap();
    // etcd authentication on: a root user with a password.
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], Some(etcd.connect_options().unwrap()))
        .await
        .unwrap();
    admin.user_add("root", ETCD_PASSWORD, None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let password_file = pki.file("etcd-password", &format!("{ETCD_PASSWORD}\n"));
    let endpoint = etcd.endpoint();
    let etcd_args = etcd_flags(&pki, &endpoint, &etcd_client, &password_file);

    // A wrong etcd password stops a worker at start, saying why.
    let wrong_password = pki.file("wrong-password", "not-the-password\n");
    let mut args = vec![
        "worker".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
    ];
    args.extend(etcd_flags(&pki, &endpoint, &etcd_client, &wrong_password));
    let refused = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args(&args)
            .stdout(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a wrong etcd password was accepted: {stderr}"
    );
    assert!(stderr.contains("authentication failed"), "unclear error: {stderr}");

    // The cluster: prefill and decode workers and a router, all on mutual TLS with the cluster CA.
    let (prefill_port, decode_port, rogue_port) = (free_port(), free_port(), free_port());
    let member = |name: &str| pki.cluster.leaf(name).unwrap();
    let with = |mut a: Vec<String>, b: Vec<String>| {
        a.extend(b);
        a
    };
    let _prefill = worker(
        "prefill",
        "p1",
        prefill_port,
        with(etcd_args.clone(), cluster_flags(&pki.cluster, &member("p1"))),
    );
    let _decode = worker(
        "decode",
        "d1",
        decode_port,
        with(etcd_args.clone(), cluster_flags(&pki.cluster, &member("d1"))),
    );
    until("both workers registered", async || registered(&etcd).await == 2).await;
    let public = pki.public.leaf("router").unwrap();
    let keys = pki.file("api-keys", &format!("# test keys\nsk-other\n{API_KEY}\n"));
    let (router_port, http_port) = (free_port(), free_port());
    let mut router_args: Vec<String> = [
        "router",
        "--listen",
        &format!("127.0.0.1:{router_port}"),
        "--http-listen",
        &format!("127.0.0.1:{http_port}"),
        "--tls-cert",
        &s(&public.cert),
        "--tls-key",
        &s(&public.key),
        "--api-key-file",
        &keys,
        "--remote-prefill-min-tokens",
        "16",
    ]
    .map(str::to_owned)
    .to_vec();
    router_args.extend(etcd_args.clone());
    router_args.extend(cluster_flags(&pki.cluster, &member("router")));
    let router_args: Vec<&str> = router_args.iter().map(String::as_str).collect();
    let _router = spawn_cleave(&router_args);

    // The public gRPC API over TLS, trusting the public CA.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.public.ca_path()).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{router_port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let mut client = None;
    until("the router over TLS", async || {
        client = channel.clone().connect().await.ok().map(GenerationClient::new);
        client.is_some()
    })
    .await;
    let client = client.unwrap();
    let short = golden_prompt("short");
    let mut first = None;
    until("a first answer", async || {
        first = generate(&client, with_key(greedy(&short.text, 4), Some(API_KEY)))
            .await
            .ok();
        first.is_some()
    })
    .await;
    assert_eq!(first.unwrap(), short.output_ids[..4]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A long prompt: prefilled on the prefill worker, its KV over mutual TLS to the decode worker.
    let long = golden_prompt("long");
    let ids = generate(&client, with_key(greedy(&long.text, 8), Some(API_KEY)))
        .await
        .unwrap();
    assert_eq!(ids, long.output_ids[..8]);
    let tester = member("tester");
    let mut prefill = worker_client(&pki.cluster, &tester, prefill_port).await.unwrap();
    let published = prefill
        .kv_snapshot(v1::KvSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        !published.block_hashes.is_empty(),
        "the prefill worker computed the long prompt"
    );

    // Keys: missing or wrong → UNAUTHENTICATED; a plain-text client gets no answer at all.
    for key in [None, Some("sk-wrong")] {
        let refused = generate(&client, with_key(greedy(&short.text, 2), key))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "key {key:?}: {refused:?}");
    }
    if let Ok(plain) = GenerationClient::connect(format!("http://127.0.0.1:{router_port}")).await {
        assert_eq!(stream_ids(&plain, greedy(&short.text, 2)).await, None);
    }
    // etcd itself answers no client without its TLS client certificate.
    assert_eq!(crate::common::registered(&endpoint).await, usize::MAX);

    // HTTPS: the key guards /v1, the probes stay open.
    let ca = pki.public.ca_path();
    assert_eq!(https_status(&ca, http_port, "/v1/models", Some(API_KEY)).await, 200);
    assert_eq!(https_status(&ca, http_port, "/v1/models", Some("sk-other")).await, 200);
    assert_eq!(https_status(&ca, http_port, "/v1/models", None).await, 401);
    assert_eq!(https_status(&ca, http_port, "/v1/models", Some("sk-wrong")).await, 401);
    assert_eq!(https_status(&ca, http_port, "/health", None).await, 200);

    // A worker whose certificate comes from another CA: it can register (its etcd credentials are right), but
    // the router cannot talk to it and it cannot talk to the cluster's workers.
    let rogue_cert = pki.rogue.leaf("rogue").unwrap();
    let _rogue = worker(
        "decode",
        "rogue",
        rogue_port,
        with(etcd_args.clone(), cluster_flags(&pki.rogue, &rogue_cert)),
    );
    until("the rogue worker registered", async || registered(&etcd).await == 3).await;
    // Even trusting the cluster CA, a client presenting the rogue's certificate gets no answer from a worker.
    let refused = match worker_client(&pki.cluster, &rogue_cert, decode_port).await {
        Err(_) => true,
        Ok(mut c) => c.kv_snapshot(v1::KvSnapshotRequest {}).await.is_err(),
    };
    assert!(
        refused,
        "a worker answered a client whose certificate comes from another CA"
    );
    // Requests keep succeeding on the cluster's decode worker; the rogue computes nothing.
    for _ in 0..4 {
        let ids = generate(&client, with_key(greedy(&short.text, 2), Some(API_KEY)))
            .await
            .unwrap();
        assert_eq!(ids, short.output_ids[..2]);
    }
    let rogue_tester = pki.rogue.leaf("rogue-tester").unwrap();
    let mut rogue = worker_client(&pki.rogue, &rogue_tester, rogue_port).await.unwrap();
    let snapshot = rogue.kv_snapshot(v1::KvSnapshotRequest {}).await.unwrap().into_inner();
    assert!(snapshot.block_hashes.is_empty(), "a request reached the rogue worker");
}
