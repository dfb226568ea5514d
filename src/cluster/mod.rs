//! The Fluss-shaped cluster: table catalog, durable bucket logs and the tiering coordinator. This is the service
//! core only; its front doors (the wire protocols) are the `serve` module, and it imports none of them.
//!
//! ```text
//!   serve (gRPC)      ──▶ Cluster ──┬── Metadata     tables, partitions          DATA_DIR/meta/tables.json
//!                                   ├── Coordinator  tiering states, epochs,     DATA_DIR/meta/coordinator.json
//!                                   │                lake snapshots
//!                                   ├── BucketLog×N  Arrow IPC segments          DATA_DIR/log/t{id}/p{partition}/b{bucket}/
//!                                   └── KvBucket×N   primary-key state, snapshots DATA_DIR/kv/t{id}/p{partition}/b{bucket}/
//! ```
//!
//! A log table's bucket log holds the produced records; a primary-key table's holds the changelog its upserts and
//! deletes cause (see [`kv`]).
//!
//! The same `Cluster` runs as a standalone server (`fluss-tiering cluster`) or embedded in the tiering job's process
//! (`serve::EmbeddedCluster`); both serve it on a TCP port, so clients cannot tell them apart.

pub mod coordinator;
pub mod kv;
pub mod log;
pub mod metadata;
pub mod persist;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;

use crate::cluster::coordinator::{
    Coordinator, DEFAULT_FAILURE_BACKOFF, DEFAULT_HEARTBEAT_TIMEOUT, TieringEpochs, TieringStatus,
};
use crate::cluster::kv::{KvBucket, KvSnapshot, KvWrite};
use crate::cluster::log::{BucketLog, StoredBatch};
use crate::cluster::metadata::Metadata;
use crate::error::{Error, ErrorKind, Result};
use crate::model::bucketing::{DATALAKE_FORMAT, KV_FORMAT_VERSION, PrimaryKeys};
use crate::model::compacted;
use crate::model::kv_record::KvRecordBatch;
use crate::model::now_ms;
use crate::model::record::{self, BatchSpec, LogRecordBatch};
use crate::model::table::{DatabaseInfo, TableDescriptor, TableInfo, TablePath};
use crate::model::tiering::{FetchAsk, LakeBucketOffset, OffsetsFile};

/// How a cluster stores and schedules.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub data_dir: PathBuf,
    /// A bucket's segment rolls once it holds this many bytes.
    pub segment_bytes: u64,
    /// A tiering job that has not heartbeated for this long loses its tables.
    pub heartbeat_timeout: Duration,
    /// The first retry delay of a table whose round failed; it doubles with each consecutive failure.
    pub failure_backoff: Duration,
    /// Whether tiering epochs survive a restart (ours) or count from 0 on every start (Fluss's).
    pub tiering_epochs: TieringEpochs,
    /// A primary-key bucket takes a KV snapshot after this many changes.
    pub kv_snapshot_every: u64,
    /// The lake format a table created over Fluss's protocol gets in `table.datalake.format` unless it names one
    /// (a Fluss cluster's `datalake.format`).
    pub datalake_format: Option<String>,
}

impl ClusterConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            data_dir: data_dir.into(),
            segment_bytes: 64 << 20,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            failure_backoff: DEFAULT_FAILURE_BACKOFF,
            tiering_epochs: TieringEpochs::Persisted,
            kv_snapshot_every: 100_000,
            datalake_format: Some("paimon".into()),
        }
    }
}

/// Identifies one bucket log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketId {
    pub table_id: i64,
    pub partition_id: Option<i64>,
    pub bucket: i32,
}

/// The result of a produce: where the batch landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub partition_id: Option<i64>,
    pub base_offset: i64,
    pub record_count: u32,
}

/// What a fetch returns.
#[derive(Debug)]
pub struct Fetched {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Vec<StoredBatch>,
}

/// The bytes a fetch asked for (from the wire, any `i32`), as the cluster reads them: at least one, since a fetch
/// always brings a batch when there is one.
pub fn fetch_budget(asked: i32) -> usize {
    usize::try_from(asked).unwrap_or(0).max(1)
}

/// A primary-key bucket's state, with the schema it is kept in.
type KvEntry = (SchemaRef, Arc<Mutex<KvBucket>>);

