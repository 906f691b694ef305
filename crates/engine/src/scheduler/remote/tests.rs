//! Disaggregated prefill between two schedulers, each with its own KV cache, on the tiny fixture model: the tokens
//! must equal a local prefill's, and every block must come back, whatever happens to the transfer.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::*;
use crate::backend::{Backend, CpuBackend};
use crate::loader::{ModelFiles, load_model};
use crate::sampling::{ModelLimits, SamplingSpec};
use crate::scheduler::{FinishReason, SchedulerConfig, SeqOutput};

const BLOCKS: usize = 32;
const BLOCK_SIZE: usize = 4;

/// One worker: a scheduler and its own model and KV pool.
struct Side {
    scheduler: Scheduler,
    backend: CpuBackend,
}

impl Side {
    fn block_floats(&self) -> usize {
        self.backend.kv_shape().block_floats()
    }
}

fn side() -> Side {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let (model, tokenizer) = load_model(ModelFiles::HfDir(&dir)).unwrap();
    let config = SchedulerConfig {
        block_size: BLOCK_SIZE,
        max_batch_tokens: 8,
        ..SchedulerConfig::default()
    };
    Side {
        scheduler: Scheduler::new(config, BLOCKS, Arc::new(tokenizer), 128),
        backend: CpuBackend::new(model, BLOCKS, BLOCK_SIZE),
    }
}

fn prompt(len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 5 + (i * 7) % 250).collect()
}

fn request(id: RequestId, prompt: Vec<u32>, max_tokens: u32, kind: RequestKind) -> NewRequest {
    let spec = SamplingSpec {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    };
    let limits = ModelLimits {
        max_context: 128,
        vocab_size: 320,
    };
    NewRequest {
        id,
        sampling: spec.validate(prompt.len(), limits).unwrap(),
        prompt,
        priority: 0,
        kind,
    }
}

fn drain(side: &mut Side) -> Vec<SeqOutput> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        if !side.scheduler.has_work() {
            return out;
        }
        out.extend(side.scheduler.step(&mut side.backend).unwrap());
    }
    panic!("the scheduler makes no progress");
}

/// The tokens a plain local prefill gives `text`, on a fresh scheduler.
fn local_tokens(text: &[u32], max_tokens: u32) -> Vec<u32> {
    let mut local = side();
    local
        .scheduler
        .add(request(1, text.to_vec(), max_tokens, RequestKind::Generate))
        .unwrap();
    tokens(&drain(&mut local))
}

fn tokens(outputs: &[SeqOutput]) -> Vec<u32> {
    outputs.iter().flat_map(|o| o.token_ids.clone()).collect()
}

/// Runs the prefill-only request on `prefill` and returns its layers in the order they came out.
fn export(prefill: &mut Side, prompt: &[u32], first_block: usize) -> Vec<ExportedLayer> {
    export_with_logits(prefill, prompt, first_block).0
}

/// [`export`], also returning the logits of the prompt's last token.
fn export_with_logits(prefill: &mut Side, prompt: &[u32], first_block: usize) -> (Vec<ExportedLayer>, Vec<f32>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (logits_tx, mut logits) = mpsc::unbounded_channel();
    let kind = RequestKind::ExportKv(KvExport {
        first_block,
        layers: tx,
        peer: None,
        logits: Some(logits_tx),
    });
    prefill.scheduler.add(request(100, prompt.to_vec(), 1, kind)).unwrap();
    let outputs = drain(prefill);
    let last = outputs.last().unwrap();
    assert_eq!(last.finish.unwrap().reason, FinishReason::Prefilled);
    assert!(last.token_ids.is_empty(), "a prefill-only request samples nothing");
    let mut layers = Vec::new();
    while let Ok(layer) = rx.try_recv() {
        layers.push(layer);
    }
    let row = logits.try_recv().expect("the last token's logits");
    assert_eq!(row.len(), prefill.backend.model_config().vocab_size);
    (layers, row)
}

