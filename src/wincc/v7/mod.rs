//! The `wincc-v7` dialect: the WinCC V7.5 SP2 / V8.x REST service under
//! `https://host:34568/WinCCRestService` (WINCC-DIALECTS.md §1).
//!
//! This module holds the dialect's URLs, bodies and reply handling; the
//! station transport (`wincc::transport`) sends, paces and scrubs. HTTP
//! Basic on every request (there is no login); a 401 closes the gate for
//! 5 s growing to 60 s, like a refused login of the generic dialect.
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

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use super::parse;
use super::transport::{self, to_body, NoLogin, Options, Renewal, Transport};
use super::{ConnectError, Station, StationError};
use crate::config::{AuthMode, Settings};
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
    t: Transport,
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
}

/// The REST service has no login: `basic` or `none` only.
fn auth_check(auth: AuthMode) -> Result<(), ConnectError> {
    match auth {
        AuthMode::None | AuthMode::Basic => Ok(()),
        other => Err(ConnectError::Setting {
            key: "wincc.auth",
            why: format!(
                "the wincc-v7 REST service has no login; use \"basic\" instead of {:?}",
                other.as_str()
            ),
        }),
    }
}

impl WinccV7Client {
    /// Builds the client with its own limiter from `wincc.rate_limit`.
    pub fn new(settings: &Settings) -> Result<Self, ConnectError> {
        let w = &settings.wincc;
        let options = Options {
            what: "",
            keep_query: false,
            own_redirects: false,
            header: None,
            auth_check,
            renewal: Renewal::Relogin,
            auth_hint: "set wincc.auth = \"basic\"",
        };
        Ok(WinccV7Client {
            t: Transport::new(w, options)?,
            alarm_filter: settings.alarms.filter.trim().to_string(),
            warned_no_filter: AtomicBool::new(false),
            no_batch_write: AtomicBool::new(false),
            types: RwLock::new(HashMap::new()),
            warned_unsupported: Default::default(),
            first_seen: Default::default(),
            warned_states: Default::default(),
        })
    }

    /// Every page of `GET tagManagement/Variables`: the typed tags and
    /// the named rows without a type. Bounded like every dialect's browse
    /// (`wincc/browse.rs`): at most `max_tags` rows, typed or not, and a
    /// station that never stops paging is malformed.
    async fn browse_pages(&self) -> Result<Browsed, StationError> {
        let mut collector = self.t.collector::<BrowseRow>();
        let mut skipped = 0usize;
        let mut continuation: Option<String> = None;
        loop {
            let mut url = self.t.url(&["tagManagement", "Variables"]);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("itemLimit", &BROWSE_PAGE.to_string());
                if let Some(c) = &continuation {
                    q.append_pair("continuationPoint", c);
                }
            }
            let (_, body) = self
                .t
                .rest(&NoLogin, "list_tags", Method::GET, url, None, false)
                .await?;
            let page = variable_page(&body).map_err(|e| {
                self.t.debug_reply("list_tags", &body);
                self.t.scrub_err(e)
            })?;
            skipped += page.skipped.len();
            for row in page.skipped.iter().take(5) {
                tracing::warn!(row = %self.t.scrub(row.clone()), "skipping a variable row that is not a named variable");
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
            let body = to_body(&json!({ "variableNames": names }));
            let url = self.t.url(&["tagManagement", "Values"]);
            let (_, reply) = self
                .t
                .rest(&NoLogin, "list_tags", Method::POST, url, Some(&body), false)
                .await?;
            let types = value_types(&reply).map_err(|e| self.t.scrub_err(e))?;
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
                first = %self.t.scrub(first.clone()),
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
                    tracing::warn!(tag = %self.t.scrub(t.name.clone()), code, "unsupported WinCC data type {code}: the tag is reported bad and never written");
                }
            }
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
                    tracing::warn!(state = %self.t.scrub(w), "unknown WinCC alarm state word; the alarm counts as raised");
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
        let body = to_body(&json!({ "variableNames": names }));
        let url = self.t.url(&["tagManagement", "Values"]);
        let (_, reply) = self
            .t
            .rest(
                &NoLogin,
                "read_values",
                Method::POST,
                url,
                Some(&body),
                false,
            )
            .await?;
        let received = chrono::Utc::now();
        let parsed = {
            let types = self.types.read().unwrap_or_else(|e| e.into_inner());
            values(&reply, names, &types, received)
        };
        let (mut readings, missing) = parsed.map_err(|e| {
            self.t.debug_reply("read_values", &reply);
            self.t.scrub_err(e.counted())
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
        parse::scrub_tag_errors(&mut readings, |m| self.t.scrub(m));
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
        let url = self
            .t
            .url(&["tagManagement", "Value", transport::addressable(name)?]);
        let body = to_body(&json!({ "value": value }));
        let (status, reply) = self
            .t
            .rest(&NoLogin, "write_value", Method::PUT, url, Some(&body), true)
            .await?;
        let result = write_result(status, &reply);
        result.map_err(|e| self.t.scrub_err(e))
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
        let body = to_body(&Value::Array(
            writes
                .iter()
                .map(|(name, _, value)| json!({ "variableName": name, "value": value }))
                .collect(),
        ));
        let url = self.t.url(&["tagManagement", "Values"]);
        let reply = match self
            .t
            .rest(
                &NoLogin,
                "write_values",
                Method::PUT,
                url,
                Some(&body),
                true,
            )
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
        transport::each_write(&self.t, writes, reply, |rows, name| match rows.get(name) {
            Some(r) => r.clone(),
            None => Err(StationError::Refused {
                code: "missing".into(),
                message: format!("the station's reply has no row for {name:?}"),
            }),
        })
    }

    async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError> {
        if self.alarm_filter.is_empty() {
            if !self.warned_no_filter.swap(true, Ordering::Relaxed) {
                tracing::warn!("wincc-v7 alarms need [alarms] filter (a REST filter configured in WinCC); reporting no alarms");
            }
            return Ok(Vec::new());
        }
        let url = self
            .t
            .url(&["alarmLogging", "MessageList", &self.alarm_filter]);
        let (_, body) = self
            .t
            .rest(&NoLogin, "alarms", Method::GET, url, None, false)
            .await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let rows = alarm_rows(&body).map_err(|e| {
            self.t.debug_reply("alarms", &body);
            self.t.scrub_err(e)
        })?;
        if let Some(first) = rows.bad.first() {
            tracing::warn!(count = rows.bad.len(), first = %self.t.scrub(first.clone()), "skipping messages with no number, id or name");
        }
        Ok(self.settle_alarms(rows))
    }

    async fn logout(&self) {}
}
