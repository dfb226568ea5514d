//! The tiering job: one timely dataflow graph (Fluss's Tiering Service).
//!
//! ```text
//!                 worker 0                       all workers                         worker 0
//!   ┌────────────────────────────┐          ┌──────────────────┐              ┌──────────────────────┐
//!   │ enumerator                 │─splits──▶│ read + write     │─write res.──▶│ commit               │
//!   │  heartbeat → table → plan  │ exchange │  fetch ▶ writer  │ exchange→0   │  lake, then cluster  │
//!   │                            │─plans──────────────────────────────────────▶│                      │
//!   └────────────────────────────┘          └──────────────────┘              └──────────────────────┘
//!                 ▲                                                                       │
//!                 └──────────────── finished / failed rounds (feedback, +1) ◀─────────────┘
//! ```
//!
//! A timestamp is a round: one table, one tiering epoch, a set of splits. The enumerator holds a round's time until
//! the round's splits and plan are out; readers hold it until each split is written; the committer commits the round
//! once both of its input frontiers have passed that time. Each operator's module states its frontier contract.
//!
//! Async work (RPC, lake I/O) runs on a tokio runtime beside the workers; results come back through
//! [`bridge::Tasks`], which wakes the operator. No operator blocks its worker.

pub mod bridge;
pub mod commit;
pub mod consolidate;
pub mod enumerator;
pub mod read_write;
pub mod rounds;
pub mod split_generator;
pub mod types;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use timely::dataflow::operators::{ConnectLoop, Feedback};

use crate::error::{Error, ErrorKind, Result};
use crate::lake::LakeTieringFactory;
use crate::rpc::ClusterClient;

