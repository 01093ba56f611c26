//! The CLI's admin-API client commands (SPEC section 8): tables for people,
//! `--json` for scripts, a clear message and a non-zero exit on errors.

use std::path::PathBuf;

/// `println!` for command output: a reader that went away (`| head`) ends
/// the command quietly instead of a panic.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod access;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

/// Options every client command takes, anywhere on the line.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        env = "CERTMQ_URL",
        default_value = "http://127.0.0.1:18083"
    )]
    pub url: String,
    /// Bearer token (default: the local node's `<data-dir>/admin.token`).
    #[arg(long, global = true, env = "CERTMQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Server certificates served by SNI on the TLS and WSS listeners.
    #[command(name = "server-cert")]
    ServerCert {
        #[command(subcommand)]
        command: ServerCertCommand,
    },
    /// CA certificates: registration with proof of possession, state, provisioning.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Device (client) certificates.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Recently refused handshakes and CONNECTs, with their reasons.
    Rejections {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Live MQTT connections (of every node in a cluster).
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// The cluster (SPEC 13): its nodes.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// MQTT users (user name and password, argon2id hashes).
    User {
        #[command(subcommand)]
        command: access::UserCommand,
    },
    /// Web-console users (administrator or viewer).
    #[command(name = "console-user")]
    ConsoleUser {
        #[command(subcommand)]
        command: access::ConsoleUserCommand,
    },
    /// Authorization policies: who may connect, publish and subscribe to what.
    Policy {
        #[command(subcommand)]
        command: access::PolicyCommand,
    },
    /// Active alarms: certificates expiring, stale CRLs, persistence
    /// errors, cluster links down.
    Alarms,
    /// The newest audit-log records.
    Audit {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Is the node up? (needs no token)
    Health {
        /// Keep asking for up to SECS seconds until the node answers (for
        /// scripts that start the broker and go on once it is up).
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
    },
}

#[derive(Subcommand)]
pub enum ServerCertCommand {
    /// List every server certificate, the default one included.
    List,
    /// Show one certificate.
    Get {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Bind a certificate chain (PEM, leaf first) and its private key.
    Bind {
        #[arg(long, value_name = "FILE")]
        chain: PathBuf,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Unbind a certificate by id.
    Unbind {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Enable or disable the default certificate.
    Default {
        #[arg(value_enum)]
        action: Toggle,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Issue a registration code (replaces the previous one); put it in the
    /// verification certificate's CN.
    RegistrationCode,
    /// Register a CA with its verification certificate.
    Register {
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        #[arg(long, value_name = "FILE")]
        verification: PathBuf,
        /// ACTIVE (default) or INACTIVE.
        #[arg(long)]
        status: Option<String>,
        /// API or JITP (default).
        #[arg(long)]
        provisioning: Option<String>,
        /// Register JITP devices PENDING_ACTIVATION instead of ACTIVE.
        #[arg(long)]
        no_automatic_activation: bool,
    },
    List,
    /// Detail, with device-certificate counts by status.
    Get {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    Activate {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Deactivate: its devices are refused and their live connections closed.
    Deactivate {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Delete an INACTIVE CA with no ACTIVE device certificates.
    Delete {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Change device provisioning.
    Update {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
        #[arg(long)]
        provisioning: Option<String>,
        #[arg(long)]
        automatic_activation: Option<bool>,
        /// Fetch the CA's CRL from this URL (http:// or https://),
        /// periodically.
        #[arg(long, value_name = "URL", conflicts_with = "no_crl_url")]
        crl_url: Option<String>,
        /// Stop fetching the CA's CRL.
        #[arg(long)]
        no_crl_url: bool,
    },
    /// Show the CA's CRL, or upload one with --file (PEM or DER, as
    /// `openssl ca -gencrl` writes it).
    Crl {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Register a device certificate (it must chain to a registered CA).
    Register {
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The only client id this certificate may connect with.
        #[arg(long)]
        client_id: Option<String>,
        /// ACTIVE (default), INACTIVE or PENDING_ACTIVATION.
        #[arg(long)]
        status: Option<String>,
    },
    /// List, filtered and paged.
    List {
        #[arg(long)]
        ca: Option<String>,
        #[arg(long)]
        client_id: Option<String>,
        #[arg(long)]
        cn: Option<String>,
        #[arg(long)]
        ou: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Only certificates expiring within this many days.
        #[arg(long)]
        expiring_within_days: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    Get {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Print the certificate (PEM).
    Pem {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    Activate {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Deactivate: refused at connect, live connections closed.
    Deactivate {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    /// Revoke for good: refused at connect, live connections closed.
    Revoke {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
    Delete {
        /// The certificate's id (its SHA-256 fingerprint), or a PEM file holding it.
        id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Toggle {
    Enable,
    Disable,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The cluster's nodes: id, health, connections, addresses.
    Nodes,
}

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// Every node's connections (or one node's).
    List {
        /// Only this node's (an id from `certmq cluster nodes`).
        #[arg(long)]
        node: Option<String>,
    },
    /// Close a client's connection (MQTT 5 clients get DISCONNECT 0x98).
    Kick { client_id: String },
}

/// A certificate argument: an id as the API shows it, or the path of a PEM
/// file whose first certificate's SHA-256 fingerprint is the id.
fn cert_id(arg: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(arg);
    if !path.is_file() {
        return Ok(arg.to_string());
    }
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path).with_context(|| format!("cannot read {arg}"))?;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .with_context(|| format!("{arg} holds no PEM certificate"))?
        .with_context(|| format!("{arg} is not a PEM certificate"))?;
    Ok(certmq_pki::fingerprint(&der))
}

struct Api {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Api {
    /// A client without a token: for `/health` only.
    fn anonymous(g: &Global) -> Self {
        Self::with_token(g, String::new())
    }

    fn with_token(g: &Global, token: String) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Self {
            agent,
            base: format!("{}/api/v1", g.url.trim_end_matches('/')),
            token,
        }
    }

    fn new(g: &Global) -> anyhow::Result<Self> {
        let token = match &g.token {
            Some(t) => t.clone(),
            None => {
                let dir = std::env::var_os("CERTMQ_DATA_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("./data"));
                let path = dir.join("admin.token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no --token given and cannot read {} (set --token, CERTMQ_TOKEN or CERTMQ_DATA_DIR)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Self::with_token(g, token))
    }

    /// Calls the API operation `id` of the contract
    /// (`certmq_admin::openapi::OPERATIONS`: method and path come from
    /// there), with its path parameters percent-encoded and `query` added.
    fn op(
        &self,
        id: &str,
        params: &[(&str, &str)],
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let text = self.op_text(id, params, query, body)?;
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        })
    }

    /// [`Api::op`] returning the body as text (the PEM download).
    fn op_text(
        &self,
        id: &str,
        params: &[(&str, &str)],
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<String> {
        use certmq_admin::openapi::{encode_component, operation, path_for};
        let op = operation(id).with_context(|| format!("no API operation {id}"))?;
        let mut path =
            path_for(op, params).with_context(|| format!("{id}: a path parameter is missing"))?;
        for (i, (k, v)) in query.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(k);
            path.push('=');
            path.push_str(&encode_component(v));
        }
        self.send(op.method, &path, body)
    }

    /// Calls operation `id` with a raw body (a CRL).
    fn op_raw(
        &self,
        id: &str,
        params: &[(&str, &str)],
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        use certmq_admin::openapi::{operation, path_for};
        let op = operation(id).with_context(|| format!("no API operation {id}"))?;
        let path =
            path_for(op, params).with_context(|| format!("{id}: a path parameter is missing"))?;
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let req = self
            .agent
            .put(&url)
            .header("authorization", &auth)
            .content_type(content_type);
        let mut resp = req
            .send(&body[..])
            .with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let code = v["error"]["code"].as_str().unwrap_or("Error");
            let message = v["error"]["message"].as_str().unwrap_or("");
            bail!("{code} (HTTP {}): {message}", status.as_u16());
        }
        Ok(v)
    }

    /// One request; a non-2xx answer becomes an error with the API's code
    /// and message.
    fn send(
        &self,
        method: certmq_admin::openapi::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<String> {
        use certmq_admin::openapi::Method as M;
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            (M::Get, _) => self.agent.get(&url).header("authorization", &auth).call(),
            (M::Delete, _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            (M::Patch, Some(b)) => self
                .agent
                .patch(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            (M::Patch, None) => self
                .agent
                .patch(&url)
                .header("authorization", &auth)
                .send_empty(),
            (M::Post, Some(b)) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            (M::Post, None) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .send_empty(),
            (M::Put, Some(b)) => self
                .agent
                .put(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            (M::Put, None) => self
                .agent
                .put(&url)
                .header("authorization", &auth)
                .send_empty(),
        };
        let mut resp = result.with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if !status.is_success() {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = v["error"]["code"].as_str().unwrap_or("Error");
            let message = v["error"]["message"].as_str().unwrap_or("");
            bail!("{code} (HTTP {}): {message}", status.as_u16());
        }
        Ok(text)
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width.get(i).copied().unwrap_or(0)))
            .collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn cert_rows(items: &[Value]) {
    table(
        &[
            "ID",
            "NAME",
            "STATE",
            "SUBJECT CN",
            "DNS NAMES",
            "NOT AFTER",
        ],
        items
            .iter()
            .map(|c| {
                let state = match (c["is_default"].as_bool(), c["enabled"].as_bool()) {
                    (Some(true), Some(false)) => "default, disabled",
                    (Some(true), _) => "default",
                    _ => "bound",
                };
                vec![
                    s(&c["id"]),
                    s(&c["name"]),
                    state.into(),
                    s(&c["subject_cn"]),
                    s(&c["dns_names"]),
                    s(&c["not_after"]),
                ]
            })
            .collect(),
    );
}

pub fn run(cmd: ClientCommand, g: &Global) -> anyhow::Result<()> {
    let out = |v: &Value, human: &dyn Fn(&Value)| {
        if g.json {
            outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    };
    if let ClientCommand::Health { wait } = cmd {
        let api = Api::anonymous(g);
        let wait = std::time::Duration::try_from_secs_f64(wait.unwrap_or(0.0))
            .unwrap_or_default()
            .min(std::time::Duration::from_secs(3600));
        let deadline = std::time::Instant::now() + wait;
        let v = loop {
            match api.op("health", &[], &[], None) {
                Ok(v) => break v,
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        };
        out(&v, &|v| outln!("{}", s(&v["status"])));
        return Ok(());
    }
    let api = Api::new(g)?;
    match cmd {
        ClientCommand::Health { .. } => {}
        ClientCommand::ServerCert { command } => match command {
            ServerCertCommand::List => {
                let v = api.op("list_server_certificates", &[], &[], None)?;
                out(&v, &|v| {
                    cert_rows(v["items"].as_array().map_or(&[][..], |a| a))
                });
            }
            ServerCertCommand::Get { id } => {
                let id = cert_id(&id)?;
                let v = api.op("get_server_certificate", &[("id", &id)], &[], None)?;
                out(&v, &|v| cert_rows(std::slice::from_ref(v)));
            }
            ServerCertCommand::Bind { chain, key, name } => {
                let chain_pem = read_as(&chain, certmq_pki::FileKind::Certificates)?;
                let key_pem = read_as(&key, certmq_pki::FileKind::PrivateKey)?;
                let body = serde_json::json!({
                    "name": name,
                    "certificate_chain": chain_pem,
                    "private_key": key_pem,
                });
                let v = api.op("bind_server_certificate", &[], &[], Some(body))?;
                out(&v, &|v| {
                    outln!("bound {}", s(&v["id"]));
                    cert_rows(std::slice::from_ref(v));
                    warnings(v);
                });
            }
            ServerCertCommand::Unbind { id } => {
                let id = cert_id(&id)?;
                api.op("unbind_server_certificate", &[("id", &id)], &[], None)?;
                out(&serde_json::json!({"unbound": id}), &|_| {
                    outln!("unbound {id}")
                });
            }
            ServerCertCommand::Default { action } => {
                let op = match action {
                    Toggle::Enable => "enable_default_server_certificate",
                    Toggle::Disable => "disable_default_server_certificate",
                };
                let v = api.op(op, &[], &[], None)?;
                out(&v, &|v| {
                    let state = if v["enabled"].as_bool() == Some(true) {
                        "enabled"
                    } else {
                        "disabled"
                    };
                    outln!("default server certificate {state}");
                });
            }
        },
        ClientCommand::Connections { command } => match command {
            ConnectionsCommand::List { node } => {
                let query: Vec<(&str, String)> = node.into_iter().map(|n| ("node", n)).collect();
                let v = api.op("list_connections", &[], &query, None)?;
                out(&v, &|v| {
                    table(
                        &[
                            "NODE",
                            "CLIENT ID",
                            "LISTENER",
                            "PEER",
                            "CERTIFICATE",
                            "CONNECTED AT",
                        ],
                        v["items"]
                            .as_array()
                            .map_or(&[][..], |a| a)
                            .iter()
                            .map(|c| {
                                vec![
                                    s(&c["node"]),
                                    s(&c["client_id"]),
                                    s(&c["listener"]),
                                    s(&c["peer_address"]),
                                    s(&c["certificate_id"]),
                                    s(&c["connected_at"]),
                                ]
                            })
                            .collect(),
                    )
                });
            }
            ConnectionsCommand::Kick { client_id } => {
                api.op("kick_connection", &[("client_id", &client_id)], &[], None)?;
                out(&serde_json::json!({"kicked": client_id}), &|_| {
                    outln!("closed the connection of {client_id}")
                });
            }
        },
        ClientCommand::Cluster {
            command: ClusterCommand::Nodes,
        } => {
            let v = api.op("list_cluster_nodes", &[], &[], None)?;
            out(&v, &|v| {
                table(
                    &["NODE", "HEALTH", "CONNECTIONS", "ADDRESSES", "LAST SEEN"],
                    v["items"]
                        .as_array()
                        .map_or(&[][..], |a| a)
                        .iter()
                        .map(|n| {
                            let addresses: Vec<String> = n["addresses"]
                                .as_array()
                                .map_or(&[][..], |a| a)
                                .iter()
                                .map(|a| format!("{}={}", s(&a["protocol"]), s(&a["address"])))
                                .collect();
                            let id = if n["this"] == true {
                                format!("{} (this)", s(&n["id"]))
                            } else {
                                s(&n["id"])
                            };
                            vec![
                                id,
                                s(&n["health"]),
                                n["connections"].to_string(),
                                addresses.join(" "),
                                s(&n["last_seen"]),
                            ]
                        })
                        .collect(),
                )
            });
        }
        ClientCommand::Ca { command } => ca(&api, command, &out)?,
        ClientCommand::Device { command } => device(&api, command, &out)?,
        ClientCommand::User { command } => access::user(&api, command, &out)?,
        ClientCommand::Policy { command } => access::policy(&api, command, &out)?,
        ClientCommand::ConsoleUser { command } => access::console_user(&api, command, &out)?,
        ClientCommand::Rejections { limit } => {
            let v = api.op(
                "list_connection_rejections",
                &[],
                &[("limit", limit.to_string())],
                None,
            )?;
            out(&v, &|v| {
                table(
                    &[
                        "AT",
                        "REASON",
                        "LISTENER",
                        "PEER",
                        "CLIENT ID",
                        "USER",
                        "CERTIFICATE",
                    ],
                    items(v)
                        .iter()
                        .map(|r| {
                            vec![
                                s(&r["at"]),
                                s(&r["reason"]),
                                s(&r["listener"]),
                                s(&r["peer_address"]),
                                s(&r["client_id"]),
                                s(&r["username"]),
                                s(&r["certificate_id"]),
                            ]
                        })
                        .collect(),
                )
            });
        }
        ClientCommand::Alarms => {
            let v = api.op("list_alarms", &[], &[], None)?;
            out(&v, &|v| {
                let items = v["items"].as_array().map_or(&[][..], |a| a);
                if items.is_empty() {
                    outln!("no active alarms");
                    return;
                }
                table(
                    &["SEVERITY", "KIND", "SUBJECT", "SINCE", "MESSAGE"],
                    items
                        .iter()
                        .map(|a| {
                            vec![
                                s(&a["severity"]),
                                s(&a["kind"]),
                                s(&a["subject"]),
                                s(&a["raised_at"]),
                                s(&a["message"]),
                            ]
                        })
                        .collect(),
                )
            });
        }
        ClientCommand::Audit { limit } => {
            let v = api.op("audit_log", &[], &[("limit", limit.to_string())], None)?;
            out(&v, &|v| {
                table(
                    &["SEQ", "AT", "ACTOR", "ACTION", "TARGET"],
                    v["items"]
                        .as_array()
                        .map_or(&[][..], |a| a)
                        .iter()
                        .map(|r| {
                            vec![
                                s(&r["seq"]),
                                s(&r["at"]),
                                s(&r["actor"]),
                                s(&r["action"]),
                                s(&r["target"]),
                            ]
                        })
                        .collect(),
                )
            });
        }
    }
    Ok(())
}

type Out<'a> = dyn Fn(&Value, &dyn Fn(&Value)) + 'a;

fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map_or(&[][..], |a| a)
}

/// A certificate file, PEM or DER, as PEM text.
/// Prints a registration's findings (SPEC 14), if any, to stderr.
fn warnings(v: &Value) {
    for w in v["warnings"].as_array().map_or(&[][..], |a| a) {
        eprintln!("warning: {}: {}", s(&w["code"]), s(&w["message"]));
    }
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    read_as(path, certmq_pki::FileKind::Certificates)
}

fn read_as(path: &PathBuf, kind: certmq_pki::FileKind) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    certmq_pki::pem_of_file(&bytes, kind).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn ca_rows(cas: &[Value]) {
    table(
        &[
            "ID",
            "STATUS",
            "SUBJECT CN",
            "SERIAL",
            "PROVISIONING",
            "AUTO",
            "NOT AFTER",
        ],
        cas.iter()
            .map(|c| {
                vec![
                    s(&c["id"]),
                    s(&c["status"]),
                    s(&c["subject_cn"]),
                    s(&c["serial_number"]),
                    s(&c["device_provisioning"]),
                    s(&c["automatic_activation"]),
                    s(&c["not_after"]),
                ]
            })
            .collect(),
    );
}

fn device_rows(ds: &[Value]) {
    table(
        &[
            "ID",
            "STATUS",
            "SUBJECT CN",
            "CLIENT ID",
            "SOURCE",
            "CA",
            "NOT AFTER",
        ],
        ds.iter()
            .map(|d| {
                vec![
                    s(&d["id"]),
                    s(&d["status"]),
                    s(&d["subject_cn"]),
                    s(&d["client_id"]),
                    s(&d["source"]),
                    s(&d["ca_id"]),
                    s(&d["not_after"]),
                ]
            })
            .collect(),
    );
}

fn ca(api: &Api, cmd: CaCommand, out: &Out<'_>) -> anyhow::Result<()> {
    match cmd {
        CaCommand::RegistrationCode => {
            let v = api.op("new_registration_code", &[], &[], None)?;
            out(&v, &|v| {
                outln!("{}", s(&v["registration_code"]));
                eprintln!(
                    "(valid until {}; use it as the verification certificate's Common Name)",
                    s(&v["expires_at"])
                );
            });
        }
        CaCommand::Register {
            ca,
            verification,
            status,
            provisioning,
            no_automatic_activation,
        } => {
            let body = serde_json::json!({
                "ca_certificate": read(&ca)?,
                "verification_certificate": read(&verification)?,
                "status": status,
                "device_provisioning": provisioning,
                "automatic_activation": !no_automatic_activation,
            });
            let v = api.op("register_ca_certificate", &[], &[], Some(body))?;
            out(&v, &|v| {
                outln!("registered {}", s(&v["id"]));
                ca_rows(std::slice::from_ref(v));
                warnings(v);
            });
        }
        CaCommand::List => {
            let v = api.op("list_ca_certificates", &[], &[], None)?;
            out(&v, &|v| ca_rows(items(v)));
        }
        CaCommand::Get { id } => {
            let id = cert_id(&id)?;
            let v = api.op("get_ca_certificate", &[("id", &id)], &[], None)?;
            out(&v, &|v| {
                ca_rows(std::slice::from_ref(v));
                if let Some(counts) = v["device_certificate_counts"].as_object() {
                    let text: Vec<String> =
                        counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    outln!(
                        "device certificates: {}",
                        if text.is_empty() {
                            "none".into()
                        } else {
                            text.join(", ")
                        }
                    );
                }
            });
        }
        CaCommand::Activate { id } => {
            let id = cert_id(&id)?;
            let v = api.op("activate_ca_certificate", &[("id", &id)], &[], None)?;
            out(&v, &|v| ca_rows(std::slice::from_ref(v)));
        }
        CaCommand::Deactivate { id } => {
            let id = cert_id(&id)?;
            let v = api.op("deactivate_ca_certificate", &[("id", &id)], &[], None)?;
            out(&v, &|v| ca_rows(std::slice::from_ref(v)));
        }
        CaCommand::Delete { id } => {
            let id = cert_id(&id)?;
            api.op("delete_ca_certificate", &[("id", &id)], &[], None)?;
            out(&serde_json::json!({"deleted": id}), &|_| {
                outln!("deleted {id}")
            });
        }
        CaCommand::Update {
            id,
            provisioning,
            automatic_activation,
            crl_url,
            no_crl_url,
        } => {
            let id = cert_id(&id)?;
            let mut body = serde_json::json!({
                "device_provisioning": provisioning,
                "automatic_activation": automatic_activation,
            });
            if let Some(u) = crl_url {
                body["crl_url"] = Value::String(u);
            } else if no_crl_url {
                body["crl_url"] = Value::Null;
            }
            let v = api.op("update_ca_certificate", &[("id", &id)], &[], Some(body))?;
            out(&v, &|v| {
                ca_rows(std::slice::from_ref(v));
                if !v["crl_url"].is_null() {
                    outln!("CRL fetched from {}", s(&v["crl_url"]));
                }
            });
        }
        CaCommand::Crl { id, file } => {
            let id = cert_id(&id)?;
            let v = match file {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let pem = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
                    let ct = if pem {
                        "application/x-pem-file"
                    } else {
                        "application/pkix-crl"
                    };
                    api.op_raw("put_ca_crl", &[("id", &id)], ct, bytes)?
                }
                None => api.op("get_ca_crl", &[("id", &id)], &[], None)?,
            };
            out(&v, &|v| {
                table(
                    &[
                        "ISSUER",
                        "THIS UPDATE",
                        "NEXT UPDATE",
                        "REVOKED",
                        "STALE",
                        "SOURCE",
                    ],
                    vec![vec![
                        s(&v["issuer_cn"]),
                        s(&v["this_update"]),
                        s(&v["next_update"]),
                        s(&v["revoked_count"]),
                        s(&v["stale"]),
                        s(&v["source"]),
                    ]],
                )
            });
        }
    }
    Ok(())
}

fn device(api: &Api, cmd: DeviceCommand, out: &Out<'_>) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Register {
            cert,
            client_id,
            status,
        } => {
            let body = serde_json::json!({
                "device_certificate": read(&cert)?,
                "client_id": client_id,
                "status": status,
            });
            let v = api.op("register_device_certificate", &[], &[], Some(body))?;
            out(&v, &|v| {
                outln!("registered {}", s(&v["id"]));
                device_rows(std::slice::from_ref(v));
                warnings(v);
            });
        }
        DeviceCommand::List {
            ca,
            client_id,
            cn,
            ou,
            serial,
            status,
            expiring_within_days,
            limit,
            offset,
        } => {
            let mut q = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
            for (k, v) in [
                ("ca_id", ca),
                ("client_id", client_id),
                ("common_name", cn),
                ("ou", ou),
                ("serial_number", serial),
                ("status", status),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            if let Some(days) = expiring_within_days {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                q.push(("expires_before", (now + days * 86_400).to_string()));
            }
            let v = api.op("list_device_certificates", &[], &q, None)?;
            out(&v, &|v| {
                device_rows(items(v));
                outln!("({} of {})", items(v).len(), s(&v["total"]));
            });
        }
        DeviceCommand::Get { id } => {
            let id = cert_id(&id)?;
            let v = api.op("get_device_certificate", &[("id", &id)], &[], None)?;
            out(&v, &|v| device_rows(std::slice::from_ref(v)));
        }
        DeviceCommand::Pem { id } => {
            let id = cert_id(&id)?;
            let pem = api.op_text("download_device_certificate", &[("id", &id)], &[], None)?;
            let _ = std::io::Write::write_all(&mut std::io::stdout(), pem.as_bytes());
        }
        DeviceCommand::Activate { id } => state(api, &cert_id(&id)?, "activate", out)?,
        DeviceCommand::Deactivate { id } => state(api, &cert_id(&id)?, "deactivate", out)?,
        DeviceCommand::Revoke { id } => state(api, &cert_id(&id)?, "revoke", out)?,
        DeviceCommand::Delete { id } => {
            let id = cert_id(&id)?;
            api.op("delete_device_certificate", &[("id", &id)], &[], None)?;
            out(&serde_json::json!({"deleted": id}), &|_| {
                outln!("deleted {id}")
            });
        }
    }
    Ok(())
}

fn state(api: &Api, id: &str, action: &str, out: &Out<'_>) -> anyhow::Result<()> {
    let v = api.op(
        &format!("{action}_device_certificate"),
        &[("id", id)],
        &[],
        None,
    )?;
    out(&v, &|v| device_rows(std::slice::from_ref(v)));
    Ok(())
}
