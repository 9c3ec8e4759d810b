//! The `generic` dialect (contract §5) over reqwest + rustls.
//!
//! Auth modes: `session` (POST /auth/login, then `Authorization: Bearer`),
//! `cookie` (the login's `session` cookie, kept by reqwest's cookie store),
//! `basic` (on every request) and `none`. A 401 on a request means the
//! session is gone: the client logs in once more and retries the request
//! once, never looping; concurrent requests that hit the same expired
//! session share one login. A refused login (401/403 from the login, or a
//! 401 with basic auth) closes the gate for 5 s, growing to 60 s: calls in
//! between fail at once with [`StationError::Auth`] and send nothing.
//!
//! 429/503 with `Retry-After` pause every request to the station (through
//! the shared [`Limiter`]); the request is retried once when the pause is
//! no longer than the request timeout, otherwise the caller gets
//! [`StationError::Busy`].
//!
//! The password never appears in a log line or an error: it is only ever
//! put in a request, and every text that comes from the station is
//! scrubbed of it before it is used in an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};
use tokio::sync::Mutex;

mod auth;

use super::browse::TagCollector;
use super::gate::LoginGate;
use super::http::{self, retry_after};
use super::limiter::Limiter;
use super::{parse, ConnectError, Station, StationError};
use crate::config::{resolve_secret, AuthMode, Secret, WinccSettings};
use crate::model::{Alarm, Reading, TagInfo, TagType};
use auth::{Session, Ticket};

/// Page size for `GET /tags`.
pub const TAG_PAGE: usize = 1000;

pub use super::gate::{LOGIN_BACKOFF_MAX, LOGIN_BACKOFF_MIN};

/// A client for the `generic` REST dialect. Cheap to share (`Arc`).
pub struct GenericClient {
    http: reqwest::Client,
    base: Url,
    auth: AuthMode,
    username: String,
    password: Option<Secret>,
    /// `Basic base64(user:password)`, kept to scrub echoes of it too.
    basic: Option<Secret>,
    timeout: Duration,
    limiter: Arc<Limiter>,
    session: Mutex<Session>,
    gate: LoginGate,
    /// Session tokens and cookies the station issued (scrubbed like the password).
    issued: http::Issued,
    /// `wincc.max_tags`: the most tags a browse keeps.
    max_tags: usize,
    /// The newest session generation a request succeeded with: a 401 on a
    /// newer (unproven) session means the station rejects its sessions.
    proven: std::sync::atomic::AtomicU64,
}

