//! The lake side, behind one plug-in interface (Fluss's `LakeTieringFactory`): a format is a factory that makes
//! writers (every worker, one per split) and a committer (one worker, once per round).
//!
//! ```text
//!   split ──▶ LakeWriter::write(batch with system columns)… ──complete──▶ WrittenData (serialized, crosses workers)
//!                                                                              │ all of a round
//!                                                                              ▼
//!                          LakeCommitter::commit(written, CommitMarker) ──▶ one lake snapshot, marker inside
//! ```
//!
//! The marker in each snapshot (round id, tiering epoch, tiered offsets) makes the lake the source of truth: a
//! restarted job reads its offsets back from the lake alone. Every format's `commit` runs the one driver,
//! [`outcome::drive`] (check the base → prepare → publish → find its own round → decide); a format supplies the
//! steps ([`outcome::CommitSteps`]), so a third format is one module that answers them.
//!
//! Where a lake lives is a value ([`Warehouse`]: a local directory or `s3://BUCKET/PREFIX`), and the lakes' file
//! work goes through its [`Store`] (one opendal operator): Iceberg's FileIO and our markers, claims, sweep and
//! repairs; Paimon's own FileIO (its data, manifests, snapshots) is built by its catalog from the same settings.
//! No `std::fs` here.
//!
//! Layering: the lakes see `crate::model` and the shared helpers (`crate::error`, `crate::failpoint`) only; never
//! the cluster, its doors, a wire or the job (checked by `.ci/run`, as is the absence of `std::fs`).

pub mod iceberg;
pub mod outcome;
pub mod paimon;
pub mod store;
pub mod sweep;

pub use store::{S3Settings, Store, Warehouse};

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::table::{TableDescriptor, TablePath, align_columns};
use crate::model::tiering::OffsetsFile;

/// System column: the Fluss bucket a row came from.
pub const BUCKET_COLUMN: &str = "__bucket";
/// The longest lake time-out a job may have, and so the longest lease of a Paimon commit claim: a claim file its
/// writer left torn is free once older than this, whatever lease that writer meant to take.
pub const MAX_LAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// System column: the row's offset in its bucket.
pub const OFFSET_COLUMN: &str = "__offset";
/// System column: when the row's batch was appended to the cluster.
pub const TIMESTAMP_COLUMN: &str = "__timestamp";

/// Snapshot property naming the cluster's offsets file of the snapshot (Fluss's
/// `LakeCommitter.FLUSS_LAKE_SNAP_BUCKET_OFFSET_PROPERTY`; snapshots of earlier versions hold the offsets inline or
/// name a file of the lake's own).
pub const PROP_OFFSETS: &str = "fluss-offsets";
/// Snapshot property naming who committed (Iceberg; Paimon has a commit user of its own).
pub const PROP_COMMIT_USER: &str = "commit-user";
/// The commit user of Fluss's own tiering service: a snapshot of it that carries no round of ours was written by
/// Fluss's (Flink) tiering job, and is read as a tiered snapshot all the same.
pub const FLUSS_COMMIT_USER: &str = "__fluss_lake_tiering";
/// Snapshot property holding the tiering epoch of the round.
pub const PROP_TIERING_EPOCH: &str = "fluss-tiering-epoch";
/// Snapshot property naming the round (unique per job, table and round).
pub const PROP_ROUND: &str = "fluss-round-id";
/// Snapshot property holding the Fluss table id.
pub const PROP_TABLE_ID: &str = "fluss-table-id";
/// Table property naming the Fluss table a lake table belongs to.
pub const TABLE_PROP_TABLE_ID: &str = "fluss.table-id";

/// One bucket of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableBucket {
    pub partition_id: Option<i64>,
    pub bucket: i32,
}

/// The tiered end offset of one bucket. (No `skip_serializing_if` here or in anything that crosses workers: timely
/// exchanges data with bincode, which is not self-describing.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketOffset {
    #[serde(default)]
    pub partition_id: Option<i64>,
    #[serde(default)]
    pub partition_name: Option<String>,
    pub bucket: i32,
    /// Every offset below this one is in the lake.
    pub offset: i64,
}

