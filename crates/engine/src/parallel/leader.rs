//! The leader of a parallel group (rank 0; any kind, CPU or GPU members): a [`Backend`] whose every call is first
//! sent to the followers, then run on this rank's part, the collectives inside the forward pass keeping the ranks in
//! step.
//!
//! Invariant: one group operation at a time — backend calls and heartbeats share one session lock, so a
//! heartbeat never lands between an operation's message and its collectives. A communication failure is
//! permanent (the communicator aborts): it fails the call, and `on_failure` runs once so the process can leave
//! the cluster instead of serving errors.
//! Cost: per call, one small message to each follower; per layer of a forward pass, two all-reduces of
//! `[tokens, hidden]` f32 (and one all-gather of the batch's KV when a transfer reads it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cleave_comm::Communicator;

use super::GroupMember;
use super::protocol::{self, Op, encode_forward};
use crate::backend::{Backend, CpuBackend, KvBlockReader};
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv::{BlockId, KvShape};
use crate::model::{LlamaModel, SeqChunk};

/// Called once, from the engine or heartbeat thread, when the group can no longer work.
pub type GroupFailure = Arc<dyn Fn(&EngineError) + Send + Sync>;

/// Rank 0 of a parallel group, as the engine's backend. See the module docs.
pub struct ParallelBackend {
    local: Box<dyn GroupMember>,
    link: Arc<Link>,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ParallelBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelBackend")
            .field("comm", &self.link.comm)
            .finish_non_exhaustive()
    }
}

struct Link {
    comm: Arc<dyn Communicator>,
    /// When the last message went to the followers; the lock is the group's session lock.
    session: Mutex<Instant>,
    stopping: AtomicBool,
    failed: Once,
    on_failure: GroupFailure,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Instant> {
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `op` to the followers under the held session, reporting a failure.
    fn send(&self, session: &mut Instant, op: &(u32, Vec<u32>)) -> Result<(), EngineError> {
        *session = Instant::now();
        self.check(protocol::broadcast(self.comm.as_ref(), op))
    }

    fn check<T>(&self, result: Result<T, EngineError>) -> Result<T, EngineError> {
        if let Err(error) = &result
            && matches!(error, EngineError::Group(_))
        {
            self.failed.call_once(|| {
                tracing::error!(%error, "the tensor-parallel group failed");
                (self.on_failure)(error);
            });
        }
        result
    }
}

impl ParallelBackend {
    /// Leads the group `model` was sharded for (`model.tensor_parallel(comm)` with `comm.rank() == 0`): checks
    /// that every rank loaded the same model, has each follower allocate a pool of `n_blocks` blocks of
    /// `block_size` tokens (each rank spends the same memory on its share of the KV heads), and sends a heartbeat
    /// whenever the group has been idle for `heartbeat` (keep it well under the communicator's operation timeout,
    /// which is how long followers wait for a message).
    pub fn new(
        model: LlamaModel,
        comm: Arc<dyn Communicator>,
        n_blocks: usize,
        block_size: usize,
        heartbeat: Duration,
        on_failure: GroupFailure,
    ) -> Result<Self, EngineError> {
        let world = model.group_rank().map_or(1, |(_, world)| world);
        if comm.rank() != 0 || world != comm.world_size() {
            return Err(EngineError::invalid(
                "parallel",
                format!(
                    "the leader must be rank 0 of a model split for its group (rank {} of {}, model for {world})",
                    comm.rank(),
                    comm.world_size(),
                ),
            ));
        }
        Self::lead(
            Box::new(CpuBackend::new(model, n_blocks, block_size)),
            comm,
            heartbeat,
            on_failure,
        )
    }

