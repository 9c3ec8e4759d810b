//! The embedded MQTT broker of `wincc-gateway demo` (cargo feature `demo`,
//! on by default), so the demo needs nothing installed. It speaks MQTT 3.1.1
//! and MQTT 5 on one port (the CONNECT's protocol level decides), keeps every
//! retained message in memory and hands all of them to every late
//! subscriber, at QoS 0 and 1, however many there are: a subscriber's
//! outgoing queue is drained at the pace of its PUBACKs within its Receive
//! Maximum, never truncated. MQTT 5 Retain-As-Published, No Local, Retain
//! Handling, subscription identifiers and wills are honoured.
//!
//! Not meant for production: no authentication, no persistence, clean
//! sessions only (a reconnecting client gets its retained messages again,
//! not what it missed). Production uses mosquitto, EMQX or HiveMQ.
//!
//! Why not rumqttd: 0.20 serves 3.1.1 and 5 on separate ports only (its
//! 3.1.1 listener closes an MQTT 5 CONNECT without a word), truncates the
//! retained messages for a new subscriber to its outgoing batch (200 at QoS
//! 0, the free in-flight slots at QoS 1), clears the retain flag on every
//! forwarded message (no Retain-As-Published) and pulls hyper 0.14, axum 0.7
//! and an end-of-life rustls-webpki into the build. This broker reuses the
//! packet codecs of rumqttc, which the gateway links anyway: no new crate.

mod codec;
mod session;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) use codec::Message;

/// Retained topics kept at most; a new retained topic beyond this is
/// delivered live but not kept (and logged once).
const MAX_RETAINED: usize = 1_000_000;
/// Messages queued for one subscriber that reads too slowly; beyond this,
/// new messages for it are dropped (and logged), like mosquitto's
/// `max_queued_messages`. Retained messages on subscribe are not counted.
const QUEUE_PER_CLIENT: usize = 100_000;

/// A running embedded broker; it stops when this is dropped.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// Where it accepts MQTT 3.1.1 and MQTT 5 connections.
    pub addr: SocketAddr,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Closes every connection (wills are not published) and stops the broker.
    pub fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the broker on `listen` (port 0 picks a free port) on its own
/// thread and runtime; returns once it accepts connections.
pub fn start_embedded_broker(listen: SocketAddr) -> anyhow::Result<EmbeddedBroker> {
    let listener = TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} for the embedded MQTT broker"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the embedded MQTT broker's runtime")?;
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || runtime.block_on(serve(listener, token)))
        .context("cannot start the embedded MQTT broker thread")?;
    tracing::info!(
        %addr,
        "embedded MQTT broker listening (MQTT 3.1.1 and 5, retained messages kept in memory, no authentication)"
    );
    Ok(EmbeddedBroker {
        addr,
        stop,
        thread: Some(thread),
    })
}

async fn serve(listener: TcpListener, stop: CancellationToken) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "embedded MQTT broker cannot listen");
            return;
        }
    };
    let state = Router::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(session::run(stream, peer, state.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "embedded MQTT broker: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

/// One message on its way to one subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<usize>,
}

/// A subscription as stored.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub rap: bool,
    pub id: Option<usize>,
}

struct ClientEntry {
    client_id: String,
    tx: mpsc::Sender<Delivery>,
    subs: Vec<Subscription>,
    kick: CancellationToken,
    overflowing: bool,
}

#[derive(Default)]
struct Inner {
    retained: HashMap<String, Arc<Message>>,
    retained_full_logged: bool,
    clients: HashMap<u64, ClientEntry>,
    next_conn: u64,
}

/// The broker's shared state: retained messages and who subscribes to what.
/// The lock is never held across an await.
#[derive(Clone, Default)]
pub(crate) struct Router {
    inner: Arc<Mutex<Inner>>,
}

impl Router {
    fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; an older connection with the same client id
    /// is closed (MQTT's session takeover). Returns the connection's number.
    pub(crate) fn register(
        &self,
        client_id: &str,
        tx: mpsc::Sender<Delivery>,
        kick: CancellationToken,
    ) -> u64 {
        let mut g = self.lock();
        for c in g.clients.values() {
            if c.client_id == client_id {
                c.kick.cancel();
            }
        }
        g.next_conn += 1;
        let id = g.next_conn;
        g.clients.insert(
            id,
            ClientEntry {
                client_id: client_id.to_string(),
                tx,
                subs: Vec::new(),
                kick,
                overflowing: false,
            },
        );
        id
    }

