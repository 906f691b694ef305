#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The TCP communicator across real OS processes: this test binary re-executes itself once per rank (the
//! `rank_process` entry, selected by `CLEAVE_COMM_RANK`); the ranks meet through a real etcd, form the mesh and
//! run collectives. One test kills a rank with SIGKILL mid-loop and checks the survivors fail fast, naming what
//! failed, instead of hanging.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cleave_cluster::registry::{EtcdConfig, EtcdRegistry};
use cleave_comm::{Communicator, GroupSpec, Rendezvous, TcpCommunicator, TcpConfig};
use cleave_testkit::{ChildGuard, EtcdServer};

const PREFIX: &str = "/cleave-proc-test/";

/// The body of one rank process; a no-op in the ordinary test run.
#[test]
fn rank_process() {
    let Ok(rank) = std::env::var("CLEAVE_COMM_RANK") else {
        return;
    };
    let rank: usize = rank.parse().unwrap();
    let world: usize = std::env::var("CLEAVE_COMM_WORLD").unwrap().parse().unwrap();
    let endpoint = std::env::var("CLEAVE_COMM_ETCD").unwrap();
    let group = std::env::var("CLEAVE_COMM_GROUP").unwrap();
    let mode = std::env::var("CLEAVE_COMM_MODE").unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let member = runtime.block_on(async {
        let registry = EtcdRegistry::connect(EtcdConfig::new(vec![endpoint])).await.unwrap();
        let spec = GroupSpec::new(&group, world, rank).with_prefix(PREFIX);
        let member = Rendezvous::join(&registry, &spec, &addr, Duration::from_secs(20))
            .await
            .unwrap();
        (member, registry)
    });
    let config = TcpConfig {
        op_timeout: Duration::from_secs(4),
        ..TcpConfig::default()
    };
    let comm = TcpCommunicator::connect(&listener, rank, &member.0.peers, &group, config).unwrap();
    match mode.as_str() {
        "sum" => {
            // Direct and ring sizes; the checksum of the result goes to the parent.
            for len in [5usize, 100_003] {
                let mut data: Vec<f32> = (0..len).map(|i| ((i + rank) % 10) as f32).collect();
                comm.all_reduce_sum(data.as_mut_slice().into()).unwrap();
                let checksum: f64 = data.iter().map(|&v| f64::from(v)).sum();
                println!("RESULT {len} {checksum}");
            }
            comm.barrier().unwrap();
        }
        "loop" => {
            let mut data = vec![1.0f32; 1 << 20];
            let mut round = 0u64;
            loop {
                match comm.all_reduce_sum(data.as_mut_slice().into()) {
                    Ok(()) => {
                        data.fill(1.0);
                        round += 1;
                        if round == 3 {
                            println!("READY");
                        }
                    }
                    Err(error) => {
                        println!("ERROR {error}");
                        std::process::exit(3);
                    }
                }
            }
        }
        other => panic!("unknown mode {other}"),
    }
    runtime.block_on(member.0.leave());
}

fn spawn_ranks(etcd: &EtcdServer, world: usize, group: &str, mode: &str) -> Vec<ChildGuard> {
    let exe = std::env::current_exe().unwrap();
    (0..world)
        .map(|rank| {
            ChildGuard::spawn(
                Command::new(&exe)
                    .args(["--exact", "rank_process", "--nocapture", "--test-threads=1"])
                    .env("CLEAVE_COMM_RANK", rank.to_string())
                    .env("CLEAVE_COMM_WORLD", world.to_string())
                    .env("CLEAVE_COMM_ETCD", etcd.endpoint())
                    .env("CLEAVE_COMM_GROUP", group)
                    .env("CLEAVE_COMM_MODE", mode)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit()),
            )
        })
        .collect()
}

/// The part of `line` from `tag` on (libtest prints `test rank_process ... ` before the first line of output).
fn tagged(line: &str, tag: &str) -> Option<String> {
    line.find(tag).map(|at| line[at..].to_owned())
}

/// Lines of a child's stdout that carry `tag`, read until the child closes it.
fn tagged_lines(child: &mut ChildGuard, tag: &str) -> Vec<String> {
    let stdout = child.0.stdout.take().unwrap();
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| tagged(&l, tag))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_reduce_across_three_processes() {
    let etcd = EtcdServer::start().await.unwrap();
    let world = 3;
    let mut children = spawn_ranks(&etcd, world, "procs-sum", "sum");
    let outputs: Vec<Vec<String>> = tokio::task::spawn_blocking(move || {
        let out = children.iter_mut().map(|c| tagged_lines(c, "RESULT")).collect();
        for child in &mut children {
            assert!(child.wait_exit(Duration::from_secs(30)).success());
        }
        out
    })
    .await
    .unwrap();
    for len in [5usize, 100_003] {
        let expected: f64 = (0..len)
            .map(|i| (0..world).map(|r| ((i + r) % 10) as f64).sum::<f64>())
            .sum();
        for (rank, lines) in outputs.iter().enumerate() {
            assert!(
                lines.contains(&format!("RESULT {len} {expected}")),
                "rank {rank}: {lines:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rank_fails_the_survivors_fast() {
    let etcd = EtcdServer::start().await.unwrap();
    let world = 3;
    let children = spawn_ranks(&etcd, world, "procs-kill", "loop");
    let (outcomes, elapsed) = tokio::task::spawn_blocking(move || {
        let mut children = children;
        let mut readers: Vec<_> = children
            .iter_mut()
            .map(|c| BufReader::new(c.0.stdout.take().unwrap()).lines())
            .collect();
        for reader in &mut readers {
            let ready = reader
                .by_ref()
                .map_while(Result::ok)
                .any(|l| tagged(&l, "READY").is_some());
            assert!(ready, "a rank never got through its first all-reduces");
        }
        let killed_at = Instant::now();
        let _ = children[1].0.kill(); // SIGKILL: no goodbye on its sockets beyond the kernel's
        let mut outcomes = Vec::new();
        for rank in [0, 2] {
            let status = children[rank].wait_exit(Duration::from_secs(10));
            let lines: Vec<String> = readers[rank].by_ref().map_while(Result::ok).collect();
            outcomes.push((rank, status.code(), lines));
        }
        (outcomes, killed_at.elapsed())
    })
    .await
    .unwrap();
    assert!(
        elapsed < Duration::from_secs(4),
        "survivors took {elapsed:?} to give up"
    );
    for (rank, code, lines) in outcomes {
        assert_eq!(code, Some(3), "rank {rank} should exit with the error code: {lines:?}");
        let error = lines.iter().find_map(|l| tagged(l, "ERROR")).unwrap();
        assert!(
            error.contains("all_reduce") && error.contains("rank"),
            "rank {rank}: {error}"
        );
    }
}
