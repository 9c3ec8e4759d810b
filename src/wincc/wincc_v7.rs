//! The `wincc-v7` dialect: the WinCC V7.5 SP2 / V8.x REST service under
//! `https://host:34568/WinCCRestService` (WINCC-DIALECTS.md §1).
//!
//! HTTP Basic on every request (there is no login); a 401 closes the gate
//! for 5 s growing to 60 s, like a refused login of the generic dialect.
//! Batch read `POST tagManagement/Values` `{"variableNames":[..]}` answered
//! by a bare array of rows matched to tags by NAME; rows left out, or an
//! empty 200 body, make those tags bad for the cycle and count
//! `wincc_gateway_station_rows_missing_total`. Browse `GET
//! tagManagement/Variables?itemLimit&continuationPoint` until no
//! continuation point; rows carry no writability (absent = writable: the
//! station decides) and, where they carry no type, a read supplies it; a
//! `dataType` the gateway cannot convert lists the tag as always bad
//! ("unsupported WinCC data type N") and never written. Write `PUT
//! tagManagement/Value/{name}` `{"value":V}` (non-zero `errorcode` =
//! refused, with the station's text); alarms `GET
//! alarmLogging/MessageList/{[alarms] filter}` in WinCC's own words (see
//! `alarms`).
//!
//! Values are converted to the tag's type where it is known (from browse,
//! else from the row's integer `dataType`): numbers, bools and texts given
//! as strings are read back as what they are. The raw quality byte is kept
//! as `quality_code`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use super::browse::TagCollector;
use super::gate::LoginGate;
use super::http;
use super::limiter::Limiter;
use super::parse;
use super::{ConnectError, Station, StationError};
use crate::config::{resolve_secret, AuthMode, Secret, Settings};
use crate::model::{Alarm, Quality, Reading, TagInfo, TagType};

/// `itemLimit` of one browse page.
pub const BROWSE_PAGE: usize = 1000;

mod reply;

mod alarms;

pub use alarms::{alarm_rows, state_from_words};
pub use reply::{
    convert, type_from_code, value_types, values, variable_page, write_result, VarType,
    VariablePage,
};

/// A client for the `wincc-v7` dialect. Cheap to share (`Arc`).
pub struct WinccV7Client {
    http: reqwest::Client,
    base: Url,
    username: String,
    password: Option<Secret>,
    basic: Option<Secret>,
    timeout: Duration,
    limiter: Arc<Limiter>,
    gate: LoginGate,
    alarm_filter: String,
    warned_no_filter: AtomicBool,
    /// The station answered the batch write with 404/405 (it has no
    /// `PUT tagManagement/Values`, e.g. V7.5): writes go one at a time.
    no_batch_write: AtomicBool,
    /// Tag types learnt from browsing, for converting values and refusing
    /// writes to tags of a type the gateway cannot convert.
    types: RwLock<HashMap<String, VarType>>,
    /// When each active alarm was first seen: its `raised_at` where the
    /// station's row gives no time (stable from one poll to the next).
    first_seen: std::sync::Mutex<HashMap<String, String>>,
    /// Unknown alarm state words already warned about (once each).
    warned_states: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Tags of an unsupported type already warned about (once each).
    warned_unsupported: std::sync::Mutex<std::collections::HashSet<String>>,
    /// `wincc.max_tags`: the most tags a browse keeps.
    max_tags: usize,
}

