//! Certificate pinning against the simulator over HTTPS with a fresh
//! self-signed certificate (loopback): the pinned fingerprint is accepted
//! in any spelling; any other one is refused with an error naming both
//! fingerprints; without pinning or a CA the certificate is refused;
//! `accept_invalid_certs` accepts it. Pinning works for every dialect, and
//! for the Unified `wss://` subscription exactly as for HTTPS. A runtime's
//! certificate naming only `localhost`: trusted by pin (never a name
//! check), or by `ca_file` with `tls_skip_hostname_check`.

use wincc_gateway::config::{AlarmSettings, AuthMode, Dialect, RateLimit, Settings, WinccSettings};
use wincc_gateway::sim::{self, SimHandle, SimOptions};
use wincc_gateway::wincc::tls::fingerprint;
use wincc_gateway::wincc::{self, StationError};

async fn https_sim(dialect: Dialect) -> (SimHandle, Vec<u8>) {
    sim::tls::start_tls(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 50,
            change_rate: 0.0,
            auth: AuthMode::None,
            alarms: false,
            dialect,
            users: vec![("gateway".into(), "pw".into())],
            ..SimOptions::default()
        },
    )
    .await
    .unwrap()
}

fn settings(base_url: String, dialect: Dialect) -> Settings {
    let auth = if dialect == Dialect::WinccV7 {
        AuthMode::Basic
    } else {
        AuthMode::None
    };
    let dir = std::env::temp_dir().join(format!("tls-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "pw").unwrap();
    Settings {
        wincc: WinccSettings {
            base_url,
            dialect,
            auth,
            username: "gateway".into(),
            password_file: pw.to_string_lossy().into_owned(),
            timeout_ms: 3000,
            rate_limit: RateLimit {
                requests_per_second: 100,
                burst: 10,
                max_in_flight: 2,
            },
            ..WinccSettings::default()
        },
        poll_groups: vec![],
        alarms: AlarmSettings::default(),
        mqtt: Default::default(),
        opcua: Default::default(),
        sparkplug: Default::default(),
        http: Default::default(),
        log: Default::default(),
    }
}

async fn browse(s: &Settings) -> Result<usize, StationError> {
    let station = wincc::connect(s).expect("client builds");
    station.list_tags().await.map(|t| t.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_certificate_is_accepted_in_any_spelling() {
    let (sim, der) = https_sim(Dialect::Generic).await;
    let fp = fingerprint(&der);
    for spelling in [fp.clone(), fp.to_uppercase(), fp.replace(':', "")] {
        let mut s = settings(sim.https_base_url(), Dialect::Generic);
        s.wincc.pinned_cert_sha256 = spelling.clone();
        assert_eq!(browse(&s).await.unwrap(), 50, "{spelling}");
    }
    // Pinning wins over accept_invalid_certs, which is then ignored.
    let mut s = settings(sim.https_base_url(), Dialect::Generic);
    s.wincc.pinned_cert_sha256 = fp;
    s.wincc.accept_invalid_certs = true;
    assert_eq!(browse(&s).await.unwrap(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_fingerprint_is_refused_naming_both() {
    let (sim, der) = https_sim(Dialect::Generic).await;
    let presented = fingerprint(&der);
    let other = fingerprint(b"some other certificate");
    for accept_invalid in [false, true] {
        let mut s = settings(sim.https_base_url(), Dialect::Generic);
        s.wincc.pinned_cert_sha256 = other.to_uppercase();
        s.wincc.accept_invalid_certs = accept_invalid;
        let e = browse(&s).await.unwrap_err();
        assert!(matches!(e, StationError::Unreachable(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("pinned_cert_sha256"), "{text}");
        assert!(text.contains(&format!("expected {other}")), "{text}");
        assert!(text.contains(&format!("presented {presented}")), "{text}");
    }
    assert_eq!(sim.stats().total_requests, 0, "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_refused_without_pin_or_ca() {
    let (sim, _) = https_sim(Dialect::Generic).await;
    let e = browse(&settings(sim.https_base_url(), Dialect::Generic))
        .await
        .unwrap_err();
    assert!(matches!(e, StationError::Unreachable(_)), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert_eq!(sim.stats().total_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_invalid_certs_accepts_it() {
    let (sim, _) = https_sim(Dialect::Generic).await;
    let mut s = settings(sim.https_base_url(), Dialect::Generic);
    s.wincc.accept_invalid_certs = true;
    assert_eq!(browse(&s).await.unwrap(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wincc_v7_over_https_with_a_pinned_certificate() {
    let (sim, der) = https_sim(Dialect::WinccV7).await;
    let mut s = settings(
        format!("{}/WinCCRestService", sim.https_base_url()),
        Dialect::WinccV7,
    );
    s.wincc.pinned_cert_sha256 = fingerprint(&der);
    let station = wincc::connect(&s).unwrap();
    let tags = station.list_tags().await.unwrap();
    let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
    let readings = station.read_values(&arcs(&names)).await.unwrap();
    assert_eq!(readings.len(), 50);
    assert!(readings.iter().all(|r| r.error.is_none()));
}

#[test]
fn a_malformed_pin_is_a_located_setting_error() {
    let mut s = settings("https://127.0.0.1:1/".into(), Dialect::Generic);
    s.wincc.pinned_cert_sha256 = "12:34".into();
    let e = wincc::connect(&s).err().unwrap().to_string();
    assert!(e.starts_with("wincc.pinned_cert_sha256"), "{e}");
}

/// Tag names as the station clients take them.
fn arcs(names: &[String]) -> Vec<std::sync::Arc<str>> {
    names.iter().map(|n| n.as_str().into()).collect()
}

/// A Unified station over HTTPS whose certificate names only `localhost`
/// (reached as 127.0.0.1), with a login, and its certificate's DER.
async fn unified_localhost_only() -> (SimHandle, Vec<u8>) {
    sim::tls::start_tls_named(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 50,
            change_rate: 0.0,
            auth: AuthMode::Session,
            alarms: false,
            dialect: Dialect::Unified,
            users: vec![("gateway".into(), "pw".into())],
            ..SimOptions::default()
        },
        &["localhost"],
    )
    .await
    .unwrap()
}

fn unified_settings(sim: &SimHandle) -> Settings {
    let mut s = settings(
        format!("{}/graphql", sim.https_base_url()),
        Dialect::Unified,
    );
    s.wincc.auth = AuthMode::Session;
    // A password file of its own: the shared one is rewritten by every
    // other test while this one logs in.
    let pw = std::env::temp_dir().join(format!(
        "tls-pin-{}-{}.pw",
        std::process::id(),
        sim.addr().port()
    ));
    std::fs::write(&pw, "pw").unwrap();
    s.wincc.password_file = pw.to_string_lossy().into_owned();
    s
}

/// Opens a subscription to two tags and waits for both `Added` readings.
async fn subscribed(s: &Settings) -> Result<usize, StationError> {
    let station = wincc::connect(s).expect("client builds");
    let names: Vec<String> = station
        .list_tags()
        .await?
        .into_iter()
        .take(2)
        .map(|t| t.name)
        .collect();
    let mut sub = station
        .subscribe(&arcs(&names))
        .await?
        .expect("unified subscribes");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), sub.next()).await {
            Ok(Some(wincc::SubscriptionEvent::Readings(r))) => {
                for r in r {
                    assert!(r.error.is_none(), "{r:?}");
                    seen.insert(r.name.to_string());
                }
            }
            Ok(Some(wincc::SubscriptionEvent::Closed(e))) => return Err(e),
            other => panic!("no readings: {other:?}"),
        }
    }
    Ok(seen.len())
}

fn websockets(sim: &SimHandle) -> u64 {
    sim.stats()
        .requests
        .get("GET /graphql websocket")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_wss_trusts_the_pin_like_https_does() {
    let (sim, der) = unified_localhost_only().await;
    let mut s = unified_settings(&sim);
    s.wincc.pinned_cert_sha256 = fingerprint(&der);
    assert_eq!(subscribed(&s).await.unwrap(), 2);
    assert_eq!(websockets(&sim), 1);
    // The system roots alone do not trust it: neither request gets through.
    let e = subscribed(&unified_settings(&sim)).await.unwrap_err();
    assert!(matches!(e, StationError::Unreachable(_)), "{e:?}");
    assert_eq!(websockets(&sim), 1, "no WebSocket, so no token, went out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localhost_certificate_in_ca_file_needs_the_host_name_check_skipped() {
    use base64::Engine;
    let (sim, der) = unified_localhost_only().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("runtime.pem");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    std::fs::write(
        &ca,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    let mut s = unified_settings(&sim);
    s.wincc.ca_file = ca.to_string_lossy().into_owned();
    // Trusted, but issued for localhost, reached as 127.0.0.1: refused.
    let e = browse(&s).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert_eq!(sim.stats().total_requests, 0);
    // With the name check skipped: HTTPS and wss:// both work.
    s.wincc.tls_skip_hostname_check = true;
    assert_eq!(subscribed(&s).await.unwrap(), 2);
    assert_eq!(websockets(&sim), 1);
}

#[test]
fn skipping_the_host_name_check_needs_a_pin_or_a_ca() {
    let toml = r#"
[wincc]
base_url = "https://127.0.0.1:4443/graphql/"
dialect = "unified"
auth = "none"
tls_skip_hostname_check = true
[[poll_group]]
name = "g"
interval_ms = 1000
tags = ["**"]
"#;
    let e = Settings::from_toml_with_env(toml, "t", std::iter::empty())
        .expect_err("refused")
        .to_string();
    assert!(e.contains("wincc.tls_skip_hostname_check"), "{e}");
    let pinned = toml.replace(
        "tls_skip_hostname_check = true",
        &format!(
            "tls_skip_hostname_check = true\npinned_cert_sha256 = \"{}\"",
            "ab".repeat(32)
        ),
    );
    Settings::from_toml_with_env(&pinned, "t", std::iter::empty()).expect("valid with a pin");
}
