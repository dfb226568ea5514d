//! ScanKv sessions (Fluss 1.0, api key 1061): a primary-key bucket's rows as of one log offset, read in batches.
//!
//! ```text
//!   open (bucket_scan_req, call_seq_id 0) ─▶ every row of the bucket + the log end offset they are consistent with
//!        ─▶ the first batch (≥ 1 row, up to batch_size_bytes) and a scanner id, unless nothing is left
//!   next (scanner_id, call_seq_id + 1)    ─▶ the next batch; the last one ends the session (has_more_results false)
//!   close (scanner_id, close_scanner)     ─▶ the session is gone; an unknown id is closed too
//! ```
//!
//! Invariants:
//! 1. A session's rows are copied when it opens, under the bucket's lock: later writes do not show, and every change
//!    below the answered `log_offset` does.
//! 2. Each call of a session carries the previous call's `call_seq_id` + 1 (INVALID_SCAN_REQUEST otherwise), so a
//!    retried or reordered call never skips or repeats rows silently.
//! 3. A session idle for [`SCANNER_TTL`] is dropped (its id then reads as UNKNOWN_SCANNER_ID); at most
//!    [`MAX_SCANNERS`] are open at once (TOO_MANY_SCANNERS).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::model::kv_record;

/// Fluss's `kv.scanner.ttl` default.
pub const SCANNER_TTL: Duration = Duration::from_secs(600);
/// Fluss's `kv.scanner.max-per-server` default.
pub const MAX_SCANNERS: usize = 200;
/// Fluss's `kv.scanner.max-batch-size` default: a larger `batch_size_bytes` is capped to it.
const MAX_BATCH_BYTES: usize = 10 << 20;

struct Session {
    /// `[schema id][CompactedRow]` of every row still to send.
    values: std::vec::IntoIter<Vec<u8>>,
    /// Rows still allowed by the scan's `limit`.
    left: u64,
    call_seq_id: i32,
    touched: Instant,
}

/// A new scan's checked request.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    left: u64,
    batch_bytes: usize,
}

/// One batch of a scan.
#[derive(Debug, PartialEq, Eq)]
pub struct ScanBatch {
    /// Set while rows are left (absent for a scan that ended with this batch).
    pub scanner_id: Option<Vec<u8>>,
    /// A value record batch (`kv_record::encode_values`), `None` when no row is in it.
    pub records: Option<Vec<u8>>,
    pub has_more_results: bool,
}

/// The open ScanKv sessions of one door.
pub struct Scanners {
    sessions: Mutex<HashMap<Vec<u8>, Session>>,
    ttl: Duration,
}

impl Default for Scanners {
    fn default() -> Self {
        Scanners::with_ttl(SCANNER_TTL)
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidScanRequest, message)
}

impl Scanners {
    /// Sessions idle for `ttl` are dropped ([`SCANNER_TTL`] by default).
    pub fn with_ttl(ttl: Duration) -> Self {
        Scanners { sessions: Mutex::default(), ttl }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks a new scan's request before the bucket is copied: a refused one costs nothing.
    pub fn admit(&self, limit: Option<i64>, call_seq_id: Option<i32>, batch_bytes: Option<i32>) -> Result<Admitted> {
        if call_seq_id != Some(0) {
            return Err(invalid(format!("a new scan's call_seq_id is 0, not {call_seq_id:?}")));
        }
        let left = match limit {
            None => u64::MAX,
            Some(l) => u64::try_from(l).map_err(|_| invalid(format!("limit {l} is negative")))?,
        };
        let batch_bytes = batch_size(batch_bytes)?;
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.touched) < self.ttl);
        if sessions.len() >= MAX_SCANNERS {
            return Err(Error::new(ErrorKind::TooManyScanners, format!("{MAX_SCANNERS} scans are open already")));
        }
        Ok(Admitted { left, batch_bytes })
    }

    /// Opens an admitted session over `values` (a bucket's rows) and answers its first batch.
    pub fn open(&self, admitted: Admitted, values: Vec<Vec<u8>>) -> Result<ScanBatch> {
        let Admitted { left, batch_bytes } = admitted;
        let now = Instant::now();
        let mut session = Session { values: values.into_iter(), left, call_seq_id: 0, touched: now };
        let (records, has_more) = session.next_batch(batch_bytes)?;
        let scanner_id = has_more.then(|| uuid::Uuid::new_v4().simple().to_string().into_bytes());
        if let Some(id) = &scanner_id {
            self.sessions().insert(id.clone(), session);
        }
        Ok(ScanBatch { scanner_id, records, has_more_results: has_more })
    }

    /// The next batch of session `id`, or its end when `close`.
    pub fn next(
        &self,
        id: &[u8],
        close: bool,
        call_seq_id: Option<i32>,
        batch_bytes: Option<i32>,
    ) -> Result<ScanBatch> {
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.touched) < self.ttl);
        if close {
            sessions.remove(id);
            return Ok(ScanBatch { scanner_id: Some(id.to_vec()), records: None, has_more_results: false });
        }
        let batch_bytes = batch_size(batch_bytes)?;
        let session = sessions.get_mut(id).ok_or_else(|| {
            Error::new(ErrorKind::UnknownScannerId, format!("no open scan {:?}", String::from_utf8_lossy(id)))
        })?;
        let expected = session.call_seq_id.checked_add(1);
        if call_seq_id != expected {
            return Err(invalid(format!(
                "out-of-order scan request: call_seq_id {call_seq_id:?}, expected {expected:?}"
            )));
        }
        session.call_seq_id = expected.unwrap_or(i32::MAX);
        session.touched = now;
        // The batch is encoded outside the lock, so that other scans go on meanwhile (one call per session at a time,
        // as Fluss allows: a second meanwhile finds no session).
        let Some(mut session) = sessions.remove(id) else {
            return Err(Error::new(ErrorKind::Internal, "a session vanished under its lock"));
        };
        drop(sessions);
        let (records, has_more) = session.next_batch(batch_bytes)?;
        if has_more {
            self.sessions().insert(id.to_vec(), session);
        }
        Ok(ScanBatch { scanner_id: Some(id.to_vec()), records, has_more_results: has_more })
    }
}

