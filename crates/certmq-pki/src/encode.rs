//! Small encodings the registry needs: PEM for downloads, random codes.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(B64.get(idx).copied().unwrap_or(b'A')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `-----BEGIN <label>-----` PEM with 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let bytes = body.as_bytes();
    for line in bytes.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// `n` random bytes as lower-case hex, from the system's CSPRNG.
pub fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| "the random generator failed".to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}

/// What a file given to the CLI should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One or more certificates.
    Certificates,
    PrivateKey,
}

/// The PEM text of a certificate or key file that may be PEM or DER (as
/// OpenSSL writes with `-outform DER`): PEM is passed through, DER is
/// wrapped in the right PEM block. The error says what the bytes are not.
pub fn pem_of_file(bytes: &[u8], kind: FileKind) -> Result<String, String> {
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return String::from_utf8(bytes.to_vec())
            .map_err(|_| "the PEM file holds bytes that are not text".to_string());
    }
    match kind {
        FileKind::Certificates => {
            use x509_parser::prelude::FromDer;
            let mut rest = bytes;
            let mut out = String::new();
            while !rest.is_empty() {
                let (after, _) = x509_parser::certificate::X509Certificate::from_der(rest)
                    .map_err(|_| "neither a PEM nor a DER certificate".to_string())?;
                let used = rest.len() - after.len();
                out.push_str(&pem_encode(
                    "CERTIFICATE",
                    rest.get(..used).unwrap_or_default(),
                ));
                rest = after;
            }
            if out.is_empty() {
                return Err("the file is empty".into());
            }
            Ok(out)
        }
        FileKind::PrivateKey => {
            use rustls::pki_types::PrivateKeyDer;
            let key = PrivateKeyDer::try_from(bytes)
                .map_err(|_| "neither a PEM nor a DER private key".to_string())?;
            let label = match key {
                PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
                PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
                _ => "PRIVATE KEY",
            };
            Ok(pem_encode(label, bytes))
        }
    }
}
