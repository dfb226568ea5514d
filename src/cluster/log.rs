//! Durable, append-only log storage of one bucket.
//!
//! A bucket is a directory of segment files named by their first offset (`00000000000000000000.log`). A segment is a
//! sequence of entries, each one Fluss log batch ([`crate::model::record`], base offset and commit timestamp set)
//! behind a fixed header that indexes it:
//!
//! ```text
//! | magic u32 | crc32 u32 | base_offset i64 | offsets u32 | append_ts_ms i64 | writer_id i64 | sequence i32 | payload_len u32 | batch … |
//!              └──────────── covered by the crc: everything after the crc field ────────────────────────────────────────────┘
//! ```
//!
//! Invariants:
//! 1. Offsets are dense: an entry's `base_offset` is the previous entry's `base_offset + offsets`.
//! 2. An append is acknowledged only after `fsync`, so an acknowledged entry survives a crash.
//! 3. Recovery scans the newest segment and truncates it before the first entry that is incomplete or fails its crc
//!    (a torn tail from a crash mid-append); such an entry was never acknowledged. Older segments were closed cleanly
//!    and are only checked for framing.
//! 4. Entries are never rewritten, so a reader can copy payload bytes out of a segment without holding the lock.
//! 5. An idempotent writer's batch is appended once: its sequence must follow the writer's last one in this bucket;
//!    a repeat of one of its last [`WRITER_BATCHES_KEPT`] batches answers that batch's offset again. The writers'
//!    state is rebuilt from the entry headers at open, so it survives a restart with the log it describes.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::model::record::LogRecordBatch;

const MAGIC: u32 = 0x464C_5332; // "FLS2": entries hold Fluss log batches
/// Entries of the first format (Arrow IPC streams), which this version does not read.
const OLD_MAGIC: u32 = 0x464C_5331;
const HEADER_LEN: usize = 44;
/// How many of a writer's latest batches a repeat is recognised against (Fluss keeps 5).
pub const WRITER_BATCHES_KEPT: usize = 5;

/// Where one stored batch lives.
#[derive(Debug, Clone, Copy)]
struct Entry {
    base_offset: i64,
    offsets: u32,
    append_timestamp: i64,
    writer: Option<(i64, i32)>,
    /// Position of the payload in the segment file.
    payload_position: u64,
    payload_len: u32,
}

impl Entry {
    fn end_offset(&self) -> i64 {
        self.base_offset + i64::from(self.offsets)
    }
}

struct Segment {
    base_offset: i64,
    file: Arc<File>,
    size: u64,
    /// Every entry of the segment in offset order: the offset index, rebuilt at open.
    entries: Vec<Entry>,
}

/// A batch read back from the log: `records` is the stored Fluss batch, untouched.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub base_offset: i64,
    /// The offsets the batch takes.
    pub record_count: u32,
    pub append_timestamp: i64,
    pub records: Bytes,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this base offset.
    New { base_offset: i64 },
    /// A writer's repeat of a batch already stored at this base offset (invariant 5): nothing was written.
    Duplicate { base_offset: i64 },
}

impl Appended {
    pub fn base_offset(self) -> i64 {
        match self {
            Appended::New { base_offset } | Appended::Duplicate { base_offset } => base_offset,
        }
    }
}

/// An idempotent writer's latest batches in one bucket: (sequence, base offset), oldest first.
type WriterBatches = VecDeque<(i32, i64)>;

/// The log of one bucket. Not thread-safe by itself: the cluster keeps each behind a mutex.
pub struct BucketLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes: u64,
    writers: HashMap<i64, WriterBatches>,
}

/// A read planned under the lock and carried out after it is released (invariant 4).
pub struct PlannedRead {
    reads: Vec<(Arc<File>, Entry)>,
}

impl PlannedRead {
    /// Copies the planned payloads out of their segments.
    pub fn execute(self) -> Result<Vec<StoredBatch>> {
        self.reads
            .into_iter()
            .map(|(file, e)| {
                let mut buf = vec![0u8; e.payload_len as usize];
                file.read_exact_at(&mut buf, e.payload_position)
                    .map_err(|err| Error::io(format!("reading batch at offset {}", e.base_offset), err))?;
                Ok(StoredBatch {
                    base_offset: e.base_offset,
                    record_count: e.offsets,
                    append_timestamp: e.append_timestamp,
                    records: Bytes::from(buf),
                })
            })
            .collect()
    }
}

