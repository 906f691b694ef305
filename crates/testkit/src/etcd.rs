//! A real etcd for tests: started from the `etcd` binary on PATH (Debian's `etcd-server`) on free loopback ports
//! with a temporary data dir, stopped and restarted on the same ports and data, killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long etcd may take to answer after a (re)start before the test fails.
const HEALTHY_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
}

/// etcd serving its clients over TLS and requiring client certificates from `ca`.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate (from `ca`) the server's own health probe presents.
    pub client: crate::LeafFiles,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe socket for a free port")?;
    Ok(listener.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts etcd serving clients over TLS (client certificates required) and waits until it answers.
    pub async fn start_tls(tls: EtcdTls) -> anyhow::Result<Self> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdTls>) -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            data: tempfile::tempdir().context("creating etcd's data dir")?,
            client_port: free_port()?,
            peer_port: free_port()?,
            tls,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Client options that reach this etcd (with its TLS client certificate when it serves TLS).
    pub fn connect_options(&self) -> anyhow::Result<etcd_client::ConnectOptions> {
        let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
        let Some(tls) = &self.tls else { return Ok(options) };
        let ca = std::fs::read(&tls.ca).context("reading etcd's CA")?;
        let cert = std::fs::read(&tls.client.cert).context("reading the client certificate")?;
        let key = std::fs::read(&tls.client.key).context("reading the client key")?;
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(cert, key));
        Ok(options.with_tls(config))
    }

    /// Kills etcd (SIGKILL: a crash, not a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().join("etcd.log")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                bail!("`etcd` is not on PATH: install etcd-server (apt-get install -y etcd-server etcd-client)")
            }
            Err(error) => return Err(error).context("starting etcd"),
        };
        self.child = Some(child);
        self.wait_healthy().await
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let options = self.connect_options()?;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                bail!("etcd exited with {status} before becoming healthy; log:\n{log}");
            }
            let probe = async {
                let mut client = etcd_client::Client::connect([self.endpoint()], Some(options.clone())).await?;
                client.status().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd at {} not healthy within {HEALTHY_WITHIN:?}", self.endpoint());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
