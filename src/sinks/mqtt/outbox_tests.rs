//! Unit tests of the outbox (a child module of `outbox`).

use super::*;
use std::cell::RefCell;
use std::rc::Rc;

/// Records what would go on the wire; `room` is the channel's free space.
#[derive(Clone, Default)]
struct Wire {
    sent: Rc<RefCell<Vec<(String, String, Qos)>>>,
    room: Rc<RefCell<usize>>,
}

impl Publisher for Wire {
    fn try_publish(&self, m: &Message<'_>) -> bool {
        let mut room = self.room.borrow_mut();
        if *room == 0 {
            return false;
        }
        *room -= 1;
        self.sent.borrow_mut().push((
            m.topic.to_string(),
            String::from_utf8_lossy(m.payload).into_owned(),
            m.qos,
        ));
        true
    }
}

fn outbox(room: usize) -> (Outbox<Wire>, Wire) {
    let w = Wire::default();
    *w.room.borrow_mut() = room;
    (Outbox::new(w.clone(), 1 << 20), w)
}

fn set(o: &mut Outbox<Wire>, t: &str, v: &str) {
    o.set(
        Kind::Tag,
        t.into(),
        Bytes::from(v.to_string()),
        Qos::AtLeastOnce,
        true,
        None,
    );
}

#[test]
fn nothing_is_sent_while_disconnected_and_only_the_newest_value_after() {
    let (mut o, w) = outbox(100);
    set(&mut o, "a", "1");
    set(&mut o, "a", "2");
    set(&mut o, "b", "1");
    o.pump();
    assert!(w.sent.borrow().is_empty());
    assert_eq!(o.unconfirmed(), 2);
    o.on_connected("status", true);
    o.pump();
    let sent: Vec<_> = w
        .sent
        .borrow()
        .iter()
        .map(|(t, p, _)| format!("{t}={p}"))
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(sent.contains(&"a=2".to_string()) && sent.contains(&"b=1".to_string()));
}

#[test]
fn confirmed_only_after_ack_and_resent_after_reconnect() {
    let (mut o, w) = outbox(100);
    o.on_connected("status", true);
    set(&mut o, "a", "1");
    set(&mut o, "b", "1");
    o.pump();
    o.on_outgoing_publish(1);
    o.on_outgoing_publish(2);
    o.on_ack(1);
    assert_eq!(o.unconfirmed(), 1);
    assert!(o.is_confirmed("a") && !o.is_confirmed("b"));
    // The connection drops before b's PUBACK; a new value for a arrives.
    o.on_disconnected();
    set(&mut o, "a", "2");
    o.on_ack(2); // a late ack from the old connection means nothing
    assert_eq!(o.unconfirmed(), 2);
    w.sent.borrow_mut().clear();
    o.on_connected("status", true);
    o.pump();
    let mut sent: Vec<_> = w
        .sent
        .borrow()
        .iter()
        .map(|(t, p, _)| format!("{t}={p}"))
        .collect();
    sent.sort();
    assert_eq!(sent, ["a=2", "b=1"]);
}

#[test]
fn an_ack_of_an_older_version_does_not_confirm_a_newer_one() {
    let (mut o, _w) = outbox(100);
    o.on_connected("status", true);
    set(&mut o, "a", "1");
    o.pump();
    set(&mut o, "a", "2");
    o.pump();
    o.on_outgoing_publish(1);
    o.on_outgoing_publish(2);
    o.on_ack(1);
    assert!(!o.is_confirmed("a"));
    o.on_ack(2);
    assert!(o.is_confirmed("a"));
    assert_eq!(o.unconfirmed(), 0);
}

#[test]
fn full_channel_keeps_messages_queued_and_coalesces() {
    let (mut o, w) = outbox(1);
    o.on_connected("status", true);
    set(&mut o, "a", "1");
    set(&mut o, "b", "1");
    o.pump();
    assert_eq!(w.sent.borrow().len(), 1);
    set(&mut o, "b", "2");
    set(&mut o, "b", "3");
    *w.room.borrow_mut() = 10;
    o.pump();
    let sent: Vec<_> = w
        .sent
        .borrow()
        .iter()
        .map(|(t, p, _)| format!("{t}={p}"))
        .collect();
    assert_eq!(sent, ["a=1", "b=3"]);
}

#[test]
fn qos0_counts_as_delivered_once_written() {
    let (mut o, _w) = outbox(10);
    o.on_connected("status", true);
    o.set(
        Kind::Tag,
        "a".into(),
        Bytes::from_static(b"1"),
        Qos::AtMostOnce,
        false,
        None,
    );
    o.pump();
    assert_eq!(o.unconfirmed(), 1);
    o.on_outgoing_publish(0);
    assert_eq!(o.unconfirmed(), 0);
}