impl BucketLog {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut bases: Vec<i64> = Vec::new();
        let listing = fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        for item in listing {
            let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse::<i64>().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut segments = Vec::with_capacity(bases.len());
        let last = bases.len().saturating_sub(1);
        for (i, base) in bases.iter().copied().enumerate() {
            let segment = open_segment(&segment_path(dir, base), base, i == last)?;
            if let Some(prev) = segments.last().map(|s: &Segment| s.end_offset())
                && prev != base
            {
                return Err(Error::new(
                    ErrorKind::Storage,
                    format!("{}: segment {base} does not continue the log at offset {prev}", dir.display()),
                ));
            }
            segments.push(segment);
        }
        let mut writers = HashMap::new();
        for entry in segments.iter().flat_map(|s| &s.entries) {
            if let Some((writer, sequence)) = entry.writer {
                remember(&mut writers, writer, sequence, entry.base_offset);
            }
        }
        let mut log = BucketLog { dir: dir.to_path_buf(), segments, segment_bytes: segment_bytes.max(1), writers };
        if log.segments.is_empty() {
            log.roll(0)?;
        }
        Ok(log)
    }

    /// The offset the next record gets: the high watermark (every stored record is durable).
    pub fn end_offset(&self) -> i64 {
        self.segments.last().map(Segment::end_offset).unwrap_or(0)
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> i64 {
        self.segments.first().map(|s| s.base_offset).unwrap_or(0)
    }

    /// Checks an idempotent writer's next batch against the ones it already stored here (invariant 5): `Some` base
    /// offset for a repeat, `None` for the next in sequence.
    pub fn check_sequence(&self, writer: i64, sequence: i32) -> Result<Option<i64>> {
        let recent = self.writers.get(&writer);
        if let Some(&(_, base)) = recent.and_then(|r| r.iter().find(|(s, _)| *s == sequence)) {
            return Ok(Some(base));
        }
        let expected = recent.and_then(|r| r.back()).map(|&(s, _)| s.wrapping_add(1) & i32::MAX).unwrap_or(0);
        if sequence != expected {
            return Err(Error::new(
                ErrorKind::OutOfOrderSequence,
                format!("writer {writer} sent batch sequence {sequence}; this bucket expects {expected}"),
            ));
        }
        Ok(None)
    }

    /// Checks a request's batches against their writers' sequences as a whole, before any is appended: a request
    /// whose third batch is out of order stores none of them.
    pub fn check_sequences(&self, batches: &[LogRecordBatch]) -> Result<()> {
        let mut next: HashMap<i64, i32> = HashMap::new();
        for batch in batches {
            let Some((writer, sequence)) = batch.header().writer() else { continue };
            let repeat = self.writers.get(&writer).is_some_and(|r| r.iter().any(|(s, _)| *s == sequence));
            let expected = match next.get(&writer) {
                Some(&n) => n,
                None => self
                    .writers
                    .get(&writer)
                    .and_then(|r| r.back())
                    .map(|&(s, _)| s.wrapping_add(1) & i32::MAX)
                    .unwrap_or(0),
            };
            if !repeat && sequence != expected {
                return Err(Error::new(
                    ErrorKind::OutOfOrderSequence,
                    format!("writer {writer} sent batch sequence {sequence}; this bucket expects {expected}"),
                ));
            }
            if !repeat {
                next.insert(writer, sequence.wrapping_add(1) & i32::MAX);
            }
        }
        Ok(())
    }

    /// Appends one batch, placed at the log's end and stamped with `append_timestamp` (or the previous batch's, if
    /// the clock went back: append times never decrease), and makes it durable; a writer's repeat is answered
    /// without writing (invariant 5).
    pub fn append(&mut self, batch: LogRecordBatch, append_timestamp: i64) -> Result<Appended> {
        let append_timestamp = append_timestamp.max(self.last_append_timestamp());
        let header = *batch.header();
        if let Some((writer, sequence)) = header.writer()
            && let Some(base_offset) = self.check_sequence(writer, sequence)?
        {
            return Ok(Appended::Duplicate { base_offset });
        }
        let offsets = u32::try_from(header.offset_span())
            .map_err(|_| Error::new(ErrorKind::CorruptMessage, "a batch must span 1 to 2^31 offsets"))?;
        let base_offset = self.end_offset();
        let batch = batch.at(base_offset, append_timestamp);
        let records = batch.bytes();
        let payload_len = u32::try_from(records.len())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "a batch must be smaller than 4 GiB"))?;
        if self.segments.last().is_some_and(|s| s.size >= self.segment_bytes) {
            self.roll(base_offset)?;
        }
        let segment = self.segments.last_mut().ok_or_else(|| Error::new(ErrorKind::Internal, "log has no segment"))?;
        let (writer_id, sequence) = header.writer().unwrap_or((crate::model::record::NO_WRITER, -1));
        let mut entry_header = [0u8; HEADER_LEN];
        entry_header[8..16].copy_from_slice(&base_offset.to_le_bytes());
        entry_header[16..20].copy_from_slice(&offsets.to_le_bytes());
        entry_header[20..28].copy_from_slice(&append_timestamp.to_le_bytes());
        entry_header[28..36].copy_from_slice(&writer_id.to_le_bytes());
        entry_header[36..40].copy_from_slice(&sequence.to_le_bytes());
        entry_header[40..44].copy_from_slice(&payload_len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&entry_header[8..]);
        crc.update(records);
        entry_header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        entry_header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());

        let position = segment.size;
        let write = |mut f: &File| -> std::io::Result<()> {
            f.write_all(&entry_header)?;
            f.write_all(records)?;
            f.sync_data()
        };
        if let Err(err) = write(&segment.file) {
            // Cut off whatever part of the entry reached the file so the next append starts on a boundary.
            let _ = segment.file.set_len(position);
            return Err(Error::io(format!("appending to {}", self.dir.display()), err));
        }
        segment.size = position + (HEADER_LEN + records.len()) as u64;
        segment.entries.push(Entry {
            base_offset,
            offsets,
            append_timestamp,
            writer: header.writer(),
            payload_position: position + HEADER_LEN as u64,
            payload_len,
        });
        if let Some((writer, sequence)) = header.writer() {
            remember(&mut self.writers, writer, sequence, base_offset);
        }
        Ok(Appended::New { base_offset })
    }

    /// The base offset of the first batch appended at or after `timestamp` (append times never go back, see
    /// [`BucketLog::append`]); the end offset if there is none.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> i64 {
        let segment =
            self.segments.partition_point(|s| s.entries.last().is_some_and(|e| e.append_timestamp < timestamp));
        let Some(segment) = self.segments.get(segment) else { return self.end_offset() };
        let entry = segment.entries.partition_point(|e| e.append_timestamp < timestamp);
        segment.entries.get(entry).map(|e| e.base_offset).unwrap_or_else(|| self.end_offset())
    }

    fn last_append_timestamp(&self) -> i64 {
        self.segments.iter().rev().find_map(|s| s.entries.last()).map(|e| e.append_timestamp).unwrap_or(i64::MIN)
    }

    /// Plans a read of the batches from the one holding `offset` on, up to `max_bytes` of payload (at least one
    /// batch when any exists). `offset == end_offset()` plans nothing.
    pub fn plan_read(&self, offset: i64, max_bytes: usize) -> Result<PlannedRead> {
        let (start, end) = (self.start_offset(), self.end_offset());
        if offset < start || offset > end {
            return Err(Error::new(
                ErrorKind::OffsetOutOfRange,
                format!("offset {offset} is outside the log [{start}, {end}]"),
            ));
        }
        let mut reads = Vec::new();
        let mut bytes = 0usize;
        let first_segment = self.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
        'segments: for segment in &self.segments[first_segment..] {
            let first_entry = segment.entries.partition_point(|e| e.end_offset() <= offset);
            for entry in &segment.entries[first_entry..] {
                if !reads.is_empty() && bytes + entry.payload_len as usize > max_bytes {
                    break 'segments;
                }
                bytes += entry.payload_len as usize;
                reads.push((Arc::clone(&segment.file), *entry));
            }
        }
        Ok(PlannedRead { reads })
    }

    fn roll(&mut self, base_offset: i64) -> Result<()> {
        let path = segment_path(&self.dir, base_offset);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating segment {}", path.display()), e))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment { base_offset, file: Arc::new(file), size: 0, entries: Vec::new() });
        Ok(())
    }
}

