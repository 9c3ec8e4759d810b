//! The station: one client trait ([`Station`]), implemented once per
//! dialect. Layout: `transport/` is the one station transport every dialect
//! speaks through (HTTP client, base URL, limiter, timeout, secrets and
//! their scrubbing, busy handling; its `session.rs`: the session, the login
//! gate and the 401 policy), over `http.rs` (client building, bounded
//! bodies, `Retry-After`), `tls.rs` (the station's TLS trust), `gate.rs`
//! (the login gate), `limiter.rs` and `browse.rs` (the `max_tags` bound).
//! Each dialect is a directory with its URLs and bodies in `mod.rs` and its
//! reply parsing in `reply.rs`: `generic/` (plus `auth.rs`, its login, and
//! `fast.rs`, the fast batch-read path), `v7/` (plus `alarms.rs`) and
//! `unified/` (plus `ws.rs`, the GraphQL subscriptions over WebSocket);
//! `parse.rs` holds the lenient reading the REST dialects share.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Alarm, Reading, TagInfo, TagType};

/// Why a station request failed. Messages never contain secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StationError {
    /// Connection refused, DNS, TLS or reset: the station is not there.
    #[error("station unreachable: {0}")]
    Unreachable(String),
    /// No answer within `timeout_ms`.
    #[error("station request timed out after {0:?}")]
    Timeout(Duration),
    /// Login refused or credentials missing.
    #[error("station refused the login: {0}")]
    Auth(String),
    /// 429 / 503 with or without `Retry-After`.
    #[error("station is busy (HTTP {status}), retry after {retry_after:?}")]
    Busy {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other non-success status, with the station's error message.
    #[error("station answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// The body could not be understood.
    #[error("malformed station reply: {0}")]
    Malformed(String),
    /// The station refused a request for one tag (unknown tag, read-only, type).
    #[error("station refused: {code}: {message}")]
    Refused { code: String, message: String },
}

impl StationError {
    /// True when the whole station is to be considered down for this cycle.
    pub fn is_outage(&self) -> bool {
        match self {
            StationError::Unreachable(_) | StationError::Timeout(_) => true,
            StationError::Http { status, .. } => *status >= 500,
            // 429 is the station pacing us, not an outage; 503 is "runtime stopped".
            StationError::Busy { status, .. } => *status != 429,
            StationError::Malformed(_) => true,
            StationError::Auth(_) => true,
            StationError::Refused { .. } => false,
        }
    }

    /// The same error with every occurrence of the given secrets (password,
    /// Basic credential) replaced by `***`: station replies may echo them.
    pub fn scrubbed(self, secrets: &[Option<&crate::config::Secret>]) -> StationError {
        let scrub = |m: String| scrub_text(m, secrets);
        match self {
            StationError::Unreachable(m) => StationError::Unreachable(scrub(m)),
            StationError::Auth(m) => StationError::Auth(scrub(m)),
            StationError::Http { status, message } => StationError::Http {
                status,
                message: scrub(message),
            },
            StationError::Malformed(m) => StationError::Malformed(scrub(m)),
            StationError::Refused { code, message } => StationError::Refused {
                code: scrub(code),
                message: scrub(message),
            },
            e @ (StationError::Timeout(_) | StationError::Busy { .. }) => e,
        }
    }

    /// A short label for metrics (`kind="timeout"`).
    pub fn kind(&self) -> &'static str {
        match self {
            StationError::Unreachable(_) => "unreachable",
            StationError::Timeout(_) => "timeout",
            StationError::Auth(_) => "auth",
            StationError::Busy { .. } => "busy",
            StationError::Http { .. } => "http",
            StationError::Malformed(_) => "malformed",
            StationError::Refused { .. } => "refused",
        }
    }

    /// Counts the error in `wincc_gateway_station_errors_total{kind}` and
    /// hands it back.
    pub(crate) fn counted(self) -> Self {
        metrics::counter!("wincc_gateway_station_errors_total", "kind" => self.kind()).increment(1);
        self
    }
}

