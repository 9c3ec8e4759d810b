//! Who may open an OPC UA session, and who may write (contract §8).
//!
//! * Passwords: the crate's default authenticator compares plaintext
//!   passwords with `==`. This one keeps only SHA-256 digests of the
//!   configured passwords and compares digests in constant time (`subtle`),
//!   so neither the password nor its length leaks through timing, and it
//!   checks every configured user on every attempt. Passwords are never
//!   logged; a refused login logs the user name only.
//! * Roles: every user has the role `read` or `write`. The effective
//!   UserAccessLevel of a session keeps `CurrentWrite` only for sessions of
//!   `write` users; anonymous and `read` sessions see every variable
//!   read-only and their writes are refused with `Bad_UserAccessDenied`
//!   (the node manager checks the same level before any station call).
//! * No password in clear: every UserName token policy the server
//!   advertises is encrypted (with the endpoint's policy, or on the None
//!   endpoint with the server certificate, Basic256Sha256). A client that
//!   sends its password unencrypted anyway is refused with
//!   `Bad_IdentityTokenInvalid` on every endpoint: [`PlaintextGuard`] turns
//!   such a token into one the server does not accept while the request is
//!   decoded, before the password reaches any authenticator, and drops the
//!   password at once.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;
use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::AccessLevel;
use opcua::server::authenticator::{
    user_pass_security_policy_id, AuthManager, Password, UserToken,
};
use opcua::server::ServerEndpoint;
use opcua::types::{
    BinaryDecodable, BinaryEncodable, Context, DataTypeId, DynEncodable, EncodingResult, Error,
    MessageInfo, NodeId, ObjectId, StatusCode, TypeLoader, TypeLoaderCollection,
    TypeLoaderPriority, UAString, UserNameIdentityToken, UserTokenPolicy, UserTokenType,
};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::{OpcuaRole, Secret};

/// The policy id the server expects for anonymous tokens (fixed by the crate).
const POLICY_ID_ANONYMOUS: &str = "anonymous";

/// The access bits only a `write` user's session keeps.
const WRITE_BITS: AccessLevel = AccessLevel::CURRENT_WRITE
    .union(AccessLevel::HISTORY_WRITE)
    .union(AccessLevel::STATUS_WRITE)
    .union(AccessLevel::TIMESTAMP_WRITE);

struct User {
    name_digest: [u8; 32],
    password_digest: [u8; 32],
    name: String,
}

/// A configured user: name, password, role.
pub struct UserEntry {
    pub name: String,
    pub password: Secret,
    pub role: OpcuaRole,
}

/// The gateway's [`AuthManager`]: anonymous if allowed, otherwise
/// user name and password from `opcua.users`, each with a role.
pub struct GatewayAuth {
    allow_anonymous: bool,
    users: Vec<User>,
    /// The session tokens of `write` users (`user:<name>`).
    writers: HashSet<String>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn token_of(name: &str) -> String {
    format!("user:{name}")
}

impl GatewayAuth {
    pub fn new(allow_anonymous: bool, users: &[UserEntry]) -> Self {
        GatewayAuth {
            allow_anonymous,
            users: users
                .iter()
                .map(|u| User {
                    name_digest: digest(u.name.as_bytes()),
                    password_digest: digest(u.password.expose().as_bytes()),
                    name: u.name.clone(),
                })
                .collect(),
            writers: users
                .iter()
                .filter(|u| u.role == OpcuaRole::Write)
                .map(|u| token_of(&u.name))
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

    /// True if sessions with this token may write.
    pub fn may_write(&self, token: &UserToken) -> bool {
        self.writers.contains(&token.0)
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
                let token = UserToken(token_of(name));
                let role = if self.may_write(&token) {
                    "write"
                } else {
                    "read"
                };
                tracing::info!(user = name, role, "OPC UA user logged in");
                Ok(token)
            }
            None => {
                tracing::warn!(user = ?username, "OPC UA login refused: wrong user name or password");
                metrics::counter!("wincc_gateway_opcua_logins_refused_total", "reason" => "credentials")
                    .increment(1);
                Err(rejected())
            }
        }
    }

