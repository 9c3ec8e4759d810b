//! WinCC alarms as OPC UA events (contract §4).
//!
//! Every alarm transition on the bus (raised, acknowledged, cleared) becomes
//! one event of type `WinCCAlarmEventType`, a subtype of `BaseEventType` in
//! the gateway's namespace, emitted by the `Objects/WinCC` folder (whose
//! EventNotifier is SubscribeToEvents). async-opcua also hands every event to
//! monitored items on the `Server` object, so clients may subscribe there too.
//!
//! | field | value |
//! |---|---|
//! | EventType | `WinCCAlarmEventType` (`ns=<namespace_uri>;i=1000`) |
//! | EventId | 16 fresh random bytes, unique per event |
//! | Message | `"<transition>: <alarm text>"`, e.g. `"raised: Tank 3 overflow"` |
//! | Severity | the WinCC priority mapped to 1..=1000, see [`severity`] |
//! | SourceName | the alarm's name |
//! | SourceNode | the tag variable of the same name if there is one, else the WinCC folder |
//! | Time | the station's timestamp of the transition (raisedAt / acknowledgedAt / clearedAt) |
//! | ReceiveTime | when the gateway handled it |
//! | `AlarmId`, `AlarmText`, `AlarmClass`, `Priority`, `Transition` | own properties, browse names in the gateway's namespace |

use opcua::nodes::{BaseEventType, Event, EventField};
use opcua::server::address_space::{AddressSpace, ObjectTypeBuilder, VariableBuilder};
use opcua::types::{
    AttributeId, ByteString, DataTypeId, DateTime, Guid, LocalizedText, NodeId, NumericRange,
    ObjectId, ObjectTypeId, QualifiedName, UAString, VariableTypeId, Variant,
};

use crate::bus::{AlarmEvent, AlarmEventKind};
use crate::model::parse_ts;

/// Browse name of the gateway's alarm event type.
pub const EVENT_TYPE_NAME: &str = "WinCCAlarmEventType";
/// Numeric id of the event type in the tag namespace (tags use string ids,
/// so no tag can take it).
pub const EVENT_TYPE_ID: u32 = 1000;

/// The event type's own properties: browse name, data type, numeric id.
const PROPERTIES: [(&str, DataTypeId, u32); 5] = [
    ("AlarmId", DataTypeId::String, 1001),
    ("AlarmText", DataTypeId::String, 1002),
    ("AlarmClass", DataTypeId::String, 1003),
    ("Priority", DataTypeId::UInt32, 1004),
    ("Transition", DataTypeId::String, 1005),
];

/// The NodeId of `WinCCAlarmEventType` in the tag namespace `ns`.
pub fn event_type_id(ns: u16) -> NodeId {
    NodeId::new(ns, EVENT_TYPE_ID)
}

/// Adds `WinCCAlarmEventType` (under `BaseEventType`) and its properties,
/// so clients can browse it and select its fields in an EventFilter.
pub fn add_event_type(space: &mut AddressSpace, ns: u16) {
    let type_id = event_type_id(ns);
    ObjectTypeBuilder::new(
        &type_id,
        QualifiedName::new(ns, EVENT_TYPE_NAME),
        EVENT_TYPE_NAME,
    )
    .is_abstract(false)
    .subtype_of(ObjectTypeId::BaseEventType)
    .insert(space);
    for (name, data_type, id) in PROPERTIES {
        VariableBuilder::new(
            &NodeId::new(ns, id),
            QualifiedName::new(ns, name),
            LocalizedText::new("", name),
        )
        .data_type(data_type)
        .value_rank(-1)
        .property_of(type_id.clone())
        .has_type_definition(VariableTypeId::PropertyType)
        .has_modelling_rule(ObjectId::ModellingRule_Mandatory)
        .insert(space);
    }
}

/// Maps a WinCC priority (0..=16, 0 the lowest; larger values are taken as
/// 16) linearly onto the OPC UA severity range 1..=1000:
/// `severity = 1 + min(priority, 16) * 999 / 16` (integer division), so
/// 0 → 1, 4 → 250, 8 → 500, 12 → 750, 16 → 1000.
pub fn severity(priority: u32) -> u16 {
    let p = priority.min(16);
    (1 + p * 999 / 16) as u16
}

