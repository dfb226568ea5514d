//! Apache Iceberg through the `iceberg` crates: a SQL catalog on SQLite (catalog name `fluss`, default file
//! `WAREHOUSE/catalog.db`; given with `--catalog` for a warehouse on S3) over the warehouse's store. Namespace =
//! Fluss database, table = Fluss table name.
//!
//! Commits are single attempts: tables are created with `commit.retry.num-retries = 0`, because the library's retry
//! loop reloads the table and re-applies the append on top of whatever it finds, which after a lost reply adds the
//! same files twice. After a failed attempt the committer reloads and looks for its own round marker instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef as ArrowSchemaRef};
use async_trait::async_trait;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataFile, DataFileFormat, Literal, ManifestList, NestedField, NullOrder, PartitionKey, PrimitiveType, Schema,
    SortDirection, SortField, SortOrder, Struct, TableProperties, Transform, Type, UnboundPartitionSpec,
    deserialize_data_file_from_json, serialize_data_file_to_json,
};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::lake::outcome::{self, CommitSteps, Published};
use crate::lake::store::{LakeStorage, LakeStorageFactory, Store, Warehouse};
use crate::lake::{
    BUCKET_COLUMN, CommitMarker, LakeCommitter, LakeOptions, LakeTieringFactory, LakeWriter, OFFSET_COLUMN, OffsetsRef,
    TABLE_PROP_TABLE_ID, TIMESTAMP_COLUMN, TableContext, TieredSnapshot, WriterContext, WrittenData, fit_columns,
    sweep,
};
use crate::model::table::{ColumnType, TableDescriptor};

/// The catalog name every Iceberg client uses to find our tables.
pub const CATALOG_NAME: &str = "fluss";

fn lake_err(context: impl Into<String>) -> impl FnOnce(iceberg::Error) -> Error {
    let context = context.into();
    move |e| Error::new(ErrorKind::Lake, context).with_source(e)
}

/// The Iceberg format.
pub struct IcebergFactory {
    catalog: Arc<dyn Catalog>,
    store: Store,
    options: LakeOptions,
}

