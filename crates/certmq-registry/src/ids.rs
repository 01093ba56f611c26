//! Typed ids of the certificate plane, parsed once at the edge: a CA's or
//! a device certificate's id is the SHA-256 fingerprint of the certificate
//! as registered, 64 hex digits (kept lowercase).

use crate::error::{ErrorKind, RegistryError};

macro_rules! fingerprint_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, ".")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id in `s` (any case); an id no certificate can have is
            /// not found.
            pub fn parse(s: &str) -> Result<Self, RegistryError> {
                if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Self(s.to_ascii_lowercase()))
                } else {
                    Err(RegistryError::new(
                        ErrorKind::NotFound,
                        "NotFound",
                        format!(
                            concat!(
                                $what,
                                " {} not found (an id is the 64 hex digits of the ",
                                "certificate's SHA-256 fingerprint)"
                            ),
                            crate::ids::shown(s)
                        ),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fingerprint_id!(CaId, "CA certificate");
fingerprint_id!(CertId, "device certificate");

/// At most 80 characters of a client-supplied id, for an error message.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_digits_kept_lowercase() {
        let hex = "AB".repeat(32);
        assert_eq!(CaId::parse(&hex).unwrap().as_str(), "ab".repeat(32));
        for bad in ["", "ab", &"g".repeat(64), &"a".repeat(65)] {
            let e = CertId::parse(bad).unwrap_err();
            assert_eq!((e.kind, e.code), (ErrorKind::NotFound, "NotFound"));
        }
    }
}
