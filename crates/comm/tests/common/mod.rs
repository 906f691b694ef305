//! Shared by the communicator tests: a TCP group of `n` ranks on loopback, one thread per rank.

use std::net::TcpListener;
use std::time::Duration;

use cleave_comm::{TcpCommunicator, TcpConfig};

/// A config whose operations fail fast (tests must never wait a minute).
pub fn quick_config() -> TcpConfig {
    TcpConfig {
        op_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(10),
        ..TcpConfig::default()
    }
}

/// Runs `body(rank, communicator)` on `n` threads, each a member of one fresh loopback group; returns the
/// results in rank order.
pub fn run_group<R: Send>(n: usize, config: &TcpConfig, body: impl Fn(TcpCommunicator) -> R + Sync) -> Vec<R> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let group = format!("test-{}", peers[0]);
    std::thread::scope(|scope| {
        let handles: Vec<_> = listeners
            .iter()
            .enumerate()
            .map(|(rank, listener)| {
                let (peers, group, body, config) = (&peers, &group, &body, config.clone());
                scope.spawn(move || {
                    let comm = TcpCommunicator::connect(listener, rank, peers, group, config).unwrap();
                    body(comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG): the same for a given seed on every rank.
pub fn random_f32(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Small integers as f32 (exact in any summation order): rank r's element i.
pub fn integer_f32(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7 + rank * 13) % 97) as f32 - 48.0).collect()
}