impl WinccV7Client {
    /// Builds the client with its own limiter from `wincc.rate_limit`.
    pub fn new(settings: &Settings) -> Result<Self, ConnectError> {
        let w = &settings.wincc;
        let mut base = http::base_url(&w.base_url, "")?;
        base.set_query(None);
        let password = match w.auth {
            AuthMode::None => None,
            AuthMode::Basic => resolve_secret("wincc.password", &w.password_env, &w.password_file)
                .map_err(ConnectError::Secret)?,
            other => {
                return Err(ConnectError::Setting {
                    key: "wincc.auth",
                    why: format!(
                        "the wincc-v7 REST service has no login; use \"basic\" instead of {:?}",
                        other.as_str()
                    ),
                })
            }
        };
        let basic = (w.auth == AuthMode::Basic).then(|| {
            let pw = password.as_ref().map(Secret::expose).unwrap_or_default();
            let raw = format!("{}:{}", w.username, pw);
            Secret::new(base64::engine::general_purpose::STANDARD.encode(raw))
        });
        Ok(WinccV7Client {
            http: http::build_client(w)?,
            base,
            username: w.username.clone(),
            password,
            basic,
            timeout: Duration::from_millis(w.timeout_ms.max(1)),
            limiter: Arc::new(Limiter::new(&w.rate_limit)),
            gate: LoginGate::default(),
            alarm_filter: settings.alarms.filter.trim().to_string(),
            warned_no_filter: AtomicBool::new(false),
            no_batch_write: AtomicBool::new(false),
            types: RwLock::new(HashMap::new()),
            max_tags: w.max_tags,
            warned_unsupported: Default::default(),
            first_seen: Default::default(),
            warned_states: Default::default(),
        })
    }

    /// The limiter every request of this client goes through.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// `base_url` + path segments, each percent-encoded (`.`, `::`, `/`,
    /// `%`, `#` in a tag name stay inside its segment).
    fn url(&self, segments: &[&str]) -> Url {
        http::with_segments(&self.base, segments)
    }

    fn scrub(&self, s: String) -> String {
        super::scrub_text(s, &[self.password.as_ref(), self.basic.as_ref()])
    }

    fn scrub_err(&self, e: StationError) -> StationError {
        e.scrubbed(&[self.password.as_ref(), self.basic.as_ref()])
    }

    /// A 401: the credentials were refused and the gate closes (see `wincc::gate`).
    fn refused(&self) -> StationError {
        let why = if self.basic.is_some() {
            format!("basic auth as {:?} refused (HTTP 401)", self.username)
        } else {
            "the station requires authentication (HTTP 401); set wincc.auth = \"basic\"".into()
        };
        self.gate.refuse(&self.username, why)
    }

