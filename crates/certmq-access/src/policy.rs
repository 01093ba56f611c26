//! Authorization policies (SPEC 11): the document an operator writes, its
//! validation, and the parts of it the evaluators share (topic templates
//! with variables, glob patterns, CIDRs, MQTT filter relations).
//!
//! A policy applies to a client when every condition it has holds
//! (`client_ids`, `usernames`: glob patterns with `*`; `ca_ids`;
//! `source_cidrs`), to a request when the action is listed, the QoS is in
//! `qos` and the retain flag equals `retain` (publish only), and to a
//! topic when one of its `topics` filters matches it (no `topics`: every
//! topic). Variables in filters take the client's values; a value that is
//! missing, empty, or holds `/`, `+`, `#` or NUL matches nothing (a client
//! id `+` must not turn `devices/${client_id}/#` into a wildcard).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use certmq_core::ClientFacts;

use crate::error::AccessError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
}

impl Action {
    pub(crate) fn bit(self) -> u8 {
        match self {
            Action::Connect => 1,
            Action::Publish => 2,
            Action::Subscribe => 4,
        }
    }
}

/// A policy as the API takes it (`POST /policies`, `PUT /policies/{id}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Chosen by the operator (letters, digits, `-`, `_`, `.`), or
    /// generated.
    #[serde(default)]
    pub id: Option<String>,
    pub priority: i64,
    pub effect: Effect,
    pub actions: Vec<Action>,
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    #[serde(default)]
    pub client_ids: Option<Vec<String>>,
    #[serde(default)]
    pub usernames: Option<Vec<String>>,
    #[serde(default)]
    pub ca_ids: Option<Vec<String>>,
    #[serde(default)]
    pub source_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub qos: Option<Vec<u8>>,
    #[serde(default)]
    pub retain: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A validated policy, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub priority: i64,
    pub effect: Effect,
    pub actions: Vec<Action>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub topics: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub usernames: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ca_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub qos: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retain: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
}

/// Limits on one policy.
const MAX_LIST: usize = 256;
const MAX_TEXT: usize = 1024;

fn bad(message: impl Into<String>) -> AccessError {
    AccessError::invalid("InvalidPolicy", message)
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Policy {
    /// Validates `input`; `id` is used when the input names none.
    pub fn from_input(input: PolicyInput, id: String) -> Result<Self, AccessError> {
        let id = input.id.clone().unwrap_or(id);
        if !valid_id(&id) {
            return Err(bad("id: 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        let p = Policy {
            id,
            priority: input.priority,
            effect: input.effect,
            actions: input.actions,
            topics: input.topics,
            client_ids: input.client_ids,
            usernames: input.usernames,
            ca_ids: input.ca_ids,
            source_cidrs: input.source_cidrs,
            qos: input.qos,
            retain: input.retain,
            description: input.description,
        };
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), AccessError> {
        if self.actions.is_empty() {
            return Err(bad("actions: at least one of connect, publish, subscribe"));
        }
        let lists = [
            ("topics", &self.topics),
            ("client_ids", &self.client_ids),
            ("usernames", &self.usernames),
            ("ca_ids", &self.ca_ids),
            ("source_cidrs", &self.source_cidrs),
        ];
        for (name, list) in lists {
            if let Some(l) = list {
                if l.is_empty() || l.len() > MAX_LIST {
                    return Err(bad(format!(
                        "{name}: 1 to {MAX_LIST} entries (leave it out to match any)"
                    )));
                }
                if l.iter().any(|s| s.is_empty() || s.len() > MAX_TEXT) {
                    return Err(bad(format!("{name}: entries of 1 to {MAX_TEXT} bytes")));
                }
            }
        }
        for t in self.topics.iter().flatten() {
            Template::parse(t).map_err(|e| bad(format!("topics: '{t}': {e}")))?;
        }
        for c in self.source_cidrs.iter().flatten() {
            Cidr::parse(c).ok_or_else(|| {
                bad(format!(
                    "source_cidrs: '{c}' is not an address or CIDR (10.0.0.0/8, ::1/128)"
                ))
            })?;
        }
        if let Some(q) = &self.qos {
            if q.is_empty() || q.iter().any(|q| *q > 2) {
                return Err(bad("qos: a list of 0, 1, 2"));
            }
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_TEXT)
        {
            return Err(bad(format!("description: at most {MAX_TEXT} bytes")));
        }
        Ok(())
    }
}

/// A variable of a topic template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Var {
    ClientId,
    Username,
    CertCn,
    CertOu,
    CertSerial,
    CertFingerprint,
    CertSanDns,
    CertCaId,
}

impl Var {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "client_id" => Var::ClientId,
            "username" => Var::Username,
            "cert.cn" => Var::CertCn,
            "cert.ou" => Var::CertOu,
            "cert.serial" => Var::CertSerial,
            "cert.fingerprint" => Var::CertFingerprint,
            "cert.san.dns" => Var::CertSanDns,
            "cert.ca_id" => Var::CertCaId,
            _ => return None,
        })
    }

    /// The client's values (several for SAN DNS names), usable ones only.
    pub(crate) fn values(self, c: &ClientFacts) -> Vec<&str> {
        let cert = c.cert.as_deref();
        let out: Vec<&str> = match self {
            Var::ClientId => vec![&*c.client_id],
            Var::Username => c.username.as_deref().into_iter().collect(),
            Var::CertCn => cert.and_then(|c| c.cn.as_deref()).into_iter().collect(),
            Var::CertOu => cert.and_then(|c| c.ou.as_deref()).into_iter().collect(),
            Var::CertSerial => cert.map(|c| c.serial.as_str()).into_iter().collect(),
            Var::CertFingerprint => cert.map(|c| c.fingerprint.as_str()).into_iter().collect(),
            Var::CertSanDns => cert
                .map(|c| c.san_dns.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            Var::CertCaId => cert.map(|c| c.ca_id.as_str()).into_iter().collect(),
        };
        out.into_iter().filter(|v| usable(v)).collect()
    }
}