/// One alarm transition as an OPC UA event.
#[derive(Debug)]
pub struct AlarmOpcuaEvent {
    /// The standard fields.
    pub base: BaseEventType,
    /// Index of the gateway's namespace (own properties' browse names).
    pub ns: u16,
    pub alarm_id: UAString,
    pub alarm_text: UAString,
    pub alarm_class: UAString,
    pub priority: u32,
    pub transition: UAString,
}

impl AlarmOpcuaEvent {
    /// Builds the event for `ev`. `source` is the node that emitted it,
    /// `now` the ReceiveTime. A missing or unreadable station timestamp
    /// makes `Time` = `now` (and is logged).
    pub fn new(ev: &AlarmEvent, ns: u16, source: NodeId, now: DateTime) -> Self {
        let a = &ev.alarm;
        let stamp = match ev.kind {
            AlarmEventKind::Raised => Some(a.raised_at.as_str()),
            AlarmEventKind::Acknowledged => a.acknowledged_at.as_deref(),
            AlarmEventKind::Cleared => a.cleared_at.as_deref(),
        };
        let time = match stamp.and_then(parse_ts) {
            Some(t) => DateTime::from(t),
            None => {
                tracing::debug!(
                    alarm = %a.id,
                    event = ev.kind.as_str(),
                    timestamp = stamp.unwrap_or("none"),
                    "OPC UA: alarm transition without a readable timestamp; using the receive time"
                );
                now
            }
        };
        let message = format!("{}: {}", ev.kind.as_str(), a.text);
        let guid = Guid::new();
        let base = BaseEventType::new(
            event_type_id(ns),
            ByteString::from(guid.to_bytes().to_vec()),
            LocalizedText::new("", &message),
            time,
        )
        .set_source_node(source)
        .set_source_name(UAString::from(a.name.as_str()))
        .set_receive_time(now)
        .set_severity(severity(a.priority));
        AlarmOpcuaEvent {
            base,
            ns,
            alarm_id: a.id.as_str().into(),
            alarm_text: a.text.as_str().into(),
            alarm_class: a.class.as_str().into(),
            priority: a.priority,
            transition: ev.kind.as_str().into(),
        }
    }
}

impl EventField for AlarmOpcuaEvent {
    fn get_value(
        &self,
        attribute_id: AttributeId,
        index_range: &NumericRange,
        remaining_path: &[QualifiedName],
    ) -> Variant {
        if let [field] = remaining_path {
            if field.namespace_index == self.ns {
                let rest = &remaining_path[1..];
                return match field.name.as_ref() {
                    "AlarmId" => self.alarm_id.get_value(attribute_id, index_range, rest),
                    "AlarmText" => self.alarm_text.get_value(attribute_id, index_range, rest),
                    "AlarmClass" => self.alarm_class.get_value(attribute_id, index_range, rest),
                    "Priority" => self.priority.get_value(attribute_id, index_range, rest),
                    "Transition" => self.transition.get_value(attribute_id, index_range, rest),
                    _ => Variant::Empty,
                };
            }
        }
        self.base
            .get_value(attribute_id, index_range, remaining_path)
    }
}

impl Event for AlarmOpcuaEvent {
    fn get_field(
        &self,
        type_definition_id: &NodeId,
        attribute_id: AttributeId,
        index_range: &NumericRange,
        browse_path: &[QualifiedName],
    ) -> Variant {
        // Fields are found through this type or any supertype (only
        // BaseEventType here), as for the crate's derived events.
        if type_definition_id == &ObjectTypeId::BaseEventType
            || type_definition_id == self.base.event_type_id()
        {
            self.get_value(attribute_id, index_range, browse_path)
        } else {
            Variant::Empty
        }
    }

    fn time(&self) -> &DateTime {
        &self.base.time
    }

    fn event_type_id(&self) -> &NodeId {
        &self.base.event_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alarm, AlarmState};