/// Writes one value at a time with [`Station::write_value`], in order: the
/// default batch write, and the fallback where a batch cannot be used.
pub async fn write_each<S: Station + ?Sized>(
    station: &S,
    writes: &[(String, TagType, serde_json::Value)],
) -> Vec<Result<(), StationError>> {
    let mut results = Vec::with_capacity(writes.len());
    for (name, ty, value) in writes {
        results.push(station.write_value(name, *ty, value).await);
    }
    results
}

/// A WinCC station, whatever dialect it speaks. Every request made through
/// it is rate limited and counted; implementations log in by themselves.
#[async_trait]
pub trait Station: Send + Sync + 'static {
    /// All tags the station has (paged internally where the dialect pages).
    async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError>;

    /// Reads the given tags in one request. Rows are matched by name; a tag
    /// that the station reports in error, or leaves out, comes back as a
    /// `Reading` with quality bad and `error` set.
    async fn read_values(&self, names: &[Arc<str>]) -> Result<Vec<Reading>, StationError>;

    /// Writes one value (already type-checked by `writes.rs`).
    async fn write_value(
        &self,
        name: &str,
        ty: TagType,
        value: &serde_json::Value,
    ) -> Result<(), StationError>;

    /// Writes several values (each already type-checked by `writes.rs`) in
    /// one request where the dialect has a batch write; one result per
    /// write, in the same order. The default writes them one at a time.
    async fn write_values(
        &self,
        writes: &[(String, TagType, serde_json::Value)],
    ) -> Vec<Result<(), StationError>> {
        write_each(self, writes).await
    }

    /// The currently active alarms.
    async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError>;

    /// Ends the session, if the dialect has one. Errors are logged, not returned.
    async fn logout(&self);

    /// Opens a subscription to the values of `names`: the station pushes
    /// changes instead of being polled. `Ok(None)` when the dialect (or this
    /// client's settings) has no subscriptions: the caller polls instead.
    async fn subscribe(&self, names: &[Arc<str>]) -> Result<Option<TagSubscription>, StationError> {
        let _ = names;
        Ok(None)
    }

    /// Keeps the station's session alive while subscriptions are the only
    /// traffic (no polls, no alarm polls): extends it when it is due and
    /// sends nothing otherwise. Called every few seconds while a group is
    /// subscribed; the default (dialects without sessions that expire)
    /// does nothing.
    async fn keep_session(&self) {}
}

/// What a tag subscription delivers.
#[derive(Debug)]
pub enum SubscriptionEvent {
    /// Current values (first every subscribed tag, then whenever one
    /// changes) as readings, each carrying its tag's name.
    Readings(Vec<Reading>),
    /// The subscription ended; poll instead until a new one is opened.
    Closed(StationError),
}

/// A running tag subscription, whatever the dialect; dropping it ends it.
#[derive(Debug)]
pub struct TagSubscription {
    rx: tokio::sync::mpsc::Receiver<SubscriptionEvent>,
    cancel: tokio_util::sync::CancellationToken,
}

impl TagSubscription {
    /// A subscription fed by `rx`; `cancel` is cancelled when it is dropped
    /// (the dialect's reader then ends the subscription at the station).
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<SubscriptionEvent>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Self {
        TagSubscription { rx, cancel }
    }

    /// The next event; `None` once the subscription has ended and its
    /// `Closed` event was delivered.
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        self.rx.recv().await
    }
}

