//! Apache Fluss's log record batch, magic 0 (what every Fluss writer emits): the records of a bucket's log, the
//! same bytes on both wires and on disk, so a fetch returns what was stored without re-encoding.
//!
//! ```text
//! offset  0  base_offset i64        ┐ written by the server on append: outside the crc
//!         8  length i32 (= total − 12)
//!        12  magic u8 = 0
//!        13  commit_timestamp i64   ┘
//!        21  crc u32: CRC-32C of [25, end)
//!        25  schema_id i16 · 27 attributes u8 (bit 0: append-only) · 28 last_offset_delta i32
//!        32  writer_id i64 · 40 batch_sequence i32 · 44 record_count i32
//!        48  [record_count change-type bytes, unless append-only] one Arrow IPC RecordBatch message (no schema)
//! ```
//!
//! All header integers are little-endian. Invariants:
//! 1. The crc covers everything a producer wrote except the two fields the server assigns, so patching them
//!    ([`LogRecordBatch::at`]) keeps the batch valid.
//! 2. A batch spans `last_offset_delta + 1` offsets, even one of zero records.
//! 3. The Arrow message carries no schema: readers take it from the table's schema of the batch's `schema_id`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::{CompressionContext, DictionaryTracker, IpcDataGenerator, IpcWriteOptions, write_message};
use arrow::ipc::{CompressionType, MetadataVersion};
use bytes::{Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};
use crate::model::change::{CHANGE_TYPE_COLUMN, ChangeType};
use crate::model::table::TableDescriptor;

pub const HEADER_LEN: usize = 48;
/// A producer that does not ask for idempotence.
pub const NO_WRITER: i64 = -1;
pub const NO_SEQUENCE: i32 = -1;
const MAGIC: u8 = 0;
const APPEND_ONLY: u8 = 1;
const CRC_FROM: usize = 25;
/// The most one compressed Arrow buffer may claim to expand to (a batch is bounded by its request's frame anyway).
const MAX_DECOMPRESSED_BUFFER: i64 = 256 << 20;

/// How the Arrow body is compressed (`table.log.arrow.compression.type`; Fluss's default is ZSTD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    Lz4Frame,
    #[default]
    Zstd,
}

impl Compression {
    /// The option's value (`NONE`, `LZ4_FRAME`, `ZSTD`); absent means ZSTD.
    pub fn from_property(value: Option<&str>) -> Result<Self> {
        match value.map(str::to_ascii_uppercase).as_deref() {
            None | Some("ZSTD") => Ok(Compression::Zstd),
            Some("LZ4_FRAME") => Ok(Compression::Lz4Frame),
            Some("NONE") => Ok(Compression::None),
            Some(other) => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("table.log.arrow.compression.type must be NONE, LZ4_FRAME or ZSTD, not {other:?}"),
            )),
        }
    }

    fn arrow(self) -> Option<CompressionType> {
        match self {
            Compression::None => None,
            Compression::Lz4Frame => Some(CompressionType::LZ4_FRAME),
            Compression::Zstd => Some(CompressionType::ZSTD),
        }
    }
}

/// The fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub commit_timestamp: i64,
    pub crc: u32,
    pub schema_id: i16,
    pub append_only: bool,
    pub last_offset_delta: i32,
    pub writer_id: i64,
    pub batch_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// How many offsets the batch takes (invariant 2).
    pub fn offset_span(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    /// The writer and sequence, when the producer is idempotent.
    pub fn writer(&self) -> Option<(i64, i32)> {
        (self.writer_id != NO_WRITER).then_some((self.writer_id, self.batch_sequence))
    }
}

/// One batch: its bytes and their parsed header (length, magic and counts checked; the crc on request).
#[derive(Debug, Clone)]
pub struct LogRecordBatch {
    bytes: Bytes,
    header: BatchHeader,
}

/// A batch decoded: its rows, and for a changelog each row's change type.
#[derive(Debug)]
pub struct Decoded {
    pub records: RecordBatch,
    pub change_types: Option<Vec<ChangeType>>,
}

