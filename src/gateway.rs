//! The composition root: wires station → poller → bus → sinks, and the
//! guarded write path back; owns start-up and shutdown.
//!
//! Every request to the station goes through the station monitor
//! ([`crate::poll::station`]), whose one state the groups, the alarm poll,
//! the writes and `/healthz` share. Supervision: each long-running task is
//! spawned by [`Supervisor::spawn`] under a name; one that panics or ends
//! before shutdown was asked is logged as an error with its name, turns
//! `/livez` 503 and stops the gateway, which flushes its sinks and exits
//! non-zero so that its service manager (systemd `Restart=on-failure`,
//! the Windows service's recovery actions) restarts it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::alarms::AlarmPoller;
use crate::bus::Bus;
use crate::config::Settings;
use crate::http::{self, ComponentState, HealthSources};
use crate::poll::{station as monitor, Poller};
use crate::sinks::mqtt::{MqttSink, MqttStatus};
use crate::sinks::opcua::OpcuaSink;
use crate::sinks::sparkplug::SparkplugSink;
use crate::status::{web, ConfigInfo, Hub, StatusSources};
use crate::wincc::{self, Station};
use crate::writes::{AllowLists, TagMap, Writer};

/// How long shutdown may take before the gateway gives up waiting for sinks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Queue capacity (in events) of each sink before it conflates per tag.
const SINK_QUEUE: usize = 256;

/// What a started gateway exposes (used by `demo` and tests).
pub struct Running {
    /// Where `/healthz` and `/metrics` are served, if enabled.
    pub http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    pub(crate) failed: watch::Receiver<Option<String>>,
    pub(crate) live: crate::reload::Live,
}

impl Running {
    /// Requests shutdown and waits for it to complete.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }

    /// Resolves with why once a task of the gateway ended unexpectedly.
    pub async fn failed(&self) -> String {
        wait_failed(self.failed.clone()).await
    }

    /// The configuration in force: version (1 at start, +1 per reload
    /// that applied something), when it was loaded, its file's hash.
    pub fn config(&self) -> ConfigInfo {
        self.live.config.borrow().clone()
    }

    /// Applies what it can of `new` (validated settings) without a
    /// reconnect, logs each key that needs a restart, and returns the plan
    /// (see [`crate::reload`]). `sha256`: the new file's short hash.
    pub fn reload(&mut self, new: Settings, sha256: &str) -> crate::reload::Plan {
        self.live.apply(new, sha256)
    }

    /// Re-reads `path` and the environment, validates like `check-config`
    /// and applies what it can ([`reload`](Self::reload)); a file with
    /// problems changes nothing and its problems are logged.
    pub fn reload_from(&mut self, path: &std::path::Path) -> Option<crate::reload::Plan> {
        let source = path.display().to_string();
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| format!("{source}: cannot read: {e}"))
            .and_then(|text| {
                Settings::from_toml_with_env(&text, &source, std::env::vars())
                    .map(|s| (s, crate::config::sha256_prefix(&text)))
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok((settings, sha)) => Some(self.reload(settings, &sha)),
            Err(e) => {
                tracing::error!(
                    "configuration reload refused, nothing changed: {}",
                    e.trim_end().replace('\n', "; ")
                );
                None
            }
        }
    }
}

pub(crate) async fn wait_failed(mut rx: watch::Receiver<Option<String>>) -> String {
    {
        let why = rx
            .wait_for(Option::is_some)
            .await
            .map(|f| f.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }
}

/// Runs the gateway until `shutdown` resolves, then shuts down cleanly.
/// A task that ends unexpectedly stops it too (after flushing the sinks),
/// with an error: the process exits non-zero for its service manager.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(settings).await?;
    let failure = tokio::select! {
        () = shutdown => None,
        why = running.failed() => Some(why),
    };
    running.shutdown().await;
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(
            "{why}; stopped so that the service manager restarts the gateway"
        )),
    }
}

