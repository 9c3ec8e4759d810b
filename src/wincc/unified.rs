//! The `unified` dialect: WinCC Unified's GraphQL API (`POST {base_url}`,
//! e.g. `https://host/graphql/`), WINCC-DIALECTS.md §2 and §10.
//!
//! Transport: the configured endpoint is used verbatim (a trailing slash
//! kept); a 301/307/308 answer is followed once, as a POST, to the same
//! origin only (a permanent one is remembered, with a warning saying which
//! `base_url` to configure); every request carries `Content-Type:
//! application/json` and `apollo-require-preflight: true` (the runtime's
//! Apollo server refuses other POSTs as potential CSRF).
//!
//! Every operation is one GraphQL request with its arguments passed as
//! `variables` (never inlined into the query text). Auth: the `login`
//! mutation returns a token sent as `Authorization: Bearer` on every request;
//! `extendSession` is called once two thirds of the session lifetime (from
//! `expires`, minutes or years) have passed. GraphQL errors are classified
//! by `extensions.code` only: `UNAUTHENTICATED` (or HTTP 401/403) discards
//! the session: the client logs in once more and retries the request once,
//! never looping. `FORBIDDEN` with a live session means the user lacks the
//! runtime right "Openness Runtime - read and write access": no new login;
//! the call fails with [`StationError::Auth`] naming that right, and calls
//! are held back for 5 s growing to 60 s (like a refused login). A refused
//! login (`error.code` other than "0", e.g. "101") closes the gate for 5 s,
//! growing to 60 s; calls in between fail at once with
//! [`StationError::Auth`] and send nothing. `auth = "none"` sends no token
//! (a server without the auth plugin).
//!
//! Every request goes through the shared [`Limiter`]; 429/503 with
//! `Retry-After` pause the station like in the generic dialect. The
//! password never appears in a log line or an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::gate::LoginGate;
use super::http;
use super::limiter::Limiter;
use super::parse;
use super::unified_parse as up;
use super::{ConnectError, Station, StationError};
use crate::config::{resolve_secret, AuthMode, Secret, WinccSettings};
use crate::model::{Alarm, Reading, TagInfo, TagType};

#[path = "unified_transport.rs"]
mod transport;
#[path = "unified_ws.rs"]
mod ws;
/// Re-exported: the dialect-neutral subscription types live in `crate::wincc`.
pub use super::{SubscriptionEvent, TagSubscription};

const LOGIN: &str = "mutation Login($username: String!, $password: String!) { login(username: $username, password: $password) { token expires error { code description } } }";
const EXTEND: &str =
    "mutation ExtendSession { extendSession { token expires error { code description } } }";
const LOGOUT: &str = "mutation Logout($allSessions: Boolean) { logout(allSessions: $allSessions) }";
const TAG_VALUES: &str = "query TagValues($names: [String!]!) { tagValues(names: $names) { name value { value timestamp quality { quality subStatus limit } } error { code description } } }";
const BROWSE: &str = "query Browse($nameFilters: [String], $objectTypeFilters: [ObjectTypesEnum]) { browse(nameFilters: $nameFilters, objectTypeFilters: $objectTypeFilters) { name displayName objectType dataType } }";
const WRITE: &str = "mutation WriteTagValues($input: [TagValueInput]!) { writeTagValues(input: $input) { name error { code description } } }";
const ALARMS: &str = "query ActiveAlarms($languages: [String]) { activeAlarms(languages: $languages) { name instanceID alarmClassName priority state eventText raiseTime acknowledgmentTime clearTime modificationTime } }";

