//! The event bus between the poller (one producer) and the sinks (many
//! consumers).
//!
//! Every sink gets its own bounded queue, so a slow sink never stalls
//! polling nor the other sinks. When a sink's queue is full, queued change
//! batches are folded into a per-tag "newest value wins" map: memory stays
//! bounded by the queue capacity plus the number of tags, the sink still
//! receives the newest value of every tag, and every overwritten value is
//! counted as a drop (`wincc_gateway_queue_drops_total{sink=...}`).
//! Other events (station state, tag lists, alarms) are never dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::model::{Alarm, ChangeBatch, StationStatus, TagChange, TagInfo};

/// What an alarm did between two polls of the active set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmEventKind {
    Raised,
    Acknowledged,
    Cleared,
}

impl AlarmEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmEventKind::Raised => "raised",
            AlarmEventKind::Acknowledged => "acknowledged",
            AlarmEventKind::Cleared => "cleared",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmEvent {
    pub kind: AlarmEventKind,
    pub alarm: Alarm,
}

/// One message on the bus.
#[derive(Debug, Clone)]
pub enum Event {
    /// Tag value / quality changes from one poll cycle.
    Changes(Arc<ChangeBatch>),
    /// The station's connection state changed.
    Station(StationStatus),
    /// The full set of tags the gateway polls (at start and after each re-discovery).
    Tags(Arc<Vec<TagInfo>>),
    /// Alarm transitions.
    Alarms(Arc<Vec<AlarmEvent>>),
}

struct Queue {
    events: VecDeque<Event>,
    /// Folded changes (older than everything in `events`), newest per tag.
    overflow: HashMap<Arc<str>, TagChange>,
    closed: bool,
}

struct Shared {
    name: String,
    capacity: usize,
    queue: Mutex<Queue>,
    notify: Notify,
}

/// The producer side. Cheap to clone.
#[derive(Clone, Default)]
pub struct Bus {
    subscribers: Arc<Mutex<Vec<Arc<Shared>>>>,
}

/// A sink's receiving end.
pub struct Subscriber {
    shared: Arc<Shared>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new subscriber named `name` (for metrics) holding at most
    /// `capacity` events before it starts conflating.
    pub fn subscribe(&self, name: &str, capacity: usize) -> Subscriber {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            capacity: capacity.max(1),
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                overflow: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
        });
        self.subscribers.lock().unwrap().push(shared.clone());
        Subscriber { shared }
    }

    /// Delivers an event to every subscriber; never blocks on a slow one.
    pub fn publish(&self, event: Event) {
        let subs = self.subscribers.lock().unwrap().clone();
        for s in subs {
            s.push(event.clone());
        }
    }

    /// Closes every subscriber: `recv` returns `None` once drained.
    pub fn close(&self) {
        for s in self.subscribers.lock().unwrap().iter() {
            s.queue.lock().unwrap().closed = true;
            s.notify.notify_one();
        }
    }
}

impl Shared {
    fn push(&self, event: Event) {
        let mut dropped = 0u64;
        {
            let mut q = self.queue.lock().unwrap();
            if q.closed {
                return;
            }
            q.events.push_back(event);
            if q.events.len() > self.capacity {
                // Fold every queued change batch into the overflow map, oldest
                // first, so the newest value of each tag wins.
                let events = std::mem::take(&mut q.events);
                for e in events {
                    match e {
                        Event::Changes(batch) => {
                            for c in &batch.changes {
                                if q.overflow.insert(c.name.clone(), c.clone()).is_some() {
                                    dropped += 1;
                                }
                            }
                        }
                        other => q.events.push_back(other),
                    }
                }
            }
        }
        if dropped > 0 {
            metrics::counter!("wincc_gateway_queue_drops_total", "sink" => self.name.clone())
                .increment(dropped);
        }
        self.notify.notify_one();
    }
}

impl Subscriber {
    /// The next event, or `None` once the bus is closed and drained.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.try_recv() {
                return Some(e);
            }
            if self.shared.queue.lock().unwrap().closed {
                return None;
            }
            self.shared.notify.notified().await;
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        let mut q = self.shared.queue.lock().unwrap();
        if !q.overflow.is_empty() {
            let changes: Vec<TagChange> = q.overflow.drain().map(|(_, c)| c).collect();
            return Some(Event::Changes(Arc::new(ChangeBatch {
                group: Arc::from("(conflated)"),
                changes,
                received_at: Instant::now(),
            })));
        }
        q.events.pop_front()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quality, TagType};

    fn batch(vals: &[(&str, i64)]) -> Event {
        Event::Changes(Arc::new(ChangeBatch {
            group: "g".into(),
            changes: vals
                .iter()
                .map(|(n, v)| TagChange {
                    name: (*n).into(),
                    ty: TagType::Int32,
                    value: (*v).into(),
                    quality: Quality::Good,
                    quality_code: None,
                    timestamp: chrono::Utc::now(),
                    error: None,
                })
                .collect(),
            received_at: Instant::now(),
        }))
    }

    fn values(e: Event) -> HashMap<String, i64> {
        match e {
            Event::Changes(b) => b
                .changes
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_i64().unwrap()))
                .collect(),
            _ => panic!("not changes"),
        }
    }

    #[test]
    fn slow_subscriber_gets_newest_value_per_tag_and_bounded_memory() {
        let bus = Bus::new();
        let mut slow = bus.subscribe("slow", 2);
        let mut fast = bus.subscribe("fast", 1000);
        for i in 0..100 {
            bus.publish(batch(&[("A", i), ("B", i * 10)]));
        }
        bus.publish(Event::Station(StationStatus {
            connected: true,
            since: chrono::Utc::now(),
            error: None,
        }));
        // The fast one got everything in order.
        let mut n = 0;
        while let Some(Event::Changes(_)) = fast.try_recv() {
            n += 1;
        }
        assert_eq!(n, 100);
        // The slow one: conflated newest values first, nothing lost per tag.
        let mut last = HashMap::new();
        let mut station_seen = false;
        let mut events = 0;
        while let Some(e) = slow.try_recv() {
            events += 1;
            match e {
                Event::Station(_) => station_seen = true,
                e => last.extend(values(e)),
            }
        }
        assert!(events <= 4, "{events}");
        assert!(station_seen);
        assert_eq!(last["A"], 99);
        assert_eq!(last["B"], 990);
    }

    #[tokio::test]
    async fn recv_wakes_up_and_ends_on_close() {
        let bus = Bus::new();
        let mut sub = bus.subscribe("s", 10);
        let b2 = bus.clone();
        let h = tokio::spawn(async move {
            let mut got = 0;
            while let Some(_e) = sub.recv().await {
                got += 1;
            }
            got
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b2.publish(batch(&[("A", 1)]));
        b2.publish(batch(&[("A", 2)]));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b2.close();
        assert_eq!(h.await.unwrap(), 2);
    }
}
