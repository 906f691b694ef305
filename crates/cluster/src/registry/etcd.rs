//! `Registry` over a real etcd cluster (etcd-client): unary calls with a bounded timeout, leases kept alive by
//! the shared loop in `lease`, and watches that reconnect with backoff and resume from their last revision.
//!
//! Invariant: no call waits on etcd longer than `EtcdConfig::call_timeout` (the client's own channel waits
//! forever when every endpoint is down); a watch never skips a revision: after a reconnect it restarts at the
//! revision after the last one it delivered, and after a compaction it re-lists and emits a `Resync`.
//! Cost: one etcd round trip per call; one task and one gRPC stream per watch.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::mpsc;

use super::error::RegistryError;
use super::lease::{self, LeaseBackend, LeaseGuard, LeaseState};
use super::watch::{Backoff, WatchEvent, WatchStream};
use super::{PrefixListing, Registry, check_key};

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The longest any single call may take before it fails as `Unavailable`.
    pub call_timeout: Duration,
    /// Client TLS (CA, and a client certificate where etcd requires one); endpoints are then `https://`.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// User name and password, where etcd has authentication enabled.
    pub user: Option<(String, String)>,
    /// How long `connect` keeps retrying while etcd cannot be reached (it may still be starting, as when a
    /// cluster's pods come up in any order); zero fails at the first attempt. Refusals (bad credentials, a
    /// rejected certificate) fail at once either way.
    pub startup_wait: Duration,
}

impl EtcdConfig {
    /// A configuration for `endpoints` with a 3 s call timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            call_timeout: Duration::from_secs(3),
            tls: None,
            user: None,
            startup_wait: Duration::ZERO,
        }
    }
}

