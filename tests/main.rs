//! The integration tests, built as one test binary (one link instead of one
//! per file: faster builds and CI). Each file under `tests/` is a module;
//! `common` and `opcua_support` are the shared rigs (simulator, mosquitto,
//! gateway pieces, the OPC UA client). Run one area with a filter, e.g.
//! `cargo test --test it dialect_v7::`.
//!
//! Two files run in processes of their own (`tests/audit.rs`,
//! `tests/trust.rs`): they install a global log subscriber to read the
//! gateway's log lines and compare global metric counts, which other tests
//! running beside them in one process would disturb.

mod common;
mod mqtt_buffer_support;
mod opcua_support;

mod cli;
mod config_reload;
mod demo;
mod dialect_e2e;
mod dialect_unified;
mod dialect_v7;
mod eight_bit_types;
mod gateway_alarms;
mod independent_clients;
mod mqtt_buffer;
mod mqtt_buffer_restart;
mod mqtt_embedded_broker;
mod mqtt_outage;
mod mqtt_publish;
mod mqtt_tls;
mod mqtt_v5;
mod mqtt_writes;
mod opcua_address_space;
mod opcua_alarms;
mod opcua_limits;
mod opcua_security;
mod opcua_writes;
mod poll_engine;
mod poll_subscribe;
mod sim_auth;
mod sim_control;
mod sim_faults;
mod sim_tags;
mod soak_smoke;
mod sparkplug;
mod station_generic;
mod station_hostile;
mod station_outage;
mod station_outage_requests;
mod status_page;
mod tls_pinning;