/// How the job behaves.
#[derive(Debug, Clone)]
pub struct TierConfig {
    /// Stop once every lake-enabled table has completed a round planned after the start.
    pub once: bool,
    /// Heartbeat (and table poll) period.
    pub poll_interval: Duration,
    /// Tables this job holds at once.
    pub max_tables_in_flight: usize,
    /// Splits each worker reads and writes at once.
    pub max_splits_in_flight: usize,
    /// Bytes per fetch request.
    pub fetch_max_bytes: i32,
    /// A bucket's new range is cut into splits of at most this many offsets.
    pub split_rows: u64,
    /// How long a round may run before its readers stop where they are; `None`: the table's freshness (as Fluss).
    pub max_round_duration: Option<Duration>,
    /// `--once`: consecutive failed rounds of one table before the job gives up.
    pub max_round_failures: u32,
    /// `--once`: consecutive failed heartbeats before the job gives up.
    pub max_rpc_failures: u32,
    /// How long one lake call may take (a commit that takes longer has an unknown outcome).
    pub lake_timeout: Duration,
    /// Unreferenced lake files older than this are deleted (see [`crate::lake::sweep`]).
    pub orphan_age: Duration,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            once: false,
            poll_interval: Duration::from_secs(1),
            max_tables_in_flight: 2,
            max_splits_in_flight: 2,
            fetch_max_bytes: 8 << 20,
            split_rows: 1_000_000,
            max_round_duration: None,
            max_round_failures: 5,
            max_rpc_failures: 60,
            lake_timeout: Duration::from_secs(60),
            orphan_age: Duration::from_secs(24 * 3600),
        }
    }
}

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
    pub commit_micros: AtomicU64,
    /// Commits per latency bucket (`COMMIT_BUCKETS`, then +Inf).
    commit_buckets: [AtomicU64; 9],
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
    fn add_split(&self, rows: u64, files: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
        self.file_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.splits.fetch_add(1, Ordering::Relaxed);
    }
    fn add_committed_round(&self, took: Duration) {
        self.rounds_committed.fetch_add(1, Ordering::Relaxed);
        self.commit_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = COMMIT_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(COMMIT_BUCKETS.len());
        self.commit_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }
    fn add_empty_round(&self) {
        self.rounds_empty.fetch_add(1, Ordering::Relaxed);
    }
    fn add_failed_round(&self) {
        self.rounds_failed.fetch_add(1, Ordering::Relaxed);
    }
    fn add_swept(&self, files: u64, bytes: u64) {
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
        p.tiered_at_ms = crate::cluster::now_ms();
    }

    /// Offsets committed by this job and offsets it has seen to commit, over all tables planned so far.
    pub fn rows_progress(&self) -> (i64, i64) {
        let tables = self.progress();
        let done = tables.values().map(|p| p.tiered - p.start).sum();
        let todo = tables.values().map(|p| p.end - p.start).sum();
        (done, todo)
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let counters = [
            ("fluss_tiering_rows_total", "Rows written to the lake (committed or not).", &self.rows),
            ("fluss_tiering_files_total", "Lake files written.", &self.files),
            ("fluss_tiering_file_bytes_total", "Bytes of lake files written.", &self.file_bytes),
            ("fluss_tiering_splits_total", "Splits read and written.", &self.splits),
            (
                "fluss_tiering_kv_changes_read_total",
                "Primary-key changes read, before consolidation.",
                &self.changes_read,
            ),
            ("fluss_tiering_rounds_committed_total", "Rounds committed to lake and cluster.", &self.rounds_committed),
            ("fluss_tiering_rounds_empty_total", "Rounds that found nothing new.", &self.rounds_empty),
            ("fluss_tiering_rounds_failed_total", "Rounds that failed.", &self.rounds_failed),
            ("fluss_tiering_orphan_files_deleted_total", "Unreferenced lake files deleted.", &self.orphans_deleted),
            (
                "fluss_tiering_orphan_bytes_deleted_total",
                "Bytes of unreferenced lake files deleted.",
                &self.orphan_bytes_deleted,
            ),
        ];
        for (name, help, value) in counters {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP fluss_tiering_splits_in_flight Splits being read and written.\n# TYPE fluss_tiering_splits_in_flight gauge\nfluss_tiering_splits_in_flight {}",
            self.splits_in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP fluss_tiering_commit_seconds Latency of round commits (lake and cluster).");
        let _ = writeln!(out, "# TYPE fluss_tiering_commit_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in COMMIT_BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]).enumerate() {
            cumulative += self.commit_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "fluss_tiering_commit_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "fluss_tiering_commit_seconds_sum {}",
            self.commit_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "fluss_tiering_commit_seconds_count {cumulative}");
        let _ = writeln!(out, "# HELP fluss_tiering_phase_seconds_total Time spent per phase of the rounds.");
        let _ = writeln!(out, "# TYPE fluss_tiering_phase_seconds_total counter");
        let p = self.phase_seconds();
        let phases = [
            ("schedule", p.schedule),
            ("plan", p.plan),
            ("fetch", p.fetch),
            ("decode", p.decode),
            ("encode_write", p.encode_write),
            ("lake_commit", p.lake_commit),
            ("cluster_commit", p.cluster_commit),
        ];
        for (phase, secs) in phases {
            let _ = writeln!(out, "fluss_tiering_phase_seconds_total{{phase=\"{phase}\"}} {secs}");
        }
        let now = crate::cluster::now_ms();
        let _ = writeln!(
            out,
            "# HELP fluss_tiering_table_lag_offsets Offsets seen in the cluster and not yet in the lake."
        );
        let _ = writeln!(out, "# TYPE fluss_tiering_table_lag_offsets gauge");
        let tables = self.progress().clone();
        for (table, p) in &tables {
            let _ = writeln!(
                out,
                "fluss_tiering_table_lag_offsets{{table=\"{}\"}} {}",
                crate::metrics::label(table),
                p.end - p.tiered
            );
        }
        let _ = writeln!(out, "# HELP fluss_tiering_table_seconds_since_commit Seconds since the table's last commit.");
        let _ = writeln!(out, "# TYPE fluss_tiering_table_seconds_since_commit gauge");
        for (table, p) in tables.iter().filter(|(_, p)| p.tiered_at_ms > 0) {
            let secs = (now - p.tiered_at_ms) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "fluss_tiering_table_seconds_since_commit{{table=\"{}\"}} {secs}",
                crate::metrics::label(table)
            );
        }
        out
    }
}

