//! Primary keys as Fluss encodes them, and the bucket each key belongs in: the same bytes and the same bucket as
//! the official clients compute (checked against pyfluss 1.0.0), so a key written by a client, by our own tools or
//! looked up later is always in one bucket, and the lake finds it where its own hash puts it.
//!
//! ```text
//!   table.datalake.format   key bytes (the key less the partition column)        bucket of n
//!   none, lance             compacted key (model::compacted, no null bit set)    mix(flink_murmur(key)) % n
//!   paimon                  Paimon BinaryRow of the key fields, header included  |flink_murmur(key) % n|
//!   iceberg                 one field, Iceberg's single-value bytes              (murmur3_32(key) & i32::MAX) % n
//! ```
//!
//! Invariants:
//! 1. The key bytes are the KV state's key: a PutKv record, a delete and a Lookup of the same key carry them.
//! 2. Only the default bucket key (the primary key less the partition column) is served, so for
//!    `table.kv.format-version` 1 and 2 alike the bucket is computed over the key bytes themselves.
//! 3. `flink_murmur` mixes each tail byte zero-extended, as fluss-rs (and so pyfluss) does; Java's client
//!    sign-extends them, so for keys whose length is not a multiple of 4 and whose last bytes are ≥ 0x80 the two
//!    clients disagree on the bucket without a lake format. Paimon keys are whole words; Iceberg's hash is standard.

use arrow::array::{ArrayRef, RecordBatch};

use crate::error::{Error, ErrorKind, Result};
use crate::model::compacted::{self, Cells, Datum};
use crate::model::table::{ColumnType, TableDescriptor};

/// The table option naming the lake format (a Fluss cluster configured for a lake sets it on every table).
pub const DATALAKE_FORMAT: &str = "table.datalake.format";
/// The KV format version (1: legacy, 2: what a Fluss coordinator sets on new primary-key tables).
pub const KV_FORMAT_VERSION: &str = "table.kv.format-version";

/// How keys are encoded and bucketed, by the table's lake format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lake {
    /// No lake format, or Lance: compacted keys, Fluss's own bucketing.
    Fluss,
    Paimon,
    Iceberg,
}

/// The primary key of a table: which columns, and how they become key bytes and a bucket.
#[derive(Debug, Clone)]
pub struct PrimaryKeys {
    /// The physical key (the primary key less the partition column), in key order, as indices into the schema.
    indices: Vec<usize>,
    names: Vec<String>,
    types: Vec<ColumnType>,
    lake: Lake,
}

impl PrimaryKeys {
    /// The keys of a primary-key table, or why its options cannot be served.
    pub fn of(d: &TableDescriptor) -> Result<Self> {
        let invalid = |m: String| Error::new(ErrorKind::InvalidTable, m);
        match d.properties.get(KV_FORMAT_VERSION).map(String::as_str) {
            None | Some("1") | Some("2") => {}
            Some(v) => return Err(invalid(format!("{KV_FORMAT_VERSION} {v} is not supported (1 or 2)"))),
        }
        let lake = match d.properties.get(DATALAKE_FORMAT).map(|f| f.to_ascii_lowercase()).as_deref() {
            None | Some("lance") => Lake::Fluss,
            Some("paimon") => Lake::Paimon,
            Some("iceberg") => Lake::Iceberg,
            Some(other) => return Err(invalid(format!("{DATALAKE_FORMAT} {other} is not supported"))),
        };
        let mut keys = PrimaryKeys { indices: Vec::new(), names: Vec::new(), types: Vec::new(), lake };
        for name in d.physical_primary_key() {
            let index = d
                .columns
                .iter()
                .position(|c| &c.name == name)
                .ok_or_else(|| invalid(format!("primary-key column {name} is not a column")))?;
            keys.indices.push(index);
            keys.names.push(name.clone());
            keys.types.push(d.columns[index].data_type);
        }
        if keys.indices.is_empty() {
            return Err(invalid("a primary key needs a column besides the partition column".into()));
        }
        if lake == Lake::Iceberg {
            if keys.types.len() != 1 {
                return Err(invalid(format!(
                    "an Iceberg-bucketed primary key has exactly one column besides the partition column, not {:?}",
                    keys.names
                )));
            }
            if let Some(ty) = keys.types.iter().find(|t| !iceberg_key_type(**t)) {
                return Err(invalid(format!("a {ty} column cannot be an Iceberg-bucketed primary key")));
            }
        }
        Ok(keys)
    }

