//! The MQTT sink (contract §3): tag values, station state, alarms and the
//! gateway's own status to a broker, and write commands back.
//!
//! Topics under `{prefix}`:
//! - `status`: retained `online` after every CONNACK; `offline` as last
//!   will and on clean shutdown.
//! - `station`: retained station state JSON.
//! - `tags/{tag}`: value JSON with the configured QoS and retain flag.
//! - `alarms/active/{id}`: retained alarm JSON while raised/acknowledged,
//!   an empty retained message once cleared; `alarms/events`: each transition.
//! - `write/{tag}` (subscribed only with `write_enabled`) and
//!   `write-result/{tag}`.
//!
//! Status, station, alarm and write-result messages use QoS 1 (at least
//! once) whatever `qos` says; `qos`/`retain` apply to tag values.
//!
//! Delivery is tracked by the gateway itself ([`outbox`]), not trusted to
//! rumqttc: while the broker is away only the newest value of each tag is
//! kept, and after each reconnect everything not confirmed is published again.
//!
//! `protocol = "3.1.1"` (default) or `"5"`: topics, payloads and delivery
//! rules are the same for both ([`link`] hides the protocol). Under MQTT 5
//! each publish also says what its payload is (`content_type`
//! `application/json`, or `text/plain` for `status`; payload format
//! indicator 1 = UTF-8), a persistent session (`clean_session = false`)
//! gets a session expiry interval, and a write command's response topic and
//! correlation data are honoured (see [`commands`]).
//!
//! `mqtts://` trusts the system's certificate store plus `ca_file`.
//!
//! With `[mqtt.buffer] enabled` ([`backlog`], contract §9) every tag change
//! the broker did not acknowledge is kept on disk and replayed, paced and
//! oldest first, on `{prefix}/backfill/{tag}` once the broker is back.

mod backlog;
mod commands;
mod connection;
mod link;
pub(crate) mod options;
mod outbox;
mod payload;
mod retained;
mod tls;

pub use backlog::BacklogStatus;
pub use retained::announced_alarms;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::{AlarmEventKind, Event, Subscriber};
use crate::config::MqttSettings;
use crate::writes::{WritePolicy, Writer};
use link::{Client, Qos};
use outbox::Kind;

pub use commands::MAX_COMMAND_BYTES;

type Outbox = outbox::Outbox<Client>;
type SharedOutbox = Arc<Mutex<Outbox>>;

/// rumqttc request channel size; the outbox holds everything beyond it.
const REQUEST_CHANNEL: usize = 256;
/// How long a clean shutdown waits for unconfirmed messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the backfill replay is paced and fed from disk.
const REPLAY_TICK: Duration = Duration::from_millis(10);

/// A bad `[mqtt]` setting, or a sink built without what it needs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MqttError {
    /// `key` is the full setting name (`mqtt.url`); never contains a secret.
    #[error("{key}: {why}")]
    Config { key: String, why: String },
    /// The broker could not be reached or refused a request.
    #[error("MQTT broker: {0}")]
    Broker(String),
}

impl MqttError {
    fn config(key: &str, value: &str, why: &str) -> Self {
        let why = if value.is_empty() {
            why.to_string()
        } else {
            format!("{value:?} {why}")
        };
        MqttError::Config {
            key: format!("mqtt.{key}"),
            why,
        }
    }
}

/// The sink's connection to the broker, for `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttStatus {
    Connected,
    /// Not (yet, or no longer) connected, with the reason.
    Disconnected(String),
}

impl MqttStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            MqttStatus::Connected => "connected",
            MqttStatus::Disconnected(_) => "disconnected",
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self, MqttStatus::Connected)
    }
}

/// The MQTT sink. Build it with [`MqttSink::new`], take [`MqttSink::state`]
/// for health reporting, then [`MqttSink::run`] it.
pub struct MqttSink {
    prefix: String,
    tag_qos: Qos,
    tag_retain: bool,
    broker: String,
    client: Client,
    eventloop: link::EventLoop,
    outbox: SharedOutbox,
    writes: Option<(Writer, WritePolicy)>,
    /// `mqtt.response_topic_prefix` (MQTT 5 response topics; empty: off).
    response_prefix: String,
    state: watch::Sender<MqttStatus>,
    /// `[mqtt.buffer]`: its health, and how often it is synced.
    backlog: Option<(watch::Receiver<BacklogStatus>, Duration)>,
}

