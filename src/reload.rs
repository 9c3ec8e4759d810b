//! Configuration reload (SIGHUP, `systemctl reload`): what a new file
//! changes, and which of it the running gateway takes without a restart.
//!
//! [`plan`] compares the settings in force with the new ones (already
//! validated like `check-config`: a bad file never gets here). Applied
//! live, without reconnecting the station, the broker or OPC UA clients:
//!
//! - `poll_group[*].deadband_abs`, `deadband_pct`, `heartbeat_s` (from the
//!   group's next cycle);
//! - `mqtt.writable_tags` (the next MQTT write command is checked against
//!   the new list);
//! - `opcua.writable_tags`: tags taken off the list are refused at once;
//!   tags added need a restart (their nodes' access level is built at
//!   start), which the reload logs;
//! - `log.level` (unless `RUST_LOG` is set).
//!
//! Every other change (the station's URL, credentials, TLS, ports, poll
//! groups' tags, intervals, modes or names, alarms, Sparkplug, `[http]`,
//! `log.format`) is not applied: the reload names each such key in one
//! warning, "restart needed", and the gateway runs on with the old value.
//!
//! [`Live`] holds what a running gateway can change (the settings in
//! force, each poll group's rules sender, the write path's allow-lists, the
//! configuration version) and applies a plan; [`run_with_reload`] is
//! `wincc-gateway run`: the gateway plus a reload on each SIGHUP.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Settings;
use crate::glob::TagPatterns;
use crate::poll::diff::ChangeRules;
use crate::status::ConfigInfo;
use crate::writes::AllowLists;

/// What a reload can change in a running gateway (see [`crate::reload`]).
pub(crate) struct Live {
    /// The settings in force.
    pub(crate) settings: Settings,
    pub(crate) rules: Vec<(Arc<str>, watch::Sender<ChangeRules>)>,
    pub(crate) allow: watch::Sender<AllowLists>,
    pub(crate) config: watch::Sender<ConfigInfo>,
}

impl Live {
    /// Applies what it can of `new` (validated settings) without a
    /// reconnect, logs each key that needs a restart, and returns the plan.
    /// `sha256`: the new file's short hash (empty when not from a file).
    pub(crate) fn apply(&mut self, new: Settings, sha256: &str) -> Plan {
        let live = self;
        let plan = plan(&live.settings, &new);
        for (group, rules) in &plan.rules {
            if let Some((_, tx)) = live.rules.iter().find(|(g, _)| &**g == group.as_str()) {
                tx.send_replace(*rules);
            }
        }
        let mut allow_err = None;
        live.allow.send_modify(|a| {
            for (sink, list) in [
                ("mqtt", &plan.mqtt_writable),
                ("opcua", &plan.opcua_writable),
            ] {
                if let Some(list) = list {
                    match TagPatterns::new(list) {
                        Ok(p) => {
                            a.insert(sink, p);
                        }
                        Err(e) => allow_err = Some(format!("{sink}.writable_tags: {e}")),
                    }
                }
            }
        });
        if let Some(e) = allow_err {
            tracing::error!(error = %e, "allow-list not reloaded");
        }
        if plan.opcua_added {
            tracing::warn!("opcua.writable_tags gained tags: OPC UA clients can write them only after a restart (their nodes' access level is set at start); tags taken off the list are refused already");
        }
        if let Some(level) = &plan.log_level {
            match crate::cli::reload_log_level(level) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(level = %level, "log.level not applied: RUST_LOG sets the log filter")
                }
                Err(e) => tracing::error!(error = %e, "log.level not applied"),
            }
        }
        if !plan.restart.is_empty() {
            tracing::warn!(
                keys = %plan.restart.join("; "),
                "configuration reload: these changes need a restart and are NOT applied; the gateway runs on with their old values"
            );
        }
        let applied = plan.applied();
        if applied.is_empty() && plan.restart.is_empty() {
            tracing::info!("configuration reload: nothing changed");
        } else if !applied.is_empty() {
            live.config.send_modify(|c| {
                c.version += 1;
                c.loaded_at = chrono::Utc::now();
                c.sha256 = sha256.to_string();
            });
            tracing::info!(
                applied = %applied.join("; "),
                version = live.config.borrow().version,
                "configuration reloaded without a reconnect"
            );
        }
        // What is in force now: the new settings where applied, the old
        // ones where a restart is needed (so the next reload still sees
        // those differences).
        for (o, n) in live.settings.poll_groups.iter_mut().zip(&new.poll_groups) {
            if plan.rules.iter().any(|(g, _)| *g == n.name) {
                o.deadband_abs = n.deadband_abs;
                o.deadband_pct = n.deadband_pct;
                o.heartbeat_s = n.heartbeat_s;
            }
        }
        if plan.mqtt_writable.is_some() {
            live.settings.mqtt.writable_tags = new.mqtt.writable_tags.clone();
        }
        if plan.opcua_writable.is_some() {
            live.settings.opcua.writable_tags = new.opcua.writable_tags.clone();
        }
        if plan.log_level.is_some() {
            live.settings.log.level = new.log.level.clone();
        }
        plan
    }
}

