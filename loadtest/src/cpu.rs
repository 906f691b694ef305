//! The generator's own CPU use, from `/proc/self/stat` (user + system time of every thread of this process), so a
//! report can show the load generator was not the bottleneck.
//!
//! Invariant: readings only grow; on a system without `/proc` they are zero and the report says "unknown".
//! Cost: one small file read per reading (one per stage, not per request).

use std::time::Duration;

/// CPU time this process has used so far (10 ms resolution: Linux's USER_HZ is 100).
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
