//! The one station transport every dialect speaks through. It owns what
//! the three dialects have in common: the HTTP client with the configured
//! TLS trust, the base URL, the shared rate limiter, the request timeout,
//! the resolved secrets (password, Basic credential) and the credentials
//! the station issued (all scrubbed from every station text), the login
//! gate, the session with its generation, and the policies: a 429/503 with
//! a short `Retry-After` is waited out once (pausing every request), an
//! auth failure on a session that worked logs in once more and retries
//! once, one on a freshly opened session ("unproven": the station takes
//! the login but not the session) closes the gate and ends the session.
//!
//! A dialect keeps only its URLs, bodies and reply parsing: it builds a
//! [`Request`], says how a reply ended ([`Attempt`]) and how it logs in
//! ([`Login`]); the transport does the rest.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};

use super::browse::TagCollector;
use super::gate::LoginGate;
use super::http::{self, Issued};
use super::limiter::Limiter;
use super::{parse, ConnectError, StationError};
use crate::config::{resolve_secret, AuthMode, Secret, WinccSettings};
use crate::model::{Reading, TagInfo};

mod session;

use session::Session;
pub(crate) use session::{Attempt, Login, NoLogin, Renewal, Ticket};

/// What a dialect asks of its transport.
pub(crate) struct Options {
    /// Appended to a `wincc.base_url` error: what the URL is meant to be.
    pub(crate) what: &'static str,
    /// Keep the query of `base_url` (the URL is used verbatim).
    pub(crate) keep_query: bool,
    /// Follow a 301/307/308 itself, once, as the same request, within the
    /// same origin (a permanent one is remembered with a warning); reqwest's
    /// own following (which turns a POST into a GET) is then off.
    pub(crate) own_redirects: bool,
    /// A header sent with every request.
    pub(crate) header: Option<(&'static str, &'static str)>,
    /// Refuses the auth modes the dialect has no use for.
    pub(crate) auth_check: fn(AuthMode) -> Result<(), ConnectError>,
    /// How the session is kept fresh.
    pub(crate) renewal: Renewal,
    /// What to set when the station wants credentials and none are
    /// configured (`set wincc.auth = "basic"`).
    pub(crate) auth_hint: &'static str,
}

/// One request: the transport adds the Basic credential, the dialect's
/// header and `Content-Type: application/json` for a body.
pub(crate) struct Request<'a> {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) body: Option<&'a Bytes>,
    pub(crate) bearer: Option<&'a str>,
}

/// A whole reply: status, headers, body.
pub(crate) struct Raw {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// See the module docs. One per client; cheap to share behind the client.
pub(crate) struct Transport {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    limiter: Arc<Limiter>,
    auth: AuthMode,
    username: String,
    password: Option<Secret>,
    /// `base64(user:password)` in basic mode, kept to scrub echoes of it too.
    basic: Option<Secret>,
    /// Session tokens and cookies the station issued (scrubbed like the password).
    issued: Issued,
    gate: LoginGate,
    session: tokio::sync::Mutex<Session>,
    /// The newest session generation a request succeeded with.
    proven: AtomicU64,
    /// `wincc.max_tags`: the most tags a browse keeps.
    max_tags: usize,
    /// Where a permanent redirect moved the endpoint (own redirects only).
    moved_to: std::sync::Mutex<Option<Url>>,
    own_redirects: bool,
    header: Option<(&'static str, &'static str)>,
    renewal: Renewal,
    auth_hint: &'static str,
}

impl Transport {
    /// Parses `base_url`, checks the auth mode, resolves the password and
    /// builds the HTTP client and the limiter (`wincc.rate_limit`). Makes
    /// no request.
    pub(crate) fn new(w: &WinccSettings, opts: Options) -> Result<Self, ConnectError> {
        let mut base = http::base_url(&w.base_url, opts.what)?;
        if !opts.keep_query {
            base.set_query(None);
        }
        (opts.auth_check)(w.auth)?;
        let password = if w.auth == AuthMode::None {
            None
        } else {
            resolve_secret("wincc.password", &w.password_env, &w.password_file)
                .map_err(ConnectError::Secret)?
        };
        let basic = (w.auth == AuthMode::Basic).then(|| {
            let pw = password.as_ref().map(Secret::expose).unwrap_or_default();
            let raw = format!("{}:{}", w.username, pw);
            Secret::new(base64::engine::general_purpose::STANDARD.encode(raw))
        });
        let redirects = if opts.own_redirects {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::default()
        };
        Ok(Transport {
            http: http::build_client_with(w, redirects)?,
            base,
            timeout: Duration::from_millis(w.timeout_ms.max(1)),
            limiter: Arc::new(Limiter::new(&w.rate_limit)),
            auth: w.auth,
            username: w.username.clone(),
            password,
            basic,
            issued: Issued::default(),
            gate: LoginGate::default(),
            session: tokio::sync::Mutex::new(Session::default()),
            proven: AtomicU64::new(0),
            max_tags: w.max_tags,
            moved_to: std::sync::Mutex::new(None),
            own_redirects: opts.own_redirects,
            header: opts.header,
            renewal: opts.renewal,
            auth_hint: opts.auth_hint,
        })
    }

