//! The `unified` dialect: WinCC Unified's GraphQL API (`POST {base_url}`,
//! e.g. `https://host/graphql/`), WINCC-DIALECTS.md §2 and §10.
//!
//! This module holds the GraphQL operations and reply handling; the
//! station transport (`wincc::transport`) sends, paces, follows redirects,
//! keeps the session and applies the auth policy. What that means here:
//! the configured endpoint is used verbatim (a trailing slash
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
//! Every request goes through the shared limiter; 429/503 with
//! `Retry-After` pause the station like in the generic dialect. The
//! password never appears in a log line or an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use self::reply as up;
use super::gate::LoginGate;
use super::parse;
use super::transport::{
    self, to_body, Attempt, Login, Options, Renewal, Request, Ticket, Transport,
};
use super::{ConnectError, Station, StationError};
use crate::config::{AuthMode, WinccSettings};
use crate::model::{Alarm, Reading, TagInfo, TagType};

pub(crate) mod reply;
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
    t: Transport,
    /// Closed while the user lacks the Openness runtime right (FORBIDDEN).
    rights: LoginGate,
    /// The TLS configuration of `wss://` subscriptions: the same trust as
    /// HTTPS (pin, `ca_file`, host-name check); `None` for `ws://` or the
    /// system roots alone.
    ws_tls: Option<Arc<rustls::ClientConfig>>,
}

/// How one GraphQL exchange ended, before auth handling.
enum Outcome {
    Data(Value),
    AuthFailed(String),
    /// `FORBIDDEN`: the user lacks a runtime right (the station's words).
    Forbidden(String),
}

/// The login mutation and a Bearer token: `session` or `none` only.
fn auth_check(auth: AuthMode) -> Result<(), ConnectError> {
    if matches!(auth, AuthMode::Basic | AuthMode::Cookie) {
        return Err(ConnectError::Setting {
            key: "wincc.auth",
            why: format!(
                "the unified dialect logs in with the login mutation and a Bearer token: use \"session\" (or \"none\"), not {:?}",
                auth.as_str()
            ),
        });
    }
    Ok(())
}

impl UnifiedClient {
    /// Builds the client (with its own limiter from `settings.rate_limit`).
    /// Makes no request: it logs in on its first call.
    pub fn new(settings: &WinccSettings) -> Result<Self, ConnectError> {
        let options = Options {
            what: " (the GraphQL endpoint, e.g. https://host/graphql)",
            keep_query: true,
            own_redirects: true,
            // The runtime's Apollo server refuses other POSTs as potential CSRF.
            header: Some(("apollo-require-preflight", "true")),
            auth_check,
            renewal: Renewal::Extend,
            auth_hint: "set wincc.auth = \"session\"",
        };
        let t = Transport::new(settings, options)?;
        let custom_tls = !settings.ca_file.is_empty()
            || settings.accept_invalid_certs
            || !settings.pinned_cert_sha256.trim().is_empty();
        let ws_tls = if t.endpoint().scheme() == "https" && custom_tls {
            Some(Arc::new(super::tls::client_config(
                settings,
                &[b"http/1.1"],
            )?))
        } else {
            None
        };
        Ok(UnifiedClient {
            t,
            rights: LoginGate::for_attempts("attempt"),
            ws_tls,
        })
    }

    /// `FORBIDDEN` with a live session: the user lacks the Openness
    /// runtime right. Holds calls back on the login backoff, never logs in
    /// again for it.
    pub(crate) fn lacks_right(&self, why: &str) -> StationError {
        let user = self.t.username();
        self.rights.refuse(
            user,
            self.t.scrub(format!(
                "user {user:?} lacks the WinCC Unified runtime right \"{}\" (the station answered FORBIDDEN: {why}); give the user's role that right in the runtime's user management",
                up::OPENNESS_RIGHT
            )),
        )
    }

    /// One GraphQL exchange (the transport waits out a short `Retry-After`
    /// and follows a redirect), then `errors[]` and `data.<root>`.
    async fn exchange(
        &self,
        endpoint: &'static str,
        root: &str,
        body: &Bytes,
        bearer: Option<&str>,
    ) -> Result<Outcome, StationError> {
        let req = Request {
            method: Method::POST,
            url: self.t.endpoint(),
            body: Some(body),
            bearer,
        };
        let raw = self.t.send(endpoint, &req).await?;
        if raw.status == StatusCode::UNAUTHORIZED || raw.status == StatusCode::FORBIDDEN {
            return Ok(Outcome::AuthFailed(format!("HTTP {}", raw.status.as_u16())));
        }
        let v = parse::json(&raw.body);
        if !raw.status.is_success() {
            let message = v
                .ok()
                .and_then(|v| up::graphql_errors(&v).map(|e| e.message))
                .unwrap_or_else(|| raw.status.canonical_reason().unwrap_or("error").to_string());
            return Err(self.t.status_error(raw.status, message));
        }
        if v.is_err() && endpoint != "login" {
            self.t.debug_reply(endpoint, &raw.body);
        }
        let v = v.map_err(|e| self.t.scrub_err(e))?;
        if let Some(e) = up::graphql_errors(&v) {
            return match e.kind {
                up::GqlErrorKind::Unauthenticated => {
                    Ok(Outcome::AuthFailed(self.t.scrub(e.message)))
                }
                up::GqlErrorKind::Forbidden => Ok(Outcome::Forbidden(self.t.scrub(e.message))),
                up::GqlErrorKind::Other => Err(self.t.scrub_err(StationError::Refused {
                    code: e.code,
                    message: format!("GraphQL error: {}", e.message),
                })),
            };
        }
        up::data_root(v, root)
            .map(Outcome::Data)
            .map_err(|e| self.t.scrub_err(e))
    }