impl IcebergFactory {
    /// Opens the SQL catalog (`catalog`, or `WAREHOUSE/catalog.db` for a warehouse on local disk) over the store:
    /// the catalog's pointers stay in SQL, every data and metadata file goes to the store.
    pub async fn open(store: Store, catalog: Option<&str>, options: LakeOptions) -> Result<Self> {
        let db_path = match (catalog, store.warehouse().local_dir()) {
            (Some(spec), _) => spec.strip_prefix("sqlite:").map(str::to_string).ok_or_else(|| {
                Error::new(ErrorKind::InvalidArgument, format!("catalog {spec:?} is not of the form sqlite:PATH"))
            })?,
            (None, Some(_)) => format!("{}/catalog.db", super::store::local_path(store.root())),
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "warehouse {}: an Iceberg warehouse on object storage needs --catalog sqlite:PATH (the SQL \
                         catalog cannot live in the bucket)",
                        store.warehouse()
                    ),
                ));
            }
        };
        let catalog = SqlCatalogBuilder::default()
            .uri(format!("sqlite:{db_path}?mode=rwc"))
            .warehouse_location(store.root().to_string())
            .sql_bind_style(SqlBindStyle::QMark)
            .with_storage_factory(Arc::new(LakeStorageFactory(LakeStorage::new(store.clone()))))
            .load(CATALOG_NAME, HashMap::new())
            .await
            .map_err(lake_err(format!("opening the SQL catalog {db_path}")))?;
        Ok(IcebergFactory { catalog: Arc::new(catalog), store, options })
    }

    /// The SQL catalog of a local `warehouse` (as [`IcebergFactory::open`] opens it), for tools and tests that wrap
    /// it.
    pub async fn open_catalog(warehouse: impl Into<Warehouse>) -> Result<Arc<dyn Catalog>> {
        let store = Store::open(&warehouse.into()).await?;
        Ok(Self::open(store, None, LakeOptions::default()).await?.catalog)
    }

    /// A factory over any Iceberg catalog of `warehouse` (tests wrap the SQL catalog to inject faults).
    pub fn with_catalog(
        catalog: Arc<dyn Catalog>,
        warehouse: impl Into<Warehouse>,
        options: LakeOptions,
    ) -> Result<Self> {
        Ok(IcebergFactory { catalog, store: Store::new(&warehouse.into())?, options })
    }

    async fn load(&self, t: &TableContext) -> Result<Table> {
        load_table(self.catalog.as_ref(), t).await
    }

    async fn load_or_create(&self, t: &TableContext) -> Result<Table> {
        let ident = ident(t);
        let exists = self.catalog.table_exists(&ident).await.map_err(lake_err("listing lake tables"))?;
        if exists {
            return self.load(t).await;
        }
        let namespace = ident.namespace().clone();
        if !self.catalog.namespace_exists(&namespace).await.map_err(lake_err("listing namespaces"))? {
            // Another round (or job) may create it at the same moment: losing that race is fine.
            if let Err(e) = self.catalog.create_namespace(&namespace, HashMap::new()).await
                && e.kind() != iceberg::ErrorKind::NamespaceAlreadyExists
            {
                return Err(lake_err(format!("creating namespace {}", t.path.database))(e));
            }
        }
        // Fluss's layout: identity on the partition key, then on `__bucket` (a log table has no bucket key), rows
        // sorted by `__offset` (a split writes them in offset order).
        let schema = iceberg_schema(&t.descriptor)?;
        let source = |name: &str| {
            schema
                .field_by_name(name)
                .map(|f| f.id)
                .ok_or_else(|| Error::new(ErrorKind::Internal, format!("column {name} not in the lake schema")))
        };
        let mut spec = UnboundPartitionSpec::builder();
        if let Some(key) = &t.descriptor.partition_key {
            spec =
                spec.add_partition_field(source(key)?, key, Transform::Identity).map_err(lake_err("partition spec"))?;
        }
        let spec = spec
            .add_partition_field(source(BUCKET_COLUMN)?, BUCKET_COLUMN, Transform::Identity)
            .map_err(lake_err("partition spec"))?;
        let by_offset = SortField::builder()
            .source_id(source(OFFSET_COLUMN)?)
            .transform(Transform::Identity)
            .direction(SortDirection::Ascending)
            .null_order(NullOrder::First)
            .build();
        let sort_order =
            SortOrder::builder().with_sort_field(by_offset).build(&schema).map_err(lake_err("sort order"))?;
        let creation = TableCreation::builder()
            .name(t.path.table.clone())
            .schema(schema)
            .partition_spec(spec.build())
            .sort_order(sort_order)
            .properties([
                (TABLE_PROP_TABLE_ID.to_string(), t.table_id.to_string()),
                (TableProperties::PROPERTY_COMMIT_NUM_RETRIES.to_string(), "0".to_string()),
            ])
            .build();
        tracing::info!(table = %t.path, "creating Iceberg table");
        match self.catalog.create_table(&namespace, creation).await {
            Err(e) if e.kind() == iceberg::ErrorKind::TableAlreadyExists => self.load(t).await,
            created => created.map_err(lake_err(format!("creating lake table {}", t.path))),
        }
    }
}

impl IcebergFactory {
    /// Adds to the lake table the columns the Fluss table gained since (optional: older files read them as null).
    async fn evolve(&self, t: &TableContext, table: Table) -> Result<Table> {
        let expected = iceberg_schema(&t.descriptor)?;
        let current = table.metadata().current_schema().clone();
        let missing: Vec<_> = expected
            .as_struct()
            .fields()
            .iter()
            .filter(|f| current.field_by_name(&f.name).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(table);
        }
        let names: Vec<&str> = missing.iter().map(|f| f.name.as_str()).collect();
        tracing::info!(table = %t.path, columns = ?names, "evolving the lake table's schema");
        let tx = Transaction::new(&table);
        let action = missing.iter().fold(tx.update_schema(), |action, f| {
            action.add_column(AddColumn::optional(&f.name, f.field_type.as_ref().clone()))
        });
        let tx = action.apply(tx).map_err(lake_err("building the schema change"))?;
        tx.commit(self.catalog.as_ref()).await.map_err(lake_err(format!("evolving the schema of {}", t.path)))
    }
}

