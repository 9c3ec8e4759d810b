//! WinCC alarms as OPC UA events, seen by the real async-opcua client over
//! TCP: an event monitored item on `Objects/WinCC` (and one on `Server`)
//! receives raised / acknowledged / cleared transitions fed through the
//! sink's bus, in order, with Message, Severity, SourceName, SourceNode,
//! Time, EventType and the gateway's own fields. Also: the event type in the
//! address space, the Server's HasNotifier reference to the folder, filter
//! validation, and the session count in `/healthz`.

use crate::opcua_support;

use std::sync::Arc;
use std::time::Duration;

use opcua::client::{EventCallback, Session};
use opcua::types::{
    AttributeId, ContentFilter, DateTime, EventFilter, EventFilterResult, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeClass, NodeId,
    NumericRange, ObjectId, ObjectTypeId, QualifiedName, ReadValueId, ReferenceTypeId,
    SimpleAttributeOperand, StatusCode, TimestampsToReturn, Variant,
};
use opcua_support::*;
use tokio::sync::mpsc;
use wincc_gateway::bus::{AlarmEvent, AlarmEventKind, Event};
use wincc_gateway::http::ComponentState;
use wincc_gateway::model::{parse_ts, Alarm, AlarmState, TagType};

/// The standard fields selected (BaseEventType, namespace 0).
const BASE_FIELDS: [&str; 7] = [
    "Message",
    "Severity",
    "SourceName",
    "Time",
    "SourceNode",
    "EventType",
    "ReceiveTime",
];
/// The gateway's own fields (WinCCAlarmEventType, the gateway's namespace).
const OWN_FIELDS: [&str; 3] = ["AlarmId", "AlarmClass", "Transition"];

fn operand(type_id: NodeId, ns: u16, name: &str) -> SimpleAttributeOperand {
    SimpleAttributeOperand {
        type_definition_id: type_id,
        browse_path: Some(vec![QualifiedName::new(ns, name)]),
        attribute_id: AttributeId::Value as u32,
        index_range: NumericRange::None,
    }
}

fn filter(ns: u16, extra: Option<SimpleAttributeOperand>) -> EventFilter {
    let event_type = NodeId::new(ns, 1000u32);
    let mut select: Vec<_> = BASE_FIELDS
        .iter()
        .map(|f| operand(ObjectTypeId::BaseEventType.into(), 0, f))
        .collect();
    select.extend(
        OWN_FIELDS
            .iter()
            .map(|f| operand(event_type.clone(), ns, f)),
    );
    select.extend(extra);
    EventFilter {
        select_clauses: Some(select),
        where_clause: ContentFilter { elements: None },
    }
}

/// Events received: (client handle, selected fields).
type Events = mpsc::UnboundedReceiver<(u32, Vec<Variant>)>;

/// One subscription with an event item per node (client handles 1, 2, ...).
/// Returns the receiver and each item's filter result.
async fn subscribe_events(
    session: &Session,
    nodes: &[NodeId],
    filter: &EventFilter,
) -> (Events, Vec<(StatusCode, EventFilterResult)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = session
        .create_subscription(
            Duration::from_millis(100),
            300,
            20,
            0,
            0,
            true,
            EventCallback::new(move |fields, item| {
                let _ = tx.send((item.client_handle(), fields.unwrap_or_default()));
            }),
        )
        .await
        .expect("create_subscription");
    let items: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            MonitoredItemCreateRequest::new(
                ReadValueId::new(n.clone(), AttributeId::EventNotifier),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    client_handle: i as u32 + 1,
                    sampling_interval: 0.0,
                    queue_size: 100,
                    discard_oldest: true,
                    filter: ExtensionObject::from_message(filter.clone()),
                },
            )
        })
        .collect();
    let created = session
        .create_monitored_items(sub, TimestampsToReturn::Both, items)
        .await
        .expect("create_monitored_items");
    let results = created
        .iter()
        .map(|c| {
            let r = c
                .result
                .filter_result
                .inner_as::<EventFilterResult>()
                .cloned()
                .unwrap_or_else(|| panic!("no EventFilterResult: {:?}", c.result));
            (c.result.status_code, r)
        })
        .collect();
    (rx, results)
}

fn alarm(id: &str, name: &str, priority: u32) -> Alarm {
    Alarm {
        id: id.into(),
        name: name.into(),
        text: format!("{name} out of range"),
        class: "Alarm".into(),
        priority,
        state: AlarmState::Raised,
        raised_at: "2026-05-06T07:08:09.123Z".into(),
        acknowledged_at: None,
        cleared_at: None,
    }
}

fn publish(gw: &Gateway, events: Vec<AlarmEvent>) {
    gw.bus.publish(Event::Alarms(Arc::new(events)));
}

