//! The security flags shared by `cleave router`, `worker`, `up` and `planner`: public TLS, API keys, the cluster's
//! mutual TLS and etcd's TLS and authentication — parsed by clap, loaded (files read and checked) here.
//!
//! Invariant: every file is read at start, so a wrong path or a malformed certificate stops the process with an
//! error naming the file, before it serves anything. Secrets (API keys, the etcd password) come from files or the
//! environment, never from a flag value visible in `ps`... unless the operator passes `--api-key` explicitly.
//! Cost: a few file reads at start.

use std::path::PathBuf;

use clap::Args;
use cleave_cluster::tls::{ClusterTls, PublicTls};
use cleave_router::auth::ApiKeys;

use crate::error::CliError;

/// TLS on the router's public endpoints (gRPC and HTTP).
#[derive(Debug, Args)]
pub struct PublicTlsArgs {
    /// PEM certificate chain for the public gRPC and HTTP endpoints (serves TLS when given, with --tls-key).
    #[arg(long, env = "CLEAVE_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "CLEAVE_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

impl PublicTlsArgs {
    pub fn load(&self) -> Result<Option<PublicTls>, CliError> {
        Ok(PublicTls::from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?)
    }
}

/// API keys on the public gRPC and HTTP APIs.
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    /// Require `Authorization: Bearer KEY` on the gRPC Generation API and the HTTP API's /v1 routes.
    #[arg(long, env = "CLEAVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Accept every key in this file (one per line, `#` comments), e.g. a mounted Kubernetes Secret.
    #[arg(long, env = "CLEAVE_API_KEY_FILE", value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
}

impl ApiKeyArgs {
    pub fn load(&self) -> Result<ApiKeys, CliError> {
        let flag = ApiKeys::new(self.api_key.clone());
        match &self.api_key_file {
            Some(path) => Ok(flag.merge(&ApiKeys::from_file(path)?)),
            None => Ok(flag),
        }
    }
}

/// Mutual TLS between router and workers (gRPC and KV transfers).
#[derive(Debug, Args)]
pub struct ClusterTlsArgs {
    /// PEM CA certificate every cluster member's certificate is signed by; turns on mutual TLS between the router
    /// and workers (with --cluster-cert and --cluster-key).
    #[arg(long, env = "CLEAVE_CLUSTER_CA", value_name = "PATH")]
    pub cluster_ca: Option<PathBuf>,

    /// This member's PEM certificate (server and client), signed by --cluster-ca.
    #[arg(long, env = "CLEAVE_CLUSTER_CERT", value_name = "PATH")]
    pub cluster_cert: Option<PathBuf>,

    /// PEM private key for --cluster-cert.
    #[arg(long, env = "CLEAVE_CLUSTER_KEY", value_name = "PATH")]
    pub cluster_key: Option<PathBuf>,

    /// The name to verify in peers' certificates, when members are dialled by IP but their certificates name a
    /// shared DNS name (default: the host dialled).
    #[arg(long, env = "CLEAVE_CLUSTER_SERVER_NAME")]
    pub cluster_server_name: Option<String>,
}

impl ClusterTlsArgs {
    pub fn load(&self) -> Result<Option<ClusterTls>, CliError> {
        Ok(ClusterTls::from_flags(
            self.cluster_ca.as_deref(),
            self.cluster_cert.as_deref(),
            self.cluster_key.as_deref(),
            self.cluster_server_name.clone(),
        )?)
    }
}

/// etcd's client TLS and authentication.
#[derive(Debug, Args)]
pub struct EtcdSecurityArgs {
    /// PEM CA certificate of etcd's server certificate (use https:// endpoints).
    #[arg(long, env = "CLEAVE_ETCD_CA", value_name = "PATH")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate, where etcd requires client certificates (--client-cert-auth).
    #[arg(long, env = "CLEAVE_ETCD_CERT", value_name = "PATH")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key for --etcd-cert.
    #[arg(long, env = "CLEAVE_ETCD_KEY", value_name = "PATH")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user, where etcd has authentication on; the password comes from $CLEAVE_ETCD_PASSWORD or
    /// --etcd-password-file.
    #[arg(long, env = "CLEAVE_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// A file holding the etcd user's password (its first line).
    #[arg(long, env = "CLEAVE_ETCD_PASSWORD_FILE", value_name = "PATH")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdSecurityArgs {
    /// The TLS config and the user and password, as `EtcdConfig` takes them.
    pub fn load(&self) -> Result<EtcdSecurity, CliError> {
        let tls = cleave_cluster::tls::etcd_client_tls(
            self.etcd_ca.as_deref(),
            self.etcd_cert.as_deref(),
            self.etcd_key.as_deref(),
        )?;
        let user = match &self.etcd_user {
            None => None,
            Some(user) => Some((user.clone(), self.password()?)),
        };
        Ok(EtcdSecurity { tls, user })
    }

    fn password(&self) -> Result<String, CliError> {
        if let Some(path) = &self.etcd_password_file {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadFile {
                what: "etcd password file",
                path: path.clone(),
                source,
            })?;
            return Ok(text.lines().next().unwrap_or_default().to_owned());
        }
        std::env::var("CLEAVE_ETCD_PASSWORD").map_err(|_| CliError::MissingSecret {
            what: "--etcd-user needs a password: set $CLEAVE_ETCD_PASSWORD or --etcd-password-file",
        })
    }
}

/// etcd client security, loaded.
#[derive(Debug, Default)]
pub struct EtcdSecurity {
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub user: Option<(String, String)>,
}