    /// Write bits survive only for `write` users: the Read service's
    /// UserAccessLevel, and the write check in the node manager, both go
    /// through here.
    fn effective_user_access_level(
        &self,
        token: &UserToken,
        user_access_level: AccessLevel,
        _node_id: &NodeId,
    ) -> AccessLevel {
        if self.may_write(token) {
            user_access_level
        } else {
            user_access_level - WRITE_BITS
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
        // Only encrypted UserName policies: on a secured endpoint the
        // password is encrypted with the endpoint's policy (an empty URI
        // means exactly that, Part 4 §7.41); on the None endpoint the
        // endpoint carries a password policy (Basic256Sha256, with the
        // server certificate) and we name it. No policy is ever None.
        let password_policy = endpoint.password_security_policy();
        if !self.users.is_empty() && password_policy != SecurityPolicy::None {
            let security_policy_uri = if password_policy != endpoint.security_policy() {
                UAString::from(password_policy.to_uri())
            } else {
                UAString::null()
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

/// What a UserName token with an unencrypted password becomes while the
/// request is decoded: the user name only. The server does not know this
/// type and refuses the token (`Bad_IdentityTokenInvalid`); the password
/// is gone before anything could compare, store or log it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaintextUserName {
    pub user_name: UAString,
}

impl MessageInfo for PlaintextUserName {
    fn type_id(&self) -> ObjectId {
        ObjectId::UserNameIdentityToken_Encoding_DefaultBinary
    }
    fn json_type_id(&self) -> ObjectId {
        ObjectId::UserNameIdentityToken_Encoding_DefaultBinary
    }
    fn xml_type_id(&self) -> ObjectId {
        ObjectId::UserNameIdentityToken_Encoding_DefaultBinary
    }
    fn data_type_id(&self) -> DataTypeId {
        DataTypeId::UserNameIdentityToken
    }
}

impl BinaryEncodable for PlaintextUserName {
    fn byte_len(&self, ctx: &Context<'_>) -> usize {
        self.user_name.byte_len(ctx)
    }
    fn encode<S: std::io::Write + ?Sized>(
        &self,
        stream: &mut S,
        ctx: &Context<'_>,
    ) -> EncodingResult<()> {
        self.user_name.encode(stream, ctx)
    }
}

/// The type loader that refuses plaintext passwords (see the module doc).
/// It answers only for the binary encoding of `UserNameIdentityToken` and
/// must come before the crate's own loaders: [`install_plaintext_guard`].
pub struct PlaintextGuard;

impl TypeLoader for PlaintextGuard {
    fn load_from_binary(
        &self,
        node_id: &NodeId,
        stream: &mut dyn Read,
        ctx: &Context<'_>,
        _length: Option<usize>,
    ) -> Option<EncodingResult<Box<dyn DynEncodable>>> {
        if node_id.namespace != 0
            || node_id.as_u32()
                != Some(ObjectId::UserNameIdentityToken_Encoding_DefaultBinary as u32)
        {
            return None;
        }
        let token = match UserNameIdentityToken::decode(stream, ctx) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        if token.encryption_algorithm.is_empty() {
            tracing::warn!(
                user = ?token.user_name.as_ref(),
                "OPC UA login refused: the password was sent unencrypted (Bad_IdentityTokenInvalid)"
            );
            metrics::counter!("wincc_gateway_opcua_logins_refused_total", "reason" => "plaintext")
                .increment(1);
            return Some(Ok(Box::new(PlaintextUserName {
                user_name: token.user_name,
            })));
        }
        Some(Ok(Box::new(token)))
    }

    fn priority(&self) -> TypeLoaderPriority {
        TypeLoaderPriority::Core
    }
}

/// Puts [`PlaintextGuard`] in front of the server's type loaders. The
/// crate's `with_type_loader` would sort it after its own core loader
/// (same priority, added later), which would decode the token first.
pub fn install_plaintext_guard(loaders: &mut TypeLoaderCollection) {
    let mut fresh = TypeLoaderCollection::new_empty();
    fresh.add(Arc::new(PlaintextGuard));
    for l in loaders.iter() {
        fresh.add(l.clone());
    }
    *loaders = fresh;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, pw: &str, role: OpcuaRole) -> UserEntry {
        UserEntry {
            name: name.into(),
            password: Secret::new(pw),
            role,
        }
    }

    #[test]
    fn only_the_exact_pair_matches() {
        let auth = GatewayAuth::new(
            false,
            &[
                entry("operator", "s3cret", OpcuaRole::Write),
                entry("admin", "other", OpcuaRole::Read),
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

    #[test]
    fn only_write_users_keep_write_bits() {
        let auth = GatewayAuth::new(
            true,
            &[
                entry("operator", "a", OpcuaRole::Write),
                entry("viewer", "b", OpcuaRole::Read),
            ],
        );
        let rw = AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE;
        let id = NodeId::new(2, "T");
        let level = |t: &str| {
            auth.effective_user_access_level(&UserToken(t.into()), rw, &id)
                .bits()
        };
        let ro = AccessLevel::CURRENT_READ.bits();
        assert_eq!(level("user:operator"), rw.bits());
        assert_eq!(level("user:viewer"), ro);
        assert_eq!(level("ANONYMOUS"), ro);
        // A user named like a token prefix is still only itself.
        assert_eq!(level("operator"), ro);
    }

    #[test]
    fn the_guard_comes_first_and_drops_plaintext_passwords() {
        let mut loaders = TypeLoaderCollection::new();
        install_plaintext_guard(&mut loaders);
        assert_eq!(loaders.iter().count(), 3);
        let ctx_owned =
            opcua::types::ContextOwned::new(Default::default(), loaders, Default::default());
        let ctx = ctx_owned.context();
        let id = NodeId::new(
            0,
            ObjectId::UserNameIdentityToken_Encoding_DefaultBinary as u32,
        );
        let plain = UserNameIdentityToken {
            policy_id: "userpass_rsa_oaep".into(),
            user_name: "operator".into(),
            password: opcua::types::ByteString::from(b"hunter2".to_vec()),
            encryption_algorithm: UAString::null(),
        };
        let bytes = plain.encode_to_vec(&ctx);
        let obj = ctx
            .load_from_binary(&id, &mut bytes.as_slice(), Some(bytes.len()))
            .unwrap();
        assert!(obj.inner_is::<PlaintextUserName>(), "{obj:?}");
        assert!(!format!("{obj:?}").contains("hunter2"));

        let encrypted = UserNameIdentityToken {
            encryption_algorithm: "http://www.w3.org/2001/04/xmlenc#rsa-oaep".into(),
            ..plain
        };
        let bytes = encrypted.encode_to_vec(&ctx);
        let obj = ctx
            .load_from_binary(&id, &mut bytes.as_slice(), Some(bytes.len()))
            .unwrap();
        assert!(obj.inner_is::<UserNameIdentityToken>());
    }
}