impl Decoded {
    /// The rows with their change types as a last `_change_type` column (Paimon's row-kind numbers), the shape the
    /// primary-key state and the job's consolidation read; an append-only batch reads as inserts.
    pub fn into_changelog(self) -> Result<RecordBatch> {
        let n = self.records.num_rows();
        let kinds: Int8Array = match self.change_types {
            Some(types) => types.into_iter().map(|t| Some(t as i8)).collect(),
            None => std::iter::repeat_n(Some(ChangeType::Insert as i8), n).collect(),
        };
        let schema = self.records.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(CHANGE_TYPE_COLUMN, DataType::Int8, false));
        let mut columns: Vec<ArrayRef> = self.records.columns().to_vec();
        columns.push(Arc::new(kinds));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| Error::new(ErrorKind::Internal, "adding the change-type column").with_source(e))
    }
}

fn le_i16(b: &[u8], at: usize) -> i16 {
    i16::from_le_bytes([b[at], b[at + 1]])
}
fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(x)
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::CorruptRecord, what)
}

/// The length of the batch that starts `bytes` (`None` if fewer than 12 bytes or a negative length).
pub fn batch_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 12 {
        return None;
    }
    usize::try_from(le_i32(bytes, 8)).ok().and_then(|l| l.checked_add(12))
}

/// Splits a `records` field (batches back to back) into its batches; trailing bytes that are not a whole batch are
/// an error (a producer's records must be whole).
pub fn split(records: &Bytes) -> Result<Vec<LogRecordBatch>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let len = batch_len(&records[at..])
            .filter(|&l| at + l <= records.len())
            .ok_or_else(|| corrupt(format!("records end inside a batch at byte {at} of {}", records.len())))?;
        out.push(LogRecordBatch::parse(records.slice(at..at + len))?);
        at += len;
    }
    Ok(out)
}

