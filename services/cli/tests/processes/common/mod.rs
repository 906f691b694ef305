//! Helpers shared by the process tests: spawning `cleave`, waiting for a condition, streaming a request,
//! counting the workers registered in etcd, and greedy requests.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use cleave_testkit::ChildGuard;
use tonic::transport::Channel;

/// Starts the `cleave` binary under test with `args`, its output discarded; killed on drop.
pub fn spawn_cleave(args: &[&str]) -> ChildGuard {
    spawn_cleave_with_env(args, &[])
}

/// [`spawn_cleave`] with these environment variables set.
pub fn spawn_cleave_with_env(args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_cleave"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Polls `ok` every 100 ms until it holds; fails the test after 60 s (a worker starting while the other process
/// tests load a 2-core machine has taken over 30 s to register).
pub async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Streams a request to the end and returns its token ids; `None` if the call or the stream failed.
pub async fn stream_ids(client: &GenerationClient<Channel>, request: v1::GenerateRequest) -> Option<Vec<u32>> {
    let mut client = client.clone();
    let mut stream = client.generate(request).await.ok()?.into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await.ok()? {
        ids.extend(msg.token_ids);
    }
    Some(ids)
}

/// Workers registered under the default key prefix; `usize::MAX` while etcd cannot be asked.
pub async fn registered(etcd: &str) -> usize {
    let Ok(mut client) = etcd_client::Client::connect([etcd], None).await else {
        return usize::MAX;
    };
    let opts = etcd_client::GetOptions::new().with_prefix();
    client
        .get("/cleave/v1/workers/", Some(opts))
        .await
        .map_or(usize::MAX, |r| r.kvs().len())
}

/// A greedy request for `max_tokens` tokens of `text`, not stopping at end of sequence.
pub fn greedy(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: text.into(),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    }
}
