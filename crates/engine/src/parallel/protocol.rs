//! What a parallel group's leader tells its followers: one message per backend call, as u32 words over the
//! group's communicator (rank 0 to each follower): a `[kind, payload length]` header, then the payload.
//!
//! Invariant: the leader sends an operation to every follower before running its own part, so every rank enters
//! the operation's collectives in the same order. Followers check every length they decode and fail with an
//! error, never a panic, on a malformed message.

use cleave_comm::Communicator;

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv::BlockId;
use crate::model::SeqChunk;

/// One leader-to-follower operation.
#[derive(Debug, PartialEq)]
pub(super) enum Op {
    /// Allocate the KV pool: the leader sized it.
    Init {
        n_blocks: u32,
        block_size: u32,
    },
    /// Run a forward pass over these chunks; `gather`: gather each layer's KV for a transfer.
    Forward {
        gather: bool,
        chunks: Vec<OwnedChunk>,
    },
    CopyBlock {
        src: BlockId,
        dst: BlockId,
    },
    /// Keys and values of one block of one layer, every KV head (each rank keeps its own).
    WriteBlockLayer {
        layer: u32,
        block: BlockId,
        keys: Vec<f32>,
        values: Vec<f32>,
    },
    /// Join the device-level group (NCCL) with this id, as every rank does at once.
    JoinDevice {
        id: Vec<u8>,
    },
    /// Nothing to do: the leader is alive and idle.
    Heartbeat,
    /// The leader is shutting down; followers exit cleanly.
    Shutdown,
}

#[derive(Debug, PartialEq)]
pub(super) struct OwnedChunk {
    pub tokens: Vec<u32>,
    pub start_pos: usize,
    pub blocks: Vec<BlockId>,
    pub want_logits: bool,
}

impl OwnedChunk {
    pub fn as_chunk(&self) -> SeqChunk<'_> {
        SeqChunk {
            tokens: &self.tokens,
            start_pos: self.start_pos,
            blocks: &self.blocks,
            want_logits: self.want_logits,
        }
    }
}

const INIT: u32 = 1;
const FORWARD: u32 = 2;
const COPY_BLOCK: u32 = 3;
const WRITE_BLOCK_LAYER: u32 = 4;
const HEARTBEAT: u32 = 5;
const SHUTDOWN: u32 = 6;
const JOIN_DEVICE: u32 = 7;