impl LogRecordBatch {
    /// Parses exactly one batch.
    pub fn parse(bytes: Bytes) -> Result<Self> {
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!("a log batch needs {HEADER_LEN} header bytes, got {}", bytes.len())));
        }
        if batch_len(&bytes) != Some(bytes.len()) {
            return Err(corrupt(format!(
                "batch length field {} does not match its {} bytes",
                le_i32(&bytes, 8),
                bytes.len()
            )));
        }
        if bytes[12] != MAGIC {
            return Err(corrupt(format!("log batch magic {} is not supported (only magic 0)", bytes[12])));
        }
        let header = BatchHeader {
            base_offset: le_i64(&bytes, 0),
            commit_timestamp: le_i64(&bytes, 13),
            crc: u32::from_le_bytes([bytes[21], bytes[22], bytes[23], bytes[24]]),
            schema_id: le_i16(&bytes, 25),
            append_only: bytes[27] & APPEND_ONLY != 0,
            last_offset_delta: le_i32(&bytes, 28),
            writer_id: le_i64(&bytes, 32),
            batch_sequence: le_i32(&bytes, 40),
            record_count: le_i32(&bytes, 44),
        };
        let expected_delta = header.record_count.saturating_sub(1).max(0);
        if header.record_count < 0 || header.last_offset_delta != expected_delta {
            return Err(corrupt(format!(
                "batch counts disagree: {} records, last offset delta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        if !header.append_only && bytes.len() < HEADER_LEN + header.record_count as usize {
            return Err(corrupt("batch is shorter than its change-type vector"));
        }
        Ok(LogRecordBatch { bytes, header })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Checks the CRC-32C of `[25, end)`.
    pub fn check_crc(&self) -> Result<()> {
        let computed = crc32c::crc32c(&self.bytes[CRC_FROM..]);
        if computed != self.header.crc {
            return Err(corrupt(format!(
                "log batch crc {:#010x} does not match its contents ({computed:#010x})",
                self.header.crc
            )));
        }
        Ok(())
    }

    /// The batch placed in a log: base offset and commit timestamp set (invariant 1: the crc stays valid).
    pub fn at(self, base_offset: i64, commit_timestamp: i64) -> Self {
        let mut bytes = BytesMut::from(self.bytes.as_ref());
        bytes[0..8].copy_from_slice(&base_offset.to_le_bytes());
        bytes[13..21].copy_from_slice(&commit_timestamp.to_le_bytes());
        LogRecordBatch { bytes: bytes.freeze(), header: BatchHeader { base_offset, commit_timestamp, ..self.header } }
    }

    /// The rows as the table reads them: decoded in the schema of the batch's schema id; a primary-key table's with
    /// their change types as a last column ([`Decoded::into_changelog`]).
    pub fn read(&self, descriptor: &TableDescriptor) -> Result<RecordBatch> {
        let decoded = self.decode(&descriptor.arrow_schema_of(self.header.schema_id)?)?;
        match descriptor.has_primary_key() {
            true => decoded.into_changelog(),
            false => Ok(decoded.records),
        }
    }

    /// Decodes the rows with `schema`, the table's schema of this batch's schema id (invariant 3).
    pub fn decode(&self, schema: &SchemaRef) -> Result<Decoded> {
        let count = self.header.record_count as usize;
        let (change_types, arrow_at) = if self.header.append_only {
            (None, HEADER_LEN)
        } else {
            let types = self.bytes[HEADER_LEN..HEADER_LEN + count]
                .iter()
                .map(|&b| ChangeType::from_fluss(b))
                .collect::<Result<Vec<_>>>()?;
            (Some(types), HEADER_LEN + count)
        };
        if count == 0 {
            return Ok(Decoded { records: RecordBatch::new_empty(Arc::clone(schema)), change_types });
        }
        let records = decode_message(&self.bytes.slice(arrow_at..), schema)?;
        if records.num_rows() != count {
            return Err(corrupt(format!("batch says {count} records but its Arrow body holds {}", records.num_rows())));
        }
        Ok(Decoded { records, change_types })
    }
}

/// Reads one encapsulated Arrow IPC RecordBatch message: `0xFFFFFFFF`, metadata length, flatbuffer, body.
fn decode_message(message: &Bytes, schema: &SchemaRef) -> Result<RecordBatch> {
    let fail = |what: &str| corrupt(format!("the batch's Arrow message {what}"));
    if message.len() < 8 || message[0..4] != [0xFF; 4] {
        return Err(fail("does not start with a continuation marker"));
    }
    let meta_len = usize::try_from(le_i32(message, 4)).map_err(|_| fail("has a negative metadata length"))?;
    let body_at = 8usize.checked_add(meta_len).filter(|&b| b <= message.len()).ok_or_else(|| fail("is cut short"))?;
    let meta = arrow::ipc::root_as_message(&message[8..body_at])
        .map_err(|e| fail(&format!("has malformed metadata ({e})")))?;
    let batch = meta.header_as_record_batch().ok_or_else(|| fail("is not a record batch"))?;
    let body_len = usize::try_from(meta.bodyLength()).map_err(|_| fail("has a negative body length"))?;
    let body_end = body_at.checked_add(body_len).filter(|&e| e <= message.len()).ok_or_else(|| fail("is cut short"))?;
    let nodes = batch.nodes().map(|n| n.len()).unwrap_or(0);
    if nodes != schema.fields().iter().map(|f| field_nodes(f.data_type())).sum::<usize>() {
        return Err(Error::new(
            ErrorKind::SchemaMismatch,
            format!("the batch's Arrow body has {nodes} field nodes, which the table's schema of its id does not"),
        ));
    }
    let body = message.slice(body_at..body_end);
    // The crc only says the producer wrote these bytes, not that they are sound: every buffer must lie inside the
    // body, and a compressed one must not claim to expand past the limit (arrow-ipc allocates what it claims).
    let compressed = batch.compression().is_some();
    for b in batch.buffers().into_iter().flatten() {
        let (offset, len) = (usize::try_from(b.offset()), usize::try_from(b.length()));
        let (Ok(offset), Ok(len)) = (offset, len) else { return Err(fail("has a buffer at a negative position")) };
        let end =
            offset.checked_add(len).filter(|&e| e <= body.len()).ok_or_else(|| fail("has a buffer past its body"))?;
        if compressed && len >= 8 {
            let claimed = le_i64(&body[offset..end], 0);
            if claimed > MAX_DECOMPRESSED_BUFFER {
                return Err(fail(&format!("has a buffer that claims to decompress to {claimed} bytes")));
            }
        }
    }
    let body = Buffer::from(body);
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        arrow::ipc::reader::read_record_batch(&body, batch, Arc::clone(schema), &HashMap::new(), None, &meta.version())
    }))
    .map_err(|_| fail("cannot be read (the Arrow reader gave up on it)"))?;
    read.map_err(|e| {
        // The crc held, so the producer wrote these bytes: in another schema than the one its id names.
        Error::new(ErrorKind::SchemaMismatch, "the batch's Arrow body does not fit the table's schema of its id")
            .with_source(e)
    })
}