fn usable(v: &str) -> bool {
    !v.is_empty() && !v.contains(['/', '+', '#', '\0'])
}

/// One part of a template level.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Part {
    Text(String),
    Var(Var),
}

/// One level of a topic template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Level {
    Literal(String),
    Plus,
    Hash,
    /// Text and variables, e.g. `${cert.cn}` or `dev-${client_id}`.
    Vars(Vec<Part>),
}

/// Expansions of one filter beyond which the rest are ignored (SAN lists).
const MAX_EXPANSIONS: usize = 64;

impl Level {
    /// The level's concrete values for a client (none when a variable has
    /// no usable value).
    pub(crate) fn values(parts: &[Part], c: &ClientFacts) -> Vec<String> {
        let mut out = vec![String::new()];
        for part in parts {
            match part {
                Part::Text(t) => out.iter_mut().for_each(|o| o.push_str(t)),
                Part::Var(v) => {
                    let vals = v.values(c);
                    let mut next = Vec::new();
                    for o in &out {
                        for val in &vals {
                            if next.len() < MAX_EXPANSIONS {
                                next.push(format!("{o}{val}"));
                            }
                        }
                    }
                    out = next;
                }
            }
        }
        out
    }

    /// Whether the topic level `level` is one of the level's values.
    pub(crate) fn matches_vars(parts: &[Part], level: &str, c: &ClientFacts) -> bool {
        Self::values(parts, c).iter().any(|v| v == level)
    }
}

/// A topic filter whose levels may hold variables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Template(pub Vec<Level>);

impl Template {
    pub(crate) fn parse(filter: &str) -> Result<Self, String> {
        if filter.starts_with("$share/") {
            return Err("shared-subscription prefixes are not topics; write the filter".into());
        }
        if filter.contains('\0') {
            return Err("NUL is not allowed".into());
        }
        let raw: Vec<&str> = filter.split('/').collect();
        let mut levels = Vec::with_capacity(raw.len());
        for (i, l) in raw.iter().enumerate() {
            let level = match *l {
                "+" => Level::Plus,
                "#" if i + 1 == raw.len() => Level::Hash,
                "#" => return Err("'#' must be the last level".into()),
                _ if l.contains(['+', '#']) => {
                    return Err("'+' and '#' must stand alone in their level".into())
                }
                _ if l.contains("${") => Level::Vars(parse_parts(l)?),
                _ => Level::Literal((*l).to_owned()),
            };
            levels.push(level);
        }
        Ok(Template(levels))
    }

