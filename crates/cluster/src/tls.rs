//! TLS from PEM files: the public endpoints' server TLS (router gRPC and HTTP), the cluster's mutual TLS (router ↔
//! workers ↔ workers, over gRPC and the KV-transfer connections) and etcd's client TLS.
//!
//! Invariant: every file is read and parsed once, at load, so a missing file, a file with no certificate or an
//! unparsable key fails at start naming the file — never at the first handshake. With cluster TLS on, every
//! connection this process opens to a peer is TLS with its client certificate: [`ClusterTls::endpoint`] upgrades
//! an `http://` URL to `https://` (tonic would otherwise connect in plain text), and servers require a client
//! certificate signed by the cluster CA. Cost: configs are built once and shared (`Arc`); each handshake is
//! rustls on ring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is not valid PEM: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the certificate {cert} and key {key} do not make a usable TLS identity: {reason}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the CA file {path} cannot verify peers: {reason}")]
    Verifier { path: PathBuf, reason: String },
    #[error("{flag} needs {needs}")]
    Incomplete { flag: &'static str, needs: &'static str },
    #[error("{url:?} is not a valid URL: {reason}")]
    Url { url: String, reason: String },
    #[error("{name:?} is not a valid TLS server name")]
    ServerName { name: String },
}

/// A PEM file's bytes, with its parsed certificates.
struct PemCerts {
    pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn load_certs(what: &'static str, path: &Path) -> Result<PemCerts, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(PemCerts { pem, certs })
}

fn load_key(path: &Path) -> Result<(Vec<u8>, PrivateKeyDer<'static>), TlsError> {
    let pem = read("private key", path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((pem, key))
}

fn roots(ca: &PemCerts, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in &ca.certs {
        roots.add(cert.clone()).map_err(|e| TlsError::Verifier {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its key, parsed.
struct KeyPair {
    cert: PemCerts,
    key_pem: Vec<u8>,
    key: PrivateKeyDer<'static>,
    paths: (PathBuf, PathBuf),
}

impl KeyPair {
    fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (key_pem, parsed) = load_key(key)?;
        Ok(Self {
            cert: load_certs("certificate", cert)?,
            key_pem,
            key: parsed,
            paths: (cert.to_owned(), key.to_owned()),
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert.pem, &self.key_pem)
    }

    fn bad_identity(&self, reason: impl ToString) -> TlsError {
        TlsError::Identity {
            cert: self.paths.0.clone(),
            key: self.paths.1.clone(),
            reason: reason.to_string(),
        }
    }

    fn server_config(&self, client_ca: Option<(&PemCerts, &Path)>, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.bad_identity(e))?;
        let builder = match client_ca {
            Some((ca, path)) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca, path)?), provider())
                    .build()
                    .map_err(|e| TlsError::Verifier {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(self.cert.certs.clone(), self.key.clone_key())
            .map_err(|e| self.bad_identity(e))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// TLS for the public endpoints (`--tls-cert`, `--tls-key`): the router's gRPC and HTTP servers.
#[derive(Clone)]
pub struct PublicTls {
    identity: Identity,
    http: Arc<ServerConfig>,
}

impl std::fmt::Debug for PublicTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicTls").finish_non_exhaustive()
    }
}

impl PublicTls {
    /// Loads the server certificate chain and key; `None` when neither is given.
    pub fn from_flags(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let pair = KeyPair::load(cert, key)?;
                let http = pair.server_config(None, &[b"http/1.1"])?;
                Ok(Some(Self {
                    identity: pair.identity(),
                    http: Arc::new(http),
                }))
            }
            (Some(_), None) => Err(TlsError::Incomplete {
                flag: "--tls-cert",
                needs: "--tls-key",
            }),
            (None, Some(_)) => Err(TlsError::Incomplete {
                flag: "--tls-key",
                needs: "--tls-cert",
            }),
        }
    }

    /// The gRPC server's TLS (no client certificates: clients authenticate with API keys).
    pub fn grpc_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone())
    }

    /// Accepts TLS for the HTTP/1.1 API.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }
}

/// Mutual TLS inside the cluster (`--cluster-ca`, `--cluster-cert`, `--cluster-key`): every server requires a
/// client certificate signed by the cluster CA, every client presents its own and verifies the server's.
#[derive(Clone)]
pub struct ClusterTls {
    ca: Certificate,
    identity: Identity,
    server_name: Option<String>,
    kv_server: Arc<ServerConfig>,
    kv_client: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Loads the cluster CA and this member's certificate and key; `None` when none is given. `server_name`
    /// overrides the name checked in peers' certificates (default: the host of the URL dialled), for clusters
    /// whose members are dialled by IP but share a DNS name in their certificates.
    pub fn from_flags(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        server_name: Option<String>,
    ) -> Result<Option<Self>, TlsError> {
        let (ca_path, cert, key) = match (ca, cert, key) {
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => {
                return Err(TlsError::Incomplete {
                    flag: "cluster TLS",
                    needs: "all of --cluster-ca, --cluster-cert and --cluster-key",
                });
            }
        };
        if let Some(name) = &server_name {
            ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName { name: name.clone() })?;
        }
        let ca = load_certs("CA certificate", ca_path)?;
        let pair = KeyPair::load(cert, key)?;
        let kv_server = pair.server_config(Some((&ca, ca_path)), &[])?;
        let kv_client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| pair.bad_identity(e))?
            .with_root_certificates(roots(&ca, ca_path)?)
            .with_client_auth_cert(pair.cert.certs.clone(), pair.key.clone_key())
            .map_err(|e| pair.bad_identity(e))?;
        Ok(Some(Self {
            ca: Certificate::from_pem(&ca.pem),
            identity: pair.identity(),
            server_name,
            kv_server: Arc::new(kv_server),
            kv_client: Arc::new(kv_client),
        }))
    }

    /// The gRPC server's TLS: client certificates from the cluster CA required.
    pub fn grpc_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// The gRPC client's TLS: the cluster CA as the only root, this member's certificate as the client's.
    pub fn grpc_client(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone());
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }

    /// A gRPC endpoint for a peer's URL over mutual TLS (`http://` is upgraded to `https://`).
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let url = match url.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => url.to_owned(),
        };
        let bad = |reason: String| TlsError::Url {
            url: url.clone(),
            reason,
        };
        Endpoint::from_shared(url.clone())
            .map_err(|e| bad(e.to_string()))?
            .tls_config(self.grpc_client())
            .map_err(|e| bad(e.to_string()))
    }

    /// Accepts mutual TLS on the KV-transfer listener.
    pub fn kv_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.kv_server.clone())
    }

    /// Connects mutual TLS to a KV-transfer listener, with the name to verify for `host`.
    pub fn kv_connector(&self, host: &str) -> Result<(TlsConnector, ServerName<'static>), TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host).to_owned();
        let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName { name })?;
        Ok((TlsConnector::from(self.kv_client.clone()), server_name))
    }
}

