//! Fluss's CompactedRow, the value format of primary-key tables (`table.kv.format=COMPACTED`, what every Fluss
//! client writes), and the compacted key: the same field encodings without the null bit set.
//!
//! ```text
//!   row:  [null bit set: ceil(fields / 8) bytes, bit i & 7 of byte i >> 3 = field i is null] [non-null fields]
//!   key:  [fields]                          (key fields are never null)
//!   field: BOOLEAN, TINYINT 1 byte · SMALLINT 2 bytes LE · INT, DATE (days), TIME (ms) varint of the u32
//!          BIGINT varint of the u64 · FLOAT, DOUBLE LE · STRING, CHAR, BYTES, BINARY varint length + bytes
//!          DECIMAL p ≤ 18 varint of the unscaled i64, else varint length + unscaled big-endian two's complement
//!          TIMESTAMP(_LTZ) p ≤ 3 varint millis, else varint millis + varint nano-of-millisecond
//! ```
//!
//! Varints are unsigned LEB128 of the two's-complement value (not zigzag). Arrow columns and rows convert through
//! [`Datum`], the value of one field as Fluss holds it (TIME as milliseconds of the day, timestamps as milliseconds
//! and a nano-of-millisecond), so that each encoding (this one, the lakes' key encodings) is written once.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BinaryBuilder, BooleanArray, Decimal128Array, FixedSizeBinaryBuilder,
    Float32Array, Float64Array, PrimitiveArray, RecordBatch, StringBuilder,
};
use arrow::datatypes::{
    Date32Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};

use crate::error::{Error, ErrorKind, Result};
use crate::model::table::{ColumnType, TableDescriptor, align_columns};

/// The value of one field, as Fluss's rows hold it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Datum<'a> {
    Null,
    Bool(bool),
    Int8(i8),
    Int16(i16),
    /// INT, DATE (days since the epoch), TIME (milliseconds of the day).
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// The unscaled value; precision and scale are the column's.
    Decimal(i128),
    /// STRING and CHAR (UTF-8), BYTES and BINARY.
    Bytes(&'a [u8]),
    Timestamp {
        millis: i64,
        /// 0 to 999,999.
        nano_of_milli: i32,
    },
}

/// Whether a decimal of `precision` is held as an i64 (Fluss's compact decimals).
pub fn is_compact_decimal(precision: u8) -> bool {
    precision <= 18
}

/// Whether a timestamp of `precision` is held as milliseconds alone.
pub fn is_compact_timestamp(precision: u8) -> bool {
    precision <= 3
}

/// The fields of one column of a batch, read as [`Datum`]s.
pub struct Cells<'a> {
    array: &'a dyn Array,
    ty: ColumnType,
}

impl<'a> Cells<'a> {
    /// `array` must have `ty`'s Arrow type ([`ColumnType::to_arrow`]).
    pub fn new(array: &'a ArrayRef, ty: ColumnType) -> Result<Self> {
        if array.data_type() != &ty.to_arrow() {
            return Err(Error::new(
                ErrorKind::SchemaMismatch,
                format!("a {ty} column holds Arrow {} values", array.data_type()),
            ));
        }
        Ok(Cells { array: array.as_ref(), ty })
    }

    pub fn column_type(&self) -> ColumnType {
        self.ty
    }

