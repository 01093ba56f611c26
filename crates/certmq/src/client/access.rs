//! `certmq user ...` and `certmq policy ...` (SPEC 11): MQTT users and
//! authorization policies. Passwords are read from stdin (one line) or a
//! prompt, never from a flag: flags end up in shell histories and `ps`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::{items, s, table, Api, Out};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an MQTT user; the password is read from stdin or a prompt.
    Add {
        username: String,
    },
    List,
    /// Delete a user (its live connections are closed).
    Delete {
        username: String,
    },
    /// Set a user's password (stdin or a prompt).
    Passwd {
        username: String,
    },
}

#[derive(Subcommand)]
pub enum ConsoleUserCommand {
    /// Add a web-console user, or set its password and role; the password
    /// is read from stdin or a prompt.
    Add {
        username: String,
        /// administrator (everything) or viewer (read only).
        #[arg(long, value_parser = ["administrator", "viewer"])]
        role: String,
    },
    List,
    /// Delete a console user (its sessions end).
    Delete {
        username: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Add a policy, from a JSON file (`--file`, `-` for stdin) or flags.
    Add(Box<PolicyArgs>),
    /// Every policy, in evaluation order.
    List,
    Get {
        id: String,
    },
    /// Replace a policy (same arguments as `add`).
    Replace {
        id: String,
        #[command(flatten)]
        args: Box<PolicyArgs>,
    },
    Delete {
        id: String,
    },
    /// Dry run: which policy decides an action of a client.
    Evaluate {
        #[arg(long)]
        client_id: String,
        /// connect, publish or subscribe.
        #[arg(long)]
        action: String,
        /// The topic (publish) or filter (subscribe).
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        username: Option<String>,
        /// A registered device certificate the client presents (id or PEM file).
        #[arg(long)]
        certificate: Option<String>,
        #[arg(long)]
        source_ip: Option<String>,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long)]
        retain: bool,
    },
}

#[derive(clap::Args)]
pub struct PolicyArgs {
    /// The policy as JSON (the API's body); `-` reads stdin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["priority", "effect", "actions"])]
    file: Option<PathBuf>,
    #[arg(long)]
    id: Option<String>,
    /// Lower is evaluated first.
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i64>,
    /// allow or deny.
    #[arg(long)]
    effect: Option<String>,
    /// connect, publish, subscribe (repeat or comma-separate).
    #[arg(long = "action", value_delimiter = ',')]
    actions: Vec<String>,
    /// Topic filters, variables allowed (`devices/${cert.cn}/#`).
    #[arg(long = "topic")]
    topics: Vec<String>,
    #[arg(long = "client-id")]
    client_ids: Vec<String>,
    #[arg(long = "username")]
    usernames: Vec<String>,
    #[arg(long = "ca-id")]
    ca_ids: Vec<String>,
    #[arg(long = "source-cidr")]
    source_cidrs: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    qos: Vec<u8>,
    #[arg(long)]
    retain: Option<bool>,
    #[arg(long)]
    description: Option<String>,
}

impl PolicyArgs {
    fn body(&self) -> anyhow::Result<Value> {
        if let Some(path) = &self.file {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
            };
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            return Ok(v);
        }
        let (Some(priority), Some(effect)) = (self.priority, &self.effect) else {
            bail!("give --file, or --priority, --effect and --action");
        };
        let list = |l: &Vec<String>| (!l.is_empty()).then(|| l.clone());
        Ok(json!({
            "id": self.id,
            "priority": priority,
            "effect": effect,
            "actions": self.actions,
            "topics": list(&self.topics),
            "client_ids": list(&self.client_ids),
            "usernames": list(&self.usernames),
            "ca_ids": list(&self.ca_ids),
            "source_cidrs": list(&self.source_cidrs),
            "qos": (!self.qos.is_empty()).then(|| self.qos.clone()),
            "retain": self.retain,
            "description": self.description,
        }))
    }
}

/// A password from a prompt (terminal) or the first line of stdin.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt).context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        bail!("no password given (pipe it to stdin or type it at the prompt)");
    }
    Ok(password)
}

fn user_rows(users: &[Value]) {
    table(
        &["USERNAME", "CREATED", "UPDATED"],
        users
            .iter()
            .map(|u| vec![s(&u["username"]), s(&u["created_at"]), s(&u["updated_at"])])
            .collect(),
    );
}

