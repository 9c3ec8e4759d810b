//! GraphQL subscriptions of the `unified` dialect over WebSocket
//! (`graphql-transport-ws`, WINCC-DIALECTS.md §2.1): `connection_init`
//! with `{"Authorization":"Bearer <token>"}`, `connection_ack`, one
//! `tagValues(names: $names)` subscription, then `next` notifications
//! (`Added` first for every tag, then `Modified`).
//!
//! The handshake goes through the station's rate limiter like any request;
//! a rejected `connection_init` (close code 4401/4403) is answered with one
//! fresh login and one more attempt, never more. `wss://` trusts exactly
//! what HTTPS trusts (`pinned_cert_sha256`, `ca_file`,
//! `tls_skip_hostname_check`, `accept_invalid_certs`; see `wincc::tls`),
//! checked before the Bearer token is sent. The handshake carries
//! `apollo-require-preflight: true` like every HTTP request, and goes to
//! the endpoint a permanent redirect moved it to, if one did.
//!
//! `next` frames carry one tag each (the SDL's `TagValueNotification`); a
//! list is accepted too. `notificationReason` `Removed` / `Removed (Name
//! changed)` makes the tag bad with that reason. A subscription `error`
//! with `FORBIDDEN` names the missing runtime right.
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
        self.rights.check()?;
        let mut ticket = self.t.ticket(self, None).await?;
        let mut ws = match self.handshake(ticket.bearer.as_deref()).await? {
            Handshake::Ok(ws) => ws,
            Handshake::Rejected(why) if self.t.auth() != crate::config::AuthMode::None => {
                tracing::info!(reason = %why, "subscription refused the session; logging in again");
                ticket = self.t.ticket(self, Some(ticket.generation)).await?;
                match self.handshake(ticket.bearer.as_deref()).await? {
                    Handshake::Ok(ws) => ws,
                    Handshake::Rejected(why) => return Err(StationError::Auth(why)),
                }
            }
            Handshake::Rejected(why) => return Err(StationError::Auth(why)),
        };
        let sub = json!({"id": "1", "type": "subscribe",
            "payload": {"query": SUBSCRIBE, "variables": {"names": names}}});
        send_within(&mut ws, text(sub), self.t.timeout()).await?;
        let (tx, rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        tokio::spawn(read_loop(*ws, tx, cancel.clone(), self.t.timeout()));
        Ok(TagSubscription::new(rx, cancel))
    }

    /// Connects and sends `connection_init`; waits for `connection_ack`.
    async fn handshake(&self, bearer: Option<&str>) -> Result<Handshake, StationError> {
        let mut url = self.t.endpoint();
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
        req.headers_mut()
            .insert("apollo-require-preflight", HeaderValue::from_static("true"));
        let connector = self
            .ws_tls
            .as_ref()
            .map(|c| tokio_tungstenite::Connector::Rustls(Arc::clone(c)));
        let timeout = self.t.timeout();
        let mut ws = {
            let _permit = self.t.limiter().acquire().await;
            metrics::counter!("wincc_gateway_station_requests_total", "endpoint" => "subscribe")
                .increment(1);
            let connect =
                tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector);
            match tokio::time::timeout(timeout, connect).await {
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
/// One row per `next` frame (the SDL's type), a list accepted too; a row
/// whose `notificationReason` starts with `Removed` is that tag bad with
/// the station's reason.
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
    let now = chrono::Utc::now();
    let mut readings = up::tag_values(&Value::Array(rows.clone()), &names, now)?;
    for (r, row) in readings.iter_mut().zip(&rows) {
        let reason = row["notificationReason"].as_str().unwrap_or("").trim();
        if reason.to_ascii_lowercase().starts_with("removed") {
            r.value = Value::Null;
            r.quality = crate::model::Quality::Bad;
            r.quality_code = None;
            r.error = Some(crate::model::BadReason::TagError {
                code: "removed".into(),
                message: format!("{reason}: the tag does not exist at the station any more"),
            });
        }
    }
    Ok(readings)
}

/// A subscription's `error` frame as an error: `FORBIDDEN` names the
/// missing runtime right, `UNAUTHENTICATED` is an auth failure.
fn subscription_error(payload: &Value) -> StationError {
    let errors = match payload {
        Value::Array(_) => payload.clone(),
        other => Value::Array(vec![other.clone()]),
    };
    match up::graphql_errors(&json!({ "errors": errors })) {
        Some(e) if e.kind == up::GqlErrorKind::Forbidden => StationError::Auth(format!(
            "the subscription was refused (FORBIDDEN: {}): the user lacks the WinCC Unified runtime right \"{}\"",
            e.message,
            up::OPENNESS_RIGHT
        )),
        Some(e) if e.kind == up::GqlErrorKind::Unauthenticated => {
            StationError::Auth(format!("the subscription was refused: {}", e.message))
        }
        Some(e) => StationError::Refused {
            code: e.code,
            message: format!("subscription: {}", e.message),
        },
        None => StationError::Refused {
            code: "subscription".into(),
            message: payload.to_string().chars().take(300).collect(),
        },
    }
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
            Some("error") => break subscription_error(&v["payload"]),
            Some("complete") => break StationError::Unreachable("subscription completed".into()),
            _ => {}
        }
    };
    tracing::info!(error = %end, "tag subscription ended");
    let _ = tx.send(SubscriptionEvent::Closed(end)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BadReason, Quality};

    #[test]
    fn one_tag_per_frame_a_list_too_and_removed_reasons() {
        let one = json!({"data": {"tagValues": {"name": "A", "value": {"value": 3,
            "timestamp": "2026-01-01T00:00:00.000Z", "quality": {"quality": "GOOD_CASCADE"}},
            "error": {"code": "0"}, "notificationReason": "Modified"}}});
        let r = readings(&one).unwrap();
        assert_eq!(
            (r.len(), &*r[0].name, r[0].value.clone()),
            (1, "A", json!(3))
        );
        let list = json!({"data": {"tagValues": [
            {"name": "A", "value": {"value": 1}, "notificationReason": "Added"},
            {"name": "B", "value": {"value": 2}, "notificationReason": "Removed (Name changed)"},
            {"name": "C", "value": null, "error": {"code": "2", "description": "Cannot resolve provided name"}, "notificationReason": "Removed"}]}});
        let r = readings(&list).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].quality, Quality::Good);
        for (r, reason) in r[1..].iter().zip(["Removed (Name changed)", "Removed"]) {
            assert_eq!((r.quality, &r.value), (Quality::Bad, &Value::Null));
            assert!(
                matches!(&r.error, Some(BadReason::TagError { code, message }) if code == "removed" && message.starts_with(reason)),
                "{r:?}"
            );
        }
        assert!(readings(&json!({"data": null})).is_err());
    }

    #[test]
    fn subscription_errors_are_classified_by_code() {
        let e = subscription_error(
            &json!([{"message": "Access denied", "extensions": {"code": "FORBIDDEN"}}]),
        );
        assert!(
            matches!(&e, StationError::Auth(m) if m.contains(up::OPENNESS_RIGHT)),
            "{e:?}"
        );
        let e =
            subscription_error(&json!([{"message": "bad filter", "extensions": {"code": "301"}}]));
        assert!(
            matches!(&e, StationError::Refused { code, .. } if code == "301"),
            "{e:?}"
        );
    }
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
