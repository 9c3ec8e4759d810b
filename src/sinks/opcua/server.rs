//! Builds the async-opcua server from `[opcua]`: endpoints per security
//! policy and mode, our authenticator, limits, PKI, and the listening socket.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opcua::crypto::{CertificateStore, SecurityPolicy, X509Data};
use opcua::server::{Server, ServerBuilder, ServerEndpoint, ServerHandle};
use opcua::types::MessageSecurityMode;

use crate::config::{resolve_secret, OpcuaRole, OpcuaSettings};

use super::auth::{install_plaintext_guard, GatewayAuth, UserEntry};
use super::nodes::{builder as nodes_builder, ItemLimit, WriteTarget};
use super::OpcuaError;

/// The server, its handle and the bound socket, ready to run.
pub struct Built {
    pub server: Server,
    pub handle: ServerHandle,
    pub listener: TcpListener,
    /// The endpoint URL clients are told about.
    pub endpoint_url: String,
}

/// Host, port and path of `opc.tcp://HOST:PORT/PATH`.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16, String), OpcuaError> {
    let bad = |why: &str| OpcuaError::Config(format!("opcua.endpoint {endpoint:?}: {why}"));
    let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if url.scheme() != "opc.tcp" {
        return Err(bad("the scheme must be opc.tcp"));
    }
    let host = url.host_str().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port().ok_or_else(|| bad("no port"))?;
    let path = if url.path().is_empty() {
        "/".to_string()
    } else {
        url.path().to_string()
    };
    Ok((host, port, path))
}

/// The (policy, modes) pairs a configured policy name stands for.
fn policy_modes(
    name: &str,
) -> Result<(SecurityPolicy, &'static [MessageSecurityMode]), OpcuaError> {
    const SIGNED: &[MessageSecurityMode] = &[
        MessageSecurityMode::Sign,
        MessageSecurityMode::SignAndEncrypt,
    ];
    Ok(match name {
        "None" => (SecurityPolicy::None, &[MessageSecurityMode::None]),
        "Basic256Sha256" => (SecurityPolicy::Basic256Sha256, SIGNED),
        "Aes128_Sha256_RsaOaep" => (SecurityPolicy::Aes128Sha256RsaOaep, SIGNED),
        "Aes256_Sha256_RsaPss" => (SecurityPolicy::Aes256Sha256RsaPss, SIGNED),
        "Basic256" => {
            tracing::warn!(
                "OPC UA security policy Basic256 is deprecated (SHA-1); prefer Basic256Sha256"
            );
            (SecurityPolicy::Basic256, SIGNED)
        }
        other => {
            return Err(OpcuaError::Config(format!(
                "opcua.security_policies: unknown policy {other:?} (use None, Basic256Sha256, \
                 Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss or Basic256)"
            )))
        }
    })
}

/// The configured users with their passwords resolved.
fn users(settings: &OpcuaSettings) -> Result<Vec<UserEntry>, OpcuaError> {
    let mut out = Vec::with_capacity(settings.users.len());
    for (i, u) in settings.users.iter().enumerate() {
        if u.username.is_empty() {
            return Err(OpcuaError::Config(format!(
                "opcua.users[{i}].username must not be empty"
            )));
        }
        let key = format!("opcua.users[{i}].password");
        match resolve_secret(&key, &u.password_env, &u.password_file) {
            Ok(Some(p)) => out.push(UserEntry {
                name: u.username.clone(),
                password: p,
                role: u.role,
            }),
            Ok(None) => {
                return Err(OpcuaError::Config(format!(
                    "{key}_env: a user needs password_env or password_file"
                )))
            }
            Err(p) => return Err(OpcuaError::Config(format!("{}: {}", p.key, p.why))),
        }
    }
    Ok(out)
}

/// The host name put into endpoint URLs: the configured host, or this
/// machine's name when listening on every interface.
fn advertised_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => X509Data::computer_hostnames()
            .into_iter()
            .next()
            .unwrap_or_else(|| "localhost".into()),
        _ => host.to_string(),
    }
}

/// The application URI: distinct from the namespace URI, because the
/// server's own namespace (index 1) is its application URI.
pub fn application_uri(namespace_uri: &str) -> String {
    format!("{namespace_uri}:server")
}

