//! Apache Paimon through the `paimon` crate: a filesystem catalog on the warehouse (database = Fluss
//! database, table = Fluss table name). Log tables become append tables (bucket-unaware); primary-key tables become
//! primary-key tables with the same key, bucket count and partition key, each Fluss bucket written as the Paimon
//! bucket of the same number. Both carry the system columns.
//!
//! Exactly once, Paimon's way: every commit of a table is made by one commit user ([`COMMIT_USER`]) under a commit
//! identifier of its round's own, and Paimon refuses (filters) an identifier at or below one already committed.
//! paimon-rust 0.4 writes no snapshot properties, so the round's marker (round id, epoch, offsets, and the cluster's
//! offsets file that Fluss's contract puts in `fluss-offsets`) lives in `TABLE/fluss-offsets/IDENTIFIER.json`, and is
//! believed only when a snapshot of our commit user with that identifier exists: the lake alone says where tiering
//! got to. Snapshots of Fluss's own tiering service (commit user [`FLUSS_COMMIT_USER`], identifier `Long.MAX_VALUE`,
//! the offsets file in their `fluss-offsets` property) are tiering snapshots as well: a table Fluss tiered before is
//! tiered on from where it got to.
//!
//! Invariants:
//! 1. A round's identifier comes from the lake, not from the coordinator: one above our commit user's newest
//!    snapshot's and above every marker file already there (rounds that never landed, rounds still under way), taken
//!    by creating the marker exclusively.
//!    Tiering epochs cannot serve: Fluss's coordinator counts them from 0 again after a restart, which would filter
//!    every commit until the epochs caught up and overwrite the markers of committed snapshots.
//! 2. A marker file, once created, is never rewritten: a snapshot's marker is the one its round wrote.
//! 3. Before committing, the committer checks, under its claim ([`claim`]), that the table's newest tiering snapshot
//!    is still the one the round was planned from; a round that allocated below a newer commit is filtered.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use async_trait::async_trait;
use paimon::catalog::Identifier;
use paimon::spec::{
    BigIntType, BinaryType, BooleanType, CharType, ColumnMove, CommitKind, DataType, DateType, DecimalType, DoubleType,
    FloatType, IntType, LocalZonedTimestampType, Manifest, ManifestList, Schema, SchemaChange, SmallIntType, Snapshot,
    TimeType, TimestampType, TinyIntType, VALUE_KIND_FIELD_NAME, VarBinaryType, VarCharType,
};
use paimon::table::{COMMIT_MESSAGE_SERIALIZER_VERSION, CommitMessage, Table, TableCommit, TableWrite};
use paimon::{Catalog, CatalogFactory, CatalogOptions, Options};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::lake::outcome::{self, CommitSteps, Published};
use crate::lake::store::{Store, Warehouse};
use crate::lake::{
    BUCKET_COLUMN, CommitMarker, FLUSS_COMMIT_USER, LakeCommitter, LakeOptions, LakeTieringFactory, LakeWriter,
    OFFSET_COLUMN, OffsetsRef, PROP_COMMIT_USER, PROP_OFFSETS, TABLE_PROP_TABLE_ID, TIMESTAMP_COLUMN, TableContext,
    TieredSnapshot, WriterContext, WrittenData, fit_columns, sweep,
};
use crate::model::bucketing::DATALAKE_FORMAT;
use crate::model::change::CHANGE_TYPE_COLUMN;
use crate::model::table::{ColumnType, TableDescriptor};

mod claim;

/// The commit user of every tiering commit.
pub const COMMIT_USER: &str = "fluss-tiering";
/// Where the markers live, inside the table's directory.
const MARKER_DIR: &str = "fluss-offsets";

fn lake_err(context: impl Into<String>) -> impl FnOnce(paimon::Error) -> Error {
    let context = context.into();
    move |e| Error::new(ErrorKind::Lake, context).with_source(e)
}

/// The Paimon format.
pub struct PaimonFactory {
    catalog: Arc<dyn Catalog>,
    publish: Arc<dyn Publish>,
    store: Store,
    options: LakeOptions,
}

/// Publishes a round's snapshot: the one step of a commit that changes the table, beneath everything the committer
/// decides (claims, the base check, the look-up after an error). Paimon's own filesystem commit
/// ([`PaimonPublish`]) by default; a seam for tests that make it fail as a file system or a concurrent writer can,
/// and for stores that offer a conditional put.
#[async_trait]
pub trait Publish: Send + Sync + 'static {
    async fn publish(&self, table: &Table, messages: Vec<CommitMessage>, identifier: i64) -> Result<()>;
}

/// Paimon's single-attempt commit (its own retry rebases onto whatever it finds, unchecked), publishing even without
/// files: a round whose changes net to zero still records its offsets.
pub struct PaimonPublish;

