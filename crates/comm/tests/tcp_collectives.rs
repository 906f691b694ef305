#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The TCP communicator's collectives over real loopback sockets, one thread per rank, against sequential
//! references: every world size 1–4, odd lengths, both all-reduce algorithms, f32, bf16 and u32.

mod common;

use std::time::{Duration, Instant};

use cleave_comm::{CommError, Communicator, TcpConfig};
use common::{integer_f32, quick_config, random_f32, run_group};
use half::bf16;

const LENGTHS: [usize; 7] = [0, 1, 2, 3, 7, 1001, 40_003];

fn configs() -> [(&'static str, TcpConfig); 2] {
    [
        (
            "direct",
            TcpConfig {
                ring_threshold_bytes: usize::MAX,
                ..quick_config()
            },
        ),
        (
            "ring",
            TcpConfig {
                ring_threshold_bytes: 0,
                ..quick_config()
            },
        ),
    ]
}

#[test]
fn all_reduce_matches_the_sequential_sum_for_every_world_size_and_length() {
    for (name, config) in configs() {
        for n in 1..=4 {
            let results = run_group(n, &config, |comm| {
                LENGTHS
                    .iter()
                    .map(|&len| {
                        let mut data = integer_f32(comm.rank(), len);
                        comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
                        data
                    })
                    .collect::<Vec<_>>()
            });
            for (i, &len) in LENGTHS.iter().enumerate() {
                let inputs: Vec<Vec<f32>> = (0..n).map(|r| integer_f32(r, len)).collect();
                let expected: Vec<f32> = (0..len).map(|k| inputs.iter().map(|v| v[k]).sum()).collect();
                for (rank, per_rank) in results.iter().enumerate() {
                    assert_eq!(per_rank[i], expected, "{name}, world {n}, len {len}, rank {rank}");
                }
            }
        }
    }
}

#[test]
fn all_reduce_of_random_floats_is_bit_identical_on_every_rank_and_close_to_the_exact_sum() {
    for (name, config) in configs() {
        for n in 2..=4 {
            let len = 10_007;
            let results = run_group(n, &config, |comm| {
                let mut data = random_f32(comm.rank() as u64, len);
                comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
                data
            });
            for rank in 1..n {
                let same = results[rank]
                    .iter()
                    .zip(&results[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name}, world {n}: rank {rank} differs from rank 0 in some bits");
            }
            let inputs: Vec<Vec<f32>> = (0..n).map(|r| random_f32(r as u64, len)).collect();
            for k in 0..len {
                let exact: f64 = inputs.iter().map(|v| f64::from(v[k])).sum();
                assert!(
                    (f64::from(results[0][k]) - exact).abs() < 1e-5,
                    "{name}, world {n}, element {k}"
                );
            }
        }
    }
    // Direct sums in rank order, so it equals the sequential left fold bit for bit.
    let results = run_group(3, &configs()[0].1, |comm| {
        let mut data = random_f32(comm.rank() as u64, 333);
        comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
        data
    });
    let inputs: Vec<Vec<f32>> = (0..3).map(|r| random_f32(r, 333)).collect();
    let fold: Vec<f32> = (0..333)
        .map(|k| (1..3).fold(inputs[0][k], |acc, r| acc + inputs[r][k]))
        .collect();
    assert_eq!(results[2], fold);
}

#[test]
fn bf16_and_u32_all_reduce() {
    for (name, config) in configs() {
        for n in 1..=4 {
            let len = 1003;
            let results = run_group(n, &config, |comm| {
                let mut halves: Vec<bf16> = integer_f32(comm.rank(), len).into_iter().map(bf16::from_f32).collect();
                comm.all_reduce_sum(halves.as_mut_slice().into()).unwrap();
                let mut counts: Vec<u32> = (0..len as u32).map(|i| i * (comm.rank() as u32 + 1)).collect();
                comm.all_reduce_sum(counts.as_mut_slice().into()).unwrap();
                (halves, counts)
            });
            let factor: u32 = (1..=n as u32).sum();
            let inputs: Vec<Vec<f32>> = (0..n).map(|r| integer_f32(r, len)).collect();
            for (rank, (halves, counts)) in results.iter().enumerate() {
                for k in 0..len {
                    let exact: f32 = inputs.iter().map(|v| v[k]).sum();
                    assert_eq!(halves[k].to_f32(), exact, "{name}, world {n}, rank {rank}, element {k}");
                    assert_eq!(counts[k], k as u32 * factor);
                }
            }
        }
    }
}

#[test]
fn all_gather_and_reduce_scatter_with_odd_chunks() {
    for n in 1..=4 {
        let chunk = 7;
        let results = run_group(n, &quick_config(), |comm| {
            let r = comm.rank();
            let mine: Vec<f32> = (0..chunk).map(|i| (r * 100 + i) as f32).collect();
            let mut gathered = vec![0.0f32; chunk * n];
            comm.all_gather(mine.as_slice().into(), gathered.as_mut_slice().into())
                .unwrap();
            let full = integer_f32(r, chunk * n);
            let mut part = vec![0.0f32; chunk];
            comm.reduce_scatter_sum(full.as_slice().into(), part.as_mut_slice().into())
                .unwrap();
            (gathered, part)
        });
        let gathered_expected: Vec<f32> = (0..n)
            .flat_map(|r| (0..chunk).map(move |i| (r * 100 + i) as f32))
            .collect();
        for (rank, (gathered, part)) in results.iter().enumerate() {
            assert_eq!(*gathered, gathered_expected, "world {n}, rank {rank}");
            let expected: Vec<f32> = (0..chunk)
                .map(|i| (0..n).map(|r| integer_f32(r, chunk * n)[rank * chunk + i]).sum())
                .collect();
            assert_eq!(*part, expected, "world {n}, rank {rank}");
        }
    }
}

/// Rank i sends rank j `count(i, j)` elements, each encoding (i, j, k).
fn count(i: usize, j: usize) -> usize {
    (i * 3 + j * 5) % 4 + usize::from(i == j)
}

#[test]
fn all_to_all_with_uneven_and_zero_counts() {
    for n in 1..=4 {
        let results = run_group(n, &quick_config(), |comm| {
            let i = comm.rank();
            let send_counts: Vec<usize> = (0..n).map(|j| count(i, j)).collect();
            let recv_counts: Vec<usize> = (0..n).map(|j| count(j, i)).collect();
            let send: Vec<u32> = (0..n)
                .flat_map(|j| (0..count(i, j)).map(move |k| (i * 10_000 + j * 100 + k) as u32))
                .collect();
            let mut recv = vec![0u32; recv_counts.iter().sum()];
            comm.all_to_all(
                send.as_slice().into(),
                &send_counts,
                recv.as_mut_slice().into(),
                &recv_counts,
            )
            .unwrap();
            recv
        });
        for (i, recv) in results.iter().enumerate() {
            let expected: Vec<u32> = (0..n)
                .flat_map(|j| (0..count(j, i)).map(move |k| (j * 10_000 + i * 100 + k) as u32))
                .collect();
            assert_eq!(*recv, expected, "world {n}, rank {i}");
        }
    }
}

#[test]
fn send_recv_pipeline_and_ring_shift() {
    let n = 4;
    let results = run_group(n, &quick_config(), |comm| {
        let r = comm.rank();
        // A pipeline: rank 0 starts, each stage adds its rank and passes it on (300k elements: beyond socket buffers).
        let mut activations = vec![0.0f32; 300_000];
        if r > 0 {
            comm.recv(activations.as_mut_slice().into(), r - 1).unwrap();
        }
        activations.iter_mut().for_each(|a| *a += r as f32);
        if r + 1 < n {
            comm.send(activations.as_slice().into(), r + 1).unwrap();
        }
        // A ring shift, everyone at once, large enough to deadlock a naive blocking exchange.
        let mine = vec![bf16::from_f32(r as f32); 500_000];
        let mut from_prev = vec![bf16::ZERO; 500_000];
        comm.send_recv(
            mine.as_slice().into(),
            (r + 1) % n,
            from_prev.as_mut_slice().into(),
            (r + n - 1) % n,
        )
        .unwrap();
        comm.barrier().unwrap();
        (activations[0], from_prev[0].to_f32(), from_prev[499_999].to_f32())
    });
    assert_eq!(results[n - 1].0, 6.0);
    for (r, &(_, first, last)) in results.iter().enumerate() {
        let prev = ((r + n - 1) % n) as f32;
        assert_eq!((first, last), (prev, prev), "rank {r}");
    }
}

#[test]
fn mismatched_lengths_are_an_error_not_garbage() {
    let results = run_group(2, &quick_config(), |comm| {
        let mut data = vec![1.0f32; 10 + comm.rank() * 2];
        comm.all_reduce_sum(data.as_mut_slice().into())
    });
    for result in results {
        let error = result.unwrap_err();
        assert!(
            matches!(error, CommError::Mismatch { .. } | CommError::PeerClosed { .. }),
            "{error}"
        );
    }
}

#[test]
fn a_member_that_never_calls_fails_the_others_within_the_timeout() {
    let config = TcpConfig {
        op_timeout: Duration::from_secs(1),
        ..quick_config()
    };
    let results = run_group(3, &config, |comm| {
        if comm.rank() == 2 {
            // Alive (its sockets stay open) but never joins the operation; outlives the others' timeout.
            std::thread::sleep(Duration::from_millis(2500));
            return None;
        }
        let start = Instant::now();
        let mut data = vec![1.0f32; 100];
        let error = comm.all_reduce_sum(data.as_mut_slice().into()).unwrap_err();
        let again = comm.all_reduce_sum(data.as_mut_slice().into()).unwrap_err();
        Some((error.to_string(), again, start.elapsed()))
    });
    for (rank, result) in results.iter().take(2).enumerate() {
        let (error, again, elapsed) = result.as_ref().unwrap();
        assert!(*elapsed < Duration::from_millis(2000), "rank {rank} took {elapsed:?}");
        assert!(error.contains("all_reduce"), "rank {rank}: {error}");
        assert!(
            error.contains("rank 2") || error.contains("closed"),
            "rank {rank}: {error}"
        );
        assert!(matches!(again, CommError::Aborted { .. }), "rank {rank}: {again}");
    }
}

#[test]
fn a_member_that_goes_away_mid_group_fails_the_others_fast() {
    let config = TcpConfig {
        op_timeout: Duration::from_secs(30),
        ..quick_config()
    };
    let results = run_group(4, &config, |comm| {
        let mut data = vec![1.0f32; 200_000];
        comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
        if comm.rank() == 1 {
            drop(comm); // its sockets close, as when the process dies
            return None;
        }
        let start = Instant::now();
        let mut results = Vec::new();
        for _ in 0..3 {
            results.push(comm.all_reduce_sum(data.as_mut_slice().into()));
        }
        Some((results, start.elapsed()))
    });
    for (rank, result) in results.iter().enumerate().filter(|(r, _)| *r != 1) {
        let (results, elapsed) = result.as_ref().unwrap();
        assert!(results[0].as_ref().is_err(), "rank {rank} completed without rank 1");
        assert!(
            *elapsed < Duration::from_secs(5),
            "rank {rank} took {elapsed:?} (a timeout, not a fast failure)"
        );
        assert!(results[0].as_ref().unwrap_err().is_peer_failure());
    }
}

#[test]
fn ring_all_reduce_of_buffers_many_segments_long() {
    // Chunks of several 256 KiB segments, uneven by one element, so the pipelined ring forwards partial chunks.
    let (_, ring) = &configs()[1];
    for n in [2, 3] {
        for len in [300_001usize, 1_000_003] {
            let results = run_group(n, ring, |comm| {
                let mut data = integer_f32(comm.rank(), len);
                comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
                let mut halves: Vec<bf16> = integer_f32(comm.rank(), len).into_iter().map(bf16::from_f32).collect();
                comm.all_reduce_sum(halves.as_mut_slice().into()).unwrap();
                (data, halves)
            });
            let inputs: Vec<Vec<f32>> = (0..n).map(|r| integer_f32(r, len)).collect();
            let expected: Vec<f32> = (0..len).map(|k| inputs.iter().map(|v| v[k]).sum()).collect();
            for (rank, (data, halves)) in results.iter().enumerate() {
                assert_eq!(*data, expected, "world {n}, len {len}, rank {rank}");
                assert!(
                    halves.iter().zip(&expected).all(|(h, e)| h.to_f32() == *e),
                    "bf16, world {n}, rank {rank}"
                );
            }
        }
    }
}

/// Two interleaved sub-groups of a 4-rank group ({0, 2} and {3, 1}, the second in reverse order) run every
/// operation at once over the shared links: each gets its own members' results, sums bit-identical on both members.
#[test]
fn sub_groups_run_their_own_collectives_over_the_shared_mesh() {
    use cleave_comm::SubCommunicator;
    use std::sync::Arc;
    let results = run_group(4, &quick_config(), |comm| {
        let rank = comm.rank();
        let members = if rank % 2 == 0 { vec![0, 2] } else { vec![3, 1] };
        let sub = SubCommunicator::new(Arc::new(comm), members.clone()).unwrap();
        assert_eq!(
            (sub.world_size(), sub.rank()),
            (2, members.iter().position(|&m| m == rank).unwrap())
        );
        let mut sum = random_f32(rank as u64, 1001);
        sub.all_reduce_sum(sum.as_mut_slice().into()).unwrap();
        let mut gathered = vec![0u32; 6];
        sub.all_gather([rank as u32; 3].as_slice().into(), gathered.as_mut_slice().into())
            .unwrap();
        let mut scattered = vec![0.0f32; 2];
        sub.reduce_scatter_sum(
            [1.0, 2.0, 3.0, rank as f32].as_slice().into(),
            scattered.as_mut_slice().into(),
        )
        .unwrap();
        // all-to-all: one element to member 0, two to member 1.
        let me = sub.rank() as u32;
        let send = [10 * rank as u32, 100 * rank as u32, 100 * rank as u32 + 1];
        let recv_counts = if me == 0 { [1, 1] } else { [2, 2] };
        let mut recv = vec![0u32; recv_counts.iter().sum()];
        sub.all_to_all(
            send.as_slice().into(),
            &[1, 2],
            recv.as_mut_slice().into(),
            &recv_counts,
        )
        .unwrap();
        sub.barrier().unwrap();
        let err = SubCommunicator::new(Arc::new(sub.clone()), vec![0, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("distinct"), "{err}");
        (rank, sum, gathered, scattered, recv)
    });
    for (rank, sum, gathered, scattered, recv) in &results {
        let members: [usize; 2] = if rank % 2 == 0 { [0, 2] } else { [3, 1] };
        let want: Vec<f32> = (0..1001)
            .map(|i| random_f32(members[0] as u64, 1001)[i] + random_f32(members[1] as u64, 1001)[i])
            .collect();
        assert_eq!(sum, &want, "rank {rank}: the sum is computed once, in member order");
        let m = members.map(|m| m as u32);
        assert_eq!(gathered, &[m[0], m[0], m[0], m[1], m[1], m[1]]);
        let me = members.iter().position(|m| m == rank).unwrap();
        let total = [2.0, 4.0, 6.0, (members[0] + members[1]) as f32];
        assert_eq!(scattered, &total[me * 2..me * 2 + 2]);
        let from = |m: usize, what: usize| match what {
            0 => 10 * m as u32,
            _ => vec![100 * m as u32, 100 * m as u32 + 1][what - 1],
        };
        let want: Vec<u32> = if me == 0 {
            vec![from(members[0], 0), from(members[1], 0)]
        } else {
            vec![
                from(members[0], 1),
                from(members[0], 2),
                from(members[1], 1),
                from(members[1], 2),
            ]
        };
        assert_eq!(recv, &want, "rank {rank}");
    }
}