/// A registry backed by etcd. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    endpoints: Arc<str>,
    call_timeout: Duration,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.endpoints)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// Connects and checks that etcd answers (each attempt bounded by the call timeout), so a wrong address fails
    /// at start; while etcd is unreachable, attempts repeat with backoff for up to `startup_wait`.
    pub async fn connect(config: EtcdConfig) -> Result<Self, RegistryError> {
        if config.endpoints.is_empty() {
            return Err(RegistryError::NoEndpoints);
        }
        let give_up = tokio::time::Instant::now() + config.startup_wait;
        let mut backoff = Backoff::new();
        let mut warned = false;
        loop {
            match Self::connect_once(config.clone()).await {
                Err(error) if error.is_retryable() && tokio::time::Instant::now() < give_up => {
                    if !warned {
                        tracing::warn!(%error, wait = ?config.startup_wait, "etcd is unreachable; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(backoff.next_delay().min(give_up - tokio::time::Instant::now())).await;
                }
                done => return done,
            }
        }
    }

    async fn connect_once(config: EtcdConfig) -> Result<Self, RegistryError> {
        let endpoints: Arc<str> = config.endpoints.join(",").into();
        let options = ConnectOptions::new()
            .with_connect_timeout(config.call_timeout)
            .with_keep_alive(Duration::from_secs(2), config.call_timeout)
            .with_keep_alive_while_idle(true);
        let options = match config.tls {
            Some(tls) => options.with_tls(tls),
            None => options,
        };
        let options = match config.user {
            Some((name, password)) => options.with_user(name, password),
            None => options,
        };
        let connect = Client::connect(config.endpoints.clone(), Some(options));
        let client = bounded(&endpoints, "connect", "", config.call_timeout, connect).await?;
        let registry = Self {
            client,
            endpoints,
            call_timeout: config.call_timeout,
        };
        let mut client = registry.client.clone();
        registry.call("status", "", client.status()).await?;
        Ok(registry)
    }

    /// The endpoints this registry talks to, comma-separated (for logs and errors).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        key: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, RegistryError> {
        bounded(&self.endpoints, operation, key, self.call_timeout, call).await
    }

    async fn list(&self, prefix: &str) -> Result<PrefixListing, RegistryError> {
        let mut client = self.client.clone();
        let response = self
            .call(
                "get_prefix",
                prefix,
                client.get(prefix, Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = response.header().map_or(0, |header| header.revision());
        let mut entries = Vec::with_capacity(response.kvs().len());
        for kv in response.kvs() {
            let key = kv
                .key_str()
                .map_err(|_| RegistryError::NotUtf8 { key: prefix.to_owned() })?;
            let value = kv
                .value_str()
                .map_err(|_| RegistryError::NotUtf8 { key: key.to_owned() })?;
            entries.push((key.to_owned(), value.to_owned()));
        }
        Ok(PrefixListing { entries, revision })
    }
}

/// Runs `call` under `timeout`, mapping both failure kinds to errors naming the endpoint and key.
async fn bounded<T>(
    endpoints: &str,
    operation: &'static str,
    key: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RegistryError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(RegistryError::from_etcd(endpoints, operation, key, source)),
        Err(_) => Err(RegistryError::Timeout {
            endpoints: endpoints.to_owned(),
            operation,
            key: key.to_owned(),
            timeout,
        }),
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn put(&self, key: &str, value: &str) -> Result<i64, RegistryError> {
        check_key(key)?;
        let mut client = self.client.clone();
        let response = self.call("put", key, client.put(key, value, None)).await?;
        Ok(response.header().map_or(0, |header| header.revision()))
    }

    async fn delete(&self, key: &str) -> Result<i64, RegistryError> {
        check_key(key)?;
        let mut client = self.client.clone();
        let response = self.call("delete", key, client.delete(key, None)).await?;
        Ok(response.header().map_or(0, |header| header.revision()))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<PrefixListing, RegistryError> {
        check_key(prefix)?;
        self.list(prefix).await
    }

    async fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, RegistryError> {
        check_key(prefix)?;
        let (events, receiver) = mpsc::unbounded_channel();
        let watcher = PrefixWatcher {
            registry: self.clone(),
            prefix: prefix.to_owned(),
            next_revision: from_revision.max(0),
            events,
        };
        tokio::spawn(watcher.run());
        Ok(WatchStream::new(receiver))
    }

    async fn register(&self, key: &str, value: &str, ttl: Duration) -> Result<LeaseGuard, RegistryError> {
        check_key(key)?;
        lease::register(Arc::new(self.clone()), key, value, ttl).await
    }
}

#[async_trait]
impl LeaseBackend for EtcdRegistry {
    async fn grant_and_put(&self, key: &str, value: &str, ttl_secs: i64) -> Result<i64, RegistryError> {
        let mut client = self.client.clone();
        let lease = self
            .call("lease grant", key, client.lease_grant(ttl_secs, None))
            .await?
            .id();
        let options = PutOptions::new().with_lease(lease);
        if let Err(error) = self.call("put", key, client.put(key, value, Some(options))).await {
            // An orphan lease would only expire by itself; revoke it now so it holds nothing longer than needed.
            let _ = self.call("lease revoke", key, client.lease_revoke(lease)).await;
            return Err(error);
        }
        Ok(lease)
    }

    async fn keep_alive(&self, key: &str, lease: i64) -> Result<LeaseState, RegistryError> {
        let mut client = self.client.clone();
        match self.call("lease keep-alive", key, client.lease_keep_alive(lease)).await {
            Ok(_) => Ok(LeaseState::Alive),
            // etcd answers a keep-alive of an unknown lease with TTL 0, which the client reports this way.
            Err(RegistryError::Rejected {
                source: etcd_client::Error::LeaseKeepAliveError(_),
                ..
            }) => Ok(LeaseState::Expired),
            Err(error) => Err(error),
        }
    }

    async fn revoke(&self, key: &str, lease: i64) -> Result<(), RegistryError> {
        let mut client = self.client.clone();
        self.call("lease revoke", key, client.lease_revoke(lease))
            .await
            .map(|_| ())
    }
}

/// The task behind one etcd watch.
#[derive(Debug)]
struct PrefixWatcher {
    registry: EtcdRegistry,
    prefix: String,
    /// The first revision not yet delivered (0 until the first watch is created "from now").
    next_revision: i64,
    events: mpsc::UnboundedSender<WatchEvent>,
}

/// Why one watch stream ended.
enum StreamEnd {
    /// The consumer dropped the `WatchStream`.
    Closed,
    /// The connection failed or etcd cancelled the watch: reconnect after a backoff.
    Lost,
    /// The history we needed is compacted: re-list, resync, then reconnect.
    Compacted,
}

impl PrefixWatcher {
    async fn run(mut self) {
        let mut backoff = Backoff::new();
        // A second handle on the channel, so the consumer going away is noticed even while `follow` borrows self.
        let consumer = self.events.clone();
        loop {
            let end = tokio::select! {
                end = self.follow(&mut backoff) => end,
                () = consumer.closed() => StreamEnd::Closed,
            };
            match end {
                StreamEnd::Closed => return,
                StreamEnd::Compacted => {
                    if !self.resync(&mut backoff).await {
                        return;
                    }
                }
                StreamEnd::Lost => {
                    let delay = backoff.next_delay();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.events.closed() => return,
                    }
                }
            }
        }
    }

    /// Opens one watch stream and forwards its events until it ends.
    async fn follow(&mut self, backoff: &mut Backoff) -> StreamEnd {
        let mut options = WatchOptions::new().with_prefix();
        if self.next_revision > 0 {
            options = options.with_start_revision(self.next_revision);
        }
        let mut client = self.registry.client.clone();
        let opened = self
            .registry
            .call("watch", &self.prefix, client.watch(self.prefix.as_str(), Some(options)));
        let mut stream = match opened.await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(prefix = %self.prefix, %error, "cannot open watch; retrying");
                return StreamEnd::Lost;
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, endpoints = %self.registry.endpoints, "watch stream closed by etcd; resuming");
                    return StreamEnd::Lost;
                }
                Err(error) => {
                    tracing::warn!(prefix = %self.prefix, endpoints = %self.registry.endpoints, %error, "watch connection lost; resuming from revision {}", self.next_revision);
                    return StreamEnd::Lost;
                }
            };
            if response.compact_revision() > 0 {
                tracing::warn!(prefix = %self.prefix, compacted = response.compact_revision(), wanted = self.next_revision, "watch history compacted; re-listing");
                return StreamEnd::Compacted;
            }
            if response.canceled() {
                tracing::warn!(prefix = %self.prefix, reason = response.cancel_reason(), "watch cancelled by etcd; resuming");
                return StreamEnd::Lost;
            }
            if response.created() {
                backoff.reset();
                // A watch "from now" must remember where now was, or a reconnect would skip what came between.
                if self.next_revision == 0 {
                    self.next_revision = response.header().map_or(0, |header| header.revision()) + 1;
                }
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else {
                    tracing::warn!(prefix = %self.prefix, "skipping an event whose key is not UTF-8");
                    continue;
                };
                let mod_revision = kv.mod_revision();
                let delivered = match event.event_type() {
                    EventType::Put => match kv.value_str() {
                        Ok(value) => WatchEvent::Put {
                            key: key.to_owned(),
                            value: value.to_owned(),
                            mod_revision,
                        },
                        Err(_) => {
                            tracing::warn!(key, "skipping a put whose value is not UTF-8");
                            continue;
                        }
                    },
                    EventType::Delete => WatchEvent::Delete {
                        key: key.to_owned(),
                        mod_revision,
                    },
                };
                self.next_revision = mod_revision + 1;
                if self.events.send(delivered).is_err() {
                    return StreamEnd::Closed;
                }
            }
        }
    }

    /// Re-lists the prefix until it succeeds and emits a `Resync`; false when the consumer went away.
    async fn resync(&mut self, backoff: &mut Backoff) -> bool {
        loop {
            match self.registry.list(&self.prefix).await {
                Ok(listing) => {
                    self.next_revision = listing.revision + 1;
                    let event = WatchEvent::Resync {
                        entries: listing.entries,
                        revision: listing.revision,
                    };
                    return self.events.send(event).is_ok();
                }
                Err(error) => {
                    tracing::warn!(prefix = %self.prefix, %error, "re-list after compaction failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = self.events.closed() => return false,
                    }
                }
            }
        }
    }
}