/// Spawns the gateway's long-running tasks under a name and notices any
/// that ends before shutdown was asked (see the module docs).
#[derive(Clone)]
pub(crate) struct Supervisor {
    stopping: CancellationToken,
    failed: Arc<watch::Sender<Option<String>>>,
}

impl Supervisor {
    fn new(stopping: CancellationToken) -> Self {
        Supervisor {
            stopping,
            failed: Arc::new(watch::channel(None).0),
        }
    }

    /// Runs `task` in its own tokio task; the handle ends when it does.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let sup = self.clone();
        let inner = tokio::spawn(task);
        tokio::spawn(async move {
            let r = inner.await;
            let why = match r {
                Ok(()) if sup.stopping.is_cancelled() => return,
                Ok(()) => format!("task {name:?} ended unexpectedly"),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    format!("task {name:?} panicked: {msg}")
                }
                Err(_) => format!("task {name:?} was cancelled"),
            };
            tracing::error!(task = name, error = %why, "a gateway task ended unexpectedly; stopping the gateway");
            metrics::counter!("wincc_gateway_task_failures_total", "task" => name).increment(1);
            sup.failed.send_if_modified(|f| {
                if f.is_none() {
                    *f = Some(why);
                    true
                } else {
                    false
                }
            });
        })
    }
}

