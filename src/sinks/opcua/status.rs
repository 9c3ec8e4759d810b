//! A live `Server/ServerStatus` and a filled-in BuildInfo.
//!
//! async-opcua 0.19 answers a Read of the whole ServerStatus structure
//! (i=2256) with the CurrentTime of the last subscription sample, which is
//! the start time when nobody subscribes: a watchdog client reading it
//! concludes the server hung. [`LiveStatusCore`] wraps the stack's core node
//! manager (namespace 0), delegates every service to it unchanged, and after
//! a Read sets CurrentTime of that structure to now. [`build_info`] fills
//! BuildInfo from the crate (the stack leaves it empty: build date 1601).

use std::sync::Arc;

use async_trait::async_trait;
use opcua::nodes::DefaultTypeTree;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{CoreNodeManagerBuilder, InMemoryNodeManagerBuilder};
use opcua::server::node_manager::{
    AddNodeItem, AddReferenceItem, BrowseNode, BrowsePathItem, DeleteNodeItem, DeleteReferenceItem,
    DynNodeManager, ExternalReferenceRequest, HistoryNode, HistoryUpdateNode, MethodCall,
    MonitoredItemRef, MonitoredItemUpdateRef, NodeManager, NodeManagerBuilder, QueryRequest,
    ReadNode, RegisterNodeItem, RequestContext, ServerContext, WriteNode,
};
use opcua::server::{CreateMonitoredItem, ServerStatusWrapper};
use opcua::types::{
    AttributeId, BuildInfo, DataValue, DateTime, ExpandedNodeId, ExtensionObject, MonitoringMode,
    NodeId, NumericRange, ReadAnnotationDataDetails, ReadAtTimeDetails, ReadEventDetails,
    ReadProcessedDetails, ReadRawModifiedDetails, ServerStatusDataType, StatusCode,
    TimestampsToReturn, VariableId,
};

/// BuildInfo from this crate: version, build number (`WINCC_GW_BUILD_NUMBER`
/// at compile time if set, else version and profile) and build date (when
/// the running executable was built, from its modification time).
pub(crate) fn build_info() -> BuildInfo {
    let version = env!("CARGO_PKG_VERSION");
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let build_number = option_env!("WINCC_GW_BUILD_NUMBER")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{version}-{profile}"));
    let build_date = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .map(|t| DateTime::from(chrono::DateTime::<chrono::Utc>::from(t)))
        .unwrap_or_else(|_| DateTime::now());
    BuildInfo {
        product_uri: "urn:wincc-gateway".into(),
        manufacturer_name: "wincc-gateway project".into(),
        product_name: "WinCC Gateway".into(),
        software_version: version.into(),
        build_number: build_number.into(),
        build_date,
    }
}

/// Builds the core node manager wrapped in [`LiveStatusCore`].
pub(crate) struct LiveStatusCoreBuilder;

impl NodeManagerBuilder for LiveStatusCoreBuilder {
    fn build(self: Box<Self>, context: ServerContext) -> Arc<DynNodeManager> {
        let status = context.status.clone();
        let inner =
            Box::new(InMemoryNodeManagerBuilder::new(CoreNodeManagerBuilder)).build(context);
        Arc::new(LiveStatusCore { inner, status })
    }
}

/// The core node manager with a live ServerStatus.
pub(crate) struct LiveStatusCore {
    inner: Arc<DynNodeManager>,
    status: Arc<ServerStatusWrapper>,
}

impl LiveStatusCore {
    /// The ServerStatus structure with CurrentTime = now.
    fn live_status(&self) -> Option<DataValue> {
        let obj = self.status.full_status_obj();
        let mut status: ServerStatusDataType = obj.inner_as::<ServerStatusDataType>()?.clone();
        status.current_time = DateTime::now();
        Some(DataValue::new_now(ExtensionObject::from_message(status)))
    }
}

