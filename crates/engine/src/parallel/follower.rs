//! A follower of a parallel group (rank ≥ 1): replays the leader's operations on this rank's part of the model.

use std::sync::Arc;

use cleave_comm::Communicator;

use super::GroupMember;
use super::protocol::{self, Op, OwnedChunk};
use crate::backend::CpuBackend;
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::model::{LlamaModel, SeqChunk};

/// Runs this rank until the leader shuts the group down (`Ok`) or the group fails (the leader died, a message was
/// malformed, another rank loaded another model). Blocks the calling thread; `model` must be sharded for `comm`'s
/// rank (`model.tensor_parallel(comm)` or `model.pipeline_parallel(comm, ..)`).
pub fn run_follower(model: LlamaModel, comm: Arc<dyn Communicator>) -> Result<(), EngineError> {
    if comm.rank() == 0 || model.group_rank() != Some((comm.rank(), comm.world_size())) {
        return Err(EngineError::invalid(
            "parallel",
            format!(
                "a follower runs a rank above 0 with the model split for it (rank {} of {})",
                comm.rank(),
                comm.world_size()
            ),
        ));
    }
    let config = model.config().clone();
    run_member(&config, comm, |n_blocks, block_size| {
        Ok(Box::new(CpuBackend::new(model, n_blocks, block_size)))
    })
}

/// [`run_follower`] for any backend: `config` is this rank's model shape (what the ranks compare), and
/// `make(n_blocks, block_size)` builds this rank's backend once the leader has sized the pool (a pool of at least
/// `n_blocks` blocks).
pub fn run_member(
    config: &ModelConfig,
    comm: Arc<dyn Communicator>,
    make: impl FnOnce(usize, usize) -> Result<Box<dyn GroupMember>, EngineError>,
) -> Result<(), EngineError> {
    protocol::agree_on_model(config, comm.as_ref())?;
    let (n_blocks, block_size) = match protocol::receive(comm.as_ref())? {
        Op::Init { n_blocks, block_size } => (n_blocks as usize, block_size as usize),
        other => {
            return Err(EngineError::Internal(format!(
                "the leader's first message is {other:?}, not the pool size"
            )));
        }
    };
    let mut backend = make(n_blocks, block_size)?;
    if backend.kv_shape().n_blocks < n_blocks {
        return Err(EngineError::ResourceExhausted(format!(
            "rank {} holds {} KV blocks, fewer than the leader's {n_blocks}",
            comm.rank(),
            backend.kv_shape().n_blocks
        )));
    }
    tracing::info!(rank = comm.rank(), n_blocks, "parallel group follower ready");
    loop {
        match protocol::receive(comm.as_ref())? {
            Op::Forward { gather, chunks } => {
                let chunks: Vec<SeqChunk<'_>> = chunks.iter().map(OwnedChunk::as_chunk).collect();
                check_blocks(&chunks, n_blocks)?;
                if gather {
                    backend.forward(&chunks, &mut |_, _| {})?;
                } else {
                    backend.forward_plain(&chunks)?;
                }
            }
            Op::CopyBlock { src, dst } => {
                check_block(src, n_blocks)?;
                check_block(dst, n_blocks)?;
                backend.copy_block(src, dst)?;
            }
            Op::WriteBlockLayer {
                layer,
                block,
                keys,
                values,
            } => {
                check_block(block, n_blocks)?;
                let whole = backend.whole_kv_shape().block_floats();
                if keys.len() != whole || values.len() != whole {
                    return Err(EngineError::Internal(format!(
                        "the leader sent a block layer of {} keys and {} values; a whole one holds {whole}",
                        keys.len(),
                        values.len()
                    )));
                }
                if let Some((layer, k, v)) = backend.local_block_layer(layer as usize, &keys, &values) {
                    backend.write_block_layer(layer, block, k, v)?;
                }
            }
            Op::JoinDevice { id } => backend.join_device_group(comm.rank(), comm.world_size(), &id)?,
            Op::Heartbeat => {}
            Op::Shutdown => {
                tracing::info!(rank = comm.rank(), "the leader shut the group down");
                return Ok(());
            }
            Op::Init { .. } => return Err(EngineError::Internal("the leader sent the pool size twice".into())),
        }
    }
}

fn check_blocks(chunks: &[SeqChunk<'_>], n_blocks: usize) -> Result<(), EngineError> {
    chunks
        .iter()
        .flat_map(|c| c.blocks)
        .try_for_each(|&b| check_block(b, n_blocks))
}

fn check_block(block: u32, n_blocks: usize) -> Result<(), EngineError> {
    if (block as usize) < n_blocks {
        Ok(())
    } else {
        Err(EngineError::Internal(format!(
            "the leader named block {block} of a {n_blocks}-block pool"
        )))
    }
}
