//! The session side of the station transport: the session with its
//! generation and renewal, the [`Login`] a dialect implements, and the
//! auth policy of every call (module docs of `wincc::transport`): one new
//! login and one retry when a session that worked is refused; the login
//! gate closed and the session ended when a freshly opened one is.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::Transport;
use crate::config::AuthMode;
use crate::wincc::StationError;

/// How a dialect's session is kept fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Log in again once 90 % of the session's lifetime has passed.
    Relogin,
    /// Call [`Login::extend`] once two thirds of the lifetime have passed;
    /// the session counts as gone at the end of its lifetime.
    Extend,
}

/// How a dialect logs in, extends and ends a session (only called in the
/// session modes, `session` and `cookie`).
#[async_trait]
pub(crate) trait Login: Send + Sync {
    /// Logs in: the token (empty in cookie mode) and its lifetime. A refusal
    /// goes through [`Transport::refused`].
    async fn login(&self) -> Result<(String, Option<Duration>), StationError>;

    /// Extends the session of `token` (only with [`Renewal::Extend`]); an
    /// `Auth` error makes the transport log in again instead.
    async fn extend(&self, token: &str) -> Result<(String, Option<Duration>), StationError> {
        let _ = token;
        Err(StationError::Auth("the session cannot be extended".into()))
    }

    /// Ends the session `ticket` belongs to: `Ok(true)` when the station
    /// confirmed it.
    async fn end_session(&self, ticket: &Ticket) -> Result<bool, StationError>;
}

/// For dialects without sessions (`basic` or `none` only).
pub(crate) struct NoLogin;

#[async_trait]
impl Login for NoLogin {
    async fn login(&self) -> Result<(String, Option<Duration>), StationError> {
        Err(StationError::Auth("this dialect has no login".into()))
    }

    async fn end_session(&self, _: &Ticket) -> Result<bool, StationError> {
        Ok(true)
    }
}

/// What a request carries for auth, and which session it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub(crate) bearer: Option<String>,
    pub(crate) generation: u64,
}

/// How one attempt of a call ended, before the auth policy.
pub(crate) enum Attempt<T> {
    Done(T),
    /// The station refused the credentials or the session (its words,
    /// `HTTP 401` where it said nothing more).
    AuthFailed(String),
}

#[derive(Default)]
pub(super) struct Session {
    /// The bearer token (session mode) or an empty marker (cookie mode).
    token: Option<String>,
    /// Bumped on every login, so an auth failure only discards the session
    /// it was sent with, and concurrent requests share one re-login.
    generation: u64,
    expires_at: Option<Instant>,
    refresh_at: Option<Instant>,
}

/// Longest session lifetime taken at its word (a runtime handing out
/// tokens for years must not overflow a clock): about 30 years.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

impl Session {
    fn set_expiry(&mut self, lifetime: Option<Duration>, renewal: Renewal) {
        let now = Instant::now();
        let lifetime = lifetime.map(|l| l.min(MAX_LIFETIME));
        let at = |share: f64| lifetime.and_then(|l| now.checked_add(l.mul_f64(share)));
        match renewal {
            // Renew a little before the station's expiry.
            Renewal::Relogin => (self.expires_at, self.refresh_at) = (at(0.9), None),
            // Extend once two thirds of the lifetime have passed, whatever
            // its length (75 minutes and years were both seen).
            Renewal::Extend => (self.expires_at, self.refresh_at) = (at(1.0), at(2.0 / 3.0)),
        }
    }
}

