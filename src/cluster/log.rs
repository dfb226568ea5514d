//! Durable, append-only log storage of one bucket.
//!
//! A bucket is a directory of segment files named by their first offset (`00000000000000000000.log`). A segment is a
//! sequence of entries, each one Arrow IPC stream (a produced batch) behind a fixed header:
//!
//! ```text
//! | magic u32 | crc32 u32 | base_offset i64 | record_count u32 | append_ts_ms i64 | payload_len u32 | payload … |
//!              └──────────── covered by the crc: everything after the crc field ───────────────────────────┘
//! ```
//!
//! Invariants:
//! 1. Offsets are dense: an entry's `base_offset` is the previous entry's `base_offset + record_count`.
//! 2. An append is acknowledged only after `fsync`, so an acknowledged entry survives a crash.
//! 3. Recovery scans the newest segment and truncates it before the first entry that is incomplete or fails its crc
//!    (a torn tail from a crash mid-append); such an entry was never acknowledged. Older segments were closed cleanly
//!    and are only checked for framing.
//! 4. Entries are never rewritten, so a reader can copy payload bytes out of a segment without holding the lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};

const MAGIC: u32 = 0x464C_5331; // "FLS1"
const HEADER_LEN: usize = 32;

/// Where one stored batch lives.
#[derive(Debug, Clone, Copy)]
struct Entry {
    base_offset: i64,
    record_count: u32,
    append_timestamp: i64,
    /// Position of the payload in the segment file.
    payload_position: u64,
    payload_len: u32,
}

impl Entry {
    fn end_offset(&self) -> i64 {
        self.base_offset + i64::from(self.record_count)
    }
}

struct Segment {
    base_offset: i64,
    file: Arc<File>,
    size: u64,
    /// Every entry of the segment in offset order: the offset index, rebuilt at open.
    entries: Vec<Entry>,
}

/// A batch read back from the log: its payload is the stored IPC stream, untouched.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub record_count: u32,
    pub append_timestamp: i64,
    pub records: Bytes,
}

/// The log of one bucket. Not thread-safe by itself: the cluster keeps each behind a mutex.
pub struct BucketLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes: u64,
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
                    record_count: e.record_count,
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
        let mut log = BucketLog { dir: dir.to_path_buf(), segments, segment_bytes: segment_bytes.max(1) };
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

    /// Appends one batch of `record_count` records and makes it durable. Returns its base offset.
    pub fn append(&mut self, records: &[u8], record_count: u32, append_timestamp: i64) -> Result<i64> {
        if record_count == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "a batch must hold at least one record"));
        }
        let payload_len = u32::try_from(records.len())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "a batch must be smaller than 4 GiB"))?;
        let base_offset = self.end_offset();
        if self.segments.last().is_some_and(|s| s.size >= self.segment_bytes) {
            self.roll(base_offset)?;
        }
        let segment = self.segments.last_mut().ok_or_else(|| Error::new(ErrorKind::Internal, "log has no segment"))?;
        let mut header = [0u8; HEADER_LEN];
        header[8..16].copy_from_slice(&base_offset.to_le_bytes());
        header[16..20].copy_from_slice(&record_count.to_le_bytes());
        header[20..28].copy_from_slice(&append_timestamp.to_le_bytes());
        header[28..32].copy_from_slice(&payload_len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[8..]);
        crc.update(records);
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());

        let position = segment.size;
        let write = |mut f: &File| -> std::io::Result<()> {
            f.write_all(&header)?;
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
            record_count,
            append_timestamp,
            payload_position: position + HEADER_LEN as u64,
            payload_len,
        });
        Ok(base_offset)
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
        let (magic, crc, entry_base, count, ts, payload_len) = (
            le_u32(&header, 0),
            le_u32(&header, 4),
            le_i64(&header, 8),
            le_u32(&header, 16),
            le_i64(&header, 20),
            le_u32(&header, 28),
        );
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
            record_count: count,
            append_timestamp: ts,
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
    use super::*;

    fn read_all(log: &BucketLog, from: i64) -> Vec<StoredBatch> {
        log.plan_read(from, usize::MAX).and_then(PlannedRead::execute).expect("read")
    }

    #[test]
    fn appends_reads_rolls_and_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = BucketLog::open(dir.path(), 100).expect("open");
        for i in 0..10u32 {
            let payload = vec![i as u8; 60];
            assert_eq!(
                log.append(&payload, i + 1, 1000 + i64::from(i)).expect("append"),
                log.end_offset() - i64::from(i + 1)
            );
        }
        assert_eq!(log.end_offset(), 55);
        assert!(log.segments.len() > 1, "small segment size rolls");
        let batches = read_all(&log, 7);
        // Offset 7 lies in the batch [6, 10) of 4 records.
        assert_eq!(batches[0].base_offset, 6);
        assert_eq!(batches.len(), 7);
        assert_eq!(batches[0].records.as_ref(), &[3u8; 60][..]);
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
        let mut log = BucketLog::open(dir.path(), 100).expect("reopen");
        assert_eq!(log.end_offset(), 45, "the torn batch of 10 records is gone");
        assert_eq!(log.append(b"x", 1, 0).expect("append"), 45, "offsets continue after the torn tail");
        assert_eq!(read_all(&log, 0).iter().map(|b| b.record_count).sum::<u32>(), 46);
    }
}