#[async_trait]
impl Publish for PaimonPublish {
    async fn publish(&self, table: &Table, messages: Vec<CommitMessage>, identifier: i64) -> Result<()> {
        table_commit(table)?
            .filter_and_commit_with_identifier(messages, identifier)
            .await
            .map_err(lake_err(format!("committing to lake table at {}", table.location())))
    }
}

/// A single-attempt commit handle that publishes even without files (also what aborts go through).
fn table_commit(table: &Table) -> Result<TableCommit> {
    let table = table.copy_with_options(HashMap::from([("commit.max-retries".to_string(), "0".to_string())]));
    let builder = table.new_write_builder().with_commit_user(COMMIT_USER).map_err(lake_err("commit user"))?;
    Ok(builder.new_commit().with_ignore_empty_commit(false))
}

impl PaimonFactory {
    /// Opens the filesystem catalog on the store.
    pub async fn open(store: Store, options: LakeOptions) -> Result<Self> {
        let catalog = Self::catalog(&store).await?;
        Ok(PaimonFactory { catalog, publish: Arc::new(PaimonPublish), store, options })
    }

    /// The filesystem catalog on `warehouse` (created if missing), for tools and tests that wrap it.
    pub async fn open_catalog(warehouse: impl Into<Warehouse>) -> Result<Arc<dyn Catalog>> {
        Self::catalog(&Store::open(&warehouse.into()).await?).await
    }

    async fn catalog(store: &Store) -> Result<Arc<dyn Catalog>> {
        let mut catalog_options = Options::new();
        catalog_options.set(CatalogOptions::WAREHOUSE, store.root().to_string());
        for (key, value) in store.paimon_options() {
            catalog_options.set(key, value);
        }
        CatalogFactory::create(catalog_options).await.map_err(lake_err("opening the Paimon catalog"))
    }

    /// The format over `catalog` (the filesystem catalog on `warehouse`, or a wrapper around it), publishing with
    /// `publish`.
    pub fn with_catalog(
        catalog: Arc<dyn Catalog>,
        warehouse: impl Into<Warehouse>,
        publish: Arc<dyn Publish>,
        options: LakeOptions,
    ) -> Result<Self> {
        Ok(PaimonFactory { catalog, publish, store: Store::new(&warehouse.into())?, options })
    }

    async fn load(&self, t: &TableContext) -> Result<Table> {
        load_table(self.catalog.as_ref(), t).await
    }

    async fn load_or_create(&self, t: &TableContext) -> Result<Table> {
        match self.catalog.get_table(&ident(t)).await {
            Ok(table) => return Ok(table),
            Err(paimon::Error::TableNotExist { .. } | paimon::Error::DatabaseNotExist { .. }) => {}
            Err(e) => {
                let half_created = self.half_created(t).await.unwrap_or_else(|check| {
                    tracing::warn!(table = %t.path, error = %check, "could not tell whether the lake table is half-created");
                    false
                });
                if !half_created {
                    return Err(lake_err(format!("loading lake table {}", t.path))(e));
                }
                // The catalog writes a new table's schema file in place: a crash while creating it leaves a table
                // that cannot be loaded. It never got a snapshot, so nothing is lost by creating it again.
                tracing::warn!(table = %t.path, "lake table left half-created; creating it again");
                self.store.delete_all(&format!("{}/schema", self.table_dir(t))).await?;
            }
        }
        self.catalog
            .create_database(&t.path.database, true, HashMap::new())
            .await
            .map_err(lake_err(format!("creating database {}", t.path.database)))?;
        tracing::info!(table = %t.path, primary_key = ?t.descriptor.primary_key, "creating Paimon table");
        match self.catalog.create_table(&ident(t), paimon_schema(t)?, false).await {
            Ok(()) | Err(paimon::Error::TableAlreadyExist { .. }) => self.load(t).await,
            Err(e) => Err(lake_err(format!("creating lake table {}", t.path))(e)),
        }
    }

    /// The URI of a table's directory.
    fn table_dir(&self, t: &TableContext) -> String {
        self.store.uri(&format!("{}.db/{}", t.path.database, t.path.table))
    }