impl Transport {
    /// A call with the auth policy (module docs): `attempt` sends the
    /// request with the ticket it is given and says how it ended. Errors
    /// are counted in `wincc_gateway_station_errors_total`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        login: &dyn Login,
        endpoint: &'static str,
        mut attempt: F,
    ) -> Result<T, StationError>
    where
        F: FnMut(Ticket) -> Fut,
        Fut: Future<Output = Result<Attempt<T>, StationError>>,
    {
        let result = async {
            let mut ticket = self.ticket(login, None).await?;
            let mut relogged = false;
            loop {
                let why = match attempt(ticket.clone()).await? {
                    Attempt::Done(v) => {
                        self.proved(&ticket);
                        return Ok(v);
                    }
                    Attempt::AuthFailed(why) => why,
                };
                if !self.has_session() {
                    return Err(self.unauthorized(&why));
                }
                // A session that worked has expired: one new login.
                if !relogged && ticket.generation <= self.proven.load(Ordering::Relaxed) {
                    tracing::info!(endpoint, reason = %why, "station session rejected; logging in again");
                    relogged = true;
                    ticket = self.ticket(login, Some(ticket.generation)).await?;
                    continue;
                }
                // A session that never worked: the station takes the login
                // but not the session. End it, and log in again only after
                // the login pause (whoever asks).
                let e = self.gate.session_rejected(
                    &self.username,
                    self.scrub(format!(
                        "the station rejected a freshly opened session on {endpoint} ({why})"
                    )),
                );
                self.logout(login).await;
                return Err(e);
            }
        }
        .await;
        result.map_err(StationError::counted)
    }

    /// A request made with `ticket` succeeded: its session works.
    fn proved(&self, ticket: &Ticket) {
        if self.has_session() {
            self.proven.fetch_max(ticket.generation, Ordering::Relaxed);
            self.gate.session_works();
        }
    }

    /// An auth failure without a session: the credentials (or their
    /// absence) were refused, and the gate closes.
    fn unauthorized(&self, why: &str) -> StationError {
        let why = match self.auth {
            AuthMode::None => format!(
                "the station requires authentication ({why}); {}",
                self.auth_hint
            ),
            _ => format!("basic auth as {:?} refused ({why})", self.username),
        };
        self.refused(why)
    }

    /// The auth for the next request. In the session modes this logs in
    /// when there is no session or it has expired, extends it when due
    /// ([`Renewal::Extend`]), and drops the session `discard` names first.
    pub(crate) async fn ticket(
        &self,
        login: &dyn Login,
        discard: Option<u64>,
    ) -> Result<Ticket, StationError> {
        if !self.has_session() {
            self.gate.check()?;
            return Ok(Ticket {
                bearer: None,
                generation: 0,
            });
        }
        let mut s = self.session.lock().await;
        if discard == Some(s.generation) {
            s.token = None;
        }
        let now = Instant::now();
        if s.expires_at.is_some_and(|t| now >= t) {
            s.token = None;
        }
        if let (Some(token), Some(at)) = (s.token.clone(), s.refresh_at) {
            if now >= at {
                match login.extend(&token).await {
                    Ok((t, lifetime)) => {
                        tracing::debug!("station session extended");
                        self.remember(&t);
                        s.token = Some(if t.is_empty() { token } else { t });
                        s.set_expiry(lifetime, self.renewal);
                    }
                    Err(StationError::Auth(why)) => {
                        tracing::info!(reason = %why, "extending the session was refused; logging in again");
                        s.token = None;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if s.token.is_none() {
            self.gate.check()?;
            let (token, lifetime) = login.login().await?;
            self.remember(&token);
            self.gate.accept();
            tracing::info!(user = %self.username, "logged in to the station");
            metrics::counter!("wincc_gateway_station_logins_total").increment(1);
            s.generation += 1;
            s.token = Some(token);
            s.set_expiry(lifetime, self.renewal);
        }
        Ok(Ticket {
            bearer: s.token.clone().filter(|t| !t.is_empty()),
            generation: s.generation,
        })
    }

    /// Ends the session, if there is one (errors are logged, not returned).
    pub(crate) async fn logout(&self, login: &dyn Login) {
        if !self.has_session() {
            return;
        }
        let mut s = self.session.lock().await;
        let Some(token) = s.token.take() else { return };
        s.expires_at = None;
        s.refresh_at = None;
        let ticket = Ticket {
            bearer: Some(token).filter(|t| !t.is_empty()),
            generation: s.generation,
        };
        match login.end_session(&ticket).await {
            Ok(true) => tracing::info!("logged out of the station"),
            Ok(false) => tracing::warn!("the station did not confirm the logout"),
            Err(e) => tracing::warn!(error = %e, "logout failed"),
        }
    }

    /// Keeps the session alive: extends it when due (see [`Self::ticket`]);
    /// a failure shows again, and is handled, at the next real request.
    pub(crate) async fn keep_session(&self, login: &dyn Login) {
        if let Err(e) = self.ticket(login, None).await {
            tracing::debug!(error = %e, "could not extend the station session");
        }
    }
}