#[test]
fn collided_publish_is_matched_when_it_finally_goes_out() {
    let (mut o, _w) = outbox(10);
    o.on_connected("status", true);
    set(&mut o, "a", "1");
    set(&mut o, "b", "1");
    o.pump();
    o.on_outgoing_publish(1);
    o.on_await_ack(1);
    o.on_ack(1);
    o.on_outgoing_publish(1);
    assert!(o.is_confirmed("a") && !o.is_confirmed("b"));
    o.on_ack(1);
    assert!(o.is_confirmed("b"));
}

#[test]
fn streams_are_bounded_kept_in_order_and_resent() {
    let (mut o, w) = outbox(100);
    o.stream_capacity = 3;
    for i in 0..5 {
        o.push_stream(
            Kind::AlarmEvent,
            "ev".into(),
            Bytes::from(i.to_string()),
            Qos::AtLeastOnce,
            None,
        );
    }
    assert_eq!(o.unconfirmed(), 3);
    o.on_connected("status", true);
    o.pump();
    let sent: Vec<_> = w.sent.borrow().iter().map(|(_, p, _)| p.clone()).collect();
    assert_eq!(sent, ["2", "3", "4"]);
    o.on_outgoing_publish(1);
    o.on_ack(1);
    assert_eq!(o.unconfirmed(), 2);
}

#[test]
fn cleared_alarm_is_forgotten_once_delivered_and_oversized_messages_are_dropped() {
    let w = Wire::default();
    *w.room.borrow_mut() = 10;
    let mut o = Outbox::new(w.clone(), 64);
    o.on_connected("status", true);
    o.set(
        Kind::AlarmActive,
        "al/1".into(),
        Bytes::new(),
        Qos::AtLeastOnce,
        true,
        None,
    );
    o.set(
        Kind::Tag,
        "big".into(),
        Bytes::from(vec![b'x'; 100]),
        Qos::AtLeastOnce,
        true,
        None,
    );
    o.pump();
    assert_eq!(w.sent.borrow().len(), 1);
    assert_eq!(o.unconfirmed(), 1);
    o.on_outgoing_publish(1);
    o.on_ack(1);
    assert_eq!(o.unconfirmed(), 0);
    assert!(!o.topics.contains_key("al/1"));
}

#[test]
fn refused_messages_and_those_over_the_brokers_limit_are_not_retried() {
    let (mut o, w) = outbox(10);
    o.on_connected("status", true);
    set(&mut o, "a", "1");
    o.pump();
    o.on_outgoing_publish(1);
    o.on_refused(1, "NotAuthorized");
    assert_eq!(o.unconfirmed(), 0);
    o.set_broker_max_packet(Some(20));
    set(&mut o, "b", &"x".repeat(20));
    o.pump();
    assert_eq!(o.unconfirmed(), 0);
    o.on_disconnected();
    o.on_connected("status", true);
    o.pump();
    assert_eq!(w.sent.borrow().len(), 1);
}

#[test]
fn retained_topics_are_republished_after_a_reconnect_without_session() {
    let (mut o, w) = outbox(100);
    o.on_connected("status", false);
    set(&mut o, "a", "1");
    o.set(
        Kind::Tag,
        "live".into(),
        Bytes::from_static(b"7"),
        Qos::AtLeastOnce,
        false,
        None,
    );
    o.pump();
    o.on_outgoing_publish(1);
    o.on_outgoing_publish(2);
    o.on_ack(1);
    o.on_ack(2);
    assert_eq!(o.unconfirmed(), 0);
    set(&mut o, "a", "2");
    o.pump();
    o.on_outgoing_publish(3);
    o.on_ack(3);
    assert!(o.is_confirmed("a"));
    w.sent.borrow_mut().clear();

    // Same broker, session kept: nothing to send again.
    o.on_disconnected();
    o.on_connected("status", true);
    o.pump();
    assert!(w.sent.borrow().is_empty());
    assert_eq!(o.unconfirmed(), 0);

    // No session: the retained store may be gone; its newest payload goes
    // out again (not the non-retained one) and counts until acknowledged.
    o.on_disconnected();
    o.on_connected("status", false);
    assert_eq!(o.unconfirmed(), 1);
    assert!(!o.is_confirmed("a"));
    o.pump();
    let sent: Vec<_> = w
        .sent
        .borrow()
        .iter()
        .map(|(t, p, _)| format!("{t}={p}"))
        .collect();
    assert_eq!(sent, ["a=2"]);
    o.on_outgoing_publish(1);
    o.on_ack(1);
    assert_eq!(o.unconfirmed(), 0);
}
