//! The write audit tests in a process of their own: they install the global
//! log subscriber and compare `wincc_gateway_writes_total` before and after,
//! which OPC UA and MQTT writes of other tests in the same process would
//! disturb. `cargo test --test audit`.

mod common;
mod opcua_support;
mod write_audit;