pub fn build(
    settings: &OpcuaSettings,
    writes: Option<WriteTarget>,
    items: ItemLimit,
) -> Result<Built, OpcuaError> {
    let (host, port, path) = parse_endpoint(&settings.endpoint)?;
    if settings.namespace_uri.is_empty() {
        return Err(OpcuaError::Config(
            "opcua.namespace_uri must not be empty".into(),
        ));
    }
    if settings.security_policies.is_empty() {
        return Err(OpcuaError::Config(
            "opcua.security_policies: list at least one policy".into(),
        ));
    }
    let users = users(settings)?;
    if !settings.allow_anonymous && users.is_empty() {
        return Err(OpcuaError::Config(
            "opcua.allow_anonymous = false and no [[opcua.users]]: nobody could connect".into(),
        ));
    }
    if settings.write_enabled && !users.iter().any(|u| u.role == OpcuaRole::Write) {
        return Err(OpcuaError::Config(
            "opcua.write_enabled = true but no user in opcua.users has role = \"write\": \
             nobody could write (anonymous sessions never write)"
                .into(),
        ));
    }
    let mut endpoints = Vec::new();
    for name in &settings.security_policies {
        let (policy, modes) = policy_modes(name)?;
        for &mode in modes {
            let mut ep = ServerEndpoint::new(path.clone(), policy, mode, &[]);
            if policy == SecurityPolicy::None && !users.is_empty() {
                // Passwords are encrypted with the server certificate even
                // here; a plaintext one is refused (see `auth`).
                ep.password_security_policy =
                    Some(SecurityPolicy::Basic256Sha256.to_str().to_string());
            }
            endpoints.push((format!("{}_{}", policy.to_str(), mode), ep));
        }
    }
    let needs_cert = endpoints.iter().any(|(_, e)| {
        e.security_policy() != SecurityPolicy::None || e.password_security_policy.is_some()
    });

    let bind_host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host.clone()
    };
    let listener = TcpListener::bind((bind_host.as_str(), port))
        .map_err(|e| OpcuaError::Bind(format!("{bind_host}:{port}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| OpcuaError::Bind(format!("{bind_host}:{port}"), e))?;
    let bound: SocketAddr = listener
        .local_addr()
        .map_err(|e| OpcuaError::Bind(format!("{bind_host}:{port}"), e))?;
    let adv_host = advertised_host(&host);
    let endpoint_url = format!("opc.tcp://{adv_host}:{}{path}", bound.port());

    let limits = &settings.limits;
    // A message of max_message_size bytes in chunks of the receive buffer size.
    let chunk_size = u16::MAX as usize;
    let chunks = (limits.max_message_size / chunk_size + 1).max(5);
    let app_uri = application_uri(&settings.namespace_uri);
    // The core node manager wrapped for a live ServerStatus (status.rs),
    // then the stack's diagnostics, then ours.
    let mut builder = ServerBuilder::new()
        .without_node_managers()
        .with_node_manager(super::status::LiveStatusCoreBuilder)
        .with_node_manager(opcua::server::diagnostics::DiagnosticsNodeManagerBuilder)
        .build_info(super::status::build_info())
        .application_name("WinCC Gateway")
        .application_uri(app_uri.clone())
        .product_uri("urn:wincc-gateway")
        .create_sample_keypair(true)
        .pki_dir(PathBuf::from(&settings.pki_dir))
        .trust_client_certs(settings.trust_client_certs)
        .host(adv_host)
        .port(bound.port())
        .discovery_urls(vec![endpoint_url.clone()])
        .with_authenticator(Arc::new(GatewayAuth::new(settings.allow_anonymous, &users)))
        .with_node_manager(nodes_builder(&settings.namespace_uri, writes, items))
        .diagnostics_enabled(true)
        .max_sessions(limits.max_sessions)
        .max_session_timeout_ms(limits.max_session_timeout_ms)
        .max_array_length(limits.max_array_length)
        .max_message_size(limits.max_message_size)
        .max_chunk_count(chunks)
        .max_browse_continuation_points(limits.max_sessions.max(1) * 100)
        .subscription_poll_interval_ms(subscription_tick_ms(settings.min_publishing_interval_ms));
    {
        let l = builder.limits_mut();
        // Values are pushed (`set_values` notifies the subscriptions), never
        // sampled: sampling interval 0 passes every change on.
        l.subscriptions.min_publishing_interval_ms = settings.min_publishing_interval_ms as f64;
        l.subscriptions.min_sampling_interval_ms = 0.0;
        l.subscriptions.max_subscriptions_per_session = limits.max_subscriptions_per_session;
        l.subscriptions.max_monitored_items_per_sub = limits.max_monitored_items_per_sub;
        l.operational.max_monitored_items_per_call = limits.max_monitored_items_per_call;
        l.operational.max_nodes_per_read = limits.max_nodes_per_read;
        l.operational.max_nodes_per_write = limits.max_nodes_per_write;
        l.operational.max_nodes_per_browse = limits.max_nodes_per_browse;
        l.operational.max_nodes_per_register_nodes = limits.max_nodes_per_read;
    }
    for (id, ep) in endpoints {
        builder = builder.add_endpoint(id, ep);
    }
    let (server, handle) = builder.build().map_err(OpcuaError::Server)?;
    // Before any connection copies the loaders into its decoding context.
    install_plaintext_guard(&mut handle.info().type_loaders.write());
    check_own_cert(Path::new(&settings.pki_dir), &app_uri, needs_cert)?;
    if !settings.trust_client_certs {
        super::trust::watch(Path::new(&settings.pki_dir), handle.token().clone());
    }
    Ok(Built {
        server,
        handle,
        listener,
        endpoint_url,
    })
}

/// How often the stack checks its subscriptions for a due publish: a tenth
/// of the shortest publishing interval (1..=10 ms), so a granted interval is
/// kept to within a tick (the stack's own default, 100 ms, turned a 50 ms
/// interval into 100 ms).
pub fn subscription_tick_ms(min_publishing_interval_ms: u64) -> u64 {
    (min_publishing_interval_ms / 10).clamp(1, 10)
}

/// The server creates its certificate on first start and reuses it; make
/// sure it is there when a policy needs it, and that it names this server.
fn check_own_cert(pki_dir: &Path, app_uri: &str, needed: bool) -> Result<(), OpcuaError> {
    let path = pki_dir.join("own/cert.der");
    match CertificateStore::read_cert(&path) {
        Ok(cert) => {
            if cert.is_application_uri_valid(app_uri).is_err() {
                tracing::warn!(
                    cert = %path.display(),
                    application_uri = app_uri,
                    "the OPC UA server certificate names another application URI (namespace_uri changed?); \
                     delete pki_dir/own and pki_dir/private to create a new one"
                );
            }
            Ok(())
        }
        Err(e) if needed => Err(OpcuaError::Pki(format!(
            "no usable server certificate at {} ({e}); is pki_dir writable?",
            path.display()
        ))),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("opc.tcp://0.0.0.0:4840/").unwrap(),
            ("0.0.0.0".into(), 4840, "/".into())
        );
        assert_eq!(
            parse_endpoint("opc.tcp://[::1]:4841/wincc").unwrap(),
            ("::1".into(), 4841, "/wincc".into())
        );
        assert!(parse_endpoint("http://h:1/").is_err());
        assert!(parse_endpoint("opc.tcp://h/").is_err());
        assert!(parse_endpoint("nonsense").is_err());
    }

    #[test]
    fn policies_map_to_sign_and_sign_encrypt() {
        assert_eq!(
            policy_modes("None").unwrap().1,
            &[MessageSecurityMode::None]
        );
        let (p, m) = policy_modes("Basic256Sha256").unwrap();
        assert_eq!(p, SecurityPolicy::Basic256Sha256);
        assert_eq!(
            m,
            &[
                MessageSecurityMode::Sign,
                MessageSecurityMode::SignAndEncrypt
            ]
        );
        assert_eq!(
            policy_modes("Aes256_Sha256_RsaPss").unwrap().0,
            SecurityPolicy::Aes256Sha256RsaPss
        );
        assert!(policy_modes("Basic128Rsa15").is_err());
    }
}
