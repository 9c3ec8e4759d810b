//! The Sparkplug B sink (contract §10): the gateway as a Sparkplug edge
//! node, the WinCC station as its device, so Ignition, HiveMQ or any
//! Sparkplug host sees every polled tag with its type, value, source
//! timestamp and quality, knows whether the data is live, and can write
//! setpoints back through the guarded write path.
//!
//! It has its own MQTT 3.1.1 connection (the NDEATH is its will), built from
//! the same option and TLS code as the MQTT sink, and runs beside it or
//! alone. The parts: [`node`] (the Sparkplug rules, without I/O),
//! [`session`] (one MQTT session per CONNECT), [`bdseq`] (the birth/death
//! sequence on disk), [`convert`] and [`proto`] (metrics and the protobuf
//! payload, derived with prost), [`commands`] (DCMD writes), [`history`]
//! (store-and-forward: with `[mqtt.buffer]` enabled, changes the host did
//! not get live are kept on disk and replayed after the fresh births as
//! DDATA with `is_historical = true`, paced and oldest first).

mod bdseq;
mod commands;
mod convert;
mod history;
mod node;
mod proto;
mod session;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{Event, Subscriber};
use crate::config::{MqttBufferSettings, SparkplugSettings};
use crate::sinks::mqtt::{MqttError, MqttStatus};
use crate::writes::{WritePolicy, Writer};
use history::History;
use node::{Node, Out, Topics};
use session::{Control, Session};

/// The first wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a clean shutdown waits for the NDEATH to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// A bad `[sparkplug]` setting, or a state directory that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SparkplugError {
    /// `key` is the full setting name (`sparkplug.url`); never a secret.
    #[error("{key}: {why}")]
    Config { key: String, why: String },
}

impl SparkplugError {
    fn config(key: &str, why: impl Into<String>) -> Self {
        SparkplugError::Config {
            key: format!("sparkplug.{key}"),
            why: why.into(),
        }
    }
}

/// The MQTT sink's option code names `[mqtt]` keys; here they are ours.
fn from_mqtt(e: MqttError) -> SparkplugError {
    match e {
        MqttError::Config { key, why } => SparkplugError::Config {
            key: key.replacen("mqtt.", "sparkplug.", 1),
            why,
        },
        MqttError::Broker(why) => SparkplugError::config("url", why),
    }
}

/// The Sparkplug sink. Build it with [`SparkplugSink::new`], then
/// [`run`](SparkplugSink::run) it.
pub struct SparkplugSink {
    options: rumqttc::MqttOptions,
    broker: String,
    max_packet_size: usize,
    topics: Topics,
    bdseq: bdseq::BdSeq,
    writes: Option<(Writer, WritePolicy)>,
    state: watch::Sender<MqttStatus>,
    history: Option<History>,
}