fn done(logits: Option<Vec<f32>>) -> Result<RemoteDone, String> {
    Ok(RemoteDone {
        prefill_cached: 0,
        logits,
    })
}

/// Writes every exported layer into the decode side's destination blocks.
fn deliver(decode: &mut Side, request: RequestId, target: &RemoteKvTarget, layers: &[ExportedLayer]) {
    for l in layers {
        let LayerData::Host { keys, values } = &l.data else {
            panic!("the CPU backend exports through the host");
        };
        decode
            .scheduler
            .write_remote_layer(request, l.layer, &target.blocks, keys, values, &mut decode.backend)
            .unwrap();
    }
}

#[test]
fn remote_prefill_gives_the_local_tokens_and_frees_every_block() {
    let text = prompt(23);
    let expected = local_tokens(&text, 6);

    let (mut prefill, mut decode) = (side(), side());
    let target = decode
        .scheduler
        .add_remote(request(1, text.clone(), 6, RequestKind::Generate))
        .unwrap()
        .expect("a 23-token prompt is worth a remote prefill");
    assert_eq!(
        target.prefill_tokens, 23,
        "the prefill worker computes the whole prompt"
    );
    assert_eq!((target.first_block, target.blocks.len()), (0, 6));
    assert!(
        !decode.scheduler.has_work(),
        "an awaiting sequence takes no part in steps"
    );

    let (layers, logits) = export_with_logits(&mut prefill, &text, target.first_block);
    let order: Vec<u32> = layers.iter().map(|l| l.layer).collect();
    assert_eq!(
        order,
        (0..decode.backend.model_config().n_layers as u32).collect::<Vec<_>>()
    );
    deliver(&mut decode, 1, &target, &layers);
    assert_eq!(decode.scheduler.finish_remote(1, done(Some(logits))), Some(true));
    let outputs = drain(&mut decode);
    assert_eq!(
        tokens(&outputs),
        expected,
        "the first token comes from the prefill worker's logits"
    );
    let usage = outputs.last().unwrap().finish.unwrap().usage;
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (23, 6));

    for s in [&prefill, &decode] {
        let stats = s.scheduler.stats();
        assert_eq!(stats.free_blocks, BLOCKS, "every block is back");
        assert_eq!(stats.remote_prefill.awaiting, 0);
    }
    assert_eq!(decode.scheduler.stats().remote_prefill.completed, 1);
}

#[test]
fn a_cached_prefix_on_the_decode_side_is_not_sent() {
    let text = prompt(30);
    let (mut prefill, mut decode) = (side(), side());
    // The decode worker already served the first 16 tokens.
    decode
        .scheduler
        .add(request(1, text[..17].to_vec(), 1, RequestKind::Generate))
        .unwrap();
    drain(&mut decode);

    let expected = local_tokens(&text, 5);

    let target = decode
        .scheduler
        .add_remote(request(2, text.clone(), 5, RequestKind::Generate))
        .unwrap()
        .unwrap();
    assert_eq!(target.first_block, 4, "16 cached tokens are 4 blocks");
    assert_eq!(target.blocks.len(), 30usize.div_ceil(BLOCK_SIZE) - 4);
    let layers = export(&mut prefill, &text, target.first_block);
    let LayerData::Host { keys, .. } = &layers[0].data else {
        panic!("the CPU backend exports through the host")
    };
    assert_eq!(keys.len(), target.blocks.len() * decode.block_floats());
    deliver(&mut decode, 2, &target, &layers);
    // Without the prefill worker's logits the last prompt token is recomputed here.
    decode.scheduler.finish_remote(2, done(None));
    let outputs = drain(&mut decode);
    assert_eq!(tokens(&outputs), expected);
    assert_eq!(outputs.last().unwrap().finish.unwrap().usage.cached_tokens, 16);
}

