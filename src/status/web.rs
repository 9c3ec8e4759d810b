//! The status page's HTTP side: `GET /` (the page), `/status.js` and
//! `/status.css` (compiled into the binary), and `/events` (Server-Sent
//! Events: the live sections every second, the browser's tags at most
//! twice a second).
//!
//! Security: every answer carries `Content-Security-Policy: default-src
//! 'self'` (nothing is loaded from anywhere else, and no inline script
//! runs), `X-Frame-Options: DENY` and `Cache-Control: no-store`. Bound to
//! a loopback address the page needs no login, but a request must name a
//! loopback host (`Host: localhost:9100`, `127.0.0.1:9100`, `[::1]:9100`),
//! so that a web site cannot read it by DNS rebinding. Bound elsewhere,
//! every request needs HTTP Basic credentials of a user of `[[http.users]]`
//! (compared in constant time; failures counted as
//! `wincc_gateway_http_logins_refused_total`); with no user configured the
//! page is refused (403) with what to configure. At most
//! [`MAX_STREAMS`] event streams are open at once; each holds one bounded
//! queue of [`STREAM_QUEUE`] messages and the newest value of each tag is
//! all it ever sends (the hub conflates).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, Semaphore};

use super::page::{render_page, render_sections};
use super::{HubHandle, TagView};
use crate::config::{resolve_secret, HttpSettings};
use crate::glob::TagPatterns;
use crate::model::{format_ts, BadReason};

/// Event streams open at once (all browsers together).
pub(crate) const MAX_STREAMS: usize = 32;
/// Messages one stream may have queued for a slow browser.
pub(crate) const STREAM_QUEUE: usize = 4;
/// How often a browser's tags are sent (at most).
const TAG_EVERY: Duration = Duration::from_millis(500);

const SCRIPT: &str = include_str!("assets/status.js");
const STYLE: &str = include_str!("assets/status.css");
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Who may see the page.
#[derive(Clone)]
pub(crate) enum Access {
    /// Bound to loopback: no login, loopback `Host` only.
    Loopback,
    /// Bound elsewhere: HTTP Basic against these users (SHA-256 of
    /// `user:password`); none configured: refused.
    Login(Arc<Vec<[u8; 32]>>),
}

impl Access {
    /// From `[http]`; a password that cannot be read is an error naming
    /// the key (check-config reports the same).
    pub(crate) fn from_settings(h: &HttpSettings) -> anyhow::Result<Access> {
        if h.is_loopback() {
            return Ok(Access::Loopback);
        }
        let mut users = Vec::new();
        for (i, u) in h.users.iter().enumerate() {
            let key = format!("http.users[{i}].password");
            let secret = resolve_secret(&key, &u.password_env, &u.password_file)
                .map_err(|p| anyhow::anyhow!("{p}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!("{key}_env: a user needs password_env or password_file")
                })?;
            users.push(credential_digest(&u.username, secret.expose()));
        }
        if users.is_empty() {
            tracing::warn!(
                listen = %h.listen,
                "http.listen is not a loopback address and [[http.users]] is empty: the status page is refused (403); /healthz, /livez, /readyz and /metrics answer as before"
            );
        }
        Ok(Access::Login(Arc::new(users)))
    }
}

