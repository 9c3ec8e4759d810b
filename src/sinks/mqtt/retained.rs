//! What the gateway announced before it (re)started: the retained
//! `{prefix}/alarms/active/...` messages. The alarm poller is seeded with
//! them, so that after a restart alarms still active are not announced twice
//! and alarms that cleared meanwhile are cleared (their retained topic
//! emptied) — the reconciliation of contract §3.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};

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
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
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
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe(filter.clone(), QoS::AtLeastOnce)
                        .await
                        .map_err(|e| MqttError::Broker(e.to_string()))?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) if p.retain && !p.payload.is_empty() => {
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
                Err(e) => return Err(MqttError::Broker(e.to_string())),
            }
        }
        Ok(alarms)
    };
    let result = match tokio::time::timeout(wait, collect).await {
        Ok(r) => r,
        Err(_) => Err(MqttError::Broker(format!("no answer within {wait:?}"))),
    };
    // A clean disconnect, so the will is not published.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    result
}
