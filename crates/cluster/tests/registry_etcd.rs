//! The shared registry behaviour against a real etcd, plus what only a real server can show: a watch that
//! resumes across an etcd restart without losing events, a view that keeps serving meanwhile, and a
//! registration that comes back after its lease is lost.

#[path = "common/behaviour.rs"]
mod behaviour;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use cleave_cluster::registry::{
    ErrorCategory, EtcdConfig, EtcdRegistry, KeyLayout, Registry, RegistryView, WatchEvent, register_worker,
};
use cleave_testkit::EtcdServer;

async fn connect(server: &EtcdServer) -> anyhow::Result<EtcdRegistry> {
    let mut config = EtcdConfig::new(vec![server.endpoint()]);
    config.call_timeout = Duration::from_secs(1);
    Ok(EtcdRegistry::connect(config).await?)
}

async fn with_etcd() -> anyhow::Result<(EtcdServer, Arc<dyn Registry>)> {
    // Reconnects and re-registrations log through tracing; show them when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("cleave_cluster=debug")
        .try_init();
    let server = EtcdServer::start().await?;
    let registry = connect(&server).await?;
    Ok((server, Arc::new(registry)))
}

#[tokio::test]
async fn register_then_revoke() -> anyhow::Result<()> {
    let (_server, registry) = with_etcd().await?;
    behaviour::register_then_revoke(registry).await
}

#[tokio::test]
async fn drop_deregisters() -> anyhow::Result<()> {
    let (_server, registry) = with_etcd().await?;
    behaviour::drop_deregisters(registry).await
}

#[tokio::test]
async fn abandoned_registration_expires() -> anyhow::Result<()> {
    let (_server, registry) = with_etcd().await?;
    behaviour::abandoned_registration_expires(registry).await
}

#[tokio::test]
async fn registration_outlives_ttl() -> anyhow::Result<()> {
    let (_server, registry) = with_etcd().await?;
    behaviour::registration_outlives_ttl(registry).await
}

#[tokio::test]
async fn watch_replays_from_revision() -> anyhow::Result<()> {
    let (_server, registry) = with_etcd().await?;
    behaviour::watch_replays_from_revision(registry).await
}

#[tokio::test]
async fn view_follows_workers() -> anyhow::Result<()> {
    let (_server, registry) = with_etcd().await?;
    behaviour::view_follows_workers(registry).await
}

#[tokio::test]
async fn rejects_bad_keys() -> anyhow::Result<()> {
    let (_server, registry) = with_etcd().await?;
    behaviour::rejects_bad_keys(registry).await
}

/// Nothing listens on the port: connect fails fast as `Unavailable`, naming the endpoint.
#[tokio::test]
async fn unreachable_etcd_is_unavailable() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut config = EtcdConfig::new(vec![endpoint.clone()]);
    config.call_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let error = EtcdRegistry::connect(config)
        .await
        .err()
        .context("connected to a closed port")?;
    ensure!(error.category() == ErrorCategory::Unavailable, "{error}");
    ensure!(
        error.to_string().contains(&endpoint),
        "error does not name the endpoint: {error}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?} to fail",
        started.elapsed()
    );
    Ok(())
}

/// etcd stops for ~2.5 s and restarts on the same data: the view keeps serving its last state meanwhile, the
/// watch resumes from its revision (changes made right after the restart arrive), and the registration made
/// before the outage is still kept alive afterwards.
#[tokio::test]
async fn watch_and_registration_survive_etcd_restart() -> anyhow::Result<()> {
    let (mut server, registry) = with_etcd().await?;
    let layout = KeyLayout::default();
    let _a = register_worker(&*registry, &layout, &behaviour::worker("a"), Duration::from_secs(3)).await?;
    registry
        .put(&layout.worker("b"), &behaviour::worker("b").to_json("b")?)
        .await?;
    let view = RegistryView::start(registry.clone(), &layout);
    let before = view
        .wait_for(behaviour::EVENT_WITHIN, |s| s.workers.len() == 2)
        .await
        .context("view never listed a and b")?;

    server.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = view.snapshot();
    ensure!(
        during.workers == before.workers,
        "view lost state while etcd was down: {:?}",
        during.workers.keys()
    );

    server.restart().await?;
    // A second client writes as soon as etcd is back, likely before the view's watch has reconnected.
    let other = connect(&server).await?;
    other
        .put(&layout.worker("c"), &behaviour::worker("c").to_json("c")?)
        .await?;
    other.delete(&layout.worker("b")).await?;
    let after = view
        .wait_for(Duration::from_secs(10), |s| s.workers.keys().eq(["a", "c"]))
        .await
        .with_context(|| {
            format!(
                "view did not catch up after restart: {:?}",
                view.snapshot().workers.keys()
            )
        })?;
    ensure!(
        after.revision > before.revision,
        "revision did not advance: {} -> {}",
        before.revision,
        after.revision
    );

    // Past a full TTL after the outage, the registration is still there: its keep-alive resumed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let listing = other.get_prefix(&layout.workers()).await?;
    let keys: Vec<&str> = listing.entries.iter().map(|(key, _)| key.as_str()).collect();
    ensure!(
        keys == [layout.worker("a"), layout.worker("c")],
        "after restart: {keys:?}"
    );
    Ok(())
}