fn policy_rows(policies: &[Value]) {
    table(
        &[
            "ID",
            "PRIORITY",
            "EFFECT",
            "ACTIONS",
            "TOPICS",
            "CONDITIONS",
        ],
        policies
            .iter()
            .map(|p| {
                let mut cond = Vec::new();
                for key in [
                    "client_ids",
                    "usernames",
                    "ca_ids",
                    "source_cidrs",
                    "qos",
                    "retain",
                ] {
                    if !p[key].is_null() {
                        cond.push(format!("{key}={}", s(&p[key])));
                    }
                }
                vec![
                    s(&p["id"]),
                    s(&p["priority"]),
                    s(&p["effect"]),
                    s(&p["actions"]),
                    if p["topics"].is_null() {
                        "*".into()
                    } else {
                        s(&p["topics"])
                    },
                    if cond.is_empty() {
                        "-".into()
                    } else {
                        cond.join(" ")
                    },
                ]
            })
            .collect(),
    );
}

pub(super) fn user(api: &Api, cmd: UserCommand, out: &Out<'_>) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { username } => {
            let password = read_password("Password: ")?;
            let body = json!({"username": username, "password": password});
            let v = api.op("add_user", &[], &[], Some(body))?;
            out(&v, &|v| outln!("added user {}", s(&v["username"])));
        }
        UserCommand::List => {
            let v = api.op("list_users", &[], &[], None)?;
            out(&v, &|v| user_rows(items(v)));
        }
        UserCommand::Delete { username } => {
            api.op("delete_user", &[("username", &username)], &[], None)?;
            out(&json!({"deleted": username}), &|_| {
                outln!("deleted user {username}")
            });
        }
        UserCommand::Passwd { username } => {
            let password = read_password("New password: ")?;
            let v = api.op(
                "set_user_password",
                &[("username", &username)],
                &[],
                Some(json!({"password": password})),
            )?;
            out(&v, &|v| outln!("password of {} changed", s(&v["username"])));
        }
    }
    Ok(())
}

pub(super) fn console_user(
    api: &Api,
    cmd: ConsoleUserCommand,
    out: &Out<'_>,
) -> anyhow::Result<()> {
    match cmd {
        ConsoleUserCommand::Add { username, role } => {
            let password = read_password("Password: ")?;
            let body = json!({"username": username, "password": password, "role": role});
            let v = api.op("put_console_user", &[], &[], Some(body))?;
            out(&v, &|v| {
                outln!("console user {} ({})", s(&v["username"]), s(&v["role"]))
            });
        }
        ConsoleUserCommand::List => {
            let v = api.op("list_console_users", &[], &[], None)?;
            out(&v, &|v| {
                table(
                    &["USERNAME", "ROLE", "CREATED"],
                    items(v)
                        .iter()
                        .map(|u| vec![s(&u["username"]), s(&u["role"]), s(&u["created_at"])])
                        .collect(),
                )
            });
        }
        ConsoleUserCommand::Delete { username } => {
            api.op("delete_console_user", &[("username", &username)], &[], None)?;
            out(&json!({"deleted": username}), &|_| {
                outln!("deleted console user {username}")
            });
        }
    }
    Ok(())
}

pub(super) fn policy(api: &Api, cmd: PolicyCommand, out: &Out<'_>) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Add(args) => {
            let v = api.op("add_policy", &[], &[], Some(args.body()?))?;
            out(&v, &|v| {
                outln!("added policy {}", s(&v["id"]));
                policy_rows(std::slice::from_ref(v));
            });
        }
        PolicyCommand::List => {
            let v = api.op("list_policies", &[], &[], None)?;
            out(&v, &|v| policy_rows(items(v)));
        }
        PolicyCommand::Get { id } => {
            let v = api.op("get_policy", &[("id", &id)], &[], None)?;
            out(&v, &|v| {
                outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
            });
        }
        PolicyCommand::Replace { id, args } => {
            let v = api.op("replace_policy", &[("id", &id)], &[], Some(args.body()?))?;
            out(&v, &|v| policy_rows(std::slice::from_ref(v)));
        }
        PolicyCommand::Delete { id } => {
            api.op("delete_policy", &[("id", &id)], &[], None)?;
            out(&json!({"deleted": id}), &|_| outln!("deleted policy {id}"));
        }
        PolicyCommand::Evaluate {
            client_id,
            action,
            topic,
            username,
            certificate,
            source_ip,
            qos,
            retain,
        } => {
            let certificate_id = certificate.as_deref().map(super::cert_id).transpose()?;
            let body = json!({
                "client_id": client_id, "action": action, "topic": topic,
                "username": username, "certificate_id": certificate_id,
                "source_ip": source_ip, "qos": qos, "retain": retain,
            });
            let v = api.op("evaluate_policies", &[], &[], Some(body))?;
            out(&v, &|v| {
                let by = match v["policy_id"].as_str() {
                    Some(id) => format!("policy {id} (priority {})", s(&v["priority"])),
                    None => "no_match".into(),
                };
                match v["subscription"].as_str() {
                    Some(sub) => outln!(
                        "{} (subscription: {sub}), decided by {by}",
                        s(&v["decision"])
                    ),
                    None => outln!("{}, decided by {by}", s(&v["decision"])),
                }
            });
        }
    }
    Ok(())
}
