//! What OPC UA clients and their operators see of the server itself, with
//! the real async-opcua client over TCP: a live ServerStatus (CurrentTime
//! moves, BuildInfo names this build) and client certificate trust that
//! says what to do (a rejected file without spaces, a log line naming it
//! and where to move it).

use crate::common::log_capture::log;
use crate::opcua_support;

use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, BuildInfo, DateTime, MessageSecurityMode, NodeId, ServerStatusDataType,
    VariableId, Variant,
};
use opcua_support::*;
use wincc_gateway::model::TagType;

fn status_of(v: Option<Variant>) -> ServerStatusDataType {
    match v {
        Some(Variant::ExtensionObject(o)) => o
            .inner_as::<ServerStatusDataType>()
            .expect("a ServerStatusDataType")
            .clone(),
        other => panic!("ServerStatus is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_status_is_live_and_names_this_build() {
    let pki = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = start(&settings(pki.path()), None).await;
    let c = connect_anonymous(&gw.url, client_pki.path()).await;
    let status_id: NodeId = VariableId::Server_ServerStatus.into();
    let time_id: NodeId = VariableId::Server_ServerStatus_CurrentTime.into();

    let first = status_of(
        read(
            &c.session,
            std::slice::from_ref(&status_id),
            AttributeId::Value,
        )
        .await
        .remove(0)
        .value,
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = status_of(
        read(
            &c.session,
            std::slice::from_ref(&status_id),
            AttributeId::Value,
        )
        .await
        .remove(0)
        .value,
    );
    assert!(
        second.current_time.as_chrono() > first.current_time.as_chrono(),
        "CurrentTime frozen: {:?} then {:?}",
        first.current_time,
        second.current_time
    );
    let now = chrono::Utc::now();
    let lag = now - second.current_time.as_chrono();
    assert!(lag.num_seconds().abs() < 5, "CurrentTime {lag} behind");
    assert!(second.start_time.as_chrono() <= second.current_time.as_chrono());
    // The CurrentTime variable itself is live too.
    let t = read(&c.session, &[time_id], AttributeId::Value)
        .await
        .remove(0);
    match t.value {
        Some(Variant::DateTime(d)) => {
            assert!((now - d.as_chrono()).num_seconds().abs() < 5)
        }
        other => panic!("CurrentTime is {other:?}"),
    }

    let b: BuildInfo = second.build_info;
    assert_eq!(b.software_version.as_ref(), env!("CARGO_PKG_VERSION"));
    assert_eq!(b.product_name.as_ref(), "WinCC Gateway");
    assert_eq!(b.product_uri.as_ref(), "urn:wincc-gateway");
    assert!(
        b.build_number
            .as_ref()
            .starts_with(env!("CARGO_PKG_VERSION")),
        "{:?}",
        b.build_number
    );
    assert!(
        b.build_date.as_chrono() > DateTime::ymd(2024, 1, 1).as_chrono(),
        "build date {:?}",
        b.build_date
    );
    // BuildInfo's own variables agree.
    let version = read(
        &c.session,
        &[VariableId::Server_ServerStatus_BuildInfo_SoftwareVersion.into()],
        AttributeId::Value,
    )
    .await
    .remove(0);
    assert_eq!(
        version.value,
        Some(Variant::from(env!("CARGO_PKG_VERSION")))
    );
    c.close().await;
    gw.shutdown().await;
}

/// A rejected client certificate: a file name without spaces or brackets,
/// one log line with the exact `mv` to run, and moving it trusts the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_client_is_told_which_file_to_move_where() {
    let logbuf = log();
    let dir = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let mut s = settings(&pki);
    s.security_policies = vec!["Basic256Sha256".into()];
    let gw = start(&s, None).await;
    gw.tags(&[("T/Value", TagType::Bool, false)]);
    let url = gw.url.clone();
    let secure = || {
        connect(
            &url,
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
            opcua::client::IdentityToken::Anonymous,
            client_pki.path(),
        )
    };
    assert!(
        secure().await.is_err(),
        "unknown client certificate refused"
    );

    // Within a couple of seconds: the file is renamed and the line logged.
    let mut line = None;
    for _ in 0..50 {
        let text = String::from_utf8_lossy(&logbuf.lock().unwrap()).into_owned();
        line = text
            .lines()
            .find(|l| l.contains("client certificate rejected"))
            .map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = line.expect("a log line about the rejected certificate");
    let rejected: Vec<_> = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let name = rejected[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "{name}"
    );
    assert!(name.ends_with(".der"), "{name}");
    let trusted = pki.join("trusted");
    assert!(
        line.contains(&format!(
            "mv {} {}/",
            rejected[0].display(),
            trusted.display()
        )),
        "{line}"
    );

    std::fs::rename(&rejected[0], trusted.join(&name)).unwrap();
    let mut attempt = 0;
    let c = loop {
        attempt += 1;
        match secure().await {
            Ok(c) => break c,
            Err(e) if attempt >= 10 => panic!("still refused after the move: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    c.close().await;
    gw.shutdown().await;
}
