//! The engine thread: one OS thread owns the model, the KV cache and the scheduler, and runs steps while there is
//! work. Everything else talks to it through an `Engine` handle — submit, abort, stats — over channels.
//!
//! A `GenerationStream` is the only way to read a request's output, and dropping it aborts the request, so a client
//! that goes away frees its KV blocks at the next step. Compute runs on this thread (and rayon's pool), never on an
//! async runtime's workers. The calls that move KV between engines of different workers are in `remote`.

mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use cleave_tokens::BlockHash;
use cleave_tokens::Tokenizer;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::backend::{Backend, CpuBackend, KvLinkEndpoint, LandedCopy, PeerKv};
use crate::error::EngineError;
use crate::kv::{Gap, KvEventLog, KvEventRecord, KvShape};
use crate::model::LlamaModel;
use crate::sampling::{ModelLimits, SamplingSpec};
use crate::scheduler::{
    ExportedLayer, KvExport, NewRequest, PeerExport, RemoteDone, RemoteKvTarget, RequestId, RequestKind, Scheduler,
    SchedulerConfig, SchedulerStats, SeqOutput,
};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Memory for the KV cache; divided into blocks of `scheduler.block_size` tokens.
    pub kv_cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            scheduler: SchedulerConfig::default(),
            kv_cache_bytes: 512 << 20,
        }
    }
}

type OutputSender = mpsc::UnboundedSender<Result<SeqOutput, EngineError>>;

enum Command {
    Submit {
        req: NewRequest,
        tx: OutputSender,
    },
    SubmitRemote {
        req: NewRequest,
        tx: OutputSender,
        reply: oneshot::Sender<Option<RemoteKvTarget>>,
    },
    WriteRemoteKv {
        request: RequestId,
        layer: u32,
        blocks: Arc<[u32]>,
        keys: Vec<f32>,
        values: Vec<f32>,
    },
    FinishRemoteKv {
        request: RequestId,
        result: Result<RemoteDone, String>,
    },
    ExportKvPool(oneshot::Sender<Result<Option<Vec<u8>>, EngineError>>),
    KvLinkEndpoint(oneshot::Sender<Option<KvLinkEndpoint>>),
    ReceiveKv {
        request: RequestId,
        link: PeerKv,
        blocks: Arc<[u32]>,
        reply: oneshot::Sender<Result<Vec<LandedCopy>, EngineError>>,
    },
    OpenPeerKv {
        descriptor: Vec<u8>,
        reply: oneshot::Sender<Result<PeerKv, EngineError>>,
    },
    AllowDirectWrites {
        request: RequestId,
        reply: oneshot::Sender<bool>,
    },
    DirectLayerLanded {
        request: RequestId,
        layer: u32,
        blocks: Arc<[u32]>,
    },
    EndDirectWrites(RequestId),
    Abort(RequestId),
    Stats(oneshot::Sender<SchedulerStats>),
    KvEventsSince(u64, oneshot::Sender<Result<Vec<KvEventRecord>, Gap>>),
    KvSnapshot(oneshot::Sender<KvSnapshot>),
    Shutdown,
}

/// How `Engine::submit_export` exports a prompt's KV.
#[derive(Debug, Clone, Default)]
pub struct ExportSpec {
    /// Leading blocks the receiver already holds; not sent.
    pub first_block: usize,
    pub priority: i32,
    /// Write into this peer's pool (CUDA IPC) or send over this NCCL link instead of handing the layers over on
    /// the host.
    pub peer: Option<PeerExport>,
    /// Also hand over the logits of the prompt's last token.
    pub logits: bool,
}

/// A running export: its stream (ends with `FinishReason::Prefilled`), its layers, and the last token's logits when
/// asked for (the channel closes empty otherwise).
#[derive(Debug)]
pub struct Export {
    pub stream: GenerationStream,
    pub layers: mpsc::UnboundedReceiver<ExportedLayer>,
    pub logits: mpsc::UnboundedReceiver<Vec<f32>>,
}

