//! The gateway's node manager: the crate's in-memory node manager with our
//! own [`InMemoryNodeManagerImpl`], which owns the tag and folder namespaces
//! and implements the Write service asynchronously.
//!
//! Why not the crate's write callback: it is synchronous and runs while the
//! address-space write lock is held, so it could only hand the write to a
//! task and answer Good before the station has said anything. The async
//! `write` hook here runs in the session's own task with no lock held while
//! it awaits the station: a client's write answers Good only after the
//! station accepted the value, and a slow station blocks nobody else.
//!
//! It also bounds the monitored items of a session ([`ItemLimit`]): the
//! crate only limits them per subscription.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use opcua::server::address_space::{
    add_namespaces, user_access_level, AccessLevel, AddressSpace, Node, NodeType,
};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::InMemoryNodeManagerBuilder;
use opcua::server::node_manager::memory::{InMemoryNodeManager, InMemoryNodeManagerImpl};
use opcua::server::node_manager::{
    NodeManagerBuilder, ParsedWriteValue, RequestContext, ServerContext, WriteNode,
};
use opcua::server::CreateMonitoredItem;
use opcua::sync::RwLock;
use opcua::types::{
    AttributeId, DataEncoding, DataValue, DateTime, Identifier, NodeId, NumericRange, StatusCode,
    TimestampsToReturn,
};

use crate::model::TagType;
use crate::writes::{WritePolicy, Writer};

use super::convert::{data_type, json_to_variant, variant_to_json, write_error_status};
use super::events::add_event_type;
use super::space::add_root;

/// The node manager type the server holds; find it with
/// `handle.node_managers().get_of_type::<GatewayNodeManager>()`.
pub type GatewayNodeManager = InMemoryNodeManager<GatewayNodes>;

/// Where client writes go: the guarded write path and this sink's policy.
#[derive(Clone)]
pub struct WriteTarget {
    pub writer: Writer,
    pub policy: WritePolicy,
}

/// Monitored items one session may hold over all its subscriptions
/// (`opcua.limits.max_monitored_items_per_session`; 0: the current tag
/// count + [`ITEM_HEADROOM`]).
#[derive(Clone, Default)]
pub struct ItemLimit {
    pub configured: usize,
    /// The number of tag variables, kept current by the sink.
    pub tags: Arc<AtomicUsize>,
}

/// Items a session may hold beyond one per tag when the limit is automatic.
pub const ITEM_HEADROOM: usize = 1000;

impl ItemLimit {
    pub fn per_session(&self) -> usize {
        if self.configured > 0 {
            self.configured
        } else {
            self.tags.load(Ordering::Relaxed) + ITEM_HEADROOM
        }
    }
}

/// Our part of the node manager (see the module doc).
pub struct GatewayNodes {
    namespaces: Vec<NamespaceMetadata>,
    tag_ns: u16,
    writes: Option<WriteTarget>,
    items: ItemLimit,
}

/// A builder for the server: registers `namespace_uri` and
/// `<namespace_uri>/folders` and adds `Objects/WinCC` and the alarm event type.
pub fn builder(
    namespace_uri: &str,
    writes: Option<WriteTarget>,
    items: ItemLimit,
) -> impl NodeManagerBuilder {
    let uris = [
        namespace_uri.to_string(),
        format!("{namespace_uri}/folders"),
    ];
    InMemoryNodeManagerBuilder::new(move |context: ServerContext, space: &mut AddressSpace| {
        let idx = add_namespaces(&context, space, &[uris[0].as_str(), uris[1].as_str()]);
        add_root(space, idx[1]);
        add_event_type(space, idx[0]);
        GatewayNodes {
            namespaces: uris
                .iter()
                .zip(&idx)
                .map(|(uri, i)| NamespaceMetadata {
                    namespace_uri: uri.clone(),
                    namespace_index: *i,
                    ..Default::default()
                })
                .collect(),
            tag_ns: idx[0],
            writes,
            items,
        }
    })
}

impl GatewayNodes {
    /// Index of the tag namespace.
    pub fn tag_ns(&self) -> u16 {
        self.tag_ns
    }

    /// The monitored-item limit (shared with the sink, which keeps the tag count).
    pub fn item_limit(&self) -> &ItemLimit {
        &self.items
    }

