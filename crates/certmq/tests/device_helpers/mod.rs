//! Helpers of the device-certificate tests: the admin API, CAs and leaves
//! made with rcgen at test time, mutual-TLS connections, the CLI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::time::Duration;

use certmq_codec::Protocol;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};

use crate::common::*;
use crate::tls_client::{self, Failure};

pub const LIMIT: Duration = Duration::from_secs(60);

pub struct Api {
    pub url: String,
    pub token: String,
    pub agent: ureq::Agent,
}

impl Api {
    pub fn of(b: &BrokerProcess) -> Api {
        Api {
            url: format!("http://{}/api/v1", b.addr("admin-http")),
            token: std::fs::read_to_string(b.dir.0.join("admin.token"))
                .unwrap()
                .trim()
                .into(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    /// The value of a Prometheus sample line that starts with `name`
    /// (labels included, e.g. `certmq_x_total{reason="y"}`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = ureq::get(format!("{}/metrics", self.url))
            .header("authorization", format!("Bearer {}", self.token))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let r = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            ("PATCH", Some(b)) => self
                .agent
                .patch(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            (_, None) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .send_empty(),
        };
        let mut r = r.unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body);
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    pub fn code(&self) -> String {
        self.ok("POST", "/ca-certificates/registration-code", None)["registration_code"]
            .as_str()
            .unwrap()
            .into()
    }

    pub fn rejections(&self) -> Vec<Value> {
        self.ok("GET", "/connection-rejections?limit=1000", None)["items"]
            .as_array()
            .unwrap()
            .clone()
    }
}

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

pub fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

pub fn rcgen_ca(cn: &str, key: KeyPair, is_ca: bool) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    if is_ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

pub fn ca(cn: &str) -> Ca {
    rcgen_ca(cn, KeyPair::generate().unwrap(), true)
}

/// (cert PEM, key PEM) for a leaf with subject CN `cn`, signed by `ca`.
pub fn leaf(ca: &Ca, cn: &str, from: i64, to: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = days(from);
    p.not_after = days(to);
    let c = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (c.pem(), key.serialize_pem())
}

pub fn device(ca: &Ca, cn: &str) -> (String, String) {
    leaf(ca, cn, -1, 365)
}

pub fn register(api: &Api, ca: &Ca, extra: Value) -> String {
    let code = api.code();
    let (v, _) = leaf(ca, &code, -1, 30);
    let mut body = json!({"ca_certificate": ca.cert.pem(), "verification_certificate": v});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            b.insert(k.clone(), x.clone());
        }
    }
    api.ok("POST", "/ca-certificates", Some(body))["id"]
        .as_str()
        .unwrap()
        .into()
}

pub fn mtls(
    b: &BrokerProcess,
    id: Option<&(String, String)>,
    client_id: &str,
) -> Result<tls_client::Client, Failure> {
    let ca = std::fs::read(b.dir.0.join("tls/default-ca.pem")).unwrap();
    tls_client::connect(
        b.addr("mqtt-tls"),
        &ca,
        id.map(|(c, k)| (c.as_bytes(), k.as_bytes())),
        client_id,
        Protocol::V5,
    )
}

pub fn cli(b: &BrokerProcess, args: &[&str]) -> Output {
    let token = std::fs::read_to_string(b.dir.0.join("admin.token")).unwrap();
    run(
        Command::new(bin()).args(args).args([
            "--url",
            &format!("http://{}", b.addr("admin-http")),
            "--token",
            token.trim(),
        ]),
        LIMIT,
    )
}

/// A mutual-TLS CONNECT refused with 0x87, recorded with `reason`.
pub fn expect_refused(b: &BrokerProcess, id: &(String, String), client_id: &str, reason: &str) {
    let api = Api::of(b);
    match mtls(b, Some(id), client_id) {
        Err(Failure::Refused(0x87)) => {}
        other => panic!(
            "{reason}: expected CONNACK 0x87, got {:?}",
            other.map(|_| "connected")
        ),
    }
    let r = api.rejections();
    assert_eq!(r[0]["reason"], reason, "{:?}", r[0]);
    assert_eq!(r[0]["client_id"], client_id);
}

/// A mutual-TLS handshake refused, recorded with `reason`.
pub fn expect_handshake_refused(b: &BrokerProcess, id: &(String, String), reason: &str) {
    let api = Api::of(b);
    let before = api.rejections().len();
    match mtls(b, Some(id), "x") {
        Err(Failure::Tls(_)) => {}
        other => panic!(
            "{reason}: expected a TLS refusal, got {:?}",
            other.map(|_| "connected")
        ),
    }
    let r = api.rejections();
    assert!(r.len() > before, "{reason}: nothing recorded");
    assert_eq!(r[0]["reason"], reason, "{:?}", r[0]);
}

/// The device records under `ca_id`.
pub fn devices_under(api: &Api, ca_id: &str) -> Vec<Value> {
    api.ok("GET", &format!("/device-certificates?ca_id={ca_id}"), None)["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The device records under `ca_id` once there are `n` (JITP records are
/// written off the connect path, a moment after the CONNECT); bounded.
pub fn devices_eventually(api: &Api, ca_id: &str, n: usize) -> Vec<Value> {
    matching_eventually(api, &format!("ca_id={ca_id}"), n)
}

/// The device records matching `query` once there are `n` (bounded).
pub fn matching_eventually(api: &Api, query: &str, n: usize) -> Vec<Value> {
    let list = || {
        api.ok("GET", &format!("/device-certificates?{query}"), None)["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    for _ in 0..250 {
        let found = list();
        if found.len() >= n {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    list()
}
