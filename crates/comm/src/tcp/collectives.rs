//! The collective algorithms of the TCP communicator, on one operation's [`Session`] over the mesh.
//!
//! Invariant: every element's sum is formed in one fixed order that depends only on (length, world size,
//! algorithm) — direct: rank 0, 1, …, n−1; ring: chunk c from rank c+1 round to rank c — and then copied, so
//! every rank ends with bit-identical results, run after run. Chunks may differ in length by one element (any
//! length works, including fewer elements than ranks).
//! Cost: direct all-reduce sends the whole buffer to each peer (one latency, (n−1)·N bytes out per rank), for
//! small buffers; ring all-reduce sends 2·(n−1)/n·N bytes per rank in 2·(n−1) steps, bandwidth-optimal, in
//! 256 KiB segments forwarded as soon as each is reduced. all_gather and reduce_scatter are the ring's two
//! halves (unsegmented); all_to_all and barrier are direct.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::link::{LinkError, OpCode, PeerLink};
use crate::element::Element;
use crate::error::CommError;

/// One operation in flight: which rank runs it, against which links, until when.
#[derive(Debug)]
pub(crate) struct Session<'a> {
    pub(crate) rank: usize,
    pub(crate) world: usize,
    pub(crate) op: OpCode,
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
    pub(crate) links: &'a mut [Option<PeerLink>],
}

impl Session<'_> {
    fn error(&self, peer: usize, error: LinkError) -> CommError {
        let (rank, op) = (self.rank, self.op.name());
        match error {
            LinkError::TimedOut => CommError::Timeout {
                rank,
                op,
                peer,
                timeout: self.timeout,
            },
            LinkError::Closed => CommError::PeerClosed { rank, op, peer },
            LinkError::Io(source) => CommError::Io { rank, op, peer, source },
            LinkError::Mismatch(reason) => CommError::Mismatch { rank, op, peer, reason },
        }
    }

    fn link(&mut self, peer: usize) -> Result<&mut PeerLink, CommError> {
        match self.links.get_mut(peer) {
            Some(Some(link)) => Ok(link),
            _ => Err(CommError::PeerClosed {
                rank: self.rank,
                op: self.op.name(),
                peer,
            }),
        }
    }

    pub(crate) fn post<T: Element>(&mut self, peer: usize, data: &[T]) -> Result<(), CommError> {
        let op = self.op;
        let result = self.link(peer)?.post(op, T::DTYPE, bytemuck::cast_slice(data));
        result.map_err(|e| self.error(peer, e))
    }

    pub(crate) fn recv_into<T: Element>(&mut self, peer: usize, out: &mut [T]) -> Result<(), CommError> {
        let (op, deadline) = (self.op, self.deadline);
        let result = self
            .link(peer)?
            .recv_exact(op, T::DTYPE, bytemuck::cast_slice_mut(out), deadline);
        result.map_err(|e| self.error(peer, e))
    }

    /// Receives one message of unknown length.
    pub(crate) fn recv_vec<T: Element>(&mut self, peer: usize) -> Result<Vec<T>, CommError> {
        let (op, deadline) = (self.op, self.deadline);
        let link = self.link(peer)?;
        let result = (|| {
            let len = link.recv_header(op, T::DTYPE, deadline)?;
            let size = std::mem::size_of::<T>();
            if !len.is_multiple_of(size) {
                return Err(LinkError::Mismatch(format!(
                    "payload of {len} bytes is not whole elements"
                )));
            }
            let mut out = vec![T::zeroed(); len / size];
            link.recv_payload(bytemuck::cast_slice_mut(&mut out), deadline)?;
            Ok(out)
        })();
        result.map_err(|e| self.error(peer, e))
    }

    pub(crate) fn wait_sent(&mut self, peer: usize) -> Result<(), CommError> {
        let deadline = self.deadline;
        let result = self.link(peer)?.wait_sent(deadline);
        result.map_err(|e| self.error(peer, e))
    }

    fn wait_all_sent(&mut self) -> Result<(), CommError> {
        for peer in self.peers() {
            self.wait_sent(peer)?;
        }
        Ok(())
    }

    fn peers(&self) -> impl Iterator<Item = usize> + use<> {
        let rank = self.rank;
        (0..self.world).filter(move |p| *p != rank)
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }
}

