//! Consolidation of a primary-key bucket's changes before they reach the lake, with differential dataflow's
//! `consolidate`.
//!
//! Every change is an update `((key, row), ±1)`: +1 for a row that becomes the key's value (+I, +U, a snapshot row),
//! −1 for one that stops being it (−U, −D). Summed over a round, each key is left with at most one row leaving (the
//! one the lake holds) and one arriving (the one to write): an insert, an update, a delete, or nothing at all. A key
//! updated 1,000 times in a round costs one write. Anything else (two rows arriving for one key) means the changelog
//! is corrupt, and the split fails rather than guess.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use differential_dataflow::consolidation::consolidate;

use crate::error::{Error, ErrorKind, Result};
use crate::lake::lake_schema;
use crate::model::change::{CHANGE_TYPE_COLUMN, ChangeType};
use crate::model::table::{TableDescriptor, align_columns};

/// Offset given to rows that come from a KV snapshot (it records no per-row offsets).
pub const SNAPSHOT_OFFSET: i64 = -1;

/// Consolidate in place once this many updates are buffered, so memory follows the keys touched, not the changes.
const COMPACT_AT: usize = 1 << 20;

type Update = ((Vec<u8>, Vec<u8>), i64);

/// The changes of one bucket in one round, summed by key.
pub struct Consolidator {
    schema: SchemaRef,
    key_indices: Vec<usize>,
    rows: RowConverter,
    keys: RowConverter,
    updates: Vec<Update>,
    /// The offset and append time of the last change of each key (they become its system columns).
    last: HashMap<Vec<u8>, (i64, i64)>,
    changes: u64,
}

fn internal(what: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |e| Error::new(ErrorKind::Internal, what).with_source(e)
}

impl Consolidator {
    pub fn new(descriptor: &TableDescriptor) -> Result<Self> {
        let schema = descriptor.arrow_schema();
        let key_indices = descriptor
            .primary_key
            .iter()
            .map(|k| schema.index_of(k).map_err(internal("a primary-key column is not in the schema")))
            .collect::<Result<Vec<_>>>()?;
        let field = |i: usize| SortField::new(schema.field(i).data_type().clone());
        let rows = RowConverter::new((0..schema.fields().len()).map(field).collect()).map_err(internal("rows"))?;
        let keys = RowConverter::new(key_indices.iter().map(|&i| field(i)).collect()).map_err(internal("keys"))?;
        Ok(Consolidator { schema, key_indices, rows, keys, updates: Vec::new(), last: HashMap::new(), changes: 0 })
    }

    /// Changes read so far (snapshot rows and changelog rows).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Rows of a KV snapshot: each becomes its key's value.
    pub fn add_snapshot(&mut self, batch: &RecordBatch) -> Result<()> {
        self.add(batch, |_| Ok((1, SNAPSHOT_OFFSET, 0)))
    }

    /// Changelog rows from offset `first_offset` on, appended at `timestamp_ms`.
    pub fn add_changelog(&mut self, batch: &RecordBatch, first_offset: i64, timestamp_ms: i64) -> Result<()> {
        let kinds = batch
            .column_by_name(CHANGE_TYPE_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<Int8Array>())
            .ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "a primary-key changelog without change types"))?
            .clone();
        self.add(batch, |i| {
            let diff = if ChangeType::from_i8(kinds.value(i))?.is_addition() { 1 } else { -1 };
            Ok((diff, first_offset + i as i64, timestamp_ms))
        })
    }

    fn add(&mut self, batch: &RecordBatch, mut change: impl FnMut(usize) -> Result<(i64, i64, i64)>) -> Result<()> {
        let columns = align_columns(self.schema.fields(), batch);
        let key_columns: Vec<ArrayRef> = self.key_indices.iter().map(|&i| Arc::clone(&columns[i])).collect();
        let keys = self.keys.convert_columns(&key_columns).map_err(internal("encoding keys"))?;
        let rows = self.rows.convert_columns(&columns).map_err(internal("encoding rows"))?;
        for i in 0..batch.num_rows() {
            let (diff, offset, timestamp) = change(i)?;
            let key = keys.row(i).as_ref().to_vec();
            self.last.insert(key.clone(), (offset, timestamp));
            self.updates.push(((key, rows.row(i).as_ref().to_vec()), diff));
        }
        self.changes += batch.num_rows() as u64;
        if self.updates.len() >= COMPACT_AT {
            consolidate(&mut self.updates);
        }
        Ok(())
    }

    /// The net effect, one row per key that changed, in the lake's schema plus the change type (+I, +U or -D);
    /// `None` when nothing changed.
    pub fn finish(mut self, descriptor: &TableDescriptor, bucket: i32) -> Result<Option<RecordBatch>> {
        consolidate(&mut self.updates);
        // Sorted by (key, row): a key's updates are adjacent.
        let mut out: Vec<(&[u8], &[u8], ChangeType)> = Vec::new();
        let mut i = 0;
        while i < self.updates.len() {
            let key = &self.updates[i].0.0;
            let (mut arriving, mut leaving) = (None, None);
            while i < self.updates.len() && &self.updates[i].0.0 == key {
                let ((_, row), diff) = &self.updates[i];
                let slot = match diff {
                    1 => &mut arriving,
                    -1 => &mut leaving,
                    _ => return Err(corrupt(*diff)),
                };
                if slot.replace(row.as_slice()).is_some() {
                    return Err(corrupt(*diff));
                }
                i += 1;
            }
            match (arriving, leaving) {
                (Some(row), Some(_)) => out.push((key, row, ChangeType::UpdateAfter)),
                (Some(row), None) => out.push((key, row, ChangeType::Insert)),
                (None, Some(row)) => out.push((key, row, ChangeType::Delete)),
                (None, None) => {}
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        let parser = self.rows.parser();
        let mut columns =
            self.rows.convert_rows(out.iter().map(|(_, r, _)| parser.parse(r))).map_err(internal("decoding rows"))?;
        let provenance: Vec<(i64, i64)> =
            out.iter().map(|(k, _, _)| self.last.get(*k).copied().unwrap_or((SNAPSHOT_OFFSET, 0))).collect();
        columns.push(Arc::new(Int32Array::from(vec![bucket; out.len()])));
        columns.push(Arc::new(Int64Array::from_iter_values(provenance.iter().map(|(o, _)| *o))));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from_iter_values(provenance.iter().map(|(_, t)| t * 1000)).with_timezone("UTC"),
        ));
        columns.push(Arc::new(Int8Array::from_iter_values(out.iter().map(|(_, _, k)| *k as i8))));
        RecordBatch::try_new(with_change_type(&lake_schema(descriptor)), columns)
            .map(Some)
            .map_err(internal("building the consolidated batch"))
    }
}

