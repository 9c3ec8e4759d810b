//! The OPC UA sink: an OPC UA server (async-opcua) showing every tag as a
//! Variable under `Objects/WinCC/...` (contract §4 and §7).
//!
//! * Address space: built from the first `Event::Tags`, updated on later
//!   ones (see [`space`]). Values: each change batch is applied with one
//!   `set_values` call, which also notifies subscriptions.
//! * Status: Good / Uncertain; tags the poller cannot read (station
//!   outage) are `Bad_CommunicationError` with a null value, per-tag station
//!   errors `Bad_NodeIdUnknown` or `Bad_DeviceFailure`.
//! * Writes (see [`nodes`]): only tags allowed by `writable_tags` and
//!   writable at the station have `CurrentWrite`; a client write answers
//!   Good only after the station accepted it.
//! * Alarms (see [`events`]): every alarm transition is an OPC UA event
//!   of `WinCCAlarmEventType` emitted by the `Objects/WinCC` folder.
//! * Security (contract §8): endpoints for each configured policy (Sign and
//!   SignAndEncrypt for every non-None policy); user names and passwords
//!   checked by our own authenticator ([`auth`]), never accepted in clear;
//!   anonymous only if allowed; only sessions of `write` users see
//!   `CurrentWrite` in UserAccessLevel and may write.
//! * Limits (`opcua.limits`): sessions, subscriptions per session,
//!   monitored items per session (default: tag count + 1 000), message
//!   size; over a limit a client gets the matching `Bad_TooMany...` status.
//!
//! # Certificates (`pki_dir`)
//!
//! On first start the server creates its own certificate
//! (`pki_dir/own/cert.der`, key in `pki_dir/private/private.pem`) and reuses
//! it afterwards. A client certificate the server does not trust is refused
//! (`Bad_CertificateUntrusted`) and stored in `pki_dir/rejected/`. Moving that
//! file to `pki_dir/trusted/` trusts the client from its next connection
//! attempt, with no restart. `trust_client_certs = true` trusts every client
//! certificate (tests and trials only).

pub mod auth;
pub mod convert;
pub mod events;
pub mod nodes;
pub mod server;
pub mod space;
mod status;
mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opcua::server::{Server, ServerHandle, SubscriptionCache};
use opcua::types::{DataValue, DateTime, NodeId, StatusCode, VariableId, Variant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::{AlarmEvent, Event, Subscriber};
use crate::config::OpcuaSettings;
use crate::http::ComponentState;
use crate::model::{BadReason, ChangeBatch, StationStatus, TagInfo};
use crate::writes::{WritePolicy, Writer};

use self::events::AlarmOpcuaEvent;
use self::nodes::{GatewayNodeManager, ItemLimit, WriteTarget};
use self::space::{Space, TagEntry};

/// Why the OPC UA sink could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum OpcuaError {
    #[error("OPC UA configuration: {0}")]
    Config(String),
    #[error("OPC UA server cannot listen on {0}: {1}")]
    Bind(String, #[source] std::io::Error),
    #[error("OPC UA server: {0}")]
    Server(String),
    #[error("OPC UA certificates: {0}")]
    Pki(String),
}

/// A cheap, cloneable view of the running server (sessions, address).
#[derive(Clone)]
pub struct OpcuaStatus {
    handle: ServerHandle,
    state: watch::Receiver<ComponentState>,
    local_addr: SocketAddr,
    endpoint_url: Arc<str>,
}

impl OpcuaStatus {
    /// Sessions currently open (created and not yet closed or expired).
    pub fn sessions(&self) -> usize {
        let dv =
            self.handle.info().summary().get(
                VariableId::Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSessionCount,
            );
        match dv.and_then(|d| d.value) {
            Some(Variant::UInt32(n)) => n as usize,
            _ => 0,
        }
    }

    /// `Up` from the moment the socket is bound, `Down(reason)` once the
    /// server failed or stopped.
    pub fn state(&self) -> ComponentState {
        self.state.borrow().clone()
    }

    /// The socket the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint URL advertised to clients.
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }
}