    /// The value in `row`; the type was checked in [`Cells::new`], so the downcasts hold.
    pub fn get(&self, row: usize) -> Datum<'a> {
        let a = self.array;
        if a.is_null(row) {
            return Datum::Null;
        }
        match self.ty {
            ColumnType::Bool => Datum::Bool(a.as_boolean().value(row)),
            ColumnType::Int8 => Datum::Int8(a.as_primitive::<Int8Type>().value(row)),
            ColumnType::Int16 => Datum::Int16(a.as_primitive::<Int16Type>().value(row)),
            ColumnType::Int32 => Datum::Int32(a.as_primitive::<Int32Type>().value(row)),
            ColumnType::Int64 => Datum::Int64(a.as_primitive::<Int64Type>().value(row)),
            ColumnType::Float32 => Datum::Float32(a.as_primitive::<arrow::datatypes::Float32Type>().value(row)),
            ColumnType::Float64 => Datum::Float64(a.as_primitive::<arrow::datatypes::Float64Type>().value(row)),
            ColumnType::Decimal { .. } => {
                Datum::Decimal(a.as_primitive::<arrow::datatypes::Decimal128Type>().value(row))
            }
            ColumnType::String | ColumnType::Char { .. } => Datum::Bytes(a.as_string::<i32>().value(row).as_bytes()),
            ColumnType::Binary => Datum::Bytes(a.as_binary::<i32>().value(row)),
            ColumnType::FixedBinary { .. } => Datum::Bytes(a.as_fixed_size_binary().value(row)),
            ColumnType::Date => Datum::Int32(a.as_primitive::<Date32Type>().value(row)),
            ColumnType::Time { .. } => Datum::Int32(match a.data_type() {
                arrow::datatypes::DataType::Time32(TimeUnit::Second) => {
                    a.as_primitive::<Time32SecondType>().value(row).saturating_mul(1000)
                }
                arrow::datatypes::DataType::Time32(_) => a.as_primitive::<Time32MillisecondType>().value(row),
                arrow::datatypes::DataType::Time64(TimeUnit::Microsecond) => {
                    (a.as_primitive::<Time64MicrosecondType>().value(row).div_euclid(1000)) as i32
                }
                _ => (a.as_primitive::<Time64NanosecondType>().value(row).div_euclid(1_000_000)) as i32,
            }),
            ColumnType::Timestamp { precision } | ColumnType::TimestampLtz { precision } => {
                let (value, per_milli) = match precision {
                    0 => (a.as_primitive::<TimestampSecondType>().value(row).saturating_mul(1000), 1),
                    1..=3 => (a.as_primitive::<TimestampMillisecondType>().value(row), 1),
                    4..=6 => (a.as_primitive::<TimestampMicrosecondType>().value(row), 1000),
                    _ => (a.as_primitive::<TimestampNanosecondType>().value(row), 1_000_000),
                };
                let nanos_per_unit = 1_000_000 / per_milli;
                Datum::Timestamp {
                    millis: value.div_euclid(per_milli),
                    nano_of_milli: (value.rem_euclid(per_milli) * nanos_per_unit) as i32,
                }
            }
        }
    }
}

/// The [`Cells`] of every column of `batch`, whose columns have `types`.
pub fn cells_of<'a>(batch: &'a RecordBatch, types: &[ColumnType]) -> Result<Vec<Cells<'a>>> {
    if batch.num_columns() != types.len() {
        return Err(Error::new(
            ErrorKind::SchemaMismatch,
            format!("rows of {} columns for a schema of {}", batch.num_columns(), types.len()),
        ));
    }
    batch.columns().iter().zip(types).map(|(c, &t)| Cells::new(c, t)).collect()
}

pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes one non-null field of type `ty`.
pub fn write_field(out: &mut Vec<u8>, ty: ColumnType, datum: Datum<'_>) -> Result<()> {
    match (datum, ty) {
        (Datum::Bool(v), _) => out.push(u8::from(v)),
        (Datum::Int8(v), _) => out.push(v as u8),
        (Datum::Int16(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        (Datum::Int32(v), _) => write_varint(out, u64::from(v as u32)),
        (Datum::Int64(v), _) => write_varint(out, v as u64),
        (Datum::Float32(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        (Datum::Float64(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        (Datum::Decimal(v), ColumnType::Decimal { precision, .. }) => {
            if is_compact_decimal(precision) {
                let v = i64::try_from(v).map_err(|_| {
                    Error::new(ErrorKind::InvalidArgument, format!("decimal {v} does not fit precision {precision}"))
                })?;
                write_varint(out, v as u64);
            } else {
                let bytes = minimal_be(v);
                write_varint(out, bytes.len() as u64);
                out.extend_from_slice(&bytes);
            }
        }
        (Datum::Bytes(b), _) => {
            write_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        (Datum::Timestamp { millis, nano_of_milli }, ColumnType::Timestamp { precision })
        | (Datum::Timestamp { millis, nano_of_milli }, ColumnType::TimestampLtz { precision }) => {
            write_varint(out, millis as u64);
            if !is_compact_timestamp(precision) {
                write_varint(out, u64::from(nano_of_milli as u32));
            }
        }
        (Datum::Null, _) => return Err(Error::new(ErrorKind::Internal, "a null is written in the null bit set")),
        (d, t) => return Err(Error::new(ErrorKind::Internal, format!("{d:?} is not a {t} value"))),
    }
    Ok(())
}

/// The unscaled value as Java's `BigInteger.toByteArray`: big-endian two's complement in as few bytes as hold it.
pub fn minimal_be(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let sign = if v < 0 { 0xff } else { 0 };
    let mut start = 0;
    // Drop a leading byte while the next one still carries the sign.
    while start < 15 && bytes[start] == sign && (bytes[start + 1] & 0x80) == (sign & 0x80) {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Encodes every row of `cells` as a CompactedRow.
pub fn encode_rows(cells: &[Cells<'_>], rows: usize) -> Result<Vec<Vec<u8>>> {
    let bitset = cells.len().div_ceil(8);
    (0..rows)
        .map(|row| {
            let mut out = vec![0u8; bitset];
            for (i, c) in cells.iter().enumerate() {
                match c.get(row) {
                    Datum::Null => out[i >> 3] |= 1 << (i & 7),
                    datum => write_field(&mut out, c.column_type(), datum)?,
                }
            }
            Ok(out)
        })
        .collect()
}

/// Encodes the compacted key of `row`: its key fields, none of them null.
pub fn encode_key(out: &mut Vec<u8>, key: &[Cells<'_>], row: usize) -> Result<()> {
    for c in key {
        match c.get(row) {
            Datum::Null => {
                return Err(Error::new(ErrorKind::InvalidArgument, "primary-key columns must not be null"));
            }
            datum => write_field(out, c.column_type(), datum)?,
        }
    }
    Ok(())
}

/// A cursor over one encoded row; every read checks the bounds.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn corrupt(what: &str) -> Error {
        Error::new(ErrorKind::CorruptRecord, format!("a compacted row ends inside {what}"))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| Self::corrupt(what))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.take(N, what)?.try_into().map_err(|_| Self::corrupt(what))
    }

    fn varint(&mut self, max_bytes: u32, what: &str) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..max_bytes {
            let b = self.take(1, what)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::new(ErrorKind::CorruptRecord, format!("a varint of {what} is longer than {max_bytes} bytes")))
    }

    fn int(&mut self, what: &str) -> Result<i32> {
        let v = self.varint(5, what)?;
        u32::try_from(v)
            .map(|v| v as i32)
            .map_err(|_| Error::new(ErrorKind::CorruptRecord, format!("{what} overflows")))
    }

    fn long(&mut self, what: &str) -> Result<i64> {
        Ok(self.varint(10, what)? as i64)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = usize::try_from(self.varint(5, what)?).map_err(|_| Self::corrupt(what))?;
        self.take(len, what)
    }

    fn field(&mut self, ty: ColumnType) -> Result<Datum<'a>> {
        Ok(match ty {
            ColumnType::Bool => Datum::Bool(self.array::<1>("a boolean")?[0] != 0),
            ColumnType::Int8 => Datum::Int8(i8::from_le_bytes(self.array("a tinyint")?)),
            ColumnType::Int16 => Datum::Int16(i16::from_le_bytes(self.array("a smallint")?)),
            ColumnType::Int32 | ColumnType::Date | ColumnType::Time { .. } => Datum::Int32(self.int("an int")?),
            ColumnType::Int64 => Datum::Int64(self.long("a bigint")?),
            ColumnType::Float32 => Datum::Float32(f32::from_le_bytes(self.array("a float")?)),
            ColumnType::Float64 => Datum::Float64(f64::from_le_bytes(self.array("a double")?)),
            ColumnType::Decimal { precision, .. } if is_compact_decimal(precision) => {
                Datum::Decimal(i128::from(self.long("a decimal")?))
            }
            ColumnType::Decimal { .. } => {
                let b = self.bytes("a decimal")?;
                if b.is_empty() || b.len() > 16 {
                    return Err(Error::new(ErrorKind::CorruptRecord, format!("a decimal of {} bytes", b.len())));
                }
                let fill = if b[0] & 0x80 != 0 { 0xff } else { 0 };
                let mut full = [fill; 16];
                full[16 - b.len()..].copy_from_slice(b);
                Datum::Decimal(i128::from_be_bytes(full))
            }
            ColumnType::String | ColumnType::Char { .. } | ColumnType::Binary | ColumnType::FixedBinary { .. } => {
                Datum::Bytes(self.bytes("a string")?)
            }
            ColumnType::Timestamp { precision } | ColumnType::TimestampLtz { precision } => {
                let millis = self.long("a timestamp")?;
                let nano_of_milli = if is_compact_timestamp(precision) { 0 } else { self.int("a timestamp")? };
                if !(0..1_000_000).contains(&nano_of_milli) {
                    return Err(Error::new(ErrorKind::CorruptRecord, format!("nano-of-millisecond {nano_of_milli}")));
                }
                Datum::Timestamp { millis, nano_of_milli }
            }
        })
    }
}

/// Decodes CompactedRows of `schema`'s columns (whose types are `types`) into one batch.
pub fn decode_rows<'a>(
    rows: impl IntoIterator<Item = &'a [u8]>,
    schema: &Arc<Schema>,
    types: &[ColumnType],
) -> Result<RecordBatch> {
    let mut columns: Vec<Vec<Datum<'a>>> = vec![Vec::new(); types.len()];
    let bitset = types.len().div_ceil(8);
    for row in rows {
        let mut reader = Reader { bytes: row, at: 0 };
        let nulls = reader.take(bitset, "its null bit set")?;
        for (i, &ty) in types.iter().enumerate() {
            let datum = match nulls[i >> 3] & (1 << (i & 7)) != 0 {
                true => Datum::Null,
                false => reader.field(ty)?,
            };
            columns[i].push(datum);
        }
        if reader.at != row.len() {
            return Err(Error::new(
                ErrorKind::CorruptRecord,
                format!("a compacted row of {} fields has {} bytes left over", types.len(), row.len() - reader.at),
            ));
        }
    }
    let arrays = columns.iter().zip(types).map(|(values, &ty)| to_array(values, ty)).collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(Arc::clone(schema), arrays)
        .map_err(|e| Error::new(ErrorKind::SchemaMismatch, "rows do not fit the table's schema").with_source(e))
}

/// Decodes CompactedRows written under `schema_id` of table `d` into a batch of its current schema: columns added
/// since read as null (schema `n` is the first `n` columns), as a Java server pads an older row.
pub fn decode_rows_of_schema<'a>(
    d: &TableDescriptor,
    schema_id: i16,
    rows: impl IntoIterator<Item = &'a [u8]>,
) -> Result<RecordBatch> {
    let written = d.arrow_schema_of(schema_id)?;
    let types: Vec<ColumnType> = d.columns[..written.fields().len()].iter().map(|c| c.data_type).collect();
    let rows = decode_rows(rows, &written, &types)?;
    let current = d.arrow_schema();
    RecordBatch::try_new(Arc::clone(&current), align_columns(current.fields(), &rows))
        .map_err(|e| Error::new(ErrorKind::Internal, "widening rows to the current schema").with_source(e))
}

fn mismatch(ty: ColumnType) -> Error {
    Error::new(ErrorKind::Internal, format!("a value that is not a {ty}"))
}

fn ints<T: ArrowPrimitiveType>(
    values: &[Datum<'_>],
    ty: ColumnType,
    f: impl Fn(i64) -> Option<T::Native>,
) -> Result<ArrayRef> {
    let out = values
        .iter()
        .map(|d| match *d {
            Datum::Null => Ok(None),
            Datum::Int8(v) => Ok(Some(i64::from(v))),
            Datum::Int16(v) => Ok(Some(i64::from(v))),
            Datum::Int32(v) => Ok(Some(i64::from(v))),
            Datum::Int64(v) => Ok(Some(v)),
            _ => Err(mismatch(ty)),
        })
        .map(|v| {
            v?.map(|v| {
                f(v).ok_or_else(|| Error::new(ErrorKind::CorruptRecord, format!("{v} is out of range for {ty}")))
            })
            .transpose()
        })
        .collect::<Result<PrimitiveArray<T>>>()?;
    Ok(Arc::new(out))
}

/// The values of one Arrow type: `get` takes each non-null value out of its datum (`None`: a datum of another type).
fn typed<T, A: FromIterator<Option<T>>>(
    values: &[Datum<'_>],
    ty: ColumnType,
    get: impl Fn(&Datum<'_>) -> Option<T>,
) -> Result<A> {
    values
        .iter()
        .map(|d| match d {
            Datum::Null => Ok(None),
            d => get(d).map(Some).ok_or_else(|| mismatch(ty)),
        })
        .collect()
}

/// The Arrow array of `values` of type `ty` (as [`ColumnType::to_arrow`] gives it).
fn to_array<'a>(values: &[Datum<'a>], ty: ColumnType) -> Result<ArrayRef> {
    let bytes = |v: &Datum<'a>| -> Result<Option<&'a [u8]>> {
        match *v {
            Datum::Null => Ok(None),
            Datum::Bytes(b) => Ok(Some(b)),
            _ => Err(mismatch(ty)),
        }
    };
    Ok(match ty {
        ColumnType::Bool => Arc::new(typed::<_, BooleanArray>(values, ty, |d| match *d {
            Datum::Bool(v) => Some(v),
            _ => None,
        })?),
        ColumnType::Int8 => ints::<Int8Type>(values, ty, |v| i8::try_from(v).ok())?,
        ColumnType::Int16 => ints::<Int16Type>(values, ty, |v| i16::try_from(v).ok())?,
        ColumnType::Int32 => ints::<Int32Type>(values, ty, |v| i32::try_from(v).ok())?,
        ColumnType::Int64 => ints::<Int64Type>(values, ty, Some)?,
        ColumnType::Date => ints::<Date32Type>(values, ty, |v| i32::try_from(v).ok())?,
        ColumnType::Time { precision } => match precision {
            // Fluss holds milliseconds whatever the precision; a fraction the column cannot hold is refused.
            0 => ints::<Time32SecondType>(values, ty, |v| {
                (v % 1000 == 0).then(|| i32::try_from(v / 1000).ok()).flatten()
            })?,
            1..=3 => ints::<Time32MillisecondType>(values, ty, |v| i32::try_from(v).ok())?,
            4..=6 => ints::<Time64MicrosecondType>(values, ty, |v| v.checked_mul(1000))?,
            _ => ints::<Time64NanosecondType>(values, ty, |v| v.checked_mul(1_000_000))?,
        },
        ColumnType::Float32 => Arc::new(typed::<_, Float32Array>(values, ty, |d| match *d {
            Datum::Float32(v) => Some(v),
            _ => None,
        })?),
        ColumnType::Float64 => Arc::new(typed::<_, Float64Array>(values, ty, |d| match *d {
            Datum::Float64(v) => Some(v),
            _ => None,
        })?),
        ColumnType::Decimal { precision, scale } => Arc::new(
            typed::<_, Decimal128Array>(values, ty, |d| match *d {
                Datum::Decimal(v) => Some(v),
                _ => None,
            })?
            .with_precision_and_scale(precision, scale)
            .map_err(|e| Error::new(ErrorKind::CorruptRecord, format!("a {ty} value")).with_source(e))?,
        ),
        ColumnType::String | ColumnType::Char { .. } => {
            let mut b = StringBuilder::with_capacity(values.len(), 0);
            for v in values {
                match bytes(v)? {
                    None => b.append_null(),
                    Some(raw) => b.append_value(std::str::from_utf8(raw).map_err(|e| {
                        Error::new(ErrorKind::CorruptRecord, "a string that is not UTF-8").with_source(e)
                    })?),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Binary => {
            let mut b = BinaryBuilder::with_capacity(values.len(), 0);
            for v in values {
                b.append_option(bytes(v)?);
            }
            Arc::new(b.finish())
        }
        ColumnType::FixedBinary { length } => {
            let width = i32::try_from(length).map_err(|_| mismatch(ty))?;
            let mut b = FixedSizeBinaryBuilder::with_capacity(values.len(), width);
            for v in values {
                match bytes(v)? {
                    None => b.append_null(),
                    Some(raw) => b.append_value(raw).map_err(|e| {
                        Error::new(ErrorKind::CorruptRecord, format!("{} bytes for a {ty}", raw.len())).with_source(e)
                    })?,
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Timestamp { precision } | ColumnType::TimestampLtz { precision } => {
            let tz: Option<Arc<str>> = matches!(ty, ColumnType::TimestampLtz { .. }).then(|| "UTC".into());
            let stamps = values
                .iter()
                .map(|d| match *d {
                    Datum::Null => Ok(None),
                    Datum::Timestamp { millis, nano_of_milli } => {
                        let nanos = i64::from(nano_of_milli);
                        let v = match precision {
                            0 => (millis.rem_euclid(1000) == 0 && nano_of_milli == 0).then(|| millis.div_euclid(1000)),
                            1..=3 => Some(millis),
                            4..=6 => millis.checked_mul(1000).and_then(|m| m.checked_add(nanos / 1000)),
                            _ => millis.checked_mul(1_000_000).and_then(|m| m.checked_add(nanos)),
                        };
                        v.map(Some).ok_or_else(|| {
                            Error::new(
                                ErrorKind::CorruptRecord,
                                format!("timestamp {millis} ms is out of range for {ty}"),
                            )
                        })
                    }
                    _ => Err(mismatch(ty)),
                })
                .collect::<Result<Vec<Option<i64>>>>()?;
            match precision {
                0 => Arc::new(PrimitiveArray::<TimestampSecondType>::from(stamps).with_timezone_opt(tz)),
                1..=3 => Arc::new(PrimitiveArray::<TimestampMillisecondType>::from(stamps).with_timezone_opt(tz)),
                4..=6 => Arc::new(PrimitiveArray::<TimestampMicrosecondType>::from(stamps).with_timezone_opt(tz)),
                _ => Arc::new(PrimitiveArray::<TimestampNanosecondType>::from(stamps).with_timezone_opt(tz)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::{Column, TableDescriptor};

    fn descriptor(spec: &str) -> TableDescriptor {
        TableDescriptor {
            columns: crate::model::table::parse_schema(spec).unwrap_or_default(),
            buckets: 1,
            partition_key: None,
            primary_key: vec![],
            properties: Default::default(),
        }
    }

    fn types(d: &TableDescriptor) -> Vec<ColumnType> {
        d.columns.iter().map(|c: &Column| c.data_type).collect()
    }

    #[test]
    fn rows_match_the_bytes_pyfluss_sent() -> Result<()> {
        // fluss-wire-protocol.md §4.1: upsert(1, 'a', 2024-01-02 03:04:05.678901) and upsert(2, 'b', null).
        let d = descriptor("id:int64,name:string,ts:timestamp");
        let expected: [&[u8]; 2] = [
            &[0x00, 0x01, 0x01, 0x61, 0xae, 0xb6, 0x83, 0xc1, 0xcc, 0x31, 0x88, 0xff, 0x36],
            &[0x04, 0x02, 0x01, 0x62],
        ];
        let batch = decode_rows(expected, &d.arrow_schema(), &types(&d))?;
        let ts = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_704_164_645_678_901);
        assert!(ts.is_null(1));
        let cells = cells_of(&batch, &types(&d))?;
        let encoded = encode_rows(&cells, batch.num_rows())?;
        assert_eq!(encoded, expected.map(<[u8]>::to_vec));
        let mut key = Vec::new();
        encode_key(&mut key, &cells[..1], 0)?;
        assert_eq!(key, [0x01]);
        Ok(())
    }

    #[test]
    fn every_type_round_trips_and_corrupt_rows_are_refused() -> Result<()> {
        let d = descriptor(
            "b:bool,t:int8,s:int16,i:int32,l:int64,f:float32,g:float64,d:decimal(10,2),e:decimal(30,4),\
             x:string,c:char(3),y:binary,z:binary(2),dt:date,tm:time(3),tu:time(6),t0:timestamp(0),\
             t3:timestamp(3),t9:timestamp(9),lz:timestamp_ltz(6)",
        );
        let ty = types(&d);
        // Three rows: values, negatives and extremes, and all nulls.
        let rows: Vec<Vec<u8>> = {
            let mut all = Vec::new();
            for row in 0..3 {
                let mut out = vec![0u8; ty.len().div_ceil(8)];
                for (i, &t) in ty.iter().enumerate() {
                    let neg = row == 1;
                    let datum = match (row, t) {
                        (2, _) => Datum::Null,
                        (_, ColumnType::Bool) => Datum::Bool(neg),
                        (_, ColumnType::Int8) => Datum::Int8(if neg { i8::MIN } else { 7 }),
                        (_, ColumnType::Int16) => Datum::Int16(if neg { -300 } else { 300 }),
                        (_, ColumnType::Int32 | ColumnType::Date) => Datum::Int32(if neg { -1 } else { 19_000 }),
                        (_, ColumnType::Time { .. }) => Datum::Int32(if neg { 0 } else { 86_399_999 }),
                        (_, ColumnType::Int64) => Datum::Int64(if neg { i64::MIN } else { 1 << 40 }),
                        (_, ColumnType::Float32) => Datum::Float32(if neg { -1.5 } else { 2.25 }),
                        (_, ColumnType::Float64) => Datum::Float64(if neg { -1e300 } else { 0.1 }),
                        (_, ColumnType::Decimal { precision: 10, .. }) => {
                            Datum::Decimal(if neg { -12_345 } else { 99 })
                        }
                        (_, ColumnType::Decimal { .. }) => {
                            Datum::Decimal(if neg { -(10i128.pow(29)) } else { 10i128.pow(25) })
                        }
                        (_, ColumnType::FixedBinary { .. }) => Datum::Bytes(b"\x00\xff"),
                        (_, ColumnType::Binary) => Datum::Bytes(if neg { b"" } else { b"\x01\x02\x03" }),
                        (_, _) if matches!(t, ColumnType::String | ColumnType::Char { .. }) => {
                            Datum::Bytes("héé".as_bytes())
                        }
                        (_, ColumnType::Timestamp { precision: p } | ColumnType::TimestampLtz { precision: p }) => {
                            Datum::Timestamp {
                                millis: if neg { -1 } else { 1_704_164_645_678 },
                                nano_of_milli: match p {
                                    0..=3 => 0,
                                    4..=6 => 901_000,
                                    _ => 901_234,
                                },
                            }
                        }
                        _ => Datum::Null,
                    };
                    let datum = match (t, datum) {
                        (ColumnType::Timestamp { precision: 0 }, Datum::Timestamp { millis, .. }) => {
                            Datum::Timestamp { millis: millis.div_euclid(1000) * 1000, nano_of_milli: 0 }
                        }
                        (_, d) => d,
                    };
                    match datum {
                        Datum::Null => out[i >> 3] |= 1 << (i & 7),
                        datum => write_field(&mut out, t, datum)?,
                    }
                }
                all.push(out);
            }
            all
        };
        let batch = decode_rows(rows.iter().map(Vec::as_slice), &d.arrow_schema(), &ty)?;
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.column(4).as_primitive::<Int64Type>().value(1), i64::MIN);
        let again = encode_rows(&cells_of(&batch, &ty)?, 3)?;
        assert_eq!(again, rows, "decoding then encoding gives the bytes back");
        assert!(rows[2].len() == ty.len().div_ceil(8), "a row of nulls is its null bit set");

        // Truncated anywhere, or with bytes left over, a row is refused.
        for cut in 0..rows[0].len() {
            assert!(decode_rows([&rows[0][..cut]], &d.arrow_schema(), &ty).is_err(), "cut at {cut}");
        }
        let mut long = rows[0].clone();
        long.push(0);
        assert!(decode_rows([long.as_slice()], &d.arrow_schema(), &ty).is_err());
        Ok(())
    }

    #[test]
    fn minimal_big_endian_matches_java() {
        assert_eq!(minimal_be(0), [0]);
        assert_eq!(minimal_be(127), [0x7f]);
        assert_eq!(minimal_be(128), [0x00, 0x80]);
        assert_eq!(minimal_be(-1), [0xff]);
        assert_eq!(minimal_be(-128), [0x80]);
        assert_eq!(minimal_be(-129), [0xff, 0x7f]);
    }
}
