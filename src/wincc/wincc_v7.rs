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
//! continuation point; write `PUT tagManagement/Value/{name}` `{"value":V}`
//! (non-zero `errorcode` = refused); alarms `GET
//! alarmLogging/MessageList/{[alarms] filter}`.
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

pub use reply::{convert, type_from_code, values, variable_page, write_result, VariablePage};

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
    /// Tag types learnt from browsing, for converting values.
    types: RwLock<HashMap<String, TagType>>,
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
}

#[async_trait]
impl Station for WinccV7Client {
    async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError> {
        // Bounded: at most max_tags tags, and a station that never stops
        // paging is malformed.
        let mut collector = TagCollector::new(self.max_tags);
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
            let page = variable_page(&body).map_err(|e| self.scrub_err(e))?;
            skipped += page.skipped.len();
            for name in page.skipped.iter().take(5) {
                tracing::warn!(tag = %self.scrub(name.clone()), "skipping a variable with an unknown type or shape");
            }
            let more = collector.page(page.tags)?;
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
                        tracing::warn!(skipped, "variables skipped while browsing the station");
                    }
                    let all = collector.finish();
                    let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
                    types.clear();
                    types.extend(all.iter().map(|t| (t.name.clone(), t.ty)));
                    return Ok(all);
                }
            }
        }
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
        let (mut readings, missing) = parsed.map_err(|e| self.scrub_err(e.counted()))?;
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
        if writes.len() == 1 || self.no_batch_write.load(Ordering::Relaxed) {
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
        let (alarms, bad) = parse::alarms(&body).map_err(|e| self.scrub_err(e))?;
        if let Some(first) = bad.first() {
            tracing::warn!(count = bad.len(), first = %self.scrub(first.clone()), "skipping alarms that do not parse");
        }
        Ok(alarms)
    }

    async fn logout(&self) {}
}
