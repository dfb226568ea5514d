//! Primary-key tables: the state of each bucket by key, its changelog in the bucket's log, and KV snapshots.
//!
//! ```text
//!   PutKv / DeleteKv (rows by key) ──▶ changelog: +I | -U,+U | -D rows with `_change_type`
//!                                         ──▶ bucket log (durable, fsync)   ──▶ state: key → row
//!   every `snapshot_every` changes  ──▶ snapshot: every row of the bucket as of a log offset
//!                                         DATA_DIR/kv/t{id}/p{partition}/b{bucket}/snapshot-{id}.arrow + latest.json
//!   open: state = latest snapshot + the log after its offset, replayed
//! ```
//!
//! The log is the source of truth; snapshots only shorten recovery and give a tiering job a starting point that
//! does not need the whole changelog. Rows and keys are kept in Arrow's row format: compact, comparable bytes that
//! convert back to columns exactly.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use crate::cluster::log::{BucketLog, sync_dir};
use crate::cluster::persist;
use crate::error::{Error, ErrorKind, Result};
use crate::model::bucketing::PrimaryKeys;
use crate::model::change::{CHANGE_TYPE_COLUMN, ChangeType};
use crate::model::record::{self, BatchSpec, LogRecordBatch};
use crate::model::table::{TableDescriptor, align_columns};

/// Rows per batch of a snapshot file (a snapshot is read back one batch per request).
pub const SNAPSHOT_BATCH_ROWS: usize = 8192;

/// The log schema of a primary-key table: its columns, then the change type.
pub fn changelog_schema(descriptor: &TableDescriptor) -> SchemaRef {
    let mut fields: Vec<Field> = descriptor.arrow_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHANGE_TYPE_COLUMN, DataType::Int8, false));
    Arc::new(Schema::new(fields))
}

/// The log batch of a changelog (rows with a last `_change_type` column): the rows, with their change types as
/// the batch's change-type vector.
pub fn changelog_batch(spec: BatchSpec, changelog: &RecordBatch) -> Result<bytes::Bytes> {
    let last =
        changelog.num_columns().checked_sub(1).filter(|&i| changelog.schema().field(i).name() == CHANGE_TYPE_COLUMN);
    let last = last.ok_or_else(|| Error::new(ErrorKind::Internal, "a changelog ends with its change-type column"))?;
    let kinds = changelog
        .column(last)
        .as_any()
        .downcast_ref::<Int8Array>()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "change types are int8"))?;
    let types = kinds.values().iter().map(|&k| ChangeType::from_i8(k)).collect::<Result<Vec<_>>>()?;
    let mut rows = changelog.clone();
    rows.remove_column(last);
    record::encode(spec, &rows, Some(&types))
}

/// One write of a PutKv request: a key as the table encodes it, and the index of its new row in the request's
/// rows (`None` deletes the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWrite {
    pub key: Vec<u8>,
    pub row: Option<usize>,
}

/// A durable snapshot of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSnapshot {
    pub snapshot_id: i64,
    /// Every change below this log offset is in the snapshot, none at or above it.
    pub log_offset: i64,
    pub row_count: i64,
    pub batch_count: i32,
}

/// Converts between columns and Arrow's row format for a fixed set of columns.
struct Rows {
    converter: RowConverter,
}

impl Rows {
    fn new(types: impl IntoIterator<Item = DataType>) -> Result<Self> {
        let converter = RowConverter::new(types.into_iter().map(SortField::new).collect())
            .map_err(|e| Error::new(ErrorKind::Internal, "row converter").with_source(e))?;
        Ok(Rows { converter })
    }

    fn encode(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
        let rows = self
            .converter
            .convert_columns(columns)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, "rows cannot be encoded").with_source(e))?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        self.converter
            .convert_rows(rows.into_iter().map(|r| parser.parse(r)))
            .map_err(|e| Error::new(ErrorKind::Internal, "rows cannot be decoded").with_source(e))
    }
}

/// One bucket of a primary-key table: its rows by key, kept in step with its log.
pub struct KvBucket {
    dir: PathBuf,
    schema: SchemaRef,
    changelog_schema: SchemaRef,
    rows: Rows,
    /// The primary key as the table encodes it (what Fluss clients send and look up).
    keys: PrimaryKeys,
    /// encoded key → row in Arrow's row format.
    state: HashMap<Vec<u8>, Vec<u8>>,
    snapshot_every: u64,
    changes_since_snapshot: u64,
    latest: Option<KvSnapshot>,
}

