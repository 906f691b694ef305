//! The mixture-of-experts MLP (Mixtral-style): a router picks each token's top-k experts, whose SwiGLU outputs are
//! summed with the renormalised router probabilities as weights.
//!
//! Expert parallelism ([`expert_parallel`]): each rank of W holds a contiguous 1/W of the experts and takes a 1/W
//! slice of the batch's tokens. It routes its slice, sends each (token, expert) row to the rank holding the expert
//! (all-to-all dispatch), runs the rows it received through its experts, sends the results back (all-to-all
//! combine), weights and sums them, and the slices are all-gathered so every rank ends with the whole batch.

use cleave_comm::Communicator;

use super::matmul::matmul;
use super::ops::silu_mul;
use crate::error::EngineError;
use crate::weights::{Experts, FeedForward};

/// One row of work for an expert: input row `row`, expert `expert`, its output weighted by `weight` and added to
/// output row `out`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub row: usize,
    pub out: usize,
    pub expert: usize,
    pub weight: f32,
}

/// `out = Σ weight · expert(x)` over each row's routed experts, for every row of `x` (`[rows, hidden]`). Under
/// tensor parallelism each rank's experts hold a slice of their width, so `out` is a partial sum to all-reduce.
pub fn mixture(experts: &Experts, x: &[f32], rows: usize, top_k: usize, out: &mut [f32]) -> Result<(), EngineError> {
    out.fill(0.0);
    let routes = route(experts, x, rows, top_k);
    run_experts(experts, x, &routes, out)
}

/// The expert-parallel [`mixture`]: `experts` holds this rank's share (the model's `n_experts / world` experts
/// from `experts.first`); every rank passes the same `x` and gets the same whole `out`.
pub fn expert_parallel(
    experts: &Experts,
    x: &[f32],
    rows: usize,
    top_k: usize,
    comm: &dyn Communicator,
    out: &mut [f32],
) -> Result<(), EngineError> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let hidden = experts.router.cols;
    let per_rank = experts.local.len();
    let slice_rows = rows.div_ceil(world);
    let mine = (rank * slice_rows).min(rows)..((rank + 1) * slice_rows).min(rows);
    let x_mine = &x[mine.start * hidden..mine.end * hidden];

    // Dispatch: this slice's (token, expert) rows, grouped by the rank that holds the expert.
    let mut by_rank: Vec<Vec<Route>> = vec![Vec::new(); world];
    for r in route(experts, x_mine, mine.len(), top_k) {
        by_rank[r.expert / per_rank].push(r);
    }
    let send_counts: Vec<usize> = by_rank.iter().map(Vec::len).collect();
    let recv_counts = exchange_counts(comm, &send_counts)?;
    let sent: Vec<Route> = by_rank.into_iter().flatten().collect();
    let ids: Vec<u32> = sent.iter().map(|r| r.expert as u32).collect();
    let rows_out: Vec<f32> = sent
        .iter()
        .flat_map(|r| x_mine[r.row * hidden..(r.row + 1) * hidden].iter().copied())
        .collect();
    let received: usize = recv_counts.iter().sum();
    let mut recv_ids = vec![0u32; received];
    comm.all_to_all(
        ids.as_slice().into(),
        &send_counts,
        recv_ids.as_mut_slice().into(),
        &recv_counts,
    )?;
    let (send_floats, recv_floats) = (scaled(&send_counts, hidden), scaled(&recv_counts, hidden));
    let mut recv_rows = vec![0.0f32; received * hidden];
    comm.all_to_all(
        rows_out.as_slice().into(),
        &send_floats,
        recv_rows.as_mut_slice().into(),
        &recv_floats,
    )?;

    // This rank's experts over the rows it received, unweighted (the sender knows the weights).
    let work: Vec<Route> = recv_ids
        .iter()
        .enumerate()
        .map(|(i, &e)| Route {
            row: i,
            out: i,
            expert: e as usize,
            weight: 1.0,
        })
        .collect();
    let mut results = vec![0.0f32; received * hidden];
    run_experts(experts, &recv_rows, &work, &mut results)?;

    // Combine: the results come back in the order they were sent; weight and sum them per token.
    let mut back = vec![0.0f32; sent.len() * hidden];
    comm.all_to_all(
        results.as_slice().into(),
        &recv_floats,
        back.as_mut_slice().into(),
        &send_floats,
    )?;
    let mut slice_out = vec![0.0f32; slice_rows * hidden];
    for (r, y) in sent.iter().zip(back.chunks_exact(hidden)) {
        for (o, &v) in slice_out[r.row * hidden..(r.row + 1) * hidden].iter_mut().zip(y) {
            *o += r.weight * v;
        }
    }
    let mut gathered = vec![0.0f32; slice_rows * world * hidden];
    comm.all_gather(slice_out.as_slice().into(), gathered.as_mut_slice().into())?;
    out.copy_from_slice(&gathered[..rows * hidden]);
    Ok(())
}

