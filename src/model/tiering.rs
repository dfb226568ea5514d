//! The cluster as the tiering job sees it: [`TieringCluster`], the calls the job makes, in the model's terms, and
//! [`LogReader`], the one loop that reads a bucket's log through it. The gRPC client implements it today; a Fluss
//! protocol client and the tests' in-memory clusters can implement it too, and the job cannot tell them apart.
//!
//! Errors keep their kinds across every implementation: `FencedTieringEpoch` / `InvalidCoordinator` (the round's
//! epoch is dead), `Network` / `RequestTimeOut` (retryable), the rest fatal to the call.

use std::sync::Arc;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::log::LogBatch;
use crate::model::table::{TableDescriptor, TablePath};

/// One bucket of one table: `(table id, partition id, bucket)`.
pub type BucketAddr = (i64, Option<i64>, i32);

/// Which round of which table a heartbeat entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEpoch {
    pub table_id: i64,
    pub coordinator_epoch: i32,
    pub tiering_epoch: i64,
}

/// What a tiering job tells the coordinator (Fluss's LakeTieringHeartbeat).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// Tables in progress: their epochs are renewed.
    pub tiering: Vec<TableEpoch>,
    pub finished: Vec<TableEpoch>,
    /// Failed rounds, with the reason.
    pub failed: Vec<(TableEpoch, String)>,
    /// Finished tables whose round was cut short at its deadline (also in `finished`): re-queued at once.
    pub force_finished: Vec<i64>,
    /// Whether the job has room for another table.
    pub request_table: bool,
}

/// A table handed to the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub table_id: i64,
    pub path: TablePath,
    pub tiering_epoch: i64,
}

/// The coordinator's answer about one table of a heartbeat: `None` accepted, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableAnswer {
    pub table_id: i64,
    pub rejection: Option<(ErrorKind, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub coordinator_epoch: i32,
    pub assignment: Option<Assignment>,
    /// One answer per table in progress sent, in the order sent.
    pub tiering: Vec<TableAnswer>,
    pub finished: Vec<TableAnswer>,
    pub failed: Vec<TableAnswer>,
}

/// The tiered end offset of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeBucketOffset {
    pub partition_id: Option<i64>,
    pub bucket: i32,
    pub log_end_offset: i64,
    pub max_timestamp: Option<i64>,
}

/// A table's latest lake snapshot as the cluster records it: its id and every bucket's tiered offset, merged over
/// all rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeSnapshot {
    pub snapshot_id: i64,
    pub buckets: Vec<LakeBucketOffset>,
}

/// A lake snapshot to record with the coordinator, under the round's epochs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeCommit {
    pub table_id: i64,
    pub path: TablePath,
    pub coordinator_epoch: i32,
    pub tiering_epoch: i64,
    pub snapshot: LakeSnapshot,
}

/// A KV snapshot of one bucket, as the cluster serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSnapshotRef {
    pub snapshot_id: i64,
    /// The snapshot holds every change below this offset.
    pub log_offset: i64,
    pub batch_count: i32,
}

/// One fetch's answer: the bucket's bounds and the stored batches from the one holding the offset asked.
#[derive(Debug, Clone)]
pub struct FetchedLog {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Vec<LogBatch>,
}

/// What the tiering job needs of a cluster, and nothing else.
#[async_trait::async_trait]
pub trait TieringCluster: Send + Sync {
    async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse>;

    /// A table's id and descriptor.
    async fn table_info(&self, path: &TablePath) -> Result<(i64, TableDescriptor)>;

    /// Every table: id, path, descriptor.
    async fn tables(&self) -> Result<Vec<(i64, TablePath, TableDescriptor)>>;

    /// A partitioned table's partitions: id and name.
    async fn partitions(&self, path: &TablePath) -> Result<Vec<(i64, String)>>;

    /// The latest (high watermark) or earliest offset of each bucket, one per bucket asked, in that order.
    async fn list_offsets(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        buckets: &[i32],
        latest: bool,
    ) -> Result<Vec<i64>>;

    /// The table's latest lake snapshot as the cluster records it; `None` when there is none.
    async fn lake_snapshot(&self, path: &TablePath) -> Result<Option<LakeSnapshot>>;

    /// The latest KV snapshot of each bucket of a primary-key table (of one partition), by bucket.
    async fn kv_snapshots(
        &self,
        path: &TablePath,
        partition_name: Option<&str>,
    ) -> Result<Vec<(i32, Option<KvSnapshotRef>)>>;