fn batch_size(batch_bytes: Option<i32>) -> Result<usize> {
    match batch_bytes {
        Some(n) if n > 0 => Ok((n as usize).min(MAX_BATCH_BYTES)),
        other => Err(invalid(format!("batch_size_bytes must be positive, not {other:?}"))),
    }
}

impl Session {
    /// Rows until their bytes reach `batch_bytes` (at least one), and whether any are left after them.
    fn next_batch(&mut self, batch_bytes: usize) -> Result<(Option<Vec<u8>>, bool)> {
        let mut taken = Vec::new();
        let mut bytes = 0usize;
        while self.left > 0 && (taken.is_empty() || bytes < batch_bytes) {
            let Some(v) = self.values.next() else { break };
            bytes += v.len();
            self.left -= 1;
            taken.push(v);
        }
        let has_more = self.left > 0 && self.values.len() > 0;
        let records = (!taken.is_empty()).then(|| kv_record::encode_values(&taken)).transpose()?;
        Ok((records, has_more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![1, 0, i, i, i, i]).collect()
    }

    fn open(
        s: &Scanners,
        values: Vec<Vec<u8>>,
        limit: Option<i64>,
        seq: Option<i32>,
        batch: Option<i32>,
    ) -> Result<ScanBatch> {
        s.admit(limit, seq, batch).and_then(|a| s.open(a, values))
    }

    fn rows(batch: &ScanBatch) -> Vec<Vec<u8>> {
        batch.records.as_deref().map(|r| kv_record::parse_values(r).expect("values")).unwrap_or_default()
    }

    #[test]
    fn a_scan_reads_every_row_once_in_order_and_checks_its_sequence() -> Result<()> {
        let scanners = Scanners::default();
        let first = open(&scanners, values(5), None, Some(0), Some(10))?;
        assert_eq!(rows(&first), values(2), "rows until the batch reaches 10 bytes");
        let id = first.scanner_id.clone().expect("more to come");
        assert!(scanners.next(&id, false, Some(2), Some(10)).is_err(), "a skipped call_seq_id");
        let second = scanners.next(&id, false, Some(1), Some(10))?;
        assert_eq!(rows(&second), values(4)[2..].to_vec());
        let last = scanners.next(&id, false, Some(2), Some(1000))?;
        assert_eq!((rows(&last), last.has_more_results), (values(5)[4..].to_vec(), false));
        let gone = scanners.next(&id, false, Some(3), Some(10)).map(|_| ()).unwrap_err();
        assert_eq!(gone.kind(), ErrorKind::UnknownScannerId, "an ended scan's id is gone");

        let empty = open(&scanners, Vec::new(), None, Some(0), Some(10))?;
        assert_eq!(empty, ScanBatch { scanner_id: None, records: None, has_more_results: false });
        let limited = open(&scanners, values(5), Some(1), Some(0), Some(1000))?;
        assert_eq!((rows(&limited).len(), limited.has_more_results), (1, false));
        let closing = open(&scanners, values(5), None, Some(0), Some(1))?;
        let id = closing.scanner_id.clone().expect("open");
        assert!(!scanners.next(&id, true, None, None)?.has_more_results);
        assert!(scanners.next(&id, false, Some(1), Some(1)).is_err(), "closed");
        assert_eq!(
            open(&scanners, values(1), None, Some(1), Some(1)).map(|_| ()).unwrap_err().kind(),
            ErrorKind::InvalidScanRequest
        );
        assert!(open(&scanners, values(1), None, Some(0), Some(0)).is_err(), "batch size 0");
        Ok(())
    }

    #[test]
    fn idle_sessions_expire_and_open_ones_are_bounded() -> Result<()> {
        let scanners = Scanners::with_ttl(Duration::from_millis(20));
        let idle = open(&scanners, values(3), None, Some(0), Some(1))?.scanner_id.expect("open");
        std::thread::sleep(Duration::from_millis(40));
        let err = scanners.next(&idle, false, Some(1), Some(1)).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownScannerId, "an idle session is dropped");

        let scanners = Scanners::default();
        for _ in 0..MAX_SCANNERS {
            assert!(open(&scanners, values(3), None, Some(0), Some(1))?.has_more_results);
        }
        let err = open(&scanners, values(3), None, Some(0), Some(1)).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooManyScanners);
        Ok(())
    }
}