/// A reply that passed the status checks.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl GenericClient {
    /// Builds the client with its own limiter from `settings.rate_limit`.
    pub fn new(settings: &WinccSettings) -> Result<Self, ConnectError> {
        let limiter = Arc::new(Limiter::new(&settings.rate_limit));
        Self::with_limiter(settings, limiter)
    }

    /// Builds the client around an existing limiter (shared with other
    /// clients of the same station).
    pub fn with_limiter(
        settings: &WinccSettings,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ConnectError> {
        let mut base = http::base_url(&settings.base_url, "")?;
        base.set_query(None);
        let password = if settings.auth == AuthMode::None {
            None
        } else {
            resolve_secret(
                "wincc.password",
                &settings.password_env,
                &settings.password_file,
            )
            .map_err(ConnectError::Secret)?
        };
        let basic = (settings.auth == AuthMode::Basic).then(|| {
            let pw = password.as_ref().map(Secret::expose).unwrap_or_default();
            let raw = format!("{}:{}", settings.username, pw);
            Secret::new(base64::engine::general_purpose::STANDARD.encode(raw))
        });
        Ok(GenericClient {
            http: http::build_client(settings)?,
            base,
            auth: settings.auth,
            username: settings.username.clone(),
            password,
            basic,
            timeout: Duration::from_millis(settings.timeout_ms.max(1)),
            limiter,
            session: Mutex::new(Session::default()),
            gate: LoginGate::default(),
            issued: http::Issued::default(),
            max_tags: settings.max_tags,
            proven: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The limiter every request of this client goes through.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// `base_url` + the given path segments, each percent-encoded (all but
    /// `A-Z a-z 0-9 - . _ ~`), so a `/`, `%`, `#` or `?` in a tag name stays
    /// inside its segment.
    fn url(&self, segments: &[&str]) -> Url {
        http::with_segments(&self.base, segments)
    }

    /// The URL of one tag's value. `.` and `..` cannot be addressed: URL
    /// rules resolve them away, so the request would reach another resource.
    fn tag_url(&self, name: &str) -> Result<Url, StationError> {
        if name.is_empty() || name == "." || name == ".." {
            return Err(StationError::Refused {
                code: "name".into(),
                message: format!("the tag name {name:?} cannot be addressed in a URL"),
            });
        }
        Ok(self.url(&["tags", name, "value"]))
    }

    /// Removes the password, the Basic credential and every session token
    /// or cookie the station issued from station text.
    fn scrub(&self, s: String) -> String {
        self.issued
            .scrub(&[self.password.as_ref(), self.basic.as_ref()], s)
    }

    fn scrub_err(&self, e: StationError) -> StationError {
        self.issued
            .scrub_err(&[self.password.as_ref(), self.basic.as_ref()], e)
    }

    /// One HTTP exchange under a limiter permit: status, headers, body.
    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&Bytes>,
        ticket: Option<&Ticket>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), StationError> {
        let mut rb = self.http.request(method, url);
        if let Some(b) = &self.basic {
            rb = rb.header(reqwest::header::AUTHORIZATION, http::basic_header(b));
        }
        if let Some(t) = ticket.and_then(|t| t.bearer.as_deref()) {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.clone());
        }
        http::exchange(&self.limiter, rb, endpoint, self.timeout)
            .await
            .map_err(|e| self.scrub_err(e))
    }

    /// A request with auth: re-login once on 401, retry once after a short
    /// `Retry-After`. `client_errors` returns 4xx replies (other than 401
    /// and 429) to the caller instead of failing.
    async fn call(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&Bytes>,
        client_errors: bool,
    ) -> Result<Reply, StationError> {
        let result = self
            .call_inner(endpoint, method, url, body, client_errors)
            .await;
        result.map_err(StationError::counted)
    }

    async fn call_inner(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&Bytes>,
        client_errors: bool,
    ) -> Result<Reply, StationError> {
        let mut ticket = self.ticket(None).await?;
        let mut relogged = false;
        let mut waited = false;
        loop {
            let (status, headers, bytes) = self
                .send(endpoint, method.clone(), url.clone(), body, Some(&ticket))
                .await?;
            if status == StatusCode::UNAUTHORIZED {
                // A session that never worked: the station takes the login
                // but not the session. One that worked has expired.
                let unproven =
                    ticket.generation > self.proven.load(std::sync::atomic::Ordering::Relaxed);
                match self.auth {
                    AuthMode::Session | AuthMode::Cookie if !relogged && !unproven => {
                        tracing::info!(endpoint, "station session expired (401); logging in again");
                        relogged = true;
                        ticket = self.ticket(Some(ticket.generation)).await?;
                        continue;
                    }
                    AuthMode::Session | AuthMode::Cookie => {
                        // The station takes the login but not the session:
                        // end the session it opened and log in again only
                        // after the login pause (whoever asks).
                        let e = self.gate.session_rejected(
                            &self.username,
                            format!("the station rejected a freshly opened session on {endpoint} (HTTP 401)"),
                        );
                        self.logout().await;
                        return Err(e);
                    }
                    AuthMode::Basic => {
                        return Err(self.refused(format!(
                            "basic auth as {:?} refused (HTTP 401)",
                            self.username
                        )))
                    }
                    AuthMode::None => {
                        return Err(StationError::Auth(
                            "the station requires authentication (HTTP 401); set wincc.auth".into(),
                        ))
                    }
                }
            }
            if http::is_busy(status) {
                // Waits out a short Retry-After once, else fails as Busy.
                http::busy(
                    &self.limiter,
                    endpoint,
                    status,
                    &headers,
                    self.timeout,
                    &mut waited,
                )?;
                continue;
            }
            if status.is_success() || (client_errors && status.is_client_error()) {
                if matches!(self.auth, AuthMode::Session | AuthMode::Cookie) {
                    self.proven
                        .fetch_max(ticket.generation, std::sync::atomic::Ordering::Relaxed);
                    self.gate.session_works();
                }
                return Ok(Reply {
                    status,
                    body: bytes,
                });
            }
            return Err(self.scrub_err(http_error(status, &bytes)));
        }
    }
}

/// The body of `POST /tags/values`, serialised without copying the names.
#[derive(serde::Serialize)]
struct ReadRequest<'a> {
    tags: &'a [Arc<str>],
}