/// The lake table of `t`, as the catalog has it now.
async fn load_table(catalog: &dyn Catalog, t: &TableContext) -> Result<Table> {
    catalog.load_table(&ident(t)).await.map_err(lake_err(format!("loading lake table {}", t.path)))
}

fn ident(t: &TableContext) -> TableIdent {
    TableIdent::new(NamespaceIdent::new(t.path.database.clone()), t.path.table.clone())
}

fn primitive(ty: ColumnType) -> PrimitiveType {
    match ty {
        ColumnType::Bool => PrimitiveType::Boolean,
        // Iceberg has no narrower integers: TINYINT and SMALLINT widen to int.
        ColumnType::Int8 | ColumnType::Int16 | ColumnType::Int32 => PrimitiveType::Int,
        ColumnType::Int64 => PrimitiveType::Long,
        ColumnType::Float32 => PrimitiveType::Float,
        ColumnType::Float64 => PrimitiveType::Double,
        ColumnType::Decimal { precision, scale } => {
            PrimitiveType::Decimal { precision: u32::from(precision), scale: scale.max(0) as u32 }
        }
        ColumnType::String | ColumnType::Char { .. } => PrimitiveType::String,
        ColumnType::Binary => PrimitiveType::Binary,
        ColumnType::FixedBinary { length } => PrimitiveType::Fixed(u64::from(length)),
        ColumnType::Date => PrimitiveType::Date,
        // Iceberg (v2) keeps times and timestamps in microseconds: nanosecond digits are not kept.
        ColumnType::Time { .. } => PrimitiveType::Time,
        ColumnType::Timestamp { .. } => PrimitiveType::Timestamp,
        ColumnType::TimestampLtz { .. } => PrimitiveType::Timestamptz,
    }
}

/// The Fluss schema plus the system columns, with field ids 1, 2, … in column order.
fn iceberg_schema(d: &TableDescriptor) -> Result<Schema> {
    let mut fields: Vec<(String, PrimitiveType, bool)> =
        d.columns.iter().map(|c| (c.name.clone(), primitive(c.data_type), false)).collect();
    fields.push((BUCKET_COLUMN.into(), PrimitiveType::Int, true));
    fields.push((OFFSET_COLUMN.into(), PrimitiveType::Long, true));
    fields.push((TIMESTAMP_COLUMN.into(), PrimitiveType::Timestamptz, true));
    let fields = fields.into_iter().enumerate().map(|(i, (name, ty, required))| {
        let id = i as i32 + 1;
        Arc::new(if required {
            NestedField::required(id, name, Type::Primitive(ty))
        } else {
            NestedField::optional(id, name, Type::Primitive(ty))
        })
    });
    Schema::builder().with_fields(fields).build().map_err(lake_err("building the Iceberg schema"))
}

/// The lake table must belong to this Fluss table (not to a dropped one of the same name).
fn check_owner(t: &TableContext, table: &Table) -> Result<()> {
    let owner = table.metadata().properties().get(TABLE_PROP_TABLE_ID).map(String::as_str);
    super::check_table_owner(t, owner, |c| table.metadata().current_schema().field_by_name(c).is_some())
}