    /// Whether the table's creation did not finish: no snapshot, and a first schema file that is not JSON (the
    /// catalog writes it in place). Any other load error is left alone: a table whose first round is still writing
    /// has a good schema and no snapshot yet, and its files must stay.
    async fn half_created(&self, t: &TableContext) -> Result<bool> {
        let dir = self.table_dir(t);
        let snapshots = self.store.list(&format!("{dir}/snapshot")).await?;
        if snapshots.iter().any(|f| f.relative.starts_with("snapshot-")) {
            return Ok(false);
        }
        let schema = self.store.read(&format!("{dir}/schema/schema-0")).await?;
        Ok(schema.is_some_and(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).is_err()))
    }

    /// Adds to the lake table the columns the Fluss table gained since (nullable: older files read them as null),
    /// before the system columns, where Fluss's coordinator adds them.
    async fn evolve(&self, t: &TableContext, table: Table) -> Result<Table> {
        let existing: Vec<&str> = table.schema().fields().iter().map(|f| f.name()).collect();
        let before_system = existing.contains(&BUCKET_COLUMN);
        let changes: Vec<SchemaChange> = t
            .descriptor
            .columns
            .iter()
            .filter(|c| !existing.contains(&c.name.as_str()))
            .map(|c| {
                Ok(SchemaChange::AddColumn {
                    field_names: vec![c.name.clone()],
                    data_type: paimon_type(c.data_type, true)?,
                    comment: None,
                    column_move: before_system.then(|| ColumnMove::move_before(c.name.clone(), BUCKET_COLUMN.into())),
                })
            })
            .collect::<Result<_>>()?;
        if changes.is_empty() {
            return Ok(table);
        }
        tracing::info!(table = %t.path, columns = changes.len(), "evolving the lake table's schema");
        self.catalog
            .alter_table(&ident(t), changes, false)
            .await
            .map_err(lake_err(format!("evolving the schema of {}", t.path)))?;
        self.load(t).await
    }
}

/// The lake table of `t`, as the catalog has it now.
async fn load_table(catalog: &dyn Catalog, t: &TableContext) -> Result<Table> {
    catalog.get_table(&ident(t)).await.map_err(lake_err(format!("loading lake table {}", t.path)))
}

fn ident(t: &TableContext) -> Identifier {
    Identifier::new(t.path.database.clone(), t.path.table.clone())
}

fn paimon_type(ty: ColumnType, nullable: bool) -> Result<DataType> {
    let bad = |e: paimon::Error| Error::new(ErrorKind::SchemaMismatch, "no Paimon type for a column").with_source(e);
    Ok(match ty {
        ColumnType::Bool => DataType::Boolean(BooleanType::with_nullable(nullable)),
        ColumnType::Int32 => DataType::Int(IntType::with_nullable(nullable)),
        ColumnType::Int64 => DataType::BigInt(BigIntType::with_nullable(nullable)),
        ColumnType::Float32 => DataType::Float(FloatType::with_nullable(nullable)),
        ColumnType::Float64 => DataType::Double(DoubleType::with_nullable(nullable)),
        ColumnType::Decimal { precision, scale } => DataType::Decimal(
            DecimalType::with_nullable(nullable, u32::from(precision), scale.max(0) as u32).map_err(bad)?,
        ),
        ColumnType::String => {
            DataType::VarChar(VarCharType::with_nullable(nullable, VarCharType::MAX_LENGTH).map_err(bad)?)
        }
        ColumnType::Binary => {
            DataType::VarBinary(VarBinaryType::try_new(nullable, VarBinaryType::MAX_LENGTH).map_err(bad)?)
        }
        ColumnType::Date => DataType::Date(DateType::with_nullable(nullable)),
        ColumnType::Int8 => DataType::TinyInt(TinyIntType::with_nullable(nullable)),
        ColumnType::Int16 => DataType::SmallInt(SmallIntType::with_nullable(nullable)),
        ColumnType::Char { length } => DataType::Char(CharType::with_nullable(nullable, length as usize).map_err(bad)?),
        ColumnType::FixedBinary { length } => {
            DataType::Binary(BinaryType::with_nullable(nullable, length as usize).map_err(bad)?)
        }
        // Paimon reads and writes TIME as milliseconds of the day: finer digits are not kept.
        ColumnType::Time { precision } => {
            DataType::Time(TimeType::with_nullable(nullable, u32::from(precision.min(3))).map_err(bad)?)
        }
        ColumnType::Timestamp { precision } => {
            DataType::Timestamp(TimestampType::with_nullable(nullable, u32::from(precision)).map_err(bad)?)
        }
        ColumnType::TimestampLtz { precision } => DataType::LocalZonedTimestamp(
            LocalZonedTimestampType::with_nullable(nullable, u32::from(precision)).map_err(bad)?,
        ),
    })
}