/// The OPC UA sink. Build it with [`OpcuaSink::new`], then [`OpcuaSink::run`].
pub struct OpcuaSink {
    server: Option<Server>,
    handle: ServerHandle,
    nodes: Arc<GatewayNodeManager>,
    listener: Option<std::net::TcpListener>,
    status: OpcuaStatus,
    state: watch::Sender<ComponentState>,
    /// What `/healthz` shows: `state`, with the session count while up.
    health: watch::Sender<ComponentState>,
    space: Space,
    policy: Option<WritePolicy>,
    writer: Option<Writer>,
}

impl OpcuaSink {
    /// Builds the server and binds its socket (so a port in use is reported
    /// here). Creates the server certificate in `pki_dir` on first start.
    /// With `writer = None` every tag is read-only.
    pub async fn new(settings: &OpcuaSettings, writer: Option<Writer>) -> Result<Self, OpcuaError> {
        let policy = WritePolicy::new("opcua", settings.write_enabled, &settings.writable_tags)
            .map_err(|e| OpcuaError::Config(format!("opcua.writable_tags: {e}")))?;
        let target = writer.clone().map(|writer| WriteTarget {
            writer,
            policy: policy.clone(),
        });
        let items = ItemLimit {
            configured: settings.limits.max_monitored_items_per_session,
            tags: Default::default(),
        };
        let built = server::build(settings, target, items)?;
        let nodes = built
            .handle
            .node_managers()
            .get_of_type::<GatewayNodeManager>()
            .ok_or_else(|| OpcuaError::Server("gateway node manager missing".into()))?;
        let space = Space::new(nodes.inner().tag_ns(), nodes.inner().folder_ns());
        let local_addr = built
            .listener
            .local_addr()
            .map_err(|e| OpcuaError::Bind(settings.endpoint.clone(), e))?;
        // The socket is bound: clients queue until `run` serves them.
        let (state, state_rx) = watch::channel(ComponentState::Up);
        let (health, _) = watch::channel(ComponentState::Serving { sessions: 0 });
        let status = OpcuaStatus {
            state: state_rx,
            handle: built.handle.clone(),
            local_addr,
            endpoint_url: Arc::from(built.endpoint_url.as_str()),
        };
        Ok(OpcuaSink {
            server: Some(built.server),
            handle: built.handle,
            nodes,
            listener: Some(built.listener),
            status,
            state,
            health,
            space,
            policy: writer.is_some().then_some(policy),
            writer,
        })
    }

    /// The server's state for `/healthz`: `Serving { sessions }` while up
    /// (the count refreshed every second), `Down(reason)` otherwise.
    pub fn state(&self) -> watch::Receiver<ComponentState> {
        self.health.subscribe()
    }

    /// Sets the state, and the health document's view of it.
    fn set_state(&self, state: ComponentState) {
        let health = match &state {
            ComponentState::Up => ComponentState::Serving {
                sessions: self.status.sessions(),
            },
            other => other.clone(),
        };
        self.state.send_replace(state);
        self.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }

    /// Sessions, address and state (the run loop also keeps the
    /// `wincc_gateway_opcua_sessions` gauge current).
    pub fn status(&self) -> OpcuaStatus {
        self.status.clone()
    }