impl SparkplugSink {
    /// Validates the settings, opens the bdSeq file and prepares the
    /// client; connects only in [`run`](Self::run). With `buffer` enabled,
    /// opens its own log in `{buffer.dir}/sparkplug` for the historical
    /// replay. DCMD writes need `writer`; without one every DCMD is refused.
    pub fn new(
        s: &SparkplugSettings,
        buffer: &MqttBufferSettings,
        writer: Option<Writer>,
    ) -> Result<Self, SparkplugError> {
        let problems = s.problems(&crate::config::MqttSettings {
            enabled: false,
            ..Default::default()
        });
        if let Some(p) = problems.into_iter().next() {
            return Err(SparkplugError::Config {
                key: p.key,
                why: if p.value.is_empty() {
                    p.why
                } else {
                    format!("{} {}", p.value, p.why)
                },
            });
        }
        let topics = Topics::new(
            &s.group_id,
            &s.edge_node_id,
            &s.device_id,
            &s.primary_host_id,
        );
        let options = match crate::sinks::mqtt::options::build(&s.connection(), &topics.ndeath)
            .map_err(from_mqtt)?
        {
            crate::sinks::mqtt::options::Options::V4(o) => *o,
            crate::sinks::mqtt::options::Options::V5(_) => {
                return Err(SparkplugError::config(
                    "url",
                    "MQTT 5 options for Sparkplug",
                ))
            }
        };
        let mut options = options;
        // Births may be large; what comes in is only commands and STATE.
        options.set_max_packet_size(session::MAX_INCOMING_BYTES, s.max_packet_size);
        let (host, port) = options.broker_address();
        let path = bdseq::file_in(
            std::path::Path::new(&s.state_dir),
            &s.group_id,
            &s.edge_node_id,
        );
        let bdseq = bdseq::BdSeq::open(path.clone()).map_err(|e| {
            SparkplugError::config("state_dir", format!("cannot use {}: {e}", path.display()))
        })?;
        let policy = WritePolicy::new("sparkplug", s.write_enabled, &s.writable_tags)
            .map_err(|e| SparkplugError::config("writable_tags", e.to_string()))?;
        let history =
            History::open(buffer, s.max_packet_size).map_err(|why| SparkplugError::Config {
                key: "mqtt.buffer.dir".into(),
                why: format!(
                    "cannot use {} for the Sparkplug buffer: {why}",
                    history::dir_in(std::path::Path::new(&buffer.dir)).display()
                ),
            })?;
        let (state, _) = watch::channel(MqttStatus::Disconnected("not connected yet".into()));
        Ok(SparkplugSink {
            options,
            broker: format!("{host}:{port}"),
            max_packet_size: s.max_packet_size,
            topics,
            bdseq,
            writes: writer.map(|w| (w, policy)),
            state,
            history,
        })
    }

