//! The CLI's admin-API client commands (SPEC section 8): tables for people,
//! `--json` for scripts, a clear message and a non-zero exit on errors.

use std::path::PathBuf;

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
    /// Live MQTT connections.
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// The newest audit-log records.
    Audit {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Is the node up?
    Health,
}

#[derive(Subcommand)]
pub enum ServerCertCommand {
    /// List every server certificate, the default one included.
    List,
    /// Show one certificate.
    Get { id: String },
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
    Unbind { id: String },
    /// Enable or disable the default certificate.
    Default {
        #[arg(value_enum)]
        action: Toggle,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Toggle {
    Enable,
    Disable,
}

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    List,
    /// Close a client's connection (MQTT 5 clients get DISCONNECT 0x98).
    Kick {
        client_id: String,
    },
}

struct Api {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Api {
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
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self {
            agent,
            base: format!("{}/api/v1", g.url.trim_end_matches('/')),
            token,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
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
        let mut resp = result.with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let code = value["error"]["code"].as_str().unwrap_or("Error");
            let message = value["error"]["message"].as_str().unwrap_or("");
            bail!("{code} (HTTP {}): {message}", status.as_u16());
        }
        Ok(value)
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
        println!("{}", parts.join("  ").trim_end());
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
    let api = Api::new(g)?;
    let out = |v: &Value, human: &dyn Fn(&Value)| {
        if g.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    };
    match cmd {
        ClientCommand::Health => {
            let v = api.call("GET", "/health", None)?;
            out(&v, &|v| println!("{}", s(&v["status"])));
        }
        ClientCommand::ServerCert { command } => match command {
            ServerCertCommand::List => {
                let v = api.call("GET", "/server-certificates", None)?;
                out(&v, &|v| {
                    cert_rows(v["items"].as_array().map_or(&[][..], |a| a))
                });
            }
            ServerCertCommand::Get { id } => {
                let v = api.call("GET", &format!("/server-certificates/{id}"), None)?;
                out(&v, &|v| cert_rows(std::slice::from_ref(v)));
            }
            ServerCertCommand::Bind { chain, key, name } => {
                let chain_pem = std::fs::read_to_string(&chain)
                    .with_context(|| format!("cannot read {}", chain.display()))?;
                let key_pem = std::fs::read_to_string(&key)
                    .with_context(|| format!("cannot read {}", key.display()))?;
                let body = serde_json::json!({
                    "name": name,
                    "certificate_chain": chain_pem,
                    "private_key": key_pem,
                });
                let v = api.call("POST", "/server-certificates", Some(body))?;
                out(&v, &|v| {
                    println!("bound {}", s(&v["id"]));
                    cert_rows(std::slice::from_ref(v));
                });
            }
            ServerCertCommand::Unbind { id } => {
                api.call("DELETE", &format!("/server-certificates/{id}"), None)?;
                out(&serde_json::json!({"unbound": id}), &|_| {
                    println!("unbound {id}")
                });
            }
            ServerCertCommand::Default { action } => {
                let path = match action {
                    Toggle::Enable => "/server-certificates/default/enable",
                    Toggle::Disable => "/server-certificates/default/disable",
                };
                let v = api.call("POST", path, None)?;
                out(&v, &|v| {
                    let state = if v["enabled"].as_bool() == Some(true) {
                        "enabled"
                    } else {
                        "disabled"
                    };
                    println!("default server certificate {state}");
                });
            }
        },
        ClientCommand::Connections { command } => match command {
            ConnectionsCommand::List => {
                let v = api.call("GET", "/connections", None)?;
                out(&v, &|v| {
                    table(
                        &[
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
                api.call("DELETE", &format!("/connections/{client_id}"), None)?;
                out(&serde_json::json!({"kicked": client_id}), &|_| {
                    println!("closed the connection of {client_id}")
                });
            }
        },
        ClientCommand::Audit { limit } => {
            let v = api.call("GET", &format!("/audit-log?limit={limit}"), None)?;
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