impl MqttSink {
    /// Validates the settings and prepares the client; connects only in [`run`](Self::run).
    /// `writer` is required when `write_enabled` is set.
    pub fn new(settings: &MqttSettings, writer: Option<Writer>) -> Result<Self, MqttError> {
        let prefix = options::prefix(settings)?;
        let tag_qos = options::qos(settings)?;
        let status_topic = format!("{prefix}/status");
        let opts = options::build(settings, &status_topic)?;
        let (host, port) = opts.broker_address();
        let broker = format!("{host}:{port}");
        let writes = if settings.write_enabled {
            let Some(w) = writer else {
                return Err(MqttError::config(
                    "write_enabled",
                    "",
                    "is true but the sink was built without a station writer",
                ));
            };
            let policy = WritePolicy::new("mqtt", true, &settings.writable_tags)
                .map_err(|e| MqttError::config("writable_tags", "", &e.to_string()))?;
            Some((w, policy))
        } else {
            None
        };
        let (client, eventloop) = link::connect(opts, REQUEST_CHANNEL);
        let mut outbox = outbox::Outbox::new(client.clone(), settings.max_packet_size);
        let backlog = if settings.buffer.enabled {
            let b = backlog::Backlog::open(&settings.buffer, &prefix).map_err(|e| {
                MqttError::config(
                    "buffer.dir",
                    &settings.buffer.dir,
                    &format!("cannot open the buffer: {e}"),
                )
            })?;
            let status = b.status();
            outbox.set_backlog(b);
            Some((
                status,
                Duration::from_millis(settings.buffer.sync_interval_ms.max(1)),
            ))
        } else {
            None
        };
        let outbox = Arc::new(Mutex::new(outbox));
        let (state, _) = watch::channel(MqttStatus::Disconnected("not connected yet".into()));
        Ok(MqttSink {
            prefix,
            tag_qos,
            tag_retain: settings.retain,
            broker,
            client,
            eventloop,
            outbox,
            writes,
            response_prefix: settings.response_topic_prefix.clone(),
            state,
            backlog,
        })
    }

    /// The store-and-forward buffer's state, when `[mqtt.buffer]` is enabled.
    pub fn backlog(&self) -> Option<watch::Receiver<BacklogStatus>> {
        self.backlog.as_ref().map(|(s, _)| s.clone())
    }

    /// Connected / disconnected, updated as it changes. Cheap to clone and read.
    pub fn state(&self) -> watch::Receiver<MqttStatus> {
        self.state.subscribe()
    }

    /// Publishes bus events until `shutdown` is cancelled or the bus closes,
    /// then flushes (bounded by a timeout), publishes `offline` and
    /// disconnects. If this future is dropped instead, the connection is cut
    /// without DISCONNECT and the broker publishes the `offline` last will.
    pub async fn run(self, mut events: Subscriber, shutdown: CancellationToken) {
        let MqttSink {
            prefix,
            tag_qos,
            tag_retain,
            broker,
            client,
            eventloop,
            outbox,
            writes,
            response_prefix,
            state,
            backlog,
        } = self;
        let status_topic: Arc<str> = Arc::from(format!("{prefix}/status"));
        let mut guards = Vec::new();
        let commands = writes.map(|(writer, policy)| {
            let (c, handles) = commands::Commands::start(
                &prefix,
                &response_prefix,
                writer,
                policy,
                outbox.clone(),
            );
            guards.extend(handles.into_iter().map(AbortOnDrop));
            Arc::new(c)
        });
        let stopping = CancellationToken::new();
        let driver = connection::Driver {
            eventloop,
            client: client.clone(),
            outbox: outbox.clone(),
            commands,
            status_topic: status_topic.clone(),
            state,
            stopping: stopping.clone(),
            broker: broker.clone(),
        };
        let mut driver = AbortOnDrop(tokio::spawn(driver.run()));
        tracing::info!(%broker, %prefix, "MQTT sink started");
        let replay = backlog.as_ref().map(|(_, sync_every)| {
            AbortOnDrop(tokio::spawn(backlog_loop(outbox.clone(), *sync_every)))
        });

        let mut sink = Publisher {
            prefix,
            tag_qos,
            tag_retain,
            outbox: outbox.clone(),
            topics: HashMap::new(),
            buffered: backlog.is_some(),
            buf: Vec::with_capacity(256),
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(ev) => sink.handle(ev),
                    None => break,
                },
            }
        }
        while let Some(ev) = events.try_recv() {
            sink.handle(ev);
        }

        // Clean shutdown: flush, `offline`, DISCONNECT.
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        wait_until(&outbox, deadline, |o| o.unconfirmed() == 0).await;
        let connected = {
            let mut o = lock(&outbox);
            if o.is_connected() {
                o.set(
                    Kind::Status,
                    status_topic.clone(),
                    Bytes::from_static(b"offline"),
                    Qos::AtLeastOnce,
                    true,
                    None,
                );
                o.pump();
            }
            o.is_connected()
        };
        if connected {
            wait_until(&outbox, deadline + Duration::from_secs(1), |o| {
                o.is_confirmed(&status_topic)
            })
            .await;
        }
        stopping.cancel();
        client.try_disconnect();
        if tokio::time::timeout(Duration::from_secs(2), &mut driver.0)
            .await
            .is_err()
        {
            tracing::warn!("MQTT event loop did not stop in time; cutting the connection");
        }
        drop(replay);
        if backlog.is_some() {
            // What the broker did not confirm stays on disk for the next start.
            lock(&outbox).spill_unconfirmed();
            sync_backlog(&outbox).await;
        }
        let left = lock(&outbox).unconfirmed();
        tracing::info!(unconfirmed = left, "MQTT sink stopped");
    }
}

