//! The HTTP(S) client used for pulls: `ureq` over rustls (ring provider), trusting the system
//! root store, honouring `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY`.
//!
//! Invariant: server certificates are checked against the platform's roots (which include a
//! corporate or proxy CA installed there; `SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured), never
//! skipped; 4xx/5xx answers become `HttpStatus` errors naming the URL. A stalled transfer fails
//! after `READ_TIMEOUT` instead of hanging. Cost: loading the root store once per client
//! (~150 certificates, a few ms); one TCP+TLS connection per request.

use std::io::Read;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Proxy, ResponseExt};

use crate::error::{ModelStoreError, Result};
use crate::index::redact_url;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Index pages are small; anything bigger is not what we asked for.
const MAX_PAGE_BYTES: u64 = 16 * 1024 * 1024;

/// A blocking HTTP client configured for pulling models.
#[derive(Debug, Clone)]
pub struct HttpClient {
    agent: Agent,
}

/// A fetched text page.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    /// The URL the body came from, after redirects (relative links resolve against it).
    pub url: String,
    pub content_type: Option<String>,
    pub body: String,
}

/// An open download.
pub(crate) struct Download {
    pub content_length: Option<u64>,
    pub body: Box<dyn Read>,
}

impl HttpClient {
    /// A client using the proxy named by the environment, if any.
    pub fn new() -> Result<Self> {
        Self::build(Proxy::try_from_env())
    }

    /// A client that ignores proxy variables and connects directly.
    pub fn direct() -> Result<Self> {
        Self::build(None)
    }

    fn build(proxy: Option<Proxy>) -> Result<Self> {
        let tls = TlsConfig::builder().root_certs(system_roots()?).build();
        let agent = Agent::config_builder()
            .tls_config(tls)
            .proxy(proxy)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .user_agent(concat!("cleave-modelstore/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self { agent })
    }

    /// GETs a text page, sending `accept` as the Accept header.
    pub(crate) fn get_page(&self, url: &str, accept: &str) -> Result<Page> {
        let response = self
            .agent
            .get(url)
            .header("Accept", accept)
            .call()
            .map_err(|e| http_error(url, e))?;
        let final_url = response.get_uri().to_string();
        let content_type = response.body().mime_type().map(str::to_owned);
        let body = response
            .into_body()
            .with_config()
            .limit(MAX_PAGE_BYTES)
            .read_to_string()
            .map_err(|e| http_error(url, e))?;
        Ok(Page {
            url: final_url,
            content_type,
            body,
        })
    }

    /// Starts a GET whose body the caller streams.
    pub(crate) fn open(&self, url: &str) -> Result<Download> {
        let response = self.agent.get(url).call().map_err(|e| http_error(url, e))?;
        let content_length = response.body().content_length();
        Ok(Download {
            content_length,
            body: Box::new(response.into_body().into_reader()),
        })
    }
}

fn http_error(url: &str, error: ureq::Error) -> ModelStoreError {
    let url = redact_url(url);
    match error {
        ureq::Error::StatusCode(status) => ModelStoreError::HttpStatus { url, status },
        other => ModelStoreError::Http {
            url,
            source: Box::new(other),
        },
    }
}

/// The platform's trusted roots. Unparsable entries are skipped (one bad file in /etc/ssl/certs
/// must not disable HTTPS); an empty result is an error, since every HTTPS request would fail.
fn system_roots() -> Result<RootCerts> {
    let loaded = rustls_native_certs::load_native_certs();
    if loaded.certs.is_empty() {
        let detail = loaded
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ModelStoreError::TlsRoots {
            reason: format!(
                "no trusted root certificates found in the system store (set SSL_CERT_FILE to a \
                 PEM bundle){}{detail}",
                if detail.is_empty() { "" } else { ": " }
            ),
        });
    }
    let certs: Vec<Certificate<'static>> = loaded
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    Ok(RootCerts::from(certs))
}
