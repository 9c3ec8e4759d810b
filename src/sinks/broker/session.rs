//! One client connection of the embedded broker: protocol detection from
//! the CONNECT, then one task that reads packets, routes publishes, and
//! writes deliveries within the client's Receive Maximum as its PUBACKs come
//! back. Reads and writes are both cancel-safe, so a client that is slow to
//! read never stops its PUBACKs from being read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Connect, DecodeError, Encoder, Incoming, Message, Proto, SubResult};
use super::{Delivery, Router, Subscription};

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes encoded per write before the loop looks at the socket again.
const WRITE_CHUNK: usize = 64 * 1024;
/// Deliveries taken from the router channel while earlier ones still wait.
const PENDING_LOW_WATER: usize = 1024;

/// Serves one connection until it closes, the broker stops, or another
/// connection takes over its client id.
pub(super) async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) {
    let mut inbuf = BytesMut::with_capacity(4096);
    let connect =
        match tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut stream, &mut inbuf)).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "embedded MQTT broker refused a connection");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "embedded MQTT broker: no CONNECT within 10 s");
                return;
            }
        };
    let mut session = Session::new(connect, router, peer);
    let reason = session.serve(stream, inbuf, stop).await;
    session.finish(&reason);
}

/// Reads the CONNECT; `Ok(None)` when the peer closed first. A protocol
/// level other than 4 (3.1.1) or 5 is answered with "unacceptable protocol
/// version" and an error naming it.
async fn read_connect(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<Connect>, String> {
    loop {
        match codec::protocol_level(buf) {
            Ok(Some(level)) => {
                let proto = match level {
                    4 => Proto::V4,
                    5 => Proto::V5,
                    other => {
                        let mut out = BytesMut::new();
                        Encoder::refuse_protocol(&mut out);
                        let _ = stream.write_all(&out).await;
                        return Err(format!(
                            "MQTT protocol level {other} is not supported (the embedded broker speaks 3.1.1 = level 4 and 5)"
                        ));
                    }
                };
                loop {
                    match codec::decode_connect(proto, buf) {
                        Ok(c) => return Ok(Some(c)),
                        Err(DecodeError::Incomplete) => {}
                        Err(DecodeError::Malformed(m)) => return Err(format!("bad CONNECT: {m}")),
                    }
                    if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                        return Ok(None);
                    }
                }
            }
            Ok(None) => {}
            Err(DecodeError::Malformed(m)) => return Err(m),
            Err(DecodeError::Incomplete) => {}
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Ok(None);
        }
    }
}

/// Why a session ended; decides whether the will is published.
enum End {
    /// DISCONNECT from the client (`true`: it asked for its will).
    Clean(bool),
    /// The broker stops: no will.
    Shutdown,
    /// Socket closed or failed, keep-alive expired, protocol error, takeover.
    Abnormal(String),
}

struct Session {
    router: Router,
    peer: SocketAddr,
    client_id: String,
    enc: Encoder,
    conn: u64,
    will: Option<Message>,
    keep_alive: Option<Duration>,
    receive_max: usize,
    rx: tokio::sync::mpsc::Receiver<Delivery>,
    kick: CancellationToken,
    pending: VecDeque<Delivery>,
    inflight: HashSet<u16>,
    next_pkid: u16,
    /// Incoming QoS 2 packet ids between PUBLISH and PUBREL.
    qos2: HashSet<u16>,
    /// MQTT 5 topic aliases set by the client.
    aliases: HashMap<u16, String>,
    out: BytesMut,
}

