//! Where the bus's events go: MQTT (and, behind the `demo-broker` feature,
//! an embedded broker for the zero-dependency demo).

#[cfg(feature = "demo-broker")]
pub mod broker;
pub mod mqtt;