impl KvBucket {
    /// Opens a bucket's state in `dir`: its latest snapshot, then its log replayed from the snapshot's offset.
    pub fn open(dir: &Path, descriptor: &TableDescriptor, log: &BucketLog, snapshot_every: u64) -> Result<Self> {
        let schema = descriptor.arrow_schema();
        let rows = Rows::new(schema.fields().iter().map(|f| f.data_type().clone()))?;
        let keys = PrimaryKeys::of(descriptor)?;
        let mut bucket = KvBucket {
            dir: dir.to_path_buf(),
            changelog_schema: changelog_schema(descriptor),
            schema,
            rows,
            keys,
            state: HashMap::new(),
            snapshot_every: snapshot_every.max(1),
            changes_since_snapshot: 0,
            latest: persist::read_json(&dir.join("latest.json"))?,
        };
        let mut offset = 0;
        if let Some(s) = bucket.latest {
            bucket.load_snapshot(s)?;
            offset = s.log_offset;
        }
        while offset < log.end_offset() {
            let batches = log.plan_read(offset, 8 << 20)?.execute()?;
            let Some(last) = batches.last() else { break };
            offset = last.base_offset + i64::from(last.record_count);
            for stored in batches {
                let batch = LogRecordBatch::parse(stored.records)?.read(descriptor)?;
                bucket.apply(&batch)?;
                bucket.changes_since_snapshot += batch.num_rows() as u64;
            }
        }
        Ok(bucket)
    }

    /// The latest snapshot, if one was taken.
    pub fn latest_snapshot(&self) -> Option<KvSnapshot> {
        self.latest
    }

    /// The changelog that `writes` cause, in order (later writes of a request see the changes of earlier ones);
    /// `None` when nothing changes (deletes of absent keys). `rows` holds the new rows
    /// the upserts point at, in the table's current schema.
    pub fn changelog(&self, writes: &[KvWrite], rows: &RecordBatch) -> Result<Option<RecordBatch>> {
        let new_rows = self.rows.encode(align_columns(self.schema.fields(), rows).as_slice())?;
        let mut pending: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
        let mut out: Vec<(&[u8], ChangeType)> = Vec::new();
        for write in writes {
            let key = write.key.as_slice();
            let before: Option<&[u8]> = match pending.get(key) {
                Some(v) => *v,
                None => self.state.get(key).map(Vec::as_slice),
            };
            match write.row {
                None => {
                    if let Some(old) = before {
                        out.push((old, ChangeType::Delete));
                        pending.insert(key, None);
                    }
                }
                Some(i) => {
                    let new = new_rows
                        .get(i)
                        .ok_or_else(|| {
                            Error::new(ErrorKind::Internal, format!("write of row {i} of {}", new_rows.len()))
                        })?
                        .as_slice();
                    // Java's default merge engine keeps the new row even when it equals the old one: -U/+U.
                    match before {
                        Some(old) => {
                            out.push((old, ChangeType::UpdateBefore));
                            out.push((new, ChangeType::UpdateAfter));
                        }
                        None => out.push((new, ChangeType::Insert)),
                    }
                    pending.insert(key, Some(new));
                }
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        let mut columns = self.rows.decode(out.iter().map(|(r, _)| *r))?;
        columns.push(Arc::new(Int8Array::from_iter_values(out.iter().map(|(_, t)| *t as i8))));
        RecordBatch::try_new(Arc::clone(&self.changelog_schema), columns)
            .map(Some)
            .map_err(|e| Error::new(ErrorKind::Internal, "building the changelog").with_source(e))
    }

    /// Every current row of the bucket, in key order (as a RocksDB iterator gives them).
    pub fn all_rows(&self) -> Result<RecordBatch> {
        let mut keys: Vec<&Vec<u8>> = self.state.keys().collect();
        keys.sort_unstable();
        let columns = self.rows.decode(keys.iter().map(|k| self.state[*k].as_slice()))?;
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::new(ErrorKind::Internal, "building a bucket's rows").with_source(e))
    }

    /// The current rows of `keys`: a batch of those found, and for each key its row in that batch.
    pub fn lookup(&self, keys: &[&[u8]]) -> Result<(RecordBatch, Vec<Option<usize>>)> {
        let mut found = Vec::new();
        let index = keys
            .iter()
            .map(|k| {
                self.state.get(*k).map(|row| {
                    found.push(row.as_slice());
                    found.len() - 1
                })
            })
            .collect();
        let columns = self.rows.decode(found)?;
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::new(ErrorKind::Internal, "building looked-up rows").with_source(e))?;
        Ok((batch, index))
    }