    /// Monitored items the session of `context` holds now, over all its
    /// subscriptions and node managers.
    fn session_items(context: &RequestContext) -> usize {
        let Some(subs) = context
            .subscriptions
            .get_session_subscriptions(context.session_id)
        else {
            return 0;
        };
        let subs = subs.lock();
        subs.subscription_ids()
            .iter()
            .filter_map(|id| subs.get(*id))
            .map(|s| s.len())
            .sum()
    }

    /// Index of the folder namespace.
    pub fn folder_ns(&self) -> u16 {
        self.namespaces[1].namespace_index
    }

    /// Checks a write against the node (under the read lock). Gives the tag
    /// name, its type and the value as JSON, or the status to answer.
    fn prepare(
        &self,
        context: &RequestContext,
        space: &AddressSpace,
        write: &ParsedWriteValue,
    ) -> Result<(String, TagType, serde_json::Value), StatusCode> {
        let node = space
            .find(&write.node_id)
            .ok_or(StatusCode::BadNodeIdUnknown)?;
        let NodeType::Variable(var) = node else {
            return Err(StatusCode::BadNotWritable);
        };
        if write.attribute_id != AttributeId::Value {
            return Err(StatusCode::BadNotWritable);
        }
        if write.node_id.namespace != self.tag_ns {
            return Err(StatusCode::BadNotWritable);
        }
        if !user_access_level(context, node).contains(AccessLevel::CURRENT_WRITE) {
            return Err(StatusCode::BadUserAccessDenied);
        }
        if write.index_range.has_range() {
            return Err(StatusCode::BadWriteNotSupported);
        }
        let Identifier::String(name) = &write.node_id.identifier else {
            return Err(StatusCode::BadNodeIdUnknown);
        };
        let name = name.value().clone().ok_or(StatusCode::BadNodeIdUnknown)?;
        let ty = TagType::ALL
            .into_iter()
            .find(|t| var.data_type() == data_type(*t))
            .ok_or(StatusCode::BadNotWritable)?;
        let value = write
            .value
            .value
            .as_ref()
            .ok_or(StatusCode::BadTypeMismatch)?;
        let json = variant_to_json(ty, value)?;
        Ok((name, ty, json))
    }

    /// The station took `json` for the node: show the written value (and
    /// notify monitored items) until the next poll brings the station's own.
    fn show_written(
        &self,
        context: &RequestContext,
        space_lock: &RwLock<AddressSpace>,
        node_id: &NodeId,
        ty: TagType,
        json: &serde_json::Value,
    ) {
        let now = DateTime::now();
        let written = json_to_variant(ty, json).unwrap_or_default();
        let dv = DataValue {
            value: Some(written),
            status: Some(StatusCode::Good),
            source_timestamp: Some(now),
            source_picoseconds: None,
            server_timestamp: Some(now),
            server_picoseconds: None,
        };
        let notified = {
            let mut space = space_lock.write();
            match space.find_mut(node_id) {
                Some(NodeType::Variable(v)) => {
                    v.set_data_value(dv);
                    v.get_attribute(
                        TimestampsToReturn::Both,
                        AttributeId::Value,
                        &NumericRange::None,
                        &DataEncoding::Binary,
                    )
                }
                _ => None,
            }
        };
        if let Some(value) = notified {
            context.subscriptions.notify_data_change(std::iter::once((
                value,
                node_id,
                AttributeId::Value,
            )));
        }
    }
}

#[async_trait]
impl InMemoryNodeManagerImpl for GatewayNodes {
    async fn init(&self, _space: &mut AddressSpace, _context: ServerContext) {}

    fn name(&self) -> &str {
        "wincc-gateway"
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        self.namespaces.clone()
    }

    /// Value items on our nodes: refused with `Bad_TooManyMonitoredItems`
    /// beyond the session's limit, counting what the session holds already.
    /// Concurrent calls of one session may together pass it by at most one
    /// call (`max_monitored_items_per_call`); memory stays bounded.
    async fn create_value_monitored_items(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        items: &mut [&mut &mut CreateMonitoredItem],
    ) {
        let limit = self.items.per_session();
        let held = Self::session_items(context);
        let room = limit.saturating_sub(held);
        let refused = items.len().saturating_sub(room);
        if refused > 0 {
            tracing::warn!(
                session = context.session_id,
                held,
                asked = items.len(),
                refused,
                limit,
                "OPC UA: monitored items over the per-session limit refused"
            );
            metrics::counter!("wincc_gateway_opcua_limit_refusals_total", "limit" => "monitored_items")
                .increment(refused as u64);
        }
        let (accepted, over) = items.split_at_mut(room.min(items.len()));
        for item in over.iter_mut() {
            item.set_status(StatusCode::BadTooManyMonitoredItems);
        }
        if accepted.is_empty() {
            return;
        }
        let to_read: Vec<_> = accepted.iter().map(|r| r.item_to_monitor()).collect();
        let values = self
            .read_values(
                context,
                address_space,
                &to_read,
                0.0,
                TimestampsToReturn::Both,
            )
            .await;
        for (value, node) in values.into_iter().zip(accepted.iter_mut()) {
            if value.status() != StatusCode::BadAttributeIdInvalid {
                node.set_initial_value(value);
            }
            node.set_status(StatusCode::Good);
        }
    }