/// One cluster's state. All methods may block on disk: call them off the async runtime.
pub struct Cluster {
    config: ClusterConfig,
    metadata: Mutex<Metadata>,
    coordinator: Mutex<Coordinator>,
    logs: Mutex<HashMap<BucketId, Arc<Mutex<BucketLog>>>>,
    /// Primary-key buckets in use, with the schema each one's state is kept in.
    kv: Mutex<HashMap<BucketId, KvEntry>>,
    /// Records acknowledged since start.
    produced: std::sync::atomic::AtomicU64,
    appended: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind, never a half-applied disk change: keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Cluster {
    /// Opens (or initializes) the cluster in `config.data_dir`.
    pub fn open(config: ClusterConfig) -> Result<Self> {
        let meta_dir = config.data_dir.join("meta");
        let metadata = Metadata::open(meta_dir.join("tables.json"))?;
        let tables: Vec<TableInfo> = metadata.tables().cloned().collect();
        let mut coordinator = Coordinator::open(
            meta_dir.join("coordinator.json"),
            config.heartbeat_timeout,
            config.failure_backoff,
            config.tiering_epochs,
            &tables,
            Instant::now(),
            now_ms(),
        )?;
        tracing::info!(data_dir = %config.data_dir.display(), tables = tables.len(),
            coordinator_epoch = coordinator.coordinator_epoch(), "cluster opened");
        for t in &tables {
            if has_records(&config.data_dir, t.table_id) {
                coordinator.note_data(t.table_id);
            }
        }
        Ok(Cluster {
            config,
            metadata: Mutex::new(metadata),
            coordinator: Mutex::new(coordinator),
            logs: Mutex::new(HashMap::new()),
            kv: Mutex::new(HashMap::new()),
            produced: std::sync::atomic::AtomicU64::new(0),
            appended: tokio::sync::Notify::new(),
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn coordinator(&self) -> MutexGuard<'_, Coordinator> {
        lock(&self.coordinator)
    }

    pub fn create_table(
        &self,
        path: TablePath,
        mut descriptor: TableDescriptor,
        ignore_if_exists: bool,
    ) -> Result<TableInfo> {
        // As a Java coordinator configured for a lake: the table names the lake's format (its keys are then encoded
        // and bucketed as that lake expects), and a primary-key table gets KV format version 2.
        if let Some(format) = &self.config.datalake_format {
            descriptor.properties.entry(DATALAKE_FORMAT.into()).or_insert_with(|| format.clone());
        }
        if descriptor.has_primary_key() {
            descriptor.properties.entry(KV_FORMAT_VERSION.into()).or_insert_with(|| "2".into());
            PrimaryKeys::of(&descriptor)?;
        }
        let mut metadata = lock(&self.metadata);
        let existed = metadata.by_path(&path).is_ok();
        let info = metadata.create(path, descriptor, ignore_if_exists, now_ms())?;
        if !existed {
            self.coordinator().add_table(&info, Instant::now())?;
            tracing::info!(table = %info.path, table_id = info.table_id, "created table");
        }
        Ok(info)
    }

    /// Adds a nullable column to a table: later produces carry it; batches stored before read it as null.
    pub fn add_column(&self, path: &TablePath, column: crate::model::table::Column) -> Result<i32> {
        let schema_id = lock(&self.metadata).add_column(path, column, now_ms())?;
        tracing::info!(table = %path, schema_id, "added a column");
        Ok(schema_id)
    }

    pub fn drop_table(&self, path: &TablePath, ignore_if_not_exists: bool) -> Result<()> {
        let Some(table_id) = lock(&self.metadata).drop_table(path, ignore_if_not_exists)? else {
            return Ok(());
        };
        self.coordinator().remove_table(table_id)?;
        lock(&self.logs).retain(|id, _| id.table_id != table_id);
        lock(&self.kv).retain(|id, _| id.table_id != table_id);
        for kind in ["log", "kv"] {
            let dir = self.config.data_dir.join(kind).join(format!("t{table_id}"));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
            }
        }
        tracing::info!(table = %path, table_id, "dropped table");
        Ok(())
    }

    pub fn databases(&self) -> Vec<DatabaseInfo> {
        lock(&self.metadata).databases()
    }

    pub fn database(&self, name: &str) -> Result<DatabaseInfo> {
        lock(&self.metadata).database(name)
    }

    pub fn create_database(&self, name: &str, comment: Option<String>, ignore_if_exists: bool) -> Result<()> {
        let now = now_ms();
        let info = DatabaseInfo { name: name.to_string(), comment, created_ms: now, modified_ms: now };
        lock(&self.metadata).create_database(info, ignore_if_exists)
    }

    /// Drops a database; with `cascade`, its tables first (otherwise a database with tables is refused).
    pub fn drop_database(&self, name: &str, ignore_if_not_exists: bool, cascade: bool) -> Result<()> {
        if let Err(e) = self.database(name) {
            return if ignore_if_not_exists { Ok(()) } else { Err(e) };
        }
        let tables: Vec<TablePath> =
            lock(&self.metadata).tables().filter(|t| t.path.database == name).map(|t| t.path.clone()).collect();
        if !tables.is_empty() && !cascade {
            return Err(Error::new(ErrorKind::DatabaseNotEmpty, format!("database {name} still has tables")));
        }
        for path in &tables {
            self.drop_table(path, true)?;
        }
        lock(&self.metadata).drop_database(name)?;
        tracing::info!(database = name, "dropped database");
        Ok(())
    }

    /// A new idempotent writer id (Fluss's InitWriter).
    pub fn new_writer_id(&self) -> Result<i64> {
        lock(&self.metadata).new_writer_id()
    }

    /// Creates a partition of a partitioned table; refused when it exists unless `ignore_if_exists`.
    pub fn create_partition(&self, path: &TablePath, name: &str, ignore_if_exists: bool) -> Result<i64> {
        let table = self.table_by_path(path)?;
        if !table.descriptor.is_partitioned() {
            return Err(Error::new(ErrorKind::TableNotPartitioned, format!("table {path} is not partitioned")));
        }
        let (id, created) = lock(&self.metadata).create_partition(table.table_id, name, now_ms())?;
        if !created && !ignore_if_exists {
            return Err(Error::new(
                ErrorKind::PartitionAlreadyExists,
                format!("partition {name} of table {path} already exists"),
            ));
        }
        Ok(id)
    }

    /// Fluss's PrepareLakeTableSnapshot: merges `offsets` over the table's latest lake snapshot's (unless
    /// `ignore_previous`), writes them as an offsets file under `DATA_DIR/remote/lake/DB/TABLE-ID/metadata/` and
    /// returns its path. Nothing is recorded yet: CommitLakeTableSnapshot names the file.
    pub fn prepare_lake_offsets(
        &self,
        table_id: i64,
        offsets: &[LakeBucketOffset],
        ignore_previous: bool,
    ) -> Result<String> {
        let table = self.table_by_id(table_id)?;
        let mut merged: BTreeMap<(Option<i64>, i32), LakeBucketOffset> = BTreeMap::new();
        if !ignore_previous && let Ok(previous) = self.coordinator().lake_snapshot(table_id) {
            merged.extend(previous.buckets.iter().map(|b| ((b.partition_id, b.bucket), *b)));
        }
        merged.extend(offsets.iter().map(|b| ((b.partition_id, b.bucket), *b)));
        let merged: Vec<LakeBucketOffset> = merged.into_values().collect();
        let file = OffsetsFile::new(table_id, table.descriptor.is_partitioned(), &merged)?;
        let dir = self
            .remote_dir()
            .join("lake")
            .join(&table.path.database)
            .join(format!("{}-{table_id}", table.path.table))
            .join("metadata");
        let path = dir.join(format!("{}.offsets", uuid::Uuid::new_v4()));
        persist::write_json(&path, &file)?;
        Ok(path.display().to_string())
    }

    /// An offsets file this cluster wrote (a path anywhere else is refused: a client names it).
    pub fn read_lake_offsets(&self, path: &str) -> Result<OffsetsFile> {
        let remote = self.remote_dir();
        let path = std::path::Path::new(path);
        let inside = match (path.canonicalize(), remote.canonicalize()) {
            (Ok(p), Ok(r)) => p.starts_with(&r),
            _ => false,
        };
        if !inside {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{} is not an offsets file of this cluster (under {})", path.display(), remote.display()),
            ));
        }
        persist::read_json(path)?
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, format!("offsets file {} is gone", path.display())))
    }

    /// Where the offsets files live (Fluss's `remote.data.dir`).
    fn remote_dir(&self) -> PathBuf {
        self.config.data_dir.join("remote")
    }

    /// Wakes whoever waits for new records (a long-polling fetch) after every append.
    pub fn appends(&self) -> &tokio::sync::Notify {
        &self.appended
    }

    pub fn table_by_path(&self, path: &TablePath) -> Result<TableInfo> {
        lock(&self.metadata).by_path(path).cloned()
    }

    pub fn table_by_id(&self, table_id: i64) -> Result<TableInfo> {
        lock(&self.metadata).by_id(table_id).cloned()
    }

    /// Every table with its tiering status (none when tiering is off for it).
    pub fn list_tables(&self) -> Vec<(TableInfo, Option<TieringStatus>)> {
        let tables: Vec<TableInfo> = lock(&self.metadata).tables().cloned().collect();
        let coordinator = self.coordinator();
        tables
            .into_iter()
            .map(|t| {
                let status = coordinator.status(t.table_id);
                (t, status)
            })
            .collect()
    }

    /// Makes `tables` (every lake table when empty) due now; answers their status after (see
    /// [`Coordinator::schedule_now`]). A table that does not exist fails the request before any is touched.
    pub fn schedule_now(&self, tables: &[TablePath]) -> Result<Vec<(TableInfo, Option<TieringStatus>)>> {
        let ids: Vec<i64> = tables.iter().map(|p| self.table_by_path(p).map(|t| t.table_id)).collect::<Result<_>>()?;
        let chosen = |id: &i64| ids.is_empty() || ids.contains(id);
        let targets: Vec<i64> = lock(&self.metadata).tables().map(|t| t.table_id).filter(chosen).collect();
        let now = std::time::Instant::now();
        {
            let mut coordinator = self.coordinator();
            for id in targets {
                if coordinator.status(id).is_some() {
                    coordinator.schedule_now(id, now)?;
                }
            }
            coordinator.tick(now)?;
        }
        // Asked for by name, a table is answered whatever it is; asked for all, the lake tables.
        let answered = |(t, status): &(TableInfo, Option<TieringStatus>)| match ids.is_empty() {
            true => status.is_some(),
            false => ids.contains(&t.table_id),
        };
        Ok(self.list_tables().into_iter().filter(answered).collect())
    }

    /// Appends Fluss log batches to a bucket, durably. Every batch is checked before any is stored: its crc, the
    /// table's current schema id, an Arrow body that fits that schema, for a partitioned table only rows of the
    /// named partition (created on first use), and its writer's sequence. An idempotent writer's repeat is answered
    /// with the offset it got the first time and stores nothing. (A disk failure in the middle of a request of
    /// several batches leaves the ones before it stored.)
    pub fn produce(
        &self,
        table_id: i64,
        partition_name: Option<&str>,
        bucket: i32,
        records: Bytes,
    ) -> Result<Appended> {
        let table = self.table_by_id(table_id)?;
        check_bucket(&table, bucket)?;
        if table.descriptor.has_primary_key() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("table {} has a primary key: write it with PutKv and DeleteKv, not ProduceLog", table.path),
            ));
        }
        let batches = record::split(&records)?;
        if batches.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "records hold no batch"));
        }
        let mut record_count = 0u32;
        for batch in &batches {
            batch.check_crc()?;
            if !batch.header().append_only {
                return Err(Error::new(ErrorKind::CorruptRecord, "a log table's batches must be append-only"));
            }
            let (got, current) = (batch.header().schema_id, table.descriptor.schema_id());
            if got != current {
                table.descriptor.arrow_schema_of(got)?;
                return Err(Error::new(
                    ErrorKind::SchemaMismatch,
                    format!(
                        "records were written for schema {got} of table {}, whose schema is now {current}: \
                         refresh the table and write again",
                        table.path
                    ),
                ));
            }
            let rows = batch.read(&table.descriptor)?;
            check_partition(&table, partition_name, &rows)?;
            record_count = record_count
                .checked_add(u32::try_from(rows.num_rows()).unwrap_or(u32::MAX))
                .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "too many rows in one produce request"))?;
        }
        if record_count == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "records hold no rows"));
        }
        let partition_id = self.partition_for(&table, partition_name)?;
        let log = self.log(BucketId { table_id, partition_id, bucket })?;
        let now = now_ms();
        let mut log = lock(&log);
        log.check_sequences(&batches)?;
        let mut first = None;
        let mut stored = 0u32;
        for batch in batches {
            let rows = u32::try_from(batch.header().record_count).unwrap_or(0);
            let appended = log.append(batch, now)?;
            if matches!(appended, log::Appended::New { .. }) {
                stored += rows;
            }
            first.get_or_insert(appended.base_offset());
        }
        drop(log);
        let base_offset = first.ok_or_else(|| Error::new(ErrorKind::Internal, "no batch appended"))?;
        if stored > 0 {
            self.coordinator().note_data(table_id);
            self.produced.fetch_add(u64::from(stored), std::sync::atomic::Ordering::Relaxed);
            self.appended.notify_waiters();
        }
        Ok(Appended { partition_id, base_offset, record_count })
    }

    /// The partition id a request names (created on first use), checked against whether the table is partitioned.
    fn partition_for(&self, table: &TableInfo, partition_name: Option<&str>) -> Result<Option<i64>> {
        match (&table.descriptor.partition_key, partition_name) {
            (Some(_), Some(name)) => {
                Ok(Some(lock(&self.metadata).partition_id_or_create(table.table_id, name, now_ms())?))
            }
            (Some(key), None) => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("table {} is partitioned by {key:?}: name the partition", table.path),
            )),
            (None, Some(_)) => {
                Err(Error::new(ErrorKind::InvalidArgument, format!("table {} is not partitioned", table.path)))
            }
            (None, None) => Ok(None),
        }
    }

    /// Upserts (or with `delete`, deletes) the rows of Arrow `records` in a primary-key bucket (the gRPC door).
    /// Deletes need only the key columns; upserts need full rows of the current schema.
    pub fn put_kv(
        &self,
        table_id: i64,
        partition_name: Option<&str>,
        bucket: i32,
        records: Bytes,
        delete: bool,
    ) -> Result<Appended> {
        let table = self.kv_table(table_id, bucket)?;
        let batches = crate::model::ipc::decode(&records)?;
        if !delete {
            check_upserts(&table, partition_name, &batches)?;
        }
        let Some(first) = batches.first() else {
            return Err(Error::new(ErrorKind::InvalidArgument, "records hold no rows"));
        };
        // One batch, so that later rows of the request see the changes of earlier ones.
        let batch = arrow::compute::concat_batches(&first.schema(), &batches).map_err(|e| {
            Error::new(ErrorKind::CorruptMessage, "records hold batches of different schemas").with_source(e)
        })?;
        let keys = PrimaryKeys::of(&table.descriptor)?;
        let key_columns = keys.columns_by_name(&batch)?;
        let encoded = keys.encode(&key_columns)?;
        if !delete {
            check_buckets(&table, &keys, &encoded, bucket)?;
        }
        let writes = encoded
            .into_iter()
            .enumerate()
            .map(|(i, key)| KvWrite { key, row: (!delete).then_some(i) })
            .collect::<Vec<_>>();
        let rows = if delete { RecordBatch::new_empty(table.descriptor.arrow_schema()) } else { batch };
        self.write_kv(&table, partition_name, bucket, KvRequest { writes, rows, writer: None })
    }

    /// Applies a Fluss KV record batch (PutKv on the Fluss door): CompactedRow values of the current schema, keys
    /// as the table encodes them, each upsert's key matching its row and its bucket; idempotent by writer and
    /// batch sequence.
    pub fn put_kv_batch(
        &self,
        table_id: i64,
        partition_name: Option<&str>,
        bucket: i32,
        records: &[u8],
    ) -> Result<Appended> {
        let table = self.kv_table(table_id, bucket)?;
        let batch = KvRecordBatch::parse(records)?;
        // Rows of an older schema (columns are only added, at the end) read the newer columns as null, as a Java
        // server pads them; an unknown schema id is refused.
        let values = batch.records.iter().filter_map(|r| r.value);
        let rows = compacted::decode_rows_of_schema(&table.descriptor, batch.schema_id, values)?;
        check_partition(&table, partition_name, &rows)?;
        let keys = PrimaryKeys::of(&table.descriptor)?;
        let key_columns = keys.columns_of(rows.columns());
        let expected = keys.encode(&key_columns)?;
        check_buckets(&table, &keys, &expected, bucket)?;
        let mut next_row = 0;
        let mut writes = Vec::with_capacity(batch.records.len());
        for record in &batch.records {
            let row = record.value.map(|_| {
                next_row += 1;
                next_row - 1
            });
            if let Some(i) = row
                && expected[i] != record.key
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "record {} carries key bytes that are not its row's primary key as table {} encodes it ({})",
                        writes.len(),
                        table.path,
                        keys.describe()
                    ),
                ));
            }
            writes.push(KvWrite { key: record.key.to_vec(), row });
        }
        self.write_kv(&table, partition_name, bucket, KvRequest { writes, rows, writer: batch.writer })
    }

    /// A primary-key table and one of its buckets, or why not.
    fn kv_table(&self, table_id: i64, bucket: i32) -> Result<TableInfo> {
        let table = self.table_by_id(table_id)?;
        check_bucket(&table, bucket)?;
        if !table.descriptor.has_primary_key() {
            return Err(Error::new(
                ErrorKind::NonPrimaryKeyTable,
                format!("table {} has no primary key: append to it with ProduceLog", table.path),
            ));
        }
        if !table.descriptor.properties.contains_key(KV_FORMAT_VERSION) {
            // Such a table's rows were placed in buckets by another rule: mixing the two would split keys.
            return Err(Error::new(
                ErrorKind::InvalidTable,
                format!(
                    "table {} was created by an older version of this cluster that bucketed keys its own way: \
                     recreate it",
                    table.path
                ),
            ));
        }
        Ok(table)
    }

    /// Writes to a primary-key bucket: the changelog the writes cause, durable in the log first (one batch, even
    /// of no record, so a writer's sequence advances), then applied to the state. A writer's repeat of a batch it
    /// already wrote answers that batch's offset and changes nothing.
    fn write_kv(
        &self,
        table: &TableInfo,
        partition_name: Option<&str>,
        bucket: i32,
        request: KvRequest,
    ) -> Result<Appended> {
        let partition_id = self.partition_for(table, partition_name)?;
        let id = BucketId { table_id: table.table_id, partition_id, bucket };
        let (kv, log) = (self.kv_bucket(table, id)?, self.log(id)?);
        let (mut kv_state, mut log) = (lock(&kv), lock(&log));
        self.check_current(id, &kv)?;
        if let Some((writer, sequence)) = request.writer
            && let Some(base_offset) = log.check_sequence(writer, sequence)?
        {
            return Ok(Appended { partition_id, base_offset, record_count: 0 });
        }
        let kv = &mut kv_state;
        let changelog = match kv.changelog(&request.writes, &request.rows)? {
            Some(changelog) => changelog,
            None => RecordBatch::new_empty(kv::changelog_schema(&table.descriptor)),
        };
        let record_count = u32::try_from(changelog.num_rows())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "too many changes in one request"))?;
        // Durable first, then applied: the state never holds a change the log does not.
        let spec = BatchSpec {
            schema_id: table.descriptor.schema_id(),
            writer: request.writer,
            compression: table.descriptor.log_compression()?,
        };
        let batch = LogRecordBatch::parse(kv::changelog_batch(spec, &changelog)?)?;
        let base_offset = log.append(batch, now_ms())?.base_offset();
        if let Err(e) = kv.apply(&changelog) {
            // The log has the change, the state not: drop the state, to be rebuilt from the log on next use.
            lock(&self.kv).remove(&id);
            return Err(e);
        }
        kv.note_changes(u64::from(record_count), log.end_offset())?;
        self.appended.notify_waiters();
        // Even a batch of no record moves the end offset, which the lake's offsets then follow.
        self.coordinator().note_data(table.table_id);
        self.produced.fetch_add(u64::from(record_count), std::sync::atomic::Ordering::Relaxed);
        Ok(Appended { partition_id, base_offset, record_count })
    }

    /// Checks, with its lock held, that a bucket's state is still the one in use: it may have been rebuilt (a column
    /// was added) or dropped (an apply failed) while the caller waited, and the old one must not be read or written.
    fn check_current(&self, id: BucketId, kv: &Arc<Mutex<KvBucket>>) -> Result<()> {
        if !lock(&self.kv).get(&id).is_some_and(|(_, current)| Arc::ptr_eq(current, kv)) {
            return Err(Error::new(ErrorKind::SchemaMismatch, "the bucket's state changed during the request: retry"));
        }
        Ok(())
    }

    /// Every row of a primary-key bucket as Fluss stores it (`[schema id i16 LE][CompactedRow]`, in key order), and
    /// the log end offset they are consistent with: every change below it is in them, none at or above it.
    pub fn scan_kv(&self, id: BucketId) -> Result<(Vec<Vec<u8>>, i64)> {
        let table = self.kv_table(id.table_id, id.bucket)?;
        self.existing_log(id)?;
        let (kv, log) = (self.kv_bucket(&table, id)?, self.log(id)?);
        // The order writers take them in: the state, then the log (both held, so no write is half done).
        let (state, log) = (lock(&kv), lock(&log));
        self.check_current(id, &kv)?;
        let rows = state.all_rows()?;
        let log_offset = log.end_offset();
        drop((state, log));
        Ok((self.values_of(&table, &rows)?, log_offset))
    }

    /// Rows as Fluss stores them: `[schema id i16 LE][CompactedRow]`.
    fn values_of(&self, table: &TableInfo, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let types: Vec<_> = table.descriptor.columns.iter().map(|c| c.data_type).collect();
        let encoded = compacted::encode_rows(&compacted::cells_of(rows, &types)?, rows.num_rows())?;
        let schema_id = table.descriptor.schema_id().to_le_bytes();
        Ok(encoded.into_iter().map(|row| [&schema_id[..], &row].concat()).collect())
    }

    /// The current values of `keys` (as the table encodes them) in a primary-key bucket, each as Fluss stores it:
    /// `[schema id i16 LE][CompactedRow]`; `None` for a key that has no row.
    pub fn lookup(&self, id: BucketId, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let table = self.kv_table(id.table_id, id.bucket)?;
        self.existing_log(id)?;
        let kv = self.kv_bucket(&table, id)?;
        let state = lock(&kv);
        self.check_current(id, &kv)?;
        let (rows, index) = state.lookup(keys)?;
        drop(state);
        let values = self.values_of(&table, &rows)?;
        Ok(index.into_iter().map(|i| i.and_then(|i| values.get(i).cloned())).collect())
    }

    /// The latest KV snapshot of every bucket of a primary-key table (of one partition); `None` where none was taken.
    pub fn latest_kv_snapshots(&self, table_id: i64, partition_id: Option<i64>) -> Result<Vec<Option<KvSnapshot>>> {
        let table = self.table_by_id(table_id)?;
        if !table.descriptor.has_primary_key() {
            return Ok(vec![None; table.descriptor.buckets as usize]);
        }
        (0..table.descriptor.buckets as i32)
            .map(|bucket| {
                let id = BucketId { table_id, partition_id, bucket };
                self.existing_log(id)?;
                let kv = self.kv_bucket(&table, id)?;
                let latest = lock(&kv).latest_snapshot();
                Ok(latest)
            })
            .collect()
    }

    /// One batch of a KV snapshot, and how many batches it has.
    pub fn fetch_kv_snapshot(&self, id: BucketId, snapshot_id: i64, index: i32) -> Result<(RecordBatch, i32)> {
        self.existing_log(id)?;
        kv::read_snapshot_batch(&self.kv_dir(id), snapshot_id, index)
    }

    fn kv_dir(&self, id: BucketId) -> PathBuf {
        self.bucket_dir("kv", id)
    }

    /// The state of a primary-key bucket, recovered from its snapshot and log on first use.
    /// After a column was added, the state is rebuilt in the new schema (from the snapshot and the log, whose older
    /// rows read the new column as null).
    fn kv_bucket(&self, table: &TableInfo, id: BucketId) -> Result<Arc<Mutex<KvBucket>>> {
        let schema = table.descriptor.arrow_schema();
        let cached =
            |all: &HashMap<BucketId, KvEntry>| all.get(&id).filter(|(s, _)| *s == schema).map(|(_, kv)| Arc::clone(kv));
        if let Some(kv) = cached(&lock(&self.kv)) {
            return Ok(kv);
        }
        // Lock order: a bucket's log, then the map (a writer holds its bucket's state, then its log).
        let log = self.log(id)?;
        let log = lock(&log);
        let mut all = lock(&self.kv);
        if let Some(kv) = cached(&all) {
            return Ok(kv);
        }
        let kv = KvBucket::open(&self.kv_dir(id), &table.descriptor, &log, self.config.kv_snapshot_every)?;
        let kv = Arc::new(Mutex::new(kv));
        all.insert(id, (schema, Arc::clone(&kv)));
        Ok(kv)
    }

    /// Reads stored batches from `offset` on, up to `max_bytes` (at least one batch when there is one).
    pub fn fetch(&self, id: BucketId, offset: i64, max_bytes: usize) -> Result<Fetched> {
        let log = self.existing_log(id)?;
        let (planned, high_watermark, log_start_offset) = {
            let log = lock(&log);
            (log.plan_read(offset, max_bytes)?, log.end_offset(), log.start_offset())
        };
        Ok(Fetched { high_watermark, log_start_offset, batches: planned.execute()? })
    }

    /// Reads many buckets in one pass, as a multi-bucket FetchLog does: each ask answered in order, until
    /// `max_bytes` are read in all. The first bucket with data gets at least one batch whatever the budget (and
    /// each bucket at least one while budget is left); once it is spent, the rest answer empty with their high
    /// watermark and are asked again.
    pub fn fetch_many(&self, asks: &[FetchAsk], max_bytes: usize) -> Vec<Result<Fetched>> {
        let mut total = 0usize;
        asks.iter()
            .map(|ask| {
                let (table_id, partition_id, bucket) = ask.bucket;
                let id = BucketId { table_id, partition_id, bucket };
                let most = fetch_budget(ask.max_bytes);
                let budget = most.min(max_bytes.saturating_sub(total));
                let fetched = if total > 0 && budget == 0 {
                    let log = self.existing_log(id)?;
                    let log = lock(&log);
                    Fetched { high_watermark: log.end_offset(), log_start_offset: log.start_offset(), batches: vec![] }
                } else {
                    self.fetch(id, ask.offset, budget.max(1))?
                };
                total = total.saturating_add(fetched.batches.iter().map(|b| b.records.len()).sum());
                Ok(fetched)
            })
            .collect()
    }

    /// The offset of the first batch appended at or after `timestamp` (ms); the end offset if none was.
    pub fn offset_for_timestamp(&self, id: BucketId, timestamp: i64) -> Result<i64> {
        let log = self.existing_log(id)?;
        let log = lock(&log);
        Ok(log.offset_for_timestamp(timestamp))
    }

    /// The earliest (`latest == false`) or latest offset of a bucket.
    pub fn list_offset(&self, id: BucketId, latest: bool) -> Result<i64> {
        let log = self.existing_log(id)?;
        let log = lock(&log);
        Ok(if latest { log.end_offset() } else { log.start_offset() })
    }

    /// The cluster's metrics in the OpenMetrics text format: records produced, and per table the end offsets, the
    /// offsets in the lake and the tiering state.
    pub fn render_metrics(&self) -> String {
        use prometheus_client::metrics::{counter::ConstCounter, family::Family, gauge::Gauge};
        let mut registry = prometheus_client::registry::Registry::with_prefix("fluss_cluster");
        let produced = self.produced.load(std::sync::atomic::Ordering::Relaxed);
        registry.register("records_produced", "Records acknowledged since start.", ConstCounter::new(produced));
        let tables = self.list_tables();
        let ends: HashMap<i64, i64> = {
            let logs = lock(&self.logs);
            let mut ends = HashMap::new();
            for (id, log) in logs.iter() {
                *ends.entry(id.table_id).or_insert(0) += lock(log).end_offset();
            }
            ends
        };
        let lag = Family::<[(&str, String); 2], Gauge>::default();
        let coordinator = self.coordinator();
        for (t, status) in &tables {
            let end = ends.get(&t.table_id).copied().unwrap_or(0);
            let tiered: i64 = coordinator
                .lake_snapshot(t.table_id)
                .map(|l| l.buckets.iter().map(|b| b.log_end_offset).sum())
                .unwrap_or(0);
            let state = status.as_ref().map(|s| s.state.name()).unwrap_or("disabled");
            lag.get_or_create(&[("table", t.path.to_string()), ("state", state.to_string())])
                .set((end - tiered).max(0));
        }
        registry.register("table_lag_offsets", "Records in the cluster not yet recorded as tiered.", lag);
        crate::metrics::encode(&registry)
    }

    /// The log of a bucket that the catalog knows.
    fn existing_log(&self, id: BucketId) -> Result<Arc<Mutex<BucketLog>>> {
        let table = self.table_by_id(id.table_id)?;
        check_bucket(&table, id.bucket)?;
        match (table.descriptor.is_partitioned(), id.partition_id) {
            (true, Some(p)) if table.partitions.values().any(|v| *v == p) => {}
            (false, None) => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::UnknownTableOrBucket,
                    format!("table {} has no partition {:?}", table.path, id.partition_id),
                ));
            }
        }
        self.log(id)
    }

    /// `DATA_DIR/{kind}/t{table}/p{partition}/b{bucket}`.
    fn bucket_dir(&self, kind: &str, id: BucketId) -> PathBuf {
        let partition = id.partition_id.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        self.config
            .data_dir
            .join(kind)
            .join(format!("t{}", id.table_id))
            .join(format!("p{partition}"))
            .join(format!("b{}", id.bucket))
    }

    fn log(&self, id: BucketId) -> Result<Arc<Mutex<BucketLog>>> {
        let mut logs = lock(&self.logs);
        if let Some(log) = logs.get(&id) {
            return Ok(Arc::clone(log));
        }
        let log = Arc::new(Mutex::new(BucketLog::open(&self.bucket_dir("log", id), self.config.segment_bytes)?));
        logs.insert(id, Arc::clone(&log));
        Ok(log)
    }
}

