//! TLS for the load generator: a rustls client (aws-lc-rs provider, passed
//! explicitly) with or without a client certificate, with session
//! resumption on or off, and certificates minted for `compare` runs.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// TLS in a run: none, server-authenticated, or mutual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    None,
    Server,
    Mutual,
}

/// Where a run's certificates are.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The minted CA's key (for certmq's proof of possession).
    pub ca_key: Option<PathBuf>,
}

pub struct TlsSetup {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    pub fn new(
        mode: TlsMode,
        files: &TlsFiles,
        server_name: &str,
        resume: bool,
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&files.ca)
            .with_context(|| format!("cannot read {}", files.ca.display()))?
        {
            roots.add(cert.context("bad CA certificate PEM")?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = if mode == TlsMode::Mutual {
            let (Some(cert), Some(key)) = (&files.client_cert, &files.client_key) else {
                anyhow::bail!("mutual TLS needs --cert and --key");
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .context("bad client certificate PEM")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the key in {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        } else {
            builder.with_no_client_auth()
        };
        if !resume {
            config.resumption = Resumption::disabled();
        }
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(server_name.to_string())
                .context("bad --server-name")?,
        })
    }

    pub async fn connect(&self, tcp: TcpStream) -> anyhow::Result<Stream> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A client's byte stream.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Mints an ECDSA P-256 CA, a server certificate for `localhost` and
/// `127.0.0.1`, and a client certificate, as PEM files in `dir`.
pub fn mint(dir: &Path) -> anyhow::Result<TlsFiles> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params()?.self_signed(&ca_key)?;

    let leaf = |sans: Vec<String>, cn: &str, eku| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        Vec::new(),
        "bench-device",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let write = |name: &str, body: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, body).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(p)
    };
    Ok(TlsFiles {
        ca: write("ca.pem", &ca_cert.pem())?,
        server_cert: Some(write("server.pem", &server_cert)?),
        server_key: Some(write("server.key", &server_key)?),
        client_cert: Some(write("client.pem", &client_cert)?),
        client_key: Some(write("client.key", &client_key)?),
        ca_key: Some(write("ca.key", &ca_key.serialize_pem())?),
    })
}

/// The bench CA's parameters: always the same, so its issuer can be
/// rebuilt from the stored key.
fn ca_params() -> anyhow::Result<rcgen::CertificateParams> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "certmq-bench CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

/// A CRL (DER) of the minted CA that lists the minted client certificate.
pub fn client_crl(files: &TlsFiles) -> anyhow::Result<Vec<u8>> {
    let key_path = files.ca_key.as_ref().context("no CA key")?;
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_path)?)?;
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    let client = files
        .client_cert
        .as_ref()
        .context("no client certificate")?;
    let pem = std::fs::read(client)?;
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.as_ref().to_vec())
        .map_err(|e| anyhow::anyhow!("client certificate: {e}"))?;
    let hex = certmq_pki::subject_facts(&der)
        .context("client certificate does not parse")?
        .info
        .serial;
    let serial: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(7),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca_cert, &ca_key)?;
    Ok(crl.der().to_vec())
}

/// A verification certificate (CN = `code`) signed by the minted CA, for
/// certmq's CA registration.
pub fn verification_cert(files: &TlsFiles, code: &str) -> anyhow::Result<String> {
    let key_path = files.ca_key.as_ref().context("no CA key")?;
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_path)?)?;
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, code);
    Ok(p.signed_by(&key, &ca_cert, &ca_key)?.pem())
}
