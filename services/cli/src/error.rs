//! The CLI's errors and the exit status each maps to: 2 when what the user typed is wrong (a sampling value out of
//! range, a model path that is not a model), 1 when a valid request failed (a corrupt file, the network).
//!
//! Invariant: every failure reaches `main` as a `CliError`, so the process never ends in a panic and the message
//! always names the field, file or model at fault. Cost: none.

use std::error::Error as _;
use std::io;

use cleave_engine::{EngineError, ErrorCategory};
use cleave_modelstore::ModelStoreError;
use cleave_tokens::TokenizerError;

/// Exit status for a request that is wrong as typed (clap uses the same for unparsable flags).
pub const EXIT_INVALID_ARGUMENT: u8 = 2;
/// Exit status for a valid request that failed.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    ModelStore(#[from] ModelStoreError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(
        "--model {spec}: a synthetic model is served with the default model's tokenizer, which is not a GGUF file \
         here"
    )]
    SyntheticModel { spec: String },
    #[error("cannot start {threads} compute threads")]
    ThreadPool {
        threads: u16,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    #[error("cannot write to stdout")]
    Stdout(#[source] io::Error),
    #[error("cannot encode the output as JSON")]
    Json(#[from] serde_json::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot accept KV transfers on {addr}")]
    KvListen {
        addr: std::net::SocketAddr,
        #[source]
        source: cleave_cluster::kv_transfer::KvTransferError,
    },
    #[error("the worker's gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error(transparent)]
    RouterServe(#[from] cleave_router::ServeError),
    #[error(transparent)]
    RouterModel(#[from] cleave_router::ModelInfoError),
    #[error(transparent)]
    Registry(#[from] cleave_cluster::registry::RegistryError),
    #[error("--worker {url}: not a valid gRPC URL")]
    WorkerUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Tls(#[from] cleave_cluster::tls::TlsError),
    #[error(transparent)]
    ApiKeyFile(#[from] cleave_router::auth::ApiKeyFileError),
    #[error("cannot read the {what} {path}")]
    ReadFile {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    MissingSecret { what: &'static str },
    #[error(transparent)]
    Planner(#[from] cleave_planner::PlannerError),
    #[error("a parallel group (--tensor-, --pipeline-, --expert- or --context-parallel above 1) needs --etcd to form")]
    ParallelNeedsEtcd,
    #[error(
        "of --tensor-, --pipeline-, --expert- and --context-parallel only tensor with pipeline combine in this version"
    )]
    ParallelCombined,
    #[error(
        "--pipeline-parallel workers cannot take --role prefill in this version: a prefill worker ships its KV layer \
         by layer from one process, and a pipeline's layers live on different ranks"
    )]
    PipelinePrefill,
    #[error("--group-rank {rank} is outside a group of {world} ranks")]
    GroupRank { rank: usize, world: usize },
    #[error(transparent)]
    Group(#[from] cleave_comm::FormGroupError),
    #[error("the tensor-parallel group failed: {0}")]
    GroupFailed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        let invalid = match self {
            CliError::Engine(e) => e.category() == ErrorCategory::InvalidArgument,
            CliError::ModelStore(e) => matches!(
                e,
                ModelStoreError::EmptySpec
                    | ModelStoreError::UnknownModel { .. }
                    | ModelStoreError::EmptySyntheticShape { .. }
                    | ModelStoreError::SpecNotFound { .. }
                    | ModelStoreError::NotAModel { .. }
                    | ModelStoreError::NotGguf { .. }
                    | ModelStoreError::IncompleteHfDir { .. }
            ),
            CliError::Tokenizer(e) => matches!(e, TokenizerError::NoChatTemplate),
            CliError::SyntheticModel { .. }
            | CliError::WorkerUrl { .. }
            | CliError::Tls(_)
            | CliError::ApiKeyFile(_)
            | CliError::ReadFile { .. }
            | CliError::MissingSecret { .. }
            | CliError::ParallelNeedsEtcd
            | CliError::ParallelCombined
            | CliError::PipelinePrefill
            | CliError::GroupRank { .. } => true,
            CliError::Planner(e) => matches!(
                e,
                cleave_planner::PlannerError::InvalidConfig(_) | cleave_planner::PlannerError::InvalidWorkload(_)
            ),
            CliError::ThreadPool { .. }
            | CliError::Stdout(_)
            | CliError::Json(_)
            | CliError::Listen { .. }
            | CliError::KvListen { .. }
            | CliError::Serve(_)
            | CliError::RouterServe(_)
            | CliError::RouterModel(_)
            | CliError::Registry(_)
            | CliError::Runtime(_)
            | CliError::Group(_)
            | CliError::GroupFailed(_) => false,
        };
        if invalid { EXIT_INVALID_ARGUMENT } else { EXIT_FAILURE }
    }

    /// The message and its causes on one line. Many errors already quote their source in their own message, so
    /// a cause is added only when the text so far does not contain it.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut cause = self.source();
        while let Some(err) = cause {
            let line = err.to_string();
            if !text.contains(&line) {
                text.push_str(": ");
                text.push_str(&line);
            }
            cause = err.source();
        }
        text
    }
}