/// A lease lost behind the guard's back (revoked by an operator, or expired during a long outage) is replaced:
/// the key comes back under a new lease with the same value.
#[tokio::test]
async fn registration_returns_after_its_lease_is_lost() -> anyhow::Result<()> {
    let (server, registry) = with_etcd().await?;
    let layout = KeyLayout::default();
    let guard = register_worker(&*registry, &layout, &behaviour::worker("a"), Duration::from_secs(3)).await?;
    let lost = guard.lease_id();
    let mut watch = registry.watch_prefix(&layout.workers(), 0).await?;

    let mut raw = etcd_client::Client::connect([server.endpoint()], None).await?;
    raw.lease_revoke(lost).await?;
    let deleted = behaviour::next_event(&mut watch).await?;
    ensure!(
        matches!(deleted, WatchEvent::Delete { .. }),
        "expected the delete, got {deleted:?}"
    );
    match behaviour::next_event(&mut watch).await? {
        WatchEvent::Put { key, value, .. } => {
            ensure!(key == layout.worker("a"), "re-registered {key}");
            ensure!(
                value == behaviour::worker("a").to_json(&key)?,
                "re-registered a different value"
            );
        }
        other => anyhow::bail!("expected the re-registration, got {other:?}"),
    }
    // The guard learns its new lease right after the put lands; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while guard.lease_id() == lost && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(guard.lease_id() != lost, "guard still reports the lost lease {lost}");
    Ok(())
}

/// A watch from a revision etcd has compacted away gets a `Resync` with the current state, then live events.
#[tokio::test]
async fn watch_from_compacted_revision_resyncs() -> anyhow::Result<()> {
    let (server, registry) = with_etcd().await?;
    let first = registry.put("/p/key", "0").await?;
    let last = registry.put("/p/key", "1").await?;
    let mut raw = etcd_client::Client::connect([server.endpoint()], None).await?;
    raw.compact(last, None).await?;

    let mut watch = registry.watch_prefix("/p/", first).await?;
    match behaviour::next_event(&mut watch).await? {
        WatchEvent::Resync { entries, revision } => {
            ensure!(entries == [("/p/key".to_owned(), "1".to_owned())], "{entries:?}");
            ensure!(revision >= last, "resync at {revision}, before the last write {last}");
        }
        other => anyhow::bail!("expected a resync, got {other:?}"),
    }
    let next = registry.put("/p/key", "2").await?;
    let got = behaviour::next_event(&mut watch).await?;
    let want = WatchEvent::Put {
        key: "/p/key".to_owned(),
        value: "2".to_owned(),
        mod_revision: next,
    };
    ensure!(got == want, "after resync: wanted {want:?}, got {got:?}");
    Ok(())
}

/// etcd that comes up after its client (pods start in any order): `connect` with a startup wait keeps trying and
/// succeeds once etcd answers; the same closed port with a short wait fails when the wait is over.
#[tokio::test]
async fn connect_waits_for_etcd_to_start() -> anyhow::Result<()> {
    let mut server = EtcdServer::start().await?;
    server.stop();
    let mut config = EtcdConfig::new(vec![server.endpoint()]);
    config.call_timeout = Duration::from_secs(1);
    config.startup_wait = Duration::from_secs(30);
    let connecting = tokio::spawn(EtcdRegistry::connect(config.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(!connecting.is_finished(), "connect gave up while etcd was down");
    server.restart().await?;
    let registry = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .context("connect did not notice etcd coming up")???;
    registry.put("/startup/probe", "up").await?;

    server.stop();
    config.startup_wait = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let error = EtcdRegistry::connect(config)
        .await
        .err()
        .context("connected to a stopped etcd")?;
    ensure!(error.category() == ErrorCategory::Unavailable, "{error}");
    ensure!(
        (Duration::from_secs(2)..Duration::from_secs(6)).contains(&started.elapsed()),
        "gave up after {:?} with a 2 s wait",
        started.elapsed()
    );
    Ok(())
}
