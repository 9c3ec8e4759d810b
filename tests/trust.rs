//! The OPC UA ServerStatus and client-trust tests in a process of their
//! own: they install the global log subscriber to read the gateway's log
//! lines. `cargo test --test trust`.

mod common;
mod opcua_status_trust;
mod opcua_support;
