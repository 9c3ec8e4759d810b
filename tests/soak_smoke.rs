//! Two minutes of the soak rig (`tests/common/soak.rs`) in the suite: the
//! debug binary as station and gateway, 2 000 tags, a fault cycle a minute
//! (station outage, HTTP 500s, expired sessions, a broker restart). Asserts
//! what must hold whatever the machine's speed: no panic, a clean exit, no
//! value backwards, no settled value lost. Memory and CPU are the bench's
//! business (`benches/soak.rs`, BENCHMARKS.md).

use crate::common;

use std::time::Duration;

use common::soak::{run, SoakOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_minutes_of_faults_lose_nothing_and_nothing_goes_backwards() {
    let mut opts = SoakOptions::new(env!("CARGO_BIN_EXE_wincc-gateway"));
    opts.tags = 2_000;
    opts.duration = Duration::from_secs(120);
    opts.opcua_items = 200;
    opts.print = false;
    opts.sample_every = Duration::from_secs(30);
    let report = run(opts).await;
    let log = &report.log_tail;
    assert!(!report.panicked, "the gateway panicked:\n{log}");
    assert!(report.clean_exit, "no clean exit after SIGTERM:\n{log}");
    assert!(
        report.messages > 2_000,
        "too few messages: {}",
        report.messages
    );
    assert!(report.opcua_changes > 0, "the OPC UA client saw no change");
    assert!(
        report.backwards.is_empty(),
        "values went backwards: {:?}",
        &report.backwards[..report.backwards.len().min(10)]
    );
    assert!(
        report.settled_checked > 100,
        "too few settled values to check"
    );
    assert!(
        report.lost.is_empty(),
        "{} settled values never delivered, e.g. {:?}\n{log}",
        report.lost.len(),
        &report.lost[..report.lost.len().min(10)]
    );
}
