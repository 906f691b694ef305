#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]
//! NCCL communicator on real GPUs: one thread per GPU (up to 4), the unique id exchanged through the rendezvous,
//! every operation checked against the sum computed on the host. Skips (passing) without libcuda, libnccl or a GPU.

use std::sync::Arc;
use std::time::Duration;

use cleave_cluster::registry::{EmbeddedRegistry, Registry};
use cleave_comm::{GroupSpec, NcclCommunicator, Rendezvous, nccl_status};
use cudarc::driver::CudaContext;
use half::bf16;

fn values(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7 + rank * 13) % 97) as f32 - 48.0).collect()
}

fn count(i: usize, j: usize) -> usize {
    (i * 3 + j * 5) % 4 + usize::from(i == j)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nccl_collectives_match_the_host_sums() {
    let devices = match nccl_status() {
        Ok(devices) => devices,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let world = devices.min(4);
    eprintln!("running NCCL collectives on {world} GPU(s)");

    // The unique id travels through the same rendezvous a worker group uses.
    let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::new());
    let id = NcclCommunicator::new_unique_id().unwrap();
    let joins: Vec<_> = (0..world)
        .map(|rank| {
            let registry = registry.clone();
            let mut spec = GroupSpec::new("nccl-test", world, rank);
            if rank == 0 {
                spec = spec.with_unique_id(id.clone());
            }
            tokio::spawn(async move {
                Rendezvous::join(
                    registry.as_ref(),
                    &spec,
                    &format!("gpu-{rank}"),
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for join in joins {
        ids.push(join.await.unwrap().unwrap().unique_id.unwrap());
    }
    assert!(ids.iter().all(|got| *got == id));

    let results = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = ids
                .into_iter()
                .enumerate()
                .map(|(rank, id)| scope.spawn(move || run_rank(rank, world, &id)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        })
    })
    .await
    .unwrap();
    assert_eq!(results.len(), world);
}

fn run_rank(rank: usize, world: usize, id: &[u8]) {
    let ctx = CudaContext::new(rank).unwrap();
    let stream = ctx.new_stream().unwrap();
    let mut comm = NcclCommunicator::from_rank(stream.clone(), rank, world, id, Duration::from_secs(60)).unwrap();

    // all_reduce, f32, odd length
    let len = 1001;
    let mut data = stream.clone_htod(&values(rank, len)).unwrap();
    comm.all_reduce_sum(&mut data).unwrap();
    // bf16
    let halves: Vec<bf16> = values(rank, len).into_iter().map(bf16::from_f32).collect();
    let mut halves_dev = stream.clone_htod(&halves).unwrap();
    comm.all_reduce_sum(&mut halves_dev).unwrap();
    // all_gather and reduce_scatter
    let chunk = 7;
    let mine: Vec<f32> = (0..chunk).map(|i| (rank * 100 + i) as f32).collect();
    let mine_dev = stream.clone_htod(&mine).unwrap();
    let mut gathered = stream.alloc_zeros::<f32>(chunk * world).unwrap();
    comm.all_gather(&mine_dev, &mut gathered).unwrap();
    let full = stream.clone_htod(&values(rank, chunk * world)).unwrap();
    let mut part = stream.alloc_zeros::<f32>(chunk).unwrap();
    comm.reduce_scatter_sum(&full, &mut part).unwrap();
    // all_to_all, uneven counts
    let send_counts: Vec<usize> = (0..world).map(|j| count(rank, j)).collect();
    let recv_counts: Vec<usize> = (0..world).map(|j| count(j, rank)).collect();
    let send: Vec<u32> = (0..world)
        .flat_map(|j| (0..count(rank, j)).map(move |k| (rank * 10_000 + j * 100 + k) as u32))
        .collect();
    let send_dev = stream.clone_htod(&send).unwrap();
    let mut recv_dev = stream.alloc_zeros::<u32>(recv_counts.iter().sum()).unwrap();
    comm.all_to_all(&send_dev, &send_counts, &mut recv_dev, &recv_counts)
        .unwrap();
    // send/recv round a ring (grouped by NCCL's ordering: even ranks send first)
    let mut from_prev = stream.alloc_zeros::<f32>(513).unwrap();
    if world > 1 {
        let token = stream.clone_htod(&vec![rank as f32; 513]).unwrap();
        let (next, prev) = ((rank + 1) % world, (rank + world - 1) % world);
        if rank.is_multiple_of(2) {
            comm.send(&token, next).unwrap();
            comm.recv(&mut from_prev, prev).unwrap();
        } else {
            comm.recv(&mut from_prev, prev).unwrap();
            comm.send(&token, next).unwrap();
        }
    }
    comm.synchronize("test").unwrap();
    comm.barrier().unwrap();

    let expected: Vec<f32> = (0..len).map(|k| (0..world).map(|r| values(r, len)[k]).sum()).collect();
    assert_eq!(
        stream.clone_dtoh(&data).unwrap(),
        expected,
        "rank {rank}: f32 all_reduce"
    );
    let got_halves: Vec<f32> = stream
        .clone_dtoh(&halves_dev)
        .unwrap()
        .into_iter()
        .map(bf16::to_f32)
        .collect();
    assert_eq!(got_halves, expected, "rank {rank}: bf16 all_reduce");
    let gathered_expected: Vec<f32> = (0..world)
        .flat_map(|r| (0..chunk).map(move |i| (r * 100 + i) as f32))
        .collect();
    assert_eq!(
        stream.clone_dtoh(&gathered).unwrap(),
        gathered_expected,
        "rank {rank}: all_gather"
    );
    let part_expected: Vec<f32> = (0..chunk)
        .map(|i| (0..world).map(|r| values(r, chunk * world)[rank * chunk + i]).sum())
        .collect();
    assert_eq!(
        stream.clone_dtoh(&part).unwrap(),
        part_expected,
        "rank {rank}: reduce_scatter"
    );
    let recv_expected: Vec<u32> = (0..world)
        .flat_map(|j| (0..count(j, rank)).map(move |k| (j * 10_000 + rank * 100 + k) as u32))
        .collect();
    assert_eq!(
        stream.clone_dtoh(&recv_dev).unwrap(),
        recv_expected,
        "rank {rank}: all_to_all"
    );
    if world > 1 {
        let prev = ((rank + world - 1) % world) as f32;
        assert!(
            stream.clone_dtoh(&from_prev).unwrap().iter().all(|&v| v == prev),
            "rank {rank}: send/recv"
        );
    }
}

/// NCCL's own point-to-point bandwidth between two GPUs for the KV of a 4,096-token Llama-3.1-8B prompt (0.54 GB of
/// bf16), the yardstick for the KV transports (scripts/gpu-check prints it beside the CUDA-IPC copy). Skips on
/// fewer than two GPUs.
#[test]
fn nccl_send_recv_bandwidth_for_a_4k_token_8b_kv() {
    match nccl_status() {
        Ok(devices) if devices >= 2 => {}
        Ok(_) => return eprintln!("skipped: 2 GPUs wanted"),
        Err(why) => return eprintln!("skipped: {why}"),
    }
    const ELEMS: usize = 4096 * 2 * 32 * 8 * 128;
    const REPEATS: usize = 5;
    let id = NcclCommunicator::new_unique_id().unwrap();
    let times: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let id = id.clone();
                scope.spawn(move || {
                    let ctx = CudaContext::new(rank).unwrap();
                    let stream = ctx.new_stream().unwrap();
                    let mut comm =
                        NcclCommunicator::from_rank(stream.clone(), rank, 2, &id, Duration::from_secs(60)).unwrap();
                    let mut data = stream.alloc_zeros::<bf16>(ELEMS).unwrap();
                    if rank == 0 {
                        let host: Vec<bf16> = (0..ELEMS).map(|i| bf16::from_f32((i % 251) as f32)).collect();
                        stream.memcpy_htod(&host, &mut data).unwrap();
                    }
                    let mut elapsed = 0.0;
                    for round in 0..=REPEATS {
                        comm.barrier().unwrap();
                        let started = std::time::Instant::now();
                        if rank == 0 {
                            comm.send(&data, 1).unwrap();
                        } else {
                            comm.recv(&mut data, 0).unwrap();
                        }
                        comm.synchronize("send/recv").unwrap();
                        if round > 0 {
                            elapsed += started.elapsed().as_secs_f64();
                        }
                    }
                    if rank == 1 {
                        let tail = stream.clone_dtoh(&data.slice(ELEMS - 4..)).unwrap();
                        let want: Vec<f32> = (ELEMS - 4..ELEMS).map(|i| (i % 251) as f32).collect();
                        assert_eq!(tail.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), want);
                    }
                    elapsed / REPEATS as f64
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bytes = (ELEMS * 2) as f64;
    let seconds = times.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "NCCL send/recv: {:.3} GB in {:.2} ms → {:.0} GB/s",
        bytes / 1e9,
        seconds * 1e3,
        bytes / seconds / 1e9
    );
}