#[async_trait]
impl NodeManager for LiveStatusCore {
    fn owns_node(&self, id: &NodeId) -> bool {
        self.inner.owns_node(id)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn owns_server_events(&self) -> bool {
        self.inner.owns_server_events()
    }

    fn handle_new_node(&self, parent_id: &ExpandedNodeId) -> bool {
        self.inner.handle_new_node(parent_id)
    }

    fn namespaces_for_user(&self, context: &RequestContext) -> Vec<NamespaceMetadata> {
        self.inner.namespaces_for_user(context)
    }

    async fn init(&self, type_tree: &mut DefaultTypeTree, context: ServerContext) {
        self.inner.init(type_tree, context).await
    }

    async fn resolve_external_references(
        &self,
        context: &RequestContext,
        items: &mut [&mut ExternalReferenceRequest],
    ) {
        self.inner.resolve_external_references(context, items).await
    }

    async fn read(
        &self,
        context: &RequestContext,
        max_age: f64,
        timestamps_to_return: TimestampsToReturn,
        nodes_to_read: &mut [&mut ReadNode],
    ) -> Result<(), StatusCode> {
        self.inner
            .read(context, max_age, timestamps_to_return, nodes_to_read)
            .await?;
        let status_id: NodeId = VariableId::Server_ServerStatus.into();
        for node in nodes_to_read.iter_mut() {
            let n = node.node();
            if n.node_id == status_id
                && n.attribute_id == AttributeId::Value
                && matches!(n.index_range, NumericRange::None)
                && node.status().is_good()
            {
                if let Some(dv) = self.live_status() {
                    node.set_result(dv);
                }
            }
        }
        Ok(())
    }

    async fn history_read_raw_modified(
        &self,
        context: &RequestContext,
        details: &ReadRawModifiedDetails,
        nodes: &mut [&mut HistoryNode],
        timestamps_to_return: TimestampsToReturn,
    ) -> Result<(), StatusCode> {
        self.inner
            .history_read_raw_modified(context, details, nodes, timestamps_to_return)
            .await
    }

    async fn history_read_processed(
        &self,
        context: &RequestContext,
        details: &ReadProcessedDetails,
        nodes: &mut [&mut HistoryNode],
        timestamps_to_return: TimestampsToReturn,
    ) -> Result<(), StatusCode> {
        self.inner
            .history_read_processed(context, details, nodes, timestamps_to_return)
            .await
    }

    async fn history_read_at_time(
        &self,
        context: &RequestContext,
        details: &ReadAtTimeDetails,
        nodes: &mut [&mut HistoryNode],
        timestamps_to_return: TimestampsToReturn,
    ) -> Result<(), StatusCode> {
        self.inner
            .history_read_at_time(context, details, nodes, timestamps_to_return)
            .await
    }

    async fn history_read_events(
        &self,
        context: &RequestContext,
        details: &ReadEventDetails,
        nodes: &mut [&mut HistoryNode],
        timestamps_to_return: TimestampsToReturn,
    ) -> Result<(), StatusCode> {
        self.inner
            .history_read_events(context, details, nodes, timestamps_to_return)
            .await
    }

    async fn history_read_annotations(
        &self,
        context: &RequestContext,
        details: &ReadAnnotationDataDetails,
        nodes: &mut [&mut HistoryNode],
        timestamps_to_return: TimestampsToReturn,
    ) -> Result<(), StatusCode> {
        self.inner
            .history_read_annotations(context, details, nodes, timestamps_to_return)
            .await
    }

    async fn write(
        &self,
        context: &RequestContext,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        self.inner.write(context, nodes_to_write).await
    }

    async fn history_update(
        &self,
        context: &RequestContext,
        nodes: &mut [&mut HistoryUpdateNode],
    ) -> Result<(), StatusCode> {
        self.inner.history_update(context, nodes).await
    }

    async fn browse(
        &self,
        context: &RequestContext,
        nodes_to_browse: &mut [BrowseNode],
    ) -> Result<(), StatusCode> {
        self.inner.browse(context, nodes_to_browse).await
    }

    async fn translate_browse_paths_to_node_ids(
        &self,
        context: &RequestContext,
        nodes: &mut [&mut BrowsePathItem],
    ) -> Result<(), StatusCode> {
        self.inner
            .translate_browse_paths_to_node_ids(context, nodes)
            .await
    }

    async fn register_nodes(
        &self,
        context: &RequestContext,
        nodes: &mut [&mut RegisterNodeItem],
    ) -> Result<(), StatusCode> {
        self.inner.register_nodes(context, nodes).await
    }

    async fn unregister_nodes(
        &self,
        context: &RequestContext,
        nodes: &[&NodeId],
    ) -> Result<(), StatusCode> {
        self.inner.unregister_nodes(context, nodes).await
    }

    async fn create_monitored_items(
        &self,
        context: &RequestContext,
        items: &mut [&mut CreateMonitoredItem],
    ) -> Result<(), StatusCode> {
        self.inner.create_monitored_items(context, items).await
    }

    async fn modify_monitored_items(
        &self,
        context: &RequestContext,
        items: &[&MonitoredItemUpdateRef],
    ) {
        self.inner.modify_monitored_items(context, items).await
    }

    async fn set_monitoring_mode(
        &self,
        context: &RequestContext,
        mode: MonitoringMode,
        items: &[&MonitoredItemRef],
    ) {
        self.inner.set_monitoring_mode(context, mode, items).await
    }

    async fn delete_monitored_items(&self, context: &RequestContext, items: &[&MonitoredItemRef]) {
        self.inner.delete_monitored_items(context, items).await
    }

    async fn query(
        &self,
        context: &RequestContext,
        request: &mut QueryRequest,
    ) -> Result<(), StatusCode> {
        self.inner.query(context, request).await
    }

    async fn call(
        &self,
        context: &RequestContext,
        methods_to_call: &mut [&mut MethodCall],
    ) -> Result<(), StatusCode> {
        self.inner.call(context, methods_to_call).await
    }

    async fn add_nodes(
        &self,
        context: &RequestContext,
        nodes_to_add: &mut [&mut AddNodeItem],
    ) -> Result<(), StatusCode> {
        self.inner.add_nodes(context, nodes_to_add).await
    }

    async fn add_references(
        &self,
        context: &RequestContext,
        references_to_add: &mut [&mut AddReferenceItem],
    ) -> Result<(), StatusCode> {
        self.inner.add_references(context, references_to_add).await
    }

    async fn delete_nodes(
        &self,
        context: &RequestContext,
        nodes_to_delete: &mut [&mut DeleteNodeItem],
    ) -> Result<(), StatusCode> {
        self.inner.delete_nodes(context, nodes_to_delete).await
    }

    async fn delete_node_references(
        &self,
        context: &RequestContext,
        to_delete: &[&DeleteNodeItem],
    ) {
        self.inner.delete_node_references(context, to_delete).await
    }

    async fn delete_references(
        &self,
        context: &RequestContext,
        references_to_delete: &mut [&mut DeleteReferenceItem],
    ) -> Result<(), StatusCode> {
        self.inner
            .delete_references(context, references_to_delete)
            .await
    }
}