    async fn write(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        // The session's user, for the write audit (the status page's list).
        let token = &context.user_token().0;
        let user: Arc<str> = Arc::from(token.strip_prefix("user:").unwrap_or("anonymous"));
        crate::writes::WRITE_USER
            .scope(
                user,
                self.write_as_user(context, address_space, nodes_to_write),
            )
            .await
    }
}

impl GatewayNodes {
    async fn write_as_user(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        // Every node is checked first (under the read lock); the ones that
        // pass go to the station together (one batch request where the
        // dialect has one), with no lock held while it answers.
        let mut pending = Vec::new();
        {
            let space = address_space.read();
            for (i, write) in nodes_to_write.iter_mut().enumerate() {
                match self.prepare(context, &space, write.value()) {
                    Ok(p) if self.writes.is_some() => pending.push((i, p)),
                    Ok((name, _, json)) => {
                        let why = crate::writes::WriteError::Disabled("opcua");
                        crate::writes::audit(
                            "opcua",
                            &name,
                            Some(&json),
                            crate::writes::Outcome::Refused {
                                reason: why.kind(),
                                why: &why,
                            },
                        );
                        write.set_status(StatusCode::BadUserAccessDenied)
                    }
                    Err(status) => {
                        audit_refusal(&space, write.value(), status);
                        write.set_status(status)
                    }
                }
            }
        }
        let Some(target) = &self.writes else {
            return Ok(());
        };
        if pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<(String, serde_json::Value)> = pending
            .iter()
            .map(|(_, (name, _, json))| (name.clone(), json.clone()))
            .collect();
        let results = target.writer.write_many(&target.policy, &batch).await;
        for ((i, (_, ty, json)), result) in pending.into_iter().zip(results) {
            let write = &mut nodes_to_write[i];
            match result {
                Ok(()) => {
                    let node_id = write.value().node_id.clone();
                    self.show_written(context, address_space, &node_id, ty, &json);
                    write.set_status(StatusCode::Good);
                }
                Err(e) => write.set_status(write_error_status(&e)),
            }
        }
        Ok(())
    }
}

/// The audit line and count of an OPC UA write refused before it reached
/// the guarded path (writes.rs counts the others).
fn audit_refusal(space: &AddressSpace, write: &ParsedWriteValue, status: StatusCode) {
    let node = space.find(&write.node_id);
    let reason = if status == StatusCode::BadUserAccessDenied {
        // Nobody may write the variable (not in writable_tags, or read-only
        // at the station), or only this session's user may not.
        match node {
            Some(NodeType::Variable(v))
                if v.access_level().contains(AccessLevel::CURRENT_WRITE) =>
            {
                "access_denied"
            }
            _ => "not_allowed",
        }
    } else if status == StatusCode::BadNodeIdUnknown {
        "unknown_tag"
    } else if status == StatusCode::BadTypeMismatch {
        "type_mismatch"
    } else if status == StatusCode::BadOutOfRange {
        "out_of_range"
    } else if status == StatusCode::BadWriteNotSupported {
        "not_supported"
    } else {
        "not_writable"
    };
    let tag = match &write.node_id.identifier {
        Identifier::String(s) if write.node_id.namespace != 0 => {
            s.value().clone().unwrap_or_default()
        }
        _ => write.node_id.to_string(),
    };
    let why = format!(
        "OPC UA {status} for {:?} of {}",
        write.attribute_id, write.node_id
    );
    crate::writes::audit(
        "opcua",
        &tag,
        None,
        crate::writes::Outcome::Refused { reason, why: &why },
    );
}

/// Shared handle to the node manager, as the sink keeps it.
pub type NodesRef = Arc<GatewayNodeManager>;