impl Drop for TagSubscription {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

mod browse;
pub mod gate;
pub mod generic;
mod http;
pub mod limiter;
mod parse;
pub mod tls;
pub(crate) mod transport;
pub mod unified;
pub mod v7;

use std::sync::Arc;

use crate::config::{Dialect, Settings};

/// Why a station client could not be set up (bad TLS files, unsupported
/// options). Located by configuration key; never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting cannot be used: `key`, why.
    #[error("{key}: {why}")]
    Setting { key: &'static str, why: String },
    /// The secret could not be resolved.
    #[error("{0}")]
    Secret(crate::config::Problem),
}

/// Builds the station client for the configured dialect. Makes no request:
/// the client logs in on its first call.
pub fn connect(settings: &Settings) -> Result<Arc<dyn Station>, ConnectError> {
    match settings.wincc.dialect {
        Dialect::Generic => Ok(Arc::new(generic::GenericClient::new(&settings.wincc)?)),
        Dialect::WinccV7 => Ok(Arc::new(v7::WinccV7Client::new(settings)?)),
        Dialect::Unified => Ok(Arc::new(unified::UnifiedClient::new(&settings.wincc)?)),
    }
}

/// How often a repeating warning is logged again (with its count).
pub const REPEAT_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// A warning that repeats with every poll (a station row that does not
/// parse): logged the first time each distinct problem is seen, then at
/// most every [`REPEAT_WARN_EVERY`] with how often it recurred meanwhile.
/// Usable as a `static`; remembers at most 1000 problems.
pub struct RepeatWarn {
    seen: std::sync::Mutex<std::collections::BTreeMap<String, (std::time::Instant, u64)>>,
}

impl Default for RepeatWarn {
    fn default() -> Self {
        Self::new()
    }
}

impl RepeatWarn {
    pub const fn new() -> Self {
        RepeatWarn {
            seen: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// `Some(n)` when `problem` is to be logged now: `n` is how often it was
    /// seen and not logged since it was last logged (0 the first time).
    pub fn check(&self, problem: &str) -> Option<u64> {
        self.check_at(problem, std::time::Instant::now())
    }

    fn check_at(&self, problem: &str, now: std::time::Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((last, n)) = seen.get_mut(problem) {
            if now.duration_since(*last) < REPEAT_WARN_EVERY {
                *n += 1;
                return None;
            }
            let repeats = *n;
            *last = now;
            *n = 0;
            return Some(repeats);
        }
        if seen.len() >= 1000 {
            seen.clear();
        }
        seen.insert(problem.to_string(), (now, 0));
        Some(0)
    }
}

/// The longest station text (error messages, names in log lines) the
/// gateway carries on into write results, logs and status messages.
pub const MAX_STATION_TEXT: usize = 500;

/// `s` with every occurrence of the given secrets replaced by `***`, then
/// cut to [`MAX_STATION_TEXT`] characters (`…` marks a cut). Every text a
/// station sends passes through here before it is used.
pub fn scrub_text(mut s: String, secrets: &[Option<&crate::config::Secret>]) -> String {
    for secret in secrets.iter().flatten() {
        let x = secret.expose();
        if !x.is_empty() && s.contains(x) {
            s = s.replace(x, "***");
        }
    }
    cap_text(s)
}

/// `s` cut to [`MAX_STATION_TEXT`] characters, `…` marking the cut.
pub fn cap_text(mut s: String) -> String {
    if s.len() > MAX_STATION_TEXT {
        if let Some((i, _)) = s.char_indices().nth(MAX_STATION_TEXT) {
            s.truncate(i);
            s.push('…');
        }
    }
    s
}

#[cfg(test)]
mod repeat_warn_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn each_problem_once_then_every_ten_minutes_with_a_count() {
        let w = RepeatWarn::new();
        let t0 = Instant::now();
        assert_eq!(w.check_at("a", t0), Some(0));
        assert_eq!(
            w.check_at("b", t0),
            Some(0),
            "a distinct problem is logged too"
        );
        for i in 1..100 {
            assert_eq!(w.check_at("a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(w.check_at("a", t0 + Duration::from_secs(601)), Some(99));
        assert_eq!(w.check_at("a", t0 + Duration::from_secs(602)), None);
    }
}