/// A gRPC endpoint for `url`: over the cluster's mutual TLS when it is on, in plain text otherwise.
pub fn peer_endpoint(tls: Option<&ClusterTls>, url: &str) -> Result<Endpoint, TlsError> {
    match tls {
        Some(tls) => tls.endpoint(url),
        None => Endpoint::from_shared(url.to_owned()).map_err(|e| TlsError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// etcd's client TLS (`--etcd-ca`, and `--etcd-cert` + `--etcd-key` where etcd checks client certificates);
/// `None` when no file is given.
pub fn etcd_client_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ClientTlsConfig>, TlsError> {
    let mut config = match ca {
        Some(path) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(load_certs("CA certificate", path)?.pem))
        }
        None if cert.is_none() && key.is_none() => return Ok(None),
        None => {
            return Err(TlsError::Incomplete {
                flag: "--etcd-cert/--etcd-key",
                needs: "--etcd-ca (the CA that signed etcd's server certificate)",
            });
        }
    };
    match (cert, key) {
        (Some(cert), Some(key)) => config = config.identity(KeyPair::load(cert, key)?.identity()),
        (None, None) => {}
        _ => {
            return Err(TlsError::Incomplete {
                flag: "etcd client certificates",
                needs: "both --etcd-cert and --etcd-key",
            });
        }
    }
    Ok(Some(config))
}
