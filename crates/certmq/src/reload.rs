//! SIGHUP (SPEC 9): the configuration is read again (file, `CERTMQ_*`
//! variables and flags, as at start) and what can change without a
//! restart is applied at once: the log filter, the broker limits
//! (`[broker]`: from the next packet on; a session's queue limit and a
//! connection's maximum packet size and in-flight window are taken when
//! they start), anonymous access and the listeners' authentication chains
//! (for new connections), `[authorization]` (`no_match`,
//! `deny_action`: live subscriptions are asked again) and `[crl] stale`
//! (the next handshake and CONNECT follow it). Every other
//! changed key is logged as needing a restart. No connection is dropped; a
//! configuration that does not load or validate changes nothing and is
//! logged as an error.

use std::sync::Arc;

use anyhow::Context;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::Config;
use crate::ServeArgs;

/// Installs the SIGHUP handler now (the default action would kill the
/// process) and serves it on the current runtime.
/// What SIGHUP can change in the running node.
pub struct Live {
    pub broker: Arc<certmq_core::Broker>,
    pub log: reload::Handle<EnvFilter, Registry>,
    pub access: Arc<certmq_access::Access>,
    pub chains: certmq_net::AuthChains,
    pub devices: Arc<certmq_admin::Devices>,
}

pub fn spawn(args: ServeArgs, running: Config, live: Live) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        let mut running = running;
        while hup.recv().await.is_some() {
            let a = args.clone();
            match tokio::task::spawn_blocking(move || crate::resolve_config(&a)).await {
                Ok(Ok(next)) => apply(&mut running, next, &live),
                Ok(Err(e)) => tracing::error!(
                    "SIGHUP: the configuration was not reloaded, nothing changed: {e:#}"
                ),
                Err(e) => tracing::error!("SIGHUP: reload failed: {e}"),
            }
        }
    });
    Ok(())
}

/// Keys applied at once (the rest need a restart).
fn applies_now(key: &str) -> bool {
    key == "log"
        || key.starts_with("broker.")
        || key.starts_with("authorization.")
        || key == "authentication.allow_anonymous"
        || key == "crl.stale"
        || (key.starts_with("listeners.")
            && (key.ends_with(".allow_anonymous") || key.ends_with(".authentication")))
}

fn apply(running: &mut Config, next: Config, live: &Live) {
    let (broker, log) = (&live.broker, &live.log);
    let changed = changed_keys(running, &next);
    if changed.is_empty() {
        tracing::info!("SIGHUP: configuration unchanged");
        return;
    }
    let (now, later): (Vec<String>, Vec<String>) =
        changed.into_iter().partition(|k| applies_now(k));
    let mut applied = Vec::new();
    if now.iter().any(|k| k == "log") {
        match EnvFilter::try_new(&next.log).map(|f| log.reload(f)) {
            Ok(Ok(())) => {
                running.log = next.log.clone();
                applied.push("log".to_string());
            }
            _ => tracing::error!(filter = %next.log, "SIGHUP: the log filter was not applied"),
        }
    }
    if now.iter().any(|k| k.starts_with("broker.")) {
        broker.set_config(next.broker_config());
        running.broker = next.broker.clone();
        applied.extend(now.iter().filter(|k| k.starts_with("broker.")).cloned());
    }
    if now.iter().any(|k| k.starts_with("authorization.")) {
        match live.access.set_authorization(next.authorization.clone()) {
            Ok(_) => {
                running.authorization = next.authorization.clone();
                applied.extend(
                    now.iter()
                        .filter(|k| k.starts_with("authorization."))
                        .cloned(),
                );
            }
            Err(e) => tracing::error!("SIGHUP: [authorization] was not applied: {e}"),
        }
    }
    if now.iter().any(|k| k == "crl.stale") {
        match live.devices.set_crl_stale(next.crl.stale) {
            Ok(()) => {
                running.crl.stale = next.crl.stale;
                applied.push("crl.stale".to_string());
            }
            Err(e) => tracing::error!("SIGHUP: [crl] stale was not applied: {}", e.message),
        }
    }
    let chain_keys: Vec<String> = now
        .iter()
        .filter(|k| k.starts_with("listeners.") || k.starts_with("authentication."))
        .cloned()
        .collect();
    if !chain_keys.is_empty() {
        running.authentication.allow_anonymous = next.authentication.allow_anonymous;
        for (name, l) in next.listeners.all() {
            if let Some(r) = running.listeners.get_mut(name) {
                r.allow_anonymous = l.allow_anonymous;
                r.authentication = l.authentication.clone();
            }
        }
        for l in running.net_config().listeners {
            let methods = l.methods();
            let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            tracing::info!(listener = l.protocol.name(), methods = %names.join(","), "authentication");
            live.chains.set(l.protocol, methods);
        }
        applied.extend(chain_keys);
    }
    if !applied.is_empty() {
        tracing::info!(changed = %applied.join(","), "SIGHUP: configuration reloaded");
    }
    if !later.is_empty() {
        tracing::warn!(
            keys = %later.join(","),
            "SIGHUP: these settings need a restart to take effect"
        );
    }
}

/// Dotted keys whose values differ (an unset key differs from a set one).
fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Value::try_from(a), toml::Value::try_from(b)) else {
        return vec!["(configuration)".into()];
    };
    let mut out = Vec::new();
    diff("", Some(&a), Some(&b), &mut out);
    out
}

fn diff(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
    match (a, b) {
        (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                diff(&name, x.get(k), y.get(k), out);
            }
        }
        (x, y) if x != y => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named() {
        let a = Config::default();
        let mut b = Config::default();
        b.broker.max_topic_levels = 4;
        b.log = "debug".into();
        b.admin.token = Some("0123456789abcdef".into());
        assert_eq!(
            changed_keys(&a, &b),
            vec!["admin.token", "broker.max_topic_levels", "log"]
        );
        assert!(changed_keys(&a, &a).is_empty());
    }
}