    /// One HTTP exchange under a limiter permit.
    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), StationError> {
        let mut rb = self.http.request(method, url);
        if let Some(b) = &self.basic {
            rb = rb.header(reqwest::header::AUTHORIZATION, http::basic_header(b));
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        http::exchange(&self.limiter, rb, endpoint, self.timeout)
            .await
            .map_err(|e| self.scrub_err(e))
    }

    /// A request: 401 closes the gate; a short `Retry-After` is waited out
    /// once (pausing every request); `client_errors` hands 4xx replies
    /// (other than 401/429) to the caller.
    async fn call(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        client_errors: bool,
    ) -> Result<(StatusCode, Vec<u8>), StationError> {
        let result = async {
            self.gate.check()?;
            let mut waited = false;
            loop {
                let (status, headers, bytes) = self
                    .send(endpoint, method.clone(), url.clone(), body)
                    .await?;
                if status == StatusCode::UNAUTHORIZED {
                    return Err(self.refused());
                }
                self.gate.accept();
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
                    return Ok((status, bytes));
                }
                let message = match parse::error_body(&bytes) {
                    Some((c, m)) if !c.is_empty() => format!("{c}: {m}"),
                    Some((_, m)) => m,
                    None => status.canonical_reason().unwrap_or("error").to_string(),
                };
                return Err(self.scrub_err(StationError::Http {
                    status: status.as_u16(),
                    message: message.chars().take(500).collect(),
                }));
            }
        }
        .await;
        result.map_err(StationError::counted)
    }
    /// Every page of `GET tagManagement/Variables`: the typed tags and
    /// the named rows without a type. Bounded like every dialect's browse
    /// (`wincc/browse.rs`): at most `max_tags` rows, typed or not, and a
    /// station that never stops paging is malformed.
    async fn browse_pages(&self) -> Result<Browsed, StationError> {
        let mut collector = TagCollector::<BrowseRow>::new(self.max_tags);
        let mut skipped = 0usize;
        let mut continuation: Option<String> = None;
        loop {
            let mut url = self.url(&["tagManagement", "Variables"]);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("itemLimit", &BROWSE_PAGE.to_string());
                if let Some(c) = &continuation {
                    q.append_pair("continuationPoint", c);
                }
            }
            let (_, body) = self
                .call("list_tags", Method::GET, url, None, false)
                .await?;
            let page = variable_page(&body).map_err(|e| {
                self.debug_reply("list_tags", &body);
                self.scrub_err(e)
            })?;
            skipped += page.skipped.len();
            for row in page.skipped.iter().take(5) {
                tracing::warn!(row = %self.scrub(row.clone()), "skipping a variable row that is not a named variable");
            }
            let rows = page.tags.into_iter().map(BrowseRow::Typed);
            let rows = rows.chain(page.untyped.into_iter().map(BrowseRow::Untyped));
            let more = collector.page(rows.collect())?;
            let next = if more { page.continuation } else { None };
            match next {
                Some(c) if Some(&c) == continuation.as_ref() => {
                    return Err(StationError::Malformed(
                        "the variable list repeats its continuation point".into(),
                    ))
                }
                Some(c) => continuation = Some(c),
                None => {
                    if skipped > 0 {
                        tracing::warn!(skipped, "variable rows skipped while browsing the station");
                    }
                    let (mut all, mut untyped) = (Vec::new(), Vec::new());
                    for row in collector.finish() {
                        match row {
                            BrowseRow::Typed(t) => all.push(t),
                            BrowseRow::Untyped(u) => untyped.push(u),
                        }
                    }
                    return Ok((all, untyped));
                }
            }
        }
    }

    /// The types of variables the browse did not type, from the `dataType`
    /// of their `Values` rows (read in chunks of [`BROWSE_PAGE`]). A
    /// variable whose row gives no type either is left out, with a warning
    /// naming it.
    async fn learn_types(
        &self,
        untyped: Vec<(String, bool)>,
    ) -> Result<Vec<(TagInfo, VarType)>, StationError> {
        let mut out = Vec::with_capacity(untyped.len());
        let mut unknown = Vec::new();
        for chunk in untyped.chunks(BROWSE_PAGE) {
            let names: Vec<&str> = chunk.iter().map(|(n, _)| n.as_str()).collect();
            let body = json!({ "variableNames": names });
            let url = self.url(&["tagManagement", "Values"]);
            let (_, reply) = self
                .call("list_tags", Method::POST, url, Some(&body), false)
                .await?;
            let types = value_types(&reply).map_err(|e| self.scrub_err(e))?;
            for (name, writable) in chunk {
                match types.get(name) {
                    Some(vt) => out.push((
                        TagInfo {
                            name: name.clone(),
                            ty: vt.tag_type(),
                            writable: *writable,
                        },
                        *vt,
                    )),
                    None => unknown.push(name.clone()),
                }
            }
        }
        if let Some(first) = unknown.first() {
            tracing::warn!(
                count = unknown.len(),
                first = %self.scrub(first.clone()),
                "variables left out: neither the variable list nor a read gives their dataType"
            );
        }
        Ok(out)
    }

    /// Warns once per tag about a data type the gateway cannot convert (the
    /// tag itself is listed and reported bad with the reason).
    fn warn_unsupported(&self, all: &[(TagInfo, VarType)]) {
        let mut warned = self
            .warned_unsupported
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (t, vt) in all {
            if let VarType::Unsupported(code) = vt {
                if warned.insert(t.name.clone()) {
                    tracing::warn!(tag = %self.scrub(t.name.clone()), code, "unsupported WinCC data type {code}: the tag is reported bad and never written");
                }
            }
        }
    }

    /// Logs (debug) a reply that did not parse, for a capture to send in:
    /// the first 4 KiB, secrets scrubbed.
    fn debug_reply(&self, endpoint: &str, body: &[u8]) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let text: String = String::from_utf8_lossy(body).chars().take(4096).collect();
            tracing::debug!(endpoint, bytes = body.len(), reply = %self.scrub(text), "station reply that did not parse");
        }
    }

    /// The refusal of a write to a tag of an unsupported type, if it is one.
    fn unsupported_write(&self, name: &str) -> Option<StationError> {
        let types = self.types.read().unwrap_or_else(|e| e.into_inner());
        match types.get(name) {
            Some(VarType::Unsupported(code)) => Some(StationError::Refused {
                code: "unsupported_type".into(),
                message: format!(
                    "tag {name:?} has WinCC data type {code}, which the gateway cannot convert; it is not written"
                ),
            }),
            _ => None,
        }
    }
}