    pub(crate) fn unregister(&self, conn: u64) {
        self.lock().clients.remove(&conn);
    }

    /// Adds or replaces a subscription; returns whether it existed and,
    /// unless the client asked otherwise, the retained messages it matches.
    pub(crate) fn subscribe(
        &self,
        conn: u64,
        sub: Subscription,
        retain_handling: u8,
    ) -> Vec<Delivery> {
        let mut g = self.lock();
        let existed = {
            let Some(c) = g.clients.get_mut(&conn) else {
                return Vec::new();
            };
            let existed = c.subs.iter().any(|s| s.filter == sub.filter);
            c.subs.retain(|s| s.filter != sub.filter);
            c.subs.push(sub.clone());
            existed
        };
        if retain_handling == 2 || (retain_handling == 1 && existed) {
            return Vec::new();
        }
        let mut out: Vec<Delivery> = g
            .retained
            .values()
            .filter(|m| rumqttc::mqttbytes::matches(&m.topic, &sub.filter))
            .map(|m| Delivery {
                msg: m.clone(),
                qos: m.qos.min(sub.qos).min(1),
                retain: true,
                sub_ids: sub.id.into_iter().collect(),
            })
            .collect();
        // A stable order helps people reading a dump; not required by MQTT.
        out.sort_by(|a, b| a.msg.topic.cmp(&b.msg.topic));
        out
    }

    /// Removes a subscription; `true` if it existed.
    pub(crate) fn unsubscribe(&self, conn: u64, filter: &str) -> bool {
        let mut g = self.lock();
        let Some(c) = g.clients.get_mut(&conn) else {
            return false;
        };
        let before = c.subs.len();
        c.subs.retain(|s| s.filter != filter);
        before != c.subs.len()
    }

    /// Stores a retained message and delivers a message to every matching
    /// subscription (one delivery per client, at the highest granted QoS).
    pub(crate) fn publish(&self, from: u64, msg: Message) {
        let msg = Arc::new(msg);
        let mut g = self.lock();
        if msg.retain {
            if msg.payload.is_empty() {
                g.retained.remove(&msg.topic);
            } else if g.retained.len() < MAX_RETAINED || g.retained.contains_key(&msg.topic) {
                g.retained.insert(msg.topic.clone(), msg.clone());
            } else if !g.retained_full_logged {
                g.retained_full_logged = true;
                tracing::warn!(
                    limit = MAX_RETAINED,
                    topic = %msg.topic,
                    "embedded MQTT broker: too many retained topics, new ones are no longer kept"
                );
            }
        }
        for (conn, c) in g.clients.iter_mut() {
            let mut best: Option<Delivery> = None;
            for s in &c.subs {
                if (s.no_local && *conn == from)
                    || !rumqttc::mqttbytes::matches(&msg.topic, &s.filter)
                {
                    continue;
                }
                let d = best.get_or_insert_with(|| Delivery {
                    msg: msg.clone(),
                    qos: 0,
                    retain: false,
                    sub_ids: Vec::new(),
                });
                d.qos = d.qos.max(msg.qos.min(s.qos).min(1));
                d.retain |= s.rap && msg.retain;
                d.sub_ids.extend(s.id);
            }
            let Some(d) = best else { continue };
            match c.tx.try_send(d) {
                Ok(()) => c.overflowing = false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !c.overflowing {
                        c.overflowing = true;
                        tracing::warn!(
                            client_id = %c.client_id,
                            queued = QUEUE_PER_CLIENT,
                            "embedded MQTT broker: a subscriber does not keep up, dropping messages for it"
                        );
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

/// The channel a session receives its deliveries on.
pub(crate) fn delivery_channel() -> (mpsc::Sender<Delivery>, mpsc::Receiver<Delivery>) {
    mpsc::channel(QUEUE_PER_CLIENT)
}
