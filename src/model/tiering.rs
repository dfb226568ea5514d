//! The cluster as the tiering job sees it: [`TieringCluster`], the calls the job makes, in the model's terms, and
//! [`LogReader`], the one loop that reads a bucket's log through it. Three implementations, which the job cannot
//! tell apart: the gRPC client (`rpc`), the Fluss-protocol client (`fluss::transport`) and the door without a wire
//! (`serve::local`, the cluster of this process, which the tests wrap to inject faults).
//!
//! Errors keep their kinds across every implementation: `FencedTieringEpoch` / `InvalidCoordinator` (the round's
//! epoch is dead), `Network` / `RequestTimeOut` (retryable), the rest fatal to the call.

use std::sync::Arc;
use std::time::Duration;

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

impl LakeBucketOffset {
    /// A bucket offset as a request carries it, on either wire: `log_end_offset` is optional in Fluss's messages but
    /// an offset without it says nothing.
    pub fn from_request(
        partition_id: Option<i64>,
        bucket: i32,
        log_end_offset: Option<i64>,
        max_timestamp: Option<i64>,
    ) -> Result<Self> {
        let log_end_offset = log_end_offset.ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, format!("bucket {bucket}'s offset has no log_end_offset"))
        })?;
        Ok(LakeBucketOffset { partition_id, bucket, log_end_offset, max_timestamp })
    }
}

/// A table's latest lake snapshot as the cluster records it: its id and every bucket's tiered offset, merged over
/// all rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeSnapshot {
    pub snapshot_id: i64,
    pub buckets: Vec<LakeBucketOffset>,
}

/// Fluss's lake offsets file (`TableBucketOffsetsJsonSerde`), what PrepareLakeTableSnapshot writes and a lake
/// snapshot's `fluss-offsets` property names: every bucket's tiered end offset, the array index being the bucket
/// (-1: unknown); a partitioned table's per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetsFile {
    pub version: i32,
    pub table_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_offsets: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_offsets: Option<Vec<PartitionOffsets>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub partition_id: i64,
    pub bucket_offsets: Vec<i64>,
}