impl WinccV7Client {
    /// Fills in `raised_at` where the station gave no time (when the alarm
    /// was first seen, kept while it is listed) and warns once per unknown
    /// state word.
    fn settle_alarms(&self, rows: alarms::AlarmRows) -> Vec<Alarm> {
        {
            let mut warned = self.warned_states.lock().unwrap_or_else(|e| e.into_inner());
            for w in rows.unknown_states {
                if warned.len() < 1000 && warned.insert(w.clone()) {
                    tracing::warn!(state = %self.scrub(w), "unknown WinCC alarm state word; the alarm counts as raised");
                }
            }
        }
        let now = crate::model::format_ts(&chrono::Utc::now());
        let mut seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::with_capacity(rows.alarms.len());
        let alarms = rows
            .alarms
            .into_iter()
            .map(|mut a| {
                let first = seen.remove(&a.id).unwrap_or_else(|| now.clone());
                if a.raised_at.is_empty() {
                    a.raised_at = first.clone();
                }
                kept.insert(a.id.clone(), first);
                a
            })
            .collect();
        *seen = kept;
        alarms
    }
}

/// What browsing found: typed tags, and named rows without a type.
type Browsed = (Vec<(TagInfo, VarType)>, Vec<(String, bool)>);

/// One row of the variable list: typed, or named only (its type comes
/// from a read).
enum BrowseRow {
    Typed((TagInfo, VarType)),
    Untyped((String, bool)),
}

#[async_trait]
impl Station for WinccV7Client {
    async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError> {
        let (mut all, untyped) = self.browse_pages().await?;
        if !untyped.is_empty() {
            all.extend(self.learn_types(untyped).await?);
        }
        self.warn_unsupported(&all);
        let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
        types.clear();
        types.extend(all.iter().map(|(t, vt)| (t.name.clone(), *vt)));
        Ok(all.into_iter().map(|(t, _)| t).collect())
    }

