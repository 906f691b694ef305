//! The byte stream under a KV transfer: plain TCP, or TCP under the cluster's mutual TLS.
//!
//! Invariant: TCP_NODELAY is set on every connection (Hello, Accept and End are tiny; Nagle would hold them for
//! the peer's delayed ACK); a TLS handshake is bounded by the caller's timeout. Cost: plain TCP splits into owned
//! halves at no cost; TLS pays rustls's encryption (and a lock per read or write on the split halves).

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;

use super::KvTransferError;
use crate::tls::ClusterTls;

/// The read half, buffered.
pub(crate) type KvReader = BufReader<Box<dyn AsyncRead + Unpin + Send>>;
/// The write half.
pub(crate) type KvWriter = Box<dyn AsyncWrite + Unpin + Send>;

fn plain(stream: TcpStream, buffer: usize) -> (KvReader, KvWriter) {
    let (reader, writer) = stream.into_split();
    (BufReader::with_capacity(buffer, Box::new(reader)), Box::new(writer))
}

fn halves<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, buffer: usize) -> (KvReader, KvWriter) {
    let (reader, writer) = tokio::io::split(stream);
    (BufReader::with_capacity(buffer, Box::new(reader)), Box::new(writer))
}

/// The receiving end of an accepted connection: TLS when `acceptor` is given.
pub(crate) async fn accept(
    stream: TcpStream,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    buffer: usize,
) -> Result<(KvReader, KvWriter), KvTransferError> {
    let _ = stream.set_nodelay(true);
    match acceptor {
        None => Ok(plain(stream, buffer)),
        Some(acceptor) => {
            let tls = acceptor
                .accept(stream)
                .await
                .map_err(|e| KvTransferError::io("complete the TLS handshake", e))?;
            Ok(halves(tls, buffer))
        }
    }
}

/// Connects to `addr` (`host:port`): over mutual TLS when `tls` is given.
pub(crate) async fn connect(
    addr: &str,
    tls: Option<&ClusterTls>,
    buffer: usize,
) -> Result<(KvReader, KvWriter), KvTransferError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| KvTransferError::io("connect", e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| KvTransferError::io("set TCP_NODELAY", e))?;
    let Some(tls) = tls else {
        return Ok(plain(stream, buffer));
    };
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (connector, name) = tls
        .kv_connector(host)
        .map_err(|e| KvTransferError::io("name the TLS peer", std::io::Error::other(e.to_string())))?;
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| KvTransferError::io("complete the TLS handshake", e))?;
    Ok(halves(tls, buffer))
}