/// Whether any segment of a table on disk holds bytes (read once at start).
fn has_records(data_dir: &std::path::Path, table_id: i64) -> bool {
    fn walk(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
            let path = e.path();
            if path.is_dir() { walk(&path) } else { e.metadata().is_ok_and(|m| m.len() > 0) }
        })
    }
    walk(&data_dir.join("log").join(format!("t{table_id}")))
}

/// The writes of one PutKv request, in order, and the new rows they point at.
struct KvRequest {
    writes: Vec<KvWrite>,
    rows: RecordBatch,
    writer: Option<(i64, i32)>,
}

/// Checks that every row of an upsert belongs in `bucket` by the table's bucketing of its key: a client that
/// disagrees would split one key across two buckets. A Java server has no such check and so no code for it; the
/// refusal is InvalidArgument, which no client retries (CORRUPT_RECORD would be retried forever).
fn check_buckets(table: &TableInfo, keys: &PrimaryKeys, encoded: &[Vec<u8>], bucket: i32) -> Result<()> {
    let home = |key: &Vec<u8>| keys.bucket_of(key, table.descriptor.buckets);
    if let Some((row, b)) = encoded.iter().map(home).enumerate().find(|(_, b)| *b as i32 != bucket) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "row {row} belongs in bucket {b} of table {} by its key ({}), not in bucket {bucket}",
                table.path,
                keys.describe()
            ),
        ));
    }
    Ok(())
}