    /// Applies changelog rows (after they are durable in the log).
    pub fn apply(&mut self, changelog: &RecordBatch) -> Result<()> {
        let types = changelog
            .column_by_name(CHANGE_TYPE_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<Int8Array>())
            .ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "changelog without change types"))?;
        // By name: changes logged before a column was added read it as null.
        let user_columns = align_columns(self.schema.fields(), changelog);
        let keys = self.keys.encode(&self.keys.columns_of(&user_columns))?;
        let rows = self.rows.encode(&user_columns)?;
        for ((key, row), t) in keys.into_iter().zip(rows).zip(types.values().iter()) {
            match ChangeType::from_i8(*t)? {
                ChangeType::Insert | ChangeType::UpdateAfter => {
                    self.state.insert(key, row);
                }
                ChangeType::Delete => {
                    self.state.remove(&key);
                }
                ChangeType::UpdateBefore => {}
            }
        }
        Ok(())
    }

    /// Counts changes just appended and applied; takes a snapshot at `log_offset` (the log's end) when due.
    pub fn note_changes(&mut self, changes: u64, log_offset: i64) -> Result<()> {
        self.changes_since_snapshot += changes;
        if self.changes_since_snapshot >= self.snapshot_every {
            self.snapshot(log_offset)?;
        }
        Ok(())
    }

    /// Writes every row of the bucket as snapshot `latest + 1` at `log_offset`, durably, and keeps the previous
    /// snapshot for readers still on it.
    pub fn snapshot(&mut self, log_offset: i64) -> Result<KvSnapshot> {
        let snapshot_id = self.latest.map(|s| s.snapshot_id + 1).unwrap_or(1);
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.dir.join(format!("snapshot-{snapshot_id}.arrow"));
        let tmp = path.with_extension("tmp");
        let file = fs::File::create(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let fail = |e| Error::new(ErrorKind::Storage, "writing a KV snapshot").with_source(e);
        let mut writer = arrow::ipc::writer::FileWriter::try_new(file, &self.schema).map_err(fail)?;
        let rows: Vec<&[u8]> = self.state.values().map(Vec::as_slice).collect();
        let mut batch_count = 0;
        for chunk in rows.chunks(SNAPSHOT_BATCH_ROWS) {
            let columns = self.rows.decode(chunk.iter().copied())?;
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
                .map_err(|e| Error::new(ErrorKind::Internal, "building a snapshot batch").with_source(e))?;
            writer.write(&batch).map_err(fail)?;
            batch_count += 1;
        }
        writer.finish().map_err(fail)?;
        let file = writer.into_inner().map_err(fail)?;
        file.sync_all().map_err(|e| Error::io(format!("syncing {}", tmp.display()), e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
        sync_dir(&self.dir)?;
        let snapshot = KvSnapshot { snapshot_id, log_offset, row_count: rows.len() as i64, batch_count };
        persist::write_json(&self.dir.join("latest.json"), &snapshot)?;
        if snapshot_id > 2 {
            let _ = fs::remove_file(self.dir.join(format!("snapshot-{}.arrow", snapshot_id - 2)));
        }
        self.latest = Some(snapshot);
        self.changes_since_snapshot = 0;
        tracing::debug!(dir = %self.dir.display(), snapshot_id, log_offset, rows = rows.len(), "KV snapshot taken");
        Ok(snapshot)
    }

    fn load_snapshot(&mut self, s: KvSnapshot) -> Result<()> {
        for index in 0..s.batch_count {
            let columns = align_columns(self.schema.fields(), &read_snapshot_batch(&self.dir, s.snapshot_id, index)?.0);
            let keys = self.keys.encode(&self.keys.columns_of(&columns))?;
            let rows = self.rows.encode(&columns)?;
            self.state.extend(keys.into_iter().zip(rows));
        }
        Ok(())
    }
}

/// Batch `index` of snapshot `snapshot_id` in `dir`, and how many batches the snapshot has.
pub fn read_snapshot_batch(dir: &Path, snapshot_id: i64, index: i32) -> Result<(RecordBatch, i32)> {
    let path = dir.join(format!("snapshot-{snapshot_id}.arrow"));
    let file = fs::File::open(&path).map_err(|e| {
        Error::new(ErrorKind::KvSnapshotNotExist, format!("KV snapshot {snapshot_id} is gone ({})", path.display()))
            .with_source(e)
    })?;
    let fail = |e| Error::new(ErrorKind::Storage, format!("reading {}", path.display())).with_source(e);
    let mut reader = arrow::ipc::reader::FileReader::try_new(file, None).map_err(fail)?;
    let count = reader.num_batches() as i32;
    if index < 0 || index >= count {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("KV snapshot {snapshot_id} has batches 0..{count}, not {index}"),
        ));
    }
    reader.set_index(index as usize).map_err(fail)?;
    let batch = reader.next().ok_or_else(|| Error::new(ErrorKind::Storage, "snapshot batch missing"))?.map_err(fail)?;
    Ok((batch, count))
}
