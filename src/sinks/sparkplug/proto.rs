//! The Sparkplug B payload (Eclipse Sparkplug 3.0, `org.eclipse.tahu.protobuf.Payload`)
//! as prost messages, derived here rather than generated, so the build needs
//! no `protoc`.
//!
//! Only what an edge node sends or reads is declared: `Payload`, `Metric`,
//! `PropertySet`/`PropertyValue`. The schema's DataSet, Template, MetaData
//! and extension members are left out; prost skips such fields when
//! decoding a command, and the gateway never sends them. The field numbers
//! and wire types follow the specification's schema; the tests decode what
//! the gateway sends with `protoc` and an independent copy of that schema
//! (`tests/fixtures/sparkplug_b.proto`), so a wrong tag here fails a test.

/// A Sparkplug B payload (schema: proto2; every scalar is optional).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Payload {
    /// When the message was sent, ms since the Unix epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0..=255; absent in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// One metric: a tag, `bdSeq` or a node control.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Metric {
    /// In births and commands; data messages use `alias` alone.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// The source timestamp, ms since the Unix epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] code.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<Value>,
}

/// A metric's value (the schema's `oneof value`, without DataSet,
/// Template and extensions).
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Value {
    /// Int8/16/32 (two's complement, sign-extended to 32 bits), UInt8/16/32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement), UInt64, DateTime (ms since the epoch).
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// Named properties of a metric (`keys[i]` belongs to `values[i]`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PropertyValue {
    /// A [`DataType`] code.
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum PropertyKind {
    #[prost(uint32, tag = "3")]
    Int(u32),
    #[prost(uint64, tag = "4")]
    Long(u64),
    #[prost(float, tag = "5")]
    Float(f32),
    #[prost(double, tag = "6")]
    Double(f64),
    #[prost(bool, tag = "7")]
    Boolean(bool),
    #[prost(string, tag = "8")]
    String(String),
}

/// Sparkplug B datatype codes (the specification's DataType table) that the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum DataType {
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
}

impl DataType {
    pub(crate) fn code(self) -> u32 {
        self as u32
    }
}