/// The lake table as Fluss 0.9's coordinator creates it (`PaimonLakeCatalog`): the Fluss columns, then the system
/// columns `__bucket INT`, `__offset BIGINT`, `__timestamp TIMESTAMP_LTZ(3)` (nullable); the key, bucket count
/// (`bucket-key`: the key less the partition key) and partition key of the Fluss table; `partition.legacy-name =
/// false`, every Fluss property as `fluss.<key>`. Ours besides: `fluss.table-id` (which table it is) and Parquet
/// files (what this job writes). Not Fluss's `changelog-producer = input`: a round writes each key's net change (an
/// update without its before-image), which streaming readers must not take for a complete changelog.
fn paimon_schema(t: &TableContext) -> Result<Schema> {
    let d: &TableDescriptor = &t.descriptor;
    let mut builder = Schema::builder();
    for c in &d.columns {
        let in_key = d.primary_key.contains(&c.name) || d.partition_key.as_ref() == Some(&c.name);
        builder = builder.column(c.name.clone(), paimon_type(c.data_type, !in_key)?);
    }
    let ts = LocalZonedTimestampType::with_nullable(true, 3)
        .map_err(|e| Error::new(ErrorKind::Internal, "timestamp type").with_source(e))?;
    builder = builder
        .column(BUCKET_COLUMN, DataType::Int(IntType::with_nullable(true)))
        .column(OFFSET_COLUMN, DataType::BigInt(BigIntType::with_nullable(true)))
        .column(TIMESTAMP_COLUMN, DataType::LocalZonedTimestamp(ts))
        .option("partition.legacy-name", "false");
    for (key, value) in d.properties.iter().filter(|(k, _)| !k.starts_with("table.datalake.paimon.")) {
        builder = builder.option(format!("fluss.{key}"), value.clone());
    }
    builder = builder.option(TABLE_PROP_TABLE_ID, t.table_id.to_string()).option("file.format", "parquet");
    if let Some(key) = &d.partition_key {
        builder = builder.partition_keys([key.clone()]);
    }
    builder = if d.primary_key.is_empty() {
        builder.option("bucket", "-1")
    } else {
        let bucket_key: Vec<&str> =
            d.primary_key.iter().map(String::as_str).filter(|k| d.partition_key.as_deref() != Some(*k)).collect();
        let builder = builder.primary_key(d.primary_key.clone()).option("bucket", d.buckets.to_string());
        match bucket_key.is_empty() {
            true => builder,
            false => builder.option("bucket-key", bucket_key.join(",")),
        }
    };
    builder.build().map_err(lake_err(format!("building the Paimon schema of {}", t.path)))
}

/// The lake table must belong to this Fluss table ([`super::check_table_owner`]).
fn check_owner(t: &TableContext, table: &Table) -> Result<()> {
    let owner = table.schema().options().get(TABLE_PROP_TABLE_ID).map(String::as_str);
    super::check_table_owner(t, owner, |c| table.schema().fields().iter().any(|f| f.name() == c))
}

/// Checks that every Fluss column has a lake column of the same type: a column retyped or dropped outside is a clear
/// error, not values cast (or nulled) to fit.
fn check_compatible(t: &TableContext, table: &Table) -> Result<()> {
    let lake = write_schema(table)?;
    for c in &t.descriptor.columns {
        let expected =
            paimon::arrow::paimon_type_to_arrow(&paimon_type(c.data_type, true)?).map_err(lake_err("arrow type"))?;
        match lake.field_with_name(&c.name) {
            Ok(f) if *f.data_type() == expected => {}
            Ok(f) => {
                return Err(Error::new(
                    ErrorKind::SchemaMismatch,
                    format!(
                        "lake table {}: column {} has type {} but the Fluss column is {} ({expected})",
                        t.path,
                        c.name,
                        f.data_type(),
                        c.data_type
                    ),
                ));
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::SchemaMismatch,
                    format!("lake table {}: column {} is missing", t.path, c.name),
                ));
            }
        }
    }
    Ok(())
}

/// The arrow schema the table's writer expects: its fields, in its order.
fn write_schema(table: &Table) -> Result<ArrowSchemaRef> {
    let fields = table
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let ty = paimon::arrow::paimon_type_to_arrow(f.data_type()).map_err(lake_err("arrow type"))?;
            Ok(Field::new(f.name(), ty, f.data_type().is_nullable()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(ArrowSchema::new(fields)))
}

/// A primary-key table's rows sit in the lake bucket the cluster gave them, so they must have been bucketed by
/// Paimon's function (the table says `table.datalake.format = paimon`): otherwise a Paimon reader that prunes
/// buckets by a key's hash would not find it.
fn check_bucketing(t: &TableContext) -> Result<()> {
    let format = t.descriptor.properties.get(DATALAKE_FORMAT).map(|f| f.to_ascii_lowercase());
    if t.descriptor.has_primary_key() && format.as_deref() != Some("paimon") {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} is a primary-key table whose keys were bucketed for {} ({DATALAKE_FORMAT}), not by Paimon's \
                 function: Paimon readers would look for its keys in other buckets; tier it to the lake format it \
                 was created for, or recreate it on a cluster configured for Paimon",
                t.path,
                format.as_deref().unwrap_or("no lake")
            ),
        ));
    }
    Ok(())
}

#[async_trait]
impl LakeTieringFactory for PaimonFactory {
    /// A log table is a bucket-unaware append table (`bucket = -1`): its files are per partition, not per bucket.
    fn files_span_buckets(&self, t: &TableContext) -> bool {
        !t.descriptor.has_primary_key()
    }

    async fn prepare_table(&self, t: &TableContext) -> Result<Option<TieredSnapshot>> {
        check_bucketing(t)?;
        // Whose the table is, before anything is changed in it.
        let table = self.load_or_create(t).await?;
        check_owner(t, &table)?;
        let latest = tiered_ancestry(&table, true).await?.into_iter().next();
        super::check_snapshot_owner(t, latest.as_ref())?;
        let table = self.evolve(t, table).await?;
        check_compatible(t, &table)?;
        Ok(latest)
    }

