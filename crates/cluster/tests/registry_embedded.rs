//! The shared registry behaviour, run against the in-process `EmbeddedRegistry`.

#[path = "common/behaviour.rs"]
mod behaviour;

use std::sync::Arc;

use cleave_cluster::registry::{EmbeddedRegistry, Registry, WatchEvent};

fn registry() -> Arc<dyn Registry> {
    Arc::new(EmbeddedRegistry::new())
}

#[tokio::test]
async fn register_then_revoke() -> anyhow::Result<()> {
    behaviour::register_then_revoke(registry()).await
}

#[tokio::test]
async fn drop_deregisters() -> anyhow::Result<()> {
    behaviour::drop_deregisters(registry()).await
}

#[tokio::test]
async fn abandoned_registration_expires() -> anyhow::Result<()> {
    behaviour::abandoned_registration_expires(registry()).await
}

#[tokio::test]
async fn registration_outlives_ttl() -> anyhow::Result<()> {
    behaviour::registration_outlives_ttl(registry()).await
}

#[tokio::test]
async fn watch_replays_from_revision() -> anyhow::Result<()> {
    behaviour::watch_replays_from_revision(registry()).await
}

#[tokio::test]
async fn view_follows_workers() -> anyhow::Result<()> {
    behaviour::view_follows_workers(registry()).await
}

#[tokio::test]
async fn rejects_bad_keys() -> anyhow::Result<()> {
    behaviour::rejects_bad_keys(registry()).await
}

/// A watch from a revision older than the kept history gets the whole state as a `Resync`, like etcd after a
/// compaction.
#[tokio::test]
async fn watch_from_compacted_history_resyncs() -> anyhow::Result<()> {
    let registry = registry();
    let first = registry.put("/p/key", "0").await?;
    for i in 1..=10_001 {
        registry.put("/p/key", &i.to_string()).await?;
    }
    let mut watch = registry.watch_prefix("/p/", first).await?;
    match behaviour::next_event(&mut watch).await? {
        WatchEvent::Resync { entries, revision } => {
            anyhow::ensure!(entries == [("/p/key".to_owned(), "10001".to_owned())], "{entries:?}");
            anyhow::ensure!(revision == first + 10_001, "resync at {revision}");
        }
        other => anyhow::bail!("expected a resync, got {other:?}"),
    }
    Ok(())
}