/// A JSON request body, serialised once (and shared by a retry).
fn to_body(v: &impl serde::Serialize) -> Bytes {
    // Serialising strings, numbers and maps of them cannot fail.
    Bytes::from(serde_json::to_vec(v).expect("JSON request bodies always serialise"))
}

fn http_error(status: StatusCode, bytes: &[u8]) -> StationError {
    let message = match parse::error_body(bytes) {
        Some((c, m)) if !c.is_empty() => format!("{c}: {m}"),
        Some((_, m)) => m,
        None => status.canonical_reason().unwrap_or("error").to_string(),
    };
    StationError::Http {
        status: status.as_u16(),
        message: message.chars().take(500).collect(),
    }
}

/// For the login exchange: a busy or error status as an error.
fn busy_or_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    bytes: &[u8],
    limiter: &Limiter,
) -> Option<StationError> {
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let ra = retry_after(headers);
        if let Some(d) = ra {
            limiter.pause_for(d);
        }
        return Some(StationError::Busy {
            status: status.as_u16(),
            retry_after: ra,
        });
    }
    (!status.is_success()).then(|| http_error(status, bytes))
}

#[async_trait]
impl Station for GenericClient {
    async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError> {
        // Bounded: at most max_tags tags, and a station that never stops
        // paging is malformed.
        let mut all = TagCollector::new(self.max_tags);
        let mut offset = 0usize;
        let mut skipped = 0usize;
        loop {
            let mut url = self.url(&["tags"]);
            url.query_pairs_mut()
                .append_pair("offset", &offset.to_string())
                .append_pair("limit", &TAG_PAGE.to_string());
            let reply = self
                .call("list_tags", Method::GET, url, None, false)
                .await?;
            let page = parse::tag_page(&reply.body).map_err(|e| self.scrub_err(e))?;
            skipped += page.skipped.len();
            static WARN: super::RepeatWarn = super::RepeatWarn::new();
            for name in page.skipped.iter() {
                let name = self.scrub(name.clone());
                if let Some(repeats) = WARN.check(&name) {
                    tracing::warn!(tag = %name, repeats_since_last_logged = repeats, "skipping a tag with an unknown type or shape");
                }
            }
            offset += page.rows;
            let more = all.page(page.tags)?;
            let done = match page.total {
                Some(total) => offset >= total || page.rows == 0,
                None => page.rows < TAG_PAGE,
            };
            if done || !more {
                if skipped > 0 {
                    tracing::warn!(skipped, "tags skipped while browsing the station");
                }
                return Ok(all.finish());
            }
        }
    }

