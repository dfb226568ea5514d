//! Fluss's KV record batch, magic 0: the records of a PutKv request, upserts and deletes of one bucket by key.
//!
//! ```text
//! offset  0  length i32 (= total − 4) · 4 magic u8 = 0 · 5 crc u32: CRC-32C of [9, end)
//!         9  schema_id i16 · 11 attributes u8 · 12 writer_id i64 · 20 batch_sequence i32 · 24 record_count i32
//!        28  records: size i32 (bytes after it) · key length (unsigned varint) · key · value (the rest)
//! ```
//!
//! Little-endian. A record's value is the full row as a CompactedRow ([`crate::model::compacted`]); a record
//! without one deletes its key. Keys are opaque here: the table's key encoding made them
//! ([`crate::model::bucketing`]).

use crate::error::{Error, ErrorKind, Result};

const HEADER_LEN: usize = 28;
const MAGIC: u8 = 0;
const CRC_FROM: usize = 9;

/// One record: a key, and the new row (`None` deletes the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRecord<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// A parsed KV batch whose bounds and crc were checked.
#[derive(Debug)]
pub struct KvRecordBatch<'a> {
    pub schema_id: i16,
    /// The idempotent writer and the batch's sequence, if the client asked for idempotence.
    pub writer: Option<(i64, i32)>,
    pub records: Vec<KvRecord<'a>>,
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::CorruptRecord, what)
}

fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> KvRecordBatch<'a> {
    /// Parses the one batch `bytes` holds (a PutKv bucket's `records`).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!("a KV batch of {} bytes is shorter than its header", bytes.len())));
        }
        let length = usize::try_from(le_i32(bytes, 0)).map_err(|_| corrupt("a KV batch of negative length"))?;
        if length.checked_add(4) != Some(bytes.len()) {
            return Err(corrupt(format!("a KV batch says {length} bytes follow its length; {} do", bytes.len() - 4)));
        }
        if bytes[4] != MAGIC {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!("KV batch magic {} (only 0 is known)", bytes[4]),
            ));
        }
        let stored = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let computed = crc32c::crc32c(&bytes[CRC_FROM..]);
        if stored != computed {
            return Err(corrupt(format!("KV batch crc {stored:#x} does not match its bytes ({computed:#x})")));
        }
        let schema_id = i16::from_le_bytes([bytes[9], bytes[10]]);
        let writer_id = i64::from_le_bytes(bytes[12..20].try_into().map_err(|_| corrupt("a short header"))?);
        let sequence = le_i32(bytes, 20);
        let count = usize::try_from(le_i32(bytes, 24)).map_err(|_| corrupt("a negative record count"))?;
        let mut records = Vec::with_capacity(count.min(bytes.len() / 5));
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            let size = bytes
                .get(at..at + 4)
                .map(|b| le_i32(b, 0))
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| corrupt("a KV record's size"))?;
            let body = bytes
                .get(at + 4..)
                .and_then(|rest| rest.get(..size))
                .ok_or_else(|| corrupt(format!("a KV record of {size} bytes at {at} runs past the batch's end")))?;
            at += 4 + size;
            let (key_len, used) = varint(body).ok_or_else(|| corrupt("a KV record's key length"))?;
            let key = body
                .get(used..)
                .and_then(|rest| rest.get(..key_len))
                .ok_or_else(|| corrupt(format!("a key of {key_len} bytes in a record of {size}")))?;
            let value = &body[used + key_len..];
            records.push(KvRecord { key, value: (!value.is_empty()).then_some(value) });
        }
        if records.len() != count {
            return Err(corrupt(format!("a KV batch says {count} records and holds {}", records.len())));
        }
        Ok(KvRecordBatch { schema_id, writer: (writer_id >= 0).then_some((writer_id, sequence)), records })
    }
}

/// An unsigned LEB128 varint of at most 5 bytes that fits a non-negative i32, and the bytes it took.
fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(5) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v <= i32::MAX as u64).then_some((v as usize, i + 1));
        }
    }
    None
}