fn corrupt(diff: i64) -> Error {
    Error::new(
        ErrorKind::CorruptMessage,
        format!("the changelog does not add up: a key has a net change of {diff} for one row, or two rows arriving"),
    )
}

/// `schema` plus the change type column a primary-key lake writer reads.
pub fn with_change_type(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHANGE_TYPE_COLUMN, DataType::Int8, false));
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::parse_schema;

    fn table() -> TableDescriptor {
        TableDescriptor {
            columns: parse_schema("id:int64,v:string").expect("schema"),
            buckets: 1,
            partition_key: None,
            primary_key: vec!["id".into()],
            properties: Default::default(),
        }
    }

    fn changelog(rows: &[(i64, &str, ChangeType)]) -> RecordBatch {
        let schema = with_change_type(&table().arrow_schema());
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(arrow::array::StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.2 as i8))),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn only_the_net_effect_of_a_round_is_written() {
        use ChangeType::*;
        let mut c = Consolidator::new(&table()).expect("consolidator");
        let snapshot = changelog(&[(1, "a", Insert), (2, "b", Insert), (3, "c", Insert)]);
        c.add_snapshot(&snapshot.project(&[0, 1]).expect("project")).expect("snapshot");
        // Key 1 updated three times; key 2 deleted; key 4 inserted then deleted; key 5 inserted; key 3 untouched.
        let mut log =
            vec![(1, "a", UpdateBefore), (1, "x", UpdateAfter), (1, "x", UpdateBefore), (1, "y", UpdateAfter)];
        log.extend([(1, "y", UpdateBefore), (1, "z", UpdateAfter), (2, "b", Delete), (4, "d", Insert)]);
        log.extend([(4, "d", Delete), (5, "e", Insert)]);
        c.add_changelog(&changelog(&log), 100, 7).expect("changelog");
        assert_eq!(c.changes(), 13);
        // A bucket new to the lake: everything is an insert, and keys 2 and 4 never reach it.
        let first = [(1, "z", Insert, 105), (3, "c", Insert, SNAPSHOT_OFFSET), (5, "e", Insert, 109)];
        assert_eq!(rows(c), expect(&first));
        // The same changelog on a bucket the lake holds: key 1 is updated, key 2 deleted.
        let mut c = Consolidator::new(&table()).expect("consolidator");
        c.add_changelog(&changelog(&log), 100, 7).expect("changelog");
        let later = [(1, "z", UpdateAfter, 105), (2, "b", Delete, 106), (5, "e", Insert, 109)];
        assert_eq!(rows(c), expect(&later));
    }

    fn expect(rows: &[(i64, &str, ChangeType, i64)]) -> Vec<(i64, String, i8, i64)> {
        rows.iter().map(|(id, v, k, o)| (*id, v.to_string(), *k as i8, *o)).collect()
    }

    fn rows(c: Consolidator) -> Vec<(i64, String, i8, i64)> {
        let out = c.finish(&table(), 0).expect("finish").expect("changes");
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().expect("ids");
        let values = out.column(1).as_any().downcast_ref::<arrow::array::StringArray>().expect("values");
        let kinds = out.column_by_name(CHANGE_TYPE_COLUMN).expect("kinds");
        let kinds = kinds.as_any().downcast_ref::<Int8Array>().expect("int8");
        let offsets = out.column_by_name("__offset").expect("offsets");
        let offsets = offsets.as_any().downcast_ref::<Int64Array>().expect("int64");
        (0..out.num_rows())
            .map(|i| (ids.value(i), values.value(i).to_string(), kinds.value(i), offsets.value(i)))
            .collect()
    }

    #[test]
    fn a_changelog_that_does_not_add_up_is_refused() {
        use ChangeType::*;
        let mut c = Consolidator::new(&table()).expect("consolidator");
        c.add_changelog(&changelog(&[(1, "a", Insert), (1, "b", Insert)]), 0, 0).expect("changelog");
        assert!(c.finish(&table(), 0).is_err(), "two rows arriving for one key");
    }
}