    pub(crate) fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn auth(&self) -> AuthMode {
        self.auth
    }

    pub(crate) fn username(&self) -> &str {
        &self.username
    }

    /// The password (empty without one), for a login body.
    pub(crate) fn password(&self) -> &str {
        self.password
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default()
    }

    /// True in the modes with a session (`session`, `cookie`).
    fn has_session(&self) -> bool {
        matches!(self.auth, AuthMode::Session | AuthMode::Cookie)
    }

    /// A browse's collector, bounded by `wincc.max_tags` (`wincc::browse`).
    pub(crate) fn collector<T>(&self) -> TagCollector<T> {
        TagCollector::new(self.max_tags)
    }

    /// A tag list that came in one piece, cut to `wincc.max_tags`.
    pub(crate) fn all_tags(&self, tags: Vec<TagInfo>) -> Vec<TagInfo> {
        TagCollector::new(self.max_tags).all(tags)
    }

    /// `base_url` + path segments, each percent-encoded (all but `A-Z a-z
    /// 0-9 - . _ ~`), so a `/`, `%`, `#`, `?` or `::` in a tag name stays
    /// inside its segment.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        http::with_segments(&self.base, segments)
    }

    /// The endpoint: `base_url` verbatim, or where a permanent redirect
    /// moved it.
    pub(crate) fn endpoint(&self) -> Url {
        let moved = self.moved_to.lock().unwrap_or_else(|e| e.into_inner());
        moved.clone().unwrap_or_else(|| self.base.clone())
    }

    /// `text` without the password, the Basic credential and every token
    /// or cookie the station issued, cut to [`super::MAX_STATION_TEXT`].
    pub(crate) fn scrub(&self, text: String) -> String {
        self.issued
            .scrub(&[self.password.as_ref(), self.basic.as_ref()], text)
    }

    /// The error with every secret scrubbed (see [`Self::scrub`]).
    pub(crate) fn scrub_err(&self, e: StationError) -> StationError {
        self.issued
            .scrub_err(&[self.password.as_ref(), self.basic.as_ref()], e)
    }

    /// A session token the station issued: a secret from now on.
    pub(crate) fn remember(&self, token: &str) {
        self.issued.remember(token);
    }

