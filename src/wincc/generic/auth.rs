//! Logins of the generic client (`POST /auth/login`, `POST /auth/logout`):
//! the bearer token (session mode) or the `session` cookie (cookie mode,
//! kept by reqwest's cookie store). The session, its generation and the
//! login gate live in the transport (`wincc::transport`).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::GenericClient;
use crate::config::AuthMode;
use crate::wincc::transport::{to_body, Login, Request, Ticket};
use crate::wincc::{parse, StationError};

#[async_trait]
impl Login for GenericClient {
    /// POST /auth/login. Returns the token (empty in cookie mode) and its lifetime.
    async fn login(&self) -> Result<(String, Option<Duration>), StationError> {
        let t = &self.t;
        let body = to_body(&json!({ "username": t.username(), "password": t.password() }));
        let req = Request {
            method: Method::POST,
            url: t.url(&["auth", "login"]),
            body: Some(&body),
            bearer: None,
        };
        let raw = t.send("login", &req).await?;
        if raw.status == StatusCode::UNAUTHORIZED || raw.status == StatusCode::FORBIDDEN {
            let msg = parse::error_body(&raw.body)
                .map(|(c, m)| format!("{c} {m}").trim().to_string())
                .unwrap_or_default();
            return Err(t.refused(format!(
                "login as {:?} refused (HTTP {}) {msg}",
                t.username(),
                raw.status.as_u16()
            )));
        }
        if !raw.status.is_success() {
            return Err(t.http_error(raw.status, &raw.body));
        }
        let v = parse::json(&raw.body).map_err(|e| t.scrub_err(e))?;
        let o = v.as_object();
        let token =
            o.and_then(|o| parse::get_any_str(o, &["token", "access_token", "accessToken"]));
        if let Some(token) = &token {
            // A secret from now on, even if the reply is refused below.
            t.remember(token);
        }
        let expires_in = o
            .and_then(|o| parse::get_ci(o, "expiresIn"))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(1e9)));
        let token = match (t.auth(), token) {
            (AuthMode::Session, Some(token)) if !token.is_empty() => token,
            (AuthMode::Session, _) => {
                return Err(StationError::Malformed(
                    "the login reply has no token".into(),
                ))
            }
            _ => String::new(),
        };
        Ok((token, expires_in))
    }

    /// POST /auth/logout with the session's token or cookie.
    async fn end_session(&self, ticket: &Ticket) -> Result<bool, StationError> {
        let req = Request {
            method: Method::POST,
            url: self.t.url(&["auth", "logout"]),
            body: None,
            bearer: ticket.bearer.as_deref(),
        };
        let raw = self.t.send("logout", &req).await?;
        if !raw.status.is_success() {
            return Err(self.t.http_error(raw.status, &raw.body));
        }
        Ok(true)
    }
}
