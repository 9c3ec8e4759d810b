//! Shared helpers for the OPC UA tests: a real sink on a free loopback port,
//! fed through its real bus, and the real async-opcua client over TCP.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken, Session};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDescriptionResultMask, BrowseDirection, DataChangeFilter,
    DataChangeTrigger, DataValue, EndpointDescription, ExtensionObject, MessageSecurityMode,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, ReadValueId,
    ReferenceDescription, ReferenceTypeId, StatusCode, TimestampsToReturn,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::{Bus, Event};
use wincc_gateway::config::OpcuaSettings;
use wincc_gateway::http::ComponentState;
use wincc_gateway::model::{ChangeBatch, Quality, StationStatus, TagChange, TagInfo, TagType};
use wincc_gateway::sinks::opcua::{OpcuaError, OpcuaSink, OpcuaStatus};
use wincc_gateway::writes::Writer;

pub const NS: &str = "urn:wincc-gateway:test";

/// A running sink and what feeds it.
pub struct Gateway {
    pub bus: Bus,
    pub status: OpcuaStatus,
    /// What `/healthz` shows for the OPC UA component.
    pub health: watch::Receiver<ComponentState>,
    pub url: String,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), OpcuaError>>,
}

impl Gateway {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        assert!(
            matches!(r, Ok(Ok(Ok(())))),
            "sink did not stop cleanly: {r:?}"
        );
    }

    pub fn tags(&self, tags: &[(&str, TagType, bool)]) {
        let list = tags
            .iter()
            .map(|(n, ty, w)| TagInfo {
                name: n.to_string(),
                ty: *ty,
                writable: *w,
            })
            .collect();
        self.bus.publish(Event::Tags(Arc::new(list)));
    }

    pub fn changes(&self, changes: Vec<TagChange>) {
        self.bus.publish(Event::Changes(Arc::new(ChangeBatch {
            group: Arc::from("test"),
            changes,
            received_at: Instant::now(),
        })));
    }

    pub fn station(&self, connected: bool) {
        self.bus.publish(Event::Station(StationStatus {
            connected,
            since: chrono::Utc::now(),
            error: (!connected).then(|| "connection refused".to_string()),
        }));
    }
}

/// Settings for a server on 127.0.0.1, port chosen by the OS.
pub fn settings(pki: &Path) -> OpcuaSettings {
    OpcuaSettings {
        endpoint: "opc.tcp://127.0.0.1:0/".into(),
        namespace_uri: NS.into(),
        pki_dir: pki.to_string_lossy().into_owned(),
        ..Default::default()
    }
}

pub async fn start(settings: &OpcuaSettings, writer: Option<Writer>) -> Gateway {
    start_on(Bus::new(), settings, writer).await
}

/// Like [`start`], on an existing bus (e.g. one a real poller publishes on).
pub async fn start_on(bus: Bus, settings: &OpcuaSettings, writer: Option<Writer>) -> Gateway {
    let sink = OpcuaSink::new(settings, writer).await.expect("sink builds");
    let status = sink.status();
    let health = sink.state();
    let sub = bus.subscribe("opcua", 1024);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { sink.run(sub, token).await });
    let url = format!("opc.tcp://127.0.0.1:{}/", status.local_addr().port());
    Gateway {
        bus,
        status,
        health,
        url,
        stop,
        task,
    }
}

pub fn change(name: &str, ty: TagType, value: serde_json::Value, ts: &str) -> TagChange {
    TagChange {
        name: Arc::from(name),
        ty,
        value,
        quality: Quality::Good,
        quality_code: None,
        timestamp: ts.parse().expect("RFC 3339"),
        error: None,
    }
}

/// A connected client session and its event loop.
pub struct Client {
    pub session: Arc<Session>,
    pub event_loop: JoinHandle<StatusCode>,
}

impl Client {
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.disconnect()).await;
        self.event_loop.abort();
    }
}

