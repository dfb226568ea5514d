//! What a job measures: counters and phase times shared by all workers of a process, the report `tier
//! --report-json` writes, and the Prometheus text of `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a job's time goes, along each round's path: waiting for the coordinator to hand out a table (`Schedule`,
/// counted while the job holds none), planning it, reading and writing its splits, the lake commit, the cluster
/// commit. With one table in flight at a time these follow each other, so they add up to the job's wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Schedule,
    Plan,
    ReadWrite,
    LakeCommit,
    ClusterCommit,
}

/// What a split task spends its time on: waiting for the fetch task's next batch from the cluster (the part of the
/// fetch that the pipeline does not hide), decoding it, adding system columns and encoding it into lake files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitWork {
    FetchWait,
    Decode,
    EncodeWrite,
}

/// Seconds per phase, with the read/write phase divided among fetch, decode and encode/write in proportion to the
/// split tasks' measured time in each.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PhaseSeconds {
    pub schedule: f64,
    pub plan: f64,
    pub fetch: f64,
    pub decode: f64,
    pub encode_write: f64,
    pub lake_commit: f64,
    pub cluster_commit: f64,
}

impl PhaseSeconds {
    pub fn total(&self) -> f64 {
        self.schedule
            + self.plan
            + self.fetch
            + self.decode
            + self.encode_write
            + self.lake_commit
            + self.cluster_commit
    }
}

/// What a job did, as `tier --report-json` writes it when the job ends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobReport {
    pub rows: u64,
    /// Primary-key changes read (consolidated into fewer rows written).
    #[serde(default)]
    pub changes_read: u64,
    /// Splits that started from a KV snapshot.
    #[serde(default)]
    pub snapshot_splits: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub splits: u64,
    pub rounds_committed: u64,
    pub rounds_empty: u64,
    pub rounds_failed: u64,
    /// Measured in this process: the enumerator and the committer run in process 0, so its phases are the job's.
    pub phases: PhaseSeconds,
}

/// Upper bounds (seconds) of the commit latency histogram's buckets.
const COMMIT_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// The commit latency histogram, with [`COMMIT_BUCKETS`].
#[derive(Debug)]
struct CommitHistogram(prometheus_client::metrics::histogram::Histogram);

impl Default for CommitHistogram {
    fn default() -> Self {
        CommitHistogram(prometheus_client::metrics::histogram::Histogram::new(COMMIT_BUCKETS))
    }
}

/// Counters of one job, shared by all workers of a process.
#[derive(Debug, Default)]
pub struct JobMetrics {
    pub rows: AtomicU64,
    pub files: AtomicU64,
    pub file_bytes: AtomicU64,
    pub splits: AtomicU64,
    pub splits_in_flight: AtomicU64,
    /// Primary-key changes (snapshot and changelog rows) read; `rows` counts what consolidation left of them.
    pub changes_read: AtomicU64,
    /// Splits that started from a KV snapshot.
    pub snapshot_splits: AtomicU64,
    pub rounds_committed: AtomicU64,
    pub rounds_empty: AtomicU64,
    pub rounds_failed: AtomicU64,
    /// Orphan files (and their bytes) the sweep deleted.
    pub orphans_deleted: AtomicU64,
    pub orphan_bytes_deleted: AtomicU64,
    /// Latency of round commits, in seconds.
    commit_seconds: CommitHistogram,
    /// Nanoseconds per [`Phase`].
    phase_nanos: [AtomicU64; 5],
    /// Nanoseconds per [`SplitWork`], summed over split tasks.
    split_nanos: [AtomicU64; 3],
    /// Per table: the end offsets seen at the latest planning, and the offsets committed.
    tables: Mutex<std::collections::BTreeMap<String, TableProgress>>,
}

/// How far one table is, as this job saw it.
#[derive(Debug, Default, Clone, Copy)]
struct TableProgress {
    /// The lake's offsets when this job first planned the table.
    start: i64,
    end: i64,
    tiered: i64,
    tiered_at_ms: i64,
}