/// A client for WinCC Unified's GraphQL API. Cheap to share (`Arc`).
pub struct UnifiedClient {
    http: reqwest::Client,
    url: Url,
    auth: AuthMode,
    username: String,
    password: Option<Secret>,
    timeout: Duration,
    limiter: Arc<Limiter>,
    session: Mutex<Session>,
    gate: LoginGate,
    /// Session tokens the station issued (scrubbed like the password).
    issued: http::Issued,
    /// The newest session generation a request succeeded with: an auth
    /// failure on a newer (unproven) session means the station takes the
    /// login but rejects its sessions.
    proven: std::sync::atomic::AtomicU64,
    /// `wincc.max_tags`: the most tags a browse keeps.
    max_tags: usize,
    /// Closed while the user lacks the Openness runtime right (FORBIDDEN).
    rights: LoginGate,
    /// Where a permanent redirect (301/308) moved the endpoint, if it did.
    moved_to: std::sync::Mutex<Option<Url>>,
    /// The TLS configuration of `wss://` subscriptions: the same trust as
    /// HTTPS (pin, `ca_file`, host-name check); `None` for `ws://` or the
    /// system roots alone.
    ws_tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Default)]
struct Session {
    token: Option<String>,
    /// Bumped on every login, so an auth error only discards the session it was sent with.
    generation: u64,
    expires_at: Option<Instant>,
    refresh_at: Option<Instant>,
}

struct Ticket {
    bearer: Option<String>,
    generation: u64,
}

/// How one GraphQL exchange ended, before auth handling.
enum Outcome {
    Data(Value),
    AuthFailed(String),
    /// `FORBIDDEN`: the user lacks a runtime right (the station's words).
    Forbidden(String),
}

impl UnifiedClient {
    /// Builds the client with its own limiter from `settings.rate_limit`.
    pub fn new(settings: &WinccSettings) -> Result<Self, ConnectError> {
        let limiter = Arc::new(Limiter::new(&settings.rate_limit));
        Self::with_limiter(settings, limiter)
    }