/// How many field nodes an Arrow IPC record batch has for a column of `data_type` (one, plus its children's).
fn field_nodes(data_type: &DataType) -> usize {
    use DataType::*;
    1 + match data_type {
        List(f) | LargeList(f) | FixedSizeList(f, _) | Map(f, _) | ListView(f) | LargeListView(f) => {
            field_nodes(f.data_type())
        }
        Struct(fields) => fields.iter().map(|f| field_nodes(f.data_type())).sum(),
        _ => 0,
    }
}

/// What a new batch is: its schema id, its writer (idempotent producers) and how its body is compressed.
#[derive(Debug, Clone, Copy)]
pub struct BatchSpec {
    pub schema_id: i16,
    pub writer: Option<(i64, i32)>,
    pub compression: Compression,
}

/// Encodes rows as one batch at offset 0 (the server places it). `change_types`, one per row, makes a changelog
/// batch; without them the batch is append-only.
pub fn encode(spec: BatchSpec, records: &RecordBatch, change_types: Option<&[ChangeType]>) -> Result<Bytes> {
    let count = records.num_rows();
    let record_count =
        i32::try_from(count).map_err(|_| Error::new(ErrorKind::InvalidArgument, "too many rows for one batch"))?;
    if change_types.is_some_and(|t| t.len() != count) {
        return Err(Error::new(ErrorKind::Internal, "one change type per row is needed"));
    }
    let mut out = vec![0u8; HEADER_LEN];
    if let Some(types) = change_types {
        out.extend(types.iter().map(|t| t.to_fluss()));
    }
    if count > 0 {
        let fail = |e| Error::new(ErrorKind::Internal, "encoding an Arrow record batch").with_source(e);
        let options = IpcWriteOptions::try_new(8, false, MetadataVersion::V5)
            .and_then(|o| o.try_with_compression(spec.compression.arrow()))
            .map_err(fail)?;
        let (_, encoded) = IpcDataGenerator::default()
            .encode(records, &mut DictionaryTracker::new(false), &options, &mut CompressionContext::default())
            .map_err(fail)?;
        write_message(&mut out, encoded, &options).map_err(fail)?;
    }
    let length = i32::try_from(out.len() - 12)
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "a log batch must be smaller than 2 GiB"))?;
    let (writer_id, sequence) = spec.writer.unwrap_or((NO_WRITER, NO_SEQUENCE));
    out[8..12].copy_from_slice(&length.to_le_bytes());
    out[12] = MAGIC;
    out[25..27].copy_from_slice(&spec.schema_id.to_le_bytes());
    out[27] = if change_types.is_none() { APPEND_ONLY } else { 0 };
    out[28..32].copy_from_slice(&(record_count - 1).max(0).to_le_bytes());
    out[32..40].copy_from_slice(&writer_id.to_le_bytes());
    out[40..44].copy_from_slice(&sequence.to_le_bytes());
    out[44..48].copy_from_slice(&record_count.to_le_bytes());
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[21..25].copy_from_slice(&crc.to_le_bytes());
    Ok(Bytes::from(out))
}

