//! The composition root: wires station → poller → bus → sinks, and the
//! guarded write path back; owns start-up and shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::alarms::AlarmPoller;
use crate::bus::Bus;
use crate::config::Settings;
use crate::http::{self, ComponentState, HealthSources};
use crate::poll::Poller;
use crate::sinks::mqtt::{MqttSink, MqttStatus};
use crate::sinks::opcua::OpcuaSink;
use crate::sinks::sparkplug::SparkplugSink;
use crate::wincc::{self, Station};
use crate::writes::{TagMap, Writer};

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
}

impl Running {
    /// Requests shutdown and waits for it to complete.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

/// Runs the gateway until `shutdown` resolves, then shuts down cleanly.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(settings).await?;
    shutdown.await;
    running.shutdown().await;
    Ok(())
}

/// Starts every part and returns once they are running.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    http::metrics_handle();
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
    let (tags_tx, tags_rx) = watch::channel(Arc::new(TagMap::new()));
    let writer = Writer::new(station.clone(), tags_rx);

    let poll_stop = CancellationToken::new();
    let sink_stop = CancellationToken::new();
    let stop = CancellationToken::new();
    let mut sinks = Vec::new();

    // Sinks subscribe before the poller starts, so they see the first events.
    let station_state = http::track_station(bus.subscribe("health", 64));

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
        sinks.push(tokio::spawn(async move { sink.run(sub, token).await }));
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
        sinks.push(tokio::spawn(async move {
            if let Err(e) = sink.run(sub, token).await {
                tracing::error!(error = %e, "OPC UA server stopped");
            }
        }));
        state
    } else {
        watch::channel(ComponentState::Disabled).1
    };

    if settings.sparkplug.enabled {
        // The writer always: with write_enabled = false it refuses (and counts) every DCMD.
        let sink = SparkplugSink::new(&settings.sparkplug, Some(writer.clone()))
            .context("cannot set up Sparkplug")?;
        let sub = bus.subscribe("sparkplug", SINK_QUEUE);
        let token = sink_stop.clone();
        sinks.push(tokio::spawn(async move { sink.run(sub, token).await }));
    }

    let http_addr = if settings.http.enabled {
        let listen: SocketAddr = settings.http.listen.parse().context("http.listen")?;
        let sources = HealthSources {
            station: station_state,
            mqtt: mqtt_state,
            opcua: opcua_state,
            mqtt_buffer,
            unhealthy_after: Duration::from_secs(settings.http.unhealthy_after_s),
            started: Instant::now(),
        };
        let addr = http::serve(listen, sources, stop.clone())
            .await
            .with_context(|| format!("cannot listen on http.listen = {listen}"))?;
        tracing::info!(%addr, "serving /healthz and /metrics");
        Some(addr)
    } else {
        None
    };

    let mut producers = Vec::new();
    let poller = Poller::new(&settings, station.clone(), bus.clone(), tags_tx);
    let token = poll_stop.clone();
    producers.push(tokio::spawn(async move { poller.run(token).await }));
    if settings.alarms.enabled {
        let mut alarms = AlarmPoller::new(
            station.clone(),
            bus.clone(),
            Duration::from_millis(settings.alarms.interval_ms),
        );
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
        producers.push(tokio::spawn(async move { alarms.run(token).await }));
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
        let _ = tokio::time::timeout(Duration::from_secs(2), station.logout()).await;
        tracing::info!("stopped");
    });

    Ok(Running {
        http_addr,
        stop,
        done,
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