/// The `n` contiguous chunks of `len` elements: the first `len % n` hold one element more.
pub(crate) fn chunk_ranges(len: usize, n: usize) -> Vec<Range<usize>> {
    let (base, extra) = (len / n, len % n);
    let mut start = 0;
    (0..n)
        .map(|c| {
            let size = base + usize::from(c < extra);
            let range = start..start + size;
            start += size;
            range
        })
        .collect()
}

/// `own[i] = partial[i] + own[i]`: the partial sum that arrived comes first.
fn fold_partial<T: Element>(own: &mut [T], partial: &[T]) {
    for (o, &p) in own.iter_mut().zip(partial) {
        *o = T::sum(p, *o);
    }
}

/// All-reduce by sending everything to everyone; each rank sums in rank order.
pub(crate) fn direct_all_reduce<T: Element>(s: &mut Session<'_>, data: &mut [T]) -> Result<(), CommError> {
    for peer in s.peers() {
        s.post(peer, data)?;
    }
    let own = data.to_vec();
    let mut scratch = vec![T::zeroed(); data.len()];
    for r in 0..s.world {
        let piece: &[T] = if r == s.rank {
            &own
        } else {
            s.recv_into(r, &mut scratch)?;
            &scratch
        };
        if r == 0 {
            data.copy_from_slice(piece);
        } else {
            crate::element::accumulate(data, piece);
        }
    }
    s.wait_all_sent()
}

/// Ring reduce-scatter in place over `ranges`: afterwards chunk `rank` of `data` holds the full sum.
pub(crate) fn ring_reduce_scatter<T: Element>(
    s: &mut Session<'_>,
    data: &mut [T],
    ranges: &[Range<usize>],
) -> Result<(), CommError> {
    let (n, r) = (s.world, s.rank);
    let (next, prev) = (s.next(), s.prev());
    let longest = ranges.iter().map(|c| c.len()).max().unwrap_or(0);
    let mut scratch = vec![T::zeroed(); longest];
    for step in 0..n - 1 {
        let send_chunk = (r + 2 * n - step - 1) % n;
        let recv_chunk = (r + 2 * n - step - 2) % n;
        s.post(next, &data[ranges[send_chunk].clone()])?;
        let incoming = &mut scratch[..ranges[recv_chunk].len()];
        s.recv_into(prev, incoming)?;
        fold_partial(&mut data[ranges[recv_chunk].clone()], incoming);
    }
    s.wait_sent(next)
}

/// Ring all-gather in place over `ranges`: chunk `rank` is this rank's; afterwards every chunk is filled.
pub(crate) fn ring_all_gather<T: Element>(
    s: &mut Session<'_>,
    data: &mut [T],
    ranges: &[Range<usize>],
) -> Result<(), CommError> {
    let (n, r) = (s.world, s.rank);
    let (next, prev) = (s.next(), s.prev());
    for step in 0..n - 1 {
        let send_chunk = (r + n - step) % n;
        let recv_chunk = (r + 2 * n - step - 1) % n;
        s.post(next, &data[ranges[send_chunk].clone()])?;
        s.recv_into(prev, &mut data[ranges[recv_chunk].clone()])?;
    }
    s.wait_sent(next)
}

/// Bytes per ring segment: a chunk travels in pieces so each piece is forwarded as soon as it is reduced.
const SEGMENT_BYTES: usize = 256 * 1024;

/// `range` cut into pieces of at most `size` elements (one empty piece for an empty range, so every chunk is
/// at least one message on both sides).
fn segments(range: Range<usize>, size: usize) -> Vec<Range<usize>> {
    if range.is_empty() {
        return vec![range];
    }
    (range.start..range.end)
        .step_by(size)
        .map(|start| start..(start + size).min(range.end))
        .collect()
}