impl OffsetsFile {
    /// The file of `buckets` (all of one table; `partitioned` picks the layout).
    pub fn new(table_id: i64, partitioned: bool, buckets: &[LakeBucketOffset]) -> Result<Self> {
        let array = |of: &mut dyn Iterator<Item = &LakeBucketOffset>| -> Result<Vec<i64>> {
            let mut out = Vec::new();
            for b in of {
                let i = usize::try_from(b.bucket)
                    .map_err(|_| Error::new(ErrorKind::InvalidArgument, format!("bucket {} is negative", b.bucket)))?;
                if out.len() <= i {
                    out.resize(i + 1, -1);
                }
                out[i] = b.log_end_offset;
            }
            Ok(out)
        };
        if !partitioned {
            if buckets.iter().any(|b| b.partition_id.is_some()) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "a partition's offsets for a table without partitions",
                ));
            }
            let offsets = array(&mut buckets.iter())?;
            return Ok(OffsetsFile { version: 1, table_id, bucket_offsets: Some(offsets), partition_offsets: None });
        }
        let mut ids: Vec<i64> = buckets.iter().filter_map(|b| b.partition_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if buckets.iter().any(|b| b.partition_id.is_none()) {
            return Err(Error::new(ErrorKind::InvalidArgument, "a partitioned table's offsets need their partition"));
        }
        let partitions = ids
            .into_iter()
            .map(|p| {
                let offsets = array(&mut buckets.iter().filter(|b| b.partition_id == Some(p)))?;
                Ok(PartitionOffsets { partition_id: p, bucket_offsets: offsets })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OffsetsFile { version: 1, table_id, bucket_offsets: None, partition_offsets: Some(partitions) })
    }

    /// The known offsets (-1 entries left out), or why the file is not one Fluss writes: another version, both
    /// layouts at once, a partition listed twice, an offset below -1, more buckets than an `i32` counts.
    pub fn buckets(&self) -> Result<Vec<LakeBucketOffset>> {
        let bad = |why: String| {
            Error::new(ErrorKind::InvalidArgument, format!("offsets file of table {}: {why}", self.table_id))
        };
        if self.version != 1 {
            return Err(bad(format!("version {} (this job reads version 1)", self.version)));
        }
        match (&self.bucket_offsets, &self.partition_offsets) {
            (Some(_), Some(_)) => return Err(bad("it holds both bucket_offsets and partition_offsets".into())),
            // Read as nothing tiered, it would plan a table's rows again from offset 0.
            (None, None) => return Err(bad("it holds neither bucket_offsets nor partition_offsets".into())),
            _ => {}
        }
        let of = |partition_id: Option<i64>, offsets: &[i64], out: &mut Vec<LakeBucketOffset>| -> Result<()> {
            for (b, &o) in offsets.iter().enumerate() {
                if o < -1 {
                    return Err(bad(format!("bucket {b} has offset {o}")));
                }
                let bucket = i32::try_from(b).map_err(|_| bad(format!("{} buckets", offsets.len())))?;
                if o >= 0 {
                    out.push(LakeBucketOffset { partition_id, bucket, log_end_offset: o, max_timestamp: None });
                }
            }
            Ok(())
        };
        let mut out = Vec::new();
        of(None, self.bucket_offsets.as_deref().unwrap_or_default(), &mut out)?;
        let mut seen = std::collections::BTreeSet::new();
        for p in self.partition_offsets.iter().flatten() {
            if !seen.insert(p.partition_id) {
                return Err(bad(format!("partition {} is listed twice", p.partition_id)));
            }
            of(Some(p.partition_id), &p.bucket_offsets, &mut out)?;
        }
        Ok(out)
    }
}

/// A lake snapshot to record with the coordinator, under the round's epochs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeCommit {
    pub table_id: i64,
    pub path: TablePath,
    pub coordinator_epoch: i32,
    pub tiering_epoch: i64,
    pub snapshot: LakeSnapshot,
    /// The offsets file holding the snapshot's offsets, which [`TieringCluster::prepare_lake_offsets`] wrote and the
    /// lake snapshot names.
    pub offsets_file: String,
}

/// A KV snapshot of one bucket, as the cluster serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSnapshotRef {
    pub snapshot_id: i64,
    /// The snapshot holds every change below this offset.
    pub log_offset: i64,
    pub batch_count: i32,
    /// Held in the memory of the process that planned the round (a scan the transport made then), so its split must
    /// be read there: on worker 0, where the enumerator plans.
    #[serde(default)]
    pub held_by_planner: bool,
}

/// Where a table stands with the coordinator: what a waiting job reports, and what `schedule` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchedule {
    pub table_id: i64,
    pub path: TablePath,
    /// The coordinator's name for the state: scheduled, pending, tiering, … (`disabled`: not a lake table).
    pub state: String,
    /// A scheduled table: how long until it is handed out.
    pub due_in: Option<Duration>,
    /// Whether the table ever received a record (one that never did is not handed out).
    pub has_data: bool,
    /// Why its last round failed, while it waits to be retried.
    pub last_error: Option<String>,
}

impl TableSchedule {
    /// One line a person reads: the state and, when it waits, what for.
    pub fn describe(&self) -> String {
        let path = &self.path;
        match (self.state.as_str(), self.due_in) {
            ("disabled", _) => format!("{path}: not tiered (table.datalake.enabled is false)"),
            ("scheduled", _) if !self.has_data => format!("{path}: scheduled, has no data yet"),
            ("scheduled", Some(due)) => match &self.last_error {
                Some(e) => format!("{path}: last round failed ({e}); retried in {}", human(due)),
                None => format!("{path}: scheduled, due in {} (its freshness)", human(due)),
            },
            ("pending", _) => format!("{path}: pending, to be handed to the next job with room"),
            ("tiering", _) => format!("{path}: being tiered"),
            (state, _) => format!("{path}: {state}"),
        }
    }
}