/// Checks that a lake table still fits the Fluss table: a column retyped or dropped outside is a clear error.
fn check_compatible(t: &TableContext, table: &Table) -> Result<()> {
    let expected = iceberg_schema(&t.descriptor)?;
    let current = table.metadata().current_schema();
    for field in expected.as_struct().fields() {
        match current.field_by_name(&field.name) {
            Some(f) if f.field_type == field.field_type => {}
            Some(f) => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!(
                        "lake table {}: column {} has type {} but the Fluss column is {}",
                        t.path, field.name, f.field_type, field.field_type
                    ),
                ));
            }
            None => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!("lake table {}: column {} is missing", t.path, field.name),
                ));
            }
        }
    }
    Ok(())
}

/// What fills one field of a lake table's partition spec.
enum PartitionSource {
    /// Identity on the Fluss partition key: the split's partition.
    PartitionKey,
    /// Identity on `__bucket`: the split's bucket (one writer writes one bucket).
    Bucket,
}

/// What fills each field of the table's default spec; tables of earlier versions have the partition key only,
/// Fluss's and this version's both. Any other field cannot be filled from a split, and the table is refused.
fn partition_sources(t: &TableContext, table: &Table) -> Result<Vec<PartitionSource>> {
    let metadata = table.metadata();
    let schema = metadata.current_schema();
    let spec = metadata.default_partition_spec();
    spec.fields()
        .iter()
        .map(|field| match (schema.field_by_id(field.source_id).map(|f| f.name.as_str()), &field.transform) {
            (Some(BUCKET_COLUMN), Transform::Identity) => Ok(PartitionSource::Bucket),
            (Some(c), Transform::Identity) if t.descriptor.partition_key.as_deref() == Some(c) => {
                Ok(PartitionSource::PartitionKey)
            }
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "lake table {} is partitioned by {} ({}), which this job cannot fill: it writes identity \
                     partitions on the Fluss partition key and on {BUCKET_COLUMN} only",
                    t.path, field.name, field.transform
                ),
            )),
        })
        .collect()
}

/// A writer's partition: a value per field of the table's spec ([`partition_sources`]).
fn partition_values(t: &TableContext, table: &Table, ctx: &WriterContext) -> Result<Struct> {
    let mut values = Vec::new();
    for source in partition_sources(t, table)? {
        values.push(Some(match source {
            PartitionSource::Bucket => Literal::int(ctx.bucket),
            PartitionSource::PartitionKey => {
                let name = ctx.partition_name.as_deref().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Internal,
                        format!("a split of partitioned table {} without its partition", t.path),
                    )
                })?;
                partition_literal(&t.descriptor, name)?
            }
        }));
    }
    Ok(Struct::from_iter(values))
}

/// The partition value of `name` as an Iceberg literal of the key's type.
fn partition_literal(d: &TableDescriptor, name: &str) -> Result<Literal> {
    let key = d
        .partition_key
        .as_deref()
        .and_then(|k| d.column(k))
        .ok_or_else(|| Error::new(ErrorKind::Internal, "no partition key"))?;
    let bad = || Error::new(ErrorKind::InvalidArgument, format!("partition name {name:?} is not a {}", key.data_type));
    Ok(match key.data_type {
        ColumnType::String => Literal::string(name),
        ColumnType::Int32 => Literal::int(name.parse::<i32>().map_err(|_| bad())?),
        ColumnType::Int64 => Literal::long(name.parse::<i64>().map_err(|_| bad())?),
        ColumnType::Date => {
            let days =
                cast(&(Arc::new(StringArray::from(vec![name])) as ArrayRef), &DataType::Date32).map_err(|_| bad())?;
            let days = days.as_any().downcast_ref::<arrow::array::Date32Array>().ok_or_else(bad)?;
            if days.is_null(0) {
                return Err(bad());
            }
            Literal::date(days.value(0))
        }
        _ => return Err(bad()),
    })
}

/// Walks the history back from the current snapshot to the newest one with a tiering marker.
async fn latest_marker(table: &Table) -> Result<Option<TieredSnapshot>> {
    Ok(tiered_ancestry(table, true).await?.into_iter().next())
}