/// Starts every part and returns once they are running.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    http::metrics_handle();
    let live_settings = settings.clone();
    let station: Arc<dyn Station> =
        wincc::connect(&settings).context("cannot set up the station client")?;
    tracing::info!(
        base_url = %settings.wincc.base_url,
        dialect = settings.wincc.dialect.as_str(),
        groups = settings.poll_groups.len(),
        "starting wincc-gateway {}",
        env!("CARGO_PKG_VERSION")
    );
    for w in settings.cleartext_warnings() {
        tracing::warn!("credentials in clear: {w}");
    }

    let bus = Bus::new();
    let poll_stop = CancellationToken::new();
    let sink_stop = CancellationToken::new();
    let stop = CancellationToken::new();
    let sup = Supervisor::new(stop.clone());
    let mut sinks = Vec::new();

    // One station state for every request (polls, alarms, writes).
    let shortest = settings
        .poll_groups
        .iter()
        .map(|g| Duration::from_millis(g.interval_ms))
        .min()
        .unwrap_or(monitor::PROBE_MAX);
    let monitor_stop = CancellationToken::new();
    let (station, link, monitor_task) = monitor::start(
        station,
        bus.clone(),
        shortest,
        settings.wincc.write_timeout(),
        monitor_stop.clone(),
    );
    let monitor_task = sup.spawn("station monitor", async move {
        let _ = monitor_task.await;
    });
    let (tags_tx, tags_rx) = watch::channel(Arc::new(TagMap::new()));
    let allow = watch::channel(AllowLists::new()).0;
    let writer = Writer::new(station.clone(), tags_rx).with_allow_lists(allow.subscribe());

    let mut mqtt_buffer = None;
    let mqtt_state = if settings.mqtt.enabled {
        let sink = MqttSink::new(
            &settings.mqtt,
            settings.mqtt.write_enabled.then(|| writer.clone()),
        )
        .context("cannot set up MQTT")?;
        let state = mqtt_health(sink.state());
        mqtt_buffer = sink.backlog();
        let sub = bus.subscribe("mqtt", SINK_QUEUE);
        let token = sink_stop.clone();
        sinks.push(sup.spawn("mqtt sink", async move { sink.run(sub, token).await }));
        state
    } else {
        watch::channel(ComponentState::Disabled).1
    };

    let opcua_state = if settings.opcua.enabled {
        let sink = OpcuaSink::new(
            &settings.opcua,
            settings.opcua.write_enabled.then(|| writer.clone()),
        )
        .await
        .context("cannot set up the OPC UA server")?;
        let state = sink.state();
        let sub = bus.subscribe("opcua", SINK_QUEUE);
        let token = sink_stop.clone();
        sinks.push(sup.spawn("opcua server", async move {
            if let Err(e) = sink.run(sub, token).await {
                tracing::error!(error = %e, "OPC UA server stopped");
            }
        }));
        state
    } else {
        watch::channel(ComponentState::Disabled).1
    };

    let sparkplug_state = if settings.sparkplug.enabled {
        // The writer always: with write_enabled = false it refuses (and counts) every DCMD.
        let sink = SparkplugSink::new(
            &settings.sparkplug,
            &settings.mqtt.buffer,
            Some(writer.clone()),
        )
        .context("cannot set up Sparkplug")?;
        let sub = bus.subscribe("sparkplug", SINK_QUEUE);
        let token = sink_stop.clone();
        let state = mqtt_health(sink.state());
        sinks.push(sup.spawn("sparkplug sink", async move { sink.run(sub, token).await }));
        state
    } else {
        watch::channel(ComponentState::Disabled).1
    };

    let poller = Poller::new(&settings, station.clone(), bus.clone(), tags_tx)
        .with_monitor(station.clone(), link.clone());
    let config_info = watch::channel(ConfigInfo {
        version: 1,
        loaded_at: chrono::Utc::now(),
        sha256: String::new(),
    })
    .0;
    let http_addr = if settings.http.enabled {
        let listen: SocketAddr = settings.http.listen.parse().context("http.listen")?;
        let sources = HealthSources {
            station: link.watch(),
            mqtt: mqtt_state,
            opcua: opcua_state,
            sparkplug: sparkplug_state,
            mqtt_buffer,
            failed: sup.failed.subscribe(),
            config: Some(config_info.subscribe()),
        };
        let page = if settings.http.status_page {
            let access = web::Access::from_settings(&settings.http)?;
            let hub = Hub::start(
                StatusSources {
                    health: sources.clone(),
                    activity: link.activity(),
                    groups: poller.group_stats(),
                    station_url: settings.wincc.base_url.clone(),
                    rps_limit: settings.wincc.rate_limit.requests_per_second,
                    in_flight_limit: settings.wincc.rate_limit.max_in_flight,
                    mqtt_commands: settings.mqtt.enabled && settings.mqtt.write_enabled,
                    opcua_endpoint: settings
                        .opcua
                        .enabled
                        .then(|| settings.opcua.endpoint.clone()),
                    config: config_info.subscribe(),
                },
                bus.subscribe("status", SINK_QUEUE),
                stop.clone(),
            );
            Some(web::routes(web::PageState {
                hub,
                access,
                streams: Arc::new(tokio::sync::Semaphore::new(web::MAX_STREAMS)),
            }))
        } else {
            None
        };
        let addr = http::serve(listen, sources, page, stop.clone())
            .await
            .with_context(|| format!("cannot listen on http.listen = {listen}"))?;
        if settings.http.status_page {
            tracing::info!(%addr, "serving the status page at http://{addr}/, /healthz and /metrics");
        } else {
            tracing::info!(%addr, "serving /healthz and /metrics");
        }
        Some(addr)
    } else {
        None
    };

    let mut producers = Vec::new();
    let rules = poller.rules();
    let token = poll_stop.clone();
    producers.push(sup.spawn("poller", async move { poller.run(token).await }));
    if settings.alarms.enabled {
        let mut alarms = AlarmPoller::new(
            station.clone(),
            bus.clone(),
            Duration::from_millis(settings.alarms.interval_ms),
        )
        .with_link(link.clone());
        if settings.mqtt.enabled {
            // Reconcile with what was announced before a restart.
            match crate::sinks::mqtt::announced_alarms(&settings.mqtt, Duration::from_secs(3)).await
            {
                Ok(known) => {
                    if !known.is_empty() {
                        tracing::info!(
                            count = known.len(),
                            "alarms announced before the restart will be reconciled"
                        );
                    }
                    alarms = alarms.with_known(known);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the retained active alarms; alarms still active will be announced again")
                }
            }
        }
        let token = poll_stop.clone();
        producers.push(sup.spawn("alarm poller", async move { alarms.run(token).await }));
    }

    let stop_wait = stop.clone();
    let done = tokio::spawn(async move {
        stop_wait.cancelled().await;
        tracing::info!("stopping: polling first, then flushing the sinks");
        poll_stop.cancel();
        for p in producers {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, p).await;
        }
        // Closing the bus lets every sink drain what is queued, then finish.
        bus.close();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut unfinished = Vec::new();
        for mut s in sinks {
            if tokio::time::timeout_at(deadline, &mut s).await.is_err() {
                unfinished.push(s);
            }
        }
        if !unfinished.is_empty() {
            tracing::warn!(
                "{} sink(s) did not finish within {SHUTDOWN_GRACE:?}; stopping them",
                unfinished.len()
            );
            sink_stop.cancel();
            for mut s in unfinished {
                if tokio::time::timeout(Duration::from_secs(1), &mut s)
                    .await
                    .is_err()
                {
                    s.abort();
                }
            }
        }
        sink_stop.cancel();
        // Bounded at 1 s: a station that does not answer a logout must not
        // hold a SIGTERM past the 2 s a service manager is promised.
        let _ = tokio::time::timeout(Duration::from_secs(1), station.logout()).await;
        monitor_stop.cancel();
        let _ = monitor_task.await;
        tracing::info!("stopped");
    });

    Ok(Running {
        http_addr,
        stop,
        done,
        failed: sup.failed.subscribe(),
        live: crate::reload::Live {
            settings: live_settings,
            rules,
            allow,
            config: config_info,
        },
    })
}