    async fn create_writer(&self, t: &TableContext, ctx: WriterContext) -> Result<Box<dyn LakeWriter>> {
        let table = self.load(t).await?;
        check_owner(t, &table)?;
        // A writer rolls to a new file at the job's target size (a per-writer option, not the table's).
        let size = HashMap::from([("target-file-size".to_string(), self.options.target_file_size.to_string())]);
        let table = table.copy_with_options(size);
        let target_schema = write_schema(&table)?;
        let write = table
            .new_write_builder()
            .with_commit_user(COMMIT_USER)
            .and_then(|b| b.new_write())
            .map_err(lake_err(format!("opening a writer on {}", t.path)))?;
        let bucket = (!t.descriptor.primary_key.is_empty()).then_some(ctx.bucket);
        Ok(Box::new(PaimonWriter { write, table, target_schema, bucket, rows: 0 }))
    }

    async fn create_committer(&self, t: &TableContext) -> Result<Box<dyn LakeCommitter>> {
        Ok(Box::new(PaimonCommitter {
            catalog: Arc::clone(&self.catalog),
            publish: Arc::clone(&self.publish),
            store: self.store.clone(),
            table: t.clone(),
            claim_lease: self.options.commit_timeout,
        }))
    }
}

struct PaimonWriter {
    write: TableWrite,
    /// The table written to, for deleting the files of an aborted writer.
    table: Table,
    target_schema: ArrowSchemaRef,
    /// The Fluss bucket, written as the Paimon bucket of a primary-key table; `None` for an append table.
    bucket: Option<i32>,
    rows: u64,
}

/// The serialized commit messages of one writer.
#[derive(Serialize, Deserialize)]
struct Messages(Vec<Vec<u8>>);

#[async_trait]
impl LakeWriter for PaimonWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        let mut columns = fit_columns(&batch, &self.target_schema)?;
        let mut schema = Arc::clone(&self.target_schema);
        // A primary-key batch says per row whether it inserts, updates or deletes its key: Paimon's row kind.
        if let Some(kinds) = batch.column_by_name(CHANGE_TYPE_COLUMN) {
            let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(VALUE_KIND_FIELD_NAME, arrow::datatypes::DataType::Int8, false));
            schema = Arc::new(ArrowSchema::new(fields));
            columns.push(Arc::clone(kinds));
        }
        let batch = RecordBatch::try_new(schema, columns)
            .map_err(|e| Error::new(ErrorKind::SchemaMismatch, "records do not fit the lake schema").with_source(e))?;
        self.rows += n as u64;
        self.write.write_arrow(&[batch], self.bucket).await.map_err(lake_err("writing Paimon files"))
    }

    async fn complete(mut self: Box<Self>) -> Result<WrittenData> {
        let messages = self.write.prepare_commit().await.map_err(lake_err("closing Paimon files"))?;
        let files = messages.iter().flat_map(|m| &m.new_files);
        let (count, file_bytes) = files.fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.file_size.max(0) as u64));
        let bytes = messages.iter().map(CommitMessage::serialize).collect::<paimon::Result<Vec<_>>>();
        let payload = serde_json::to_vec(&Messages(bytes.map_err(lake_err("serializing commit messages"))?))
            .map_err(|e| Error::new(ErrorKind::Internal, "serializing commit messages").with_source(e))?;
        Ok(WrittenData { payload, files: count, file_bytes, rows: self.rows })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        let messages = self.write.prepare_commit().await.map_err(lake_err("closing Paimon files"))?;
        table_commit(&self.table)?.abort(&messages).await.map_err(lake_err("deleting the files of a failed split"))
    }
}

fn messages(written: &[WrittenData]) -> Result<Vec<CommitMessage>> {
    let mut out = Vec::new();
    for w in written {
        let Messages(bytes) = serde_json::from_slice(&w.payload).map_err(|e| {
            Error::new(ErrorKind::CorruptMessage, "write result is not Paimon commit messages").with_source(e)
        })?;
        for b in bytes {
            out.push(
                CommitMessage::deserialize(COMMIT_MESSAGE_SERIALIZER_VERSION, &b)
                    .map_err(lake_err("reading a commit message"))?,
            );
        }
    }
    Ok(out)
}

/// The file name of the marker of commit identifier `identifier`, in [`MARKER_DIR`].
fn marker_name(identifier: i64) -> String {
    format!("{identifier}.json")
}

/// The URI of a table's [`MARKER_DIR`].
fn marker_dir(table: &Table) -> String {
    format!("{}/{MARKER_DIR}", table.location().trim_end_matches('/'))
}

fn marker_path(table: &Table, identifier: i64) -> String {
    format!("{}/{}", marker_dir(table), marker_name(identifier))
}