impl Segment {
    fn end_offset(&self) -> i64 {
        self.entries.last().map(Entry::end_offset).unwrap_or(self.base_offset)
    }
}

/// Records a writer's stored batch, keeping its latest [`WRITER_BATCHES_KEPT`].
fn remember(writers: &mut HashMap<i64, WriterBatches>, writer: i64, sequence: i32, base_offset: i64) {
    let recent = writers.entry(writer).or_default();
    recent.push_back((sequence, base_offset));
    if recent.len() > WRITER_BATCHES_KEPT {
        recent.pop_front();
    }
}

fn segment_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

/// Makes a directory's entries (new files, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// Scans a segment, rebuilding its index; the newest segment is also checked by crc and truncated at the first
/// bad entry (invariant 3).
fn open_segment(path: &Path, base_offset: i64, is_newest: bool) -> Result<Segment> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening segment {}", path.display()), e))?;
    let len = file.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
    let mut entries = Vec::new();
    let mut position = 0u64;
    let mut expected_offset = base_offset;
    let mut header = [0u8; HEADER_LEN];
    let valid_end = loop {
        if position + HEADER_LEN as u64 > len || file.read_exact_at(&mut header, position).is_err() {
            break position;
        }
        let (magic, crc, entry_base, count, ts, writer_id, sequence, payload_len) = (
            le_u32(&header, 0),
            le_u32(&header, 4),
            le_i64(&header, 8),
            le_u32(&header, 16),
            le_i64(&header, 20),
            le_i64(&header, 28),
            le_u32(&header, 36) as i32,
            le_u32(&header, 40),
        );
        if magic == OLD_MAGIC {
            // Not a storage failure a retry could mend: this data directory needs a binary of its own version.
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "segment {} was written by an earlier version of fluss-tiering (Arrow IPC entries); \
                     this version stores Fluss log batches: start the cluster on a new data directory",
                    path.display()
                ),
            ));
        }
        let payload_position = position + HEADER_LEN as u64;
        let entry_end = payload_position + u64::from(payload_len);
        if magic != MAGIC || entry_base != expected_offset || count == 0 || entry_end > len {
            break position;
        }
        if is_newest {
            let mut payload = vec![0u8; payload_len as usize];
            if file.read_exact_at(&mut payload, payload_position).is_err() {
                break position;
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[8..]);
            hasher.update(&payload);
            if hasher.finalize() != crc {
                break position;
            }
        }
        entries.push(Entry {
            base_offset: entry_base,
            offsets: count,
            append_timestamp: ts,
            writer: (writer_id != crate::model::record::NO_WRITER).then_some((writer_id, sequence)),
            payload_position,
            payload_len,
        });
        expected_offset = entry_base + i64::from(count);
        position = entry_end;
    };
    if valid_end < len {
        if !is_newest {
            return Err(Error::new(
                ErrorKind::Storage,
                format!("segment {} is corrupt at byte {valid_end} and is not the newest", path.display()),
            ));
        }
        tracing::warn!(segment = %path.display(), valid_end, len, "truncating torn tail of log segment");
        file.set_len(valid_end).map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
        file.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
    }
    Ok(Segment { base_offset, file: Arc::new(file), size: valid_end, entries })
}