/// [`crate::gateway::run`] for `wincc-gateway run -c PATH`: also reloads `path` on SIGHUP
/// (unix; `systemctl reload`), see [`crate::gateway::Running::reload_from`].
pub async fn run_with_reload(
    path: &std::path::Path,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut running = crate::gateway::start(settings).await?;
    if let Ok(text) = std::fs::read_to_string(path) {
        running
            .live
            .config
            .send_modify(|c| c.sha256 = crate::config::sha256_prefix(&text));
    }
    let mut hup = reload_signals();
    tokio::pin!(shutdown);
    let failure = loop {
        let failed = crate::gateway::wait_failed(running.failed.clone());
        tokio::select! {
            () = &mut shutdown => break None,
            why = failed => break Some(why),
            Some(()) = hup.recv() => {
                tracing::info!(path = %path.display(), "reloading the configuration (SIGHUP)");
                running.reload_from(path);
            }
        }
    };
    running.shutdown().await;
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(
            "{why}; stopped so that the service manager restarts the gateway"
        )),
    }
}

/// One message per SIGHUP (none on other systems).
fn reload_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // A reload already pending covers this one too.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload needs a restart")
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// What a reload does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New change rules by poll group name.
    pub rules: Vec<(String, ChangeRules)>,
    /// The new `mqtt.writable_tags`, when changed.
    pub mqtt_writable: Option<Vec<String>>,
    /// The new `opcua.writable_tags`, when changed.
    pub opcua_writable: Option<Vec<String>>,
    /// `opcua.writable_tags` gained tags (those need a restart).
    pub opcua_added: bool,
    /// The new `log.level`, when changed.
    pub log_level: Option<String>,
    /// Keys whose change needs a restart (not applied).
    pub restart: Vec<String>,
}

impl Plan {
    /// True when the new settings change nothing.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// The keys applied live, for the log.
    pub fn applied(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .rules
            .iter()
            .map(|(g, _)| format!("poll_group {g:?} deadbands/heartbeat"))
            .collect();
        if self.mqtt_writable.is_some() {
            out.push("mqtt.writable_tags".into());
        }
        if self.opcua_writable.is_some() {
            out.push("opcua.writable_tags".into());
        }
        if self.log_level.is_some() {
            out.push("log.level".into());
        }
        out
    }
}