#[test]
fn a_transfer_missing_layers_falls_back_to_local_prefill() {
    let text = prompt(19);
    let expected = local_tokens(&text, 4);

    let (mut prefill, mut decode) = (side(), side());
    let target = decode
        .scheduler
        .add_remote(request(1, text.clone(), 4, RequestKind::Generate))
        .unwrap()
        .unwrap();
    assert!(!export(&mut prefill, &text, 0).is_empty());
    // Only the first layer lands, with garbage the local prefill must overwrite.
    let garbage = vec![f32::NAN; target.blocks.len() * decode.block_floats()];
    decode
        .scheduler
        .write_remote_layer(1, 0, &target.blocks, &garbage, &garbage, &mut decode.backend)
        .unwrap();
    assert_eq!(decode.scheduler.finish_remote(1, done(None)), Some(false));
    assert_eq!(tokens(&drain(&mut decode)), expected);
    let stats = decode.scheduler.stats();
    assert_eq!((stats.remote_prefill.fell_back, stats.free_blocks), (1, BLOCKS));
}

#[test]
fn a_failed_transfer_falls_back_and_abort_frees_an_awaiting_request() {
    let mut decode = side();
    let target = decode
        .scheduler
        .add_remote(request(1, prompt(19), 4, RequestKind::Generate))
        .unwrap()
        .unwrap();
    decode
        .scheduler
        .finish_remote(1, Err("prefill worker unreachable".into()));
    assert_eq!(tokens(&drain(&mut decode)).len(), 4);

    let target2 = decode
        .scheduler
        .add_remote(request(2, prompt(27), 4, RequestKind::Generate))
        .unwrap()
        .unwrap();
    assert!(decode.scheduler.stats().free_blocks < BLOCKS);
    assert!(decode.scheduler.abort(2));
    assert_eq!(decode.scheduler.stats().free_blocks, BLOCKS);
    // A late layer and a late finish for the aborted request touch nothing.
    let floats = target2.blocks.len() * decode.block_floats();
    let late = decode.scheduler.write_remote_layer(
        2,
        0,
        &target2.blocks,
        &vec![0.0; floats],
        &vec![0.0; floats],
        &mut decode.backend,
    );
    assert_eq!(late, Err(RemoteWriteError::NotAwaiting(2)));
    assert_eq!(decode.scheduler.finish_remote(2, done(None)), None);
    assert!(!target.blocks.is_empty());
}

#[test]
fn writes_naming_other_blocks_or_bad_lengths_are_refused() {
    let mut decode = side();
    let target = decode
        .scheduler
        .add_remote(request(1, prompt(19), 4, RequestKind::Generate))
        .unwrap()
        .unwrap();
    let floats = target.blocks.len() * decode.block_floats();
    let mut other = target.blocks.clone();
    other[0] = BLOCKS as u32 - 1;
    let wrong = decode.scheduler.write_remote_layer(
        1,
        0,
        &other,
        &vec![0.0; floats],
        &vec![0.0; floats],
        &mut decode.backend,
    );
    assert!(matches!(wrong, Err(RemoteWriteError::WrongBlocks { .. })));
    let short = decode.scheduler.write_remote_layer(
        1,
        0,
        &target.blocks,
        &vec![0.0; floats - 1],
        &vec![0.0; floats],
        &mut decode.backend,
    );
    assert!(matches!(
        short,
        Err(RemoteWriteError::PayloadLength { field: "keys", .. })
    ));
    let layer = decode.scheduler.write_remote_layer(
        1,
        99,
        &target.blocks,
        &vec![0.0; floats],
        &vec![0.0; floats],
        &mut decode.backend,
    );
    assert!(matches!(
        layer,
        Err(RemoteWriteError::LayerOutOfRange { layer: 99, .. })
    ));
}