    #[test]
    fn severity_scales_priority_linearly() {
        assert_eq!(severity(0), 1);
        assert_eq!(severity(1), 63);
        assert_eq!(severity(4), 250);
        assert_eq!(severity(8), 500);
        assert_eq!(severity(12), 750);
        assert_eq!(severity(16), 1000);
        assert_eq!(severity(17), 1000);
        assert_eq!(severity(u32::MAX), 1000);
        for p in 0..16 {
            assert!(severity(p) < severity(p + 1));
        }
    }

    fn alarm_event(kind: AlarmEventKind) -> AlarmEvent {
        AlarmEvent {
            kind,
            alarm: Alarm {
                id: "A-17".into(),
                name: "Tank3.Overflow".into(),
                text: "Tank 3 overflow".into(),
                class: "Alarm".into(),
                priority: 12,
                state: AlarmState::Acknowledged,
                raised_at: "2026-05-06T07:08:09.123Z".into(),
                acknowledged_at: Some("2026-05-06T07:09:00+02:00".into()),
                cleared_at: Some("not a time".into()),
            },
        }
    }

    fn field(e: &AlarmOpcuaEvent, ty: &NodeId, ns: u16, name: &str) -> Variant {
        e.get_field(
            ty,
            AttributeId::Value,
            &NumericRange::None,
            &[QualifiedName::new(ns, name)],
        )
    }

    #[test]
    fn fields_and_times() {
        let now = DateTime::now();
        let source = NodeId::new(3, 1u32);
        let base: NodeId = ObjectTypeId::BaseEventType.into();
        let e = AlarmOpcuaEvent::new(&alarm_event(AlarmEventKind::Raised), 2, source.clone(), now);
        assert_eq!(
            field(&e, &base, 0, "Message"),
            Variant::from(LocalizedText::new("", "raised: Tank 3 overflow"))
        );
        assert_eq!(field(&e, &base, 0, "Severity"), Variant::UInt16(750));
        assert_eq!(
            field(&e, &base, 0, "SourceName"),
            Variant::from("Tank3.Overflow")
        );
        assert_eq!(field(&e, &base, 0, "SourceNode"), Variant::from(source));
        assert_eq!(
            field(&e, &base, 0, "EventType"),
            Variant::from(event_type_id(2))
        );
        assert_eq!(
            e.base.time,
            DateTime::from(parse_ts("2026-05-06T07:08:09.123Z").unwrap())
        );
        assert_eq!(e.base.receive_time, now);
        // Own fields through the subtype or BaseEventType, in our namespace only.
        for ty in [base.clone(), event_type_id(2)] {
            assert_eq!(field(&e, &ty, 2, "AlarmId"), Variant::from("A-17"));
            assert_eq!(field(&e, &ty, 2, "Priority"), Variant::UInt32(12));
            assert_eq!(field(&e, &ty, 2, "Transition"), Variant::from("raised"));
        }
        assert_eq!(field(&e, &base, 0, "AlarmId"), Variant::Empty);
        assert_eq!(
            field(&e, &ObjectTypeId::AlarmConditionType.into(), 2, "AlarmId"),
            Variant::Empty
        );
        match field(&e, &base, 0, "EventId") {
            Variant::ByteString(b) => assert_eq!(b.value.map(|v| v.len()), Some(16)),
            other => panic!("EventId {other:?}"),
        }

        // Acknowledged: the station's ack time, converted to UTC.
        let e = AlarmOpcuaEvent::new(
            &alarm_event(AlarmEventKind::Acknowledged),
            2,
            NodeId::null(),
            now,
        );
        assert_eq!(
            e.base.time,
            DateTime::from(parse_ts("2026-05-06T05:09:00Z").unwrap())
        );
        // Cleared with an unreadable time: the receive time.
        let e = AlarmOpcuaEvent::new(
            &alarm_event(AlarmEventKind::Cleared),
            2,
            NodeId::null(),
            now,
        );
        assert_eq!(e.base.time, now);
        assert_eq!(
            field(&e, &base, 0, "Message"),
            Variant::from(LocalizedText::new("", "cleared: Tank 3 overflow"))
        );
    }
}
