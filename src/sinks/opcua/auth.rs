//! Who may open an OPC UA session.
//!
//! The crate's default authenticator compares plaintext passwords with `==`.
//! This one keeps only SHA-256 digests of the configured passwords and
//! compares digests in constant time (`subtle`), so neither the password nor
//! its length leaks through timing, and it checks every configured user on
//! every attempt. Passwords are never logged; a refused login logs the user
//! name only.

use async_trait::async_trait;
use opcua::crypto::SecurityPolicy;
use opcua::server::authenticator::{
    user_pass_security_policy_id, AuthManager, Password, UserToken,
};
use opcua::server::ServerEndpoint;
use opcua::types::{Error, StatusCode, UAString, UserTokenPolicy, UserTokenType};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::Secret;

/// The policy id the server expects for anonymous tokens (fixed by the crate).
const POLICY_ID_ANONYMOUS: &str = "anonymous";

struct User {
    name_digest: [u8; 32],
    password_digest: [u8; 32],
    name: String,
}

/// The gateway's [`AuthManager`]: anonymous if allowed, otherwise
/// user name and password from `[[opcua.users]]`.
pub struct GatewayAuth {
    allow_anonymous: bool,
    users: Vec<User>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl GatewayAuth {
    pub fn new(allow_anonymous: bool, users: &[(String, Secret)]) -> Self {
        GatewayAuth {
            allow_anonymous,
            users: users
                .iter()
                .map(|(name, password)| User {
                    name_digest: digest(name.as_bytes()),
                    password_digest: digest(password.expose().as_bytes()),
                    name: name.clone(),
                })
                .collect(),
        }
    }

    /// The configured user whose name and password both match, found in
    /// time independent of where (or whether) the match is.
    fn check(&self, username: &str, password: &str) -> Option<&str> {
        let name = digest(username.as_bytes());
        let pass = digest(password.as_bytes());
        let mut found: Option<&str> = None;
        for u in &self.users {
            let ok: Choice = u.name_digest.ct_eq(&name) & u.password_digest.ct_eq(&pass);
            if bool::from(ok) && found.is_none() {
                found = Some(&u.name);
            }
        }
        found
    }
}

fn rejected() -> Error {
    Error::new(
        StatusCode::BadIdentityTokenRejected,
        "user name or password is wrong",
    )
}

#[async_trait]
impl AuthManager for GatewayAuth {
    async fn authenticate_anonymous_token(&self, _endpoint: &ServerEndpoint) -> Result<(), Error> {
        if self.allow_anonymous {
            Ok(())
        } else {
            tracing::warn!("OPC UA anonymous login refused (allow_anonymous = false)");
            Err(Error::new(
                StatusCode::BadIdentityTokenRejected,
                "anonymous access is disabled",
            ))
        }
    }

    async fn authenticate_username_identity_token(
        &self,
        _endpoint: &ServerEndpoint,
        username: &str,
        password: &Password,
    ) -> Result<UserToken, Error> {
        match self.check(username, password.get()) {
            Some(name) => {
                tracing::info!(user = name, "OPC UA user logged in");
                Ok(UserToken(format!("user:{name}")))
            }
            None => {
                tracing::warn!(user = ?username, "OPC UA login refused: wrong user name or password");
                metrics::counter!("wincc_gateway_opcua_logins_refused_total").increment(1);
                Err(rejected())
            }
        }
    }

    fn user_token_policies(&self, endpoint: &ServerEndpoint) -> Vec<UserTokenPolicy> {
        let mut out = Vec::with_capacity(2);
        if self.allow_anonymous {
            out.push(UserTokenPolicy {
                policy_id: UAString::from(POLICY_ID_ANONYMOUS),
                token_type: UserTokenType::Anonymous,
                issued_token_type: UAString::null(),
                issuer_endpoint_url: UAString::null(),
                security_policy_uri: UAString::null(),
            });
        }
        if !self.users.is_empty() {
            // On an unsecured endpoint the password is still encrypted with
            // the server certificate (Part 4 §7.41): the endpoint carries a
            // password_security_policy and we advertise it.
            let security_policy_uri = match endpoint.password_security_policy() {
                p if p != endpoint.security_policy() && p != SecurityPolicy::None => {
                    UAString::from(p.to_uri())
                }
                _ => UAString::null(),
            };
            out.push(UserTokenPolicy {
                policy_id: user_pass_security_policy_id(endpoint),
                token_type: UserTokenType::UserName,
                issued_token_type: UAString::null(),
                issuer_endpoint_url: UAString::null(),
                security_policy_uri,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_pair_matches() {
        let auth = GatewayAuth::new(
            false,
            &[
                ("operator".into(), Secret::new("s3cret")),
                ("admin".into(), Secret::new("other")),
            ],
        );
        assert_eq!(auth.check("operator", "s3cret"), Some("operator"));
        assert_eq!(auth.check("admin", "other"), Some("admin"));
        assert_eq!(auth.check("operator", "other"), None);
        assert_eq!(auth.check("operator", "s3cret "), None);
        assert_eq!(auth.check("operator", ""), None);
        assert_eq!(auth.check("Operator", "s3cret"), None);
        assert_eq!(auth.check("nobody", "s3cret"), None);
    }
}