impl Session {
    fn new(c: Connect, router: Router, peer: SocketAddr) -> Self {
        let (tx, rx) = super::delivery_channel();
        let kick = CancellationToken::new();
        let assigned = c.client_id.is_empty().then(|| format!("embedded-{peer}"));
        let client_id = assigned.clone().unwrap_or(c.client_id);
        let conn = router.register(&client_id, tx, kick.clone());
        let enc = Encoder {
            proto: c.proto,
            max_packet: c.max_packet,
        };
        let mut out = BytesMut::with_capacity(WRITE_CHUNK);
        enc.connack(assigned.filter(|_| c.proto == Proto::V5), &mut out);
        tracing::debug!(%peer, client_id, protocol = %c.proto, "embedded MQTT broker: client connected");
        Session {
            router,
            peer,
            client_id,
            enc,
            conn,
            will: c.will,
            keep_alive: (c.keep_alive > 0)
                .then(|| Duration::from_millis(c.keep_alive as u64 * 1500)),
            receive_max: c.receive_max as usize,
            rx,
            kick,
            pending: VecDeque::new(),
            inflight: HashSet::new(),
            next_pkid: 0,
            qos2: HashSet::new(),
            aliases: HashMap::new(),
            out,
        }
    }

    async fn serve(
        &mut self,
        stream: TcpStream,
        mut inbuf: BytesMut,
        stop: CancellationToken,
    ) -> End {
        let (mut reader, mut writer) = stream.into_split();
        let mut deadline = self.keep_alive.map(|k| Instant::now() + k);
        // Packets that arrived together with the CONNECT.
        if let Err(end) = self.handle_input(&mut inbuf) {
            return end;
        }
        loop {
            self.fill_output();
            let want_more = self.pending.len() < PENDING_LOW_WATER;
            let sleep = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return End::Shutdown,
                _ = self.kick.cancelled() => {
                    return End::Abnormal("another connection took over its client id".into())
                }
                _ = sleep => return End::Abnormal("keep-alive expired".into()),
                r = reader.read_buf(&mut inbuf) => match r {
                    Ok(0) => return End::Abnormal("connection closed without DISCONNECT".into()),
                    Ok(_) => {
                        deadline = self.keep_alive.map(|k| Instant::now() + k);
                        if let Err(end) = self.handle_input(&mut inbuf) {
                            return end;
                        }
                    }
                    Err(e) => return End::Abnormal(format!("read failed: {e}")),
                },
                r = writer.write(&self.out), if !self.out.is_empty() => match r {
                    Ok(n) => self.out.advance(n),
                    Err(e) => return End::Abnormal(format!("write failed: {e}")),
                },
                d = self.rx.recv(), if want_more => match d {
                    Some(d) => self.pending.push_back(d),
                    None => return End::Shutdown,
                },
            }
        }
    }

    /// Encodes queued deliveries while the client's in-flight window and
    /// the write chunk allow.
    fn fill_output(&mut self) {
        while self.out.len() < WRITE_CHUNK {
            let Some(front) = self.pending.front() else {
                break;
            };
            if front.qos > 0 && self.inflight.len() >= self.receive_max {
                break;
            }
            let d = self.pending.pop_front().expect("front exists");
            let pkid = if d.qos > 0 { self.alloc_pkid() } else { 0 };
            let sent = self
                .enc
                .publish(&d.msg, d.qos, d.retain, pkid, &d.sub_ids, &mut self.out);
            if sent && d.qos > 0 {
                self.inflight.insert(pkid);
            } else if !sent {
                tracing::warn!(
                    client_id = %self.client_id,
                    topic = %d.msg.topic,
                    "embedded MQTT broker: message larger than the client's Maximum Packet Size, not sent"
                );
            }
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Handles every complete packet in `buf`.
    fn handle_input(&mut self, buf: &mut BytesMut) -> Result<(), End> {
        loop {
            if buf.is_empty() {
                return Ok(());
            }
            let packet = match codec::decode(self.enc.proto, buf) {
                Ok(p) => p,
                Err(DecodeError::Incomplete) => return Ok(()),
                Err(DecodeError::Malformed(m)) => {
                    return Err(End::Abnormal(format!("malformed packet: {m}")))
                }
            };
            self.handle(packet)?;
        }
    }

    fn handle(&mut self, packet: Incoming) -> Result<(), End> {
        match packet {
            Incoming::Publish {
                mut msg,
                pkid,
                dup,
                topic_alias,
            } => {
                if let Some(alias) = topic_alias {
                    if msg.topic.is_empty() {
                        msg.topic =
                            self.aliases.get(&alias).cloned().ok_or_else(|| {
                                End::Abnormal(format!("unknown topic alias {alias}"))
                            })?;
                    } else {
                        self.aliases.insert(alias, msg.topic.clone());
                    }
                }
                if msg.topic.is_empty() || !rumqttc::mqttbytes::valid_topic(&msg.topic) {
                    return Err(End::Abnormal(format!("invalid topic name {:?}", msg.topic)));
                }
                match msg.qos {
                    0 => self.router.publish(self.conn, msg),
                    1 => {
                        self.router.publish(self.conn, msg);
                        self.enc.puback(pkid, &mut self.out);
                    }
                    _ => {
                        // Exactly once: route on the first PUBLISH, not on a resend.
                        if !(dup && self.qos2.contains(&pkid)) {
                            self.qos2.insert(pkid);
                            self.router.publish(self.conn, msg);
                        }
                        self.enc.pubrec(pkid, &mut self.out);
                    }
                }
            }
            Incoming::PubAck(pkid) | Incoming::PubComp(pkid) => {
                self.inflight.remove(&pkid);
            }
            Incoming::PubRec(pkid) => {
                // Only QoS 0 and 1 are sent; answer anyway so a client is not stuck.
                self.inflight.remove(&pkid);
            }
            Incoming::PubRel(pkid) => {
                self.qos2.remove(&pkid);
                self.enc.pubcomp(pkid, &mut self.out);
            }
            Incoming::Subscribe { pkid, filters, id } => self.subscribe(pkid, filters, id),
            Incoming::Unsubscribe { pkid, filters } => {
                let existed: Vec<bool> = filters
                    .iter()
                    .map(|f| self.router.unsubscribe(self.conn, f))
                    .collect();
                self.enc.unsuback(pkid, &existed, &mut self.out);
            }
            Incoming::PingReq => self.enc.pingresp(&mut self.out),
            Incoming::Disconnect(with_will) => return Err(End::Clean(with_will)),
            Incoming::Unexpected(what) => {
                return Err(End::Abnormal(format!(
                    "protocol error: the client sent {what}"
                )))
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, pkid: u16, filters: Vec<codec::SubRequest>, id: Option<usize>) {
        let mut results = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for f in filters {
            if f.filter.starts_with("$share/") {
                results.push(SubResult::SharedNotSupported);
                continue;
            }
            if !rumqttc::mqttbytes::valid_filter(&f.filter) {
                results.push(SubResult::InvalidFilter);
                continue;
            }
            let granted = f.qos.min(1);
            let sub = Subscription {
                filter: f.filter,
                qos: granted,
                no_local: f.no_local,
                rap: f.rap,
                id,
            };
            retained.extend(self.router.subscribe(self.conn, sub, f.retain_handling));
            results.push(SubResult::Granted(granted));
        }
        // SUBACK first, then the retained messages (MQTT 3.1.1 §3.8.4).
        self.enc.suback(pkid, &results, &mut self.out);
        self.pending.extend(retained);
    }

    /// Leaves the router and publishes the will where MQTT says so.
    fn finish(&mut self, end: &End) {
        self.router.unregister(self.conn);
        let publish_will = match end {
            End::Clean(with_will) => *with_will,
            End::Shutdown => false,
            End::Abnormal(why) => {
                tracing::debug!(peer = %self.peer, client_id = %self.client_id, why, "embedded MQTT broker: connection ended");
                true
            }
        };
        if let Some(will) = self.will.take().filter(|_| publish_will) {
            self.router.publish(0, will);
        }
    }
}
