//! What the gateway announced before it (re)started: the retained
//! `{prefix}/alarms/active/...` messages. The alarm poller is seeded with
//! them, so that after a restart alarms still active are not announced twice
//! and alarms that cleared meanwhile are cleared (their retained topic
//! emptied) — the reconciliation of contract §3.
//!
//! It speaks the configured protocol (3.1.1 or 5), with the same
//! credentials and TLS settings as the sink.

use std::time::Duration;

use super::link::{self, NetEvent, Qos};
use super::{options, MqttError};
use crate::config::MqttSettings;
use crate::model::Alarm;

/// Reads the retained active alarms from the broker with a short-lived,
/// clean-session connection of its own. Gives up after `wait`.
pub async fn announced_alarms(
    settings: &MqttSettings,
    wait: Duration,
) -> Result<Vec<Alarm>, MqttError> {
    let prefix = options::prefix(settings)?;
    let mut seed_settings = settings.clone();
    seed_settings.client_id = format!("{}-alarm-seed", settings.client_id);
    seed_settings.clean_session = true;
    let opts = options::build(&seed_settings, &format!("{prefix}/status"))?;
    let (client, mut eventloop) = link::connect(opts, 16);
    let filter = format!("{prefix}/alarms/active/#");
    let topic_start = format!("{prefix}/alarms/active/");

    let collect = async {
        let mut alarms = Vec::new();
        let mut subscribed = false;
        loop {
            // Retained messages follow the SUBACK at once; a short quiet
            // period after it means they have all arrived.
            let next = if subscribed {
                match tokio::time::timeout(Duration::from_millis(300), eventloop.poll()).await {
                    Ok(ev) => ev,
                    Err(_) => break,
                }
            } else {
                eventloop.poll().await
            };
            match next {
                Ok(NetEvent::ConnAck { .. }) => {
                    client
                        .try_subscribe(&filter, Qos::AtLeastOnce)
                        .map_err(MqttError::Broker)?;
                }
                Ok(NetEvent::SubAck { .. }) => subscribed = true,
                Ok(NetEvent::Message(p)) if p.retain && !p.payload.is_empty() => {
                    if !p.topic.starts_with(&topic_start) {
                        continue;
                    }
                    match serde_json::from_slice::<Alarm>(&p.payload) {
                        Ok(a) => alarms.push(a),
                        Err(e) => {
                            tracing::warn!(topic = %p.topic, error = %e, "ignoring a retained alarm that does not parse")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(MqttError::Broker(e)),
            }
        }
        Ok(alarms)
    };
    let result = match tokio::time::timeout(wait, collect).await {
        Ok(r) => r,
        Err(_) => Err(MqttError::Broker(format!("no answer within {wait:?}"))),
    };
    // A clean disconnect, so the will is not published.
    client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    result
}