/// An async-opcua client with its own PKI in `client_pki`.
pub fn client(client_pki: &Path) -> opcua::client::Client {
    ClientBuilder::new()
        .application_name("wincc-gateway test client")
        .application_uri("urn:wincc-gateway:test-client")
        .product_uri("urn:wincc-gateway:test-client")
        .create_sample_keypair(true)
        .trust_server_certs(true)
        .pki_dir(client_pki)
        .session_retry_limit(0)
        .session_timeout(60_000)
        .max_array_length(200_000)
        .max_message_size(64 * 1024 * 1024)
        .max_chunk_count(2048)
        .request_timeout(Duration::from_secs(20))
        .client()
        .expect("client config")
}

/// Connects with the given security and identity. `Err` carries the status
/// the client's event loop ended with (e.g. `BadIdentityTokenRejected`).
pub async fn connect(
    url: &str,
    policy: SecurityPolicy,
    mode: MessageSecurityMode,
    identity: IdentityToken,
    client_pki: &Path,
) -> Result<Client, StatusCode> {
    let (session, event_loop) = client(client_pki)
        .connect_to_matching_endpoint((url, policy.to_str(), mode), identity)
        .await
        .map_err(|e| e.status())?;
    established(session, event_loop.spawn()).await
}

/// Connects to exactly this endpoint description (which may offer token
/// policies the server did not advertise).
pub async fn connect_direct(
    endpoint: EndpointDescription,
    identity: IdentityToken,
    client_pki: &Path,
) -> Result<Client, StatusCode> {
    let (session, event_loop) = client(client_pki)
        .connect_to_endpoint_directly(endpoint, identity)
        .map_err(|e| e.status())?;
    established(session, event_loop.spawn()).await
}

async fn established(
    session: Arc<Session>,
    mut event_loop: JoinHandle<StatusCode>,
) -> Result<Client, StatusCode> {
    tokio::select! {
        _ = session.wait_for_connection() => Ok(Client { session, event_loop }),
        ended = &mut event_loop => Err(ended.unwrap_or(StatusCode::BadUnexpectedError)),
        _ = tokio::time::sleep(Duration::from_secs(20)) => Err(StatusCode::BadTimeout),
    }
}

/// The server's endpoints, as GetEndpoints returns them.
pub async fn endpoints(url: &str, client_pki: &Path) -> Vec<EndpointDescription> {
    client(client_pki)
        .get_server_endpoints_from_url(url)
        .await
        .expect("GetEndpoints")
}

/// A session of `user` over the None endpoint (the password encrypted with
/// the server certificate, as the gateway requires on every endpoint).
pub async fn connect_user(url: &str, user: &str, password: &str, client_pki: &Path) -> Client {
    connect(
        url,
        SecurityPolicy::None,
        MessageSecurityMode::None,
        IdentityToken::new_user_name(user, password),
        client_pki,
    )
    .await
    .unwrap_or_else(|s| panic!("session of {user}: {s}"))
}

pub async fn connect_anonymous(url: &str, client_pki: &Path) -> Client {
    connect(
        url,
        SecurityPolicy::None,
        MessageSecurityMode::None,
        IdentityToken::Anonymous,
        client_pki,
    )
    .await
    .expect("anonymous session")
}

/// All forward hierarchical references of `node`, following continuation points.
pub async fn browse(session: &Session, node: &NodeId) -> Vec<ReferenceDescription> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseDescriptionResultMask::all().bits(),
    };
    let mut results = session.browse(&[desc], 1000, None).await.expect("browse");
    let mut out = Vec::new();
    loop {
        let r = results.remove(0);
        assert!(r.status_code.is_good(), "browse {node}: {}", r.status_code);
        out.extend(r.references.unwrap_or_default());
        if r.continuation_point.is_null_or_empty() {
            return out;
        }
        results = session
            .browse_next(false, &[r.continuation_point])
            .await
            .expect("browse_next");
    }
}

