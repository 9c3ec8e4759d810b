//! OPC UA writes through the whole gateway: the WinCC simulator over real
//! HTTP, the generic station client, the poller and the bus, the OPC UA sink
//! and the real async-opcua client over TCP. A write answers Good only once
//! the station took it; refusals never reach the station. Only sessions of
//! users with role `write` may write (contract §8).

use crate::opcua_support;

use std::sync::Arc;
use std::time::Duration;

use opcua::client::IdentityToken;
use opcua::crypto::SecurityPolicy;
use opcua::nodes::AccessLevel;
use opcua::types::{
    AttributeId, DataValue, LocalizedText, MessageSecurityMode, NodeId, NumericRange, StatusCode,
    Variant, WriteValue,
};
use opcua_support::*;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::Bus;
use wincc_gateway::config::{Dialect, Settings};
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::poll::Poller;
use wincc_gateway::sim::{self, Faults, SimHandle, SimOptions};
use wincc_gateway::writes::{TagMap, Writer};

struct Plant {
    sim: SimHandle,
    gw: Gateway,
    poll_stop: CancellationToken,
    _pki: tempfile::TempDir,
}

/// The plant's OPC UA users: `operator` may write, `viewer` may not.
const OPERATOR_PW: &str = "op-s3cret";
const VIEWER_PW: &str = "view-s3cret";

/// A session of the `write` user over the None endpoint (the password
/// encrypted with the server certificate).
async fn connect_operator(url: &str, client_pki: &std::path::Path) -> Client {
    connect_user(url, "operator", OPERATOR_PW, client_pki).await
}

async fn plant() -> Plant {
    plant_with(Dialect::Generic).await
}

/// The simulator speaking `dialect`, the matching station client, the
/// poller and the OPC UA sink with writes enabled.
async fn plant_with(dialect: Dialect) -> Plant {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 20,
            change_rate: 0.0,
            alarms: false,
            dialect,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    for (name, ty, writable, v) in [
        ("Plant/Setpoint", TagType::Double, true, json!(1.0)),
        ("Plant/Mode", TagType::Int16, true, json!(0)),
        ("Plant/SetFloat", TagType::Float, true, json!(0.5)),
        ("Plant/ReadOnly", TagType::Double, false, json!(5.0)),
        ("Plant/NotListed", TagType::Double, true, json!(7.0)),
    ] {
        sim.add_tag(
            TagInfo {
                name: name.into(),
                ty,
                writable,
            },
            v,
        );
    }
    let pki = tempfile::tempdir().unwrap();
    // V7 always wants Basic auth, Unified a session (the simulator's default user).
    let pw = pki.path().join("station-password");
    std::fs::write(&pw, "gateway").unwrap();
    let (op_pw, view_pw) = (pki.path().join("op.pw"), pki.path().join("view.pw"));
    std::fs::write(&op_pw, OPERATOR_PW).unwrap();
    std::fs::write(&view_pw, VIEWER_PW).unwrap();
    let login =
        |mode: &str| format!("auth = \"{mode}\"\nusername = \"gateway\"\npassword_file = {pw:?}");
    let (base, auth) = match dialect {
        Dialect::WinccV7 => (
            format!("{}/WinCCRestService", sim.base_url()),
            login("basic"),
        ),
        Dialect::Unified => (format!("{}/graphql", sim.base_url()), login("session")),
        Dialect::Generic => (sim.base_url(), "auth = \"none\"".to_string()),
    };
    let toml = format!(
        r#"
[wincc]
base_url = "{base}"
dialect = "{dialect}"
{auth}
timeout_ms = 1000
[wincc.rate_limit]
requests_per_second = 500
burst = 50
max_in_flight = 4
[[poll_group]]
name = "fast"
interval_ms = 100
tags = ["Plant/**"]
[alarms]
enabled = false
[mqtt]
enabled = false
[opcua]
endpoint = "opc.tcp://127.0.0.1:0/"
namespace_uri = "{ns}"
pki_dir = "{pki}"
security_policies = ["None", "Basic256Sha256"]
trust_client_certs = true
allow_anonymous = true
users = [
  {{ username = "operator", password_file = {op_pw:?}, role = "write" }},
  {{ username = "viewer", password_file = {view_pw:?} }},
]
write_enabled = true
writable_tags = ["Plant/Set*", "Plant/Mode", "Plant/ReadOnly"]
[http]
enabled = false
"#,
        base = base,
        auth = auth,
        dialect = dialect.as_str(),
        ns = NS,
        pki = pki.path().display(),
    );
    let settings =
        Settings::from_toml_with_env(&toml, "test", std::iter::empty()).expect("valid settings");
    let station = wincc_gateway::wincc::connect(&settings).expect("station client");
    let (tags_tx, tags_rx) = watch::channel(Arc::new(TagMap::new()));
    let writer = Writer::new(station.clone(), tags_rx);
    let bus = Bus::new();
    // The sink subscribes before the poller publishes its first events.
    let gw = start_on(bus.clone(), &settings.opcua, Some(writer)).await;
    let poll_stop = CancellationToken::new();
    let poller = Poller::new(&settings, station, bus, tags_tx);
    let token = poll_stop.clone();
    tokio::spawn(async move { poller.run(token).await });
    Plant {
        sim,
        gw,
        poll_stop,
        _pki: pki,
    }
}

