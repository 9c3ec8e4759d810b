//! The `generic` dialect (contract §5): its URLs, request bodies and reply
//! parsing. Sending, logins, the auth and busy policies and the scrubbing
//! of secrets are the station transport's (`wincc::transport`); what they
//! mean for this dialect:
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
//! the shared limiter); the request is retried once when the pause is
//! no longer than the request timeout, otherwise the caller gets
//! [`StationError::Busy`].
//!
//! The password never appears in a log line or an error: it is only ever
//! put in a request, and every text that comes from the station is
//! scrubbed of it before it is used in an error.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::{Method, Url};
use serde_json::{json, Value};

mod auth;
mod fast;
mod reply;

use super::transport::{self, to_body, Options, Renewal, Transport};
use super::{parse, ConnectError, Station, StationError};
use crate::config::WinccSettings;
use crate::model::{Alarm, Reading, TagInfo, TagType};

/// Page size for `GET /tags`.
pub const TAG_PAGE: usize = 1000;

pub use super::gate::{LOGIN_BACKOFF_MAX, LOGIN_BACKOFF_MIN};

/// A client for the `generic` REST dialect. Cheap to share (`Arc`).
pub struct GenericClient {
    t: Transport,
}

impl GenericClient {
    /// Builds the client (with its own limiter from `settings.rate_limit`).
    /// Makes no request: it logs in on its first call.
    pub fn new(settings: &WinccSettings) -> Result<Self, ConnectError> {
        let options = Options {
            what: "",
            keep_query: false,
            own_redirects: false,
            header: None,
            auth_check: |_| Ok(()),
            renewal: Renewal::Relogin,
            auth_hint: "set wincc.auth",
        };
        Ok(GenericClient {
            t: Transport::new(settings, options)?,
        })
    }

    /// The URL of one tag's value (see [`transport::addressable`]).
    fn tag_url(&self, name: &str) -> Result<Url, StationError> {
        Ok(self
            .t
            .url(&["tags", transport::addressable(name)?, "value"]))
    }
}

/// The body of `POST /tags/values`, serialised without copying the names.
#[derive(serde::Serialize)]
struct ReadRequest<'a> {
    tags: &'a [Arc<str>],
}

#[async_trait]
impl Station for GenericClient {
    async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError> {
        // Bounded: at most max_tags tags, and a station that never stops
        // paging is malformed.
        let mut all = self.t.collector();
        let mut offset = 0usize;
        let mut skipped = 0usize;
        loop {
            let mut url = self.t.url(&["tags"]);
            url.query_pairs_mut()
                .append_pair("offset", &offset.to_string())
                .append_pair("limit", &TAG_PAGE.to_string());
            let (_, reply) = self
                .t
                .rest(self, "list_tags", Method::GET, url, None, false)
                .await?;
            let page = reply::tag_page(&reply).map_err(|e| self.t.scrub_err(e))?;
            skipped += page.skipped.len();
            static WARN: super::RepeatWarn = super::RepeatWarn::new();
            for name in page.skipped.iter() {
                let name = self.t.scrub(name.clone());
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
        let (_, reply) = self
            .t
            .rest(
                self,
                "read_values",
                Method::POST,
                self.t.url(&["tags", "values"]),
                Some(&body),
                false,
            )
            .await?;
        let received = chrono::Utc::now();
        self.t.readings(reply::values(&reply, names, received))
    }

    async fn write_value(
        &self,
        name: &str,
        _ty: TagType,
        value: &Value,
    ) -> Result<(), StationError> {
        let body = to_body(&json!({ "value": value }));
        let url = self.tag_url(name)?;
        let (status, reply) = self
            .t
            .rest(self, "write_value", Method::PUT, url, Some(&body), true)
            .await?;
        let result = if status.is_success() {
            reply::write_result(&reply)
        } else {
            let (code, message) = parse::error_body(&reply)
                .unwrap_or_else(|| (status.as_u16().to_string(), String::new()));
            Err(StationError::Refused {
                code: if code.is_empty() {
                    status.as_u16().to_string()
                } else {
                    code
                },
                message: if message.is_empty() {
                    status.canonical_reason().unwrap_or("refused").to_string()
                } else {
                    message
                },
            })
        };
        result.map_err(|e| self.t.scrub_err(e))
    }

    async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError> {
        let (_, reply) = self
            .t
            .rest(
                self,
                "alarms",
                Method::GET,
                self.t.url(&["alarms", "current"]),
                None,
                false,
            )
            .await?;
        let (alarms, bad) = reply::alarms(&reply).map_err(|e| self.t.scrub_err(e))?;
        static WARN: super::RepeatWarn = super::RepeatWarn::new();
        for problem in &bad {
            let problem = self.t.scrub(problem.clone());
            if let Some(repeats) = WARN.check(&problem) {
                tracing::warn!(count = bad.len(), repeats_since_last_logged = repeats, problem = %problem, "skipping alarms that do not parse (logged again at most every 10 minutes)");
            }
        }
        Ok(alarms)
    }

    async fn logout(&self) {
        self.t.logout(self).await;
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
            c.t.url(&["tags", "values"]).as_str(),
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
        assert_eq!(root.t.url(&["tags"]).as_str(), "http://127.0.0.1:9/tags");
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
