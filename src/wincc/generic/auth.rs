//! Sessions and logins of the generic client: the bearer token or cookie
//! session with its generation (so that a 401 discards only the session it
//! was sent with, and concurrent requests share one re-login), and the
//! login gate that holds refused logins back for 5 s, growing to 60 s.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{busy_or_error, to_body, GenericClient, LOGIN_BACKOFF_MAX, LOGIN_BACKOFF_MIN};
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

pub(super) struct LoginGate {
    pub(super) closed_until: Option<Instant>,
    pub(super) backoff: ExponentialBackoff,
    pub(super) last_refusal: String,
}

/// What a request carries for auth, and which session it belongs to.
pub(super) struct Ticket {
    pub(super) bearer: Option<String>,
    pub(super) generation: u64,
}

pub(super) fn login_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(LOGIN_BACKOFF_MIN)
        .with_max_delay(LOGIN_BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

impl GenericClient {
    /// Fails fast while a refused login's backoff is running.
    pub(super) fn check_gate(&self) -> Result<(), StationError> {
        let g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        match g.closed_until {
            Some(until) if until > Instant::now() => Err(StationError::Auth(format!(
                "{}; next login attempt in {:.0} s",
                g.last_refusal,
                (until - Instant::now()).as_secs_f64().ceil()
            ))),
            _ => Ok(()),
        }
    }

    pub(super) fn refused(&self, why: String) -> StationError {
        let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let wait = g.backoff.next().unwrap_or(LOGIN_BACKOFF_MAX);
        g.closed_until = Some(Instant::now() + wait);
        g.last_refusal = self.scrub(why);
        tracing::warn!(user = %self.username, retry_in_s = wait.as_secs(), reason = %g.last_refusal, "station refused the login");
        metrics::counter!("wincc_gateway_station_login_refusals_total").increment(1);
        StationError::Auth(format!(
            "{}; next login attempt in {} s",
            g.last_refusal,
            wait.as_secs()
        ))
    }

    pub(super) fn login_accepted(&self) {
        let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        g.closed_until = None;
        g.backoff = login_backoff();
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
                self.check_gate()?;
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
                    self.check_gate()?;
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
        let v = parse::json(&bytes).map_err(|e| self.scrub_err(e))?;
        let o = v.as_object();
        let token =
            o.and_then(|o| parse::get_any_str(o, &["token", "access_token", "accessToken"]));
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
        self.login_accepted();
        tracing::info!(user = %self.username, "logged in to the station");
        Ok((token, expires_in))
    }
}