/// Writes `marker` under an identifier above `own` (our newest snapshot's) and above every marker file there, and
/// returns it (invariants 1 and 2): the exclusive creation makes the identifier this round's alone.
async fn write_marker(store: &Store, table: &Table, marker: &CommitMarker, own: i64) -> Result<i64> {
    let listed = store.list(&marker_dir(table)).await?;
    let highest = listed.iter().filter_map(|f| f.relative.strip_suffix(".json")?.parse::<i64>().ok()).max();
    let body = serde_json::to_vec(marker)
        .map_err(|e| Error::new(ErrorKind::Internal, "serializing the marker").with_source(e))?;
    let mut identifier = highest.unwrap_or(0).max(own);
    loop {
        identifier = identifier
            .checked_add(1)
            .ok_or_else(|| Error::new(ErrorKind::Lake, "the lake table's commit identifiers are exhausted"))?;
        if store.create_exclusive(&marker_path(table, identifier), body.clone()).await? {
            return Ok(identifier);
        }
    }
}

async fn read_marker(table: &Table, snapshot: &Snapshot) -> Result<CommitMarker> {
    let path = marker_path(table, snapshot.commit_identifier());
    let input = table.file_io().new_input(&path).map_err(lake_err(format!("opening {path}")))?;
    let bytes = input.read().await.map_err(|e| {
        Error::new(
            ErrorKind::Lake,
            format!(
                "snapshot {} was committed by tiering but its offsets file {path} cannot be read: the tiered offsets \
                 cannot be recovered from the lake (refusing to guess)",
                snapshot.id()
            ),
        )
        .with_source(e)
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(ErrorKind::Lake, format!("offsets file {path} is malformed")).with_source(e))
}

/// Whether a snapshot was committed by tiering: ours, or an append of Fluss's own tiering service (which, compacting
/// or expiring partitions, also commits snapshots of other kinds under its user, without offsets).
fn is_tiering(snapshot: &Snapshot) -> bool {
    let fluss_offsets = || snapshot.properties().is_some_and(|p| p.contains_key(PROP_OFFSETS));
    snapshot.commit_user() == COMMIT_USER
        || (snapshot.commit_user() == FLUSS_COMMIT_USER
            && (*snapshot.commit_kind() == CommitKind::APPEND || fluss_offsets()))
}

/// The snapshots that `keep` picks, newest first, above snapshot `above` (exclusive; `None`: all); with
/// `first_only`, the walk stops at the first one. Also says where expiry cut the history above `above`, if it did.
async fn walk_back(
    table: &Table,
    above: Option<i64>,
    first_only: bool,
    keep: impl Fn(&Snapshot) -> bool,
) -> Result<(Vec<Snapshot>, Option<i64>)> {
    let snapshots = table.snapshot_manager();
    let Some(latest) = snapshots.get_latest_snapshot_id().await.map_err(lake_err("listing snapshots"))? else {
        return Ok((Vec::new(), None));
    };
    let earliest = snapshots.earliest_snapshot_id().await.map_err(lake_err("listing snapshots"))?.unwrap_or(1);
    let floor = above.map_or(1, |b| b + 1);
    let mut found = Vec::new();
    for id in (floor.max(earliest)..=latest).rev() {
        let snapshot = snapshots.get_snapshot(id).await.map_err(lake_err(format!("reading snapshot {id}")))?;
        if keep(&snapshot) {
            found.push(snapshot);
            if first_only {
                return Ok((found, None));
            }
        }
    }
    Ok((found, (earliest > floor).then_some(earliest)))
}

/// The tiering snapshots (ours and Fluss's), newest first, above snapshot `above` (exclusive; `None`: all); with
/// `first_only`, the walk stops at the first one. A history cut by expiry before the walk ends is an error: the
/// tiered offsets cannot be recovered from a partial history (refusing to guess).
async fn tiering_snapshots(table: &Table, above: Option<i64>, first_only: bool) -> Result<Vec<Snapshot>> {
    let (found, cut) = walk_back(table, above, first_only, is_tiering).await?;
    let floor = above.map_or(1, |b| b + 1);
    if let Some(earliest) = cut.filter(|_| above.is_some() || found.is_empty()) {
        return Err(Error::new(
            ErrorKind::Lake,
            format!(
                "snapshots before {earliest} of the lake table have expired before the walk back to {} ended: the \
                 tiered offsets cannot be recovered from the lake (refusing to guess)",
                floor - 1
            ),
        ));
    }
    Ok(found)
}

/// A tiering snapshot with its marker: ours in its marker file, Fluss's from its properties and offsets file.
async fn tiered(table: &Table, snapshot: &Snapshot) -> Result<TieredSnapshot> {
    let marker = match snapshot.commit_user() == COMMIT_USER {
        true => read_marker(table, snapshot).await?,
        false => fluss_marker(table, snapshot).await?,
    };
    Ok(TieredSnapshot { snapshot_id: snapshot.id(), committed_at_ms: snapshot.time_millis() as i64, marker })
}

/// The marker of a snapshot of Fluss's own tiering service: its `fluss-offsets` property names the cluster's
/// offsets file (as Fluss's `PaimonLakeCommitter` reads it back, a snapshot without properties is an error).
async fn fluss_marker(table: &Table, snapshot: &Snapshot) -> Result<CommitMarker> {
    let unreadable = |why: &str| {
        Error::new(
            ErrorKind::Lake,
            format!(
                "snapshot {} of Fluss's tiering service ({FLUSS_COMMIT_USER}) {why}: the tiered offsets cannot be \
                 recovered from the lake (refusing to guess)",
                snapshot.id()
            ),
        )
    };
    let properties = snapshot.properties().ok_or_else(|| unreadable("has no properties"))?;
    // Paimon keeps the commit user beside the properties, where Iceberg's summary holds it as `commit-user`.
    let get = |k: &str| match k {
        PROP_COMMIT_USER => Some(snapshot.commit_user().to_string()),
        _ => properties.get(k).cloned(),
    };
    let Some((mut marker, offsets)) = CommitMarker::from_properties(get)? else {
        return Err(unreadable(&format!("has no {PROP_OFFSETS} property")));
    };
    let OffsetsRef::File(path) = offsets else {
        return Err(unreadable(&format!("holds its offsets inline in {PROP_OFFSETS}")));
    };
    let input = table.file_io().new_input(&path).map_err(lake_err(format!("opening {path}")))?;
    let bytes = input
        .read()
        .await
        .map_err(|e| unreadable(&format!("names the offsets file {path}, which cannot be read")).with_source(e))?;
    marker.load_offsets_file(&path, &bytes)?;
    Ok(marker)
}

/// The commit identifier of our newest snapshot (0: none left), which Paimon's filter compares a new one with: it
/// looks past other users' snapshots, Fluss's (whose identifier is `Long.MAX_VALUE`) among them.
async fn own_identifier(table: &Table) -> Result<i64> {
    let (ours, _) = walk_back(table, None, true, |s| s.commit_user() == COMMIT_USER).await?;
    Ok(ours.first().map_or(0, Snapshot::commit_identifier))
}

/// The tiering snapshots, newest first, each with its marker; with `first_only`, only the newest.
async fn tiered_ancestry(table: &Table, first_only: bool) -> Result<Vec<TieredSnapshot>> {
    let mut out = Vec::new();
    for snapshot in tiering_snapshots(table, None, first_only).await? {
        out.push(tiered(table, &snapshot).await?);
    }
    Ok(out)
}

/// The snapshot of round `marker`, committed under `identifier`, looked for above `base`, where a round planned from
/// `base` lands.
async fn find_round(table: &Table, marker: &CommitMarker, identifier: i64, base: Option<i64>) -> Result<Option<i64>> {
    for snapshot in tiering_snapshots(table, base, false).await? {
        if snapshot.commit_user() == COMMIT_USER
            && snapshot.commit_identifier() == identifier
            && read_marker(table, &snapshot).await?.round_id == marker.round_id
        {
            return Ok(Some(snapshot.id()));
        }
    }
    Ok(None)
}

/// What the sweep may delete (table-relative): files in bucket directories, manifests and manifest lists, round
/// markers (and temporary `.tmp` files an older version wrote them through), and claims.
fn is_sweep_candidate(relative: &Path) -> bool {
    let parent = relative.parent().unwrap_or(Path::new(""));
    let parent_name = parent.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let name = relative.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    parent_name.starts_with("bucket-")
        || (parent == Path::new("manifest") && name.starts_with("manifest-"))
        || (parent == Path::new(MARKER_DIR) && (name.ends_with(".json") || name.ends_with(".tmp")))
        || parent == Path::new(MARKER_DIR).join("claims")
}

/// The names of every file a live snapshot needs: data files (and their extra files) named by any manifest entry,
/// the manifests, the manifest lists, the index manifest, and the round marker of its commit identifier.
async fn referenced_files(table: &Table) -> Result<BTreeSet<String>> {
    let snapshots = table.snapshot_manager();
    let io = table.file_io();
    let mut names = BTreeSet::new();
    let mut lists = BTreeSet::new();
    for snapshot in snapshots.list_all().await.map_err(lake_err("listing snapshots"))? {
        lists.insert(snapshot.base_manifest_list().to_string());
        lists.insert(snapshot.delta_manifest_list().to_string());
        lists.extend(snapshot.changelog_manifest_list().map(str::to_string));
        names.extend(snapshot.index_manifest().map(str::to_string));
        if snapshot.commit_user() == COMMIT_USER {
            names.insert(marker_name(snapshot.commit_identifier()));
        }
    }
    let mut manifests = BTreeSet::new();
    for list in &lists {
        let path = snapshots.manifest_path(list);
        for meta in ManifestList::read(io, &path).await.map_err(lake_err(format!("reading {path}")))? {
            manifests.insert(meta.file_name().to_string());
        }
    }
    for manifest in &manifests {
        let path = snapshots.manifest_path(manifest);
        for entry in Manifest::read(io, &path).await.map_err(lake_err(format!("reading {path}")))? {
            names.insert(entry.file().file_name.clone());
            names.extend(entry.file().extra_files.iter().cloned());
        }
    }
    names.extend(lists);
    names.extend(manifests);
    Ok(names)
}

struct PaimonCommitter {
    catalog: Arc<dyn Catalog>,
    publish: Arc<dyn Publish>,
    store: Store,
    table: TableContext,
    /// How long a round's claim on the successor of its base lasts.
    claim_lease: std::time::Duration,
}

impl PaimonCommitter {
    async fn load(&self) -> Result<Table> {
        load_table(self.catalog.as_ref(), &self.table).await
    }
}

/// A round's commit under its claim on the successor of its base: Paimon's answers to the commit's questions. The
/// marker file is written first (a snapshot with its identifier is only ever read together with it), the snapshot is
/// published under that identifier while the claim holds, and the round is found by identifier and round id.
struct Claimed<'a> {
    committer: &'a PaimonCommitter,
    claims: &'a claim::Claims<'a>,
    held: &'a claim::Held,
}

