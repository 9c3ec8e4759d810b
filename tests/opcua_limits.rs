//! OPC UA limits (contract §8) with the real async-opcua client over TCP:
//! total sessions, subscriptions per session, monitored items per session
//! (default: tag count + 1 000) and message size. A client over a limit
//! gets the matching Bad_TooMany... status, and a flood of monitored-item
//! requests leaves the gateway's memory bounded (RSS of this process, which
//! runs the server, read from /proc).

use crate::opcua_support;

use std::time::Duration;

use opcua::client::{DataChangeCallback, IdentityToken};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, ReadValueId, StatusCode, TimestampsToReturn,
};
use opcua_support::*;
use wincc_gateway::model::TagType;

const TAGS: usize = 200;

/// Resident set size of this process (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn tag_names() -> Vec<String> {
    (0..TAGS).map(|i| format!("Plant/T{i:04}")).collect()
}

async fn started(pki: &std::path::Path, max_message_size: usize) -> Gateway {
    let mut s = settings(pki);
    s.limits.max_sessions = 3;
    s.limits.max_subscriptions_per_session = 4;
    s.limits.max_message_size = max_message_size;
    // max_monitored_items_per_session stays 0: the tag count + 1000.
    let gw = start(&s, None).await;
    let names = tag_names();
    let tags: Vec<(&str, TagType, bool)> = names
        .iter()
        .map(|n| (n.as_str(), TagType::Double, false))
        .collect();
    gw.tags(&tags);
    gw
}

async fn anonymous(url: &str, pki: &std::path::Path) -> Result<Client, StatusCode> {
    connect(
        url,
        SecurityPolicy::None,
        MessageSecurityMode::None,
        IdentityToken::Anonymous,
        pki,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_subscriptions_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = started(dir.path(), 256 * 1024).await;

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            anonymous(&gw.url, client_pki.path())
                .await
                .expect("session"),
        );
    }
    let fourth = anonymous(&gw.url, client_pki.path()).await;
    assert_eq!(fourth.err(), Some(StatusCode::BadTooManySessions));

    let c = &open[0];
    let mut subs = 0;
    let refused = loop {
        let r = c
            .session
            .create_subscription(
                Duration::from_millis(500),
                30,
                10,
                0,
                0,
                true,
                DataChangeCallback::new(|_, _| {}),
            )
            .await;
        match r {
            Ok(_) => subs += 1,
            Err(e) => break e,
        }
        assert!(subs <= 4, "a fifth subscription was accepted");
    };
    assert_eq!(subs, 4);
    assert_eq!(refused.status(), StatusCode::BadTooManySubscriptions);

    // A request larger than max_message_size is refused; the server
    // serves on.
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let huge: Vec<ReadValueId> = (0..40_000)
        .map(|i| {
            ReadValueId::new(
                NodeId::new(ns, format!("Plant/NoSuchTagWithALongName{i:06}")),
                AttributeId::Value,
            )
        })
        .collect();
    let r = c.session.read(&huge, TimestampsToReturn::Both, 0.0).await;
    assert!(r.is_err(), "a ~1.5 MB request passed a 256 KiB limit");

    for c in open {
        c.close().await;
    }
    // Closed sessions free their slots.
    let again = anonymous(&gw.url, client_pki.path())
        .await
        .expect("a slot is free again");
    again.close().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitored_item_flood_is_refused_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let gw = started(dir.path(), 64 * 1024 * 1024).await;
    let c = anonymous(&gw.url, client_pki.path())
        .await
        .expect("session");
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let ids: Vec<NodeId> = tag_names()
        .iter()
        .map(|n| NodeId::new(ns, n.as_str()))
        .collect();
    // The sink has announced every tag once a read of the last one works.
    eventually_read(&c.session, ids.last().unwrap(), |dv| {
        dv.status() == StatusCode::BadWaitingForInitialData
    })
    .await;

    let mut subs = Vec::new();
    for _ in 0..4 {
        subs.push(
            c.session
                .create_subscription(
                    Duration::from_millis(1000),
                    30,
                    10,
                    0,
                    0,
                    true,
                    DataChangeCallback::new(|_, _| {}),
                )
                .await
                .expect("subscription"),
        );
    }
    let request = |handle: u32, node: &NodeId| {
        MonitoredItemCreateRequest::new(
            node.clone().into(),
            MonitoringMode::Reporting,
            MonitoringParameters {
                client_handle: handle,
                sampling_interval: 0.0,
                queue_size: 10,
                discard_oldest: true,
                ..Default::default()
            },
        )
    };

    let rss_before = rss_kib();
    // 400 000 items asked for (every tag 2 000 times over), in calls of
    // 10 000 spread over the four subscriptions; the limit is 200 + 1000.
    const CALLS: usize = 40;
    const PER_CALL: usize = 10_000;
    let (mut good, mut too_many, mut other) = (0usize, 0usize, Vec::new());
    for call in 0..CALLS {
        let items: Vec<_> = (0..PER_CALL)
            .map(|i| request((call * PER_CALL + i) as u32, &ids[i % ids.len()]))
            .collect();
        let results = c
            .session
            .create_monitored_items(subs[call % subs.len()], TimestampsToReturn::Both, items)
            .await
            .expect("create_monitored_items answers");
        for r in results {
            match r.result.status_code {
                s if s.is_good() => good += 1,
                StatusCode::BadTooManyMonitoredItems => too_many += 1,
                s => other.push(s),
            }
        }
    }
    let rss_after = rss_kib();
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "accepted {good}, refused {too_many}; RSS before {} MiB, after {} MiB, grown {grown_mib} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(
        other.is_empty(),
        "unexpected statuses: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(good, TAGS + 1000, "exactly the limit is accepted");
    assert_eq!(too_many, CALLS * PER_CALL - good);
    // Honest bound: the accepted items plus the transient request and
    // response buffers (client and server both run in this process) must
    // stay well below what the 400 000 items take when accepted. Measured
    // (debug build): about 55 MiB with the limit; 552 MiB with the limit
    // raised to 100 000 000, so this bound fails without the limit.
    assert!(
        grown_mib < 160,
        "RSS grew by {grown_mib} MiB during the refused flood"
    );

    // The session still works, and within the limit items are accepted
    // again once some are deleted.
    let dv = read(&c.session, &ids[..1], AttributeId::Value)
        .await
        .remove(0);
    assert_eq!(dv.status(), StatusCode::BadWaitingForInitialData);
    // (the first call, on the first subscription, got every accepted item)
    c.session
        .delete_subscription(subs[0])
        .await
        .expect("delete");
    let items: Vec<_> = (0..10)
        .map(|i| request(900_000 + i, &ids[i as usize]))
        .collect();
    let results = c
        .session
        .create_monitored_items(subs[1], TimestampsToReturn::Both, items)
        .await
        .expect("create_monitored_items answers");
    assert!(results.iter().all(|r| r.result.status_code.is_good()));
    c.close().await;
    gw.shutdown().await;
}