/// The tiering snapshots among the current snapshot and its ancestors, newest first, with their offsets loaded; with
/// `first_only`, the walk stops at the first one found. A chain cut by expiry before the walk ends is an error: the
/// offsets cannot be recovered from a partial history (refusing to guess).
async fn tiered_ancestry(table: &Table, first_only: bool) -> Result<Vec<TieredSnapshot>> {
    let metadata = table.metadata();
    let mut found = Vec::new();
    let mut next = metadata.current_snapshot_id();
    while let Some(id) = next {
        let Some(snapshot) = metadata.snapshot_by_id(id) else {
            return Err(Error::new(
                ErrorKind::Lake,
                format!(
                    "snapshot {id} of the lake table's history has expired before a tiering marker was found: the \
                     tiered offsets cannot be recovered from the lake (refusing to guess)"
                ),
            ));
        };
        let props = &snapshot.summary().additional_properties;
        if let Some((mut marker, offsets)) = CommitMarker::from_properties(|k| props.get(k).cloned())? {
            match offsets {
                OffsetsRef::Inline(offsets) => marker.offsets = offsets,
                OffsetsRef::File(path) => marker.load_offsets_file(&path, &read_offsets(table, id, &path).await?)?,
            }
            found.push(TieredSnapshot { snapshot_id: id, committed_at_ms: snapshot.timestamp_ms(), marker });
            if first_only {
                break;
            }
        }
        next = snapshot.parent_snapshot_id();
    }
    Ok(found)
}

/// Offsets files of the lake's own (earlier versions wrote them beside the metadata) end so; the sweep knows them by it.
const OFFSETS_EXTENSION: &str = "offsets";

/// The bytes of an offsets file: the cluster's (a path of the cluster's remote data directory, read through the
/// table's FileIO as Fluss's tiering job reads it) or one of the lake's own.
async fn read_offsets(table: &Table, snapshot_id: i64, path: &str) -> Result<bytes::Bytes> {
    let input = table.file_io().new_input(path).map_err(lake_err(format!("opening {path}")))?;
    input.read().await.map_err(|e| {
        Error::new(
            ErrorKind::Lake,
            format!(
                "the offsets file {path} that tiering snapshot {snapshot_id} names cannot be read: the tiered \
                 offsets cannot be recovered (the cluster's remote data directory must be readable by the job)"
            ),
        )
        .with_source(e)
    })
}

/// The snapshot carrying round `round_id`, looked for from the current snapshot back to `base` (exclusive): the
/// round, planned from `base`, can only have landed above it. A history cut before `base` is reached is an error.
fn find_round(table: &Table, round_id: &str, base: Option<i64>) -> Result<Option<i64>> {
    let metadata = table.metadata();
    let mut next = metadata.current_snapshot_id();
    while let Some(id) = next {
        if Some(id) == base {
            return Ok(None);
        }
        let snapshot = metadata.snapshot_by_id(id).ok_or_else(|| {
            Error::new(ErrorKind::Lake, format!("snapshot {id} expired before the walk back to {base:?} ended"))
        })?;
        let props = &snapshot.summary().additional_properties;
        if props.get(crate::lake::PROP_ROUND).map(String::as_str) == Some(round_id) {
            return Ok(Some(id));
        }
        next = snapshot.parent_snapshot_id();
    }
    Ok(None)
}

