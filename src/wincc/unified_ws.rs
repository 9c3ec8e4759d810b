//! GraphQL subscriptions of the `unified` dialect over WebSocket
//! (`graphql-transport-ws`, WINCC-DIALECTS.md §2.1): `connection_init`
//! with `{"Authorization":"Bearer <token>"}`, `connection_ack`, one
//! `tagValues(names: $names)` subscription, then `next` notifications
//! (`Added` first for every tag, then `Modified`).
//!
//! The handshake goes through the station's rate limiter like any request;
//! a rejected `connection_init` (close code 4401/4403) is answered with one
//! fresh login and one more attempt, never more. `wss://` uses the system
//! trust store; with `ca_file` or `accept_invalid_certs` set, subscriptions
//! are refused (the caller keeps polling).
//!
//! A silent connection (station switched off, cable pulled: no FIN ever
//! comes) is found with WebSocket-level pings (not the `graphql-transport-ws`
//! `ping` message, which real stations refuse): one every keep-alive
//! period (`timeout_ms`, 1 s..10 s); a subscription that delivers nothing
//! and answers no ping (no frame at all, pongs included) for two periods is
//! declared dead with a timeout, and the group polls instead. Every send
//! has a timeout (`timeout_ms`) too: a station that stops reading its
//! socket fills the buffers, and a send must not hang the reader.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::up;
use super::UnifiedClient;
use crate::model::Reading;
use crate::wincc::{StationError, SubscriptionEvent, TagSubscription};

const SUBSCRIBE: &str = "subscription TagValues($names: [String!]!) { tagValues(names: $names) { name value { value timestamp quality { quality subStatus limit } } error { code description } notificationReason } }";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

/// Sends `m`, failing with a timeout when the station does not take it
/// within `timeout` (it stopped reading its socket).
async fn send_within(ws: &mut Ws, m: Message, timeout: Duration) -> Result<(), StationError> {
    match tokio::time::timeout(timeout, ws.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StationError::Unreachable(format!("subscription: {e}"))),
        Err(_) => Err(StationError::Timeout(timeout)),
    }
}

enum Handshake {
    Ok(Box<Ws>),
    Rejected(String),
}

impl UnifiedClient {
    /// Opens a `tagValues` subscription for `names` over WebSocket.
    pub async fn subscribe_tag_values(
        &self,
        names: &[Arc<str>],
    ) -> Result<TagSubscription, StationError> {
        if let Some(why) = self.ws_unsupported {
            return Err(StationError::Refused {
                code: "unsupported".into(),
                message: why.into(),
            });
        }
        let mut ticket = self.ticket(None).await?;
        let mut ws = match self.handshake(ticket.bearer.as_deref()).await? {
            Handshake::Ok(ws) => ws,
            Handshake::Rejected(why) if self.auth != crate::config::AuthMode::None => {
                tracing::info!(reason = %why, "subscription refused the session; logging in again");
                ticket = self.ticket(Some(ticket.generation)).await?;
                match self.handshake(ticket.bearer.as_deref()).await? {
                    Handshake::Ok(ws) => ws,
                    Handshake::Rejected(why) => return Err(StationError::Auth(why)),
                }
            }
            Handshake::Rejected(why) => return Err(StationError::Auth(why)),
        };
        let sub = json!({"id": "1", "type": "subscribe",
            "payload": {"query": SUBSCRIBE, "variables": {"names": names}}});
        send_within(&mut ws, text(sub), self.timeout).await?;
        let (tx, rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        tokio::spawn(read_loop(*ws, tx, cancel.clone(), self.timeout));
        Ok(TagSubscription::new(rx, cancel))
    }

    /// Connects and sends `connection_init`; waits for `connection_ack`.
    async fn handshake(&self, bearer: Option<&str>) -> Result<Handshake, StationError> {
        let mut url = self.url.clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|_| StationError::Malformed("cannot build the WebSocket URL".into()))?;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| StationError::Malformed(format!("WebSocket request: {e}")))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let timeout = self.timeout;
        let mut ws = {
            let _permit = self.limiter.acquire().await;
            metrics::counter!("wincc_gateway_station_requests_total", "endpoint" => "subscribe")
                .increment(1);
            match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(req)).await {
                Err(_) => return Err(StationError::Timeout(timeout)),
                Ok(Err(e)) => return Err(StationError::Unreachable(format!("WebSocket: {e}"))),
                Ok(Ok((ws, _))) => ws,
            }
        };
        let payload = match bearer {
            Some(t) => json!({"Authorization": format!("Bearer {t}")}),
            None => json!({}),
        };
        send_within(
            &mut ws,
            text(json!({"type": "connection_init", "payload": payload})),
            timeout,
        )
        .await?;
        let reply = tokio::time::timeout(timeout, ws.next()).await;
        match reply {
            Err(_) => Err(StationError::Timeout(timeout)),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if v["type"] == "connection_ack" {
                    Ok(Handshake::Ok(Box::new(ws)))
                } else {
                    Err(StationError::Malformed(format!(
                        "expected connection_ack, got {:?}",
                        v["type"]
                    )))
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                if code == 4401 || code == 4403 {
                    Ok(Handshake::Rejected(format!(
                        "subscription refused: {code} {reason}"
                    )))
                } else {
                    Err(StationError::Unreachable(format!(
                        "subscription closed: {code} {reason}"
                    )))
                }
            }
            Ok(other) => Err(StationError::Malformed(format!(
                "unexpected WebSocket reply: {:?}",
                other.map(|m| m.map(|m| m.to_string().chars().take(80).collect::<String>()))
            ))),
        }
    }
}