    async fn read_values(&self, names: &[Arc<str>]) -> Result<Vec<Reading>, StationError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let body = to_body(&ReadRequest { tags: names });
        let reply = self
            .call(
                "read_values",
                Method::POST,
                self.url(&["tags", "values"]),
                Some(&body),
                false,
            )
            .await?;
        let received = chrono::Utc::now();
        let mut readings =
            parse::values(&reply.body, names, received).map_err(|e| self.scrub_err(e.counted()))?;
        parse::scrub_tag_errors(&mut readings, |m| self.scrub(m));
        Ok(readings)
    }

    async fn write_value(
        &self,
        name: &str,
        _ty: TagType,
        value: &Value,
    ) -> Result<(), StationError> {
        let body = to_body(&json!({ "value": value }));
        let url = self.tag_url(name)?;
        let reply = self
            .call("write_value", Method::PUT, url, Some(&body), true)
            .await?;
        let result = if reply.status.is_success() {
            parse::write_result(&reply.body)
        } else {
            let (code, message) = parse::error_body(&reply.body)
                .unwrap_or_else(|| (reply.status.as_u16().to_string(), String::new()));
            Err(StationError::Refused {
                code: if code.is_empty() {
                    reply.status.as_u16().to_string()
                } else {
                    code
                },
                message: if message.is_empty() {
                    reply
                        .status
                        .canonical_reason()
                        .unwrap_or("refused")
                        .to_string()
                } else {
                    message
                },
            })
        };
        result.map_err(|e| self.scrub_err(e))
    }

    async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError> {
        let reply = self
            .call(
                "alarms",
                Method::GET,
                self.url(&["alarms", "current"]),
                None,
                false,
            )
            .await?;
        let (alarms, bad) = parse::alarms(&reply.body).map_err(|e| self.scrub_err(e))?;
        static WARN: super::RepeatWarn = super::RepeatWarn::new();
        for problem in &bad {
            let problem = self.scrub(problem.clone());
            if let Some(repeats) = WARN.check(&problem) {
                tracing::warn!(count = bad.len(), repeats_since_last_logged = repeats, problem = %problem, "skipping alarms that do not parse (logged again at most every 10 minutes)");
            }
        }
        Ok(alarms)
    }

    async fn logout(&self) {
        if !matches!(self.auth, AuthMode::Session | AuthMode::Cookie) {
            return;
        }
        let mut s = self.session.lock().await;
        if s.token.is_none() {
            return;
        }
        let ticket = Ticket {
            bearer: s.token.clone().filter(|t| !t.is_empty()),
            generation: s.generation,
        };
        let r = self
            .send(
                "logout",
                Method::POST,
                self.url(&["auth", "logout"]),
                None,
                Some(&ticket),
            )
            .await;
        match r {
            Ok((status, _, _)) if status.is_success() => {
                tracing::info!("logged out of the station")
            }
            Ok((status, _, _)) => {
                tracing::warn!(status = status.as_u16(), "station refused the logout")
            }
            Err(e) => tracing::warn!(error = %e, "logout failed"),
        }
        s.token = None;
        s.expires_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base: &str) -> WinccSettings {
        WinccSettings {
            base_url: base.into(),
            ..WinccSettings::default()
        }
    }

    #[test]
    fn urls_keep_odd_tag_names_inside_one_segment() {
        let c = GenericClient::new(&settings("http://127.0.0.1:9/api/")).unwrap();
        assert_eq!(
            c.url(&["tags", "values"]).as_str(),
            "http://127.0.0.1:9/api/tags/values"
        );
        let u = c.tag_url("Line 1/Mixer#2?%+Ü").unwrap();
        assert_eq!(
            u.path(),
            "/api/tags/Line%201%2FMixer%232%3F%25%2B%C3%9C/value"
        );
        assert_eq!(
            c.tag_url("A.b_c-d~").unwrap().path(),
            "/api/tags/A.b_c-d~/value"
        );
        assert!(matches!(c.tag_url(".."), Err(StationError::Refused { .. })));
        let root = GenericClient::new(&settings("http://127.0.0.1:9")).unwrap();
        assert_eq!(root.url(&["tags"]).as_str(), "http://127.0.0.1:9/tags");
    }

    #[test]
    fn a_bad_ca_file_is_a_located_error() {
        let dir = std::env::temp_dir().join(format!("wincc-gw-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        for (file, why) in [
            (dir.join("missing.pem"), "cannot read"),
            (garbage, "no certificate"),
        ] {
            let mut s = settings("https://127.0.0.1:9/");
            s.ca_file = file.to_string_lossy().into_owned();
            let e = GenericClient::new(&s).err().unwrap().to_string();
            assert!(e.starts_with("wincc.ca_file") && e.contains(why), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn malformed_pins_are_refused_rather_than_ignored() {
        let mut s = settings("https://127.0.0.1:9/");
        s.pinned_cert_sha256 = "ab".repeat(31);
        let e = GenericClient::new(&s).err().unwrap();
        assert!(e.to_string().starts_with("wincc.pinned_cert_sha256"), "{e}");
    }
}