#[async_trait]
impl LakeTieringFactory for IcebergFactory {
    async fn prepare_table(&self, t: &TableContext) -> Result<Option<TieredSnapshot>> {
        if t.descriptor.has_primary_key() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{} has a primary key: its Iceberg copy needs row-level deletes (equality deletes committed in a \
                     row-delta snapshot), and the iceberg crate (0.10) cannot commit delete files; tier primary-key \
                     tables with --format paimon",
                    t.path
                ),
            ));
        }
        // Whose the table is, before anything is changed in it.
        let table = self.load_or_create(t).await?;
        check_owner(t, &table)?;
        partition_sources(t, &table)?;
        let latest = latest_marker(&table).await?;
        super::check_snapshot_owner(t, latest.as_ref())?;
        let table = self.evolve(t, table).await?;
        check_compatible(t, &table)?;
        Ok(latest)
    }

    async fn create_writer(&self, t: &TableContext, ctx: WriterContext) -> Result<Box<dyn LakeWriter>> {
        let table = self.load(t).await?;
        let metadata = table.metadata();
        let schema = metadata.current_schema().clone();
        let target_schema: ArrowSchemaRef =
            Arc::new(schema_to_arrow_schema(&schema).map_err(lake_err("arrow schema"))?);
        let spec = metadata.default_partition_spec().clone();
        let partition_type = spec.partition_type(&schema).map_err(lake_err("partition type"))?;
        let values = partition_values(t, &table, &ctx)?;
        let partition_key =
            (!spec.fields().is_empty()).then(|| PartitionKey::new(spec.as_ref().clone(), Arc::clone(&schema), values));
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let rolling = RollingFileWriterBuilder::new(
            ParquetWriterBuilder::new(props, Arc::clone(&schema)),
            self.options.target_file_size,
            table.file_io().clone(),
            DefaultLocationGenerator::new(metadata).map_err(lake_err("location generator"))?,
            DefaultFileNameGenerator::new(ctx.file_prefix.clone(), None, DataFileFormat::Parquet),
        );
        let inner =
            DataFileWriterBuilder::new(rolling).build(partition_key).await.map_err(lake_err("data file writer"))?;
        Ok(Box::new(IcebergLakeWriter {
            inner,
            file_io: table.file_io().clone(),
            target_schema,
            partition_type,
            spec_id: spec.spec_id(),
            format_version: metadata.format_version(),
            rows: 0,
        }))
    }

    async fn create_committer(&self, t: &TableContext) -> Result<Box<dyn LakeCommitter>> {
        Ok(Box::new(IcebergCommitter {
            catalog: Arc::clone(&self.catalog),
            store: self.store.clone(),
            table: t.clone(),
        }))
    }
}

type Inner = DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

struct IcebergLakeWriter {
    inner: Inner,
    /// For deleting the files of an aborted writer.
    file_io: iceberg::io::FileIO,
    target_schema: ArrowSchemaRef,
    partition_type: iceberg::spec::StructType,
    spec_id: i32,
    format_version: iceberg::spec::FormatVersion,
    rows: u64,
}

/// The serialized form of a writer's data files.
#[derive(Serialize, Deserialize)]
struct DataFiles {
    spec_id: i32,
    files: Vec<String>,
}

#[async_trait]
impl LakeWriter for IcebergLakeWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        // The field ids Iceberg needs ride in the target schema.
        let columns = fit_columns(&batch, &self.target_schema)?;
        let batch = RecordBatch::try_new(Arc::clone(&self.target_schema), columns)
            .map_err(|e| Error::new(ErrorKind::SchemaMismatch, "records do not fit the lake schema").with_source(e))?;
        self.rows += batch.num_rows() as u64;
        self.inner.write(batch).await.map_err(lake_err("writing Parquet"))
    }

    async fn complete(mut self: Box<Self>) -> Result<WrittenData> {
        let files = self.inner.close().await.map_err(lake_err("closing Parquet files"))?;
        let file_bytes = files.iter().map(DataFile::file_size_in_bytes).sum();
        let count = files.len() as u64;
        let files = files
            .into_iter()
            .map(|f| {
                serialize_data_file_to_json(f, &self.partition_type, self.format_version)
                    .map_err(lake_err("serializing a data file"))
            })
            .collect::<Result<Vec<_>>>()?;
        let payload = serde_json::to_vec(&DataFiles { spec_id: self.spec_id, files })
            .map_err(|e| Error::new(ErrorKind::Internal, "serializing data files").with_source(e))?;
        Ok(WrittenData { payload, files: count, file_bytes, rows: self.rows })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        for f in self.inner.close().await.map_err(lake_err("closing Parquet files"))? {
            self.file_io.delete(f.file_path()).await.map_err(lake_err(format!("deleting {}", f.file_path())))?;
        }
        Ok(())
    }
}