/// What a tiering snapshot says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMarker {
    /// Empty for a snapshot of Fluss's own tiering service, which has no rounds of ours.
    pub round_id: String,
    pub table_id: i64,
    /// 0 for a snapshot of Fluss's own tiering service.
    pub tiering_epoch: i64,
    /// All buckets ever tiered, merged over rounds.
    pub offsets: Vec<BucketOffset>,
    /// The cluster's offsets file holding `offsets`, which PrepareLakeTableSnapshot wrote (Fluss 0.9's contract) and
    /// the snapshot names as `fluss-offsets`; a commit needs one. `None` for snapshots of earlier versions, whose
    /// offsets are inline or in a file of the lake's own.
    #[serde(default)]
    pub offsets_file: Option<String>,
}

impl CommitMarker {
    /// The offsets as a map.
    pub fn offset_map(&self) -> BTreeMap<TableBucket, i64> {
        self.offsets
            .iter()
            .map(|b| (TableBucket { partition_id: b.partition_id, bucket: b.bucket }, b.offset))
            .collect()
    }

    /// The offsets file a commit names; an error when the marker was never prepared with the cluster.
    pub fn prepared_file(&self) -> Result<&str> {
        self.offsets_file.as_deref().ok_or_else(|| {
            Error::new(ErrorKind::Internal, format!("round {}: no offsets file was prepared", self.round_id))
        })
    }

    /// The snapshot properties that carry this marker: Fluss's (the offsets file, the commit user) and ours (round,
    /// epoch, table). The offsets stay in the file, so a snapshot's metadata is the same size however many buckets.
    pub fn to_properties(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![
            (PROP_OFFSETS.to_string(), self.prepared_file()?.to_string()),
            (PROP_COMMIT_USER.to_string(), FLUSS_COMMIT_USER.to_string()),
            (PROP_TIERING_EPOCH.to_string(), self.tiering_epoch.to_string()),
            (PROP_ROUND.to_string(), self.round_id.clone()),
            (PROP_TABLE_ID.to_string(), self.table_id.to_string()),
        ])
    }

    /// Reads a marker back from snapshot properties, its offsets still to load from the file named; `None` when the
    /// snapshot was not made by tiering (ours or Fluss's).
    pub fn from_properties(get: impl Fn(&str) -> Option<String>) -> Result<Option<(Self, OffsetsRef)>> {
        let Some(offsets) = get(PROP_OFFSETS) else {
            return Ok(None);
        };
        let bad = |what: &str| Error::new(ErrorKind::Lake, format!("snapshot property {what} is malformed"));
        // Snapshots of earlier versions carry the offsets inline (a JSON array).
        let offsets = match offsets.trim_start().starts_with('[') {
            true => OffsetsRef::Inline(Self::parse_offsets(&offsets).map_err(|e| bad(PROP_OFFSETS).with_source(e))?),
            false => OffsetsRef::File(offsets),
        };
        let fluss_authored = get(PROP_ROUND).is_none() && get(PROP_COMMIT_USER).as_deref() == Some(FLUSS_COMMIT_USER);
        if fluss_authored {
            let OffsetsRef::File(_) = offsets else {
                return Err(Error::new(
                    ErrorKind::Lake,
                    "a snapshot of Fluss's tiering service holds its offsets inline (Fluss 0.8): they cannot be \
                     recovered (as in Fluss; tier it once more with Fluss 0.9 or later)",
                ));
            };
            // The table id comes from the offsets file.
            return Ok(Some((CommitMarker::fluss_authored(), offsets)));
        }
        let tiering_epoch =
            get(PROP_TIERING_EPOCH).and_then(|v| v.parse().ok()).ok_or_else(|| bad(PROP_TIERING_EPOCH))?;
        let table_id = get(PROP_TABLE_ID).and_then(|v| v.parse().ok()).ok_or_else(|| bad(PROP_TABLE_ID))?;
        let round_id = get(PROP_ROUND).ok_or_else(|| bad(PROP_ROUND))?;
        Ok(Some((CommitMarker { round_id, table_id, tiering_epoch, offsets: Vec::new(), offsets_file: None }, offsets)))
    }

    /// The marker of a snapshot of Fluss's own tiering service, before its offsets file is read.
    fn fluss_authored() -> Self {
        CommitMarker {
            round_id: String::new(),
            table_id: -1,
            tiering_epoch: 0,
            offsets: Vec::new(),
            offsets_file: None,
        }
    }

    /// Loads the offsets of a marker read by [`CommitMarker::from_properties`] from the bytes of its offsets file
    /// (`path`): a cluster's file (Fluss's JSON), which the marker then names, or one of the lake's own (earlier
    /// versions: a JSON array of [`BucketOffset`]).
    pub fn load_offsets_file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let malformed = |e: serde_json::Error| {
            Error::new(ErrorKind::Lake, format!("offsets file {path} is malformed")).with_source(e)
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::new(ErrorKind::Lake, format!("offsets file {path} is not UTF-8")).with_source(e))?;
        if text.trim_start().starts_with('[') {
            if self.table_id == -1 {
                // Only earlier versions of this job wrote arrays, and a Fluss-authored snapshot names Fluss's JSON.
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!("offsets file {path} of a snapshot of Fluss's tiering service is not Fluss's JSON"),
                ));
            }
            self.offsets = Self::parse_offsets(text).map_err(malformed)?;
            return Ok(());
        }
        let file: OffsetsFile = serde_json::from_str(text).map_err(malformed)?;
        if self.table_id == -1 {
            self.table_id = file.table_id;
        } else if file.table_id != self.table_id {
            return Err(Error::new(
                ErrorKind::Lake,
                format!("offsets file {path} is table {}'s, the snapshot table {}'s", file.table_id, self.table_id),
            ));
        }
        self.offsets = file
            .buckets()
            .map_err(|e| Error::new(ErrorKind::Lake, format!("offsets file {path}: {e}")))?
            .into_iter()
            .map(|b| BucketOffset {
                partition_id: b.partition_id,
                partition_name: None,
                bucket: b.bucket,
                offset: b.log_end_offset,
            })
            .collect();
        self.offsets_file = Some(path.to_string());
        Ok(())
    }

    /// Parses offsets stored inline or in a file of the lake's own: a JSON array of [`BucketOffset`].
    pub fn parse_offsets(json: &str) -> std::result::Result<Vec<BucketOffset>, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// Where a snapshot's offsets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRef {
    Inline(Vec<BucketOffset>),
    /// The path of an offsets file.
    File(String),
}

