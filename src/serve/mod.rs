//! The cluster's front doors: each serves the same [`crate::cluster::Cluster`] over one wire, translating between
//! the wire's messages and the model. Today the gRPC door ([`grpc`], messages from `proto/`); Apache Fluss's own
//! protocol comes beside it. [`EmbeddedCluster`] runs a cluster behind its doors in this process (tests, `demo`).
//!
//! Layering: `serve` imports `cluster`, `rpc` (the generated messages) and `model`; nothing below imports `serve`.

pub mod grpc;
pub mod server;

pub use server::{EmbeddedCluster, serve};
