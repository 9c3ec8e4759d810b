pub mod opcua;