fn check_bucket(table: &TableInfo, bucket: i32) -> Result<()> {
    if bucket < 0 || bucket as u32 >= table.descriptor.buckets {
        return Err(Error::new(
            ErrorKind::UnknownTableOrBucket,
            format!("table {} has buckets 0..{}, not {bucket}", table.path, table.descriptor.buckets),
        ));
    }
    Ok(())
}

/// Checks a PutKv request's full rows: the table's schema, the named partition's rows only.
fn check_upserts(table: &TableInfo, partition_name: Option<&str>, batches: &[RecordBatch]) -> Result<()> {
    let expected = table.descriptor.arrow_schema();
    for batch in batches {
        let got = batch.schema();
        let same = got.fields().len() == expected.fields().len()
            && got
                .fields()
                .iter()
                .zip(expected.fields())
                .all(|(g, e)| g.name() == e.name() && g.data_type() == e.data_type());
        if !same {
            return Err(Error::new(
                ErrorKind::SchemaMismatch,
                format!("records have schema {} but table {} has {}", describe(&got), table.path, describe(&expected)),
            ));
        }
        check_partition(table, partition_name, batch)?;
    }
    Ok(())
}

/// Checks that every row of a partitioned table's batch belongs to the named partition.
fn check_partition(table: &TableInfo, partition_name: Option<&str>, batch: &RecordBatch) -> Result<()> {
    let key_index = table.descriptor.partition_key.as_ref().and_then(|k| batch.schema().index_of(k).ok());
    let (Some(i), Some(name)) = (key_index, partition_name) else { return Ok(()) };
    let values = cast(batch.column(i), &DataType::Utf8)
        .map_err(|e| Error::new(ErrorKind::Internal, "casting the partition column").with_source(e))?;
    let values = values
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "cast did not give strings"))?;
    if values.null_count() > 0 || values.iter().any(|v| v != Some(name)) {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("records hold rows outside partition {name:?}")));
    }
    Ok(())
}

fn describe(schema: &arrow::datatypes::Schema) -> String {
    let cols: Vec<String> = schema.fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
    format!("[{}]", cols.join(", "))
}
