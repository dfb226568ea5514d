//! A deterministic load generator: every value is a pure function of (seed, row number, column), so a checker can
//! recompute what was produced without storing it.
//!
//! Rules a checker relies on:
//! - an `int64` column named `id` holds the row number;
//! - the partition column holds partition `k = mix(seed, row) % partitions`, spelled `p{k}` for strings, `k` for
//!   integers and `2026-01-01 + k days` for dates;
//! - row `r` goes to bucket `r % buckets`;
//! - other values come from [`value_hash`]; about one in 17 of them is null.
//!
//! Primary-key tables (key `id`, with the partition column if partitioned): row `r` is an operation ([`KvOp`]):
//! an insert of key `r`, or, as often as [`KvMix`] says, an update or a delete of an earlier key. An upsert of key
//! `k` by row `r` carries row `r`'s values with `id = k` and the partition of row `k`; key `k` lives in the bucket
//! the table's key bucketing gives it ([`crate::model::bucketing`]), as a Fluss client would place it. [`Workload::kv_state`] replays the operations: the table's final state, key by key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::model::bucketing::{KV_FORMAT_VERSION, PrimaryKeys};
use crate::model::table::{ColumnType, TableDescriptor};
use crate::rpc::ClusterClient;

/// Days from 1970-01-01 to 2026-01-01.
const DAY_2026: i32 = 20454;
/// Microseconds from the epoch to 2026-01-01.
const MICROS_2026: i64 = 1_767_225_600_000_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    /// Distinct partitions for a partitioned table.
    pub partitions: u32,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The hash behind the value of `column` in `row`.
pub fn value_hash(seed: u64, row: u64, column: usize) -> u64 {
    splitmix64(seed ^ splitmix64(row) ^ splitmix64(0xC0_FFEE + column as u64).rotate_left(17))
}

impl Workload {
    /// The partition index of `row`.
    pub fn partition_of(&self, row: u64) -> u32 {
        (splitmix64(self.seed ^ row.wrapping_mul(0x2545_F491_4F6C_DD1D)) % u64::from(self.partitions.max(1))) as u32
    }

    /// The partition name of partition `k` for a key of type `ty`.
    pub fn partition_name(k: u32, ty: ColumnType) -> String {
        match ty {
            ColumnType::Date => {
                let days = DAY_2026 + k as i32;
                // Partition names of dates are ISO dates, as the cast to string spells them.
                let date = arrow::temporal_conversions::date32_to_datetime(days).map(|d| d.date().to_string());
                date.unwrap_or_else(|| days.to_string())
            }
            ColumnType::Int32 | ColumnType::Int64 => k.to_string(),
            _ => format!("p{k}"),
        }
    }