/// Compares `old` (in force) with `new`; see the module docs.
pub fn plan(old: &Settings, new: &Settings) -> Plan {
    let mut p = Plan::default();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");

    // Poll groups: the rules live; anything else about them needs a restart.
    let shape = |s: &Settings| -> Vec<String> {
        s.poll_groups
            .iter()
            .map(|g| format!("{:?}|{:?}|{}|{:?}", g.name, g.tags, g.interval_ms, g.mode))
            .collect()
    };
    if shape(old) != shape(new) {
        p.restart
            .push("poll_group (names, tags, interval_ms or mode)".into());
    } else {
        for (o, n) in old.poll_groups.iter().zip(&new.poll_groups) {
            let (ro, rn) = (ChangeRules::from_group(o), ChangeRules::from_group(n));
            if ro != rn {
                p.rules.push((n.name.clone(), rn));
            }
        }
    }

    if old.mqtt.writable_tags != new.mqtt.writable_tags {
        p.mqtt_writable = Some(new.mqtt.writable_tags.clone());
    }
    let (mut mo, mut mn) = (old.mqtt.clone(), new.mqtt.clone());
    mo.writable_tags.clear();
    mn.writable_tags.clear();
    if differs(&mo, &mn) {
        p.restart.push(changed_keys("mqtt", &mo, &mn));
    }

    if old.opcua.writable_tags != new.opcua.writable_tags {
        p.opcua_added = new
            .opcua
            .writable_tags
            .iter()
            .any(|t| !old.opcua.writable_tags.contains(t));
        p.opcua_writable = Some(new.opcua.writable_tags.clone());
    }
    let (mut oo, mut on) = (old.opcua.clone(), new.opcua.clone());
    oo.writable_tags.clear();
    on.writable_tags.clear();
    if differs(&oo, &on) {
        p.restart.push(changed_keys("opcua", &oo, &on));
    }

    if old.log.level != new.log.level {
        p.log_level = Some(new.log.level.clone());
    }
    if old.log.format != new.log.format {
        p.restart.push("log.format".into());
    }
    for (key, changed) in [
        ("wincc", differs(&old.wincc, &new.wincc)),
        ("alarms", differs(&old.alarms, &new.alarms)),
        ("sparkplug", differs(&old.sparkplug, &new.sparkplug)),
        ("http", differs(&old.http, &new.http)),
    ] {
        if changed {
            p.restart.push(key.into());
        }
    }
    p
}

/// `section` (or `section.key, ...` where the settings' debug text shows
/// which fields differ).
fn changed_keys(section: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug) -> String {
    let fields = |d: &dyn std::fmt::Debug| -> Vec<String> {
        let text = format!("{d:#?}");
        text.lines()
            .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let (fa, fb) = (fields(a), fields(b));
    let keys: Vec<String> = fb
        .iter()
        .filter(|l| !fa.contains(l))
        .filter_map(|l| l.split_once(':').map(|(k, _)| format!("{section}.{k}")))
        .collect();
    if keys.is_empty() {
        section.to_string()
    } else {
        keys.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            r#"
[wincc]
base_url = "http://127.0.0.1:8080"
[[poll_group]]
name = "fast"
tags = ["**"]
deadband_abs = 0.5
[opcua]
enabled = false
{extra}"#
        );
        Settings::from_toml_with_env(&text, "t", std::iter::empty()).unwrap()
    }

    #[test]
    fn deadbands_allow_lists_and_log_level_apply_the_rest_names_a_restart() {
        let old = settings("[mqtt]\nwritable_tags = [\"A\"]\n");
        assert!(plan(&old, &old).is_empty());

        let new = settings("[mqtt]\nwritable_tags = [\"A\", \"B\"]\n[log]\nlevel = \"debug\"\n");
        let p = plan(&old, &new);
        assert_eq!(p.mqtt_writable, Some(vec!["A".into(), "B".into()]));
        assert_eq!(p.log_level.as_deref(), Some("debug"));
        assert!(p.restart.is_empty(), "{p:?}");

        let new = settings("[mqtt]\nwritable_tags = [\"A\"]\n")
            .poll_groups
            .into_iter()
            .map(|mut g| {
                g.deadband_abs = 2.0;
                g
            })
            .collect();
        let new = Settings {
            poll_groups: new,
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].1.deadband_abs, 2.0);
        assert!(p.restart.is_empty(), "{p:?}");

        let new =
            settings("[mqtt]\nwritable_tags = [\"A\"]\nurl = \"mqtt://10.0.0.9:1883\"\nqos = 0\n");
        let p = plan(&old, &new);
        assert_eq!(p.restart, vec!["mqtt.url, mqtt.qos".to_string()], "{p:?}");

        let mut new = old.clone();
        new.poll_groups[0].interval_ms = 50;
        new.wincc.base_url = "http://10.0.0.1".into();
        let p = plan(&old, &new);
        assert!(p.rules.is_empty());
        assert_eq!(p.restart.len(), 2, "{p:?}");
        assert!(p.restart[0].starts_with("poll_group"), "{p:?}");
        assert_eq!(p.restart[1], "wincc");
    }
}
