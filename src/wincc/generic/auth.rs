//! Sessions and logins of the generic client: the bearer token or cookie
//! session with its generation (so that a 401 discards only the session it
//! was sent with, and concurrent requests share one re-login), and the
//! use of the login gate (`wincc::gate`) that holds refused logins back.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{busy_or_error, to_body, GenericClient};
use crate::config::{AuthMode, Secret};
use crate::wincc::{parse, StationError};

#[derive(Default)]
pub(super) struct Session {
    /// The bearer token (session mode) or an empty marker (cookie mode).
    pub(super) token: Option<String>,
    /// Bumped on every login, so a 401 only discards the session it was sent with.
    pub(super) generation: u64,
    pub(super) expires_at: Option<Instant>,
}

/// What a request carries for auth, and which session it belongs to.
pub(super) struct Ticket {
    pub(super) bearer: Option<String>,
    pub(super) generation: u64,
}

impl GenericClient {
    /// The station refused the login: the gate closes (see `wincc::gate`).
    pub(super) fn refused(&self, why: String) -> StationError {
        self.gate.refuse(&self.username, self.scrub(why))
    }

    /// The auth for the next request. In session/cookie mode this logs in
    /// when there is no session, when it is about to expire, or when
    /// `discard` names the generation a 401 was received with.
    pub(super) async fn ticket(&self, discard: Option<u64>) -> Result<Ticket, StationError> {
        match self.auth {
            AuthMode::None => Ok(Ticket {
                bearer: None,
                generation: 0,
            }),
            AuthMode::Basic => {
                self.gate.check()?;
                Ok(Ticket {
                    bearer: None,
                    generation: 0,
                })
            }
            AuthMode::Session | AuthMode::Cookie => {
                let mut s = self.session.lock().await;
                if discard == Some(s.generation) {
                    s.token = None;
                }
                let expired = s.expires_at.is_some_and(|t| Instant::now() >= t);
                if s.token.is_none() || expired {
                    self.gate.check()?;
                    let (token, expires_in) = self.login().await?;
                    s.generation += 1;
                    s.token = Some(token);
                    // Renew a little before the station's expiry.
                    s.expires_at = expires_in.map(|d| Instant::now() + d.mul_f64(0.9));
                }
                Ok(Ticket {
                    bearer: (self.auth == AuthMode::Session)
                        .then(|| s.token.clone())
                        .flatten(),
                    generation: s.generation,
                })
            }
        }
    }

    /// POST /auth/login. Returns the token (empty in cookie mode) and its lifetime.
    pub(super) async fn login(&self) -> Result<(String, Option<Duration>), StationError> {
        let pw = self
            .password
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        let body = to_body(&json!({ "username": self.username, "password": pw }));
        let url = self.url(&["auth", "login"]);
        let (status, headers, bytes) = self
            .send("login", Method::POST, url, Some(&body), None)
            .await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let msg = parse::error_body(&bytes)
                .map(|(c, m)| format!("{c} {m}").trim().to_string())
                .unwrap_or_default();
            return Err(self.refused(format!(
                "login as {:?} refused (HTTP {}) {msg}",
                self.username,
                status.as_u16()
            )));
        }
        if let Some(e) = busy_or_error(status, &headers, &bytes, &self.limiter) {
            return Err(self.scrub_err(e));
        }
        // The session's credentials are secrets from now on: a station that
        // echoes them in an error text must not leak them.
        self.issued.remember_cookies(&headers);
        let v = parse::json(&bytes).map_err(|e| self.scrub_err(e))?;
        let o = v.as_object();
        let token =
            o.and_then(|o| parse::get_any_str(o, &["token", "access_token", "accessToken"]));
        if let Some(t) = &token {
            self.issued.remember(t);
        }
        let expires_in = o
            .and_then(|o| parse::get_ci(o, "expiresIn"))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(1e9)));
        let token = match (self.auth, token) {
            (AuthMode::Session, Some(t)) if !t.is_empty() => t,
            (AuthMode::Session, _) => {
                return Err(StationError::Malformed(
                    "the login reply has no token".into(),
                ))
            }
            _ => String::new(),
        };
        self.gate.accept();
        tracing::info!(user = %self.username, "logged in to the station");
        Ok((token, expires_in))
    }
}