    /// Stored batches from the one holding `offset` on, up to about `max_bytes` (at least one when there is one).
    async fn fetch(&self, bucket: BucketAddr, offset: i64, max_bytes: i32) -> Result<FetchedLog>;

    /// Batch `index` of a KV snapshot, with the snapshot's batch count.
    async fn kv_snapshot_batch(
        &self,
        bucket: BucketAddr,
        snapshot_id: i64,
        index: i32,
    ) -> Result<(Vec<RecordBatch>, i32)>;

    /// Records a lake snapshot; a rejection of the table (fenced epoch, …) is an error of that kind.
    async fn commit_lake_snapshot(&self, commit: &LakeCommit) -> Result<()>;

    /// End offsets of every bucket of a table: `((partition id, bucket), high watermark)`.
    async fn end_offsets(
        &self,
        table_id: i64,
        path: &TablePath,
        descriptor: &TableDescriptor,
    ) -> Result<Vec<((Option<i64>, i32), i64)>> {
        let buckets: Vec<i32> = (0..descriptor.buckets as i32).collect();
        let partitions: Vec<Option<i64>> = match descriptor.is_partitioned() {
            true => self.partitions(path).await?.into_iter().map(|(id, _)| Some(id)).collect(),
            false => vec![None],
        };
        let mut out = Vec::new();
        for p in partitions {
            let ends = self.list_offsets(table_id, p, &buckets, true).await?;
            out.extend(buckets.iter().zip(ends).map(|(b, e)| ((p, *b), e)));
        }
        Ok(out)
    }
}

/// Reads one bucket's log from an offset on, one fetch per [`LogReader::next`]: the one fetch loop of the code base.
/// Every answer is checked to continue exactly where the previous one ended (no gap, progress), and reading stops at
/// `stop` (batches that start at or past it are not returned; the last one may stick out past it).
pub struct LogReader {
    cluster: Arc<dyn TieringCluster>,
    bucket: BucketAddr,
    offset: i64,
    stop: Option<i64>,
    max_bytes: i32,
}

impl LogReader {
    /// A reader of `[from, stop)` (`stop: None`: up to the log's end as it is when reached).
    pub fn new(
        cluster: Arc<dyn TieringCluster>,
        bucket: BucketAddr,
        from: i64,
        stop: Option<i64>,
        max_bytes: i32,
    ) -> Self {
        LogReader { cluster, bucket, offset: from, stop, max_bytes }
    }

    /// The next batches (at least one), or `None` once `stop` is reached (or, without a stop, the log's end). A log
    /// that ends before `stop` is an `OffsetOutOfRange` error.
    pub async fn next(&mut self) -> Result<Option<Vec<LogBatch>>> {
        if self.stop.is_some_and(|stop| self.offset >= stop) {
            return Ok(None);
        }
        let fetched = self.cluster.fetch(self.bucket, self.offset, self.max_bytes).await?;
        let (table_id, partition_id, bucket) = self.bucket;
        if fetched.batches.is_empty() {
            return match self.stop {
                None => Ok(None),
                Some(stop) => Err(Error::new(
                    ErrorKind::OffsetOutOfRange,
                    format!(
                        "bucket {bucket} of table {table_id} ends at {} before the stop offset {stop}",
                        fetched.high_watermark
                    ),
                )),
            };
        }
        let mut expected = self.offset;
        let mut out = Vec::with_capacity(fetched.batches.len());
        let corrupt = |what: String| {
            Error::new(
                ErrorKind::CorruptMessage,
                format!("bucket {bucket} (partition {partition_id:?}) of table {table_id}: {what}"),
            )
        };
        for batch in fetched.batches {
            // Contiguity first: a batch past the expected offset is a gap even when it also lies past the stop.
            if batch.base_offset > expected {
                return Err(Error::new(
                    ErrorKind::OffsetOutOfRange,
                    format!(
                        "bucket {bucket} (partition {partition_id:?}) of table {table_id}: the cluster returned a \
                         batch at offset {} where offset {expected} was expected (a gap)",
                        batch.base_offset
                    ),
                ));
            }
            if expected >= self.stop.unwrap_or(i64::MAX) {
                break;
            }
            expected = match batch.end_offset() {
                Some(end) if end > expected => end,
                _ => return Err(corrupt(format!("a batch at offset {} makes no progress", batch.base_offset))),
            };
            out.push(batch);
        }
        self.offset = expected;
        Ok(Some(out))
    }
}
