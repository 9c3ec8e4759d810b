//! wincc-gateway: polls a Siemens WinCC station's REST API and fans the
//! changes out to MQTT and OPC UA; writes come back through one guarded path.
//!
//! Data flows one way: station source ([`wincc`]) → change detection
//! ([`poll`]) → [`bus`] → sinks ([`sinks`]); writes go the other way through
//! [`writes`].

pub mod alarms;
pub mod buffer;
pub mod bus;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod gateway;
pub mod glob;
pub mod http;
pub mod model;
pub mod poll;
pub mod reload;
pub mod service;
pub mod sim;
pub mod sinks;
pub mod status;
pub mod topic;
pub mod wincc;
pub mod writes;
