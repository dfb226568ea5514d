//! A bucket's log as readers see it: batches of records at offsets.

use arrow::array::RecordBatch;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::model::record::LogRecordBatch;
use crate::model::table::TableDescriptor;

/// One batch of a bucket's log, as stored: `records` is one Fluss log batch ([`crate::model::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    /// The offset of the batch's first record.
    pub base_offset: i64,
    /// The offsets the batch takes (its records; a batch of none still takes one).
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

    /// The batch's rows as `descriptor`'s table reads them ([`LogRecordBatch::read`]); its header must place it
    /// where the log said it is.
    pub fn read(&self, descriptor: &TableDescriptor) -> Result<RecordBatch> {
        let batch = LogRecordBatch::parse(self.records.clone())?;
        let header = batch.header();
        if header.base_offset != self.base_offset || header.offset_span() != self.record_count {
            return Err(Error::new(
                ErrorKind::CorruptRecord,
                format!(
                    "the batch listed at offset {} with {} offsets holds offsets {} + {}",
                    self.base_offset,
                    self.record_count,
                    header.base_offset,
                    header.offset_span()
                ),
            ));
        }
        batch.read(descriptor)
    }
}