/// The latest snapshot made by tiering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieredSnapshot {
    pub snapshot_id: i64,
    /// When the snapshot was committed (ms since the epoch, the lake's own record): from then on its rows are visible.
    pub committed_at_ms: i64,
    pub marker: CommitMarker,
}

/// The Fluss table a lake operation is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableContext {
    pub table_id: i64,
    pub path: TablePath,
    pub descriptor: TableDescriptor,
}

/// Where one writer writes.
#[derive(Debug, Clone)]
pub struct WriterContext {
    pub partition_name: Option<String>,
    pub bucket: i32,
    /// Unique per writer (worker, round, split): parallel writers never collide on file names.
    pub file_prefix: String,
}

/// What a writer produced: a format-specific payload (serialized, so it can cross workers) and its stats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenData {
    pub payload: Vec<u8>,
    pub files: u64,
    pub file_bytes: u64,
    pub rows: u64,
}

/// Options every format understands.
#[derive(Debug, Clone)]
pub struct LakeOptions {
    /// A writer rolls to a new file once the current one reaches this size.
    pub target_file_size: usize,
    /// How long one lake commit may take before its outcome counts as unknown.
    pub commit_timeout: std::time::Duration,
}

impl Default for LakeOptions {
    fn default() -> Self {
        LakeOptions { target_file_size: 128 << 20, commit_timeout: std::time::Duration::from_secs(60) }
    }
}

/// A lake format.
#[async_trait]
pub trait LakeTieringFactory: Send + Sync + 'static {
    /// Makes the lake table ready for a round (creating it on first tiering, checking it belongs to this Fluss
    /// table) and returns its latest tiered snapshot.
    async fn prepare_table(&self, table: &TableContext) -> Result<Option<TieredSnapshot>>;
    /// A writer for one split.
    async fn create_writer(&self, table: &TableContext, ctx: WriterContext) -> Result<Box<dyn LakeWriter>>;
    /// The committer of a table.
    async fn create_committer(&self, table: &TableContext) -> Result<Box<dyn LakeCommitter>>;
    /// Whether one writer may take rows of several buckets of `table` (its lake files are not per bucket), so a
    /// round may pack small ranges of many buckets into one split.
    fn files_span_buckets(&self, table: &TableContext) -> bool {
        let _ = table;
        false
    }
}