    /// Builds the batch of the given rows (all of one partition when the table is partitioned).
    pub fn batch(&self, table: &TableDescriptor, rows: &[u64]) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = table
            .columns
            .iter()
            .enumerate()
            .map(|(ci, col)| {
                let is_partition_key = table.partition_key.as_deref() == Some(col.name.as_str());
                let is_id = col.name == "id" && col.data_type == ColumnType::Int64;
                let h = |r: u64| value_hash(self.seed, r, ci);
                let null = |r: u64| !is_partition_key && !is_id && h(r) % 17 == 0;
                let part = |r: u64| self.partition_of(r);
                let array: ArrayRef = match col.data_type {
                    ColumnType::Bool => {
                        let mut b = BooleanBuilder::with_capacity(rows.len());
                        rows.iter().for_each(|&r| b.append_option((!null(r)).then(|| h(r) & 1 == 1)));
                        Arc::new(b.finish())
                    }
                    ColumnType::Int32 => {
                        let mut b = Int32Builder::with_capacity(rows.len());
                        rows.iter().for_each(|&r| {
                            b.append_option(
                                (!null(r)).then(|| if is_partition_key { part(r) as i32 } else { h(r) as i32 }),
                            )
                        });
                        Arc::new(b.finish())
                    }
                    ColumnType::Int64 => {
                        let mut b = Int64Builder::with_capacity(rows.len());
                        rows.iter().for_each(|&r| {
                            b.append_option((!null(r)).then(|| {
                                if is_id {
                                    r as i64
                                } else if is_partition_key {
                                    i64::from(part(r))
                                } else {
                                    h(r) as i64
                                }
                            }))
                        });
                        Arc::new(b.finish())
                    }
                    ColumnType::Float32 => {
                        let mut b = Float32Builder::with_capacity(rows.len());
                        rows.iter()
                            .for_each(|&r| b.append_option((!null(r)).then(|| (h(r) % 1_000_000) as f32 / 64.0)));
                        Arc::new(b.finish())
                    }
                    ColumnType::Float64 => {
                        let mut b = Float64Builder::with_capacity(rows.len());
                        rows.iter()
                            .for_each(|&r| b.append_option((!null(r)).then(|| (h(r) % 1_000_000_000) as f64 / 1024.0)));
                        Arc::new(b.finish())
                    }
                    ColumnType::Decimal { precision, scale } => {
                        let modulus = 10i128.pow(u32::from(precision.min(18)));
                        let mut b = Decimal128Builder::with_capacity(rows.len());
                        rows.iter().for_each(|&r| b.append_option((!null(r)).then(|| i128::from(h(r)) % modulus)));
                        Arc::new(
                            b.finish()
                                .with_precision_and_scale(precision, scale)
                                .map_err(|e| Error::new(ErrorKind::InvalidArgument, "decimal type").with_source(e))?,
                        )
                    }
                    ColumnType::String => {
                        let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 24);
                        rows.iter().for_each(|&r| {
                            if is_partition_key {
                                b.append_value(Self::partition_name(part(r), ColumnType::String));
                            } else if null(r) {
                                b.append_null();
                            } else {
                                b.append_value(format!("{}-{:016x}", col.name, h(r)));
                            }
                        });
                        Arc::new(b.finish())
                    }
                    ColumnType::Binary => {
                        let mut b = BinaryBuilder::with_capacity(rows.len(), rows.len() * 8);
                        rows.iter().for_each(|&r| b.append_option((!null(r)).then(|| h(r).to_le_bytes())));
                        Arc::new(b.finish())
                    }
                    ColumnType::Date => {
                        let mut b = Date32Builder::with_capacity(rows.len());
                        rows.iter().for_each(|&r| {
                            b.append_option((!null(r)).then(|| {
                                if is_partition_key {
                                    DAY_2026 + part(r) as i32
                                } else {
                                    DAY_2026 + (h(r) % 1000) as i32
                                }
                            }))
                        });
                        Arc::new(b.finish())
                    }
                    ColumnType::Timestamp { precision: 6 } => {
                        let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
                        rows.iter().for_each(|&r| b.append_option((!null(r)).then(|| MICROS_2026 + r as i64 * 1000)));
                        Arc::new(b.finish())
                    }
                    ColumnType::Char { length } => {
                        let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * length as usize);
                        rows.iter().for_each(|&r| {
                            let text = format!("{:x}", h(r));
                            b.append_option(
                                (!null(r)).then(|| text.chars().cycle().take(length as usize).collect::<String>()),
                            )
                        });
                        Arc::new(b.finish())
                    }
                    ColumnType::FixedBinary { length } => {
                        let width = i32::try_from(length)
                            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "binary(N) is too wide"))?;
                        let mut b = FixedSizeBinaryBuilder::with_capacity(rows.len(), width);
                        for &r in rows {
                            match null(r) {
                                true => b.append_null(),
                                false => {
                                    let bytes: Vec<u8> =
                                        h(r).to_le_bytes().into_iter().cycle().take(length as usize).collect();
                                    b.append_value(bytes).map_err(|e| {
                                        Error::new(ErrorKind::Internal, "binary(N) value").with_source(e)
                                    })?;
                                }
                            }
                        }
                        Arc::new(b.finish())
                    }
                    // The rest are integers in another unit: generated as such and cast to the column's type.
                    ty @ (ColumnType::Int8
                    | ColumnType::Int16
                    | ColumnType::Time { .. }
                    | ColumnType::Timestamp { .. }
                    | ColumnType::TimestampLtz { .. }) => {
                        let arrow = ty.to_arrow();
                        let value = |r: u64| -> i64 {
                            match arrow {
                                DataType::Int8 => (h(r) % 200) as i64 - 100,
                                DataType::Int16 => (h(r) % 60_000) as i64 - 30_000,
                                // Seconds, milliseconds, … of a day.
                                DataType::Time32(unit) | DataType::Time64(unit) => {
                                    (h(r) % 86_400) as i64 * per_second(unit)
                                }
                                DataType::Timestamp(unit, _) => (MICROS_2026 / 1_000_000 + r as i64) * per_second(unit),
                                _ => 0,
                            }
                        };
                        let mut b = Int64Builder::with_capacity(rows.len());
                        rows.iter().for_each(|&r| b.append_option((!null(r)).then(|| value(r))));
                        let ints: ArrayRef = Arc::new(b.finish());
                        let as_i32 = matches!(arrow, DataType::Time32(_) | DataType::Int8 | DataType::Int16);
                        let ints = if as_i32 { arrow::compute::cast(&ints, &DataType::Int32) } else { Ok(ints) };
                        ints.and_then(|a| arrow::compute::cast(&a, &arrow))
                            .map_err(|e| Error::new(ErrorKind::Internal, "generating a column").with_source(e))?
                    }
                };
                Ok(array)
            })
            .collect::<Result<_>>()?;
        RecordBatch::try_new(table.arrow_schema(), columns)
            .map_err(|e| Error::new(ErrorKind::Internal, "building a generated batch").with_source(e))
    }
}