    /// Logs (debug) a reply that did not parse, for a capture to send in:
    /// the first 4 KiB, secrets scrubbed.
    pub(crate) fn debug_reply(&self, endpoint: &str, body: &[u8]) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let text: String = String::from_utf8_lossy(body).chars().take(4096).collect();
            tracing::debug!(endpoint, bytes = body.len(), reply = %self.scrub(text), "station reply that did not parse");
        }
    }

    /// A non-success reply as an error, with the station's `{code,
    /// message}` text where it sent one (scrubbed).
    pub(crate) fn http_error(&self, status: StatusCode, body: &[u8]) -> StationError {
        let message = match parse::error_body(body) {
            Some((c, m)) if !c.is_empty() => format!("{c}: {m}"),
            Some((_, m)) => m,
            None => status.canonical_reason().unwrap_or("error").to_string(),
        };
        self.status_error(status, message)
    }

    /// A non-success reply with `message` as an error (scrubbed).
    pub(crate) fn status_error(&self, status: StatusCode, message: String) -> StationError {
        self.scrub_err(StationError::Http {
            status: status.as_u16(),
            message: message.chars().take(500).collect(),
        })
    }

    /// A batch read's readings as parsed: a reply that does not parse is
    /// counted and scrubbed, and so are the station's per-tag messages.
    pub(crate) fn readings(
        &self,
        parsed: Result<Vec<Reading>, StationError>,
    ) -> Result<Vec<Reading>, StationError> {
        let mut readings = parsed.map_err(|e| self.scrub_err(e.counted()))?;
        parse::scrub_tag_errors(&mut readings, |m| self.scrub(m));
        Ok(readings)
    }

    /// The station refused the credentials: the gate closes (`wincc::gate`).
    pub(crate) fn refused(&self, why: String) -> StationError {
        self.gate.refuse(&self.username, self.scrub(why))
    }

    /// One request, whole reply: a 429/503 with a `Retry-After` no longer
    /// than the timeout is waited out once (every request of the client
    /// pauses), a longer one fails as [`StationError::Busy`]; with own
    /// redirects a 301/307/308 is followed once.
    pub(crate) async fn send(
        &self,
        endpoint: &'static str,
        req: &Request<'_>,
    ) -> Result<Raw, StationError> {
        let start = || {
            if self.own_redirects {
                self.endpoint()
            } else {
                req.url.clone()
            }
        };
        let mut url = start();
        let (mut waited, mut followed) = (false, false);
        loop {
            let raw = self.exchange(endpoint, req, url.clone()).await?;
            if self.own_redirects && matches!(raw.status.as_u16(), 301 | 307 | 308) {
                url = self
                    .redirected(&url, &raw, followed)
                    .map_err(|e| self.scrub_err(e))?;
                followed = true;
                continue;
            }
            if http::is_busy(raw.status) {
                let (status, headers) = (raw.status, &raw.headers);
                http::busy(
                    &self.limiter,
                    endpoint,
                    status,
                    headers,
                    self.timeout,
                    &mut waited,
                )?;
                (url, followed) = (start(), false);
                continue;
            }
            return Ok(raw);
        }
    }

    /// One HTTP exchange under a limiter permit.
    async fn exchange(
        &self,
        endpoint: &'static str,
        req: &Request<'_>,
        url: Url,
    ) -> Result<Raw, StationError> {
        let mut rb = self.http.request(req.method.clone(), url);
        if let Some(b) = &self.basic {
            rb = rb.header(AUTHORIZATION, http::basic_header(b));
        }
        if let Some((name, value)) = self.header {
            rb = rb.header(name, value);
        }
        if let Some(t) = req.bearer {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = req.body {
            rb = rb.header(CONTENT_TYPE, "application/json").body(b.clone());
        }
        let (status, headers, body) = http::exchange(&self.limiter, rb, endpoint, self.timeout)
            .await
            .map_err(|e| self.scrub_err(e))?;
        // Session cookies are secrets: a station that echoes one in an
        // error text must not leak it.
        self.issued.remember_cookies(&headers);
        Ok(Raw {
            status,
            headers,
            body,
        })
    }

    /// Where a 301/307/308 answer sends the request: its `Location`,
    /// resolved against `from`, within the same origin (the Bearer token
    /// never goes to another host or scheme), once per request. A permanent
    /// one is remembered, with a warning naming the `base_url` to configure.
    fn redirected(&self, from: &Url, raw: &Raw, followed: bool) -> Result<Url, StationError> {
        let target = http::redirect_target(from, &raw.headers, raw.status, followed)?;
        if raw.status != StatusCode::TEMPORARY_REDIRECT {
            let mut moved = self.moved_to.lock().unwrap_or_else(|e| e.into_inner());
            if moved.as_ref() != Some(&target) {
                tracing::warn!(
                    configured = %self.base,
                    moved_to = %target,
                    status = raw.status.as_u16(),
                    "the station moved its endpoint permanently; following it as a POST (set wincc.base_url = \"{target}\" to save the extra request)"
                );
                *moved = Some(target.clone());
            }
        }
        Ok(target)
    }

    /// A REST request with the auth policy of [`Self::call`] (a 401 is an
    /// auth failure): status and body. `client_errors` hands 4xx replies
    /// (other than 401 and 429) to the caller instead of failing.
    pub(crate) async fn rest(
        &self,
        login: &dyn Login,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&Bytes>,
        client_errors: bool,
    ) -> Result<(StatusCode, Vec<u8>), StationError> {
        let (method, url) = (&method, &url);
        self.call(login, endpoint, |ticket| async move {
            let req = Request {
                method: method.clone(),
                url: url.clone(),
                body,
                bearer: ticket.bearer.as_deref(),
            };
            let raw = self.send(endpoint, &req).await?;
            if raw.status == StatusCode::UNAUTHORIZED {
                return Ok(Attempt::AuthFailed("HTTP 401".into()));
            }
            if raw.status.is_success() || (client_errors && raw.status.is_client_error()) {
                return Ok(Attempt::Done((raw.status, raw.body)));
            }
            Err(self.http_error(raw.status, &raw.body))
        })
        .await
    }
}

/// `name` as one URL path segment: `.` and `..` cannot be addressed (URL
/// rules resolve them away, so the request would reach another resource).
pub(crate) fn addressable(name: &str) -> Result<&str, StationError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(StationError::Refused {
            code: "name".into(),
            message: format!("the tag name {name:?} cannot be addressed in a URL"),
        });
    }
    Ok(name)
}

/// A JSON request body, serialised once (and shared by a retry).
pub(crate) fn to_body(v: &impl serde::Serialize) -> Bytes {
    // Serialising strings, numbers and maps of them cannot fail.
    Bytes::from(serde_json::to_vec(v).expect("JSON request bodies always serialise"))
}

/// One result per write: `rows` matched to the writes, or the call's
/// error (scrubbed) for every write.
pub(crate) fn each_write<R>(
    t: &Transport,
    writes: &[(String, crate::model::TagType, serde_json::Value)],
    reply: Result<R, StationError>,
    row: impl Fn(&R, &str) -> Result<(), StationError>,
) -> Vec<Result<(), StationError>> {
    match reply {
        Ok(rows) => writes
            .iter()
            .map(|(name, _, _)| row(&rows, name).map_err(|e| t.scrub_err(e)))
            .collect(),
        Err(e) => {
            let e = t.scrub_err(e);
            writes.iter().map(|_| Err(e.clone())).collect()
        }
    }
}