/// Notification rows → readings, matched by the name each row carries.
fn readings(payload: &Value) -> Result<Vec<Reading>, StationError> {
    let rows = match &payload["data"]["tagValues"] {
        Value::Array(a) => a.clone(),
        o @ Value::Object(_) => vec![o.clone()],
        _ => {
            return Err(StationError::Malformed(
                "a notification without data.tagValues".into(),
            ))
        }
    };
    let names: Vec<Arc<str>> = rows
        .iter()
        .filter_map(|r| r["name"].as_str().map(Arc::from))
        .collect();
    up::tag_values(&Value::Array(rows), &names, chrono::Utc::now())
}

async fn read_loop(
    mut ws: Ws,
    tx: mpsc::Sender<SubscriptionEvent>,
    cancel: CancellationToken,
    timeout: Duration,
) {
    let every = timeout.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let end = loop {
        let m = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = send_within(&mut ws, text(json!({"id": "1", "type": "complete"})), timeout).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return;
            }
            _ = keepalive.tick() => {
                let silent = heard.elapsed();
                if silent >= 2 * every {
                    break StationError::Timeout(silent);
                }
                // A send to a dead peer may block on a full buffer.
                if let Err(e) = send_within(&mut ws, Message::Ping(Vec::new().into()), timeout).await {
                    break e;
                }
                continue;
            }
            m = ws.next() => m,
        };
        heard = tokio::time::Instant::now();
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                break StationError::Unreachable(format!(
                    "subscription closed by the station{}",
                    f.map(|f| format!(": {} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default()
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break StationError::Unreachable(format!("subscription: {e}")),
            None => break StationError::Unreachable("subscription connection lost".into()),
        };
        let v: Value = match serde_json::from_str(t.as_str()) {
            Ok(v) => v,
            Err(e) => break StationError::Malformed(format!("subscription message: {e}")),
        };
        match v["type"].as_str() {
            Some("next") => match readings(&v["payload"]) {
                Ok(r) => {
                    if tx.send(SubscriptionEvent::Readings(r)).await.is_err() {
                        return;
                    }
                }
                Err(e) => break e,
            },
            Some("ping") => {
                if let Err(e) = send_within(&mut ws, text(json!({"type": "pong"})), timeout).await {
                    break e;
                }
            }
            Some("error") => {
                break StationError::Refused {
                    code: "subscription".into(),
                    message: v["payload"].to_string().chars().take(300).collect(),
                }
            }
            Some("complete") => break StationError::Unreachable("subscription completed".into()),
            _ => {}
        }
    };
    tracing::info!(error = %end, "tag subscription ended");
    let _ = tx.send(SubscriptionEvent::Closed(end)).await;
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    /// A station that completes the WebSocket handshake and then stops
    /// reading its socket (hung process, full buffers): the subscription is
    /// declared dead after two keep-alive periods, with a timeout, so the
    /// group polls instead.
    #[tokio::test]
    async fn a_station_that_stops_reading_is_declared_dead_after_two_keep_alive_periods() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            // Holds the connection open and never reads it again.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(ws);
        });
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/graphql"))
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let timeout = Duration::from_secs(1);
        let started = std::time::Instant::now();
        tokio::spawn(read_loop(ws, tx, CancellationToken::new(), timeout));
        let ev = tokio::time::timeout(Duration::from_secs(6), rx.recv())
            .await
            .expect("declared dead in time")
            .expect("an event");
        let took = started.elapsed();
        match ev {
            SubscriptionEvent::Closed(StationError::Timeout(_)) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        // Two keep-alive periods of 1 s, checked on the period's ticks.
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        server.abort();
    }
}
