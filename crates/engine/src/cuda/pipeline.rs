//! One pipeline stage's part of a forward pass on the GPU: the batch cut into micro-batches (the CPU model's
//! `micro_batches`), each received from the stage before (or embedded, on the first), run through this stage's
//! layers and sent on (or turned into logits, on the last) — all queued on the stream, so stage s works on piece
//! i + 1 while stage s + 1 works on piece i. The last stage collects every piece's logits rows in one buffer and
//! sends it to the first, whose caller reads them.
//!
//! Every message is an NCCL send/recv on the compute stream; the stages agree on the pieces because each cuts the
//! same batch the same way.

use super::forward::{DeviceBatch, read_logits, run_pass};
use super::{CudaBackend, CudaError};
use crate::model::{SeqChunk, micro_batches};

impl CudaBackend {
    /// This stage's part of `chunks` (see the module note); the logits on the first stage, none on the others.
    pub(super) fn forward_stage(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<f32>, CudaError> {
        let Some(stage) = self.stage.clone() else {
            return Err(CudaError::Nccl(
                "a pipeline pass on a backend that is no stage".to_owned(),
            ));
        };
        let stream = self.stream.clone();
        stream.context().bind_to_thread()?;
        let block_size = self.kv.shape().block_size;
        let mut pieces = Vec::new();
        for piece in micro_batches(chunks, stage.micro_batches) {
            let uploaded = DeviceBatch::upload(&stream, &self.config, block_size, &piece)?;
            if uploaded.n_tokens() > 0 {
                pieces.push(uploaded);
            }
        }
        let rows = pieces.iter().map(|p| p.n_logits).sum::<usize>();
        let most_tokens = pieces.iter().map(DeviceBatch::n_tokens).max().unwrap_or(0);
        if most_tokens == 0 {
            return Ok(Vec::new());
        }
        self.scratch
            .ensure(&stream, &self.config, &self.kernels, most_tokens, rows)?;
        let (first, last) = (stage.stage == 0, stage.stage + 1 == stage.stages);
        let self_lead = self.shard.rank == 0;
        let vocab = self.config.vocab_size;
        {
            let (model, kv, scratch) = self.pass_parts(false);
            let Some((comm, _)) = model.pipeline else {
                return Err(CudaError::Nccl(format!(
                    "pipeline stage {} of {} has not joined its group",
                    stage.stage, stage.stages
                )));
            };
            let mut offset = 0;
            for piece in &pieces {
                run_pass(&model, kv, scratch, &piece.batch(offset), None)?;
                offset += piece.n_logits;
            }
            // Only a stage's first tensor rank passes logits (the others computed the same rows).
            if rows > 0 && first != last && self_lead {
                let logits = scratch.logits_mut()?;
                if first {
                    comm.recv(&mut logits.slice_mut(..rows * vocab), stage.stages - 1)?;
                } else {
                    comm.send(&logits.slice(..rows * vocab), 0)?;
                }
            }
        }
        // Bounded: a stage that died leaves the others' sends and receives waiting, and these waits abort them (the
        // communicator between stages first: a receive stuck there holds the stream).
        for group in [self.stage_group.as_mut(), self.group.as_mut()].into_iter().flatten() {
            group.0.synchronize("a pipeline pass")?;
        }
        if !first || !self_lead {
            return Ok(Vec::new());
        }
        read_logits(&stream, &self.scratch, rows * vocab, None)
    }
}
