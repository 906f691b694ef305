#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Group rendezvous over the in-process registry and over a real etcd: complete groups, the unique id, members
//! that never arrive, mismatched world sizes and duplicate ranks; then a TCP group formed from the result.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_cluster::registry::{EmbeddedRegistry, EtcdConfig, EtcdRegistry, Registry};
use cleave_comm::{Communicator, GroupSpec, Membership, Rendezvous, RendezvousError, TcpConfig, form_tcp_group};
use cleave_testkit::EtcdServer;

const PREFIX: &str = "/cleave-test/";

async fn join_all(
    registry: Arc<dyn Registry>,
    group: &str,
    world: usize,
    ranks: &[usize],
    timeout: Duration,
) -> Vec<Result<Membership, RendezvousError>> {
    let tasks: Vec<_> = ranks
        .iter()
        .map(|&rank| {
            let registry = registry.clone();
            let mut spec = GroupSpec::new(group, world, rank).with_prefix(PREFIX);
            if rank == 0 {
                spec = spec.with_unique_id((0..128u8).collect());
            }
            tokio::spawn(async move {
                // Staggered arrivals: the watch, not the first listing, completes the late ones.
                tokio::time::sleep(Duration::from_millis(50 * rank as u64)).await;
                Rendezvous::join(registry.as_ref(), &spec, &format!("127.0.0.1:{}", 9000 + rank), timeout).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

async fn complete_group(registry: Arc<dyn Registry>) {
    let members = join_all(registry, "complete", 3, &[2, 0, 1], Duration::from_secs(10)).await;
    let expected: Vec<String> = (0..3).map(|r| format!("127.0.0.1:{}", 9000 + r)).collect();
    for member in members {
        let member = member.unwrap();
        assert_eq!(member.peers, expected);
        assert_eq!(member.unique_id, Some((0..128u8).collect()));
        member.leave().await;
    }
}

async fn missing_member(registry: Arc<dyn Registry>) {
    let start = Instant::now();
    let members = join_all(registry, "missing", 4, &[0, 2, 3], Duration::from_millis(800)).await;
    assert!(start.elapsed() < Duration::from_secs(3));
    for (i, member) in members.into_iter().enumerate() {
        match member.unwrap_err() {
            // Rank 0 gives up first, seeing everyone but rank 1; the later ones may also see rank 0 gone.
            RendezvousError::Timeout { missing, present, .. } if i == 0 => {
                assert_eq!(missing, vec![1]);
                assert_eq!(present, vec![0, 2, 3]);
            }
            RendezvousError::Timeout { missing, .. } => assert!(missing.contains(&1), "{missing:?}"),
            other => panic!("expected a timeout naming rank 1, got {other}"),
        }
    }
}

async fn mismatched_world_size(registry: Arc<dyn Registry>) {
    let spec = GroupSpec::new("mismatch", 2, 0).with_prefix(PREFIX);
    let first = tokio::spawn({
        let registry = registry.clone();
        async move { Rendezvous::join(registry.as_ref(), &spec, "127.0.0.1:1", Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spec = GroupSpec::new("mismatch", 3, 1).with_prefix(PREFIX);
    let error = Rendezvous::join(registry.as_ref(), &spec, "127.0.0.1:2", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RendezvousError::WorldSizeMismatch {
                rank: 0,
                theirs: 2,
                ours: 3,
                ..
            }
        ),
        "{error}"
    );
    // The first member sees the second's record (it registered nothing, so it times out or sees the mismatch).
    first.abort();
}

async fn duplicate_rank(registry: Arc<dyn Registry>) {
    let spec = GroupSpec::new("duplicate", 2, 0).with_prefix(PREFIX);
    let holder = tokio::spawn({
        let (registry, spec) = (registry.clone(), spec.clone());
        async move { Rendezvous::join(registry.as_ref(), &spec, "127.0.0.1:1", Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let error = Rendezvous::join(registry.as_ref(), &spec, "127.0.0.1:2", Duration::from_millis(600))
        .await
        .unwrap_err();
    match error {
        RendezvousError::DuplicateRank { rank: 0, holder, .. } => assert_eq!(holder, "127.0.0.1:1"),
        other => panic!("expected a duplicate rank error, got {other}"),
    }
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_over_the_embedded_registry() {
    let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::new());
    complete_group(registry.clone()).await;
    missing_member(registry.clone()).await;
    mismatched_world_size(registry.clone()).await;
    duplicate_rank(registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_over_etcd_then_a_tcp_group() {
    let etcd = EtcdServer::start().await.unwrap();
    let registry: Arc<dyn Registry> = Arc::new(
        EtcdRegistry::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .unwrap(),
    );
    complete_group(registry.clone()).await;
    missing_member(registry.clone()).await;
    mismatched_world_size(registry.clone()).await;
    duplicate_rank(registry.clone()).await;

    // A real group: each rank binds, joins, then forms the TCP mesh from the peers the rendezvous returned.
    let world = 3;
    let tasks: Vec<_> = (0..world)
        .map(|rank| {
            let registry = registry.clone();
            tokio::spawn(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                let spec = GroupSpec::new("tcp", world, rank).with_prefix(PREFIX);
                let (comm, member) = form_tcp_group(
                    registry.as_ref(),
                    &spec,
                    listener,
                    &addr,
                    Duration::from_secs(10),
                    TcpConfig::default(),
                )
                .await
                .unwrap();
                let sum = tokio::task::spawn_blocking(move || {
                    let mut data = vec![rank as f32 + 1.0; 1000];
                    comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
                    data[999]
                })
                .await
                .unwrap();
                member.leave().await;
                sum
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 6.0);
    }
}