/// What every operator of a process shares.
pub struct JobContext {
    pub runtime: tokio::runtime::Handle,
    pub client: ClusterClient,
    pub lake: Arc<dyn LakeTieringFactory>,
    pub config: TierConfig,
    /// Unique per run: names rounds and files.
    pub job_id: String,
    pub metrics: JobMetrics,
    /// When the job started: the first wait for a table counts from here.
    pub started: Instant,
    /// The rounds in flight (enumerator and committer, process 0).
    pub rounds: rounds::Rounds,
    /// When this job last swept each table's orphan files (committer, process 0).
    pub swept: Mutex<std::collections::BTreeMap<i64, Instant>>,
    shutdown: AtomicBool,
    errors: Mutex<Vec<String>>,
}

impl JobContext {
    pub fn new(
        runtime: tokio::runtime::Handle,
        client: ClusterClient,
        lake: Arc<dyn LakeTieringFactory>,
        config: TierConfig,
    ) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        JobContext {
            runtime,
            client,
            lake,
            config,
            job_id: format!("job-{}", &id[..12]),
            metrics: JobMetrics::default(),
            started: Instant::now(),
            rounds: rounds::Rounds::default(),
            swept: Mutex::new(Default::default()),
            shutdown: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// Asks the job to stop: held tables are reported failed and the dataflow winds down.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed) || !self.errors().is_empty()
    }

    fn record_error(&self, message: String) {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).push(message);
    }

    /// Runs a lake call with the job's lake time-out (see [`bounded`]).
    pub async fn bounded<T>(&self, what: &str, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        bounded(self.config.lake_timeout, what, call).await
    }

    /// Errors that stopped the job.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs a lake call for at most `timeout`: a call that takes longer fails as a lake error.
pub async fn bounded<T>(
    timeout: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(ErrorKind::Lake, format!("{what} took longer than the lake time-out ({timeout:?})"))),
    }
}

/// Builds the tiering graph on one worker.
pub fn build_tiering<'scope>(scope: timely::dataflow::Scope<'scope, u64>, ctx: Arc<JobContext>) {
    let (outcome_loop, outcomes) = scope.feedback(1);
    let (splits, plans) = enumerator::enumerator(scope, Arc::clone(&ctx), outcomes);
    let results = read_write::read_write(splits, Arc::clone(&ctx));
    commit::commit(plans, results, ctx).connect_loop(outcome_loop);
}

/// Runs the tiering graph on the workers of `timely_config` until it completes; the calling thread waits.
pub fn run(timely_config: timely::Config, ctx: Arc<JobContext>) -> Result<()> {
    let worker_ctx = Arc::clone(&ctx);
    let guards = timely::execute(timely_config, move |worker| {
        let ctx = Arc::clone(&worker_ctx);
        worker.dataflow::<u64, _, _>(|scope| build_tiering(scope, ctx));
        while worker.step_or_park(None) {}
    })
    .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("cannot start timely workers: {e}")))?;
    let panics: Vec<String> = guards.join().into_iter().filter_map(|r| r.err()).collect();
    let mut errors = ctx.errors();
    errors.extend(panics.into_iter().map(|p| format!("a worker panicked: {p}")));
    if errors.is_empty() { Ok(()) } else { Err(Error::new(ErrorKind::Internal, errors.join("; "))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lake_call_past_its_time_out_fails_as_a_lake_error() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        };
        let started = Instant::now();
        let err = bounded(Duration::from_millis(20), "a slow call", slow).await.expect_err("times out");
        assert_eq!(err.kind(), ErrorKind::Lake);
        assert!(err.to_string().contains("a slow call took longer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(bounded(Duration::from_secs(5), "a quick call", async { Ok(7) }).await.expect("in time"), 7);
    }
}
