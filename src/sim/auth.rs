//! Users and login sessions of the simulated station, shared by every
//! dialect: password checks, tokens with a time to live, logout, and the
//! "expire every token now" fault.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use subtle::ConstantTimeEq;

/// Known users and live session tokens.
#[derive(Debug)]
pub struct Sessions {
    users: Vec<(String, String)>,
    ttl: Duration,
    tokens: HashMap<String, Session>,
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    expires: Instant,
}

/// Why a request is not authenticated (the 401 message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Expired,
    BadCredentials,
}

impl AuthFailure {
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "authentication required",
            AuthFailure::Expired => "session token expired or invalid; log in again",
            AuthFailure::BadCredentials => "invalid username or password",
        }
    }
}

impl Sessions {
    pub fn new(users: Vec<(String, String)>, ttl: Duration) -> Self {
        Sessions {
            users,
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// Token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True when the user exists and the password matches (constant time).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let mut ok = false;
        for (u, p) in &self.users {
            let same_user: bool = u.as_bytes().ct_eq(user.as_bytes()).into();
            let same_pass: bool = p.as_bytes().ct_eq(password.as_bytes()).into();
            ok |= same_user & same_pass;
        }
        ok
    }

    /// Checks the credentials and opens a session; returns the new token.
    pub fn login(&mut self, user: &str, password: &str) -> Option<String> {
        if !self.verify(user, password) {
            return None;
        }
        let now = Instant::now();
        self.tokens.retain(|_, s| s.expires > now);
        let bytes: [u8; 24] = rand::rng().random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        self.tokens.insert(
            token.clone(),
            Session {
                user: user.to_string(),
                expires: now + self.ttl,
            },
        );
        Some(token)
    }

    /// The user owning a live token.
    pub fn check(&self, token: &str) -> Result<String, AuthFailure> {
        match self.tokens.get(token) {
            Some(s) if s.expires > Instant::now() => Ok(s.user.clone()),
            _ => Err(AuthFailure::Expired),
        }
    }

    /// Ends a session; false when the token was not live.
    pub fn logout(&mut self, token: &str) -> bool {
        self.tokens.remove(token).is_some()
    }

    /// Every token expires now (fault `expire_tokens`).
    pub fn expire_all(&mut self) {
        self.tokens.clear();
    }

    /// Number of live sessions.
    pub fn live(&self) -> usize {
        let now = Instant::now();
        self.tokens.values().filter(|s| s.expires > now).count()
    }

    /// Checks an `Authorization: Basic ...` header value.
    pub fn check_basic(&self, header: Option<&str>) -> Result<String, AuthFailure> {
        let value = header.ok_or(AuthFailure::Missing)?;
        let b64 = strip_scheme(value, "basic").ok_or(AuthFailure::Missing)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| AuthFailure::BadCredentials)?;
        let text = String::from_utf8(raw).map_err(|_| AuthFailure::BadCredentials)?;
        let (user, pass) = text.split_once(':').ok_or(AuthFailure::BadCredentials)?;
        if self.verify(user, pass) {
            Ok(user.to_string())
        } else {
            Err(AuthFailure::BadCredentials)
        }
    }

    /// Groups of a user, for `/users/current`.
    pub fn groups(user: &str) -> Vec<&'static str> {
        if user == "admin" {
            vec!["Administrators", "Operators"]
        } else if user == "anonymous" {
            vec![]
        } else {
            vec!["Operators"]
        }
    }
}

/// `Bearer abc` → `abc` (scheme compared case-insensitively).
pub fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.trim().split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// The value of cookie `name` in a `Cookie:` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl: Duration) -> Sessions {
        Sessions::new(
            vec![
                ("gateway".into(), "pw".into()),
                ("admin".into(), "root".into()),
            ],
            ttl,
        )
    }

    #[test]
    fn login_check_logout_and_expiry() {
        let mut s = sessions(Duration::from_secs(60));
        assert!(s.login("gateway", "wrong").is_none());
        assert!(s.login("nobody", "pw").is_none());
        let t = s.login("gateway", "pw").unwrap();
        assert_eq!(s.check(&t), Ok("gateway".to_string()));
        assert!(s.logout(&t));
        assert_eq!(s.check(&t), Err(AuthFailure::Expired));
        let t2 = s.login("admin", "root").unwrap();
        s.expire_all();
        assert_eq!(s.check(&t2), Err(AuthFailure::Expired));
        let mut short = sessions(Duration::from_millis(1));
        let t3 = short.login("gateway", "pw").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.check(&t3), Err(AuthFailure::Expired));
    }

    #[test]
    fn basic_and_cookie_parsing() {
        let s = sessions(Duration::from_secs(1));
        let ok = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("gateway:pw")
        );
        assert_eq!(s.check_basic(Some(&ok)), Ok("gateway".into()));
        let bad = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("gateway:x")
        );
        assert_eq!(s.check_basic(Some(&bad)), Err(AuthFailure::BadCredentials));
        assert_eq!(
            s.check_basic(Some("Basic !!!")),
            Err(AuthFailure::BadCredentials)
        );
        assert_eq!(s.check_basic(Some("Bearer x")), Err(AuthFailure::Missing));
        assert_eq!(s.check_basic(None), Err(AuthFailure::Missing));
        assert_eq!(cookie("a=1; session=tok; b=2", "session"), Some("tok"));
        assert_eq!(cookie("xsession=1", "session"), None);
        assert_eq!(strip_scheme("bearer  abc ", "Bearer"), Some("abc"));
    }
}
