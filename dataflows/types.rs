//! What flows along the tiering graph's edges.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::lake::{BucketOffset, TableBucket, TableContext, TieredSnapshot, WrittenData};

/// Why a split or a round failed, as it crosses workers: the error's kind survives (fenced, retryable or not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The kind's Fluss error code ([`ErrorKind::code`]).
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::from_code(self.code)
    }

    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure { code: kind.code(), message: message.into() }
    }
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Self {
        Failure::new(e.kind(), e.to_string())
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        Error::new(f.kind(), f.message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One contiguous offset range `[start, stop)` of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRange {
    pub bucket: TableBucket,
    pub start: i64,
    pub stop: i64,
}

/// What one worker reads and writes as one lake writer: one bucket's range (or a piece of it), or, for a table whose
/// lake files are not per bucket, several buckets' whole ranges of the round, packed into one file set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Split {
    pub table: TableContext,
    pub tiering_epoch: i64,
    pub round_id: String,
    /// Position of this split in its round, `0..splits`.
    pub index: u32,
    pub partition_name: Option<String>,
    /// The ranges, read in this order (at least one). A bucket of a packed split has no other range in its round.
    pub ranges: Vec<SplitRange>,
    /// A primary-key bucket new to the lake: read this KV snapshot first (the range's `start` is its log offset).
    /// Only a split of one range has one.
    pub snapshot: Option<KvSnapshotRef>,
    /// Wall-clock deadline (ms since the epoch) of the round: past it, the reader stops where it is and the split
    /// ends early (max round duration = the table's freshness).
    pub deadline_ms: i64,
    /// The first range starts where its bucket's round starts: it is read once even past the deadline, so every
    /// round makes progress (a later piece of a cut bucket is not: it would be left behind the gap anyway).
    pub leads: bool,
    /// Routing key: the split goes to worker `route % peers`.
    pub route: u64,
}

pub use crate::model::tiering::KvSnapshotRef;

/// The outcome of one split: files written (not yet visible), or why it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResult {
    pub round_id: String,
    pub index: u32,
    /// The split's ranges.
    pub ranges: Vec<SplitRange>,
    /// The files, and for each range the offset reached: every offset of `[start, reached)` of each range is in them;
    /// `reached < stop` when the round's deadline cut the range short (or came before it).
    pub written: Result<(WrittenData, Vec<i64>), Failure>,
}

/// Everything the committer needs to know about a round besides its write results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundPlan {
    pub table: TableContext,
    pub tiering_epoch: i64,
    pub coordinator_epoch: i32,
    pub round_id: String,
    /// How many write results the round must gather.
    pub splits: u32,
    /// The lake snapshot the splits were computed from; the commit is conditional on it still being the latest.
    pub base: Option<TieredSnapshot>,
    /// The buckets read this round, with the stop offset of each one's last split (and partition names for the
    /// offsets record).
    pub buckets: Vec<BucketOffset>,
    /// The cluster has not recorded `base` (a lake commit whose cluster commit failed, or a snapshot of Fluss's own
    /// tiering service): the commit records it first, as Fluss's missing-snapshot check does.
    pub cluster_behind: bool,
}

/// How a round ended, reported back to the enumerator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundOutcome {
    pub table_id: i64,
    pub round_id: String,
    pub result: Result<RoundStats, Failure>,
}

/// What a committed round added.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundStats {
    /// The round hit its deadline: some buckets were committed short of their stop offsets.
    pub forced: bool,
    pub snapshot_id: Option<i64>,
    pub rows: u64,
    pub files: u64,
    pub file_bytes: u64,
}
