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
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe socket for a free port")?;
    Ok(listener.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            child: None,
            data: tempfile::tempdir().context("creating etcd's data dir")?,
            client_port: free_port()?,
            peer_port: free_port()?,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
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
        let child = Command::new("etcd")
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
        let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
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
