//! The `cleave` binary as real processes, in one test binary (one link instead of one per file): the CLI itself
//! (`cli`), workers and routers with etcd (`cluster_processes`, `etcd_discovery`, `worker_process`), disaggregated
//! prefill (`disaggregated_processes`), parallel groups (`parallel_processes`), metrics, traces and security, the
//! planner, and load-test campaigns (`load_cluster`). `common` holds the shared helpers.

mod cli;
mod cluster_processes;
mod common;
mod disaggregated_processes;
mod etcd_discovery;
mod load_cluster;
mod metrics_processes;
mod parallel_processes;
mod planner_processes;
mod security_processes;
mod traces_processes;
mod worker_process;
