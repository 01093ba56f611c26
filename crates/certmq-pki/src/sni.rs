//! Server-certificate selection by SNI over an immutable snapshot that is
//! swapped atomically: every handshake reads the current snapshot, so a
//! bind, unbind or default toggle applies to the next handshake, and
//! handshakes in progress and live connections are untouched.
//!
//! Order (SPEC section 4): SAN DNS names, exact beats wildcard `*.x.y`
//! (one label); then subject CNs; then the default certificate while it is
//! enabled, or else the custom certificate bound last (so clients that
//! connect by IP address, without SNI, keep working when the default is
//! disabled). Where two certificates claim the same name, the one bound
//! last wins, so a renewed certificate takes over as soon as it is bound.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::CertInfo;

#[derive(Debug, Default)]
pub struct SniSnapshot {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    cn: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniSnapshot {
    /// `custom` in bind order, oldest first. Without a default, the
    /// fallback is the last of `custom`.
    pub fn build<'a>(
        default: Option<Arc<CertifiedKey>>,
        custom: impl IntoIterator<Item = (&'a CertInfo, Arc<CertifiedKey>)>,
    ) -> Self {
        let mut s = SniSnapshot {
            default,
            ..Default::default()
        };
        let mut last = None;
        for (info, key) in custom {
            last = Some(key.clone());
            for name in &info.dns_names {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(rest) => s.wildcard.insert(rest.to_string(), key.clone()),
                    None => s.exact.insert(name, key.clone()),
                };
            }
            if let Some(cn) = &info.subject_cn {
                s.cn.insert(cn.trim_end_matches('.').to_ascii_lowercase(), key.clone());
            }
        }
        if s.default.is_none() {
            s.default = last;
        }
        s
    }

    /// The certificate for a ClientHello's SNI name (None: no SNI).
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
            if let Some(k) = self.cn.get(&name) {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

/// The rustls resolver every TLS and WSS listener shares.
#[derive(Debug)]
pub struct SniResolver {
    current: ArcSwap<SniSnapshot>,
}

impl SniResolver {
    pub fn new(snapshot: SniSnapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// Replaces the snapshot; the next handshake uses it.
    pub fn swap(&self, snapshot: SniSnapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().select(hello.server_name())
    }
}