    /// Builds the client around an existing limiter.
    pub fn with_limiter(
        settings: &WinccSettings,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ConnectError> {
        let url = http::base_url(
            &settings.base_url,
            " (the GraphQL endpoint, e.g. https://host/graphql)",
        )?;
        if matches!(settings.auth, AuthMode::Basic | AuthMode::Cookie) {
            return Err(ConnectError::Setting {
                key: "wincc.auth",
                why: format!(
                    "the unified dialect logs in with the login mutation and a Bearer token: use \"session\" (or \"none\"), not {:?}",
                    settings.auth.as_str()
                ),
            });
        }
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
        let custom_tls = !settings.ca_file.is_empty()
            || settings.accept_invalid_certs
            || !settings.pinned_cert_sha256.trim().is_empty();
        let ws_tls = if url.scheme() == "https" && custom_tls {
            Some(Arc::new(super::tls::client_config(
                settings,
                &[b"http/1.1"],
            )?))
        } else {
            None
        };
        Ok(UnifiedClient {
            ws_tls,
            rights: LoginGate::for_attempts("attempt"),
            moved_to: std::sync::Mutex::new(None),
            http: http::build_client_with(settings, reqwest::redirect::Policy::none())?,
            url,
            auth: settings.auth,
            username: settings.username.clone(),
            password,
            timeout: Duration::from_millis(settings.timeout_ms.max(1)),
            limiter,
            session: Mutex::new(Session::default()),
            gate: LoginGate::default(),
            issued: http::Issued::default(),
            proven: std::sync::atomic::AtomicU64::new(0),
            max_tags: settings.max_tags,
        })
    }

    /// The limiter every request of this client goes through.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Removes the password and every session token the station issued.
    fn scrub(&self, s: String) -> String {
        self.issued.scrub(&[self.password.as_ref()], s)
    }

    fn scrub_err(&self, e: StationError) -> StationError {
        self.issued.scrub_err(&[self.password.as_ref()], e)
    }

    /// `FORBIDDEN` with a live session: the user lacks the Openness
    /// runtime right. Holds calls back on the login backoff, never logs in
    /// again for it.
    pub(crate) fn lacks_right(&self, why: &str) -> StationError {
        self.rights.refuse(
            &self.username,
            self.scrub(format!(
                "user {:?} lacks the WinCC Unified runtime right \"{}\" (the station answered FORBIDDEN: {why}); give the user's role that right in the runtime's user management",
                self.username,
                up::OPENNESS_RIGHT
            )),
        )
    }

    /// The station refused the login: the gate closes (see `wincc::gate`).
    fn refused(&self, why: String) -> StationError {
        self.gate.refuse(&self.username, self.scrub(why))
    }

    /// One GraphQL exchange: HTTP status handling (one retry after a short
    /// `Retry-After`), then `errors[]` and `data.<root>`.
    async fn exchange(
        &self,
        endpoint: &'static str,
        root: &str,
        body: &Value,
        bearer: Option<&str>,
    ) -> Result<Outcome, StationError> {
        let mut waited = false;
        loop {
            let (status, headers, bytes) = self.post(endpoint, body, bearer).await?;
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Ok(Outcome::AuthFailed(format!("HTTP {}", status.as_u16())));
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
            let v = parse::json(&bytes);
            if !status.is_success() {
                let message = v
                    .ok()
                    .and_then(|v| up::graphql_errors(&v).map(|e| e.message))
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
                return Err(self.scrub_err(StationError::Http {
                    status: status.as_u16(),
                    message: message.chars().take(500).collect(),
                }));
            }
            if v.is_err() && endpoint != "login" && tracing::enabled!(tracing::Level::DEBUG) {
                let text: String = String::from_utf8_lossy(&bytes).chars().take(4096).collect();
                tracing::debug!(endpoint, bytes = bytes.len(), reply = %self.scrub(text), "station reply that did not parse");
            }
            let v = v.map_err(|e| self.scrub_err(e))?;
            if let Some(e) = up::graphql_errors(&v) {
                return match e.kind {
                    up::GqlErrorKind::Unauthenticated => {
                        Ok(Outcome::AuthFailed(self.scrub(e.message)))
                    }
                    up::GqlErrorKind::Forbidden => Ok(Outcome::Forbidden(self.scrub(e.message))),
                    up::GqlErrorKind::Other => Err(self.scrub_err(StationError::Refused {
                        code: e.code,
                        message: format!("GraphQL error: {}", e.message),
                    })),
                };
            }
            return up::data_root(v, root)
                .map(Outcome::Data)
                .map_err(|e| self.scrub_err(e));
        }
    }

    /// The `login` mutation: the token and its lifetime (if `expires` parses).
    async fn login(&self) -> Result<(String, Option<Duration>), StationError> {
        self.gate.check()?;
        let pw = self
            .password
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        let body = json!({"query": LOGIN, "operationName": "Login",
            "variables": {"username": self.username, "password": pw}});
        let refusal = match self.exchange("login", "login", &body, None).await? {
            Outcome::AuthFailed(why) | Outcome::Forbidden(why) => {
                format!("login as {:?} refused: {why}", self.username)
            }
            Outcome::Data(session) => match up::session(&session) {
                Ok((token, lifetime)) => {
                    self.issued.remember(&token);
                    self.gate.accept();
                    tracing::info!(user = %self.username, "logged in to the station");
                    metrics::counter!("wincc_gateway_station_logins_total").increment(1);
                    return Ok((token, lifetime));
                }
                Err(up::SessionError::Refused(why)) => {
                    format!("login as {:?} refused: {why}", self.username)
                }
                Err(up::SessionError::Malformed(m)) => {
                    return Err(self.scrub_err(StationError::Malformed(m)))
                }
            },
        };
        Err(self.refused(refusal))
    }

    /// The `extendSession` mutation with the current token.
    async fn extend(&self, token: &str) -> Result<(String, Option<Duration>), StationError> {
        let body = json!({"query": EXTEND, "operationName": "ExtendSession", "variables": {}});
        match self
            .exchange("extend_session", "extendSession", &body, Some(token))
            .await?
        {
            Outcome::AuthFailed(why) | Outcome::Forbidden(why) => Err(StationError::Auth(why)),
            Outcome::Data(session) => match up::session(&session) {
                Ok((t, lifetime)) => {
                    self.issued.remember(&t);
                    Ok((if t.is_empty() { token.into() } else { t }, lifetime))
                }
                Err(up::SessionError::Refused(why)) => Err(StationError::Auth(why)),
                Err(up::SessionError::Malformed(m)) => Err(StationError::Malformed(m)),
            },
        }
    }

    /// The token for the next request: logs in when there is none, extends
    /// it when due, and drops the session `discard` names.
    async fn ticket(&self, discard: Option<u64>) -> Result<Ticket, StationError> {
        if self.auth == AuthMode::None {
            return Ok(Ticket {
                bearer: None,
                generation: 0,
            });
        }
        let mut s = self.session.lock().await;
        if discard == Some(s.generation) {
            s.token = None;
        }
        let now = Instant::now();
        if s.expires_at.is_some_and(|t| now >= t) {
            s.token = None;
        }
        if let (Some(token), Some(at)) = (s.token.clone(), s.refresh_at) {
            if now >= at {
                match self.extend(&token).await {
                    Ok((t, lifetime)) => {
                        tracing::debug!("station session extended");
                        s.token = Some(t);
                        set_expiry(&mut s, lifetime);
                    }
                    Err(StationError::Auth(why)) => {
                        tracing::info!(reason = %why, "extendSession refused; logging in again");
                        s.token = None;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if s.token.is_none() {
            let (token, lifetime) = self.login().await?;
            s.token = Some(token);
            s.generation += 1;
            set_expiry(&mut s, lifetime);
        }
        Ok(Ticket {
            bearer: s.token.clone(),
            generation: s.generation,
        })
    }

    /// A GraphQL operation with auth: on an auth failure, one more login and
    /// one retry, never more.
    async fn call(
        &self,
        endpoint: &'static str,
        op: &str,
        query: &str,
        root: &str,
        variables: Value,
    ) -> Result<Value, StationError> {
        let body = json!({"query": query, "operationName": op, "variables": variables});
        let result = async {
            self.rights.check()?;
            let mut ticket = self.ticket(None).await?;
            let mut relogged = false;
            loop {
                match self
                    .exchange(endpoint, root, &body, ticket.bearer.as_deref())
                    .await?
                {
                    Outcome::Data(v) => {
                        self.rights.accept();
                        if self.auth != AuthMode::None {
                            self.proven.fetch_max(
                                ticket.generation,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            self.gate.session_works();
                        }
                        return Ok(v);
                    }
                    Outcome::Forbidden(why) => return Err(self.lacks_right(&why)),
                    Outcome::AuthFailed(why) if self.auth == AuthMode::None => {
                        return Err(StationError::Auth(format!(
                            "the station requires a login ({why}); set wincc.auth = \"session\""
                        )))
                    }
                    // A session that worked has expired: one new login.
                    Outcome::AuthFailed(why)
                        if !relogged
                            && ticket.generation
                                <= self.proven.load(std::sync::atomic::Ordering::Relaxed) =>
                    {
                        tracing::info!(endpoint, reason = %why, "station session rejected; logging in again");
                        relogged = true;
                        ticket = self.ticket(Some(ticket.generation)).await?;
                    }
                    // A session that never worked: the station takes the
                    // login but not the session. End it, and log in again
                    // only after the login pause (whoever asks).
                    Outcome::AuthFailed(why) => {
                        let e = self.gate.session_rejected(
                            &self.username,
                            self.scrub(format!(
                                "the station rejected a freshly opened session on {endpoint} ({why})"
                            )),
                        );
                        self.logout().await;
                        return Err(e);
                    }
                }
            }
        }
        .await;
        result.map_err(StationError::counted)
    }
}

/// Longest session lifetime taken at its word (a runtime handing out
/// tokens for years must not overflow a clock): about 30 years.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

fn set_expiry(s: &mut Session, lifetime: Option<Duration>) {
    let now = Instant::now();
    let lifetime = lifetime.map(|l| l.min(MAX_LIFETIME));
    s.expires_at = lifetime.and_then(|l| now.checked_add(l));
    // Extend once two thirds of the lifetime have passed, whatever its
    // length (75 minutes and years were both seen).
    s.refresh_at = lifetime.and_then(|l| now.checked_add(l.mul_f64(2.0 / 3.0)));
}

#[async_trait]
impl Station for UnifiedClient {
    async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError> {
        let rows = self
            .call(
                "list_tags",
                "Browse",
                BROWSE,
                "browse",
                json!({"nameFilters": ["*"], "objectTypeFilters": ["TAG"]}),
            )
            .await?;
        let (tags, skipped) = up::browse(&rows).map_err(|e| self.scrub_err(e))?;
        if let Some(first) = skipped.first() {
            tracing::warn!(count = skipped.len(), first = %self.scrub(first.clone()), "skipping browse rows with no usable data type (structures, unsupported types)");
        }
        // One reply (at most http::MAX_BODY bytes), cut to max_tags.
        Ok(super::browse::TagCollector::new(self.max_tags).all(tags))
    }

    async fn read_values(&self, names: &[Arc<str>]) -> Result<Vec<Reading>, StationError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .call(
                "read_values",
                "TagValues",
                TAG_VALUES,
                "tagValues",
                json!({ "names": names }),
            )
            .await?;
        let received = Utc::now();
        let mut readings =
            up::tag_values(&rows, names, received).map_err(|e| self.scrub_err(e.counted()))?;
        parse::scrub_tag_errors(&mut readings, |m| self.scrub(m));
        Ok(readings)
    }

    async fn write_value(
        &self,
        name: &str,
        _ty: TagType,
        value: &Value,
    ) -> Result<(), StationError> {
        let rows = self
            .call(
                "write_value",
                "WriteTagValues",
                WRITE,
                "writeTagValues",
                json!({"input": [{"name": name, "value": value}]}),
            )
            .await?;
        up::write_result(&rows, name).map_err(|e| self.scrub_err(e))
    }

    /// All writes in one `writeTagValues` mutation (its input is a list);
    /// each result is matched by name.
    async fn write_values(
        &self,
        writes: &[(String, TagType, Value)],
    ) -> Vec<Result<(), StationError>> {
        if writes.is_empty() {
            return Vec::new();
        }
        let input: Vec<Value> = writes
            .iter()
            .map(|(name, _, value)| json!({"name": name, "value": value}))
            .collect();
        match self
            .call(
                "write_values",
                "WriteTagValues",
                WRITE,
                "writeTagValues",
                json!({ "input": input }),
            )
            .await
        {
            Ok(rows) => writes
                .iter()
                .map(|(name, _, _)| up::write_result(&rows, name).map_err(|e| self.scrub_err(e)))
                .collect(),
            Err(e) => {
                let e = self.scrub_err(e);
                writes.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError> {
        let rows = self
            .call(
                "alarms",
                "ActiveAlarms",
                ALARMS,
                "activeAlarms",
                json!({"languages": ["en-US"]}),
            )
            .await?;
        let (alarms, bad) = up::alarms(&rows).map_err(|e| self.scrub_err(e))?;
        if let Some(first) = bad.first() {
            tracing::warn!(count = bad.len(), first = %self.scrub(first.clone()), "skipping alarms that do not parse");
        }
        Ok(alarms)
    }

    async fn logout(&self) {
        if self.auth == AuthMode::None {
            return;
        }
        let mut s = self.session.lock().await;
        let Some(token) = s.token.take() else { return };
        s.expires_at = None;
        s.refresh_at = None;
        let body = json!({"query": LOGOUT, "operationName": "Logout", "variables": {"allSessions": false}});
        match self.exchange("logout", "logout", &body, Some(&token)).await {
            Ok(Outcome::Data(Value::Bool(true))) => tracing::info!("logged out of the station"),
            Ok(_) => tracing::warn!("station did not confirm the logout"),
            Err(e) => tracing::warn!(error = %e, "logout failed"),
        }
    }

    async fn keep_session(&self) {
        // `ticket` extends the session once two thirds of its lifetime have
        // passed and sends nothing before; a failure shows again (and is
        // handled) at the next real request.
        if let Err(e) = self.ticket(None).await {
            tracing::debug!(error = %e, "could not extend the station session");
        }
    }

    /// A `tagValues` subscription over WebSocket (`wss://` with the same
    /// TLS trust as HTTPS).
    async fn subscribe(&self, names: &[Arc<str>]) -> Result<Option<TagSubscription>, StationError> {
        self.subscribe_tag_values(names).await.map(Some)
    }
}