/// A duration as people say it: `850ms`, `4.2s`, `2m55s`, `1h05m`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// One fetch's answer: the bucket's bounds and the stored batches from the one holding the offset asked.
#[derive(Debug, Clone)]
pub struct FetchedLog {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Vec<LogBatch>,
}

/// One bucket's part of a multi-bucket fetch: where to read from and the most bytes this bucket may bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchAsk {
    pub bucket: BucketAddr,
    pub offset: i64,
    pub max_bytes: i32,
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

    /// A KV snapshot of each of `buckets` of a primary-key table (of one partition), by bucket: the rows as of a
    /// log offset, read with [`TieringCluster::kv_snapshot_batch`]. Asked only for buckets new to the lake.
    async fn kv_snapshots(
        &self,
        path: &TablePath,
        partition_name: Option<&str>,
        buckets: &[i32],
    ) -> Result<Vec<(i32, Option<KvSnapshotRef>)>>;

    /// Stored batches from the one holding `offset` on, up to about `max_bytes` (at least one when there is one).
    async fn fetch(&self, bucket: BucketAddr, offset: i64, max_bytes: i32) -> Result<FetchedLog>;

    /// Many buckets in one request, as Fluss's FetchLog allows: one answer per ask, in order, each bucket's error
    /// its own (the asks name distinct buckets). The server fills the response in an order of its own until about
    /// `max_bytes` are in it (per server, for a client that asks several at once); the first bucket it serves with
    /// data gets at least one batch, so a bucket answered empty below its high watermark was left for the next
    /// request. The default fetches each bucket alone, all at once ([`fetch_each`]).
    async fn fetch_many(&self, asks: &[FetchAsk], max_bytes: i32) -> Result<Vec<Result<FetchedLog>>> {
        let _ = max_bytes;
        Ok(fetch_each(self, asks).await)
    }

    /// Batch `index` of a KV snapshot, with the snapshot's batch count.
    async fn kv_snapshot_batch(
        &self,
        bucket: BucketAddr,
        snapshot_id: i64,
        index: i32,
    ) -> Result<(Vec<RecordBatch>, i32)>;

    /// Records a lake snapshot; a rejection of the table (fenced epoch, …) is an error of that kind.
    async fn commit_lake_snapshot(&self, commit: &LakeCommit) -> Result<()>;
    /// Fluss's PrepareLakeTableSnapshot: the cluster writes `offsets` (every bucket the table ever tiered: the
    /// cluster's own previous offsets are ignored, so a cluster behind the lake cannot leak stale ones into the file)
    /// to an offsets file and names it. Nothing is recorded until a commit names the file.
    async fn prepare_lake_offsets(
        &self,
        table_id: i64,
        path: &TablePath,
        offsets: &[LakeBucketOffset],
    ) -> Result<String>;

    /// Where each table stands with the coordinator, so that a job with nothing to do can say what it waits for.
    /// Fluss's protocol has no such request: a cluster that cannot answer says `Unsupported`.
    async fn schedules(&self) -> Result<Vec<TableSchedule>> {
        Err(Error::new(ErrorKind::Unsupported, "this cluster does not say when its tables are due"))
    }

    /// Makes `tables` (every lake table when empty) due now instead of at their freshness: an administrative
    /// request of this project's coordinator (`tier --now`, `schedule`) that Fluss's protocol does not have.
    async fn schedule_now(&self, tables: &[TablePath]) -> Result<Vec<TableSchedule>> {
        let _ = tables;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this cluster cannot be asked to tier a table now (Apache Fluss's protocol has no such request; the \
             cluster's gRPC door, http://, has): its tables are tiered at their freshness",
        ))
    }

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