struct IcebergCommitter {
    catalog: Arc<dyn Catalog>,
    store: Store,
    table: TableContext,
}

impl IcebergCommitter {
    fn data_files(table: &Table, written: &[WrittenData]) -> Result<Vec<DataFile>> {
        let metadata = table.metadata();
        let schema = metadata.current_schema();
        let mut out = Vec::new();
        for w in written {
            let files: DataFiles = serde_json::from_slice(&w.payload).map_err(|e| {
                Error::new(ErrorKind::CorruptMessage, "write result is not Iceberg data files").with_source(e)
            })?;
            let spec = metadata
                .partition_spec_by_id(files.spec_id)
                .ok_or_else(|| Error::new(ErrorKind::Lake, format!("partition spec {} is gone", files.spec_id)))?;
            let partition_type = spec.partition_type(schema).map_err(lake_err("partition type"))?;
            for f in files.files {
                out.push(
                    deserialize_data_file_from_json(&f, files.spec_id, &partition_type, schema)
                        .map_err(lake_err("reading a data file"))?,
                );
            }
        }
        Ok(out)
    }
}

/// Iceberg's answers: a fast append carrying the marker in its snapshot summary, committed through the fenced
/// catalog; the round is found by its round id.
#[async_trait]
impl CommitSteps for IcebergCommitter {
    type Table = Table;
    type Payload = Transaction;
    type Key = ();

    async fn load(&self) -> Result<Table> {
        load_table(self.catalog.as_ref(), &self.table).await
    }

    async fn latest(&self, table: &Table) -> Result<Option<TieredSnapshot>> {
        latest_marker(table).await
    }

    async fn prepare(
        &self,
        table: &Table,
        written: Vec<WrittenData>,
        marker: &CommitMarker,
    ) -> Result<(Transaction, ())> {
        let properties = marker.to_properties()?;
        let files = Self::data_files(table, &written)?;
        let tx = Transaction::new(table);
        let action = tx.fast_append().add_data_files(files).set_snapshot_properties(properties.into_iter().collect());
        Ok((action.apply(tx).map_err(lake_err("building the append"))?, ()))
    }

    async fn publish(&self, table: &Table, tx: Transaction, _: &()) -> Result<Published> {
        // Conditional on the table being exactly as loaded.
        let fenced = FencedCatalog {
            inner: Arc::clone(&self.catalog),
            expected_current: table.metadata().current_snapshot_id(),
        };
        Ok(match tx.commit(&fenced as &dyn Catalog).await {
            Ok(committed) => match committed.metadata().current_snapshot_id() {
                Some(id) => Published::Landed(id),
                None => Published::Failed(Error::new(ErrorKind::Internal, "commit left no current snapshot")),
            },
            // Refused by the fence or by the catalog's compare-and-swap (nothing applied), or failed in a way that
            // does not say.
            Err(e) => {
                let refused = e.message().starts_with(MOVED) || e.kind() == iceberg::ErrorKind::CatalogCommitConflicts;
                let e = lake_err(format!("committing to lake table {}", self.table.path))(e);
                if refused { Published::Refused(e) } else { Published::Failed(e) }
            }
        })
    }

    async fn find(&self, table: &Table, _: &(), marker: &CommitMarker, base: Option<i64>) -> Result<Option<i64>> {
        find_round(table, &marker.round_id, base)
    }
}

#[async_trait]
impl LakeCommitter for IcebergCommitter {
    async fn tiered_ancestry(&self, first_only: bool) -> Result<Vec<TieredSnapshot>> {
        tiered_ancestry(&self.load().await?, first_only).await
    }

    async fn commit(&self, written: Vec<WrittenData>, marker: &CommitMarker, base: Option<i64>) -> Result<i64> {
        let table = self.load().await?;
        outcome::drive(self, &self.table.path.to_string(), table, written, marker, base).await
    }