    /// A GraphQL operation with the transport's auth policy (one new login
    /// and one retry on an auth failure, never more); `FORBIDDEN` closes
    /// the rights gate instead.
    async fn call(
        &self,
        endpoint: &'static str,
        op: &str,
        query: &str,
        root: &str,
        variables: Value,
    ) -> Result<Value, StationError> {
        let body = to_body(&json!({"query": query, "operationName": op, "variables": variables}));
        if let Err(e) = self.rights.check() {
            return Err(e.counted());
        }
        let body = &body;
        let v = self
            .t
            .call(self, endpoint, |ticket| async move {
                match self
                    .exchange(endpoint, root, body, ticket.bearer.as_deref())
                    .await?
                {
                    Outcome::Data(v) => Ok(Attempt::Done(v)),
                    Outcome::Forbidden(why) => Err(self.lacks_right(&why)),
                    Outcome::AuthFailed(why) => Ok(Attempt::AuthFailed(why)),
                }
            })
            .await?;
        self.rights.accept();
        Ok(v)
    }
}

#[async_trait]
impl Login for UnifiedClient {
    /// The `login` mutation: the token and its lifetime (if `expires` parses).
    async fn login(&self) -> Result<(String, Option<Duration>), StationError> {
        let user = self.t.username();
        let body = to_body(&json!({"query": LOGIN, "operationName": "Login",
            "variables": {"username": user, "password": self.t.password()}}));
        let refusal = match self.exchange("login", "login", &body, None).await? {
            Outcome::AuthFailed(why) | Outcome::Forbidden(why) => {
                format!("login as {user:?} refused: {why}")
            }
            Outcome::Data(session) => match up::session(&session) {
                Ok(session) => return Ok(session),
                Err(up::SessionError::Refused(why)) => format!("login as {user:?} refused: {why}"),
                Err(up::SessionError::Malformed(m)) => {
                    return Err(self.t.scrub_err(StationError::Malformed(m)))
                }
            },
        };
        Err(self.t.refused(refusal))
    }

    /// The `extendSession` mutation with the current token.
    async fn extend(&self, token: &str) -> Result<(String, Option<Duration>), StationError> {
        let body =
            to_body(&json!({"query": EXTEND, "operationName": "ExtendSession", "variables": {}}));
        match self
            .exchange("extend_session", "extendSession", &body, Some(token))
            .await?
        {
            Outcome::AuthFailed(why) | Outcome::Forbidden(why) => Err(StationError::Auth(why)),
            Outcome::Data(session) => up::session(&session).map_err(|e| match e {
                up::SessionError::Refused(why) => StationError::Auth(why),
                up::SessionError::Malformed(m) => StationError::Malformed(m),
            }),
        }
    }

    /// The `logout` mutation for this session only.
    async fn end_session(&self, ticket: &Ticket) -> Result<bool, StationError> {
        let body = to_body(
            &json!({"query": LOGOUT, "operationName": "Logout", "variables": {"allSessions": false}}),
        );
        let reply = self
            .exchange("logout", "logout", &body, ticket.bearer.as_deref())
            .await?;
        Ok(matches!(reply, Outcome::Data(Value::Bool(true))))
    }
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
        let (tags, skipped) = up::browse(&rows).map_err(|e| self.t.scrub_err(e))?;
        if let Some(first) = skipped.first() {
            tracing::warn!(count = skipped.len(), first = %self.t.scrub(first.clone()), "skipping browse rows with no usable data type (structures, unsupported types)");
        }
        // One reply (at most http::MAX_BODY bytes), cut to max_tags.
        Ok(self.t.all_tags(tags))
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
        self.t.readings(up::tag_values(&rows, names, received))
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
        up::write_result(&rows, name).map_err(|e| self.t.scrub_err(e))
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
        let reply = self
            .call(
                "write_values",
                "WriteTagValues",
                WRITE,
                "writeTagValues",
                json!({ "input": input }),
            )
            .await;
        transport::each_write(&self.t, writes, reply, |rows, name| {
            up::write_result(rows, name)
        })
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
        let (alarms, bad) = up::alarms(&rows).map_err(|e| self.t.scrub_err(e))?;
        if let Some(first) = bad.first() {
            tracing::warn!(count = bad.len(), first = %self.t.scrub(first.clone()), "skipping alarms that do not parse");
        }
        Ok(alarms)
    }

    async fn logout(&self) {
        self.t.logout(self).await;
    }

    async fn keep_session(&self) {
        // The transport extends the session once two thirds of its lifetime
        // have passed and sends nothing before.
        self.t.keep_session(self).await;
    }

    /// A `tagValues` subscription over WebSocket (`wss://` with the same
    /// TLS trust as HTTPS).
    async fn subscribe(&self, names: &[Arc<str>]) -> Result<Option<TagSubscription>, StationError> {
        self.subscribe_tag_values(names).await.map(Some)
    }
}
