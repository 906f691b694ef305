//! Forms the full mesh of a TCP group: rank i dials every lower rank and accepts every higher one, and each
//! connection starts with a handshake that proves both ends belong to the same group, world size and ranks.
//!
//! Invariant: on success there is exactly one connection per peer, in rank order, each verified by both ends; a
//! stray connection (another group, a stale address, a duplicate rank) is refused, never mistaken for a peer.
//! Dialling retries until the deadline, so members may start in any order. The dial-low/accept-high order
//! cannot deadlock: rank 0 only accepts, and every rank's dials finish before it needs to accept.
//! Cost: world_size − 1 connections per rank, one round trip each; accepts poll every 2 ms.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::CommError;

const HANDSHAKE_MAGIC: u64 = 0x434c_4541_5645_4331; // "CLEAVEC1"
const HANDSHAKE_LEN: usize = 32;
/// How long an accepted connection may take to say who it is before it is dropped as a stray.
const STRAY_HANDSHAKE: Duration = Duration::from_secs(5);

/// What both ends of a connection state about themselves and each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handshake {
    group_token: u64,
    world_size: u32,
    from: u32,
    to: u32,
}

impl Handshake {
    fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0..8].copy_from_slice(&HANDSHAKE_MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&self.group_token.to_le_bytes());
        out[16..20].copy_from_slice(&self.world_size.to_le_bytes());
        out[20..24].copy_from_slice(&self.from.to_le_bytes());
        out[24..28].copy_from_slice(&self.to.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; HANDSHAKE_LEN]) -> Result<Self, String> {
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let u32_at = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(w)
        };
        if u64_at(0) != HANDSHAKE_MAGIC {
            return Err("not a cleave communicator (bad handshake magic)".to_owned());
        }
        Ok(Self {
            group_token: u64_at(8),
            world_size: u32_at(16),
            from: u32_at(20),
            to: u32_at(24),
        })
    }
}

/// A stable 64-bit token for a group name (FNV-1a), so connections from other groups are refused.
pub(crate) fn group_token(group: &str) -> u64 {
    group.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Connects this rank to every peer; `peers[r]` is rank r's address (this rank's own entry is ignored).
pub(crate) fn form_mesh(
    listener: &TcpListener,
    rank: usize,
    peers: &[String],
    group_token: u64,
    deadline: Instant,
) -> Result<Vec<Option<TcpStream>>, CommError> {
    let world_size = peers.len();
    let mut streams: Vec<Option<TcpStream>> = (0..world_size).map(|_| None).collect();
    let me = |to: usize| Handshake {
        group_token,
        world_size: world_size as u32,
        from: rank as u32,
        to: to as u32,
    };
    for (peer, addr) in peers.iter().enumerate().take(rank) {
        let connect_error = |reason: String| CommError::Connect {
            rank,
            peer,
            addr: addr.clone(),
            reason,
        };
        let mut stream = dial(addr, deadline).map_err(connect_error)?;
        let exchange = (|| {
            write_handshake(&mut stream, &me(peer), deadline)?;
            read_handshake(&mut stream, deadline)
        })();
        let theirs = exchange.map_err(|e| connect_error(format!("handshake failed: {e}")))?;
        let expected = Handshake {
            group_token,
            world_size: world_size as u32,
            from: peer as u32,
            to: rank as u32,
        };
        if theirs != expected {
            return Err(connect_error(format!(
                "the member there answered as {theirs:?}, expected {expected:?} (another group or a stale address?)"
            )));
        }
        streams[peer] = Some(stream);
    }
    let higher = world_size.saturating_sub(rank + 1);
    let mut accepted = 0;
    listener
        .set_nonblocking(true)
        .map_err(|e| accept_error(rank, peers, e.to_string()))?;
    while accepted < higher {
        let (mut stream, _) = match listener.accept() {
            Ok(conn) => conn,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (rank + 1..world_size).filter(|r| streams[*r].is_none()).collect();
                    return Err(CommError::Connect {
                        rank,
                        peer: missing.first().copied().unwrap_or(rank),
                        addr: peers.get(rank).cloned().unwrap_or_default(),
                        reason: format!("ranks {missing:?} never connected to this rank's listener"),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(error) => return Err(accept_error(rank, peers, error.to_string())),
        };
        // A stray or misbehaving dialler is dropped; the real peer may still come.
        let Ok(()) = stream.set_nonblocking(false) else {
            continue;
        };
        let stray_limit = deadline.min(Instant::now() + STRAY_HANDSHAKE);
        let Ok(theirs) = read_handshake(&mut stream, stray_limit) else {
            continue;
        };
        let from = theirs.from as usize;
        let valid = theirs.group_token == group_token
            && theirs.world_size as usize == world_size
            && theirs.to as usize == rank
            && from > rank
            && from < world_size
            && streams[from].is_none();
        if !valid {
            tracing::warn!(
                rank,
                ?theirs,
                "refused a connection that is not a pending peer of this group"
            );
            continue;
        }
        if write_handshake(&mut stream, &me(from), deadline).is_err() {
            continue;
        }
        streams[from] = Some(stream);
        accepted += 1;
    }
    Ok(streams)
}

fn accept_error(rank: usize, peers: &[String], reason: String) -> CommError {
    CommError::Connect {
        rank,
        peer: rank,
        addr: peers.get(rank).cloned().unwrap_or_default(),
        reason: format!("accepting on this rank's listener: {reason}"),
    }
}

/// Dials `addr` until it answers or the deadline passes (the peer may not be listening yet).
fn dial(addr: &str, deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not reachable before the deadline (last error: {last})"));
        }
        match addr.to_socket_addrs() {
            Ok(addrs) => {
                for sa in addrs {
                    match TcpStream::connect_timeout(&sa, left.min(Duration::from_secs(2))) {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            return Ok(stream);
                        }
                        Err(error) => last = error.to_string(),
                    }
                }
            }
            Err(error) => last = format!("cannot resolve: {error}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_handshake(stream: &mut TcpStream, handshake: &Handshake, deadline: Instant) -> io::Result<()> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left))?;
    stream.write_all(&handshake.encode())
}

fn read_handshake(stream: &mut TcpStream, deadline: Instant) -> io::Result<Handshake> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    let mut bytes = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut bytes)?;
    Handshake::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