/// Writes the rows of one split into lake files; nothing is visible until a committer commits them.
#[async_trait]
pub trait LakeWriter: Send {
    /// Writes rows that carry the system columns.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;
    /// Closes the files and describes them.
    async fn complete(self: Box<Self>) -> Result<WrittenData>;
    /// Closes and deletes the files written so far: the split failed and they will never be committed.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Commits a round's files atomically, once.
#[async_trait]
pub trait LakeCommitter: Send + Sync {
    /// The snapshots made by tiering among the current snapshot and its ancestors, newest first, markers loaded;
    /// with `first_only`, the walk stops at the first one. Fails closed when the history is cut before the walk ends
    /// (the offsets cannot be recovered from a partial history).
    async fn tiered_ancestry(&self, first_only: bool) -> Result<Vec<TieredSnapshot>>;
    /// The latest snapshot made by tiering.
    async fn latest(&self) -> Result<Option<TieredSnapshot>> {
        Ok(self.tiered_ancestry(true).await?.into_iter().next())
    }
    /// Every snapshot made by tiering, oldest first (for measuring freshness).
    async fn history(&self) -> Result<Vec<TieredSnapshot>> {
        let mut newest_first = self.tiered_ancestry(false).await?;
        newest_first.reverse();
        Ok(newest_first)
    }
    /// Commits the files in one snapshot carrying `marker`, if and only if the table's latest tiering snapshot is
    /// still `base` and nothing was committed since (no retry that rebases onto a table that moved). After an
    /// ambiguous failure it looks for `marker` before answering. Returns the snapshot id. Errors: the table moved
    /// (`FencedTieringEpoch`, nothing committed), or `CommitOutcomeUnknown` (the files may be live: keep them).
    async fn commit(&self, written: Vec<WrittenData>, marker: &CommitMarker, base: Option<i64>) -> Result<i64>;
    /// Deletes files that will never be committed.
    async fn abort(&self, written: Vec<WrittenData>) -> Result<()>;
    /// Deletes the table's files that no snapshot references and that are older than `min_age` (see
    /// [`sweep`]), through the warehouse's store (local disk or S3 alike).
    async fn sweep(&self, min_age: std::time::Duration) -> Result<sweep::Swept>;
}

/// The factory of a format by name, over the store of `warehouse` (opened, and probed, here).
pub async fn factory(
    format: &str,
    warehouse: &Warehouse,
    catalog: Option<&str>,
    options: LakeOptions,
) -> Result<Arc<dyn LakeTieringFactory>> {
    match format {
        "iceberg" | "paimon" => {}
        other => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("unknown lake format {other:?}: choose paimon or iceberg"),
            ));
        }
    }
    if format == "paimon" && catalog.is_some() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "--catalog names an Iceberg SQL catalog; Paimon's filesystem catalog lives in the warehouse itself",
        ));
    }
    let store = Store::open(warehouse).await?;
    Ok(match format {
        "iceberg" => Arc::new(iceberg::IcebergFactory::open(store, catalog, options).await?),
        _ => Arc::new(paimon::PaimonFactory::open(store, options).await?),
    })
}

/// The lake table must belong to this Fluss table (not to a dropped one of the same name): `owner` is the table id
/// it names in `fluss.table-id`, `has_column` says whether it has a column of that name. One that names none is
/// Fluss's coordinator's (which writes none) when it has the system columns: it is adopted, and its tiering snapshots name their table id ([`check_snapshot_owner`]). Anything
/// else of the same name is not a Fluss table's, and is refused rather than written into.
pub fn check_table_owner(t: &TableContext, owner: Option<&str>, has_column: impl Fn(&str) -> bool) -> Result<()> {
    let has_system_columns = || [BUCKET_COLUMN, OFFSET_COLUMN, TIMESTAMP_COLUMN].into_iter().all(&has_column);
    match owner {
        Some(owner) if owner == t.table_id.to_string() => Ok(()),
        Some(owner) => Err(Error::new(
            ErrorKind::TableNotExist,
            format!(
                "lake table {} belongs to Fluss table id {owner}, not {}: was the table dropped and re-created? Drop \
                 or rename the lake table to tier the new one",
                t.path, t.table_id
            ),
        )),
        None if has_system_columns() => Ok(()),
        None => Err(Error::new(
            ErrorKind::SchemaMismatch,
            format!(
                "lake table {} exists but is not a Fluss table's: it has no {TABLE_PROP_TABLE_ID} property and not \
                 the system columns {BUCKET_COLUMN}, {OFFSET_COLUMN}, {TIMESTAMP_COLUMN} (rename it, or drop it)",
                t.path
            ),
        )),
    }
}

