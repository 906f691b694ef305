//! Group rendezvous through the control-plane registry: every rank of a parallel group announces its address
//! under `<prefix>groups/<group>/members/<rank>` (leased), rank 0 also publishes the NCCL unique id (hex) under
//! `<prefix>groups/<group>/unique_id`, and each rank waits (watching) until all `world_size` ranks are present.
//!
//! Invariant: `join` returns only with a complete, consistent group — every rank present exactly once, all
//! agreeing on the world size, rank 0's unique id (if it published one) visible — or fails with an error that
//! names the missing ranks, the rank whose world size differs, or the rank already held. Keys are leased, so a
//! member that dies leaves the group's keys within its TTL; a rank still held by a previous incarnation is waited
//! for until that lease runs out (a restart within the TTL), and refused as a duplicate if it never does.
//! Rank 0 writes the unique id before its member key, so whoever sees rank 0 sees the id.
//! Cost: two registry calls to announce, one listing, and one watch until the group is complete.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cleave_cluster::registry::{DEFAULT_PREFIX, LeaseGuard, Registry, RegistryError, WatchEvent};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Which group to join, as which rank.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The registry key prefix (ends with `/`), normally [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// The group's name; one formation of a group should use a fresh name (e.g. with an epoch suffix).
    pub group: String,
    pub world_size: usize,
    pub rank: usize,
    /// The TTL of the member keys' leases: how long a dead member's keys outlive it.
    pub lease_ttl: Duration,
    /// The NCCL unique id rank 0 publishes (ignored on other ranks).
    pub unique_id: Option<Vec<u8>>,
    /// Where this rank runs and what part of the model it holds, for operators and routers reading `groups/`
    /// (e.g. `stage 1/2, tensor 2/3 on cuda:2 at node-b`); empty when not given.
    pub placement: String,
}

impl GroupSpec {
    pub fn new(group: impl Into<String>, world_size: usize, rank: usize) -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            group: group.into(),
            world_size,
            rank,
            lease_ttl: Duration::from_secs(10),
            unique_id: None,
            placement: String::new(),
        }
    }

    pub fn with_placement(mut self, placement: impl Into<String>) -> Self {
        self.placement = placement.into();
        self
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn with_unique_id(mut self, id: Vec<u8>) -> Self {
        self.unique_id = Some(id);
        self
    }

    fn group_prefix(&self) -> String {
        format!("{}groups/{}/", self.prefix, self.group)
    }

    fn member_key(&self, rank: usize) -> String {
        format!("{}members/{rank}", self.group_prefix())
    }

    fn unique_id_key(&self) -> String {
        format!("{}unique_id", self.group_prefix())
    }
}

/// One member's record, as JSON under its member key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MemberRecord {
    rank: usize,
    world_size: usize,
    addr: String,
    /// Distinguishes this join from any other process claiming the same rank.
    instance: String,
    /// Whether rank 0 published a unique id (only rank 0 sets it).
    #[serde(default)]
    unique_id: bool,
    /// What this rank holds and where it runs (see `GroupSpec::placement`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    placement: String,
}

/// A complete group, as seen by one member. Keep it alive as long as the group is: dropping it revokes this
/// member's keys.
#[derive(Debug)]
pub struct Membership {
    pub rank: usize,
    pub world_size: usize,
    /// Every rank's address, indexed by rank.
    pub peers: Vec<String>,
    /// Rank 0's NCCL unique id, if it published one.
    pub unique_id: Option<Vec<u8>>,
    leases: Vec<LeaseGuard>,
}

impl Membership {
    /// Leaves the group: revokes this member's keys and waits until the registry confirmed it.
    pub async fn leave(self) {
        for lease in self.leases {
            lease.revoke().await;
        }
    }
}

/// A rendezvous failure.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("invalid rendezvous for group `{group}`: {reason}")]
    InvalidSpec { group: String, reason: String },
    #[error("rendezvous of group `{group}`: registry failed: {source}")]
    Registry {
        group: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error(
        "rendezvous of group `{group}` timed out after {timeout:?}: ranks {missing:?} of {world_size} never arrived \
         (present: {present:?})"
    )]
    Timeout {
        group: String,
        world_size: usize,
        missing: Vec<usize>,
        present: Vec<usize>,
        timeout: Duration,
    },
    #[error("rendezvous of group `{group}`: rank {rank} joined with world size {theirs}, this rank has {ours}")]
    WorldSizeMismatch {
        group: String,
        rank: usize,
        theirs: usize,
        ours: usize,
    },
    #[error("rendezvous of group `{group}`: rank {rank} is already held by a member at {holder}")]
    DuplicateRank { group: String, rank: usize, holder: String },
    #[error("rendezvous of group `{group}`: bad record at `{key}`: {reason}")]
    BadRecord { group: String, key: String, reason: String },
    #[error("rendezvous of group `{group}`: the registry's watch ended")]
    WatchEnded { group: String },
}

