//! # fluss-tiering
//!
//! A lake tiering service on timely dataflow. It keeps moving fresh data out of a streaming store (Fluss-style log
//! tables split into buckets with offsets) into lakehouse tables, incrementally, in parallel and exactly once.
//!
//! ```text
//!   producers ──ProduceLog──▶ cluster ◀──heartbeat / ListOffsets / FetchLog / CommitLakeTableSnapshot── tiering job
//!                             (src/cluster)                                                               (dataflows/)
//!                                                                                                            │
//!                                                                                          lake files + snapshot
//!                                                                                                            ▼
//!                                                                                                 lake (src/lake)
//! ```
//!
//! - [`model`]: the vocabulary every layer shares (tables, changes, time, and Fluss's log batch format, which is
//!   also how the cluster stores records), and `model::tiering`: the cluster as the job sees it (`TieringCluster`)
//!   with `LogReader`, the one log-reading loop.
//! - [`cluster`]: the hot store's service core: durable bucket logs, table catalog, and the coordinator that
//!   schedules tables for tiering under fenced epochs.
//! - [`serve`]: the cluster's front doors (gRPC, Apache Fluss's own protocol, and one without a wire for the
//!   tests), standalone or embedded.
//! - [`fluss`]: Apache Fluss's wire protocol: frames, api keys, messages, JSON descriptors.
//! - [`rpc`]: the gRPC wire (`proto/fluss_api.proto`) and its typed client, one of the job's `TieringCluster`s.
//! - [`dataflows`]: the tiering job, one timely graph (enumerator → read+write → commit), in the top-level
//!   `dataflows/` directory.
//! - [`lake`]: the lake formats behind `LakeTieringFactory`; Apache Paimon (the default) and Apache Iceberg.
//! - [`failpoint`]: crash, pause and slow-down points that the tests arm through environment variables.
//! - [`metrics`]: the Prometheus `/metrics` endpoint of the job and of the cluster.
//! - [`workload`]: a deterministic load generator whose rows a checker can recompute.
//! - [`dataset`]: rows from outside it: the TPC-H tables (`tpchgen`) and users' Parquet and CSV files.
//! - [`cli`]: the `fluss-tiering` command.

pub mod cli;
pub mod cluster;
#[path = "../dataflows/mod.rs"]
pub mod dataflows;
pub mod dataset;
pub mod error;
pub mod failpoint;
pub mod fluss;
pub mod lake;
pub mod metrics;
pub mod model;
pub mod rpc;
pub mod serve;
pub mod workload;

pub use error::{Error, ErrorKind, Result};
