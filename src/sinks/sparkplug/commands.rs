//! DCMD: a host sets device metrics. Every metric becomes a write through
//! the one guarded path ([`Writer`]: enabled, allow-list, known, writable,
//! type, range); nothing here writes by itself. The station's new value
//! reaches the host in a later DDATA, through polling like any change.
//!
//! A command that cannot even be read (not a Sparkplug payload, an alias
//! that is not in the current DBIRTH, a metric with no value) is refused
//! here, logged and counted under the same metric as every other write
//! (`wincc_gateway_writes_total{sink="sparkplug",result="refused",reason="malformed"}`,
//! through [`crate::writes::audit`] like every write).
//! Writes run in one task, in arrival order, so a slow station never
//! holds up publishing; at most [`QUEUE`] commands wait, more are refused
//! (`reason="busy"`).

use prost::Message;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::convert::json_value;
use super::node::Node;
use super::proto::Payload;
use crate::model::TagType;
use crate::writes::{WritePolicy, Writer};

/// DCMD payloads waiting for the station.
const QUEUE: usize = 64;
/// Metrics in one DCMD (a bigger one is refused whole).
const MAX_METRICS: usize = 10_000;

pub(crate) struct Commands {
    writer: Writer,
    tx: mpsc::Sender<Vec<(String, Json)>>,
}

impl Commands {
    /// Starts the write task; it ends when `Commands` is dropped.
    pub(crate) fn start(writer: Writer, policy: WritePolicy) -> (Commands, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Vec<(String, Json)>>(QUEUE);
        let w = writer.clone();
        let task = tokio::spawn(async move {
            while let Some(writes) = rx.recv().await {
                // Each write is logged and counted by the write path.
                let _ = w.write_many(&policy, &writes).await;
            }
        });
        (Commands { writer, tx }, task)
    }

    /// Reads a DCMD and queues its writes.
    pub(crate) fn handle(&self, node: &Node, payload: &[u8]) {
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => return refuse("(DCMD)", &format!("not a Sparkplug B payload: {e}")),
        };
        if p.metrics.len() > MAX_METRICS {
            return refuse(
                "(DCMD)",
                &format!(
                    "{} metrics in one command; at most {MAX_METRICS}",
                    p.metrics.len()
                ),
            );
        }
        let mut writes = Vec::with_capacity(p.metrics.len());
        for m in &p.metrics {
            let tag = match node.command_target(m) {
                Ok(t) => t,
                Err(why) => {
                    refuse("(DCMD)", &why);
                    continue;
                }
            };
            let value = match &m.value {
                Some(v) if m.is_null != Some(true) => v,
                _ => {
                    refuse(&tag, "the metric carries no value");
                    continue;
                }
            };
            // The station's type decides how the value is read; an unknown
            // tag is refused by the write path.
            let ty = self.writer.tag(&tag).map_or(TagType::String, |t| t.ty);
            writes.push((tag, json_value(ty, value)));
        }
        if writes.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(writes) {
            for (tag, _) in &e.into_inner() {
                count(
                    tag,
                    "busy",
                    "too many DCMD writes are waiting for the station",
                );
            }
        }
    }
}

fn refuse(tag: &str, why: &str) {
    count(tag, "malformed", why);
}

fn count(tag: &str, reason: &'static str, why: &str) {
    crate::writes::audit(
        "sparkplug",
        tag,
        None,
        crate::writes::Outcome::Refused { reason, why: &why },
    );
}