impl JobMetrics {
    pub(crate) fn add_split(&self, rows: u64, files: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
        self.file_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.splits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_committed_round(&self, took: Duration) {
        self.rounds_committed.fetch_add(1, Ordering::Relaxed);
        self.commit_seconds.0.observe(took.as_secs_f64());
    }
    pub(crate) fn add_empty_round(&self) {
        self.rounds_empty.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_failed_round(&self) {
        self.rounds_failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_swept(&self, files: u64, bytes: u64) {
        self.orphans_deleted.fetch_add(files, Ordering::Relaxed);
        self.orphan_bytes_deleted.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn add_phase(&self, phase: Phase, took: Duration) {
        self.phase_nanos[phase as usize].fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_split_work(&self, work: SplitWork, took: Duration) {
        self.split_nanos[work as usize].fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
    /// Time spent per phase so far.
    pub fn phase_seconds(&self) -> PhaseSeconds {
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
        let [fetch, decode, encode] = self.split_nanos.each_ref().map(secs);
        let read_write = secs(&self.phase_nanos[Phase::ReadWrite as usize]);
        let busy = fetch + decode + encode;
        let share = |part: f64| if busy > 0.0 { read_write * part / busy } else { 0.0 };
        PhaseSeconds {
            schedule: secs(&self.phase_nanos[Phase::Schedule as usize]),
            plan: secs(&self.phase_nanos[Phase::Plan as usize]),
            // With nothing measured in split tasks (no rows), the phase counts as fetching.
            fetch: if busy > 0.0 { share(fetch) } else { read_write },
            decode: share(decode),
            encode_write: share(encode),
            lake_commit: secs(&self.phase_nanos[Phase::LakeCommit as usize]),
            cluster_commit: secs(&self.phase_nanos[Phase::ClusterCommit as usize]),
        }
    }
    /// The job's totals so far.
    pub fn report(&self) -> JobReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        JobReport {
            rows: get(&self.rows),
            changes_read: get(&self.changes_read),
            snapshot_splits: get(&self.snapshot_splits),
            files: get(&self.files),
            file_bytes: get(&self.file_bytes),
            splits: get(&self.splits),
            rounds_committed: get(&self.rounds_committed),
            rounds_empty: get(&self.rounds_empty),
            rounds_failed: get(&self.rounds_failed),
            phases: self.phase_seconds(),
        }
    }
    fn progress(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, TableProgress>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// A round of `table` was planned: the cluster's end offsets add up to `end`, the lake's to `tiered`.
    pub(crate) fn planned(&self, table: &str, end: i64, tiered: i64) {
        let mut tables = self.progress();
        let p = tables.entry(table.to_string()).or_insert(TableProgress { start: tiered, ..Default::default() });
        p.end = end;
        p.tiered = p.tiered.max(tiered);
    }
    /// A round of `table` committed offsets adding up to `tiered`.
    pub(crate) fn committed(&self, table: &str, tiered: i64) {
        let mut tables = self.progress();
        let p = tables.entry(table.to_string()).or_default();
        p.tiered = tiered;
        p.end = p.end.max(tiered);
        p.tiered_at_ms = crate::model::now_ms();
    }

    /// Offsets committed by this job and offsets it has seen to commit, over all tables planned so far.
    pub fn rows_progress(&self) -> (i64, i64) {
        let tables = self.progress();
        let done = tables.values().map(|p| p.tiered - p.start).sum();
        let todo = tables.values().map(|p| p.end - p.start).sum();
        (done, todo)
    }

    /// The metrics in the OpenMetrics text format (counters' names get their `_total` from the encoder).
    pub fn render(&self) -> String {
        use prometheus_client::metrics::counter::{ConstCounter, Counter};
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
        let mut registry = prometheus_client::registry::Registry::with_prefix("fluss_tiering");
        let counters = [
            ("rows", "Rows written to the lake (committed or not).", &self.rows),
            ("files", "Lake files written.", &self.files),
            ("file_bytes", "Bytes of lake files written.", &self.file_bytes),
            ("splits", "Splits read and written.", &self.splits),
            ("kv_changes_read", "Primary-key changes read, before consolidation.", &self.changes_read),
            ("rounds_committed", "Rounds committed to lake and cluster.", &self.rounds_committed),
            ("rounds_empty", "Rounds that found nothing new.", &self.rounds_empty),
            ("rounds_failed", "Rounds that failed.", &self.rounds_failed),
            ("orphan_files_deleted", "Unreferenced lake files deleted.", &self.orphans_deleted),
            ("orphan_bytes_deleted", "Bytes of unreferenced lake files deleted.", &self.orphan_bytes_deleted),
        ];
        for (name, help, value) in counters {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
        let in_flight = i64::try_from(self.splits_in_flight.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        registry.register("splits_in_flight", "Splits being read and written.", ConstGauge::new(in_flight));
        registry.register(
            "commit_seconds",
            "Latency of round commits (lake and cluster).",
            self.commit_seconds.0.clone(),
        );
        let phases = Family::<[(&str, &str); 1], Counter<f64, AtomicU64>>::default();
        let p = self.phase_seconds();
        for (phase, secs) in [
            ("schedule", p.schedule),
            ("plan", p.plan),
            ("fetch", p.fetch),
            ("decode", p.decode),
            ("encode_write", p.encode_write),
            ("lake_commit", p.lake_commit),
            ("cluster_commit", p.cluster_commit),
        ] {
            phases.get_or_create(&[("phase", phase)]).inc_by(secs);
        }
        registry.register("phase_seconds", "Time spent per phase of the rounds.", phases);
        let lag = Family::<[(&str, String); 1], Gauge>::default();
        let since_commit = Family::<[(&str, String); 1], Gauge<f64, AtomicU64>>::default();
        let now = crate::model::now_ms();
        for (table, p) in self.progress().iter() {
            lag.get_or_create(&[("table", table.clone())]).set(p.end - p.tiered);
            if p.tiered_at_ms > 0 {
                since_commit.get_or_create(&[("table", table.clone())]).set((now - p.tiered_at_ms) as f64 / 1000.0);
            }
        }
        registry.register("table_lag_offsets", "Offsets seen in the cluster and not yet in the lake.", lag);
        registry.register("table_seconds_since_commit", "Seconds since the table's last commit.", since_commit);
        crate::metrics::encode(&registry)
    }
}
