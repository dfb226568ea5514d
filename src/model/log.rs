//! A bucket's log as readers see it: batches of records at offsets.

use bytes::Bytes;

/// One batch of a bucket's log, as stored: `records` is the Arrow IPC stream its producer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    /// The offset of the batch's first record.
    pub base_offset: i64,
    pub record_count: i64,
    /// When the cluster appended it (ms since the epoch).
    pub append_timestamp: i64,
    pub records: Bytes,
}

impl LogBatch {
    /// The offset after the batch's last record; `None` if it overflows (a corrupt answer).
    pub fn end_offset(&self) -> Option<i64> {
        self.base_offset.checked_add(self.record_count)
    }
}