/// How many of `unit` make a second.
fn per_second(unit: arrow::datatypes::TimeUnit) -> i64 {
    use arrow::datatypes::TimeUnit::*;
    match unit {
        Second => 1,
        Millisecond => 1_000,
        Microsecond => 1_000_000,
        Nanosecond => 1_000_000_000,
    }
}

/// How a primary-key workload mixes operations: the shares of rows that update and delete an earlier key.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KvMix {
    pub update: f64,
    pub delete: f64,
}

/// What row `r` of a primary-key workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp {
    /// Insert or update `key` with the row's values.
    Upsert {
        key: u64,
    },
    Delete {
        key: u64,
    },
}

impl KvOp {
    pub fn key(self) -> u64 {
        match self {
            KvOp::Upsert { key } | KvOp::Delete { key } => key,
        }
    }
}

impl Workload {
    /// The operation of `row`.
    pub fn kv_op(&self, row: u64, mix: KvMix) -> KvOp {
        let h = splitmix64(self.seed ^ 0x005E_ED0F_0935 ^ row.wrapping_mul(0x9E37_79B9));
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        let earlier = || splitmix64(h) % row.max(1);
        if row > 0 && u < mix.delete {
            KvOp::Delete { key: earlier() }
        } else if row > 0 && u < mix.delete + mix.update {
            KvOp::Upsert { key: earlier() }
        } else {
            KvOp::Upsert { key: row }
        }
    }

    /// The state after rows `0..rows`: each live key with the row that last upserted it.
    pub fn kv_state(&self, rows: u64, mix: KvMix) -> std::collections::BTreeMap<u64, u64> {
        let mut state = std::collections::BTreeMap::new();
        for r in 0..rows {
            match self.kv_op(r, mix) {
                KvOp::Upsert { key } => state.insert(key, r),
                KvOp::Delete { key } => state.remove(&key),
            };
        }
        state
    }

    /// The rows that upsert `(row, key)` pairs: row `row`'s values, with `id = key` and the partition of `key`.
    pub fn kv_batch(&self, table: &TableDescriptor, ops: &[(u64, u64)]) -> Result<RecordBatch> {
        let rows: Vec<u64> = ops.iter().map(|(r, _)| *r).collect();
        let keys: Vec<u64> = ops.iter().map(|(_, k)| *k).collect();
        let (values, of_keys) = (self.batch(table, &rows)?, self.batch(table, &keys)?);
        let columns = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let keyed = c.name == "id" || table.partition_key.as_deref() == Some(c.name.as_str());
                Arc::clone(if keyed { of_keys.column(i) } else { values.column(i) })
            })
            .collect();
        RecordBatch::try_new(table.arrow_schema(), columns)
            .map_err(|e| Error::new(ErrorKind::Internal, "building a generated batch").with_source(e))
    }
}

/// The generator drives primary-key tables keyed by `id` (and the partition column): check a table is one.
fn check_kv_table(table: &TableDescriptor) -> Result<()> {
    let id_key = table.column("id").is_some_and(|c| c.data_type == ColumnType::Int64);
    let allowed = |k: &String| k == "id" || table.partition_key.as_ref() == Some(k);
    if !id_key || !table.primary_key.contains(&"id".to_string()) || !table.primary_key.iter().all(allowed) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "the generator writes primary-key tables keyed by an int64 column `id` (plus the partition column)",
        ));
    }
    Ok(())
}

