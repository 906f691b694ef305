//! Forming a TCP group in one call: announce this rank's listener through the rendezvous, then connect the mesh
//! to the peers it returned — what a CPU worker of a parallel group does at start.
//!
//! Invariant: the listener is bound before the rendezvous, so the address announced is already accepting when
//! any peer dials it; the blocking mesh formation runs on tokio's blocking pool, never on a runtime worker.
//! Cost: one rendezvous (see `rendezvous`) and one mesh formation (see `tcp::mesh`).

use std::net::TcpListener;
use std::time::Duration;

use cleave_cluster::registry::Registry;

use crate::error::CommError;
use crate::rendezvous::{GroupSpec, Membership, Rendezvous, RendezvousError};
use crate::tcp::{TcpCommunicator, TcpConfig};

/// Why a group could not be formed.
#[derive(Debug, thiserror::Error)]
pub enum FormGroupError {
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("group `{group}`: {reason}")]
    Local { group: String, reason: String },
}

/// Joins `spec`'s group announcing `advertise` (the `host:port` peers dial, where `listener` accepts), waits
/// up to `rendezvous_timeout` for every rank, then forms the TCP mesh. Keep the returned `Membership` as long
/// as the communicator: dropping it removes this rank's keys.
pub async fn form_tcp_group(
    registry: &dyn Registry,
    spec: &GroupSpec,
    listener: TcpListener,
    advertise: &str,
    rendezvous_timeout: Duration,
    config: TcpConfig,
) -> Result<(TcpCommunicator, Membership), FormGroupError> {
    let membership = Rendezvous::join(registry, spec, advertise, rendezvous_timeout).await?;
    let (rank, peers, group) = (spec.rank, membership.peers.clone(), spec.group.clone());
    let comm = tokio::task::spawn_blocking(move || TcpCommunicator::connect(&listener, rank, &peers, &group, config))
        .await
        .map_err(|e| FormGroupError::Local {
            group: spec.group.clone(),
            reason: format!("the mesh formation task failed: {e}"),
        })??;
    Ok((comm, membership))
}