#[async_trait]
impl CommitSteps for Claimed<'_> {
    type Table = Table;
    type Payload = Vec<CommitMessage>;
    type Key = i64;

    async fn load(&self) -> Result<Table> {
        self.committer.load().await
    }

    async fn latest(&self, table: &Table) -> Result<Option<TieredSnapshot>> {
        Ok(tiered_ancestry(table, true).await?.into_iter().next())
    }

    async fn prepare(
        &self,
        table: &Table,
        written: Vec<WrittenData>,
        marker: &CommitMarker,
    ) -> Result<(Vec<CommitMessage>, i64)> {
        let store = &self.committer.store;
        let identifier = write_marker(store, table, marker, own_identifier(table).await?).await?;
        Ok((messages(&written)?, identifier))
    }

    async fn publish(&self, table: &Table, messages: Vec<CommitMessage>, identifier: &i64) -> Result<Published> {
        // A round that stalled past its lease gives way to the one that took the claim over.
        self.claims.check(self.held).await?;
        // Paimon filters an identifier at or below one already committed and answers success all the same.
        Ok(match self.committer.publish.publish(table, messages, *identifier).await {
            Ok(()) => Published::WentThrough,
            Err(e) => Published::Failed(e),
        })
    }

    async fn find(
        &self,
        table: &Table,
        identifier: &i64,
        marker: &CommitMarker,
        base: Option<i64>,
    ) -> Result<Option<i64>> {
        find_round(table, marker, *identifier, base).await
    }
}

