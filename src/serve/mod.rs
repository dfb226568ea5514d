//! The cluster's front doors: each serves the same [`crate::cluster::Cluster`] over one wire, translating between
//! the wire's messages and the model: the gRPC door ([`grpc`], messages from `proto/`) and Apache Fluss's own
//! protocol ([`fluss`], messages from `crate::fluss`); and the door without a wire ([`local`]), the cluster of this
//! process as the tiering job's `TieringCluster`, which the tests' fault injectors wrap. [`EmbeddedCluster`] runs a
//! cluster behind its wire doors in this process (tests, `demo`).
//!
//! Layering: `serve` imports `cluster`, `rpc` and `fluss` (the wires) and `model`; nothing below imports `serve`.

pub mod fluss;
pub mod grpc;
pub mod kv_scan;
pub mod local;
pub mod server;

pub use local::LocalDoor;
pub use server::{EmbeddedCluster, serve};