    async fn read_values(&self, names: &[Arc<str>]) -> Result<Vec<Reading>, StationError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let body = json!({ "variableNames": names });
        let url = self.url(&["tagManagement", "Values"]);
        let (_, reply) = self
            .call("read_values", Method::POST, url, Some(&body), false)
            .await?;
        let received = chrono::Utc::now();
        let parsed = {
            let types = self.types.read().unwrap_or_else(|e| e.into_inner());
            values(&reply, names, &types, received)
        };
        let (mut readings, missing) = parsed.map_err(|e| {
            self.debug_reply("read_values", &reply);
            self.scrub_err(e.counted())
        })?;
        if missing > 0 {
            metrics::counter!("wincc_gateway_station_rows_missing_total").increment(missing as u64);
            tracing::warn!(
                missing,
                requested = names.len(),
                empty_body = reply.iter().all(u8::is_ascii_whitespace),
                "the station's reply left rows out; those tags are bad for this cycle"
            );
        }
        parse::scrub_tag_errors(&mut readings, |m| self.scrub(m));
        for r in &mut readings {
            if r.error.is_some() {
                r.quality = Quality::Bad;
            }
        }
        Ok(readings)
    }

    async fn write_value(
        &self,
        name: &str,
        _ty: TagType,
        value: &Value,
    ) -> Result<(), StationError> {
        if let Some(e) = self.unsupported_write(name) {
            return Err(e);
        }
        if name.is_empty() || name == "." || name == ".." {
            return Err(StationError::Refused {
                code: "name".into(),
                message: format!("the tag name {name:?} cannot be addressed in a URL"),
            });
        }
        let url = self.url(&["tagManagement", "Value", name]);
        let body = json!({ "value": value });
        let (status, reply) = self
            .call("write_value", Method::PUT, url, Some(&body), true)
            .await?;
        let result = write_result(status, &reply);
        result.map_err(|e| self.scrub_err(e))
    }

    /// `PUT tagManagement/Values` with `[{"variableName":N,"value":V}]`; the
    /// reply's rows are matched to the writes by name, never by position.
    async fn write_values(
        &self,
        writes: &[(String, TagType, Value)],
    ) -> Vec<Result<(), StationError>> {
        if writes.is_empty() {
            return Vec::new();
        }
        // One write, or a station without the batch route: the single-tag
        // route, which every V7 REST version has (WINCC-DIALECTS.md §1.3).
        let unsupported = writes
            .iter()
            .any(|(name, _, _)| self.unsupported_write(name).is_some());
        if writes.len() == 1 || unsupported || self.no_batch_write.load(Ordering::Relaxed) {
            return super::write_each(self, writes).await;
        }
        let body = Value::Array(
            writes
                .iter()
                .map(|(name, _, value)| json!({ "variableName": name, "value": value }))
                .collect(),
        );
        let url = self.url(&["tagManagement", "Values"]);
        let reply = match self
            .call("write_values", Method::PUT, url, Some(&body), true)
            .await
        {
            Ok((status, _)) if status.as_u16() == 404 || status.as_u16() == 405 => {
                self.no_batch_write.store(true, Ordering::Relaxed);
                tracing::warn!(
                    status = status.as_u16(),
                    "the station has no batch write (PUT tagManagement/Values); writing one tag at a time"
                );
                return super::write_each(self, writes).await;
            }
            other => other.and_then(|(status, bytes)| reply::batch_write_results(status, &bytes)),
        };
        match reply {
            Ok(rows) => writes
                .iter()
                .map(|(name, _, _)| match rows.get(name.as_str()) {
                    Some(r) => r.clone().map_err(|e| self.scrub_err(e)),
                    None => Err(StationError::Refused {
                        code: "missing".into(),
                        message: format!("the station's reply has no row for {name:?}"),
                    }),
                })
                .collect(),
            Err(e) => {
                let e = self.scrub_err(e);
                writes.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError> {
        if self.alarm_filter.is_empty() {
            if !self.warned_no_filter.swap(true, Ordering::Relaxed) {
                tracing::warn!("wincc-v7 alarms need [alarms] filter (a REST filter configured in WinCC); reporting no alarms");
            }
            return Ok(Vec::new());
        }
        let url = self.url(&["alarmLogging", "MessageList", &self.alarm_filter]);
        let (_, body) = self.call("alarms", Method::GET, url, None, false).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let rows = alarm_rows(&body).map_err(|e| {
            self.debug_reply("alarms", &body);
            self.scrub_err(e)
        })?;
        if let Some(first) = rows.bad.first() {
            tracing::warn!(count = rows.bad.len(), first = %self.scrub(first.clone()), "skipping messages with no number, id or name");
        }
        Ok(self.settle_alarms(rows))
    }

    async fn logout(&self) {}
}