/// The prefix cache's contents, current up to (excluding) event `next_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSnapshot {
    pub hashes: Vec<BlockHash>,
    pub next_seq: u64,
}

/// Prefix-cache events kept for subscribers that reconnect and resume by sequence number.
const KV_EVENT_LOG_CAPACITY: usize = 1 << 16;

/// Handle to a running engine. Dropping it stops the engine thread after its current step.
#[derive(Debug)]
pub struct Engine {
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    next_id: AtomicU64,
    limits: ModelLimits,
    tokenizer: Arc<Tokenizer>,
    kv_blocks: usize,
    block_size: usize,
    kv_shape: KvShape,
    kv_events: broadcast::Sender<KvEventRecord>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Submit { req, .. } => write!(f, "Submit({})", req.id),
            Command::SubmitRemote { req, .. } => write!(f, "SubmitRemote({})", req.id),
            Command::WriteRemoteKv { request, layer, .. } => write!(f, "WriteRemoteKv({request}, layer {layer})"),
            Command::FinishRemoteKv { request, .. } => write!(f, "FinishRemoteKv({request})"),
            Command::ExportKvPool(_) => write!(f, "ExportKvPool"),
            Command::OpenPeerKv { .. } => write!(f, "OpenPeerKv"),
            Command::KvLinkEndpoint(_) => write!(f, "KvLinkEndpoint"),
            Command::ReceiveKv { request, .. } => write!(f, "ReceiveKv({request})"),
            Command::AllowDirectWrites { request, .. } => write!(f, "AllowDirectWrites({request})"),
            Command::DirectLayerLanded { request, layer, .. } => {
                write!(f, "DirectLayerLanded({request}, layer {layer})")
            }
            Command::EndDirectWrites(request) => write!(f, "EndDirectWrites({request})"),
            Command::Abort(id) => write!(f, "Abort({id})"),
            Command::Stats(_) => write!(f, "Stats"),
            Command::KvEventsSince(seq, _) => write!(f, "KvEventsSince({seq})"),
            Command::KvSnapshot(_) => write!(f, "KvSnapshot"),
            Command::Shutdown => write!(f, "Shutdown"),
        }
    }
}

