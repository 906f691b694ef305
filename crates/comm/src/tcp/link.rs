//! One peer connection of the TCP mesh: framed messages out through a writer thread, in on the caller's thread.
//!
//! Invariant: every message is a 24-byte header (magic, operation, element type, per-link sequence number,
//! payload bytes) and its payload; both ends count the messages of their link, so a member that calls a
//! different operation, or the same one with other sizes, is caught at the first message instead of corrupting
//! data. Writes happen on the link's own thread, so a rank can send to a peer while it receives from another
//! (or the same) peer without either side's socket buffer deadlocking the exchange.
//! Cost: one thread per peer; each message is copied once into a pooled buffer before it is written; a read
//! sets the socket timeout to what is left of the operation's deadline.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::element::DType;

pub(crate) const HEADER_LEN: usize = 24;
const MAGIC: u16 = 0xC1EA;
/// Pooled send buffers kept per link for reuse.
const POOL: usize = 4;

/// The operation a message belongs to, checked on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    AllReduce = 1,
    AllGather = 2,
    ReduceScatter = 3,
    PointToPoint = 4,
    AllToAll = 5,
    Barrier = 6,
}

impl OpCode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AllReduce => "all_reduce",
            Self::AllGather => "all_gather",
            Self::ReduceScatter => "reduce_scatter",
            Self::PointToPoint => "send/recv",
            Self::AllToAll => "all_to_all",
            Self::Barrier => "barrier",
        }
    }

    fn name_of(code: u8) -> &'static str {
        [
            Self::AllReduce,
            Self::AllGather,
            Self::ReduceScatter,
            Self::PointToPoint,
            Self::AllToAll,
            Self::Barrier,
        ]
        .into_iter()
        .find(|op| *op as u8 == code)
        .map_or("an unknown operation", Self::name)
    }
}

/// What went wrong on one link; the caller adds rank, operation and peer.
#[derive(Debug)]
pub(crate) enum LinkError {
    TimedOut,
    Closed,
    Io(io::Error),
    Mismatch(String),
}

impl From<io::Error> for LinkError {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Self::TimedOut,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => Self::Closed,
            _ => Self::Io(error),
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub(crate) struct PeerLink {
    reader: TcpStream,
    jobs: Option<mpsc::Sender<Vec<u8>>>,
    done: mpsc::Receiver<io::Result<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    pending: usize,
    pool: Vec<Vec<u8>>,
    tx_seq: u64,
    rx_seq: u64,
}

impl PeerLink {
    /// Wraps a connected, handshaken stream; writes time out after `write_timeout` without progress.
    pub(crate) fn new(stream: TcpStream, peer: usize, write_timeout: Duration) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let writer_stream = stream.try_clone()?;
        writer_stream.set_write_timeout(Some(write_timeout.max(Duration::from_millis(1))))?;
        let (jobs_tx, jobs_rx) = mpsc::channel::<Vec<u8>>();
        let (done_tx, done_rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name(format!("comm-tx-{peer}"))
            .spawn(move || write_frames(writer_stream, jobs_rx, done_tx))?;
        Ok(Self {
            reader: stream,
            jobs: Some(jobs_tx),
            done: done_rx,
            writer: Some(writer),
            pending: 0,
            pool: Vec::new(),
            tx_seq: 0,
            rx_seq: 0,
        })
    }

    /// Queues one message; `wait_sent` reports whether it was written.
    pub(crate) fn post(&mut self, op: OpCode, dtype: DType, payload: &[u8]) -> Result<(), LinkError> {
        let mut frame = self.pool.pop().unwrap_or_default();
        frame.clear();
        frame.reserve(HEADER_LEN + payload.len());
        frame.extend_from_slice(&MAGIC.to_le_bytes());
        frame.push(op as u8);
        frame.push(dtype.code());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&self.tx_seq.to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        frame.extend_from_slice(payload);
        self.tx_seq += 1;
        let jobs = self.jobs.as_ref().ok_or(LinkError::Closed)?;
        jobs.send(frame).map_err(|_| LinkError::Closed)?;
        self.pending += 1;
        Ok(())
    }