/// Reads one attribute of several nodes.
pub async fn read(session: &Session, nodes: &[NodeId], attribute: AttributeId) -> Vec<DataValue> {
    let ids: Vec<ReadValueId> = nodes
        .iter()
        .map(|n| ReadValueId::new(n.clone(), attribute))
        .collect();
    session
        .read(&ids, TimestampsToReturn::Both, 0.0)
        .await
        .expect("read")
}

/// Data changes received by a subscription, in arrival order.
pub struct Notifications {
    rx: mpsc::UnboundedReceiver<(NodeId, DataValue)>,
    log: Vec<(NodeId, DataValue)>,
}

impl Notifications {
    /// Waits (up to 10 s) for a data change of `node` that satisfies `pred`;
    /// drops that node's earlier changes, keeps other nodes' changes.
    pub async fn wait_for(
        &mut self,
        node: &NodeId,
        pred: impl Fn(&DataValue) -> bool,
    ) -> DataValue {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut searched = 0;
        loop {
            if let Some(i) = self.log[searched..]
                .iter()
                .position(|(n, dv)| n == node && pred(dv))
                .map(|i| i + searched)
            {
                let found = self.log.remove(i).1;
                let mut j = 0;
                self.log.retain(|(n, _)| {
                    j += 1;
                    !(n == node && j <= i)
                });
                return found;
            }
            searched = self.log.len();
            let got = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no matching data change for {node} within 10 s; got {:?}",
                        self.log
                    )
                })
                .expect("subscription channel open");
            self.log.push(got);
        }
    }

    /// Everything received so far (and drains the channel).
    pub fn drain(&mut self) -> Vec<(NodeId, DataValue)> {
        while let Ok(x) = self.rx.try_recv() {
            self.log.push(x);
        }
        std::mem::take(&mut self.log)
    }
}

/// Subscribes to the values of `nodes` (publishing every 100 ms) with a
/// DataChangeFilter whose trigger is StatusValue, the OPC UA default.
///
/// The filter is explicit because async-opcua 0.19 compares only the value
/// for monitored items without a filter: a change of the status alone (same
/// value, or null to null) is not reported to such items.
pub async fn subscribe(session: &Session, nodes: &[NodeId], queue_size: u32) -> Notifications {
    subscribe_with(session, nodes, queue_size, true).await
}

/// Like [`subscribe`], optionally without any filter.
pub async fn subscribe_with(
    session: &Session,
    nodes: &[NodeId],
    queue_size: u32,
    status_filter: bool,
) -> Notifications {
    let filter = if status_filter {
        ExtensionObject::from_message(DataChangeFilter {
            trigger: DataChangeTrigger::StatusValue,
            deadband_type: 0,
            deadband_value: 0.0,
        })
    } else {
        ExtensionObject::null()
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = session
        .create_subscription(
            Duration::from_millis(100),
            300,
            20,
            0,
            0,
            true,
            DataChangeCallback::new(move |dv, item| {
                let _ = tx.send((item.item_to_monitor().node_id.clone(), dv));
            }),
        )
        .await
        .expect("create_subscription");
    let items: Vec<MonitoredItemCreateRequest> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            MonitoredItemCreateRequest::new(
                n.clone().into(),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    client_handle: i as u32 + 1,
                    sampling_interval: 0.0,
                    queue_size,
                    discard_oldest: true,
                    filter: filter.clone(),
                },
            )
        })
        .collect();
    let created = session
        .create_monitored_items(sub, TimestampsToReturn::Both, items)
        .await
        .expect("create_monitored_items");
    for c in &created {
        assert!(
            c.result.status_code.is_good(),
            "monitored item: {}",
            c.result.status_code
        );
    }
    Notifications {
        rx,
        log: Vec::new(),
    }
}

/// Polls a read until `pred` holds (the sink applies bus events asynchronously).
pub async fn eventually_read(
    session: &Session,
    node: &NodeId,
    pred: impl Fn(&DataValue) -> bool,
) -> DataValue {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dv = read(session, std::slice::from_ref(node), AttributeId::Value)
            .await
            .remove(0);
        if pred(&dv) {
            return dv;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never matched; last read {dv:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
