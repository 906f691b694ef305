//! Behaviour every `Registry` must show, written once and run against etcd and the embedded registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use cleave_cluster::registry::{
    KeyLayout, Registry, RegistryView, WatchEvent, WatchStream, WorkerRecord, WorkerRole, register_worker,
};

/// Bound on any single wait for an event.
pub const EVENT_WITHIN: Duration = Duration::from_secs(5);

pub async fn next_event(stream: &mut WatchStream) -> anyhow::Result<WatchEvent> {
    match tokio::time::timeout(EVENT_WITHIN, stream.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("watch stream ended"),
        Err(_) => bail!("no watch event within {EVENT_WITHIN:?}"),
    }
}

pub fn worker(id: &str) -> WorkerRecord {
    WorkerRecord {
        id: id.to_owned(),
        role: WorkerRole::Decode,
        model: "smollm2-135m".to_owned(),
        grpc_addr: "127.0.0.1:7001".to_owned(),
        kv_addr: "127.0.0.1:7002".to_owned(),
        kv_transports: vec!["tcp".to_owned()],
        block_size: 16,
        capacity_blocks: 1024,
        parallel: Default::default(),
        metrics_addr: String::new(),
        group: String::new(),
    }
}

/// A prefix of its own for each test, so tests sharing a registry never see each other's keys.
pub fn layout(test: &str) -> anyhow::Result<KeyLayout> {
    Ok(KeyLayout::new(&format!("/cleave-test/{test}/"))?)
}

/// register → visible in get_prefix and the watch; revoke → a delete event and gone from get_prefix.
pub async fn register_then_revoke(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let layout = layout("register_then_revoke")?;
    let start = registry.get_prefix(&layout.workers()).await?;
    ensure!(start.entries.is_empty(), "fresh prefix not empty: {:?}", start.entries);
    let mut watch = registry.watch_prefix(&layout.workers(), start.revision + 1).await?;

    let guard = register_worker(&*registry, &layout, &worker("w1"), Duration::from_secs(5)).await?;
    let listing = registry.get_prefix(&layout.workers()).await?;
    ensure!(
        listing.entries.len() == 1 && listing.entries[0].0 == layout.worker("w1"),
        "{listing:?}"
    );
    ensure!(WorkerRecord::from_json(&listing.entries[0].0, &listing.entries[0].1)? == worker("w1"));
    let put_revision = match next_event(&mut watch).await? {
        WatchEvent::Put { key, mod_revision, .. } if key == layout.worker("w1") => mod_revision,
        other => bail!("expected a put of w1, got {other:?}"),
    };
    ensure!(
        put_revision > start.revision,
        "put at {put_revision} not after listing at {}",
        start.revision
    );

    guard.revoke().await;
    match next_event(&mut watch).await? {
        WatchEvent::Delete { key, mod_revision } if key == layout.worker("w1") => {
            ensure!(
                mod_revision > put_revision,
                "delete at {mod_revision} not after put at {put_revision}"
            )
        }
        other => bail!("expected a delete of w1, got {other:?}"),
    }
    ensure!(
        registry.get_prefix(&layout.workers()).await?.entries.is_empty(),
        "w1 still listed after revoke"
    );
    Ok(())
}

/// Dropping a guard deregisters too (its task revokes).
pub async fn drop_deregisters(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let layout = layout("drop_deregisters")?;
    let guard = register_worker(&*registry, &layout, &worker("w1"), Duration::from_secs(5)).await?;
    let mut watch = registry.watch_prefix(&layout.workers(), 0).await?;
    drop(guard);
    match next_event(&mut watch).await? {
        WatchEvent::Delete { key, .. } if key == layout.worker("w1") => Ok(()),
        other => bail!("expected a delete of w1 after drop, got {other:?}"),
    }
}

/// A registration whose keep-alive stops (process death) disappears within about its TTL, and not long before.
pub async fn abandoned_registration_expires(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let layout = layout("abandoned_registration_expires")?;
    let ttl = Duration::from_secs(2);
    let guard = register_worker(&*registry, &layout, &worker("w1"), ttl).await?;
    let mut watch = registry.watch_prefix(&layout.workers(), 0).await?;
    let abandoned_at = Instant::now();
    guard.abandon();
    let event = next_event(&mut watch).await?;
    let after = abandoned_at.elapsed();
    ensure!(
        matches!(&event, WatchEvent::Delete { key, .. } if *key == layout.worker("w1")),
        "got {event:?}"
    );
    ensure!(
        after >= ttl / 2,
        "expired after {after:?}, well before its TTL of {ttl:?}"
    );
    ensure!(
        after <= ttl + Duration::from_secs(2),
        "expired only after {after:?} (TTL {ttl:?})"
    );
    Ok(())
}

