//! The vocabulary every layer shares, depending on none of them: tables (paths, ids, descriptors, column types),
//! the changes of a primary-key table, log batches, time, and the record format (Arrow IPC streams). The cluster,
//! the wire, the tiering job and the lakes all speak it; it imports nothing from them.

pub mod bucketing;
pub mod change;
pub mod compacted;
pub mod ipc;
pub mod kv_record;
pub mod log;
pub mod record;
pub mod table;
pub mod tiering;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