/// Forms groups through a [`Registry`]; see the module docs.
#[derive(Debug)]
pub struct Rendezvous;

/// What the group prefix holds, parsed: members by rank, and the unique id if present.
#[derive(Debug, Default)]
struct GroupState {
    members: BTreeMap<usize, MemberRecord>,
    unique_id: Option<String>,
}

impl Rendezvous {
    /// Joins `spec`'s group as `spec.rank`, announcing `my_addr`; waits until every rank is present or
    /// `timeout` passes. See the module docs for what is checked.
    pub async fn join(
        registry: &dyn Registry,
        spec: &GroupSpec,
        my_addr: &str,
        timeout: Duration,
    ) -> Result<Membership, RendezvousError> {
        validate(spec)?;
        let deadline = Instant::now() + timeout;
        let instance = instance_id();
        let registry_err = |source| RendezvousError::Registry {
            group: spec.group.clone(),
            source: Box::new(source),
        };

        // A rank still held (a live duplicate, or a previous incarnation whose lease has not expired) is waited out.
        let held = wait_until(registry, spec, deadline, |state| {
            check_world_sizes(spec, state)?;
            Ok(!state.members.contains_key(&spec.rank))
        })
        .await?;
        if let Err(state) = held {
            let holder = state
                .members
                .get(&spec.rank)
                .map(|m| m.addr.clone())
                .unwrap_or_default();
            return Err(RendezvousError::DuplicateRank {
                group: spec.group.clone(),
                rank: spec.rank,
                holder,
            });
        }

        let mut leases = Vec::new();
        let publishes_id = spec.rank == 0 && spec.unique_id.is_some();
        if let (true, Some(id)) = (publishes_id, &spec.unique_id) {
            let lease = registry
                .register(&spec.unique_id_key(), &hex_encode(id), spec.lease_ttl)
                .await
                .map_err(registry_err)?;
            leases.push(lease);
        }
        let record = MemberRecord {
            rank: spec.rank,
            world_size: spec.world_size,
            addr: my_addr.to_owned(),
            instance: instance.clone(),
            unique_id: publishes_id,
            placement: spec.placement.clone(),
        };
        let value = serde_json::to_string(&record).map_err(|e| RendezvousError::InvalidSpec {
            group: spec.group.clone(),
            reason: e.to_string(),
        })?;
        let lease = registry
            .register(&spec.member_key(spec.rank), &value, spec.lease_ttl)
            .await
            .map_err(registry_err)?;
        leases.push(lease);

        let complete = wait_until(registry, spec, deadline, |state| {
            check_world_sizes(spec, state)?;
            if let Some(mine) = state.members.get(&spec.rank)
                && mine.instance != instance
            {
                return Err(RendezvousError::DuplicateRank {
                    group: spec.group.clone(),
                    rank: spec.rank,
                    holder: mine.addr.clone(),
                });
            }
            let all = (0..spec.world_size).all(|r| state.members.contains_key(&r));
            let id_ready = state
                .members
                .get(&0)
                .is_none_or(|m| !m.unique_id || state.unique_id.is_some());
            Ok(all && id_ready)
        })
        .await?;
        let state = complete.map_err(|state| {
            let present: Vec<usize> = state.members.keys().copied().collect();
            RendezvousError::Timeout {
                group: spec.group.clone(),
                world_size: spec.world_size,
                missing: (0..spec.world_size)
                    .filter(|r| !state.members.contains_key(r))
                    .collect(),
                present,
                timeout,
            }
        })?;
        let unique_id = match &state.unique_id {
            Some(hex) => Some(hex_decode(hex).ok_or_else(|| RendezvousError::BadRecord {
                group: spec.group.clone(),
                key: spec.unique_id_key(),
                reason: "the unique id is not hex".to_owned(),
            })?),
            None => None,
        };
        let peers = state.members.into_values().map(|m| m.addr).collect();
        tracing::info!(group = %spec.group, rank = spec.rank, world_size = spec.world_size, "group complete");
        Ok(Membership {
            rank: spec.rank,
            world_size: spec.world_size,
            peers,
            unique_id,
            leases,
        })
    }
}

