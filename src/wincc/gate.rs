//! The login gate every station client keeps: after the station refused
//! the credentials, calls fail fast (no request reaches the station) for
//! 5 s, growing to 60 s while refusals go on, so a wrong password cannot
//! hammer the station or lock the account. An accepted login opens it.
//!
//! A station that accepts the login but then rejects the new session on
//! every request (401) closes the gate the same way
//! ([`LoginGate::session_rejected`]): at most one new login per pause,
//! whoever asks. The pause only starts over at 5 s once a request made
//! with a session succeeded ([`LoginGate::session_works`]).

use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use super::StationError;

/// First pause after a refused login.
pub const LOGIN_BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Longest pause between login attempts while they are refused.
pub const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(60);

struct State {
    closed_until: Option<Instant>,
    backoff: ExponentialBackoff,
    last_refusal: String,
    /// Refusals and rejected sessions since a request last worked.
    failures: u32,
}

/// See the module docs. Cheap to check; one per client.
pub struct LoginGate {
    state: Mutex<State>,
    /// What waits while the gate is closed ("login attempt"), for messages.
    attempt: &'static str,
}

fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(LOGIN_BACKOFF_MIN)
        .with_max_delay(LOGIN_BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

impl Default for LoginGate {
    fn default() -> Self {
        LoginGate {
            state: Mutex::new(State {
                closed_until: None,
                backoff: backoff(),
                last_refusal: String::new(),
                failures: 0,
            }),
            attempt: "login attempt",
        }
    }
}

impl LoginGate {
    /// A gate for refusals other than a login's (e.g. a missing access
    /// right): same pauses, messages saying "next `attempt` in N s".
    pub fn for_attempts(attempt: &'static str) -> Self {
        LoginGate {
            attempt,
            ..LoginGate::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` with the last refusal while the gate is closed.
    pub fn check(&self) -> Result<(), StationError> {
        let g = self.lock();
        match g.closed_until {
            Some(until) if until > Instant::now() => Err(StationError::Auth(format!(
                "{}; next {} in {:.0} s",
                g.last_refusal,
                self.attempt,
                (until - Instant::now()).as_secs_f64().ceil()
            ))),
            _ => Ok(()),
        }
    }

    /// The station refused `user`'s login for `why` (already free of
    /// secrets): closes the gate for the next pause, logs and counts it.
    pub fn refuse(&self, user: &str, why: String) -> StationError {
        let mut g = self.lock();
        let wait = g.backoff.next().unwrap_or(LOGIN_BACKOFF_MAX);
        g.closed_until = Some(Instant::now() + wait);
        g.last_refusal = why;
        g.failures += 1;
        tracing::warn!(user = %user, retry_in_s = wait.as_secs(), reason = %g.last_refusal, "station refused the {}", self.attempt);
        metrics::counter!("wincc_gateway_station_login_refusals_total").increment(1);
        StationError::Auth(format!(
            "{}; next {} in {} s",
            g.last_refusal,
            self.attempt,
            wait.as_secs()
        ))
    }

    /// A login was accepted: open the gate. The pause starts at 5 s again
    /// only once the session works ([`Self::session_works`]).
    pub fn accept(&self) {
        let mut g = self.lock();
        if g.closed_until.is_some() {
            g.closed_until = None;
        }
    }

    /// A freshly opened session was rejected (401 right after the login):
    /// closes the gate for the next pause, as a refused login does.
    pub fn session_rejected(&self, user: &str, why: String) -> StationError {
        let mut g = self.lock();
        let wait = g.backoff.next().unwrap_or(LOGIN_BACKOFF_MAX);
        g.closed_until = Some(Instant::now() + wait);
        g.last_refusal = why;
        g.failures += 1;
        tracing::warn!(user = %user, retry_in_s = wait.as_secs(), reason = %g.last_refusal, "station rejected a freshly opened session; no new login before the pause ends");
        metrics::counter!("wincc_gateway_station_login_refusals_total").increment(1);
        StationError::Auth(format!(
            "{}; next login attempt in {} s",
            g.last_refusal,
            wait.as_secs()
        ))
    }

    /// A request made with a session succeeded: the next refusal pauses
    /// 5 s again.
    pub fn session_works(&self) {
        let mut g = self.lock();
        if g.failures > 0 {
            g.failures = 0;
            g.backoff = backoff();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_close_the_gate_for_growing_pauses_until_a_login_is_accepted() {
        let g = LoginGate::default();
        assert!(g.check().is_ok());
        let e = g.refuse("op", "login as \"op\" refused (HTTP 401)".into());
        assert!(e.to_string().contains("next login attempt in 5 s"), "{e}");
        assert!(g.check().unwrap_err().to_string().contains("refused"));
        let e = g.refuse("op", "again".into());
        assert!(e.to_string().contains("in 10 s"), "{e}");
        for _ in 0..10 {
            g.refuse("op", "again".into());
        }
        let e = g.refuse("op", "again".into());
        assert!(e.to_string().contains("in 60 s"), "capped: {e}");
        g.accept();
        assert!(g.check().is_ok());
        let e = g.session_rejected("op", "fresh session rejected".into());
        assert!(
            e.to_string().contains("in 60 s"),
            "an accepted login alone does not reset the pause: {e}"
        );
        g.accept();
        g.session_works();
        let e = g.refuse("op", "after an accepted login".into());
        assert!(
            e.to_string().contains("in 5 s"),
            "the pause starts over: {e}"
        );
    }
}
