//! TCP all-reduce bandwidth on loopback: 1 MiB and 16 MiB f32 buffers at world sizes 2 and 4, one thread per
//! rank in this process. Run: `cargo bench -p cleave-comm --bench tcp_all_reduce`.
//! Reports the time per all-reduce, the algorithm bandwidth (buffer bytes / time) and the bus bandwidth
//! (2·(n−1)/n · buffer bytes / time: what each rank's link carries, comparable across world sizes).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use cleave_comm::{Communicator, TcpCommunicator, TcpConfig};

fn run(world: usize, bytes: usize) -> Duration {
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let iters = if bytes >= 8 << 20 { 10 } else { 50 };
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = listeners
            .iter()
            .enumerate()
            .map(|(rank, listener)| {
                let peers = &peers;
                scope.spawn(move || {
                    let comm = TcpCommunicator::connect(listener, rank, peers, "bench", TcpConfig::default()).unwrap();
                    let mut data = vec![rank as f32; bytes / 4];
                    for _ in 0..3 {
                        comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
                    }
                    comm.barrier().unwrap();
                    let start = Instant::now();
                    for _ in 0..iters {
                        comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
                    }
                    comm.barrier().unwrap();
                    start.elapsed() / iters
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().max().unwrap()
}

fn main() {
    println!(
        "TCP all-reduce on loopback ({} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>6} {:>8} {:>12} {:>14} {:>14}",
        "world", "size", "time/op", "algbw GB/s", "busbw GB/s"
    );
    for world in [2, 4] {
        for mib in [1usize, 16] {
            let bytes = mib << 20;
            let time = run(world, bytes);
            let algbw = bytes as f64 / time.as_secs_f64() / 1e9;
            let busbw = algbw * 2.0 * (world - 1) as f64 / world as f64;
            println!(
                "{world:>6} {:>6}MiB {:>10.2}ms {algbw:>14.2} {busbw:>14.2}",
                mib,
                time.as_secs_f64() * 1e3
            );
        }
    }
}