/// The lake table's latest tiering snapshot must be of this Fluss table: a lake table that names no owner (one Fluss's
/// coordinator created) is told apart from a dropped table's by the table id its tiering snapshots carry.
pub fn check_snapshot_owner(t: &TableContext, latest: Option<&TieredSnapshot>) -> Result<()> {
    match latest {
        Some(s) if s.marker.table_id != t.table_id => Err(Error::new(
            ErrorKind::TableNotExist,
            format!(
                "the latest tiering snapshot {} of lake table {} is of Fluss table id {}, not {}: was the table \
                 dropped and re-created? Drop or rename the lake table to tier the new one",
                s.snapshot_id, t.path, s.marker.table_id, t.table_id
            ),
        )),
        _ => Ok(()),
    }
}

/// The schema of the lake rows: the table's columns, then the system columns.
pub fn lake_schema(descriptor: &TableDescriptor) -> SchemaRef {
    let mut fields: Vec<Field> = descriptor.arrow_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(BUCKET_COLUMN, DataType::Int32, false));
    fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
    fields.push(Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false));
    Arc::new(Schema::new(fields))
}

/// The columns of `batch` for a lake writer's `target` schema, by name (the lake's order can differ after schema
/// evolution): cast where only the representation differs (Binary vs LargeBinary, time-zone spelling), null for a
/// column the lake has and the batch does not (added outside). Casts are strict: a value that does not fit the lake
/// column is an error, never a silent null.
pub fn fit_columns(batch: &RecordBatch, target: &SchemaRef) -> Result<Vec<ArrayRef>> {
    target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(Arc::clone(c)),
            Some(c) => arrow::compute::cast_with_options(c, f.data_type(), &STRICT),
            None => Ok(arrow::array::new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::new(ErrorKind::SchemaMismatch, "records do not fit the lake schema").with_source(e))
}

const STRICT: arrow::compute::CastOptions<'static> =
    arrow::compute::CastOptions { safe: false, format_options: arrow::util::display::FormatOptions::new() };

/// Appends the system columns to a batch read from the cluster: `base_offset` is the offset of its first row,
/// `append_timestamp_ms` the time its batch was appended. The batch's columns are taken by name, so a batch stored
/// before a column was added reads that column as null.
pub fn with_system_columns(
    schema: &SchemaRef,
    batch: &RecordBatch,
    bucket: i32,
    base_offset: i64,
    append_timestamp_ms: i64,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let user_fields = schema.fields().len() - 3;
    let mut columns = align_columns(&schema.fields()[..user_fields], batch);
    columns.push(Arc::new(Int32Array::from(vec![bucket; n])));
    columns.push(Arc::new(Int64Array::from_iter_values(base_offset..base_offset + n as i64)));
    columns.push(Arc::new(TimestampMicrosecondArray::from(vec![append_timestamp_ms * 1000; n]).with_timezone("UTC")));
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Error::new(ErrorKind::SchemaMismatch, "records do not match the table schema").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn fitting_columns_casts_strictly_never_to_null() {
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 1 << 40])) as ArrayRef),
            ("s", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ])
        .expect("batch");
        let fits = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::LargeUtf8, true),
            Field::new("added", DataType::Int32, true),
        ]));
        let columns = fit_columns(&batch, &fits).expect("representation-only casts and added columns fit");
        assert_eq!(columns[1].data_type(), &DataType::LargeUtf8);
        assert_eq!(columns[2].null_count(), 2, "a column the batch lacks reads as null");
        let narrow = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, true)]));
        let err = fit_columns(&batch, &narrow).expect_err("2^40 does not fit an Int32");
        assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
    }

    #[test]
    fn a_snapshot_of_fluss_s_service_takes_its_offsets_and_table_from_fluss_s_json_only() {
        let props = |k: &str| match k {
            PROP_OFFSETS => Some("/remote/t.offsets".to_string()),
            PROP_COMMIT_USER => Some(FLUSS_COMMIT_USER.to_string()),
            _ => None,
        };
        let (marker, offsets) = CommitMarker::from_properties(props).expect("read").expect("a tiering snapshot");
        assert_eq!(offsets, OffsetsRef::File("/remote/t.offsets".into()));
        let mut fluss = marker.clone();
        fluss
            .load_offsets_file("/remote/t.offsets", br#"{"version":1,"table_id":9,"bucket_offsets":[4]}"#)
            .expect("json");
        assert_eq!((fluss.table_id, fluss.offsets[0].offset), (9, 4), "the table id comes from the file");
        let mut array = marker;
        let err = array.load_offsets_file("/remote/t.offsets", br#"[{"bucket":0,"offset":4}]"#).expect_err("array");
        assert!(err.to_string().contains("is not Fluss's JSON"), "{err}");
    }
}