fn write_value(node: &NodeId, value: Variant) -> WriteValue {
    WriteValue {
        node_id: node.clone(),
        attribute_id: AttributeId::Value as u32,
        index_range: NumericRange::None,
        value: DataValue::new_now(value),
    }
}

async fn write(c: &Client, node: &NodeId, value: Variant) -> StatusCode {
    c.session
        .write(&[write_value(node, value)])
        .await
        .expect("write service")[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_station_only_when_allowed_and_well_typed() {
    let p = plant().await;
    let client_pki = tempfile::tempdir().unwrap();
    let c = connect_operator(&p.gw.url, client_pki.path()).await;
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let id = |n: &str| NodeId::new(ns, n);
    let setpoint = id("Plant/Setpoint");
    eventually_read(&c.session, &setpoint, |dv| {
        dv.value == Some(Variant::Double(1.0))
    })
    .await;

    // CurrentWrite only where allow-listed AND writable at the station.
    let ids = [
        setpoint.clone(),
        id("Plant/Mode"),
        id("Plant/ReadOnly"),
        id("Plant/NotListed"),
    ];
    let levels: Vec<u8> = read(&c.session, &ids, AttributeId::UserAccessLevel)
        .await
        .into_iter()
        .map(|dv| match dv.value {
            Some(Variant::Byte(b)) => b,
            other => panic!("{other:?}"),
        })
        .collect();
    let rw = (AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE).bits();
    let ro = AccessLevel::CURRENT_READ.bits();
    assert_eq!(levels, [rw, rw, ro, ro]);

    // Allowed: Good only after the station took it.
    assert_eq!(
        write(&c, &setpoint, Variant::Double(42.5)).await,
        StatusCode::Good
    );
    assert_eq!(p.sim.value("Plant/Setpoint"), Some(json!(42.5)));
    let dv = read(
        &c.session,
        std::slice::from_ref(&setpoint),
        AttributeId::Value,
    )
    .await
    .remove(0);
    assert_eq!(dv.value, Some(Variant::Double(42.5)));
    assert_eq!(
        write(&c, &id("Plant/Mode"), Variant::Int16(-3)).await,
        StatusCode::Good
    );
    assert_eq!(p.sim.value("Plant/Mode"), Some(json!(-3)));
    assert_eq!(
        write(&c, &id("Plant/SetFloat"), Variant::Float(0.75)).await,
        StatusCode::Good
    );
    assert_eq!(p.sim.value("Plant/SetFloat"), Some(json!(0.75)));

    // Refused before the station: not allow-listed, read-only at the station,
    // wrong type, no JSON number for NaN, not a variable, not the Value.
    let before = p
        .sim
        .stats()
        .requests
        .get("PUT /tags/{name}/value")
        .copied()
        .unwrap_or(0);
    let refusals = [
        (
            id("Plant/NotListed"),
            Variant::Double(1.0),
            StatusCode::BadUserAccessDenied,
        ),
        (
            id("Plant/ReadOnly"),
            Variant::Double(1.0),
            StatusCode::BadUserAccessDenied,
        ),
        (
            setpoint.clone(),
            Variant::Int32(5),
            StatusCode::BadTypeMismatch,
        ),
        (
            setpoint.clone(),
            Variant::String("5".into()),
            StatusCode::BadTypeMismatch,
        ),
        (
            id("Plant/Mode"),
            Variant::Int32(3),
            StatusCode::BadTypeMismatch,
        ),
        (
            id("Plant/SetFloat"),
            Variant::Float(f32::NAN),
            StatusCode::BadOutOfRange,
        ),
        (
            id("Plant/Unknown"),
            Variant::Double(1.0),
            StatusCode::BadNodeIdUnknown,
        ),
    ];
    for (node, value, want) in refusals {
        assert_eq!(
            write(&c, &node, value.clone()).await,
            want,
            "{node} <- {value:?}"
        );
    }
    let fns = c
        .session
        .get_namespace_index(&format!("{NS}/folders"))
        .await
        .unwrap();
    let folder = c
        .session
        .write(&[write_value(
            &NodeId::new(fns, "Plant"),
            Variant::Double(1.0),
        )])
        .await
        .unwrap();
    assert!(folder[0].is_bad(), "{}", folder[0]);
    let mut display = write_value(&setpoint, Variant::from(LocalizedText::new("", "x")));
    display.attribute_id = AttributeId::DisplayName as u32;
    assert!(c.session.write(&[display]).await.unwrap()[0].is_bad());
    assert_eq!(p.sim.value("Plant/NotListed"), Some(json!(7.0)));
    assert_eq!(p.sim.value("Plant/ReadOnly"), Some(json!(5.0)));
    assert_eq!(p.sim.value("Plant/Setpoint"), Some(json!(42.5)));
    let after = p
        .sim
        .stats()
        .requests
        .get("PUT /tags/{name}/value")
        .copied()
        .unwrap_or(0);
    assert_eq!(before, after, "no refused write reached the station");

    c.close().await;
    p.poll_stop.cancel();
    p.gw.shutdown().await;
    p.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_outage_is_bad_communication_for_values_and_writes() {
    let p = plant().await;
    let client_pki = tempfile::tempdir().unwrap();
    let c = connect_operator(&p.gw.url, client_pki.path()).await;
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let setpoint = NodeId::new(ns, "Plant/Setpoint");
    let readonly = NodeId::new(ns, "Plant/ReadOnly");
    eventually_read(&c.session, &setpoint, |dv| {
        dv.value == Some(Variant::Double(1.0))
    })
    .await;
    let mut rx = subscribe(&c.session, &[setpoint.clone(), readonly.clone()], 10).await;
    rx.wait_for(&readonly, |dv| dv.value == Some(Variant::Double(5.0)))
        .await;

    p.sim.set_faults(Faults {
        outage_s: 60.0,
        ..Faults::default()
    });
    let dv = rx
        .wait_for(&setpoint, |dv| {
            dv.status() == StatusCode::BadCommunicationError
        })
        .await;
    assert!(matches!(dv.value, None | Some(Variant::Empty)), "{dv:?}");
    rx.wait_for(&readonly, |dv| {
        dv.status() == StatusCode::BadCommunicationError
    })
    .await;
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        write(&c, &setpoint, Variant::Double(9.0)),
    )
    .await
    .expect("the write answers while the station is down");
    assert_eq!(status, StatusCode::BadCommunicationError);

    p.sim.set_faults(Faults::default());
    let dv = rx
        .wait_for(&setpoint, |dv| dv.status() == StatusCode::Good)
        .await;
    assert_eq!(
        dv.value,
        Some(Variant::Double(1.0)),
        "the failed write changed nothing"
    );
    rx.wait_for(&readonly, |dv| dv.value == Some(Variant::Double(5.0)))
        .await;
    assert_eq!(
        write(&c, &setpoint, Variant::Double(9.0)).await,
        StatusCode::Good
    );
    assert_eq!(p.sim.value("Plant/Setpoint"), Some(json!(9.0)));

    c.close().await;
    p.poll_stop.cancel();
    p.gw.shutdown().await;
    p.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_call_for_many_nodes_is_one_batch_request_to_a_v7_station() {
    batch_write(Dialect::WinccV7, "PUT /tagManagement/Values").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_call_for_many_nodes_is_one_mutation_to_a_unified_station() {
    batch_write(Dialect::Unified, "POST /graphql writeTagValues").await;
}

/// One OPC UA Write call with five nodes against `dialect`: the three that
/// pass the checks reach the station in ONE request (`endpoint` in the
/// simulator's statistics), the two refusals never do.
async fn batch_write(dialect: Dialect, endpoint: &str) {
    let p = plant_with(dialect).await;
    let client_pki = tempfile::tempdir().unwrap();
    let c = connect_operator(&p.gw.url, client_pki.path()).await;
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let id = |n: &str| NodeId::new(ns, n);
    eventually_read(&c.session, &id("Plant/Setpoint"), |dv| {
        dv.value == Some(Variant::Double(1.0))
    })
    .await;
    let batches = |p: &Plant| {
        let st = p.sim.stats();
        let n = |k: &str| st.requests.get(k).copied().unwrap_or(0);
        // (a unified station has one mutation for one or many writes)
        (n(endpoint), n("PUT /tagManagement/Value/{name}"))
    };
    let before = batches(&p);

    // A recipe: three good setpoints, one refused by the allow-list and one
    // of the wrong type, in ONE Write call.
    let statuses = c
        .session
        .write(&[
            write_value(&id("Plant/Setpoint"), Variant::Double(12.5)),
            write_value(&id("Plant/NotListed"), Variant::Double(3.0)),
            write_value(&id("Plant/Mode"), Variant::Int16(7)),
            write_value(&id("Plant/SetFloat"), Variant::String("fast".into())),
            write_value(&id("Plant/SetFloat"), Variant::Float(0.25)),
        ])
        .await
        .expect("write service");
    assert_eq!(
        statuses,
        [
            StatusCode::Good,
            StatusCode::BadUserAccessDenied,
            StatusCode::Good,
            StatusCode::BadTypeMismatch,
            StatusCode::Good,
        ]
    );
    // The three that passed went to the station in one batch request; the
    // two refusals never reached it.
    let after = batches(&p);
    assert_eq!(
        after.0 - before.0,
        1,
        "one batch write: {before:?} -> {after:?}"
    );
    assert_eq!(after.1, before.1, "no single writes");
    assert_eq!(p.sim.value("Plant/Setpoint"), Some(json!(12.5)));
    assert_eq!(p.sim.value("Plant/Mode"), Some(json!(7)));
    assert_eq!(p.sim.value("Plant/SetFloat"), Some(json!(0.25)));
    assert_eq!(p.sim.value("Plant/NotListed"), Some(json!(7.0)));
    // Clients see the written values at once.
    let values: Vec<_> = read(
        &c.session,
        &[id("Plant/Setpoint"), id("Plant/Mode")],
        AttributeId::Value,
    )
    .await
    .into_iter()
    .map(|dv| dv.value)
    .collect();
    assert_eq!(
        values,
        [Some(Variant::Double(12.5)), Some(Variant::Int16(7))]
    );

    // The same node twice in one call: written one after the other, in
    // order (one request would leave the order to the station), so the
    // later value wins.
    let before = batches(&p);
    let statuses = c
        .session
        .write(&[
            write_value(&id("Plant/Setpoint"), Variant::Double(1.5)),
            write_value(&id("Plant/Setpoint"), Variant::Double(2.5)),
        ])
        .await
        .expect("write service");
    assert_eq!(statuses, [StatusCode::Good, StatusCode::Good]);
    assert_eq!(p.sim.value("Plant/Setpoint"), Some(json!(2.5)));
    let after = batches(&p);
    let requests = (after.0 - before.0) + (after.1 - before.1);
    assert_eq!(requests, 2, "two single writes: {before:?} -> {after:?}");
    p.poll_stop.cancel();
    p.gw.shutdown().await;
}

/// UserAccessLevel of the given nodes, as this session sees it.
async fn user_levels(c: &Client, ids: &[NodeId]) -> Vec<u8> {
    read(&c.session, ids, AttributeId::UserAccessLevel)
        .await
        .into_iter()
        .map(|dv| match dv.value {
            Some(Variant::Byte(b)) => b,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Contract §8, with the real client over None and over SignAndEncrypt:
/// anonymous and `read` sessions see every tag read-only and are refused
/// (Bad_UserAccessDenied, nothing reaches the station); the `write` user's
/// session sees CurrentWrite on the allow-listed tags and writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sessions_of_write_users_may_write() {
    let p = plant().await;
    let client_pki = tempfile::tempdir().unwrap();
    let rw = (AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE).bits();
    let ro = AccessLevel::CURRENT_READ.bits();
    let puts = |p: &Plant| {
        p.sim
            .stats()
            .requests
            .get("PUT /tags/{name}/value")
            .copied()
            .unwrap_or(0)
    };
    let mut value = 100.0;
    for (policy, mode) in [
        (SecurityPolicy::None, MessageSecurityMode::None),
        (
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
        ),
    ] {
        for (who, identity, may_write) in [
            ("anonymous", IdentityToken::Anonymous, false),
            (
                "viewer",
                IdentityToken::new_user_name("viewer", VIEWER_PW),
                false,
            ),
            (
                "operator",
                IdentityToken::new_user_name("operator", OPERATOR_PW),
                true,
            ),
        ] {
            let c = connect(&p.gw.url, policy, mode, identity, client_pki.path())
                .await
                .unwrap_or_else(|e| panic!("{who} over {policy:?}/{mode:?}: {e}"));
            let ns = c.session.get_namespace_index(NS).await.unwrap();
            let id = |n: &str| NodeId::new(ns, n);
            let setpoint = id("Plant/Setpoint");
            eventually_read(&c.session, &setpoint, |dv| dv.status() == StatusCode::Good).await;
            let ids = [setpoint.clone(), id("Plant/Mode"), id("Plant/NotListed")];
            // The variable's AccessLevel is the same for everybody; the
            // UserAccessLevel shows CurrentWrite to write users only.
            let access: Vec<u8> = read(&c.session, &ids, AttributeId::AccessLevel)
                .await
                .into_iter()
                .map(|dv| match dv.value {
                    Some(Variant::Byte(b)) => b,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(access, [rw, rw, ro], "{who}");
            let want = if may_write {
                [rw, rw, ro]
            } else {
                [ro, ro, ro]
            };
            assert_eq!(
                user_levels(&c, &ids).await,
                want,
                "{who} over {policy:?}/{mode:?}"
            );

            value += 1.0;
            let before = puts(&p);
            let status = write(&c, &setpoint, Variant::Double(value)).await;
            if may_write {
                assert_eq!(status, StatusCode::Good, "{who} over {policy:?}/{mode:?}");
                assert_eq!(p.sim.value("Plant/Setpoint"), Some(json!(value)));
                assert_eq!(puts(&p), before + 1);
            } else {
                assert_eq!(
                    status,
                    StatusCode::BadUserAccessDenied,
                    "{who} over {policy:?}/{mode:?}"
                );
                // A batch of several nodes is refused node by node too.
                let statuses = c
                    .session
                    .write(&[
                        write_value(&setpoint, Variant::Double(value)),
                        write_value(&id("Plant/Mode"), Variant::Int16(9)),
                    ])
                    .await
                    .expect("write service");
                assert_eq!(
                    statuses,
                    [
                        StatusCode::BadUserAccessDenied,
                        StatusCode::BadUserAccessDenied
                    ],
                    "{who}"
                );
                assert_eq!(puts(&p), before, "{who}'s write reached the station");
                assert_ne!(p.sim.value("Plant/Setpoint"), Some(json!(value)));
            }
            c.close().await;
        }
    }
    p.poll_stop.cancel();
    p.gw.shutdown().await;
    p.sim.shutdown().await;
}