    /// What the keys are, for error messages.
    pub fn describe(&self) -> String {
        let how = match self.lake {
            Lake::Fluss => "compacted, Fluss's bucketing",
            Lake::Paimon => "Paimon's BinaryRow and bucketing",
            Lake::Iceberg => "Iceberg's bucketing",
        };
        format!("key ({}), {how}", self.names.join(", "))
    }

    /// The key columns of a table's columns (in schema order).
    pub fn columns_of(&self, all: &[ArrayRef]) -> Vec<ArrayRef> {
        self.indices.iter().filter_map(|&i| all.get(i).cloned()).collect()
    }

    /// The key columns of a batch that may hold only some columns (a delete needs only the key), by name.
    pub fn columns_by_name(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.names
            .iter()
            .map(|name| {
                batch.column_by_name(name).cloned().ok_or_else(|| {
                    Error::new(ErrorKind::SchemaMismatch, format!("records lack primary-key column {name}"))
                })
            })
            .collect()
    }

    /// The key bytes of every row of `key_columns` (from [`PrimaryKeys::columns_of`] or `columns_by_name`).
    pub fn encode(&self, key_columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
        let cells = key_columns.iter().zip(&self.types).map(|(c, &t)| Cells::new(c, t)).collect::<Result<Vec<_>>>()?;
        let rows = key_columns.first().map(|c| c.len()).unwrap_or(0);
        (0..rows)
            .map(|row| {
                let mut out = Vec::new();
                match self.lake {
                    Lake::Fluss => compacted::encode_key(&mut out, &cells, row)?,
                    Lake::Paimon => paimon_binary_row(&mut out, &cells, row)?,
                    Lake::Iceberg => iceberg_key(&mut out, &cells[0], row)?,
                }
                Ok(out)
            })
            .collect()
    }

    /// The bucket of every row of `key_columns`, of `buckets`.
    pub fn buckets(&self, key_columns: &[ArrayRef], buckets: u32) -> Result<Vec<u32>> {
        Ok(self.encode(key_columns)?.iter().map(|k| self.bucket_of(k, buckets)).collect())
    }

    /// The bucket of encoded key bytes, of `buckets` (at least 1).
    pub fn bucket_of(&self, key: &[u8], buckets: u32) -> u32 {
        let n = buckets.max(1);
        match self.lake {
            Lake::Fluss => mix_again(flink_murmur(key)) % n,
            Lake::Paimon => (i64::from(flink_murmur(key) as i32) % i64::from(n)).unsigned_abs() as u32,
            Lake::Iceberg => (murmur3_32(key, 0) & 0x7fff_ffff) % n,
        }
    }
}

fn null_key() -> Error {
    Error::new(ErrorKind::InvalidArgument, "primary-key columns must not be null")
}