/// Encodes a forward pass over borrowed chunks (what the leader holds) without copying them into `OwnedChunk`s.
pub(super) fn encode_forward(gather: bool, chunks: &[SeqChunk<'_>]) -> (u32, Vec<u32>) {
    let mut words = vec![u32::from(gather), chunks.len() as u32];
    for c in chunks {
        words.extend([
            c.start_pos as u32,
            u32::from(c.want_logits),
            c.tokens.len() as u32,
            c.blocks.len() as u32,
        ]);
        words.extend_from_slice(c.tokens);
        words.extend_from_slice(c.blocks);
    }
    (FORWARD, words)
}

impl Op {
    pub fn encode(&self) -> (u32, Vec<u32>) {
        match self {
            Op::Init { n_blocks, block_size } => (INIT, vec![*n_blocks, *block_size]),
            Op::Forward { gather, chunks } => {
                let borrowed: Vec<SeqChunk<'_>> = chunks.iter().map(OwnedChunk::as_chunk).collect();
                encode_forward(*gather, &borrowed)
            }
            Op::CopyBlock { src, dst } => (COPY_BLOCK, vec![*src, *dst]),
            Op::WriteBlockLayer {
                layer,
                block,
                keys,
                values,
            } => {
                let mut words = vec![*layer, *block, keys.len() as u32];
                words.extend(keys.iter().chain(values).map(|x| x.to_bits()));
                (WRITE_BLOCK_LAYER, words)
            }
            Op::JoinDevice { id } => {
                let mut words = vec![id.len() as u32];
                words.extend(id.iter().map(|&b| u32::from(b)));
                (JOIN_DEVICE, words)
            }
            Op::Heartbeat => (HEARTBEAT, Vec::new()),
            Op::Shutdown => (SHUTDOWN, Vec::new()),
        }
    }

    pub fn decode(kind: u32, words: &[u32]) -> Result<Op, EngineError> {
        let mut r = Reader { words, at: 0 };
        let op = match kind {
            INIT => Op::Init {
                n_blocks: r.word()?,
                block_size: r.word()?,
            },
            FORWARD => {
                let gather = r.word()? != 0;
                let n = r.word()? as usize;
                let mut chunks = Vec::with_capacity(n.min(words.len()));
                for _ in 0..n {
                    let (start_pos, want_logits) = (r.word()? as usize, r.word()? != 0);
                    let (n_tokens, n_blocks) = (r.word()? as usize, r.word()? as usize);
                    chunks.push(OwnedChunk {
                        tokens: r.take(n_tokens)?.to_vec(),
                        start_pos,
                        blocks: r.take(n_blocks)?.to_vec(),
                        want_logits,
                    });
                }
                Op::Forward { gather, chunks }
            }
            COPY_BLOCK => Op::CopyBlock {
                src: r.word()?,
                dst: r.word()?,
            },
            WRITE_BLOCK_LAYER => {
                let (layer, block, n) = (r.word()?, r.word()?, r.word()? as usize);
                let floats = |w: &[u32]| w.iter().map(|&x| f32::from_bits(x)).collect();
                Op::WriteBlockLayer {
                    layer,
                    block,
                    keys: floats(r.take(n)?),
                    values: floats(r.take(n)?),
                }
            }
            JOIN_DEVICE => {
                let n = r.word()? as usize;
                let id = r
                    .take(n)?
                    .iter()
                    .map(|&w| u8::try_from(w))
                    .collect::<Result<Vec<u8>, _>>();
                Op::JoinDevice {
                    id: id.map_err(|_| malformed("a device group id byte above 255".to_string()))?,
                }
            }
            HEARTBEAT => Op::Heartbeat,
            SHUTDOWN => Op::Shutdown,
            other => return Err(malformed(format!("unknown operation {other}"))),
        };
        if r.at != words.len() {
            return Err(malformed(format!(
                "{} words left over after operation {kind}",
                words.len() - r.at
            )));
        }
        Ok(op)
    }
}

/// Sends an encoded operation from the leader to every follower.
pub(super) fn broadcast(comm: &dyn Communicator, (kind, words): &(u32, Vec<u32>)) -> Result<(), EngineError> {
    let header = [*kind, words.len() as u32];
    for follower in 1..comm.world_size() {
        comm.send(header.as_slice().into(), follower)?;
        if !words.is_empty() {
            comm.send(words.as_slice().into(), follower)?;
        }
    }
    Ok(())
}

/// Receives the leader's next operation.
pub(super) fn receive(comm: &dyn Communicator) -> Result<Op, EngineError> {
    let mut header = [0u32; 2];
    comm.recv(header.as_mut_slice().into(), 0)?;
    let mut words = vec![0u32; header[1] as usize];
    if !words.is_empty() {
        comm.recv(words.as_mut_slice().into(), 0)?;
    }
    Op::decode(header[0], &words)
}

/// Every rank checks that all ranks loaded the same model for the same group size (an all-gather of a few
/// shape numbers), so a rank started with another model fails at once on every rank, naming both.
pub(super) fn agree_on_model(config: &ModelConfig, comm: &dyn Communicator) -> Result<(), EngineError> {
    let mine = [
        config.n_layers,
        config.hidden,
        config.n_heads,
        config.n_kv_heads,
        config.head_dim,
        config.intermediate,
        config.vocab_size,
        comm.world_size(),
    ]
    .map(|n| n as u32);
    let mut all = vec![0u32; mine.len() * comm.world_size()];
    comm.all_gather(mine.as_slice().into(), all.as_mut_slice().into())?;
    for (rank, theirs) in all.chunks_exact(mine.len()).enumerate() {
        if theirs != mine {
            return Err(EngineError::invalid(
                "model",
                format!(
                    "rank {rank} of the tensor-parallel group loaded another model (layers, hidden, heads, KV heads, \
                     head dim, intermediate, vocabulary, group size: {theirs:?}; rank {} has {mine:?})",
                    comm.rank()
                ),
            ));
        }
    }
    Ok(())
}

struct Reader<'a> {
    words: &'a [u32],
    at: usize,
}

impl<'a> Reader<'a> {
    fn word(&mut self) -> Result<u32, EngineError> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, n: usize) -> Result<&'a [u32], EngineError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.words.len());
        let Some(end) = end else {
            return Err(malformed(format!(
                "the message ends at word {} but needs {n} more after word {}",
                self.words.len(),
                self.at
            )));
        };
        let slice = &self.words[self.at..end];
        self.at = end;
        Ok(slice)
    }
}

fn malformed(reason: String) -> EngineError {
    EngineError::Internal(format!("malformed tensor-parallel message from the leader: {reason}"))
}

#[cfg(test)]
mod tests;