impl Engine {
    /// Starts the engine on the CPU backend, its KV pool sized by `config.kv_cache_bytes`.
    pub fn start(model: LlamaModel, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Result<Engine, EngineError> {
        let block_size = config.scheduler.block_size;
        if block_size == 0 {
            return Err(EngineError::invalid("block_size", "must be at least 1"));
        }
        let bytes_per_block = model.kv_shape(1, block_size).bytes_per_token() * block_size;
        let kv_blocks = kv_blocks_in(config.kv_cache_bytes, bytes_per_block, block_size)?;
        let backend = CpuBackend::new(model, kv_blocks, block_size);
        Self::start_backend(Box::new(backend), tokenizer, config.scheduler)
    }

    /// Starts the engine as rank 0 of the parallel group `comm` (the other ranks run `parallel::run_follower`):
    /// `model` is rank 0's part (`LlamaModel::tensor_parallel` or `pipeline_parallel`), and every rank's KV pool
    /// holds `config.kv_cache_bytes` of its share of the KV. `on_failure` runs once if the group breaks (see
    /// `ParallelBackend`).
    pub fn start_parallel(
        model: LlamaModel,
        comm: Arc<dyn cleave_comm::Communicator>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        heartbeat: std::time::Duration,
        on_failure: crate::parallel::GroupFailure,
    ) -> Result<Engine, EngineError> {
        let block_size = config.scheduler.block_size;
        if block_size == 0 {
            return Err(EngineError::invalid("block_size", "must be at least 1"));
        }
        let bytes_per_block = model.kv_shape(1, block_size).bytes_per_token() * block_size;
        let kv_blocks = kv_blocks_in(config.kv_cache_bytes, bytes_per_block, block_size)?;
        let backend = crate::parallel::ParallelBackend::new(model, comm, kv_blocks, block_size, heartbeat, on_failure)?;
        Self::start_backend(Box::new(backend), tokenizer, config.scheduler)
    }

    /// Starts the engine as rank 0 of the parallel group `comm` with `local` as this rank's backend (a GPU shard,
    /// say; the other ranks run `parallel::run_member`). See `ParallelBackend::lead`.
    pub fn start_group(
        local: Box<dyn crate::parallel::GroupMember>,
        comm: Arc<dyn cleave_comm::Communicator>,
        tokenizer: Arc<Tokenizer>,
        scheduler: SchedulerConfig,
        heartbeat: std::time::Duration,
        on_failure: crate::parallel::GroupFailure,
    ) -> Result<Engine, EngineError> {
        let backend = crate::parallel::ParallelBackend::lead(local, comm, heartbeat, on_failure)?;
        Self::start_backend(Box::new(backend), tokenizer, scheduler)
    }

    /// Starts the engine thread over a backend whose KV pool is already allocated; the scheduler's block size
    /// must be the pool's.
    pub fn start_backend(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        scheduler: SchedulerConfig,
    ) -> Result<Engine, EngineError> {
        let kv_shape = backend.kv_shape();
        let block_size = kv_shape.block_size;
        if scheduler.block_size != block_size {
            return Err(EngineError::invalid(
                "block_size",
                format!(
                    "the scheduler uses {}-token blocks, the KV pool {block_size}",
                    scheduler.block_size
                ),
            ));
        }
        let kv_blocks = kv_shape.n_blocks;
        let limits = ModelLimits {
            max_context: backend.model_config().max_context,
            vocab_size: backend.model_config().vocab_size,
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let scheduler = Scheduler::new(scheduler, kv_blocks, tokenizer.clone(), limits.max_context);
        let (kv_events, _) = broadcast::channel(4096);
        let events = kv_events.clone();
        let thread = std::thread::Builder::new()
            .name("cleave-engine".into())
            .spawn(move || run(backend, scheduler, rx, events))
            .map_err(|e| EngineError::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands,
            thread: Some(thread),
            next_id: AtomicU64::new(1),
            limits,
            tokenizer,
            kv_blocks,
            block_size,
            kv_shape,
            kv_events,
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn limits(&self) -> ModelLimits {
        self.limits
    }

    pub fn kv_blocks(&self) -> usize {
        self.kv_blocks
    }

    /// Validates and queues a request; its output arrives on the returned stream.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        spec: &SamplingSpec,
        priority: i32,
    ) -> Result<GenerationStream, EngineError> {
        let (req, stream, tx) = self.prepare(prompt, spec, priority, RequestKind::Generate)?;
        self.commands
            .send(Command::Submit { req, tx })
            .map_err(|_| EngineError::Unavailable)?;
        Ok(stream)
    }

    /// Like `submit`, for a request whose prompt KV a prefill worker will compute: returns where that KV must be
    /// written (`write_remote_kv`, then `finish_remote_kv`), or no target when remote prefill cannot help (the
    /// prompt is cached, no blocks are free now, `n > 1`) — the request is then prefilled here as usual.
    pub async fn submit_remote(
        &self,
        prompt: Vec<u32>,
        spec: &SamplingSpec,
        priority: i32,
    ) -> Result<(GenerationStream, Option<RemoteKvTarget>), EngineError> {
        let (req, stream, tx) = self.prepare(prompt, spec, priority, RequestKind::Generate)?;
        let (reply, target) = oneshot::channel();
        self.commands
            .send(Command::SubmitRemote { req, tx, reply })
            .map_err(|_| EngineError::Unavailable)?;
        // A refused request has no target; its error arrives on the stream.
        Ok((stream, target.await.unwrap_or(None)))
    }

    /// Queues a prefill-only request: computes `prompt`'s KV and sends each layer's blocks from `first_block` on to
    /// the returned receiver, during the prompt's last chunk — or, with `peer`, queues their copy straight into the
    /// peer's pool and sends the copy to wait for. The stream ends with `FinishReason::Prefilled` and the usage (how
    /// many prompt tokens came from this engine's prefix cache).
    pub fn submit_export(&self, prompt: Vec<u32>, spec: ExportSpec) -> Result<Export, EngineError> {
        let ExportSpec {
            first_block,
            priority,
            peer,
            logits: want_logits,
        } = spec;
        let blocks = prompt.len().div_ceil(self.block_size);
        if first_block >= blocks {
            return Err(EngineError::invalid(
                "first_block",
                format!("{first_block} leaves nothing to send of a {blocks}-block prompt"),
            ));
        }
        let spec = SamplingSpec {
            max_tokens: Some(1),
            ..SamplingSpec::default()
        };
        let (layers_tx, layers) = mpsc::unbounded_channel();
        let (logits_tx, logits) = mpsc::unbounded_channel();
        let kind = RequestKind::ExportKv(KvExport {
            first_block,
            layers: layers_tx,
            peer,
            logits: want_logits.then_some(logits_tx),
        });
        let (req, stream, tx) = self.prepare(prompt, &spec, priority, kind)?;
        self.commands
            .send(Command::Submit { req, tx })
            .map_err(|_| EngineError::Unavailable)?;
        Ok(Export { stream, layers, logits })
    }

    /// Tokens per KV block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The KV pool's shape: what a KV transfer to or from this engine must match.
    pub fn kv_shape(&self) -> KvShape {
        self.kv_shape
    }

    fn prepare(
        &self,
        prompt: Vec<u32>,
        spec: &SamplingSpec,
        priority: i32,
        kind: RequestKind,
    ) -> Result<(NewRequest, GenerationStream, OutputSender), EngineError> {
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.limits.vocab_size) {
            return Err(EngineError::invalid(
                "prompt",
                format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    self.limits.vocab_size
                ),
            ));
        }
        let sampling = spec.validate(prompt.len(), self.limits)?;
        let n = sampling.n;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let req = NewRequest {
            id,
            prompt,
            sampling,
            priority,
            kind,
        };
        let stream = GenerationStream {
            id,
            rx,
            commands: self.commands.clone(),
            open_choices: n,
            closed: false,
        };
        Ok((req, stream, tx))
    }

    /// Aborts a request by id (its stream, if still held, ends with `Cancelled`).
    pub fn abort(&self, id: RequestId) {
        // A stopped engine has nothing left to abort.
        let _ = self.commands.send(Command::Abort(id));
    }

    pub async fn stats(&self) -> Result<SchedulerStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats(tx))
            .map_err(|_| EngineError::Unavailable)?;
        rx.await.map_err(|_| EngineError::Unavailable)
    }

    /// Live prefix-cache events from now on. A receiver that lags loses events (it sees `Lagged`) and must
    /// resume through `kv_events_since` or rebuild from `kv_snapshot`.
    pub fn subscribe_kv_events(&self) -> broadcast::Receiver<KvEventRecord> {
        self.kv_events.subscribe()
    }

    /// Recorded events with `seq >= from`, or `Gap` if they are no longer held.
    pub async fn kv_events_since(&self, from: u64) -> Result<Result<Vec<KvEventRecord>, Gap>, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::KvEventsSince(from, tx))
            .map_err(|_| EngineError::Unavailable)?;
        rx.await.map_err(|_| EngineError::Unavailable)
    }

    pub async fn kv_snapshot(&self) -> Result<KvSnapshot, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::KvSnapshot(tx))
            .map_err(|_| EngineError::Unavailable)?;
        rx.await.map_err(|_| EngineError::Unavailable)
    }

    /// `stats` for callers outside an async runtime.
    pub fn blocking_stats(&self) -> Result<SchedulerStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats(tx))
            .map_err(|_| EngineError::Unavailable)?;
        rx.blocking_recv().map_err(|_| EngineError::Unavailable)
    }
}