/// Encodes batches back to back, each under the schema id its column count names (schema `n` is a table's first
/// `n` columns), ZSTD-compressed, without a writer: what a plain producer sends.
pub fn encode_all(batches: &[RecordBatch]) -> Result<Bytes> {
    let mut out = BytesMut::new();
    for batch in batches {
        let schema_id = i16::try_from(batch.num_columns())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "too many columns for one schema"))?;
        let spec = BatchSpec { schema_id, writer: None, compression: Compression::Zstd };
        out.extend_from_slice(&encode(spec, batch, None)?);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn rows() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn round_trips_every_compression_and_changelogs() {
        let batch = rows();
        for compression in [Compression::None, Compression::Lz4Frame, Compression::Zstd] {
            let spec = BatchSpec { schema_id: 2, writer: Some((7, 4)), compression };
            let bytes = encode(spec, &batch, None).expect("encode");
            let parsed = LogRecordBatch::parse(bytes).expect("parse");
            parsed.check_crc().expect("crc");
            let h = *parsed.header();
            assert_eq!((h.schema_id, h.writer(), h.record_count, h.offset_span()), (2, Some((7, 4)), 3, 3));
            assert!(h.append_only);
            let decoded = parsed.decode(&batch.schema()).expect("decode");
            assert_eq!(decoded.records, batch);
            assert!(decoded.change_types.is_none());
        }
        let types = [ChangeType::Insert, ChangeType::UpdateBefore, ChangeType::Delete];
        let spec = BatchSpec { schema_id: 1, writer: None, compression: Compression::None };
        let parsed = LogRecordBatch::parse(encode(spec, &batch, Some(&types)).expect("encode")).expect("parse");
        assert!(!parsed.header().append_only);
        assert_eq!(parsed.bytes()[HEADER_LEN..HEADER_LEN + 3], [1, 2, 4], "Fluss's change-type bytes");
        let decoded = parsed.decode(&batch.schema()).expect("decode");
        assert_eq!(decoded.change_types.as_deref(), Some(&types[..]));
    }

    #[test]
    fn placing_keeps_the_crc_and_corruption_is_caught() {
        let spec = BatchSpec { schema_id: 1, writer: None, compression: Compression::Zstd };
        let bytes = encode(spec, &rows(), None).expect("encode");
        let placed = LogRecordBatch::parse(bytes.clone()).expect("parse").at(42, 1_700_000_000_000);
        placed.check_crc().expect("base offset and timestamp are outside the crc");
        assert_eq!(le_i64(placed.bytes(), 0), 42);
        let reparsed = LogRecordBatch::parse(placed.bytes().clone()).expect("parse");
        assert_eq!((reparsed.header().base_offset, reparsed.header().commit_timestamp), (42, 1_700_000_000_000));

        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let flipped = LogRecordBatch::parse(Bytes::from(flipped)).expect("framing is intact");
        assert_eq!(flipped.check_crc().map_err(|e| e.kind()).err(), Some(ErrorKind::CorruptRecord));

        let two = Bytes::from([bytes.as_ref(), bytes.as_ref()].concat());
        assert_eq!(split(&two).expect("two batches").len(), 2);
        assert!(split(&two.slice(..two.len() - 1)).is_err(), "a partial trailing batch is refused");
        assert!(LogRecordBatch::parse(bytes.slice(..20)).is_err());
        let wrong = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        assert!(LogRecordBatch::parse(bytes).expect("parse").decode(&wrong).is_err(), "a schema that does not fit");
    }

    #[test]
    fn a_crafted_body_is_refused_not_a_panic() {
        let spec = BatchSpec { schema_id: 1, writer: None, compression: Compression::Zstd };
        let batch = rows();
        let good = encode(spec, &batch, None).expect("encode").to_vec();
        // Every byte of the Arrow message flipped in turn, crc recomputed: the batch is refused or read, never a
        // panic or an abort.
        for at in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0xA5;
            let crc = crc32c::crc32c(&bad[CRC_FROM..]);
            bad[21..25].copy_from_slice(&crc.to_le_bytes());
            if let Ok(parsed) = LogRecordBatch::parse(Bytes::from(bad)) {
                let _ = parsed.decode(&batch.schema());
            }
        }
    }

    #[test]
    fn an_empty_batch_still_takes_one_offset() {
        let spec = BatchSpec { schema_id: 1, writer: Some((1, 0)), compression: Compression::Zstd };
        let empty = RecordBatch::new_empty(rows().schema());
        let parsed = LogRecordBatch::parse(encode(spec, &empty, Some(&[])).expect("encode")).expect("parse");
        assert_eq!((parsed.header().record_count, parsed.header().offset_span()), (0, 1));
        assert_eq!(parsed.decode(&rows().schema()).expect("decode").records.num_rows(), 0);
    }
}
