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
//! `ping` message, which real stations refuse): one every `timeout_ms`
//! (1 s..10 s); with no frame at all (pongs included) for that long plus
//! `timeout_ms`, the subscription ends with a timeout.

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
        ws.send(text(sub))
            .await
            .map_err(|e| StationError::Unreachable(format!("subscription: {e}")))?;
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
        ws.send(text(json!({"type": "connection_init", "payload": payload})))
            .await
            .map_err(|e| StationError::Unreachable(format!("WebSocket: {e}")))?;
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
                let _ = ws.send(text(json!({"id": "1", "type": "complete"}))).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return;
            }
            _ = keepalive.tick() => {
                let silent = heard.elapsed();
                if silent >= every + timeout {
                    break StationError::Timeout(silent);
                }
                // A send to a dead peer may block on a full buffer.
                match tokio::time::timeout(timeout, ws.send(Message::Ping(Vec::new().into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break StationError::Unreachable(format!("subscription: {e}")),
                    Err(_) => break StationError::Timeout(timeout),
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
                let _ = ws.send(text(json!({"type": "pong"}))).await;
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
