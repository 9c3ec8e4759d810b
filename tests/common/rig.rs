//! Station-side fixtures shared by the sink tests: a simulator holding
//! chosen tags with a guarded writer to it, and alarm values.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use wincc_gateway::config::WinccSettings;
use wincc_gateway::model::{Alarm, AlarmState, TagInfo, TagType};
use wincc_gateway::sim::{self, SimHandle, SimOptions};
use wincc_gateway::wincc::generic::GenericClient;
use wincc_gateway::wincc::Station;
use wincc_gateway::writes::Writer;

/// A simulator with `generated` tags of its own plus `tags` (name, type,
/// writable at the station, initial value), and a [`Writer`] to it through
/// the generic client, its tag directory filled from the station's browse
/// as discovery would fill it.
pub async fn sim_with_writer(
    generated: usize,
    tags: &[(&str, TagType, bool, Value)],
) -> (SimHandle, Writer) {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: generated,
            change_rate: 0.0,
            alarms: false,
            ..SimOptions::default()
        },
    )
    .await
    .expect("simulator");
    for (name, ty, writable, v) in tags {
        let info = TagInfo {
            name: (*name).into(),
            ty: *ty,
            writable: *writable,
        };
        sim.add_tag(info, v.clone());
    }
    let wincc = WinccSettings {
        base_url: sim.base_url(),
        timeout_ms: 1000,
        ..WinccSettings::default()
    };
    let client = GenericClient::new(&wincc).expect("generic client");
    let directory: HashMap<String, TagInfo> = client
        .list_tags()
        .await
        .expect("browse the simulator")
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    // The sender is dropped: the directory stays as it is.
    let (_tx, dir) = tokio::sync::watch::channel(Arc::new(directory));
    (sim, Writer::new(Arc::new(client), dir))
}

/// An alarm of `Tank1.High` in `state`.
pub fn alarm(id: &str, state: AlarmState) -> Alarm {
    Alarm {
        id: id.into(),
        name: "Tank1.High".into(),
        text: "Tank 1 level high".into(),
        class: "Alarm".into(),
        priority: 3,
        state,
        raised_at: "2026-01-01T00:00:00.000Z".into(),
        acknowledged_at: None,
        cleared_at: None,
    }
}