/// A live registration outlives several TTLs: the keep-alive works.
pub async fn registration_outlives_ttl(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let layout = layout("registration_outlives_ttl")?;
    let guard = register_worker(&*registry, &layout, &worker("w1"), Duration::from_secs(1)).await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let listing = registry.get_prefix(&layout.workers()).await?;
    ensure!(
        listing.entries.len() == 1,
        "registration lost despite keep-alive: {listing:?}"
    );
    guard.revoke().await;
    Ok(())
}

/// A watch from a past revision replays every change since, in order; one "from now" sees only new ones.
pub async fn watch_replays_from_revision(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let prefix = "/cleave-test/watch_replays/";
    let first = registry.put(&format!("{prefix}a"), "1").await?;
    let second = registry.put(&format!("{prefix}b"), "2").await?;
    let third = registry.delete(&format!("{prefix}a")).await?;
    ensure!(
        first < second && second < third,
        "revisions not increasing: {first} {second} {third}"
    );
    registry.put("/cleave-test/elsewhere", "x").await?;

    let mut replay = registry.watch_prefix(prefix, first).await?;
    let expected = [
        WatchEvent::Put {
            key: format!("{prefix}a"),
            value: "1".to_owned(),
            mod_revision: first,
        },
        WatchEvent::Put {
            key: format!("{prefix}b"),
            value: "2".to_owned(),
            mod_revision: second,
        },
        WatchEvent::Delete {
            key: format!("{prefix}a"),
            mod_revision: third,
        },
    ];
    for want in expected {
        let got = next_event(&mut replay).await?;
        ensure!(got == want, "replay: wanted {want:?}, got {got:?}");
    }

    let mut live = registry.watch_prefix(prefix, 0).await?;
    let fourth = registry.put(&format!("{prefix}c"), "3").await?;
    let got = next_event(&mut live).await?;
    let want = WatchEvent::Put {
        key: format!("{prefix}c"),
        value: "3".to_owned(),
        mod_revision: fourth,
    };
    ensure!(got == want, "live: wanted {want:?}, got {got:?}");
    ensure!(
        next_event(&mut replay).await? == want,
        "replaying watch missed the live put"
    );
    Ok(())
}

/// The view lists existing workers, follows new ones and removals, and ignores records it cannot parse.
pub async fn view_follows_workers(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let layout = layout("view_follows_workers")?;
    let ttl = Duration::from_secs(5);
    let first = register_worker(&*registry, &layout, &worker("w1"), ttl).await?;
    let view = RegistryView::start(registry.clone(), &layout);
    view.wait_for(EVENT_WITHIN, |s| s.synced && s.workers.contains_key("w1"))
        .await
        .context("view never listed w1")?;

    let second = register_worker(&*registry, &layout, &worker("w2"), ttl).await?;
    registry.put(&layout.worker("broken"), "{not json").await?;
    let snapshot = view
        .wait_for(EVENT_WITHIN, |s| s.workers.contains_key("w2"))
        .await
        .context("view never saw w2")?;
    ensure!(
        !snapshot.workers.contains_key("broken"),
        "view serves an unparsable record"
    );

    first.revoke().await;
    let snapshot = view
        .wait_for(EVENT_WITHIN, |s| !s.workers.contains_key("w1"))
        .await
        .context("view kept w1 after its revoke")?;
    ensure!(
        snapshot.workers.keys().collect::<Vec<_>>() == ["w2"],
        "{:?}",
        snapshot.workers.keys()
    );
    second.revoke().await;
    Ok(())
}

/// Bad keys are rejected as invalid arguments, naming the key.
pub async fn rejects_bad_keys(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let error = registry
        .put("no-leading-slash", "x")
        .await
        .err()
        .context("accepted a relative key")?;
    ensure!(
        error.category() == cleave_cluster::registry::ErrorCategory::InvalidArgument,
        "{error}"
    );
    ensure!(
        error.to_string().contains("no-leading-slash"),
        "error does not name the key: {error}"
    );
    let error = registry
        .register("/k", "v", Duration::ZERO)
        .await
        .err()
        .context("accepted a zero TTL")?;
    ensure!(
        error.category() == cleave_cluster::registry::ErrorCategory::InvalidArgument,
        "{error}"
    );
    Ok(())
}