/// What one produce run did.
#[derive(Debug, Clone, Default)]
pub struct ProduceReport {
    pub rows: u64,
    pub requests: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Options of a produce run.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub start_row: u64,
    pub rows: u64,
    /// Rows per chunk; a chunk becomes one request per (partition, bucket) it touches.
    pub batch: u64,
    /// Rows per second, or unlimited.
    pub rate: Option<f64>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Primary-key tables: how rows mix inserts, updates and deletes.
    pub kv: KvMix,
}

/// Produces rows `[start_row, start_row + rows)` of `workload` into a table.
pub async fn produce(
    client: &ClusterClient,
    table_id: i64,
    table: &TableDescriptor,
    workload: &Workload,
    opts: &ProduceOptions,
) -> Result<ProduceReport> {
    if opts.batch == 0 {
        return Err(Error::new(ErrorKind::InvalidArgument, "--batch must be at least 1"));
    }
    let ratios = [opts.kv.update, opts.kv.delete];
    if ratios.iter().any(|r| !(0.0..=1.0).contains(r)) || opts.kv.update + opts.kv.delete > 1.0 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "update and delete ratios must be in 0..=1, summing to at most 1",
        ));
    }
    if table.has_primary_key() {
        return produce_kv(client, table_id, table, workload, opts).await;
    }
    if opts.kv != KvMix::default() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "update and delete ratios apply to primary-key tables only",
        ));
    }
    let key_type = table.partition_key.as_ref().and_then(|k| table.column(k)).map(|c| c.data_type);
    let started = Instant::now();
    let end = opts.start_row + opts.rows;
    let chunks = (opts.start_row..end).step_by(opts.batch as usize).map(|lo| (lo, (lo + opts.batch).min(end)));
    let mut report = ProduceReport::default();
    // Build requests chunk by chunk: one per (partition, bucket) group of the chunk.
    let requests = stream::iter(chunks)
        .then(|(lo, hi)| async move {
            pace(started, lo - opts.start_row, opts.rate).await;
            let mut groups: std::collections::BTreeMap<(u32, u32), Vec<u64>> = Default::default();
            for r in lo..hi {
                let p = if key_type.is_some() { workload.partition_of(r) } else { 0 };
                groups.entry((p, (r % u64::from(table.buckets)) as u32)).or_default().push(r);
            }
            let built = groups
                .into_iter()
                .map(|((p, bucket), rows)| {
                    let batch = workload.batch(table, &rows)?;
                    let partition = key_type.map(|t| Workload::partition_name(p, t));
                    Ok((partition, bucket as i32, crate::model::record::encode_all(&[batch])?, rows.len() as u64))
                })
                .collect::<Result<Vec<_>>>();
            built.map(|v| stream::iter(v.into_iter().map(Ok::<_, Error>)))
        })
        .try_flatten()
        .map_ok(|(partition, bucket, bytes, rows): (Option<String>, i32, bytes::Bytes, u64)| {
            let client = client.clone();
            async move {
                let n = bytes.len() as u64;
                client.produce_records(table_id, partition.as_deref(), bucket, bytes).await?;
                Ok::<_, Error>((rows, n))
            }
        })
        .try_buffer_unordered(opts.concurrency.max(1));
    futures::pin_mut!(requests);
    while let Some((rows, bytes)) = requests.try_next().await? {
        report.rows += rows;
        report.bytes += bytes;
        report.requests += 1;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Waits until `done` rows are due at `rate` rows per second since `started` (no wait without a rate).
async fn pace(started: Instant, done: u64, rate: Option<f64>) {
    if let Some(rate) = rate {
        tokio::time::sleep_until((started + Duration::from_secs_f64(done as f64 / rate.max(1e-9))).into()).await;
    }
}

/// `produce` for a primary-key table: chunk by chunk, each (partition, bucket) gets its operations in row order, as
/// runs of upserts (PutKv) and deletes (DeleteKv); buckets of a chunk are written at once, chunks one after another,
/// so every key sees its operations in order.
async fn produce_kv(
    client: &ClusterClient,
    table_id: i64,
    table: &TableDescriptor,
    workload: &Workload,
    opts: &ProduceOptions,
) -> Result<ProduceReport> {
    check_kv_table(table)?;
    if !table.properties.contains_key(KV_FORMAT_VERSION) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "produce needs the table's descriptor as the cluster holds it (its options say how keys are bucketed)",
        ));
    }
    let keys = PrimaryKeys::of(table)?;
    let key_type = table.partition_key.as_ref().and_then(|k| table.column(k)).map(|c| c.data_type);
    let started = Instant::now();
    let end = opts.start_row + opts.rows;
    let mut report = ProduceReport::default();
    for lo in (opts.start_row..end).step_by(opts.batch as usize) {
        pace(started, lo - opts.start_row, opts.rate).await;
        let ops: Vec<(u64, KvOp)> = (lo..(lo + opts.batch).min(end)).map(|r| (r, workload.kv_op(r, opts.kv))).collect();
        // Each key in the bucket the table's key bucketing gives it, as a Fluss client would place it.
        let pairs: Vec<(u64, u64)> = ops.iter().map(|(r, op)| (*r, op.key())).collect();
        let chunk = workload.kv_batch(table, &pairs)?;
        let buckets = keys.buckets(&keys.columns_by_name(&chunk)?, table.buckets)?;
        let mut groups: std::collections::BTreeMap<(u32, u32), Vec<(u64, KvOp)>> = Default::default();
        for ((r, op), bucket) in ops.into_iter().zip(buckets) {
            let p = if key_type.is_some() { workload.partition_of(op.key()) } else { 0 };
            groups.entry((p, bucket)).or_default().push((r, op));
        }
        let requests = groups.into_iter().map(|((p, bucket), ops)| {
            let partition = key_type.map(|t| Workload::partition_name(p, t));
            async move {
                let mut sent = (0u64, 0u64);
                for run in ops.chunk_by(|a, b| matches!(a.1, KvOp::Delete { .. }) == matches!(b.1, KvOp::Delete { .. }))
                {
                    let delete = matches!(run[0].1, KvOp::Delete { .. });
                    let pairs: Vec<(u64, u64)> = run.iter().map(|(r, op)| (*r, op.key())).collect();
                    let batch = workload.kv_batch(table, &pairs)?;
                    sent.1 += batch.get_array_memory_size() as u64;
                    client.put_kv(table_id, partition.as_deref(), bucket as i32, &[batch], delete).await?;
                    sent.0 += 1;
                }
                Ok::<_, Error>((ops.len() as u64, sent))
            }
        });
        for (rows, (requests, bytes)) in futures::future::try_join_all(requests).await? {
            report.rows += rows;
            report.requests += requests;
            report.bytes += bytes;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::parse_schema;

    #[test]
    fn rows_are_a_function_of_seed_and_row() {
        let table = TableDescriptor {
            columns: parse_schema("id:int64,name:string,p:string,amount:decimal(10,2),ts:timestamp,d:date")
                .expect("schema"),
            buckets: 3,
            partition_key: Some("p".into()),
            primary_key: vec![],
            properties: Default::default(),
        };
        let w = Workload { seed: 7, partitions: 3 };
        let a = w.batch(&table, &[5, 6, 7]).expect("batch");
        let b = w.batch(&table, &[6]).expect("batch");
        assert_eq!(a.slice(1, 1), b, "row 6 is the same whichever batch holds it");
        let other = Workload { seed: 8, partitions: 3 }.batch(&table, &[6]).expect("batch");
        assert_ne!(b, other, "another seed gives other values");
        assert_eq!(Workload::partition_name(2, ColumnType::Date), "2026-01-03");
    }

    #[test]
    fn kv_operations_mix_as_asked_and_replay_to_a_state() {
        let w = Workload { seed: 3, partitions: 1 };
        let mix = KvMix { update: 0.5, delete: 0.2 };
        let ops: Vec<KvOp> = (0..10_000).map(|r| w.kv_op(r, mix)).collect();
        let deletes = ops.iter().filter(|o| matches!(o, KvOp::Delete { .. })).count();
        let inserts = ops.iter().enumerate().filter(|(r, o)| **o == KvOp::Upsert { key: *r as u64 }).count();
        assert!((1700..2300).contains(&deletes), "{deletes} deletes");
        assert!((2700..3300).contains(&inserts), "{inserts} inserts");
        assert!(ops.iter().enumerate().all(|(r, o)| o.key() <= r as u64), "only earlier keys are touched");
        let state = w.kv_state(10_000, mix);
        // An update of a key never inserted inserts it (an upsert); deletes leave fewer keys than rows.
        assert!(state.len() < 10_000 - deletes / 2 && state.iter().all(|(k, r)| k <= r));
        assert_eq!(w.kv_state(10, KvMix::default()).len(), 10, "no updates or deletes: every row is a key");
    }
}