fn le_u32(header: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&header[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_i64(header: &[u8; HEADER_LEN], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[at..at + 8]);
    i64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::model::record::{BatchSpec, Compression, encode};

    fn read_all(log: &BucketLog, from: i64) -> Vec<StoredBatch> {
        log.plan_read(from, usize::MAX).and_then(PlannedRead::execute).expect("read")
    }

    /// A batch of `rows` records numbered from `first`.
    fn batch(first: i64, rows: i64, writer: Option<(i64, i32)>) -> LogRecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let records = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(first..first + rows))])
            .expect("batch");
        let spec = BatchSpec { schema_id: 1, writer, compression: Compression::None };
        LogRecordBatch::parse(encode(spec, &records, None).expect("encode")).expect("parse")
    }

    #[test]
    fn appends_reads_rolls_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = BucketLog::open(dir.path(), 1000).expect("open");
        for i in 0..10i64 {
            let before = log.end_offset();
            assert_eq!(
                log.append(batch(before, i + 1, None), 1000 + i).expect("append"),
                Appended::New { base_offset: before }
            );
        }
        assert_eq!(log.end_offset(), 55);
        assert!(log.segments.len() > 1, "small segment size rolls");
        let batches = read_all(&log, 7);
        // Offset 7 lies in the batch [6, 10) of 4 records, stored with its offset and time set.
        assert_eq!(batches[0].base_offset, 6);
        assert_eq!(batches.len(), 7);
        let stored = LogRecordBatch::parse(batches[0].records.clone()).expect("a Fluss batch");
        stored.check_crc().expect("crc");
        assert_eq!((stored.header().base_offset, stored.header().commit_timestamp), (6, 1003));
        let one = log.plan_read(0, 1).and_then(PlannedRead::execute).expect("read");
        assert_eq!(one.len(), 1, "a budget smaller than a batch still returns one batch");
        assert!(log.plan_read(56, 10).is_err());
        assert!(log.plan_read(55, 10).and_then(PlannedRead::execute).expect("read").is_empty());
        drop(log);

        // Tear the tail: chop 5 bytes off the newest segment.
        let mut files: Vec<_> = fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").path()).collect();
        files.sort();
        let newest = files.last().expect("a segment");
        let len = fs::metadata(newest).expect("meta").len();
        OpenOptions::new().write(true).open(newest).expect("open").set_len(len - 5).expect("truncate");
        let mut log = BucketLog::open(dir.path(), 1000).expect("reopen");
        assert_eq!(log.end_offset(), 45, "the torn batch of 10 records is gone");
        assert_eq!(log.append(batch(45, 1, None), 0).expect("append").base_offset(), 45, "offsets continue");
        assert_eq!(read_all(&log, 0).iter().map(|b| b.record_count).sum::<u32>(), 46);
    }

    #[test]
    fn an_idempotent_writer_is_appended_once_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = BucketLog::open(dir.path(), 1 << 20).expect("open");
        let kind = |r: Result<Appended>| r.map_err(|e| e.kind());
        assert_eq!(kind(log.append(batch(0, 2, Some((7, 1))), 0)), Err(ErrorKind::OutOfOrderSequence), "starts at 0");
        assert_eq!(kind(log.append(batch(0, 2, Some((7, 0))), 0)), Ok(Appended::New { base_offset: 0 }));
        assert_eq!(kind(log.append(batch(2, 3, Some((7, 1))), 0)), Ok(Appended::New { base_offset: 2 }));
        assert_eq!(kind(log.append(batch(0, 2, Some((8, 0))), 0)), Ok(Appended::New { base_offset: 5 }));
        drop(log);
        let mut log = BucketLog::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(
            kind(log.append(batch(2, 3, Some((7, 1))), 0)),
            Ok(Appended::Duplicate { base_offset: 2 }),
            "a retry after a lost acknowledgement is recognised, after a restart too"
        );
        assert_eq!(kind(log.append(batch(9, 1, Some((7, 3))), 0)), Err(ErrorKind::OutOfOrderSequence), "a gap");
        assert_eq!(kind(log.append(batch(7, 1, Some((7, 2))), 0)), Ok(Appended::New { base_offset: 7 }));
        assert_eq!(log.end_offset(), 8);
        // A request is checked as a whole: its second batch out of order refuses the first too.
        let request = [batch(8, 1, Some((7, 3))), batch(9, 1, Some((7, 5)))];
        assert_eq!(log.check_sequences(&request).map_err(|e| e.kind()), Err(ErrorKind::OutOfOrderSequence));
        let request = [batch(8, 1, Some((7, 2))), batch(8, 1, Some((7, 3))), batch(9, 1, Some((7, 4)))];
        assert!(log.check_sequences(&request).is_ok(), "a repeat, then the next two in order");
    }
}
