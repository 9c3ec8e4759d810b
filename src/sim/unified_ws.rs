//! The `unified` dialect's WebSocket side: `GET /graphql` upgraded with
//! subprotocol `graphql-transport-ws` (WINCC-DIALECTS.md §2.1, §7.4).
//!
//! `connection_init` must carry `{"Authorization":"Bearer <token>"}` in its
//! payload when the station has auth (otherwise the socket is closed with
//! 4403); then `connection_ack`. `subscribe` takes one `tagValues(names:
//! $names)` subscription (variables only, as over HTTP) and answers one
//! `next` per tag with `notificationReason: "Added"` (unknown names too,
//! with error code "2"), then `"Modified"` whenever a tag's value, quality
//! or timestamp changes (checked every 100 ms), `"Removed"` when it is
//! removed. A user without the Openness runtime right gets an `error`
//! (`FORBIDDEN`, "Access denied") for a subscription. `complete` ends a
//! subscription; `ping` gets `pong`. Statistics
//! count `"GET /graphql websocket"` and `"WS subscribe tagValues"`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::auth;
use super::unified::tag_row;
use super::unified_gql::{self as gql, Kind};
use super::SimState;
use crate::config::AuthMode;

/// The one subprotocol spoken.
pub const PROTOCOL: &str = "graphql-transport-ws";

/// `GET /graphql`: the WebSocket upgrade.
pub async fn upgrade(State(st): State<Arc<SimState>>, ws: WebSocketUpgrade) -> Response {
    drop(st.stats.begin("GET /graphql websocket"));
    ws.protocols([PROTOCOL])
        .on_upgrade(move |socket| serve(socket, st))
}

/// The last state sent for one tag: `None` while unknown.
type Seen = Option<(i64, Value, &'static str)>;

struct Sub {
    names: Vec<(String, Seen)>,
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_string().into(),
        })))
        .await;
}

fn snapshot(st: &SimState, name: &str) -> (Seen, Value) {
    let store = st.store();
    match store.get(name) {
        Some(tag) => (
            Some((
                tag.timestamp().timestamp_millis(),
                tag.value.to_json(),
                tag.quality.as_str(),
            )),
            tag_row(tag),
        ),
        None => (
            None,
            json!({"name": name, "value": null,
                "error": {"code": "2", "description": "Cannot resolve provided name"}}),
        ),
    }
}

fn next(id: &str, mut row: Value, reason: &str) -> Message {
    row["notificationReason"] = Value::String(reason.into());
    text(json!({"id": id, "type": "next", "payload": {"data": {"tagValues": row}}}))
}

async fn serve(mut socket: WebSocket, st: Arc<SimState>) {
    // connection_init first, within 10 s.
    let init = tokio::time::timeout(Duration::from_secs(10), socket.recv()).await;
    let Ok(Some(Ok(Message::Text(t)))) = init else {
        return close(socket, 4408, "Connection initialisation timeout").await;
    };
    let msg: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
    if msg["type"] != "connection_init" {
        return close(socket, 4400, "expected connection_init").await;
    }
    let mut forbidden = false;
    if st.opts.auth != AuthMode::None {
        let token = msg["payload"]
            .as_object()
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            })
            .and_then(|(_, v)| v.as_str())
            .and_then(|h| auth::strip_scheme(h, "bearer"));
        let user = token.and_then(|t| st.sessions().check(t).ok());
        let Some(user) = user else {
            return close(socket, 4403, "Forbidden").await;
        };
        forbidden = super::unified::lacks_rights(&st, &user);
    }
    if socket
        .send(text(json!({"type": "connection_ack"})))
        .await
        .is_err()
    {
        return;
    }
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let mut out = Vec::new();
        tokio::select! {
            m = socket.recv() => {
                let t = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let msg: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                let id = msg["id"].as_str().unwrap_or("").to_string();
                match msg["type"].as_str() {
                    Some("ping") => out.push(text(json!({"type": "pong"}))),
                    Some("pong") => {}
                    Some("complete") => {
                        subs.remove(&id);
                    }
                    Some("subscribe") if !id.is_empty() && forbidden => {
                        drop(st.stats.begin("WS subscribe tagValues"));
                        out.push(text(json!({"id": id, "type": "error", "payload": [
                            {"message": "Access denied", "path": ["tagValues"],
                             "extensions": {"code": "FORBIDDEN"}}]})));
                    }
                    Some("subscribe") if !id.is_empty() => {
                        drop(st.stats.begin("WS subscribe tagValues"));
                        match subscribe(&st, &msg["payload"]) {
                            Ok(names) => {
                                let mut sub = Sub { names: Vec::new() };
                                for n in names {
                                    let (seen, row) = snapshot(&st, &n);
                                    out.push(next(&id, row, "Added"));
                                    sub.names.push((n, seen));
                                }
                                subs.insert(id, sub);
                            }
                            Err(e) => out.push(text(json!({"id": id, "type": "error",
                                "payload": [{"message": e}]}))),
                        }
                    }
                    _ => return close(socket, 4400, "invalid message type").await,
                }
            }
            _ = tick.tick() => {
                for (id, sub) in subs.iter_mut() {
                    for (name, seen) in sub.names.iter_mut() {
                        let (now, row) = snapshot(&st, name);
                        if now != *seen {
                            let reason = if now.is_none() { "Removed" } else { "Modified" };
                            out.push(next(id, row, reason));
                            *seen = now;
                        }
                    }
                }
            }
        }
        for m in out {
            if socket.send(m).await.is_err() {
                return;
            }
        }
    }
}

/// The tag names of a `tagValues` subscription payload.
fn subscribe(st: &SimState, payload: &Value) -> Result<Vec<String>, String> {
    let query = payload["query"]
        .as_str()
        .ok_or("payload.query is missing")?;
    let op = gql::parse(query)?;
    if op.kind != Kind::Subscription || op.field != "tagValues" {
        return Err(format!(
            "only the tagValues subscription is simulated, not {:?} {}",
            op.kind, op.field
        ));
    }
    let names = op
        .arg("names", &payload["variables"])
        .as_array()
        .ok_or("tagValues needs the variable names: [String!]!")?
        .iter()
        .map(|n| {
            n.as_str()
                .map(str::to_string)
                .ok_or("names must be strings")
        })
        .collect::<Result<Vec<_>, _>>()?;
    st.stats.tags_read(names.len());
    Ok(names)
}