impl Engine {
    /// Stops the engine thread now, even while other handles to this engine remain (they then see
    /// `Unavailable`); the backend is dropped with it, which ends a tensor-parallel group.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            // A panicked engine thread has already dropped every stream's sender; nothing more to report here.
            let _ = thread.join();
        }
    }
}

/// The outputs of one request. Dropping it before the request finishes aborts the request.
#[derive(Debug)]
pub struct GenerationStream {
    id: RequestId,
    rx: mpsc::UnboundedReceiver<Result<SeqOutput, EngineError>>,
    commands: mpsc::UnboundedSender<Command>,
    open_choices: u32,
    closed: bool,
}

impl GenerationStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next output; `None` once every choice has finished.
    pub async fn next(&mut self) -> Option<Result<SeqOutput, EngineError>> {
        let item = if self.closed { None } else { self.rx.recv().await };
        self.track(item)
    }

    /// `next` for callers outside an async runtime.
    pub fn blocking_next(&mut self) -> Option<Result<SeqOutput, EngineError>> {
        let item = if self.closed { None } else { self.rx.blocking_recv() };
        self.track(item)
    }

    fn track(&mut self, item: Option<Result<SeqOutput, EngineError>>) -> Option<Result<SeqOutput, EngineError>> {
        match item {
            Some(Ok(out)) => {
                if out.finish.is_some() {
                    self.open_choices = self.open_choices.saturating_sub(1);
                    self.closed = self.open_choices == 0;
                }
                Some(Ok(out))
            }
            Some(Err(e)) => {
                self.closed = true;
                Some(Err(e))
            }
            // The engine went away mid-request: say so once rather than ending the stream as if complete.
            None if !self.closed => {
                self.closed = true;
                Some(Err(EngineError::Unavailable))
            }
            None => None,
        }
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

struct Live {
    tx: OutputSender,
    open_choices: u32,
}

/// What the engine thread owns besides the model, the cache and the scheduler.
struct EngineState {
    scheduler: Scheduler,
    backend: Box<dyn Backend>,
    live: HashMap<RequestId, Live>,
    kv_log: KvEventLog,
    kv_events: broadcast::Sender<KvEventRecord>,
}

fn run(
    backend: Box<dyn Backend>,
    scheduler: Scheduler,
    mut rx: mpsc::UnboundedReceiver<Command>,
    kv_events: broadcast::Sender<KvEventRecord>,
) {
    let mut state = EngineState {
        scheduler,
        backend,
        live: HashMap::new(),
        kv_log: KvEventLog::new(KV_EVENT_LOG_CAPACITY),
        kv_events,
    };
    loop {
        if !state.scheduler.has_work() {
            match rx.blocking_recv() {
                Some(cmd) => {
                    if !handle(cmd, &mut state) {
                        return;
                    }
                }
                None => return,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            if !handle(cmd, &mut state) {
                return;
            }
        }
        if !state.scheduler.has_work() {
            continue;
        }
        let outputs = match state.scheduler.step(state.backend.as_mut()) {
            Ok(outputs) => outputs,
            Err(error) => {
                // The device failed mid-step: no request's state can be trusted, so every request ends with the
                // error and frees its blocks; new requests still get a try.
                tracing::error!(%error, "engine step failed; failing every request");
                for (request, entry) in state.live.drain() {
                    state.scheduler.abort(request);
                    let _ = entry
                        .tx
                        .send(Err(EngineError::Internal(format!("the device failed: {error}"))));
                }
                continue;
            }
        };
        for event in state.scheduler.drain_kv_events() {
            let record = state.kv_log.push(event);
            // No subscriber is fine: the log keeps the record for later resumption.
            let _ = state.kv_events.send(record);
        }
        for out in outputs {
            let Some(entry) = state.live.get_mut(&out.request) else {
                continue;
            };
            let request = out.request;
            let finished = out.finish.is_some();
            if entry.tx.send(Ok(out)).is_err() {
                // The receiver is gone: the client left. Free its blocks now.
                state.scheduler.abort(request);
                state.live.remove(&request);
                continue;
            }
            if finished {
                entry.open_choices -= 1;
                if entry.open_choices == 0 {
                    state.live.remove(&request);
                }
            }
        }
    }
}

/// Applies one command; `false` means shut down.
fn handle(cmd: Command, state: &mut EngineState) -> bool {
    let EngineState {
        scheduler,
        backend,
        live,
        kv_log,
        ..
    } = state;
    match cmd {
        Command::Submit { req, tx } => {
            let (id, n) = (req.id, req.sampling.n);
            match scheduler.add(req) {
                Ok(()) => {
                    live.insert(id, Live { tx, open_choices: n });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
        Command::SubmitRemote { req, tx, reply } => {
            let (id, n) = (req.id, req.sampling.n);
            match scheduler.add_remote(req) {
                Ok(target) => {
                    live.insert(id, Live { tx, open_choices: n });
                    let _ = reply.send(target);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
        Command::WriteRemoteKv {
            request,
            layer,
            blocks,
            keys,
            values,
        } => {
            if let Err(error) = scheduler.write_remote_layer(request, layer, &blocks, &keys, &values, backend.as_mut())
            {
                // The request finishes without this layer and falls back to local prefill.
                tracing::warn!(request, layer, %error, "remote KV layer refused");
            }
        }
        Command::FinishRemoteKv { request, mut result } => {
            let vocab = backend.model_config().vocab_size;
            if let Ok(RemoteDone {
                logits: logits @ Some(_),
                ..
            }) = &mut result
                && logits.as_ref().is_some_and(|row| row.len() != vocab)
            {
                tracing::warn!(
                    request,
                    "the prefill worker's logits have another vocabulary; recomputing the last token"
                );
                *logits = None;
            }
            scheduler.finish_remote(request, result);
        }
        Command::ExportKvPool(reply) => {
            let _ = reply.send(backend.export_kv_pool());
        }
        Command::OpenPeerKv { descriptor, reply } => {
            let _ = reply.send(backend.open_peer_kv(&descriptor));
        }
        Command::KvLinkEndpoint(reply) => {
            let _ = reply.send(backend.kv_link_endpoint());
        }
        Command::ReceiveKv {
            request,
            link,
            blocks,
            reply,
        } => {
            let n_layers = backend.kv_shape().n_layers;
            let received = scheduler
                .allow_direct_writes_into(request, &blocks, n_layers)
                .map_err(|e| EngineError::invalid("blocks", e.to_string()))
                .and_then(|()| backend.receive_kv(&link, &blocks));
            let _ = reply.send(received);
        }
        Command::AllowDirectWrites { request, reply } => {
            let _ = reply.send(scheduler.allow_direct_writes(request));
        }
        Command::DirectLayerLanded { request, layer, blocks } => {
            let n_layers = backend.kv_shape().n_layers;
            if let Err(error) = scheduler.direct_layer_landed(request, layer, &blocks, n_layers) {
                tracing::warn!(request, layer, %error, "remote KV layer refused");
            }
        }
        Command::EndDirectWrites(request) => scheduler.end_direct_writes(request),
        Command::Abort(id) => {
            scheduler.abort(id);
            if let Some(entry) = live.remove(&id) {
                let _ = entry.tx.send(Err(EngineError::Cancelled));
            }
        }
        Command::Stats(reply) => {
            let _ = reply.send(scheduler.stats());
        }
        Command::KvEventsSince(from, reply) => {
            let _ = reply.send(kv_log.since(from));
        }
        Command::KvSnapshot(reply) => {
            let _ = reply.send(KvSnapshot {
                hashes: scheduler.cached_hashes(),
                next_seq: kv_log.next_seq(),
            });
        }
        Command::Shutdown => return false,
    }
    true
}

/// How many `block_size`-token blocks of `bytes_per_block` bytes fit in `bytes`; at least one, or an error naming
/// `kv_cache_bytes`.
pub fn kv_blocks_in(bytes: usize, bytes_per_block: usize, block_size: usize) -> Result<usize, EngineError> {
    let blocks = bytes / bytes_per_block.max(1);
    if blocks == 0 {
        return Err(EngineError::invalid(
            "kv_cache_bytes",
            format!("{bytes} bytes hold no {block_size}-token block ({bytes_per_block} bytes)"),
        ));
    }
    Ok(blocks)
}