fn validate(spec: &GroupSpec) -> Result<(), RendezvousError> {
    let reason = if spec.world_size == 0 {
        Some("world size must be at least 1".to_owned())
    } else if spec.rank >= spec.world_size {
        Some(format!("rank {} is outside a group of {}", spec.rank, spec.world_size))
    } else if spec.group.is_empty() || spec.group.contains('/') {
        Some("the group name must be non-empty and contain no `/`".to_owned())
    } else if !spec.prefix.starts_with('/') || !spec.prefix.ends_with('/') {
        Some(format!("the prefix `{}` must start and end with `/`", spec.prefix))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RendezvousError::InvalidSpec {
            group: spec.group.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_world_sizes(spec: &GroupSpec, state: &GroupState) -> Result<(), RendezvousError> {
    match state.members.values().find(|m| m.world_size != spec.world_size) {
        Some(m) => Err(RendezvousError::WorldSizeMismatch {
            group: spec.group.clone(),
            rank: m.rank,
            theirs: m.world_size,
            ours: spec.world_size,
        }),
        None => Ok(()),
    }
}

/// Lists the group and watches it until `done` says so (`Ok(Ok(state))`), fails, or the deadline passes
/// (`Ok(Err(state))` with the last state seen).
async fn wait_until(
    registry: &dyn Registry,
    spec: &GroupSpec,
    deadline: Instant,
    mut done: impl FnMut(&GroupState) -> Result<bool, RendezvousError>,
) -> Result<Result<GroupState, GroupState>, RendezvousError> {
    let prefix = spec.group_prefix();
    let registry_err = |source| RendezvousError::Registry {
        group: spec.group.clone(),
        source: Box::new(source),
    };
    let listing = registry.get_prefix(&prefix).await.map_err(registry_err)?;
    let mut entries: BTreeMap<String, String> = listing.entries.into_iter().collect();
    let mut state = parse_state(spec, &entries)?;
    if done(&state)? {
        return Ok(Ok(state));
    }
    let mut watch = registry
        .watch_prefix(&prefix, listing.revision + 1)
        .await
        .map_err(registry_err)?;
    loop {
        let event = match tokio::time::timeout_at(deadline, watch.recv()).await {
            Err(_) => return Ok(Err(state)),
            Ok(None) => {
                return Err(RendezvousError::WatchEnded {
                    group: spec.group.clone(),
                });
            }
            Ok(Some(event)) => event,
        };
        match event {
            WatchEvent::Put { key, value, .. } => {
                entries.insert(key, value);
            }
            WatchEvent::Delete { key, .. } => {
                entries.remove(&key);
            }
            WatchEvent::Resync { entries: all, .. } => entries = all.into_iter().collect(),
        }
        state = parse_state(spec, &entries)?;
        if done(&state)? {
            return Ok(Ok(state));
        }
    }
}

fn parse_state(spec: &GroupSpec, entries: &BTreeMap<String, String>) -> Result<GroupState, RendezvousError> {
    let members_prefix = format!("{}members/", spec.group_prefix());
    let mut state = GroupState::default();
    for (key, value) in entries {
        if *key == spec.unique_id_key() {
            state.unique_id = Some(value.clone());
            continue;
        }
        let Some(rank_text) = key.strip_prefix(&members_prefix) else {
            continue;
        };
        let bad = |reason: String| RendezvousError::BadRecord {
            group: spec.group.clone(),
            key: key.clone(),
            reason,
        };
        let rank: usize = rank_text
            .parse()
            .map_err(|_| bad("the key does not end in a rank".to_owned()))?;
        let record: MemberRecord = serde_json::from_str(value).map_err(|e| bad(e.to_string()))?;
        if record.rank != rank {
            return Err(bad(format!("the record says rank {}", record.rank)));
        }
        if rank >= spec.world_size && record.world_size == spec.world_size {
            return Err(bad(format!("rank {rank} is outside a group of {}", spec.world_size)));
        }
        state.members.insert(rank, record);
    }
    Ok(state)
}

/// A process-unique id for one join: pid, time and a counter.
fn instance_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
