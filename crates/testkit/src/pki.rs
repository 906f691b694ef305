//! Certificates for TLS tests, made with rcgen: a CA and leaf certificates (server and client use, valid for
//! `localhost` and `127.0.0.1`) written as PEM files into a temporary directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA that signs leaf certificates into `dir`.
pub struct TestCa {
    name: String,
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate's files.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`; its certificate is `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca = Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            issuer,
        };
        std::fs::write(ca.ca_path(), ca.issuer.pem()).context("writing the CA certificate")?;
        Ok(ca)
    }

    /// The CA certificate's PEM file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for `common_name`, usable as a server (for `localhost` and `127.0.0.1`) and as a client.
    pub fn leaf(&self, common_name: &str) -> anyhow::Result<LeafFiles> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = LeafFiles {
            cert: self.dir.join(format!("{}-{common_name}.pem", self.name)),
            key: self.dir.join(format!("{}-{common_name}-key.pem", self.name)),
        };
        std::fs::write(&files.cert, cert.pem()).context("writing a certificate")?;
        std::fs::write(&files.key, key.serialize_pem()).context("writing a private key")?;
        Ok(files)
    }
}
