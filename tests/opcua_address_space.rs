//! The OPC UA address space and values, seen by the real async-opcua client
//! over TCP: hierarchy, NodeIds, browse names, data types, values, status
//! codes, source timestamps, subscriptions, outages and tag-list updates.

use crate::opcua_support;

use opcua::nodes::AccessLevel;
use opcua::types::{
    AttributeId, DataTypeId, NodeClass, NodeId, ObjectId, QualifiedName, StatusCode, Variant,
};
use opcua_support::*;
use serde_json::json;
use wincc_gateway::http::ComponentState;
use wincc_gateway::model::{BadReason, Quality, TagType};

fn is_null(dv: &opcua::types::DataValue) -> bool {
    matches!(dv.value, None | Some(Variant::Empty))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_types_values_and_timestamps() {
    let pki = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = start(&settings(pki.path()), None).await;
    let tags = [
        ("Line1/Mixer/Speed", TagType::Double, true),
        ("Line1/Mixer/On", TagType::Bool, true),
        ("Line1/Count", TagType::Int32, false),
        ("Line1", TagType::Int16, false),
        ("A//B", TagType::String, false),
        ("Tank 3.Level", TagType::Float, false),
        ("Ünï/x#+%\u{1}", TagType::UInt16, false),
        ("Line2/Big", TagType::Int64, false),
        ("Line2/U32", TagType::UInt32, false),
        ("Line2/When", TagType::DateTime, false),
    ];
    gw.tags(&tags);
    let ts = "2026-05-06T07:08:09.123Z";
    gw.changes(vec![
        change("Line1/Mixer/Speed", TagType::Double, json!(12.5), ts),
        change("Line1/Mixer/On", TagType::Bool, json!(true), ts),
        change("Line1/Count", TagType::Int32, json!(-7), ts),
        change("Line1", TagType::Int16, json!(3), ts),
        change("A//B", TagType::String, json!("hello"), ts),
        change("Tank 3.Level", TagType::Float, json!(0.25), ts),
        change("Ünï/x#+%\u{1}", TagType::UInt16, json!(65535), ts),
        change("Line2/Big", TagType::Int64, json!(-9007199254740993i64), ts),
        change("Line2/U32", TagType::UInt32, json!(4000000000u64), ts),
        change(
            "Line2/When",
            TagType::DateTime,
            json!("2026-01-01T00:00:00Z"),
            ts,
        ),
    ]);

    let c = connect_anonymous(&gw.url, client_pki.path()).await;
    let s = &c.session;
    let ns = s.get_namespace_index(NS).await.unwrap();
    let fns = s
        .get_namespace_index(&format!("{NS}/folders"))
        .await
        .unwrap();
    assert_ne!(ns, fns);

    // Objects/WinCC
    let objects = browse(s, &ObjectId::ObjectsFolder.into()).await;
    let root = objects
        .iter()
        .find(|r| r.browse_name == QualifiedName::new(fns, "WinCC"))
        .expect("WinCC under Objects, browse name in the folders namespace");
    assert_eq!(root.node_class, NodeClass::Object);
    let root_id = root.node_id.node_id.clone();

    // Its children: folders in the folders namespace, variables in the tag namespace.
    let top = browse(s, &root_id).await;
    let mut names: Vec<(u16, String, NodeClass, NodeId)> = top
        .iter()
        .map(|r| {
            (
                r.browse_name.namespace_index,
                r.browse_name.name.to_string(),
                r.node_class,
                r.node_id.node_id.clone(),
            )
        })
        .collect();
    names.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    assert_eq!(
        names,
        vec![
            (fns, "A".into(), NodeClass::Object, NodeId::new(fns, "A")),
            (
                ns,
                "Line1".into(),
                NodeClass::Variable,
                NodeId::new(ns, "Line1")
            ),
            (
                fns,
                "Line1".into(),
                NodeClass::Object,
                NodeId::new(fns, "Line1")
            ),
            (
                fns,
                "Line2".into(),
                NodeClass::Object,
                NodeId::new(fns, "Line2")
            ),
            (
                ns,
                "Tank 3.Level".into(),
                NodeClass::Variable,
                NodeId::new(ns, "Tank 3.Level")
            ),
            (
                fns,
                "Ünï".into(),
                NodeClass::Object,
                NodeId::new(fns, "Ünï")
            ),
        ]
    );
    let line1 = browse(s, &NodeId::new(fns, "Line1")).await;
    assert!(line1
        .iter()
        .any(|r| r.node_id.node_id == NodeId::new(fns, "Line1/Mixer")
            && r.browse_name == QualifiedName::new(fns, "Mixer")));
    assert!(line1
        .iter()
        .any(|r| r.node_id.node_id == NodeId::new(ns, "Line1/Count")
            && r.browse_name == QualifiedName::new(ns, "Count")));
    let mixer = browse(s, &NodeId::new(fns, "Line1/Mixer")).await;
    let mut leaves: Vec<_> = mixer.iter().map(|r| r.node_id.node_id.clone()).collect();
    leaves.sort_by_key(|n| n.to_string());
    assert_eq!(
        leaves,
        vec![
            NodeId::new(ns, "Line1/Mixer/On"),
            NodeId::new(ns, "Line1/Mixer/Speed")
        ]
    );
    let a = browse(s, &NodeId::new(fns, "A")).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].browse_name, QualifiedName::new(ns, "/B"));
    assert_eq!(a[0].node_id.node_id, NodeId::new(ns, "A//B"));
    let odd = browse(s, &NodeId::new(fns, "Ünï")).await;
    assert_eq!(odd[0].browse_name, QualifiedName::new(ns, "x#+%\u{1}"));

    // Data types, values, status codes and the station's source timestamp.
    let ids: Vec<NodeId> = tags.iter().map(|t| NodeId::new(ns, t.0)).collect();
    eventually_read(s, &ids[ids.len() - 1], |dv| dv.status() == StatusCode::Good).await;
    let types = read(s, &ids, AttributeId::DataType).await;
    let expected = [
        DataTypeId::Double,
        DataTypeId::Boolean,
        DataTypeId::Int32,
        DataTypeId::Int16,
        DataTypeId::String,
        DataTypeId::Float,
        DataTypeId::UInt16,
        DataTypeId::Int64,
        DataTypeId::UInt32,
        DataTypeId::DateTime,
    ];
    for ((dv, want), t) in types.iter().zip(expected).zip(&tags) {
        assert_eq!(
            dv.value,
            Some(Variant::NodeId(Box::new(want.into()))),
            "{}",
            t.0
        );
    }
    let values = read(s, &ids, AttributeId::Value).await;
    let when: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let want = [
        Variant::Double(12.5),
        Variant::Boolean(true),
        Variant::Int32(-7),
        Variant::Int16(3),
        Variant::String("hello".into()),
        Variant::Float(0.25),
        Variant::UInt16(65535),
        Variant::Int64(-9007199254740993),
        Variant::UInt32(4_000_000_000),
        Variant::DateTime(Box::new(when.into())),
    ];
    let source: chrono::DateTime<chrono::Utc> = ts.parse().unwrap();
    for ((dv, want), t) in values.iter().zip(want).zip(&tags) {
        assert_eq!(dv.value.as_ref(), Some(&want), "{}", t.0);
        assert_eq!(dv.status(), StatusCode::Good, "{}", t.0);
        assert_eq!(dv.source_timestamp.unwrap().as_chrono(), source, "{}", t.0);
        assert!(dv.server_timestamp.is_some());
    }
    // No writer: nothing is writable, whatever the station says.
    let access = read(s, &ids[..2], AttributeId::UserAccessLevel).await;
    for dv in access {
        let Some(Variant::Byte(b)) = dv.value else {
            panic!("{dv:?}")
        };
        assert_eq!(b, AccessLevel::CURRENT_READ.bits());
    }

    assert_eq!(gw.status.state(), ComponentState::Up);
    assert!(
        gw.status.sessions() >= 1,
        "sessions = {}",
        gw.status.sessions()
    );
    c.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_fire_and_outages_are_bad_communication_with_null() {
    let pki = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = start(&settings(pki.path()), None).await;
    gw.tags(&[
        ("S/Speed", TagType::Double, false),
        ("S/Gone", TagType::Int32, false),
        ("S/Broken", TagType::Int32, false),
    ]);
    let c = connect_anonymous(&gw.url, client_pki.path()).await;
    let s = &c.session;
    let ns = s.get_namespace_index(NS).await.unwrap();
    let speed = NodeId::new(ns, "S/Speed");
    let gone = NodeId::new(ns, "S/Gone");
    let broken = NodeId::new(ns, "S/Broken");
    // Before any value: waiting for initial data.
    let first = eventually_read(s, &speed, |dv| {
        dv.status() == StatusCode::BadWaitingForInitialData
    })
    .await;
    assert!(is_null(&first));

    let mut rx = subscribe(s, &[speed.clone(), gone.clone(), broken.clone()], 10).await;
    // A client that sends no DataChangeFilter (see opcua_support::subscribe).
    let mut plain = subscribe_with(s, std::slice::from_ref(&speed), 1, false).await;
    gw.changes(vec![change(
        "S/Speed",
        TagType::Double,
        json!(1.5),
        "2026-01-01T00:00:01Z",
    )]);
    let dv = rx
        .wait_for(&speed, |dv| dv.value == Some(Variant::Double(1.5)))
        .await;
    assert_eq!(dv.status(), StatusCode::Good);

    let mut unsure = change(
        "S/Speed",
        TagType::Double,
        json!(1.75),
        "2026-01-01T00:00:02Z",
    );
    unsure.quality = Quality::Uncertain;
    gw.changes(vec![unsure]);
    let dv = rx
        .wait_for(&speed, |dv| dv.value == Some(Variant::Double(1.75)))
        .await;
    assert!(dv.status().is_uncertain(), "{}", dv.status());

    // The station goes away: the poller reports it and marks every tag it
    // cannot read bad (keeping the last value, which OPC UA must not show).
    gw.station(false);
    let comm = |name: &str| {
        let mut c = change(name, TagType::Double, json!(1.75), "2026-01-01T00:00:02Z");
        c.quality = Quality::Bad;
        c.error = Some(BadReason::Communication("connection refused".into()));
        c
    };
    let mut broken_comm = comm("S/Broken");
    broken_comm.ty = TagType::Int32;
    broken_comm.value = serde_json::Value::Null;
    gw.changes(vec![comm("S/Speed"), broken_comm]);
    let dv = rx
        .wait_for(&speed, |dv| {
            dv.status() == StatusCode::BadCommunicationError
        })
        .await;
    assert!(is_null(&dv), "{dv:?}");
    let dv = plain.wait_for(&speed, |dv| dv.status().is_bad()).await;
    assert_eq!(
        dv.status().sub_code(),
        StatusCode::BadCommunicationError.sub_code()
    );
    assert!(is_null(&dv));
    let dv = rx
        .wait_for(&broken, |dv| {
            dv.status() == StatusCode::BadCommunicationError
        })
        .await;
    assert!(is_null(&dv));
    let read_back = read(s, std::slice::from_ref(&speed), AttributeId::Value)
        .await
        .remove(0);
    assert_eq!(read_back.status(), StatusCode::BadCommunicationError);
    assert!(is_null(&read_back));

    // It comes back: Good again.
    gw.station(true);
    gw.changes(vec![change(
        "S/Speed",
        TagType::Double,
        json!(2.0),
        "2026-01-01T00:00:04Z",
    )]);
    let dv = rx
        .wait_for(&speed, |dv| dv.value == Some(Variant::Double(2.0)))
        .await;
    assert_eq!(dv.status(), StatusCode::Good);
    plain
        .wait_for(&speed, |dv| dv.value == Some(Variant::Double(2.0)))
        .await;

    // Per-tag station errors.
    let mut unknown = change(
        "S/Gone",
        TagType::Int32,
        serde_json::Value::Null,
        "2026-01-01T00:00:05Z",
    );
    unknown.quality = Quality::Bad;
    unknown.error = Some(BadReason::TagError {
        code: "404".into(),
        message: "tag does not exist".into(),
    });
    let mut failed = change("S/Broken", TagType::Int32, json!(5), "2026-01-01T00:00:05Z");
    failed.quality = Quality::Bad;
    failed.error = Some(BadReason::TagError {
        code: "E17".into(),
        message: "PLC timeout".into(),
    });
    gw.changes(vec![unknown, failed]);
    let dv = rx
        .wait_for(&gone, |dv| dv.status() == StatusCode::BadNodeIdUnknown)
        .await;
    assert!(is_null(&dv));
    let dv = rx
        .wait_for(&broken, |dv| dv.status() == StatusCode::BadDeviceFailure)
        .await;
    assert!(
        is_null(&dv),
        "a Bad value is null even when the station sent one"
    );

    // A value that does not fit the type is not passed on as Good.
    gw.changes(vec![change(
        "S/Broken",
        TagType::Int32,
        json!("not a number"),
        "2026-01-01T00:00:06Z",
    )]);
    rx.wait_for(&broken, |dv| dv.status() == StatusCode::BadTypeMismatch)
        .await;

    c.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_tag_lists_add_new_and_remove_vanished_nodes() {
    let pki = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = start(&settings(pki.path()), None).await;
    gw.tags(&[
        ("Old/Only", TagType::Int32, false),
        ("Keep/It", TagType::Bool, false),
    ]);
    gw.changes(vec![change(
        "Old/Only",
        TagType::Int32,
        json!(1),
        "2026-01-01T00:00:00Z",
    )]);
    let c = connect_anonymous(&gw.url, client_pki.path()).await;
    let s = &c.session;
    let ns = s.get_namespace_index(NS).await.unwrap();
    let fns = s
        .get_namespace_index(&format!("{NS}/folders"))
        .await
        .unwrap();
    let old = NodeId::new(ns, "Old/Only");
    eventually_read(s, &old, |dv| dv.value == Some(Variant::Int32(1))).await;
    let mut rx = subscribe(s, std::slice::from_ref(&old), 10).await;

    gw.tags(&[
        ("Keep/It", TagType::Bool, false),
        ("New/Deep/Tag", TagType::Double, false),
    ]);
    // Subscribers of the vanished tag hear about it; the node and its folder are gone.
    rx.wait_for(&old, |dv| dv.status() == StatusCode::BadNodeIdUnknown)
        .await;
    let gone = read(s, std::slice::from_ref(&old), AttributeId::Value)
        .await
        .remove(0);
    assert_eq!(gone.status(), StatusCode::BadNodeIdUnknown);
    let root = browse(s, &NodeId::new(fns, 1u32)).await;
    let mut top: Vec<String> = root
        .iter()
        .map(|r| r.browse_name.name.to_string())
        .collect();
    top.sort();
    assert_eq!(top, ["Keep", "New"]);
    let deep = browse(s, &NodeId::new(fns, "New/Deep")).await;
    assert_eq!(deep[0].node_id.node_id, NodeId::new(ns, "New/Deep/Tag"));
    gw.changes(vec![change(
        "New/Deep/Tag",
        TagType::Double,
        json!(4.5),
        "2026-01-01T00:00:00Z",
    )]);
    eventually_read(s, &NodeId::new(ns, "New/Deep/Tag"), |dv| {
        dv.value == Some(Variant::Double(4.5))
    })
    .await;

    // A change for a tag not announced yet still shows up (read-only).
    gw.changes(vec![change(
        "Late/Tag",
        TagType::Int16,
        json!(9),
        "2026-01-01T00:00:00Z",
    )]);
    eventually_read(s, &NodeId::new(ns, "Late/Tag"), |dv| {
        dv.value == Some(Variant::Int16(9))
    })
    .await;

    c.close().await;
    gw.shutdown().await;
}
