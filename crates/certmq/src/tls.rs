//! The node's TLS material in the data directory: the default server
//! certificate (minted on first start, kept, reissued by its own CA when it
//! expires or the configured host names change).
//!
//! Files under `<data-dir>/tls/`: `default-ca.pem` (give it to clients as
//! their CA file), `default-ca.key`, `default.pem`, `default.key`; keys are
//! mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::sign::CertifiedKey;

/// Days before expiry at which the default leaf is reissued.
const RENEW_BEFORE_SECS: i64 = 30 * 86_400;

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes `body` to `path` atomically (temp file, fsync, rename), with
/// `mode`.
pub fn write_file(path: &Path, body: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The default server certificate, loaded or minted.
pub struct DefaultServerCert {
    pub certified: Arc<CertifiedKey>,
    pub info: certmq_pki::CertInfo,
}

pub fn load_or_mint_default(
    data_dir: &Path,
    hosts: &[String],
) -> anyhow::Result<DefaultServerCert> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let (ca_pem, ca_key, leaf, key) = (
        dir.join("default-ca.pem"),
        dir.join("default-ca.key"),
        dir.join("default.pem"),
        dir.join("default.key"),
    );
    let now = now_unix();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let ca = match (read(&ca_pem), read(&ca_key)) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => None,
    };
    if let (Some((ca_text, _)), Some(leaf_text), Some(key_text)) = (&ca, read(&leaf), read(&key)) {
        let chain = format!("{leaf_text}{ca_text}");
        match certmq_pki::validate_server_cert(chain.as_bytes(), key_text.as_bytes(), now) {
            Ok(cert)
                if cert.info.not_after - now > RENEW_BEFORE_SECS
                    && hosts.iter().all(|h| covers(&cert.info, h)) =>
            {
                return Ok(leaf_only(cert));
            }
            Ok(_) => {
                tracing::info!("reissuing the default server certificate (expiry or host names)")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the stored default server certificate is unusable; reissuing it")
            }
        }
    }
    let minted = certmq_pki::mint_default(
        hosts,
        ca.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        now,
    )?;
    if ca.is_none() {
        write_file(&ca_key, minted.ca_key_pem.as_bytes(), 0o600)?;
        write_file(&ca_pem, minted.ca_cert_pem.as_bytes(), 0o644)?;
    }
    write_file(&key, minted.key_pem.as_bytes(), 0o600)?;
    write_file(&leaf, minted.cert_pem.as_bytes(), 0o644)?;
    tracing::info!(ca = %ca_pem.display(), "default server certificate minted");
    let chain = format!("{}{}", minted.cert_pem, minted.ca_cert_pem);
    let cert = certmq_pki::validate_server_cert(chain.as_bytes(), minted.key_pem.as_bytes(), now)
        .context("the minted default server certificate does not validate")?;
    Ok(leaf_only(cert))
}

/// The default certificate is served without its CA: clients trust the
/// CA file, and a root in the chain only adds bytes to every handshake.
fn leaf_only(cert: certmq_pki::ServerCert) -> DefaultServerCert {
    let chain: Vec<_> = cert.chain.into_iter().take(1).collect();
    DefaultServerCert {
        certified: Arc::new(CertifiedKey::new(chain, cert.certified.key.clone())),
        info: cert.info,
    }
}

fn covers(info: &certmq_pki::CertInfo, host: &str) -> bool {
    let h = host.to_ascii_lowercase();
    info.dns_names.contains(&h)
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| info.ip_addresses.contains(&ip))
}

/// The admin API token in `<data-dir>/admin.token` (mode 0600), created
/// with 32 random bytes (hex) on first start.
pub fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("cannot read /dev/urandom")?,
        &mut bytes,
    )?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_file(&path, format!("{token}\n").as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "admin API token created");
    Ok(token)
}