fn ts(s: &str) -> Variant {
    Variant::from(DateTime::from(parse_ts(s).expect("RFC 3339")))
}

/// Waits for `n` events; panics after 10 s with what came.
async fn receive(rx: &mut Events, n: usize) -> Vec<(u32, Vec<Variant>)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            _ => panic!("expected {n} events, got {got:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_transitions_arrive_as_events_in_order() {
    let metrics = wincc_gateway::http::metrics_handle();
    let count = |event: &str| -> u64 {
        let text = metrics.render();
        let key = format!("wincc_gateway_opcua_events_total{{event=\"{event}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    };
    let before = [count("raised"), count("acknowledged"), count("cleared")];

    let pki = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = start(&settings(pki.path()), None).await;
    // A tag named like one alarm: that alarm's source node is the tag.
    gw.tags(&[("Tank3/Level", TagType::Double, false)]);

    let c = connect_anonymous(&gw.url, client_pki.path()).await;
    let s = &c.session;
    let ns = s.get_namespace_index(NS).await.unwrap();
    let fns = s
        .get_namespace_index(&format!("{NS}/folders"))
        .await
        .unwrap();
    let root = NodeId::new(fns, 1u32);
    let notifier = read(s, std::slice::from_ref(&root), AttributeId::EventNotifier)
        .await
        .remove(0);
    assert_eq!(
        notifier.value,
        Some(Variant::Byte(1)),
        "WinCC folder: EventNotifier SubscribeToEvents"
    );
    eventually_read(s, &NodeId::new(ns, "Tank3/Level"), |dv| {
        dv.status == Some(StatusCode::BadWaitingForInitialData)
    })
    .await;

    let server: NodeId = ObjectId::Server.into();
    let (mut rx, results) = subscribe_events(s, &[root.clone(), server], &filter(ns, None)).await;
    for (status, r) in &results {
        assert!(status.is_good(), "{status}");
        let clauses = r.select_clause_results.clone().unwrap_or_default();
        assert_eq!(clauses.len(), BASE_FIELDS.len() + OWN_FIELDS.len());
        assert!(clauses.iter().all(|c| c.is_good()), "{clauses:?}");
    }

    // Raised (priority 16, no tag of that name), then acknowledged and
    // cleared in one batch (priority 4, source: the tag).
    let mut pump = alarm("A-1", "Pump1.Fault", 16);
    publish(
        &gw,
        vec![AlarmEvent {
            kind: AlarmEventKind::Raised,
            alarm: pump.clone(),
        }],
    );
    let mut tank = alarm("A-2", "Tank3/Level", 4);
    tank.state = AlarmState::Acknowledged;
    tank.acknowledged_at = Some("2026-05-06T09:10:11.5+02:00".into());
    pump.state = AlarmState::Cleared;
    pump.cleared_at = Some("2026-05-06T07:30:00.000Z".into());
    publish(
        &gw,
        vec![
            AlarmEvent {
                kind: AlarmEventKind::Acknowledged,
                alarm: tank.clone(),
            },
            AlarmEvent {
                kind: AlarmEventKind::Cleared,
                alarm: pump.clone(),
            },
        ],
    );

    let got = receive(&mut rx, 6).await;
    let event_type = Variant::from(NodeId::new(ns, 1000u32));
    let expected: [(&str, u16, &str, Variant, NodeId, &str, &str); 3] = [
        (
            "raised: Pump1.Fault out of range",
            1000,
            "Pump1.Fault",
            ts("2026-05-06T07:08:09.123Z"),
            root.clone(),
            "A-1",
            "raised",
        ),
        (
            "acknowledged: Tank3/Level out of range",
            250,
            "Tank3/Level",
            ts("2026-05-06T07:10:11.500Z"),
            NodeId::new(ns, "Tank3/Level"),
            "A-2",
            "acknowledged",
        ),
        (
            "cleared: Pump1.Fault out of range",
            1000,
            "Pump1.Fault",
            ts("2026-05-06T07:30:00Z"),
            root.clone(),
            "A-1",
            "cleared",
        ),
    ];
    for handle in [1u32, 2] {
        let mine: Vec<&Vec<Variant>> = got
            .iter()
            .filter(|(h, _)| *h == handle)
            .map(|(_, f)| f)
            .collect();
        assert_eq!(mine.len(), 3, "item {handle}: {got:?}");
        for (fields, (message, severity, name, time, source, id, transition)) in
            mine.iter().zip(&expected)
        {
            assert_eq!(fields.len(), BASE_FIELDS.len() + OWN_FIELDS.len());
            let Variant::LocalizedText(text) = &fields[0] else {
                panic!("Message {fields:?}")
            };
            assert_eq!(text.text.as_ref(), *message, "{fields:?}");
            assert_eq!(fields[1], Variant::UInt16(*severity));
            assert_eq!(fields[2], Variant::from(*name));
            assert_eq!(&fields[3], time);
            assert_eq!(fields[4], Variant::from(source.clone()));
            assert_eq!(fields[5], event_type);
            let Variant::DateTime(received) = &fields[6] else {
                panic!("ReceiveTime {:?}", fields[6])
            };
            let age = DateTime::now().as_chrono() - received.as_chrono();
            assert!(
                age >= chrono::Duration::zero() && age < chrono::Duration::seconds(60),
                "ReceiveTime {received} is not now"
            );
            assert_eq!(fields[7], Variant::from(*id));
            assert_eq!(fields[8], Variant::from("Alarm"));
            assert_eq!(fields[9], Variant::from(*transition));
        }
    }
    // Nothing else arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err());

    let after = [count("raised"), count("acknowledged"), count("cleared")];
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [1, 1, 1]
    );
    c.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_type_filters_and_session_health() {
    let pki = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = start(&settings(pki.path()), None).await;
    let c = connect_anonymous(&gw.url, client_pki.path()).await;
    let s = &c.session;
    let ns = s.get_namespace_index(NS).await.unwrap();

    // WinCCAlarmEventType: an ObjectType under BaseEventType with its properties.
    let event_type = NodeId::new(ns, 1000u32);
    let names = read(
        s,
        std::slice::from_ref(&event_type),
        AttributeId::BrowseName,
    )
    .await
    .remove(0);
    assert_eq!(
        names.value,
        Some(Variant::from(QualifiedName::new(ns, "WinCCAlarmEventType")))
    );
    let mut props: Vec<(String, NodeClass)> = browse(s, &event_type)
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.browse_name.namespace_index, ns);
            (r.browse_name.name.to_string(), r.node_class)
        })
        .collect();
    props.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        props,
        [
            "AlarmClass",
            "AlarmId",
            "AlarmText",
            "Priority",
            "Transition"
        ]
        .map(|n| (n.to_string(), NodeClass::Variable))
    );

    // Server HasNotifier WinCC.
    let from_server = browse(s, &ObjectId::Server.into()).await;
    let fns = s
        .get_namespace_index(&format!("{NS}/folders"))
        .await
        .unwrap();
    let root = NodeId::new(fns, 1u32);
    let notifiers: Vec<NodeId> = from_server
        .iter()
        .filter(|r| r.reference_type_id == ReferenceTypeId::HasNotifier)
        .map(|r| r.node_id.node_id.clone())
        .collect();
    assert_eq!(notifiers, std::slice::from_ref(&root));

    // An unknown field of the gateway's type is refused in the filter; the
    // others are accepted.
    let bogus = operand(event_type.clone(), ns, "NoSuchField");
    let (_rx, results) = subscribe_events(s, &[root], &filter(ns, Some(bogus))).await;
    let clauses = results[0].1.select_clause_results.clone().unwrap();
    assert_eq!(clauses.last(), Some(&StatusCode::BadNodeIdUnknown));
    assert!(clauses[..clauses.len() - 1].iter().all(|c| c.is_good()));

    // A tag variable is no event notifier.
    gw.tags(&[("Line1/Speed", TagType::Double, false)]);
    let var = NodeId::new(ns, "Line1/Speed");
    eventually_read(s, &var, |_| true).await;
    let sub = s
        .create_subscription(
            Duration::from_millis(100),
            300,
            20,
            0,
            0,
            true,
            EventCallback::new(|_, _| {}),
        )
        .await
        .unwrap();
    let created = s
        .create_monitored_items(
            sub,
            TimestampsToReturn::Both,
            vec![MonitoredItemCreateRequest::new(
                ReadValueId::new(var, AttributeId::EventNotifier),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    client_handle: 9,
                    sampling_interval: 0.0,
                    queue_size: 10,
                    discard_oldest: true,
                    filter: ExtensionObject::from_message(filter(ns, None)),
                },
            )],
        )
        .await
        .unwrap();
    assert!(created[0].result.status_code.is_bad());

    // /healthz's OPC UA component counts the open session.
    let mut health = gw.health.clone();
    let want = ComponentState::Serving { sessions: 1 };
    tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| *h == want))
        .await
        .unwrap_or_else(|_| panic!("health never {want:?}: {:?}", *gw.health.borrow()))
        .unwrap();
    c.close().await;
    let want = ComponentState::Serving { sessions: 0 };
    tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| *h == want))
        .await
        .unwrap_or_else(|_| panic!("health never {want:?}: {:?}", *gw.health.borrow()))
        .unwrap();
    gw.shutdown().await;
    assert!(matches!(*health.borrow(), ComponentState::Down(_)));
}
