//! Where the bus's events go: MQTT, the OPC UA server, Sparkplug B, and (behind the
//! `demo` feature) an embedded MQTT broker for the zero-dependency demo.

#[cfg(feature = "demo")]
pub mod broker;
pub mod mqtt;
pub mod opcua;
pub mod sparkplug;