    /// Leads the group with `local` as rank 0's backend (its part of the model and its KV pool, already
    /// allocated): checks that every rank loaded the same model shape, has each follower allocate as many blocks,
    /// forms the device-level group when `local` has one (NCCL: the id goes to every follower, then all join), and
    /// starts the heartbeat (see `new`).
    pub fn lead(
        mut local: Box<dyn GroupMember>,
        comm: Arc<dyn Communicator>,
        heartbeat: Duration,
        on_failure: GroupFailure,
    ) -> Result<Self, EngineError> {
        protocol::agree_on_model(local.model_config(), comm.as_ref())?;
        let link = Arc::new(Link {
            comm,
            session: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
            failed: Once::new(),
            on_failure,
        });
        let shape = local.kv_shape();
        let init = Op::Init {
            n_blocks: shape.n_blocks as u32,
            block_size: shape.block_size as u32,
        };
        link.send(&mut link.lock(), &init.encode())?;
        if let Some(id) = local.device_group_id()? {
            link.send(&mut link.lock(), &Op::JoinDevice { id: id.clone() }.encode())?;
            let world = link.comm.world_size();
            link.check(local.join_device_group(0, world, &id))?;
        }
        let beats = link.clone();
        let heartbeat = std::thread::Builder::new()
            .name("cleave-tp-heartbeat".into())
            .spawn(move || beat(&beats, heartbeat))
            .map_err(|e| EngineError::Internal(format!("cannot start the heartbeat thread: {e}")))?;
        Ok(Self {
            local,
            link,
            heartbeat: Some(heartbeat),
        })
    }
}

/// Sends a heartbeat whenever the group has been idle for `every`, until the backend stops or the group fails.
fn beat(link: &Link, every: Duration) {
    let tick = (every / 4).max(Duration::from_millis(10));
    while !link.stopping.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let mut session = link.lock();
        if link.stopping.load(Ordering::Acquire) {
            return;
        }
        if session.elapsed() >= every && link.send(&mut session, &Op::Heartbeat.encode()).is_err() {
            return;
        }
    }
}

impl Drop for ParallelBackend {
    fn drop(&mut self) {
        self.link.stopping.store(true, Ordering::Release);
        {
            let mut session = self.link.lock();
            // Followers exit on this; a failed group has nobody to tell.
            *session = Instant::now();
            let _ = protocol::broadcast(self.link.comm.as_ref(), &Op::Shutdown.encode());
        }
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.join();
        }
    }
}

impl Backend for ParallelBackend {
    fn model_config(&self) -> &ModelConfig {
        self.local.model_config()
    }

    /// The pool as the engine sees it: every KV head and layer (KV crosses the backend interface whole).
    fn kv_shape(&self) -> KvShape {
        self.local.whole_kv_shape()
    }

    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        layer_done: &mut dyn FnMut(usize, &dyn KvBlockReader),
    ) -> Result<Vec<f32>, EngineError> {
        self.local.check_kv_read()?;
        let mut session = self.link.lock();
        self.link.send(&mut session, &encode_forward(true, chunks))?;
        self.link.check(self.local.forward(chunks, layer_done))
    }

    fn forward_plain(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<f32>, EngineError> {
        let mut session = self.link.lock();
        self.link.send(&mut session, &encode_forward(false, chunks))?;
        self.link.check(self.local.forward_plain(chunks))
    }

    fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<(), EngineError> {
        let mut session = self.link.lock();
        self.link.send(&mut session, &Op::CopyBlock { src, dst }.encode())?;
        self.local.copy_block(src, dst)
    }

    fn write_block_layer(
        &mut self,
        layer: usize,
        block: BlockId,
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), EngineError> {
        let whole = self.kv_shape().block_floats();
        if keys.len() != whole || values.len() != whole {
            return Err(EngineError::invalid(
                "kv",
                format!(
                    "a block layer holds {whole} keys and as many values; got {} and {}",
                    keys.len(),
                    values.len()
                ),
            ));
        }
        let op = Op::WriteBlockLayer {
            layer: layer as u32,
            block,
            keys: keys.to_vec(),
            values: values.to_vec(),
        };
        let mut session = self.link.lock();
        self.link.send(&mut session, &op.encode())?;
        match self.local.local_block_layer(layer, keys, values) {
            Some((layer, keys, values)) => self.local.write_block_layer(layer, block, keys, values),
            None => Ok(()),
        }
    }
}