#[test]
fn nothing_to_send_or_no_room_means_local_prefill() {
    let mut decode = side();
    // One-token prompt: nothing for a prefill worker to compute.
    let none = decode
        .scheduler
        .add_remote(request(1, prompt(1), 2, RequestKind::Generate))
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(tokens(&drain(&mut decode)).len(), 2);
    // n > 1 stays local.
    let spec = SamplingSpec {
        max_tokens: Some(2),
        n: Some(2),
        ..Default::default()
    };
    let limits = ModelLimits {
        max_context: 128,
        vocab_size: 320,
    };
    let req = NewRequest {
        id: 2,
        prompt: prompt(19),
        sampling: spec.validate(19, limits).unwrap(),
        priority: 0,
        kind: RequestKind::Generate,
    };
    assert_eq!(decode.scheduler.add_remote(req).unwrap(), None);
    assert_eq!(drain(&mut decode).iter().filter(|o| o.finish.is_some()).count(), 2);
    assert_eq!(decode.scheduler.stats().free_blocks, BLOCKS);
}

/// Writes every exported layer into the destination blocks "directly" — straight into the pool, as a peer's device
/// does through CUDA IPC — and reports each one landed.
fn land_directly(decode: &mut Side, request: RequestId, target: &RemoteKvTarget, layers: &[ExportedLayer]) {
    let n_layers = decode.backend.kv_shape().n_layers;
    let per_block = decode.block_floats();
    for l in layers {
        let LayerData::Host { keys, values } = &l.data else {
            panic!("the CPU backend exports through the host");
        };
        for (i, &block) in target.blocks.iter().enumerate() {
            let at = i * per_block..(i + 1) * per_block;
            decode
                .backend
                .write_block_layer(l.layer as usize, block, &keys[at.clone()], &values[at])
                .unwrap();
        }
        decode
            .scheduler
            .direct_layer_landed(request, l.layer, &target.blocks, n_layers)
            .unwrap();
    }
}

#[test]
fn direct_writes_land_only_once_allowed_and_give_the_local_tokens() {
    let text = prompt(23);
    let expected = local_tokens(&text, 6);
    let (mut prefill, mut decode) = (side(), side());
    let target = decode
        .scheduler
        .add_remote(request(1, text.clone(), 6, RequestKind::Generate))
        .unwrap()
        .unwrap();
    let n_layers = decode.backend.kv_shape().n_layers;
    assert_eq!(
        decode.scheduler.direct_layer_landed(1, 0, &target.blocks, n_layers),
        Err(RemoteWriteError::NotAwaiting(1)),
        "a layer cannot land before the peer was let in"
    );
    assert!(decode.scheduler.allow_direct_writes(1));
    assert!(
        !decode.scheduler.allow_direct_writes(99),
        "an unknown request lets nobody in"
    );
    let layers = export(&mut prefill, &text, target.first_block);
    land_directly(&mut decode, 1, &target, &layers);
    decode.scheduler.end_direct_writes(1);
    assert_eq!(decode.scheduler.finish_remote(1, done(None)), Some(true));
    assert_eq!(tokens(&drain(&mut decode)), expected);
    let stats = decode.scheduler.stats();
    assert_eq!((stats.free_blocks, stats.remote_prefill.fenced_blocks), (BLOCKS, 0));
}

#[test]
fn a_writer_naming_its_blocks_is_let_in_only_to_the_requests_own() {
    let text = prompt(23);
    let mut decode = side();
    let target = decode
        .scheduler
        .add_remote(request(1, text, 6, RequestKind::Generate))
        .unwrap()
        .unwrap();
    let n_layers = decode.backend.kv_shape().n_layers;
    let mut other = target.blocks.clone();
    other.reverse();
    assert!(
        decode.scheduler.allow_direct_writes_into(1, &other, n_layers).is_err(),
        "the request's blocks in another order are other blocks"
    );
    assert!(
        decode
            .scheduler
            .allow_direct_writes_into(1, &target.blocks[1..], n_layers)
            .is_err()
    );
    assert_eq!(
        decode.scheduler.allow_direct_writes_into(9, &target.blocks, n_layers),
        Err(RemoteWriteError::NotAwaiting(9))
    );
    assert_eq!(
        decode.scheduler.direct_layer_landed(1, 0, &target.blocks, n_layers),
        Err(RemoteWriteError::NotAwaiting(1)),
        "a refused writer was not let in"
    );
    assert!(
        decode
            .scheduler
            .allow_direct_writes_into(1, &target.blocks, n_layers)
            .is_ok()
    );
    assert!(
        decode
            .scheduler
            .direct_layer_landed(1, 0, &target.blocks, n_layers)
            .is_ok()
    );
    decode.scheduler.end_direct_writes(1);
    assert!(decode.scheduler.abort(1));
    assert_eq!(decode.scheduler.stats().free_blocks, BLOCKS);
}