#[async_trait]
impl LakeCommitter for PaimonCommitter {
    async fn tiered_ancestry(&self, first_only: bool) -> Result<Vec<TieredSnapshot>> {
        tiered_ancestry(&self.load().await?, first_only).await
    }

    async fn commit(&self, written: Vec<WrittenData>, marker: &CommitMarker, base: Option<i64>) -> Result<i64> {
        let table = self.load().await?;
        check_owner(&self.table, &table)?;
        // The right to commit on top of `base`, exclusive among tiering rounds, taken before the base is checked: a
        // round that checked first could see the base unchanged, lose the race to another round's commit, and then
        // commit on top of it with the same rows.
        let claims = claim::Claims::of(&self.store, &table);
        let held = claims.take(base, &marker.round_id, marker.tiering_epoch, self.claim_lease).await?;
        let round = Claimed { committer: self, claims: &claims, held: &held };
        let result = outcome::drive(&round, &self.table.path.to_string(), table, written, marker, base).await;
        match &result {
            Ok(landed) => claims.clear_below(*landed).await,
            // Not landed, and never will: the next round from this base need not wait out the lease.
            Err(e) if e.kind() != ErrorKind::CommitOutcomeUnknown => claims.release(&held).await,
            Err(_) => {}
        }
        result
    }

    async fn sweep(&self, min_age: std::time::Duration) -> Result<sweep::Swept> {
        let table = self.load().await?;
        let root = table.location().trim_end_matches('/');
        // Invariant 1 of the sweep: tags, branches and long-lived changelogs hold snapshots the sweep does not read.
        for dir in ["tag", "branch", "changelog"] {
            if !self.store.list(&format!("{root}/{dir}")).await?.is_empty() {
                tracing::info!(table = %self.table.path, dir, "the lake table has tags, branches or a changelog: not swept");
                return Ok(sweep::Swept::default());
            }
        }
        let path = self.table.path.to_string();
        sweep::sweep_dir(&self.store, &path, root, is_sweep_candidate, min_age, || referenced_files(&table)).await
    }

    async fn abort(&self, written: Vec<WrittenData>) -> Result<()> {
        let table = self.load().await?;
        table_commit(&table)?.abort(&messages(&written)?).await.map_err(lake_err("deleting uncommitted files"))
    }
}
