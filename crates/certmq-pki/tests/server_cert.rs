//! Server-certificate rules and SNI selection, with certificates minted at
//! test time (rcgen). The OpenSSL-made certificates of the manual page are
//! exercised end to end in the binary's tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use certmq_pki::{validate_server_cert, ServerCertError, SniSnapshot};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

struct Leaf {
    sans: Vec<&'static str>,
    cn: Option<&'static str>,
    server_auth: bool,
    from: i64,
    to: i64,
}

impl Default for Leaf {
    fn default() -> Self {
        Leaf {
            sans: vec!["mqtt.example.com", "*.example.com"],
            cn: Some("mqtt.example.com"),
            server_auth: true,
            from: NOW - DAY,
            to: NOW + 365 * DAY,
        }
    }
}

fn leaf(l: Leaf, issuer: &Ca) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(l.sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    // rcgen's default subject carries a CN; start from an empty one.
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Example");
    if let Some(cn) = l.cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    if l.server_auth {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    } else {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    p.not_before = time::OffsetDateTime::from_unix_timestamp(l.from).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(l.to).unwrap();
    let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn check(chain: &str, key: &str) -> Result<certmq_pki::ServerCert, ServerCertError> {
    validate_server_cert(chain.as_bytes(), key.as_bytes(), NOW)
}

#[test]
fn a_good_chain_validates_and_records_its_names() {
    let ca = ca("Example CA");
    let (cert, key) = leaf(Leaf::default(), &ca);
    let ok = check(&format!("{cert}{}", ca.cert.pem()), &key).unwrap();
    assert_eq!(ok.info.subject_cn.as_deref(), Some("mqtt.example.com"));
    assert_eq!(ok.info.issuer_cn.as_deref(), Some("Example CA"));
    assert_eq!(ok.info.dns_names, ["mqtt.example.com", "*.example.com"]);
    assert_eq!(ok.info.id.len(), 64);
    assert_eq!(ok.chain.len(), 2);
}

#[test]
fn every_refusal_has_its_own_code() {
    let ca_a = ca("A");
    let good = leaf(Leaf::default(), &ca_a);
    let chain = format!("{}{}", good.0, ca_a.cert.pem());
    #[track_caller]
    fn code(r: Result<certmq_pki::ServerCert, ServerCertError>) -> &'static str {
        r.map(|_| ()).unwrap_err().code()
    }

    let (c, k) = leaf(
        Leaf {
            server_auth: false,
            ..Default::default()
        },
        &ca_a,
    );
    assert_eq!(code(check(&c, &k)), "MissingServerAuthUsage");
    let (c, k) = leaf(
        Leaf {
            sans: vec![],
            ..Default::default()
        },
        &ca_a,
    );
    assert_eq!(code(check(&c, &k)), "MissingSubjectAltName");
    let (c, k) = leaf(
        Leaf {
            cn: None,
            ..Default::default()
        },
        &ca_a,
    );
    assert_eq!(code(check(&c, &k)), "MissingCommonName");
    let (c, k) = leaf(
        Leaf {
            from: NOW - 400 * DAY,
            to: NOW - DAY,
            ..Default::default()
        },
        &ca_a,
    );
    assert_eq!(code(check(&c, &k)), "CertificateExpired");
    let (c, k) = leaf(
        Leaf {
            from: NOW + DAY,
            to: NOW + 400 * DAY,
            ..Default::default()
        },
        &ca_a,
    );
    assert_eq!(code(check(&c, &k)), "CertificateNotYetValid");

    let six = format!("{}{}", good.0, ca_a.cert.pem().repeat(5));
    assert_eq!(code(check(&six, &good.1)), "ChainTooLong");
    let mut big = chain.clone();
    while big.len() <= 16 * 1024 {
        big.push_str("# padding so the chain file exceeds sixteen kibibytes\n");
    }
    assert_eq!(code(check(&big, &good.1)), "ChainTooLarge");
    assert_eq!(
        code(check("not a certificate", &good.1)),
        "InvalidCertificatePem"
    );
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    assert_eq!(code(check(&chain, &other_key)), "KeyMismatch");
    assert_eq!(code(check(&chain, "garbage")), "InvalidPrivateKey");
    // Out of order: CA first.
    let reversed = format!("{}{}", ca_a.cert.pem(), good.0);
    assert!(check(&reversed, &good.1).is_err());
    // A chain whose next certificate has the issuer's name but another key.
    let rogue = ca("A");
    let forged = format!("{}{}", good.0, rogue.cert.pem());
    assert_eq!(code(check(&forged, &good.1)), "ChainSignatureInvalid");
    // Not the issuer at all.
    let ca_b = ca("B");
    let wrong = format!("{}{}", good.0, ca_b.cert.pem());
    assert_eq!(code(check(&wrong, &good.1)), "ChainOutOfOrder");
}

#[test]
fn sni_prefers_exact_san_then_wildcard_then_cn_then_default() {
    let ca = ca("CA");
    let (exact_c, exact_k) = leaf(
        Leaf {
            sans: vec!["mqtt.example.com"],
            cn: Some("exact"),
            ..Default::default()
        },
        &ca,
    );
    let (wild_c, wild_k) = leaf(
        Leaf {
            sans: vec!["*.example.com"],
            cn: Some("cn-only.example.org"),
            ..Default::default()
        },
        &ca,
    );
    let (def_c, def_k) = leaf(
        Leaf {
            sans: vec!["localhost"],
            cn: Some("default"),
            ..Default::default()
        },
        &ca,
    );
    let exact = check(&exact_c, &exact_k).unwrap();
    let wild = check(&wild_c, &wild_k).unwrap();
    let default = check(&def_c, &def_k).unwrap();
    let snap = SniSnapshot::build(
        Some(default.certified.clone()),
        [
            (&exact.info, exact.certified.clone()),
            (&wild.info, wild.certified.clone()),
        ],
    );
    let pick = |name: Option<&str>| {
        snap.select(name)
            .map(|k| certmq_pki::fingerprint(k.cert[0].as_ref()))
    };
    assert_eq!(pick(Some("mqtt.example.com")), Some(exact.info.id.clone()));
    assert_eq!(pick(Some("MQTT.Example.com.")), Some(exact.info.id.clone()));
    assert_eq!(pick(Some("api.example.com")), Some(wild.info.id.clone()));
    assert_eq!(pick(Some("a.b.example.com")), Some(default.info.id.clone()));
    assert_eq!(
        pick(Some("cn-only.example.org")),
        Some(wild.info.id.clone())
    );
    assert_eq!(pick(None), Some(default.info.id.clone()));
    // Default disabled: no match (or no SNI) gets the certificate bound
    // last (SPEC 4), a match still its own.
    let snap = SniSnapshot::build(
        None,
        [
            (&exact.info, exact.certified.clone()),
            (&wild.info, wild.certified.clone()),
        ],
    );
    let pick = |name: Option<&str>| {
        snap.select(name)
            .map(|k| certmq_pki::fingerprint(k.cert[0].as_ref()))
    };
    assert_eq!(pick(Some("other.org")), Some(wild.info.id.clone()));
    assert_eq!(pick(None), Some(wild.info.id.clone()));
    assert_eq!(pick(Some("mqtt.example.com")), Some(exact.info.id.clone()));
    // Nothing bound and no default: no certificate (the handshake fails).
    let empty = SniSnapshot::build(None, []);
    assert!(empty.select(None).is_none());
}