/// Each rank's count for this one, given this rank's count for each rank (an all-to-all of one number each).
fn exchange_counts(comm: &dyn Communicator, send_counts: &[usize]) -> Result<Vec<usize>, EngineError> {
    let ones = vec![1; send_counts.len()];
    let send: Vec<u32> = send_counts.iter().map(|&c| c as u32).collect();
    let mut recv = vec![0u32; send_counts.len()];
    comm.all_to_all(send.as_slice().into(), &ones, recv.as_mut_slice().into(), &ones)?;
    Ok(recv.into_iter().map(|c| c as usize).collect())
}

fn scaled(counts: &[usize], by: usize) -> Vec<usize> {
    counts.iter().map(|c| c * by).collect()
}

/// Each row's top-`k` experts by router logit, weighted by the softmax over those k (what a softmax over every
/// expert renormalised to the top k gives). Ties go to the lower expert number.
fn route(experts: &Experts, x: &[f32], rows: usize, k: usize) -> Vec<Route> {
    let n = experts.router.rows;
    let mut logits = vec![0.0f32; rows * n];
    matmul(x, rows, &experts.router, &mut logits);
    routes_from_logits(&logits, n, k)
}

/// [`route`] from the router's logits (`[rows, n]`), wherever they were computed.
pub(crate) fn routes_from_logits(logits: &[f32], n: usize, k: usize) -> Vec<Route> {
    let mut routes = Vec::with_capacity(logits.len() / n.max(1) * k);
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for (row, l) in logits.chunks_exact(n).enumerate() {
        order.clear();
        order.extend(0..n);
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        let top = &order[..k.min(n)];
        let max = l[top[0]];
        let denom: f32 = top.iter().map(|&e| (l[e] - max).exp()).sum();
        routes.extend(top.iter().map(|&e| Route {
            row,
            out: row,
            expert: e,
            weight: (l[e] - max).exp() / denom,
        }));
    }
    routes
}

/// Runs each route's input row through its expert (one GEMM per expert over all its rows) and adds the weighted
/// output into `out`. A route to an expert this rank does not hold is a protocol error between ranks.
fn run_experts(experts: &Experts, x: &[f32], routes: &[Route], out: &mut [f32]) -> Result<(), EngineError> {
    let hidden = experts.router.cols;
    let held = experts.first..experts.first + experts.local.len();
    if let Some(stray) = routes.iter().find(|r| !held.contains(&r.expert)) {
        return Err(EngineError::Internal(format!(
            "expert {} routed to a rank holding experts {held:?}",
            stray.expert
        )));
    }
    for (i, ff) in experts.local.iter().enumerate() {
        let expert = experts.first + i;
        let mine: Vec<&Route> = routes.iter().filter(|r| r.expert == expert).collect();
        if mine.is_empty() {
            continue;
        }
        let input: Vec<f32> = mine
            .iter()
            .flat_map(|r| x[r.row * hidden..(r.row + 1) * hidden].iter().copied())
            .collect();
        let y = feed_forward(ff, &input, mine.len());
        for (r, y) in mine.iter().zip(y.chunks_exact(hidden)) {
            for (o, &v) in out[r.out * hidden..(r.out + 1) * hidden].iter_mut().zip(y) {
                *o += r.weight * v;
            }
        }
    }
    Ok(())
}

/// `down(silu(gate(x)) ⊙ up(x))` for `rows` rows of `x`.
fn feed_forward(ff: &FeedForward, x: &[f32], rows: usize) -> Vec<f32> {
    let inter = ff.gate_up.rows / 2;
    let mut gate_up = vec![0.0f32; rows * 2 * inter];
    matmul(x, rows, &ff.gate_up, &mut gate_up);
    let mut act = vec![0.0f32; rows * inter];
    silu_mul(&gate_up, inter, &mut act);
    let mut y = vec![0.0f32; rows * ff.down.rows];
    matmul(&act, rows, &ff.down, &mut y);
    y
}