    /// Connected / disconnected, updated as it changes.
    pub fn state(&self) -> watch::Receiver<MqttStatus> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` is cancelled or the bus closes; then publishes
    /// the NDEATH and disconnects. Dropped instead, the connection is cut
    /// and the broker publishes the NDEATH will.
    pub async fn run(self, mut events: Subscriber, shutdown: CancellationToken) {
        let SparkplugSink {
            options,
            broker,
            max_packet_size,
            topics,
            mut bdseq,
            writes,
            state,
            mut history,
        } = self;
        let mut node = Node::new(topics);
        let mut _guard = None;
        let commands = writes.map(|(w, p)| {
            let (c, task) = commands::Commands::start(w, p);
            _guard = Some(AbortOnDrop(task));
            c
        });
        tracing::info!(%broker, nbirth = %node.topics().nbirth, "Sparkplug edge node started");
        let mut backoff = MIN_BACKOFF;
        loop {
            let n = match bdseq.reserve() {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "cannot store bdSeq; a restart may repeat it (check sparkplug.state_dir)");
                    metrics::counter!("wincc_gateway_sparkplug_bdseq_errors_total").increment(1);
                    bdseq.reserve_in_memory()
                }
            };
            let will = Node::ndeath(n);
            let session = Session::start(options.clone(), &node.topics().ndeath, will);
            let mut link = Link {
                session,
                max_packet_size,
                connected: false,
                leaving: AtomicBool::new(false),
                published: AtomicU64::new(0),
            };
            let ended = link
                .serve(
                    &mut node,
                    &mut events,
                    &shutdown,
                    commands.as_ref(),
                    &state,
                    n,
                    &mut bdseq,
                    history.as_mut(),
                )
                .await;
            node.session_down();
            if let Some(h) = history.as_mut() {
                h.session_ended();
            }
            match ended {
                Ended::Stop => {
                    link.close(&node).await;
                    break;
                }
                Ended::Closed { why, was_connected } => {
                    state.send_replace(MqttStatus::Disconnected(why.clone()));
                    if link.leaving.load(Ordering::Relaxed) {
                        backoff = MIN_BACKOFF;
                        tracing::info!("Sparkplug session ended for the primary host; waiting for it in a new one");
                    } else if was_connected {
                        backoff = MIN_BACKOFF;
                        tracing::warn!(%broker, error = %why, "Sparkplug connection lost");
                    } else {
                        tracing::debug!(%broker, error = %why, "Sparkplug broker not reachable");
                    }
                }
            }
            drop(link);
            // Keep the node's picture of the station current while waiting.
            let until = Instant::now() + backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let stop = loop {
                let sync = history.as_ref().and_then(History::sync_deadline);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break true,
                    _ = tokio::time::sleep_until(until) => break false,
                    _ = sleep_until(sync) => {
                        if let Some(h) = history.as_mut() { h.sync(); }
                    }
                    ev = events.recv() => match ev {
                        Some(ev) => { let _ = feed(&mut node, history.as_mut(), ev); }
                        None => break true,
                    },
                }
            };
            if stop {
                break;
            }
        }
        if let Some(h) = history.as_mut() {
            h.sync_now();
        }
        tracing::info!("Sparkplug edge node stopped");
    }
}

/// Hands a bus event to the node; changes the host cannot get live go to
/// the store-and-forward buffer.
fn feed(node: &mut Node, history: Option<&mut History>, ev: Event) -> Vec<Out> {
    let now = std::time::Instant::now();
    match ev {
        Event::Changes(b) => {
            let out = node.on_changes(&b, now);
            // Born by this very batch: the DBIRTH carries its values.
            if let Some(h) = history.filter(|_| !node.is_live()) {
                h.record(&b);
            }
            out
        }
        Event::Station(s) => node.on_station(s.connected, now),
        Event::Tags(t) => node.on_tags(&t, now),
        Event::Alarms(_) => Vec::new(),
    }
}

enum Ended {
    Stop,
    Closed { why: String, was_connected: bool },
}

/// One session and what the node sends over it.
struct Link {
    session: Session,
    max_packet_size: usize,
    connected: bool,
    /// The node itself disconnected (its primary host went offline).
    leaving: AtomicBool,
    /// PUBLISH requests handed to rumqttc in this session.
    published: AtomicU64,
}

impl Link {
    /// Serves one session until it ends or the sink is to stop.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &mut self,
        node: &mut Node,
        events: &mut Subscriber,
        shutdown: &CancellationToken,
        commands: Option<&commands::Commands>,
        state: &watch::Sender<MqttStatus>,
        bdseq_now: u8,
        bdseq: &mut bdseq::BdSeq,
        mut history: Option<&mut History>,
    ) -> Ended {
        loop {
            let deadline = node.next_deadline().map(Instant::from_std);
            let sync = history.as_deref().and_then(History::sync_deadline);
            let in_flight = history.as_deref().is_some_and(History::in_flight);
            let replay = match history.as_deref_mut() {
                Some(h) if node.is_live() && h.pending() => Some(h.replay_deadline(Instant::now())),
                _ => None,
            };
            let mut batch = None;
            let out = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ended::Stop,
                c = self.session.control.recv() => match c {
                    Some(Control::Connected) => {
                        bdseq.session_started();
                        self.connected = true;
                        self.subscribe(node).await;
                        state.send_replace(MqttStatus::Connected);
                        tracing::info!(bd_seq = bdseq_now, "Sparkplug session started");
                        node.session_up(bdseq_now, std::time::Instant::now())
                    }
                    Some(Control::Closed(why)) => return Ended::Closed { why, was_connected: self.connected },
                    None => return Ended::Closed { why: "connection task ended".into(), was_connected: self.connected },
                },
                m = self.session.incoming.recv() => match m {
                    Some(m) => {
                        let t = node.topics();
                        let now = std::time::Instant::now();
                        if t.state.as_deref() == Some(m.topic.as_str()) {
                            node.on_state(&m.payload, now)
                        } else if *t.ncmd == *m.topic {
                            node.on_ncmd(&m.payload, now)
                        } else if *t.dcmd == *m.topic {
                            match commands {
                                Some(c) => c.handle(node, &m.payload),
                                None => tracing::warn!("DCMD refused: the Sparkplug sink has no station writer"),
                            }
                            Vec::new()
                        } else {
                            Vec::new()
                        }
                    }
                    None => Vec::new(),
                },
                _ = sleep_until(deadline) => node.tick(std::time::Instant::now()),
                ev = events.recv() => match ev {
                    Some(ev) => feed(node, history.as_deref_mut(), ev),
                    None => return Ended::Stop,
                },
                r = self.session.written.changed(), if in_flight => {
                    if r.is_ok() {
                        let n = *self.session.written.borrow_and_update();
                        if let Some(h) = history.as_deref_mut() {
                            h.written(n);
                        }
                    }
                    Vec::new()
                }
                _ = sleep_until(sync) => {
                    if let Some(h) = history.as_deref_mut() {
                        h.sync();
                    }
                    Vec::new()
                }
                _ = sleep_until(replay) => match history.as_deref_mut() {
                    Some(h) => replay_step(node, h, &mut batch),
                    None => Vec::new(),
                },
            };
            let before = self.published.load(Ordering::Relaxed);
            let oversize = self.emit(node, out).await;
            if let (Some(b), Some(h)) = (batch, history.as_deref_mut()) {
                let after = self.published.load(Ordering::Relaxed);
                if after > before {
                    // The historical DDATA was the only PUBLISH emitted.
                    h.sent(&b, after);
                    h.written(*self.session.written.borrow());
                } else if oversize > 0 {
                    // Logged and counted as oversize: it cannot ever go.
                    h.done(&b);
                }
                // Else the session is ending: the batch goes next time.
            }
        }
    }

    async fn subscribe(&self, node: &Node) {
        let t = node.topics();
        let mut filters = vec![t.ncmd.to_string(), t.dcmd.to_string()];
        if let Some(s) = &t.state {
            filters.push(s.to_string());
        }
        for f in filters {
            // Queued before the NBIRTH, so in place before any host reacts.
            let _ = self
                .session
                .client
                .subscribe(f, rumqttc::QoS::AtLeastOnce)
                .await;
        }
    }

    /// Publishes what the node produced (QoS 0, not retained); returns how
    /// many messages were too large to send.
    async fn emit(&self, node: &Node, out: Vec<Out>) -> usize {
        let mut oversize = 0;
        for o in out {
            match o {
                Out::Publish { topic, payload } => {
                    if payload.len() + topic.len() + 16 > self.max_packet_size {
                        metrics::counter!("wincc_gateway_sparkplug_oversize_total").increment(1);
                        oversize += 1;
                        tracing::error!(
                            %topic,
                            bytes = payload.len(),
                            max = self.max_packet_size,
                            "a Sparkplug message is larger than sparkplug.max_packet_size and was not sent; raise it (the broker's limit too)"
                        );
                        continue;
                    }
                    metrics::counter!("wincc_gateway_sparkplug_messages_total").increment(1);
                    if self
                        .session
                        .client
                        .publish(&*topic, rumqttc::QoS::AtMostOnce, false, payload)
                        .await
                        .is_ok()
                    {
                        self.published.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Out::GoOffline { ndeath } => {
                    tracing::info!("primary host offline: NDEATH and disconnect");
                    self.leaving.store(true, Ordering::Relaxed);
                    let c = &self.session.client;
                    if c.publish(
                        &*node.topics().ndeath,
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        ndeath,
                    )
                    .await
                    .is_ok()
                    {
                        self.published.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = c.disconnect().await;
                }
            }
        }
        oversize
    }

    /// Clean end: NDEATH (the will is dropped on DISCONNECT), DISCONNECT.
    async fn close(self, node: &Node) {
        let Link {
            session, connected, ..
        } = self;
        if connected {
            let c = &session.client;
            let _ = c.try_publish(
                &*node.topics().ndeath,
                rumqttc::QoS::AtLeastOnce,
                false,
                Node::ndeath(node.bdseq()),
            );
            let _ = c.try_disconnect();
        }
        session.finish(SHUTDOWN_FLUSH).await;
    }
}

/// One paced replay step: the next batch from the buffer as a historical
/// DDATA (left in `sent` to be acknowledged once written), or, when none of
/// its tags is in the DBIRTH any more, acknowledged at once.
fn replay_step(node: &mut Node, h: &mut History, sent: &mut Option<history::Batch>) -> Vec<Out> {
    let Some(b) = h.next_batch(Instant::now()) else {
        return Vec::new();
    };
    let (out, skipped) = node.historical(&b.changes);
    if skipped > 0 {
        metrics::counter!("wincc_gateway_sparkplug_buffer_skipped_total").increment(skipped as u64);
        tracing::info!(
            skipped,
            "buffered changes of tags no longer in the DBIRTH (or of another type now) were skipped"
        );
    }
    if out.is_empty() {
        h.done(&b);
    } else {
        *sent = Some(b);
    }
    out
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