fn credential_digest(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

#[derive(Clone)]
pub(crate) struct PageState {
    pub hub: HubHandle,
    pub access: Access,
    pub streams: Arc<Semaphore>,
}

/// The page's routes, behind the access check.
pub(crate) fn routes(state: PageState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/status.js", get(script))
        .route("/status.css", get(style))
        .route("/events", get(events))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn refuse(code: StatusCode, text: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

async fn guard(State(st): State<PageState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    match &st.access {
        Access::Loopback => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !is_loopback_host(host) {
                return refuse(
                    StatusCode::MISDIRECTED_REQUEST,
                    "the status page answers only requests for a loopback host (localhost, 127.0.0.1, [::1])",
                );
            }
        }
        Access::Login(users) => {
            if users.is_empty() {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "the status page needs a login when http.listen is not a loopback address: add [[http.users]] (username, password_env or password_file)",
                );
            }
            if !authorized(headers, users) {
                metrics::counter!("wincc_gateway_http_logins_refused_total").increment(1);
                let mut r = refuse(
                    StatusCode::UNAUTHORIZED,
                    "log in with a user of [[http.users]]",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"wincc-gateway\", charset=\"UTF-8\""),
                );
                return r;
            }
        }
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn authorized(headers: &HeaderMap, users: &[[u8; 32]]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    if b64.len() > 4096 {
        return false;
    }
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(raw) else {
        return false;
    };
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    let given = credential_digest(user, password);
    // Every user is compared, in constant time, whoever matches.
    users
        .iter()
        .fold(0u8, |hit, u| hit | u.ct_eq(&given).unwrap_u8())
        == 1
}

#[derive(Deserialize)]
struct FilterQuery {
    #[serde(default)]
    filter: String,
}

/// The glob of the tag browser (`**`, every tag, when empty), or why it
/// is refused. Globs as in the configuration: `*` stays within one `/`
/// level, `**` spans levels.
fn tag_filter(f: &str) -> Result<Arc<TagPatterns>, String> {
    let f = f.trim();
    if f.len() > 200 {
        return Err("the filter is longer than 200 characters".into());
    }
    let f = if f.is_empty() { "**" } else { f };
    TagPatterns::new(&[f])
        .map(Arc::new)
        .map_err(|e| format!("filter {f:?}: {e}"))
}

async fn index(State(st): State<PageState>, Query(q): Query<FilterQuery>) -> Response {
    match st.hub.snapshot().await {
        Some(s) => Html(render_page(&s, &q.filter)).into_response(),
        None => refuse(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping"),
    }
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

fn tag_json(v: &TagView) -> serde_json::Value {
    match &v.change {
        Some(c) => serde_json::json!({
            "name": &*v.name,
            "group": &*v.group,
            "value": c.value,
            "quality": c.quality.as_str(),
            "ts": format_ts(&c.timestamp),
            "error": c.error.as_ref().map(|e| match e {
                BadReason::Communication(why) => why.clone(),
                BadReason::TagError { code, message } => format!("{code}: {message}"),
                BadReason::Removed => "removed at the station".into(),
            }),
        }),
        None => serde_json::json!({
            "name": &*v.name,
            "group": &*v.group,
            "removed": v.removed,
        }),
    }
}

async fn events(State(st): State<PageState>, Query(q): Query<FilterQuery>) -> Response {
    let filter = match tag_filter(&q.filter) {
        Ok(f) => f,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let Ok(permit) = st.streams.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{MAX_STREAMS} status pages are open already; close one"),
        );
    };
    let (tx, rx) = mpsc::channel::<Event>(STREAM_QUEUE);
    let hub = st.hub.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut since = 0u64;
        let mut tick = tokio::time::interval(TAG_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            // The live sections every second, the tags every tick.
            if n % 2 == 0 {
                let Some(s) = hub.snapshot().await else {
                    return;
                };
                let e = Event::default()
                    .event("status")
                    .json_data(serde_json::json!({
                        "html": render_sections(&s),
                        "station": s.station.connected,
                    }));
                if let Ok(e) = e {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
            n += 1;
            let Some(a) = hub.tags(filter.clone(), since).await else {
                return;
            };
            if a.tags.is_empty() && since != 0 {
                since = a.seq;
                continue;
            }
            let first = since == 0;
            since = a.seq;
            let body = serde_json::json!({
                "reset": first,
                "left_out": a.left_out,
                "tags": a.tags.iter().map(tag_json).collect::<Vec<_>>(),
            });
            if let Ok(e) = Event::default().event("tags").json_data(body) {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_names_pass() {
        for ok in [
            "localhost",
            "localhost:9100",
            "127.0.0.1:9100",
            "[::1]:9100",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:9100",
            "",
            "10.0.0.1:9100",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn basic_credentials_must_match_a_user_exactly() {
        let users = vec![
            credential_digest("op", "s3cret"),
            credential_digest("eng", "pw"),
        ];
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, &users));
        let basic = |u: &str| {
            let v = base64::engine::general_purpose::STANDARD.encode(u);
            HeaderValue::from_str(&format!("Basic {v}")).unwrap()
        };
        h.insert(header::AUTHORIZATION, basic("op:s3cret"));
        assert!(authorized(&h, &users));
        h.insert(header::AUTHORIZATION, basic("eng:pw"));
        assert!(authorized(&h, &users));
        for wrong in ["op:s3cre", "op:s3cret ", "eng:s3cret", "op", ":s3cret"] {
            h.insert(header::AUTHORIZATION, basic(wrong));
            assert!(!authorized(&h, &users), "{wrong}");
        }
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(!authorized(&h, &users));
    }

    #[test]
    fn a_bad_or_huge_filter_is_refused_with_why() {
        assert!(tag_filter("").unwrap().is_match("Line1/Mixer/Speed"));
        assert!(tag_filter("Line1/*").unwrap().is_match("Line1/Temp"));
        assert!(tag_filter("[").unwrap_err().contains("filter"));
        assert!(tag_filter(&"a".repeat(201)).unwrap_err().contains("200"));
    }
}