/// Paimon's BinaryRow of the key fields (what Paimon hashes for a fixed-bucket table): a header byte (the row
/// kind, +I = 0) and null bits in whole words, one 8-byte little-endian slot per field, then the variable part in
/// 8-byte-aligned pieces. Strings and bytes of at most 7 bytes sit in their slot, marked `0x80 | len` in its last
/// byte; longer ones, decimals over 18 digits and timestamps over 3 digits live in the variable part, the slot
/// holding `offset << 32 | length` (for timestamps, `offset << 32 | nano-of-millisecond`).
fn paimon_binary_row(out: &mut Vec<u8>, cells: &[Cells<'_>], row: usize) -> Result<()> {
    let arity = cells.len();
    let null_bits = (arity + 63 + 8) / 64 * 8;
    let fixed = null_bits + 8 * arity;
    out.resize(fixed, 0);
    let slot_at = |pos: usize| null_bits + 8 * pos;
    for (pos, c) in cells.iter().enumerate() {
        let mut slot = [0u8; 8];
        match (c.get(row), c.column_type()) {
            (Datum::Null, _) => return Err(null_key()),
            (Datum::Bool(v), _) => slot[0] = u8::from(v),
            (Datum::Int8(v), _) => slot[0] = v as u8,
            (Datum::Int16(v), _) => slot[..2].copy_from_slice(&v.to_le_bytes()),
            (Datum::Int32(v), _) => slot[..4].copy_from_slice(&v.to_le_bytes()),
            (Datum::Int64(v), _) => slot = v.to_le_bytes(),
            (Datum::Float32(v), _) => slot[..4].copy_from_slice(&v.to_le_bytes()),
            (Datum::Float64(v), _) => slot = v.to_le_bytes(),
            (Datum::Decimal(v), ColumnType::Decimal { precision, .. }) if compacted::is_compact_decimal(precision) => {
                slot = i64::try_from(v)
                    .map_err(|_| Error::new(ErrorKind::InvalidArgument, "decimal overflow"))?
                    .to_le_bytes();
            }
            (Datum::Decimal(v), _) => {
                let bytes = compacted::minimal_be(v);
                let offset = out.len();
                out.extend_from_slice(&bytes);
                out.resize(offset + 16, 0);
                slot = ((offset as u64) << 32 | bytes.len() as u64).to_le_bytes();
            }
            (Datum::Bytes(b), _) if b.len() <= 7 => {
                slot[..b.len()].copy_from_slice(b);
                slot[7] = 0x80 | b.len() as u8;
            }
            (Datum::Bytes(b), _) => {
                let offset = out.len();
                out.extend_from_slice(b);
                out.resize(offset + b.len().div_ceil(8) * 8, 0);
                slot = ((offset as u64) << 32 | b.len() as u64).to_le_bytes();
            }
            (
                Datum::Timestamp { millis, .. },
                ColumnType::Timestamp { precision } | ColumnType::TimestampLtz { precision },
            ) if compacted::is_compact_timestamp(precision) => {
                slot = millis.to_le_bytes();
            }
            (Datum::Timestamp { millis, nano_of_milli }, _) => {
                let offset = out.len();
                out.extend_from_slice(&millis.to_le_bytes());
                slot = ((offset as u64) << 32 | u64::from(nano_of_milli as u32)).to_le_bytes();
            }
        }
        out[slot_at(pos)..slot_at(pos) + 8].copy_from_slice(&slot);
    }
    Ok(())
}

/// The column types Fluss can bucket the Iceberg way.
fn iceberg_key_type(t: ColumnType) -> bool {
    !matches!(t, ColumnType::Bool | ColumnType::Int8 | ColumnType::Int16 | ColumnType::TimestampLtz { .. })
}

/// Iceberg's single-value binary form of a bucket-transform input: ints and dates widened to 8 bytes LE, times and
/// timestamps in microseconds, decimals as their unscaled big-endian bytes, strings and bytes as they are.
fn iceberg_key(out: &mut Vec<u8>, c: &Cells<'_>, row: usize) -> Result<()> {
    match c.get(row) {
        Datum::Null => return Err(null_key()),
        Datum::Int32(v) if matches!(c.column_type(), ColumnType::Time { .. }) => {
            out.extend_from_slice(&(i64::from(v) * 1000).to_le_bytes())
        }
        Datum::Int32(v) => out.extend_from_slice(&i64::from(v).to_le_bytes()),
        Datum::Int64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Datum::Float32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Datum::Float64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Datum::Decimal(v) => out.extend_from_slice(&compacted::minimal_be(v)),
        Datum::Bytes(b) => out.extend_from_slice(b),
        Datum::Timestamp { millis, nano_of_milli } => out
            .extend_from_slice(&millis.wrapping_mul(1000).wrapping_add(i64::from(nano_of_milli / 1000)).to_le_bytes()),
        Datum::Bool(_) | Datum::Int8(_) | Datum::Int16(_) => {
            return Err(Error::new(ErrorKind::InvalidTable, format!("a {} cannot be an Iceberg key", c.column_type())));
        }
    }
    Ok(())
}

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

fn mix_k1(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

fn mix_h1(h: u32, k: u32) -> u32 {
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Flink's murmur variant (seed 42) that Fluss and Paimon hash keys with: each tail byte mixed on its own.
fn flink_murmur(data: &[u8]) -> u32 {
    let mut h = 42u32;
    let blocks = data.chunks_exact(4);
    let tail = blocks.remainder();
    for w in blocks {
        h = mix_h1(h, mix_k1(u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
    }
    for &b in tail {
        h = mix_h1(h, mix_k1(u32::from(b)));
    }
    fmix(h ^ data.len() as u32)
}

/// Fluss's second mix of a hash code (`MathUtils.murmurHash`), made non-negative.
fn mix_again(code: u32) -> u32 {
    let c = fmix(mix_h1(0, mix_k1(code)) ^ 4) as i32;
    match c {
        i32::MIN => 0,
        c => c.unsigned_abs(),
    }
}

/// The standard murmur3 x86 32-bit hash.
fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let blocks = data.chunks_exact(4);
    let tail = blocks.remainder();
    for w in blocks {
        h = mix_h1(h, mix_k1(u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
    }
    if !tail.is_empty() {
        let k = tail.iter().rev().fold(0u32, |k, &b| (k << 8) | u32::from(b));
        h ^= mix_k1(k);
    }
    fmix(h ^ data.len() as u32)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, Int64Array, StringArray};

    use super::*;
    use crate::model::table::parse_schema;

    const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";

    fn keys(schema: &str, key: &[&str], lake: Option<&str>) -> PrimaryKeys {
        let mut d = TableDescriptor {
            columns: parse_schema(schema).unwrap_or_default(),
            buckets: 1,
            partition_key: None,
            primary_key: key.iter().map(|k| k.to_string()).collect(),
            properties: Default::default(),
        };
        if let Some(lake) = lake {
            d.properties.insert(DATALAKE_FORMAT.into(), lake.into());
        }
        PrimaryKeys::of(&d).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hashes_match_the_clients() {
        assert_eq!(flink_murmur(&[]), 0x087f_cd5c);
        assert_eq!(flink_murmur(FOX), 0x1bc6_f880);
        assert_eq!(murmur3_32(FOX, 0), 0x2e4f_f723);
        assert_eq!(murmur3_32(FOX, 0x9747_b28c), 0x2fa8_26cd);
        assert_eq!(murmur3_32(&[], 1), 0x514e_28b7);
        assert_eq!(mix_again(0), 0x2362_f9de);
        assert_eq!(mix_again(42), 0x43a4_6e1d);
        assert_eq!(mix_again(-77i32 as u32), 0x2eeb_27de);
        // Iceberg's spec, appendix B: hashes of encoded values.
        assert_eq!(murmur3_32(&34i64.to_le_bytes(), 0) as i32, 2_017_239_379);
        assert_eq!(murmur3_32(b"iceberg", 0) as i32, 1_210_000_089);
        assert_eq!(murmur3_32(&[0, 1, 2, 3], 0) as i32, -188_683_207);
    }

    #[test]
    fn buckets_match_the_clients() {
        let (fluss, paimon, iceberg) = (
            keys("k:int64", &["k"], None),
            keys("k:int64", &["k"], Some("paimon")),
            keys("k:int64", &["k"], Some("iceberg")),
        );
        // Fluss's and fluss-rs's shared vectors: (bytes, buckets) → (Fluss, Paimon, Iceberg).
        let uuid = b"2bb87d68-baf9-4e64-90f9-f80910419fa6";
        for (bytes, n, expected) in [
            (&[0u8, 10][..], 7, (1, 1, 3)),
            (&[0, 10, 10, 10], 12, (0, 11, 4)),
            (uuid, 16, (6, 12, 12)),
            (FOX, 8, (6, 0, 3)),
        ] {
            let got = (fluss.bucket_of(bytes, n), paimon.bucket_of(bytes, n), iceberg.bucket_of(bytes, n));
            assert_eq!(got, expected, "{bytes:?} of {n}");
        }
        // What pyfluss 1.0.0's own bucketing gives (2, 3, 4, 8, 16 buckets), from encoded values.
        let cases: [(&PrimaryKeys, i64, [u32; 5]); 7] = [
            (&fluss, 1, [0, 0, 0, 4, 12]),
            (&fluss, 99, [1, 1, 3, 3, 3]),
            (&fluss, 200, [0, 1, 2, 2, 10]),
            (&fluss, -1, [0, 1, 0, 4, 4]),
            (&paimon, 1, [0, 1, 2, 6, 14]),
            (&paimon, 2, [0, 2, 0, 0, 0]),
            (&iceberg, 34, [1, 1, 3, 3, 3]),
        ];
        for (keys, value, expected) in cases {
            let column: ArrayRef = Arc::new(Int64Array::from(vec![value]));
            let got = [2, 3, 4, 8, 16].map(|n| keys.buckets(std::slice::from_ref(&column), n).unwrap_or_default()[0]);
            assert_eq!(got, expected, "{} {value}", keys.describe());
        }
    }

    #[test]
    fn paimon_keys_are_binary_rows() -> Result<()> {
        let k = keys("id:int32,name:string", &["id", "name"], Some("paimon"));
        let columns: Vec<ArrayRef> =
            vec![Arc::new(Int32Array::from(vec![7, 1])), Arc::new(StringArray::from(vec!["hi", "hello world!"]))];
        let encoded = k.encode(&columns)?;
        let mut short = vec![0u8; 8];
        short.extend([7, 0, 0, 0, 0, 0, 0, 0, 0x68, 0x69, 0, 0, 0, 0, 0, 0x82]);
        assert_eq!(encoded[0], short);
        assert_eq!(k.bucket_of(&encoded[0], 4), 3, "pyfluss puts (7, 'hi') in bucket 3 of 4");
        // A long string goes to the variable part: offset 24, length 12, padded to 16.
        let long = &encoded[1];
        assert_eq!(long.len(), 24 + 16);
        assert_eq!(&long[16..24], &[12, 0, 0, 0, 24, 0, 0, 0]);
        assert_eq!(&long[24..36], b"hello world!");

        let one = keys("name:string", &["name"], Some("paimon"));
        let column: ArrayRef = Arc::new(StringArray::from(vec!["hello world!"]));
        let bytes = one.encode(std::slice::from_ref(&column))?;
        assert_eq!(bytes[0].len(), 32);
        assert_eq!([2, 3, 4, 8, 16].map(|n| one.bucket_of(&bytes[0], n)), [1, 2, 3, 3, 3]);
        Ok(())
    }

    #[test]
    fn tables_whose_keys_cannot_be_bucketed_are_refused() {
        let d = |key: &[&str], lake: &str, version: Option<&str>| {
            let mut d = TableDescriptor {
                columns: parse_schema("a:int64,b:string,c:bool").unwrap_or_default(),
                buckets: 1,
                partition_key: None,
                primary_key: key.iter().map(|k| k.to_string()).collect(),
                properties: [(DATALAKE_FORMAT.to_string(), lake.to_string())].into(),
            };
            if let Some(v) = version {
                d.properties.insert(KV_FORMAT_VERSION.into(), v.into());
            }
            PrimaryKeys::of(&d).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(d(&["a"], "iceberg", None).is_ok());
        assert!(d(&["a", "b"], "iceberg", None).unwrap_err().contains("exactly one column"));
        assert!(d(&["c"], "iceberg", None).unwrap_err().contains("cannot be an Iceberg"));
        assert!(d(&["a"], "hudi", None).unwrap_err().contains("not supported"));
        assert!(d(&["a"], "paimon", Some("3")).unwrap_err().contains("not supported"));
    }
}
