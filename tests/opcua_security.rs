//! OPC UA security with the real async-opcua client over TCP: anonymous
//! access, user names and passwords, encrypted sessions, client certificate
//! trust (rejected/ → trusted/ without restart) and the server certificate.

use crate::opcua_support;

use std::path::Path;

use opcua::client::IdentityToken;
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, MessageSecurityMode, NodeId, StatusCode, UserTokenPolicy, UserTokenType, Variant,
};
use opcua_support::*;
use serde_json::json;
use wincc_gateway::config::{OpcuaRole, OpcuaSettings, OpcuaUser};
use wincc_gateway::model::TagType;

const PASSWORD: &str = "c0rrect-h0rse §";

fn with_user(pki: &Path) -> OpcuaSettings {
    let pw = pki.join("operator.pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let mut s = settings(&pki.join("pki"));
    s.users = vec![OpcuaUser {
        username: "operator".into(),
        password_env: String::new(),
        password_file: pw.to_string_lossy().into_owned(),
        role: OpcuaRole::Read,
    }];
    s
}

async fn read_value(c: &Client, tag: &str) -> opcua::types::DataValue {
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    eventually_read(&c.session, &NodeId::new(ns, tag), |dv| {
        dv.status() == StatusCode::Good
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_only_when_allowed_and_passwords_checked() {
    let dir = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let mut s = with_user(dir.path());
    s.allow_anonymous = false;
    s.security_policies = vec!["None".into(), "Basic256Sha256".into()];
    let gw = start(&s, None).await;
    gw.tags(&[("T/Value", TagType::Int32, false)]);
    gw.changes(vec![change(
        "T/Value",
        TagType::Int32,
        json!(42),
        "2026-01-01T00:00:00Z",
    )]);

    // Every endpoint offers user names only; on the unsecured one the
    // password is encrypted with the server certificate.
    let eps = endpoints(&gw.url, client_pki.path()).await;
    assert_eq!(
        eps.len(),
        3,
        "None + Basic256Sha256 Sign and SignAndEncrypt"
    );
    for ep in &eps {
        let tokens = ep.user_identity_tokens.clone().unwrap_or_default();
        assert!(
            tokens
                .iter()
                .all(|t| t.token_type == UserTokenType::UserName),
            "{tokens:?}"
        );
        if ep.security_mode == MessageSecurityMode::None {
            assert_eq!(
                tokens[0].security_policy_uri.as_ref(),
                SecurityPolicy::Basic256Sha256.to_uri()
            );
        }
    }

    // A client that tries anonymous anyway is refused by the server.
    let mut none = eps
        .iter()
        .find(|e| e.security_mode == MessageSecurityMode::None)
        .unwrap()
        .clone();
    none.user_identity_tokens = Some(vec![UserTokenPolicy::anonymous()]);
    let refused = connect_direct(none, IdentityToken::Anonymous, client_pki.path()).await;
    assert_eq!(refused.err(), Some(StatusCode::BadIdentityTokenRejected));

    let none_ep = |id| {
        connect(
            &gw.url,
            SecurityPolicy::None,
            MessageSecurityMode::None,
            id,
            client_pki.path(),
        )
    };
    let wrong = none_ep(IdentityToken::new_user_name("operator", "c0rrect-h0rse")).await;
    assert_eq!(wrong.err(), Some(StatusCode::BadIdentityTokenRejected));
    let nobody = none_ep(IdentityToken::new_user_name("nobody", PASSWORD)).await;
    assert_eq!(nobody.err(), Some(StatusCode::BadIdentityTokenRejected));

    let ok = none_ep(IdentityToken::new_user_name("operator", PASSWORD))
        .await
        .expect("right password");
    assert_eq!(
        read_value(&ok, "T/Value").await.value,
        Some(Variant::Int32(42))
    );
    ok.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_sessions_with_a_trusted_client() {
    let dir = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let mut s = with_user(dir.path());
    s.allow_anonymous = true;
    s.trust_client_certs = true;
    s.security_policies = vec![
        "Basic256Sha256".into(),
        "Aes128_Sha256_RsaOaep".into(),
        "Aes256_Sha256_RsaPss".into(),
    ];
    let gw = start(&s, None).await;
    gw.tags(&[("T/Value", TagType::Double, false)]);
    gw.changes(vec![change(
        "T/Value",
        TagType::Double,
        json!(2.5),
        "2026-01-01T00:00:00Z",
    )]);

    let eps = endpoints(&gw.url, client_pki.path()).await;
    assert_eq!(eps.len(), 6, "3 policies x Sign/SignAndEncrypt, no None");
    assert!(eps
        .iter()
        .all(|e| e.security_mode != MessageSecurityMode::None));

    let c = connect(
        &gw.url,
        SecurityPolicy::Basic256Sha256,
        MessageSecurityMode::SignAndEncrypt,
        IdentityToken::new_user_name("operator", PASSWORD),
        client_pki.path(),
    )
    .await
    .expect("Basic256Sha256 SignAndEncrypt session");
    assert_eq!(
        read_value(&c, "T/Value").await.value,
        Some(Variant::Double(2.5))
    );
    c.close().await;

    let c = connect(
        &gw.url,
        SecurityPolicy::Aes256Sha256RsaPss,
        MessageSecurityMode::SignAndEncrypt,
        IdentityToken::Anonymous,
        client_pki.path(),
    )
    .await
    .expect("Aes256_Sha256_RsaPss SignAndEncrypt session");
    assert_eq!(
        read_value(&c, "T/Value").await.value,
        Some(Variant::Double(2.5))
    );
    let wrong = connect(
        &gw.url,
        SecurityPolicy::Aes128Sha256RsaOaep,
        MessageSecurityMode::Sign,
        IdentityToken::new_user_name("operator", "nope"),
        client_pki.path(),
    )
    .await;
    assert_eq!(wrong.err(), Some(StatusCode::BadIdentityTokenRejected));
    c.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_client_cert_is_trusted_by_moving_it_and_server_cert_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let mut s = settings(&pki);
    s.security_policies = vec!["Basic256Sha256".into()];
    let gw = start(&s, None).await;
    let own_cert = std::fs::read(pki.join("own/cert.der")).expect("server certificate created");
    assert!(pki.join("private/private.pem").exists());
    gw.tags(&[("T/Value", TagType::Bool, false)]);
    gw.changes(vec![change(
        "T/Value",
        TagType::Bool,
        json!(true),
        "2026-01-01T00:00:00Z",
    )]);

    let url = gw.url.clone();
    let secure = || {
        connect(
            &url,
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
            IdentityToken::Anonymous,
            client_pki.path(),
        )
    };
    let refused = secure().await;
    assert!(
        refused.is_err(),
        "an unknown client certificate must be refused"
    );
    // The gateway renames the rejected file to one without spaces (and logs
    // which file to move where; tests/opcua_status_trust.rs checks the line).
    let mut rejected = Vec::new();
    for _ in 0..50 {
        rejected = std::fs::read_dir(pki.join("rejected"))
            .expect("rejected/ exists")
            .map(|e| e.unwrap().path())
            .collect();
        if rejected.len() == 1 && !rejected[0].to_string_lossy().contains(' ') {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(!rejected[0].to_string_lossy().contains(' '), "{rejected:?}");

    // Moving it to trusted/ trusts the client, with no restart (the gateway
    // gives it the name the OPC UA stack looks up within a second).
    let file = rejected[0].file_name().unwrap().to_owned();
    std::fs::create_dir_all(pki.join("trusted")).unwrap();
    std::fs::rename(&rejected[0], pki.join("trusted").join(&file)).unwrap();
    let mut attempt = 0;
    let c = loop {
        attempt += 1;
        match secure().await {
            Ok(c) => break c,
            Err(e) if attempt >= 10 => panic!("trusted client still refused: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    };
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let dv = eventually_read(&c.session, &NodeId::new(ns, "T/Value"), |dv| {
        dv.status() == StatusCode::Good
    })
    .await;
    assert_eq!(dv.value, Some(Variant::Boolean(true)));
    let _ = read(
        &c.session,
        &[NodeId::new(ns, "T/Value")],
        AttributeId::DataType,
    )
    .await;
    c.close().await;
    gw.shutdown().await;

    // A restart keeps the server's certificate.
    let gw = start(&s, None).await;
    assert_eq!(std::fs::read(pki.join("own/cert.der")).unwrap(), own_cert);
    let c = connect(
        &gw.url,
        SecurityPolicy::Basic256Sha256,
        MessageSecurityMode::SignAndEncrypt,
        IdentityToken::Anonymous,
        client_pki.path(),
    )
    .await
    .expect("still trusted after the restart");
    c.close().await;
    gw.shutdown().await;
}

/// Contract §8: every UserName policy the server advertises is encrypted,
/// and a client that sends its password in clear anyway is refused with
/// Bad_IdentityTokenInvalid, on the None endpoint and on SignAndEncrypt.
/// (The async-opcua client itself refuses to send a plaintext password
/// over a Sign-only channel; the server's check is the same for every
/// endpoint, it runs while the request is decoded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_clear_are_refused_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let mut s = with_user(dir.path());
    s.allow_anonymous = false;
    s.trust_client_certs = true;
    s.security_policies = vec!["None".into(), "Basic256Sha256".into()];
    let gw = start(&s, None).await;
    gw.tags(&[("T/Value", TagType::Int32, false)]);
    gw.changes(vec![change(
        "T/Value",
        TagType::Int32,
        json!(7),
        "2026-01-01T00:00:00Z",
    )]);

    let eps = endpoints(&gw.url, client_pki.path()).await;
    assert_eq!(eps.len(), 3);
    for ep in &eps {
        let tokens = ep.user_identity_tokens.clone().unwrap_or_default();
        assert!(!tokens.is_empty(), "{ep:?}");
        for t in &tokens {
            assert_eq!(t.token_type, UserTokenType::UserName);
            let uri = t.security_policy_uri.as_ref();
            // Empty means "the endpoint's policy"; on None that would be clear text.
            if ep.security_mode == MessageSecurityMode::None {
                assert_eq!(uri, SecurityPolicy::Basic256Sha256.to_uri(), "{t:?}");
            } else {
                assert!(
                    uri.is_empty() || uri == ep.security_policy_uri.as_ref(),
                    "{t:?}"
                );
            }
            assert_ne!(uri, SecurityPolicy::None.to_uri(), "{t:?}");
        }
    }

    for (policy, mode) in [
        (SecurityPolicy::None, MessageSecurityMode::None),
        (
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
        ),
    ] {
        let ep = eps
            .iter()
            .find(|e| e.security_mode == mode && e.security_policy_uri.as_ref() == policy.to_uri())
            .unwrap();
        // A client that believes the token policy is "None" sends the
        // password as it is (async-opcua warns "sent in plain text").
        let mut forged = ep.clone();
        for t in forged.user_identity_tokens.iter_mut().flatten() {
            t.security_policy_uri = SecurityPolicy::None.to_uri().into();
        }
        let refused = connect_direct(
            forged,
            IdentityToken::new_user_name("operator", PASSWORD),
            client_pki.path(),
        )
        .await;
        assert_eq!(
            refused.err(),
            Some(StatusCode::BadIdentityTokenInvalid),
            "plaintext over {policy:?}/{mode:?}"
        );
        // The same password, encrypted as advertised, is accepted.
        let ok = connect(
            &gw.url,
            policy,
            mode,
            IdentityToken::new_user_name("operator", PASSWORD),
            client_pki.path(),
        )
        .await
        .unwrap_or_else(|e| panic!("encrypted over {policy:?}/{mode:?}: {e}"));
        assert_eq!(
            read_value(&ok, "T/Value").await.value,
            Some(Variant::Int32(7))
        );
        ok.close().await;
    }
    gw.shutdown().await;
}

/// `write_enabled = true` with nobody allowed to write does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_enabled_without_a_write_user_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_user(dir.path());
    s.write_enabled = true;
    s.writable_tags = vec!["**".into()];
    let e = wincc_gateway::sinks::opcua::OpcuaSink::new(&s, None)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("nobody could write"), "{e}");
    s.users[0].role = OpcuaRole::Write;
    let gw = start(&s, None).await;
    gw.shutdown().await;
}