/// Ring all-reduce, pipelined: the 2·(n−1) steps of reduce-scatter then all-gather run as one stream of
/// segments, where what a rank sends at step t+1 is exactly what it received (and reduced) at step t — so each
/// segment is forwarded the moment it is ready instead of after its whole chunk. Same summation order as the
/// unpipelined ring: chunk c accumulates from rank c+1 round to rank c.
pub(crate) fn ring_all_reduce<T: Element>(s: &mut Session<'_>, data: &mut [T]) -> Result<(), CommError> {
    let (n, r) = (s.world, s.rank);
    let (next, prev) = (s.next(), s.prev());
    let ranges = chunk_ranges(data.len(), n);
    let seg = (SEGMENT_BYTES / std::mem::size_of::<T>()).max(1);
    let steps = 2 * (n - 1);
    // Step t (t < n−1: reduce-scatter step t; else all-gather step t−(n−1)) receives chunk (r − t − 2) mod n
    // and sends chunk (r − t − 1) mod n, which is the chunk received at step t−1.
    let recv_chunk = |t: usize| (r + 2 * n * n - t - 2) % n;
    let first_send = (r + n - 1) % n;
    for piece in segments(ranges[first_send].clone(), seg) {
        s.post(next, &data[piece])?;
    }
    let longest = ranges.iter().map(|c| c.len()).max().unwrap_or(0).min(seg);
    let mut scratch = vec![T::zeroed(); longest];
    for t in 0..steps {
        for piece in segments(ranges[recv_chunk(t)].clone(), seg) {
            if t < n - 1 {
                let incoming = &mut scratch[..piece.len()];
                s.recv_into(prev, incoming)?;
                fold_partial(&mut data[piece.clone()], incoming);
            } else {
                s.recv_into(prev, &mut data[piece.clone()])?;
            }
            if t + 1 < steps {
                s.post(next, &data[piece])?;
            }
        }
    }
    s.wait_sent(next)
}

/// Sends `send[offsets of peer j]` to each peer j and receives exactly `recv_counts[j]` elements from each.
pub(crate) fn all_to_all<T: Element>(
    s: &mut Session<'_>,
    send: &[T],
    send_ranges: &[Range<usize>],
    recv: &mut [T],
    recv_ranges: &[Range<usize>],
) -> Result<(), CommError> {
    for peer in s.peers() {
        s.post(peer, &send[send_ranges[peer].clone()])?;
    }
    recv[recv_ranges[s.rank].clone()].copy_from_slice(&send[send_ranges[s.rank].clone()]);
    for peer in s.peers() {
        s.recv_into(peer, &mut recv[recv_ranges[peer].clone()])?;
    }
    s.wait_all_sent()
}

/// Every rank tells every other it arrived, and waits to hear the same from all.
pub(crate) fn barrier(s: &mut Session<'_>) -> Result<(), CommError> {
    let empty: [u32; 0] = [];
    for peer in s.peers() {
        s.post(peer, &empty)?;
    }
    for peer in s.peers() {
        let got: Vec<u32> = s.recv_vec(peer)?;
        if !got.is_empty() {
            return Err(s.error(
                peer,
                LinkError::Mismatch(format!("barrier carried {} elements", got.len())),
            ));
        }
    }
    s.wait_all_sent()
}

/// The contiguous ranges `counts` describe, back to back, after checking they cover `len` elements.
pub(crate) fn ranges_of(counts: &[usize], len: usize, what: &str) -> Result<Vec<Range<usize>>, String> {
    let total: usize = counts.iter().sum();
    if total != len {
        return Err(format!("{what} add up to {total} elements, the buffer holds {len}"));
    }
    let mut start = 0;
    Ok(counts
        .iter()
        .map(|&c| {
            let range = start..start + c;
            start += c;
            range
        })
        .collect())
}

#[cfg(test)]
mod tests;
