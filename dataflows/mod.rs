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
//!
//! Layering: the job sees the cluster only as `crate::model::tiering::TieringCluster` and the lakes through
//! `crate::lake`; it imports no cluster, door or wire (checked by `.ci/run`).

pub mod bridge;
pub mod commit;
pub mod consolidate;
pub mod enumerator;
pub mod metrics;
pub mod read_write;
pub mod rounds;
pub mod split_generator;
pub mod types;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::operators::{ConnectLoop, Feedback};

use crate::error::{Error, ErrorKind, Result};
use crate::lake::LakeTieringFactory;
use crate::model::tiering::TieringCluster;

pub use metrics::{JobMetrics, JobReport, Phase, PhaseSeconds, SplitWork};

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

/// What every operator of a process shares.
pub struct JobContext {
    pub runtime: tokio::runtime::Handle,
    /// The cluster, as the job sees it (gRPC today).
    pub client: Arc<dyn TieringCluster>,
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
    /// `--once`: what the job waits for while it holds no table (for the progress bar).
    waiting: Mutex<Option<String>>,
}

impl JobContext {
    pub fn new(
        runtime: tokio::runtime::Handle,
        client: Arc<dyn TieringCluster>,
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
            waiting: Mutex::new(None),
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

    /// What the job waits for, while it holds no table and knows (`--once`).
    pub fn waiting(&self) -> Option<String> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_waiting(&self, message: Option<String>) {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = message;
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