/// Paces and feeds the backfill replay; syncs the buffer every `sync_every`.
async fn backlog_loop(outbox: SharedOutbox, sync_every: Duration) {
    let mut tick = tokio::time::interval(REPLAY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sync = Instant::now() + sync_every;
    loop {
        tick.tick().await;
        lock(&outbox).backlog_tick();
        if Instant::now() >= next_sync {
            next_sync = Instant::now() + sync_every;
            sync_backlog(&outbox).await;
        }
    }
}

/// Fsyncs the buffer outside the outbox lock, then updates its health.
async fn sync_backlog(outbox: &SharedOutbox) {
    let files = lock(outbox)
        .backlog_mut()
        .map(|b| b.take_unsynced())
        .unwrap_or_default();
    let r = tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
        .await
        .unwrap_or(Ok(()));
    let mut o = lock(outbox);
    if let Some(b) = o.backlog_mut() {
        if let Err(e) = &r {
            b.sync_failed(e);
        }
        b.publish_status();
    }
}

fn lock(o: &SharedOutbox) -> std::sync::MutexGuard<'_, Outbox> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `done` holds, the connection is down, or `deadline` passes.
async fn wait_until(o: &SharedOutbox, deadline: Instant, done: impl Fn(&Outbox) -> bool) {
    loop {
        {
            let o = lock(o);
            if done(&o) || !o.is_connected() || Instant::now() >= deadline {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Aborts the task when dropped, so dropping the sink stops everything.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns bus events into outbox entries.
struct Publisher {
    prefix: String,
    tag_qos: Qos,
    tag_retain: bool,
    outbox: SharedOutbox,
    /// Tag name → topic, so each name is escaped once.
    topics: HashMap<Arc<str>, Arc<str>>,
    /// `[mqtt.buffer]` is on: each change also gets its buffer record.
    buffered: bool,
    /// Reused for every payload ([`payload::encode`]); each message then
    /// takes one exact-size copy.
    buf: Vec<u8>,
}

impl Publisher {
    fn tag_topic(&mut self, name: &Arc<str>) -> Arc<str> {
        if let Some(t) = self.topics.get(name) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(format!(
            "{}/tags/{}",
            self.prefix,
            crate::topic::encode(name)
        ));
        self.topics.insert(name.clone(), t.clone());
        t
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Changes(batch) => {
                let buffered = self.buffered;
                let mut items: Vec<(Arc<str>, Bytes, Option<Bytes>)> =
                    Vec::with_capacity(batch.changes.len());
                for c in &batch.changes {
                    payload::encode(c, &mut self.buf);
                    let record = buffered.then(|| backlog::encode(c));
                    let topic = self.tag_topic(&c.name);
                    items.push((topic, Bytes::copy_from_slice(&self.buf), record));
                }
                let mut o = lock(&self.outbox);
                for (topic, payload, record) in items {
                    o.set_change(
                        topic,
                        payload,
                        self.tag_qos,
                        self.tag_retain,
                        Some(batch.received_at),
                        record,
                    );
                }
                o.flush_backlog();
                o.pump();
                o.update_pending_gauge();
            }
            Event::Station(s) => {
                let payload = Bytes::from(s.to_json().to_string());
                let topic = Arc::from(format!("{}/station", self.prefix));
                let mut o = lock(&self.outbox);
                o.set(Kind::Station, topic, payload, Qos::AtLeastOnce, true, None);
                o.pump();
            }
            Event::Tags(tags) => {
                let names: HashSet<&str> = tags.iter().map(|t| t.name.as_str()).collect();
                self.topics.retain(|n, _| names.contains(&**n));
                let keep: HashSet<Arc<str>> = self.topics.values().cloned().collect();
                lock(&self.outbox).prune_tags(|t| keep.contains(t));
            }
            Event::Alarms(evs) => {
                let events_topic: Arc<str> = Arc::from(format!("{}/alarms/events", self.prefix));
                let mut o = lock(&self.outbox);
                for ev in evs.iter() {
                    let topic = Arc::from(format!(
                        "{}/alarms/active/{}",
                        self.prefix,
                        crate::topic::encode(&ev.alarm.id)
                    ));
                    let active = match ev.kind {
                        AlarmEventKind::Cleared => Bytes::new(),
                        _ => Bytes::from(serde_json::to_vec(&ev.alarm).unwrap_or_default()),
                    };
                    o.set(
                        Kind::AlarmActive,
                        topic,
                        active,
                        Qos::AtLeastOnce,
                        true,
                        None,
                    );
                    let event = serde_json::json!({"event": ev.kind.as_str(), "alarm": ev.alarm});
                    o.push_stream(
                        Kind::AlarmEvent,
                        events_topic.clone(),
                        Bytes::from(event.to_string()),
                        Qos::AtLeastOnce,
                        None,
                    );
                }
                o.pump();
                o.update_pending_gauge();
            }
        }
    }
}