    /// Waits until every queued message is written to the socket, or the deadline passes.
    pub(crate) fn wait_sent(&mut self, deadline: Instant) -> Result<(), LinkError> {
        while self.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(Ok(frame)) => {
                    self.pending -= 1;
                    if self.pool.len() < POOL {
                        self.pool.push(frame);
                    }
                }
                Ok(Err(error)) => return Err(error.into()),
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(LinkError::TimedOut),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(LinkError::Closed),
            }
        }
        Ok(())
    }

    /// Reads the next header, checks it belongs to `op` on `dtype`, and returns its payload length in bytes.
    pub(crate) fn recv_header(&mut self, op: OpCode, dtype: DType, deadline: Instant) -> Result<usize, LinkError> {
        let mut header = [0u8; HEADER_LEN];
        read_full(&mut self.reader, &mut header, deadline)?;
        let magic = u16::from_le_bytes([header[0], header[1]]);
        if magic != MAGIC {
            return Err(LinkError::Mismatch(format!(
                "bad frame magic {magic:#06x} (stream out of sync)"
            )));
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&header[8..16]);
        let seq = u64::from_le_bytes(word);
        word.copy_from_slice(&header[16..24]);
        let len = u64::from_le_bytes(word);
        if header[2] != op as u8 {
            return Err(LinkError::Mismatch(format!(
                "the peer is in {} while this rank is in {}",
                OpCode::name_of(header[2]),
                op.name()
            )));
        }
        let their_dtype = DType::from_code(header[3]);
        if their_dtype != Some(dtype) {
            let theirs = their_dtype.map_or_else(|| format!("code {}", header[3]), |d| d.to_string());
            return Err(LinkError::Mismatch(format!(
                "the peer sends {theirs}, this rank expects {dtype}"
            )));
        }
        if seq != self.rx_seq {
            return Err(LinkError::Mismatch(format!(
                "message #{seq} arrived while this rank expects #{}",
                self.rx_seq
            )));
        }
        self.rx_seq += 1;
        usize::try_from(len).map_err(|_| LinkError::Mismatch(format!("payload of {len} bytes")))
    }

    /// Reads a payload of exactly `out.len()` bytes.
    pub(crate) fn recv_payload(&mut self, out: &mut [u8], deadline: Instant) -> Result<(), LinkError> {
        read_full(&mut self.reader, out, deadline)
    }

    /// Reads one message of `op` whose payload must fill `out` exactly.
    pub(crate) fn recv_exact(
        &mut self,
        op: OpCode,
        dtype: DType,
        out: &mut [u8],
        deadline: Instant,
    ) -> Result<(), LinkError> {
        let len = self.recv_header(op, dtype, deadline)?;
        if len != out.len() {
            let size = dtype.size();
            return Err(LinkError::Mismatch(format!(
                "the peer sent {} elements, this rank expects {}",
                len / size,
                out.len() / size
            )));
        }
        self.recv_payload(out, deadline)
    }

    /// Shuts the connection down both ways: the peer's reads end at once, and so do this link's thread's writes.
    pub(crate) fn shutdown(&self) {
        let _ = self.reader.shutdown(Shutdown::Both);
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.jobs = None;
        self.shutdown();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_frames(mut stream: TcpStream, jobs: mpsc::Receiver<Vec<u8>>, done: mpsc::Sender<io::Result<Vec<u8>>>) {
    for frame in jobs {
        let result = stream.write_all(&frame);
        let failed = result.is_err();
        if done.send(result.map(|()| frame)).is_err() || failed {
            break;
        }
    }
}

/// Fills `buf` from `stream`, failing with `TimedOut` once `deadline` passes.
pub(crate) fn read_full(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), LinkError> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LinkError::TimedOut);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}