/// Follows the MQTT sink's connection state as a health component.
fn mqtt_health(mut status: watch::Receiver<MqttStatus>) -> watch::Receiver<ComponentState> {
    let map = |s: &MqttStatus| match s {
        MqttStatus::Connected => ComponentState::Up,
        MqttStatus::Disconnected(why) => ComponentState::Down(why.clone()),
    };
    let (tx, rx) = watch::channel(map(&status.borrow()));
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let state = map(&status.borrow_and_update());
            if tx.send(state).is_err() {
                break;
            }
        }
    });
    rx
}

/// `browse`: lists the station's tags, optionally filtered by a glob.
pub async fn browse(settings: &Settings, filter: Option<&str>, json: bool) -> anyhow::Result<()> {
    let station = wincc::connect(settings).context("cannot set up the station client")?;
    if let Some(f) = filter {
        crate::glob::validate(f).map_err(|e| anyhow::anyhow!("--filter: {e}"))?;
    }
    let tags = crate::poll::browse(station.as_ref(), filter)
        .await
        .with_context(|| format!("cannot list the tags of {}", settings.wincc.base_url))?;
    station.logout().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&tags)?);
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for t in &tags {
            writeln!(
                out,
                "{}\t{}\t{}",
                t.name,
                t.ty,
                if t.writable { "rw" } else { "ro" }
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_early_is_named_and_fails_the_gateway() {
        let stop = CancellationToken::new();
        let sup = Supervisor::new(stop.clone());
        let failed = sup.failed.subscribe();
        let h = sup.spawn("poller", async { panic!("boom") });
        h.await.unwrap();
        let why = failed.borrow().clone().expect("failure recorded");
        assert!(why.contains("\"poller\"") && why.contains("boom"), "{why}");

        let sup = Supervisor::new(stop.clone());
        let failed = sup.failed.subscribe();
        sup.spawn("alarm poller", async {}).await.unwrap();
        let why = failed.borrow().clone().expect("failure recorded");
        assert!(why.contains("\"alarm poller\" ended unexpectedly"), "{why}");

        // Ending after shutdown was asked is no failure.
        let sup = Supervisor::new(stop.clone());
        let failed = sup.failed.subscribe();
        stop.cancel();
        sup.spawn("mqtt sink", async {}).await.unwrap();
        assert!(failed.borrow().is_none());
    }
}