    async fn abort(&self, written: Vec<WrittenData>) -> Result<()> {
        let table = self.load().await?;
        for f in Self::data_files(&table, &written)? {
            table.file_io().delete(f.file_path()).await.map_err(lake_err(format!("deleting {}", f.file_path())))?;
        }
        Ok(())
    }

    async fn sweep(&self, min_age: std::time::Duration) -> Result<sweep::Swept> {
        let table = self.load().await?;
        let path = self.table.path.to_string();
        // References from the table reloaded after the listing (invariant 2 of the sweep).
        let referenced = || async { referenced_files(&self.load().await?).await };
        let root = table.metadata().location();
        sweep::sweep_dir(&self.store, &path, root, is_sweep_candidate, min_age, referenced).await
    }
}

/// What the sweep may delete (table-relative): data files, manifests, manifest lists and offsets files; never
/// metadata files (the catalog's history).
fn is_sweep_candidate(relative: &Path) -> bool {
    relative.starts_with("data")
        || (relative.starts_with("metadata")
            && relative.extension().is_some_and(|e| e == "avro" || e == OFFSETS_EXTENSION))
}

/// The names of the manifest lists, manifests and data files of every snapshot of `table`.
async fn referenced_files(table: &Table) -> Result<BTreeSet<String>> {
    let metadata = table.metadata();
    let io = table.file_io();
    let mut names = BTreeSet::new();
    let mut manifests = BTreeMap::new();
    for snapshot in metadata.snapshots() {
        names.extend(
            snapshot.summary().additional_properties.get(crate::lake::PROP_OFFSETS).map(|p| sweep::file_name(p)),
        );
        let list = snapshot.manifest_list();
        names.insert(sweep::file_name(list));
        let bytes = io.new_input(list).map_err(lake_err(format!("opening {list}")))?.read().await;
        let bytes = bytes.map_err(lake_err(format!("reading {list}")))?;
        let list = ManifestList::parse_with_version(&bytes, metadata.format_version())
            .map_err(lake_err(format!("parsing {list}")))?;
        for manifest in list.entries() {
            manifests.entry(manifest.manifest_path.clone()).or_insert_with(|| manifest.clone());
        }
    }
    for (path, manifest) in manifests {
        names.insert(sweep::file_name(&path));
        let manifest = manifest.load_manifest(io).await.map_err(lake_err(format!("reading {path}")))?;
        for entry in manifest.entries() {
            names.insert(sweep::file_name(entry.data_file().file_path()));
        }
    }
    Ok(names)
}

const MOVED: &str = "fluss-tiering: the table moved";

/// The SQL catalog, made to refuse a commit unless the table's current snapshot is still `expected_current`.
///
/// `Transaction::commit` reloads the table and re-applies the append on whatever it finds: that rebase is how a
/// stale writer adds its files on top of another writer's commit. Checking here, in `update_table`, catches a
/// rebase; a commit by someone else after this check fails the append's own requirement (main still at the snapshot
/// the append was built on) in the catalog's compare-and-swap. Together the commit is conditional end to end.
#[derive(Debug)]
struct FencedCatalog {
    inner: Arc<dyn Catalog>,
    expected_current: Option<i64>,
}

#[async_trait]
impl Catalog for FencedCatalog {
    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<iceberg::Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<iceberg::Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(&self, namespace: &NamespaceIdent, creation: TableCreation) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        self.inner.load_table(table).await
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: iceberg::TableCommit) -> iceberg::Result<Table> {
        let current = self.inner.load_table(commit.identifier()).await?.metadata().current_snapshot_id();
        if current != self.expected_current {
            return Err(iceberg::Error::new(
                iceberg::ErrorKind::CatalogCommitConflicts,
                format!("{MOVED}: its current snapshot is {current:?}, not {:?}", self.expected_current),
            ));
        }
        self.inner.update_table(commit).await
    }
}