/// One entry of a ListOffsets answer: `(bucket, error code, error message, offset)`.
pub type OffsetAnswer = (i32, Option<i32>, Option<String>, Option<i64>);

/// A ListOffsets answer's entries, checked the same for every wire:
/// one answer per bucket asked, in the order asked (a short or reordered answer would shift every offset after it),
/// each an offset or an error.
pub fn offsets_in_order(table_id: i64, asked: &[i32], answers: Vec<OffsetAnswer>) -> Result<Vec<i64>> {
    let answered: Vec<i32> = answers.iter().map(|(bucket, ..)| *bucket).collect();
    if answered != asked {
        return Err(Error::new(
            ErrorKind::CorruptMessage,
            format!("ListOffsets of table {table_id}: asked for buckets {asked:?}, the answer is for {answered:?}"),
        ));
    }
    answers
        .into_iter()
        .map(|(bucket, code, message, offset)| match (code, offset) {
            (Some(code), _) if code != 0 => Err(Error::from_code(code, message)),
            (_, Some(offset)) => Ok(offset),
            _ => Err(Error::new(
                ErrorKind::CorruptMessage,
                format!("ListOffsets of table {table_id}: bucket {bucket} has neither an offset nor an error"),
            )),
        })
        .collect()
}

/// Each ask fetched alone, all at once: [`TieringCluster::fetch_many`] for a cluster without it.
pub async fn fetch_each<C: TieringCluster + ?Sized>(cluster: &C, asks: &[FetchAsk]) -> Vec<Result<FetchedLog>> {
    futures::future::join_all(asks.iter().map(|ask| cluster.fetch(ask.bucket, ask.offset, ask.max_bytes))).await
}

/// A bucket answered empty below its high watermark when no other bucket took the request's bytes: its rows are
/// where this job does not read them (Fluss's remote log storage, or only in the lake), or the server is wrong.
pub fn nothing_read(ask: &FetchAsk, high_watermark: i64) -> Error {
    let (table_id, partition_id, bucket) = ask.bucket;
    Error::new(
        ErrorKind::OffsetOutOfRange,
        format!(
            "bucket {bucket} (partition {partition_id:?}) of table {table_id} answered nothing at offset {} below \
             its high watermark {high_watermark}: rows that only remote log storage or the lake holds are not read \
             by this job",
            ask.offset
        ),
    )
}