    /// Every concrete filter this template is for a client.
    pub(crate) fn expand(&self, c: &ClientFacts) -> Vec<String> {
        let mut out = vec![String::new()];
        for (i, level) in self.0.iter().enumerate() {
            let vals: Vec<String> = match level {
                Level::Literal(s) => vec![s.clone()],
                Level::Plus => vec!["+".into()],
                Level::Hash => vec!["#".into()],
                Level::Vars(parts) => Level::values(parts, c),
            };
            let mut next = Vec::new();
            for o in &out {
                for v in &vals {
                    if next.len() < MAX_EXPANSIONS {
                        next.push(if i == 0 {
                            v.clone()
                        } else {
                            format!("{o}/{v}")
                        });
                    }
                }
            }
            out = next;
        }
        out
    }
}

fn parse_parts(level: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = level;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "a '${' without its '}'".to_string())?;
        let name = &after[..end];
        let var = Var::parse(name).ok_or_else(|| {
            format!(
                "unknown variable ${{{name}}} (known: client_id, username, cert.cn, cert.ou, \
                 cert.serial, cert.fingerprint, cert.san.dns, cert.ca_id)"
            )
        })?;
        parts.push(Part::Var(var));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// A glob pattern: `*` stands for any characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob(Vec<String>);

impl Glob {
    pub(crate) fn new(p: &str) -> Self {
        Glob(p.split('*').map(str::to_owned).collect())
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let parts = &self.0;
        match parts.as_slice() {
            [] => s.is_empty(),
            [only] => only == s,
            [first, middle @ .., last] => {
                let Some(mut rest) = s.strip_prefix(first.as_str()) else {
                    return false;
                };
                for m in middle {
                    match rest.find(m.as_str()) {
                        Some(i) => rest = &rest[i + m.len()..],
                        None => return false,
                    }
                }
                rest.len() >= last.len() && rest.ends_with(last.as_str())
            }
        }
    }
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// MQTT filter relations on concrete filters (no variables), with the
/// `$`-topic rule: a filter starting with a wildcard matches no topic that
/// starts with `$`.
pub(crate) mod filters {
    /// Whether the filter `f` matches the topic name `t`: the core's
    /// matcher, `$` rule included.
    pub(crate) use certmq_core::topic::matches;

    /// Whether every topic the filter `s` matches is matched by `f`.
    pub(crate) fn covers(f: &str, s: &str) -> bool {
        let fl: Vec<&str> = f.split('/').collect();
        let sl: Vec<&str> = s.split('/').collect();
        let mut i = 0;
        loop {
            match (fl.get(i), sl.get(i)) {
                (Some(&"#"), Some(s)) => return !(i == 0 && s.starts_with('$')),
                (Some(&"#"), None) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                // `#` at the root stands for one level or more: `+/#` covers it.
                (Some(_), Some(&"#")) => return i == 0 && fl.as_slice() == ["+", "#"],
                (Some(&"+"), Some(&"+")) => {}
                (Some(_), Some(&"+")) => return false,
                (Some(&"+"), Some(s)) if !(i == 0 && s.starts_with('$')) => {}
                (Some(f), Some(s)) if f == s => {}
                _ => return false,
            }
            i += 1;
        }
    }

    /// Whether some topic is matched by both filters.
    pub(crate) fn intersect(a: &str, b: &str) -> bool {
        let al: Vec<&str> = a.split('/').collect();
        let bl: Vec<&str> = b.split('/').collect();
        let mut i = 0;
        loop {
            match (al.get(i), bl.get(i)) {
                (None, None) => return true,
                (Some(&"#"), None) | (None, Some(&"#")) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(&x), Some(&y)) => {
                    let wild = |l: &str| l == "+" || l == "#";
                    if i == 0 {
                        if wild(x) && !wild(y) && y.starts_with('$') {
                            return false;
                        }
                        if wild(y) && !wild(x) && x.starts_with('$') {
                            return false;
                        }
                    }
                    if x == "#" || y == "#" {
                        return true;
                    }
                    if !(x == "+" || y == "+" || x == y) {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }
}