#[test]
fn blocks_a_direct_writer_may_still_write_are_not_reused_until_it_is_done() {
    let text = prompt(23);
    let expected = local_tokens(&text, 6);
    let mut decode = side();

    // Cancelled while the peer may be writing: the blocks stay out of the pool until the peer's connection ends.
    let target = decode
        .scheduler
        .add_remote(request(1, text.clone(), 6, RequestKind::Generate))
        .unwrap()
        .unwrap();
    assert!(decode.scheduler.allow_direct_writes(1));
    assert!(decode.scheduler.abort(1));
    let stats = decode.scheduler.stats();
    assert_eq!(stats.remote_prefill.fenced_blocks, target.blocks.len());
    assert_eq!(stats.free_blocks, BLOCKS - target.blocks.len());
    assert!(
        !decode.scheduler.allow_direct_writes(1),
        "an ended request lets nobody in"
    );
    decode.scheduler.end_direct_writes(1);
    assert_eq!(decode.scheduler.stats().free_blocks, BLOCKS);

    // A broken transfer: the request prefills locally in other blocks while the old ones wait for the peer.
    let target = decode
        .scheduler
        .add_remote(request(2, text.clone(), 6, RequestKind::Generate))
        .unwrap()
        .unwrap();
    assert!(decode.scheduler.allow_direct_writes(2));
    assert_eq!(
        decode.scheduler.finish_remote(2, Err("the peer died".to_owned())),
        Some(false)
    );
    let outputs = drain(&mut decode);
    assert_eq!(
        tokens(&outputs),
        expected,
        "the local prefill is untouched by the fenced blocks"
    );
    let stats = decode.scheduler.stats();
    assert_eq!(stats.remote_prefill.fenced_blocks, target.blocks.len());
    assert_eq!(
        stats.free_blocks + target.blocks.len(),
        BLOCKS,
        "the prefix cache keeps the rest"
    );
    decode.scheduler.end_direct_writes(2);
    assert_eq!(decode.scheduler.stats().free_blocks, BLOCKS);
}

#[test]
fn a_one_token_request_ends_on_the_prefill_workers_logits_without_a_step_here() {
    let text = prompt(23);
    let expected = local_tokens(&text, 1);
    let (mut prefill, mut decode) = (side(), side());
    let target = decode
        .scheduler
        .add_remote(request(1, text.clone(), 1, RequestKind::Generate))
        .unwrap()
        .unwrap();
    let (layers, logits) = export_with_logits(&mut prefill, &text, target.first_block);
    deliver(&mut decode, 1, &target, &layers);
    assert_eq!(decode.scheduler.finish_remote(1, done(Some(logits))), Some(true));
    assert_eq!(
        decode.scheduler.stats().free_blocks,
        BLOCKS,
        "finished at once: its blocks are free"
    );
    assert!(decode.scheduler.has_work(), "its output waits for the next step");
    let outputs = decode.scheduler.step(&mut decode.backend).unwrap();
    assert_eq!(tokens(&outputs), expected);
    assert_eq!(outputs[0].finish.unwrap().reason, FinishReason::Length);
    assert!(!decode.scheduler.has_work());
}