    /// Serves clients and applies bus events until `shutdown` is cancelled
    /// or the bus closes, then stops the server.
    pub async fn run(
        mut self,
        mut events: Subscriber,
        shutdown: CancellationToken,
    ) -> Result<(), OpcuaError> {
        let (Some(server), Some(listener)) = (self.server.take(), self.listener.take()) else {
            return Err(OpcuaError::Server("already run".into()));
        };
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| OpcuaError::Bind(self.status.local_addr.to_string(), e))?;
        let mut server = tokio::spawn(server.run_with(listener));
        let status = self.status.clone();
        self.set_state(ComponentState::Up);
        tracing::info!(endpoint = status.endpoint_url(), "OPC UA server listening");
        let subs = self.handle.subscriptions().clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                ended = &mut server => {
                    let why = match ended {
                        Ok(Ok(())) => "the server stopped by itself".to_string(),
                        Ok(Err(e)) => e,
                        Err(e) => format!("server task failed: {e}"),
                    };
                    tracing::error!(error = %why, "OPC UA server ended");
                    self.set_state(ComponentState::Down(why.clone()));
                    return Err(OpcuaError::Server(why));
                }
                event = events.recv() => match event {
                    None => break Ok(()),
                    Some(Event::Tags(tags)) => self.apply_tags(&subs, tags).await,
                    Some(Event::Changes(batch)) => self.apply_changes(&subs, &batch),
                    Some(Event::Station(s)) => self.apply_station(&s),
                    Some(Event::Alarms(alarms)) => self.apply_alarms(&subs, &alarms),
                },
                _ = tick.tick() => {
                    metrics::gauge!("wincc_gateway_opcua_sessions").set(status.sessions() as f64);
                    let current = self.state.borrow().clone();
                    self.set_state(current);
                }
            }
        };
        self.handle.cancel();
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("OPC UA server did not stop within 5 s; aborting it");
                server.abort();
            }
        }
        self.set_state(ComponentState::Down("stopped".into()));
        metrics::gauge!("wincc_gateway_opcua_sessions").set(0.0);
        tracing::info!("OPC UA server stopped");
        result
    }

    /// Brings the address space in line with the tag list. Building it for
    /// 100 000 tags takes seconds of CPU, so it runs on the blocking pool:
    /// the runtime's workers keep polling and publishing to MQTT meanwhile.
    async fn apply_tags(&mut self, subs: &SubscriptionCache, tags: Arc<Vec<TagInfo>>) {
        let nodes = self.nodes.clone();
        let policy = self.policy.clone();
        let empty = Space::new(self.space.tag_ns, self.space.folder_ns);
        let mut mirror = std::mem::replace(&mut self.space, empty);
        let built = tokio::task::spawn_blocking(move || {
            let may_write = move |tag: &str| policy.as_ref().is_some_and(|p| p.allows(tag));
            let report = {
                let mut space = nodes.address_space().write();
                mirror.sync(&mut space, &tags, &may_write)
            };
            (mirror, report)
        })
        .await;
        let report = match built {
            Ok((mirror, report)) => {
                self.space = mirror;
                report
            }
            Err(e) => {
                tracing::error!(error = %e, "OPC UA: updating the address space failed");
                return;
            }
        };
        // Tell subscribers of vanished tags, whose nodes are gone now.
        let gone = DataValue {
            value: Some(Variant::Empty),
            status: Some(StatusCode::BadNodeIdUnknown),
            server_timestamp: Some(DateTime::now()),
            ..Default::default()
        };
        subs.notify_data_change(
            report
                .removed
                .iter()
                .map(|id| (gone.clone(), id, opcua::types::AttributeId::Value)),
        );
        self.count_tags();
        tracing::info!(
            tags = self.space.len(),
            added = report.added,
            removed = report.removed.len(),
            updated = report.updated,
            "OPC UA address space updated"
        );
    }

    /// Tells the monitored-item limit how many tags there are now.
    fn count_tags(&self) {
        self.nodes
            .inner()
            .item_limit()
            .tags
            .store(self.space.len(), std::sync::atomic::Ordering::Relaxed);
    }

    fn apply_changes(&mut self, subs: &SubscriptionCache, batch: &ChangeBatch) {
        // Tags not announced yet (a change before the tag list) are added
        // read-only unless the station's directory says more.
        let missing: Vec<_> = batch
            .changes
            .iter()
            .filter(|c| !matches!(c.error, Some(BadReason::Removed)))
            .filter(|c| self.space.get(&c.name).is_none_or(|e| e.ty != c.ty))
            .collect();
        if !missing.is_empty() {
            let policy = self.policy.clone();
            let may_write = move |tag: &str| policy.as_ref().is_some_and(|p| p.allows(tag));
            let entries: Vec<_> = missing
                .iter()
                .map(|c| {
                    let station_writable = self
                        .writer
                        .as_ref()
                        .and_then(|w| w.tag(&c.name))
                        .is_some_and(|t| t.writable && t.ty == c.ty);
                    (
                        c.name.to_string(),
                        TagEntry {
                            ty: c.ty,
                            writable: station_writable && may_write(&c.name),
                        },
                    )
                })
                .collect();
            let mut space = self.nodes.address_space().write();
            for (name, entry) in entries {
                if name.is_empty() {
                    continue;
                }
                self.space.remove(&mut space, &name);
                self.space.add(&mut space, &name, entry);
            }
            drop(space);
            self.count_tags();
        }
        let now = DateTime::now();
        let mut ids: Vec<NodeId> = Vec::with_capacity(batch.changes.len());
        let mut values: Vec<DataValue> = Vec::with_capacity(batch.changes.len());
        let mut problems = 0u64;
        for c in &batch.changes {
            if self.space.get(&c.name).is_none() {
                continue;
            }
            let (dv, problem) = convert::change_to_data_value(c, now);
            if let Some(p) = problem {
                problems += 1;
                tracing::debug!(tag = %c.name, ty = %c.ty, error = ?p, "OPC UA: station value does not fit the tag type");
            }
            ids.push(self.space.tag_id(&c.name));
            values.push(dv);
        }
        if problems > 0 {
            metrics::counter!("wincc_gateway_opcua_value_errors_total").increment(problems);
        }
        let n = ids.len();
        if let Err(e) = self
            .nodes
            .set_values(subs, ids.iter().zip(values).map(|(id, dv)| (id, None, dv)))
        {
            tracing::error!(error = %e, "OPC UA: setting values failed");
            return;
        }
        metrics::counter!("wincc_gateway_opcua_values_total").increment(n as u64);
    }

    /// Raises one OPC UA event per alarm transition on the WinCC folder
    /// (and so on the Server object), in bus order. The source node is the
    /// tag variable named like the alarm if there is one, else the folder.
    fn apply_alarms(&self, subs: &SubscriptionCache, alarms: &[AlarmEvent]) {
        if alarms.is_empty() {
            return;
        }
        let now = DateTime::now();
        let root = space::root_id(self.space.folder_ns);
        let events: Vec<AlarmOpcuaEvent> = alarms
            .iter()
            .map(|a| {
                let source = if self.space.get(&a.alarm.name).is_some() {
                    self.space.tag_id(&a.alarm.name)
                } else {
                    root.clone()
                };
                AlarmOpcuaEvent::new(a, self.space.tag_ns, source, now)
            })
            .collect();
        subs.notify_events(
            events
                .iter()
                .map(|e| (e as &dyn opcua::nodes::Event, &root)),
        );
        for a in alarms {
            metrics::counter!("wincc_gateway_opcua_events_total", "event" => a.kind.as_str())
                .increment(1);
            tracing::debug!(
                alarm = %a.alarm.id,
                event = a.kind.as_str(),
                priority = a.alarm.priority,
                "OPC UA: alarm event raised"
            );
        }
    }

    /// The poller marks every tag of a group that cannot be read as bad
    /// (`BadReason::Communication`) in a change batch, and republishes it
    /// when the group reads again; those batches set
    /// `Bad_CommunicationError` here. Marking every tag from this event as
    /// well could leave tags of healthy groups bad, so it is only logged.
    fn apply_station(&mut self, s: &StationStatus) {
        if s.connected {
            tracing::info!("OPC UA: station connected");
        } else {
            tracing::warn!(
                error = s.error.as_deref().unwrap_or("unknown"),
                "OPC UA: station unreachable; its tags turn Bad_CommunicationError"
            );
        }
    }
}
