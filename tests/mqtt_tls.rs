//! mqtts:// against a real mosquitto TLS listener that requires a client
//! certificate. Certificates are made at test time with the `openssl` CLI.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mosquitto::{free_port, Mosquitto, MosquittoOptions};
use common::{change, mqtt_settings, Gateway, TestSubscriber};
use serde_json::json;
use wincc_gateway::sinks::mqtt::MqttStatus;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed for this test (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate.
fn make_pki(dir: &Path, ca: &str) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-subj",
            &format!("/CN={ca}"),
            days[0],
            days[1],
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
                days[0],
                days[1],
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_ca_and_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let p = |f: &str| pki.path().join(f).display().to_string();
    make_pki(pki.path(), "ca");
    // A second, unrelated CA to prove the server certificate is checked.
    let other = tempfile::tempdir().unwrap();
    openssl(
        other.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "x.key",
            "-out",
            "x.pem",
            "-subj",
            "/CN=other",
            "-days",
            "2",
        ],
    );

    let tls_port = free_port();
    let broker = Mosquitto::start_with(MosquittoOptions {
        extra_config: vec![
            format!("listener {tls_port} 127.0.0.1"),
            format!("cafile {}", p("ca.pem")),
            format!("certfile {}", p("server.pem")),
            format!("keyfile {}", p("server.key")),
            "require_certificate true".into(),
        ],
        ..Default::default()
    });
    // The subscriber uses the plain listener of the same broker.
    let sub = TestSubscriber::connect(broker.port, "tls/#").await;

    let mut s = mqtt_settings(tls_port, "tls");
    s.url = format!("mqtts://127.0.0.1:{tls_port}");
    s.ca_file = p("ca.pem");
    s.client_cert_file = p("client.pem");
    s.client_key_file = p("client.key");
    let mut gw = Gateway::start(&s, None);
    gw.wait_connected().await;
    gw.send(vec![change("Secure/Value", json!(1))]);
    let m = sub
        .wait_msg("tls/tags/Secure/Value", Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(m.expect("value over TLS").json()["value"], 1);
    gw.stop().await;

    // Wrong CA: the broker's certificate is refused and the sink says why.
    let mut bad = s.clone();
    bad.client_id += "-badca";
    bad.ca_file = other.path().join("x.pem").display().to_string();
    let mut gw = Gateway::start(&bad, None);
    let reason = connection_error(&mut gw).await;
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    gw.stop().await;

    // No client certificate: the broker refuses the handshake.
    let mut anon = s.clone();
    anon.client_id += "-nocert";
    anon.client_cert_file.clear();
    anon.client_key_file.clear();
    let mut gw = Gateway::start(&anon, None);
    let reason = connection_error(&mut gw).await;
    assert!(!gw.state.borrow().is_connected(), "{reason}");
    gw.stop().await;
}

/// Waits for the sink's first connection error and returns it.
async fn connection_error(gw: &mut Gateway) -> String {
    let st = tokio::time::timeout(
        Duration::from_secs(10),
        gw.state
            .wait_for(|st| matches!(st, MqttStatus::Disconnected(r) if r != "not connected yet")),
    )
    .await
    .expect("a connection error")
    .expect("state channel open")
    .clone();
    match st {
        MqttStatus::Disconnected(r) => r,
        MqttStatus::Connected => unreachable!(),
    }
}