/// A multi-bucket fetch's answers, checked before they go to their readers: one per ask (a cluster that answered
/// fewer is wrong), and, when the request brought no batch at all and so spent none of its bytes, an answer empty
/// below its bucket's high watermark is no turn left for the next request but rows this job cannot read: an error
/// (asking again would ask for ever).
pub fn answers_checked(asks: &[FetchAsk], mut answers: Vec<Result<FetchedLog>>) -> Result<Vec<Result<FetchedLog>>> {
    if answers.len() != asks.len() {
        return Err(Error::new(
            ErrorKind::CorruptMessage,
            format!("a fetch of {} buckets got {} answers", asks.len(), answers.len()),
        ));
    }
    if answers.iter().any(|a| a.as_ref().is_ok_and(|log| !log.batches.is_empty())) {
        return Ok(answers);
    }
    for (answer, ask) in answers.iter_mut().zip(asks) {
        if let Ok(log) = answer
            && log.high_watermark > ask.offset
        {
            *answer = Err(nothing_read(ask, log.high_watermark));
        }
    }
    Ok(answers)
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
        let Some(ask) = self.ask() else { return Ok(None) };
        let fetched = self.cluster.fetch(ask.bucket, ask.offset, ask.max_bytes).await?;
        let high_watermark = fetched.high_watermark;
        match self.take(fetched)? {
            // A fetch of this bucket alone has no other bucket to spend its bytes on.
            Some(batches) if batches.is_empty() => Err(nothing_read(&ask, high_watermark)),
            other => Ok(other),
        }
    }

    /// The fetch that reads on, or `None` once `stop` is reached; its answer goes to [`LogReader::take`]. For a
    /// caller that fetches many buckets in one request ([`TieringCluster::fetch_many`]).
    pub fn ask(&self) -> Option<FetchAsk> {
        self.stop.is_none_or(|stop| self.offset < stop).then_some(FetchAsk {
            bucket: self.bucket,
            offset: self.offset,
            max_bytes: self.max_bytes,
        })
    }

    /// Reads the answer to [`LogReader::ask`]: the batches that continue the log (`Some` of none when the answer is
    /// empty below the bucket's high watermark: a multi-bucket fetch spent its bytes on other buckets), or `None` at
    /// the log's end without a stop. A log that ends before `stop` is an `OffsetOutOfRange` error.
    pub fn take(&mut self, fetched: FetchedLog) -> Result<Option<Vec<LogBatch>>> {
        let (table_id, partition_id, bucket) = self.bucket;
        if fetched.batches.is_empty() {
            if fetched.high_watermark > self.offset {
                return Ok(Some(Vec::new()));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let cases = [(850, "850ms"), (4_200, "4.2s"), (175_000, "2m55s"), (3_900_000, "1h05m")];
        for (ms, text) in cases {
            assert_eq!(human(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn a_table_that_waits_says_for_what() {
        let mut t = TableSchedule {
            table_id: 1,
            path: "db.t".parse().expect("path"),
            state: "scheduled".into(),
            due_in: Some(Duration::from_secs(90)),
            has_data: false,
            last_error: None,
        };
        assert_eq!(t.describe(), "db.t: scheduled, has no data yet");
        t.has_data = true;
        assert_eq!(t.describe(), "db.t: scheduled, due in 1m30s (its freshness)");
        t.last_error = Some("lake down".into());
        assert_eq!(t.describe(), "db.t: last round failed (lake down); retried in 1m30s");
    }

    #[test]
    fn offsets_files_are_fluss_json() {
        let at = |partition_id, bucket, log_end_offset| LakeBucketOffset {
            partition_id,
            bucket,
            log_end_offset,
            max_timestamp: None,
        };
        let plain = OffsetsFile::new(7, false, &[at(None, 0, 10), at(None, 2, 5)]).expect("file");
        assert_eq!(
            serde_json::to_string(&plain).expect("json"),
            r#"{"version":1,"table_id":7,"bucket_offsets":[10,-1,5]}"#
        );
        assert_eq!(plain.buckets().expect("valid"), vec![at(None, 0, 10), at(None, 2, 5)]);
        let parts = OffsetsFile::new(7, true, &[at(Some(3), 1, 4), at(Some(1), 0, 2)]).expect("file");
        assert_eq!(
            serde_json::to_string(&parts).expect("json"),
            r#"{"version":1,"table_id":7,"partition_offsets":[{"partition_id":1,"bucket_offsets":[2]},{"partition_id":3,"bucket_offsets":[-1,4]}]}"#
        );
        assert_eq!(parts.buckets().expect("valid"), vec![at(Some(1), 0, 2), at(Some(3), 1, 4)]);
        assert!(OffsetsFile::new(7, false, &[at(Some(1), 0, 2)]).is_err());
        // What Fluss never writes is refused, not half read.
        for json in [
            r#"{"version":2,"table_id":7,"bucket_offsets":[1]}"#,
            r#"{"version":1,"table_id":7,"bucket_offsets":[-2]}"#,
            r#"{"version":1,"table_id":7,"bucket_offsets":[1],"partition_offsets":[]}"#,
            r#"{"version":1,"table_id":7}"#,
            r#"{"version":1,"table_id":7,"partition_offsets":[{"partition_id":1,"bucket_offsets":[1]},{"partition_id":1,"bucket_offsets":[2]}]}"#,
        ] {
            let file: OffsetsFile = serde_json::from_str(json).expect("parses");
            assert!(file.buckets().is_err(), "{json} is refused");
        }
    }
}