/// Encodes a KV batch (what a client sends; for tests and tools).
pub fn encode(schema_id: i16, writer: Option<(i64, i32)>, records: &[KvRecord<'_>]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; HEADER_LEN];
    for r in records {
        let mut body = Vec::new();
        crate::model::compacted::write_varint(&mut body, r.key.len() as u64);
        body.extend_from_slice(r.key);
        body.extend_from_slice(r.value.unwrap_or_default());
        let size = i32::try_from(body.len()).map_err(|_| corrupt("a KV record over 2 GiB"))?;
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&body);
    }
    let length = i32::try_from(out.len() - 4).map_err(|_| corrupt("a KV batch over 2 GiB"))?;
    let count = i32::try_from(records.len()).map_err(|_| corrupt("too many KV records"))?;
    let (writer_id, sequence) = writer.unwrap_or((-1, -1));
    out[0..4].copy_from_slice(&length.to_le_bytes());
    out[4] = MAGIC;
    out[9..11].copy_from_slice(&schema_id.to_le_bytes());
    out[12..20].copy_from_slice(&writer_id.to_le_bytes());
    out[20..24].copy_from_slice(&sequence.to_le_bytes());
    out[24..28].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[5..9].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A value record batch (ScanKv, LimitScan): `length i32 (= total − 4) · magic u8 = 0 · record_count i32`, then
/// each value as `size i32 · value`; a value is `[schema id i16][CompactedRow]`. Little-endian.
pub fn encode_values(values: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 9];
    for v in values {
        let size = i32::try_from(v.len()).map_err(|_| corrupt("a value over 2 GiB"))?;
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(v);
    }
    let length = i32::try_from(out.len() - 4).map_err(|_| corrupt("a value batch over 2 GiB"))?;
    let count = i32::try_from(values.len()).map_err(|_| corrupt("too many values"))?;
    out[0..4].copy_from_slice(&length.to_le_bytes());
    out[4] = MAGIC;
    out[5..9].copy_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// The values of a value record batch ([`encode_values`]).
pub fn parse_values(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    if bytes.len() < 9 || usize::try_from(le_i32(bytes, 0)).ok().and_then(|l| l.checked_add(4)) != Some(bytes.len()) {
        return Err(corrupt("a value batch whose length does not match its bytes"));
    }
    if bytes[4] != MAGIC {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion,
            format!("value batch magic {} (only 0 is known)", bytes[4]),
        ));
    }
    let count = usize::try_from(le_i32(bytes, 5)).map_err(|_| corrupt("a negative value count"))?;
    let (mut at, mut out) = (9, Vec::new());
    while at < bytes.len() {
        let size = bytes.get(at..at + 4).map(|b| le_i32(b, 0)).and_then(|s| usize::try_from(s).ok());
        let value = size.and_then(|s| bytes.get(at + 4..)?.get(..s)).ok_or_else(|| corrupt("a value past the end"))?;
        at += 4 + value.len();
        out.push(value.to_vec());
    }
    if out.len() != count {
        return Err(corrupt(format!("a value batch says {count} values and holds {}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_encodes_and_refuses_damage() -> Result<()> {
        let records = [KvRecord { key: &[1], value: Some(&[0, 1, 1, 0x61]) }, KvRecord { key: &[2], value: None }];
        let bytes = encode(1, Some((1, 0)), &records)?;
        // The header pyfluss sent for two records (fluss-wire-protocol.md §4.1), crc aside.
        assert_eq!(&bytes[9..28], &[1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        let parsed = KvRecordBatch::parse(&bytes)?;
        assert_eq!((parsed.schema_id, parsed.writer), (1, Some((1, 0))));
        assert_eq!(parsed.records, records);

        for cut in 0..bytes.len() {
            assert!(KvRecordBatch::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 4..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(KvRecordBatch::parse(&bad).is_err(), "byte {i} flipped");
        }
        // A record whose key length claims more than the record holds, with a correct crc.
        let mut bad = encode(1, None, &[KvRecord { key: &[1, 2], value: None }])?;
        bad[HEADER_LEN + 4] = 9;
        let crc = crc32c::crc32c(&bad[CRC_FROM..]);
        bad[5..9].copy_from_slice(&crc.to_le_bytes());
        assert!(KvRecordBatch::parse(&bad).is_err());
        Ok(())
    }
}
