//! Faults at the cluster boundary, driving the real dataflow: [`FaultyCluster`], a second [`TieringCluster`] beside
//! the wire clients, wraps the cluster of this process through its door without a wire ([`LocalDoor`]: no transport
//! in between, so what is checked is the job) and loses replies, fails calls and shortens answers on cue, the way a
//! network or a misbehaving coordinator would. The lake is read back by pypaimon, the cluster by our gRPC client.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use fluss_tiering::dataflows::{self, JobContext, TierConfig};
use fluss_tiering::lake::LakeOptions;
use fluss_tiering::model::table::{TableDescriptor, TablePath};
use fluss_tiering::model::tiering::{
    BucketAddr, FetchAsk, FetchedLog, HeartbeatRequest, HeartbeatResponse, KvSnapshotRef, LakeBucketOffset, LakeCommit,
    LakeSnapshot, TieringCluster,
};
use fluss_tiering::serve::{EmbeddedCluster, LocalDoor};
use fluss_tiering::{Error, ErrorKind, Result};

/// What to do wrong, and how often it was done.
#[derive(Default)]
struct Cues {
    /// Heartbeats that carry tables in progress are answered without their answers.
    short_answers: AtomicBool,
    /// This many epoch confirmations (a heartbeat of one table in progress, nothing else) fail before being sent.
    failed_confirmations: AtomicU32,
    /// This many heartbeats that hand out a table lose their reply after the coordinator acted on them.
    lost_assignments: AtomicU32,
    /// This many cluster commits are refused as fenced before being sent.
    fenced_commits: AtomicU32,
    /// End-offset answers leave out their last bucket.
    short_offsets: AtomicBool,
    /// Fetches answer every bucket empty below its high watermark, as a Fluss server does for rows only its remote
    /// log storage holds.
    empty_fetches: AtomicBool,
    injected: AtomicU32,
    /// Multi-bucket fetches take 20 ms, as over a network: the asks of a packed split's other ranges gather meanwhile.
    slow_fetch_many: AtomicBool,
    /// Multi-bucket fetches asked of the cluster, and answers in them left for the next request (empty below their
    /// high watermark beside another bucket's batches).
    fetch_many_calls: AtomicU32,
    turns_left: AtomicU32,
}

impl Cues {
    /// Takes one use of a countdown cue, if any is left.
    fn take(&self, cue: &AtomicU32) -> bool {
        let taken = cue.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if taken {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        taken
    }
}

struct FaultyCluster {
    inner: Arc<dyn TieringCluster>,
    cues: Arc<Cues>,
}

fn network(what: &str) -> Error {
    Error::new(ErrorKind::Network, format!("injected: {what}"))
}

#[async_trait::async_trait]
impl TieringCluster for FaultyCluster {
    async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        let confirmation = request.tiering.len() == 1
            && request.finished.is_empty()
            && request.failed.is_empty()
            && !request.request_table;
        if confirmation && self.cues.take(&self.cues.failed_confirmations) {
            return Err(network("the epoch confirmation did not reach the coordinator"));
        }
        let mut response = self.inner.heartbeat(request).await?;
        if response.assignment.is_some() && self.cues.take(&self.cues.lost_assignments) {
            return Err(network("the reply that handed out a table was lost"));
        }
        if !request.tiering.is_empty() && self.cues.short_answers.load(Ordering::SeqCst) {
            self.cues.injected.fetch_add(1, Ordering::SeqCst);
            response.tiering.clear();
        }
        Ok(response)
    }

    async fn table_info(&self, path: &TablePath) -> Result<(i64, TableDescriptor)> {
        self.inner.table_info(path).await
    }

    async fn tables(&self) -> Result<Vec<(i64, TablePath, TableDescriptor)>> {
        self.inner.tables().await
    }

    async fn partitions(&self, path: &TablePath) -> Result<Vec<(i64, String)>> {
        self.inner.partitions(path).await
    }

    async fn list_offsets(
        &self,
        table: i64,
        partition: Option<i64>,
        buckets: &[i32],
        latest: bool,
    ) -> Result<Vec<i64>> {
        let mut offsets = self.inner.list_offsets(table, partition, buckets, latest).await?;
        if latest && self.cues.short_offsets.load(Ordering::SeqCst) {
            self.cues.injected.fetch_add(1, Ordering::SeqCst);
            offsets.pop();
        }
        Ok(offsets)
    }

    async fn lake_snapshot(&self, path: &TablePath) -> Result<Option<LakeSnapshot>> {
        self.inner.lake_snapshot(path).await
    }

    async fn kv_snapshots(
        &self,
        path: &TablePath,
        partition: Option<&str>,
        buckets: &[i32],
    ) -> Result<Vec<(i32, Option<KvSnapshotRef>)>> {
        self.inner.kv_snapshots(path, partition, buckets).await
    }

    async fn fetch(&self, bucket: BucketAddr, offset: i64, max_bytes: i32) -> Result<FetchedLog> {
        let mut fetched = self.inner.fetch(bucket, offset, max_bytes).await?;
        if self.cues.empty_fetches.load(Ordering::SeqCst) {
            self.cues.injected.fetch_add(1, Ordering::SeqCst);
            fetched.batches.clear();
        }
        Ok(fetched)
    }

    async fn fetch_many(&self, asks: &[FetchAsk], max_bytes: i32) -> Result<Vec<Result<FetchedLog>>> {
        if self.cues.slow_fetch_many.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut answers = self.inner.fetch_many(asks, max_bytes).await?;
        self.cues.fetch_many_calls.fetch_add(1, Ordering::SeqCst);
        if answers.iter().any(|a| a.as_ref().is_ok_and(|log| !log.batches.is_empty())) {
            let left = asks.iter().zip(&answers).filter(|(ask, a)| {
                a.as_ref().is_ok_and(|log| log.batches.is_empty() && log.high_watermark > ask.offset)
            });
            self.cues.turns_left.fetch_add(left.count() as u32, Ordering::SeqCst);
        }
        if self.cues.empty_fetches.load(Ordering::SeqCst) {
            self.cues.injected.fetch_add(1, Ordering::SeqCst);
            answers.iter_mut().flatten().for_each(|log| log.batches.clear());
        }
        Ok(answers)
    }

    async fn kv_snapshot_batch(&self, bucket: BucketAddr, id: i64, index: i32) -> Result<(Vec<RecordBatch>, i32)> {
        self.inner.kv_snapshot_batch(bucket, id, index).await
    }

    async fn commit_lake_snapshot(&self, commit: &LakeCommit) -> Result<()> {
        if self.cues.take(&self.cues.fenced_commits) {
            return Err(Error::new(ErrorKind::FencedTieringEpoch, "injected: the coordinator refused the commit"));
        }
        self.inner.commit_lake_snapshot(commit).await
    }

    async fn prepare_lake_offsets(&self, id: i64, path: &TablePath, offsets: &[LakeBucketOffset]) -> Result<String> {
        self.inner.prepare_lake_offsets(id, path, offsets).await
    }
}

/// Runs a `--once` job in this process against `cluster` through a [`FaultyCluster`] with `cues`; returns its result
/// and context.
fn run_once(cluster: LocalDoor, warehouse: std::path::PathBuf, cues: Arc<Cues>) -> (Result<()>, Arc<JobContext>) {
    run_once_fetching(cluster, warehouse, cues, TierConfig::default().fetch_max_bytes)
}

/// [`run_once`] with a fetch size of `fetch_max_bytes`.
fn run_once_fetching(
    cluster: LocalDoor,
    warehouse: std::path::PathBuf,
    cues: Arc<Cues>,
    fetch_max_bytes: i32,
) -> (Result<()>, Arc<JobContext>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (cluster, lake) = runtime.block_on(async {
        let options = LakeOptions { target_file_size: 65536, ..LakeOptions::default() };
        let lake =
            fluss_tiering::lake::factory("paimon", &warehouse.as_path().into(), None, options).await.expect("lake");
        (FaultyCluster { inner: Arc::new(cluster), cues }, lake)
    });
    let config = TierConfig {
        once: true,
        poll_interval: Duration::from_millis(50),
        max_rpc_failures: 20,
        lake_timeout: Duration::from_secs(5),
        fetch_max_bytes,
        ..TierConfig::default()
    };
    let ctx = Arc::new(JobContext::new(runtime.handle().clone(), Arc::new(cluster), lake, config));
    let result = dataflows::run(timely::Config::process(2), Arc::clone(&ctx));
    (result, ctx)
}

/// The door without a wire to the test's cluster.
fn local(cluster: &EmbeddedCluster) -> LocalDoor {
    LocalDoor::new(Arc::clone(cluster.cluster()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_failed_confirmations_and_a_fenced_cluster_commit_still_tier_exactly_once() {
    let common::Setup { dir: _dir, warehouse, cluster, client, tables } = common::setup().await;
    common::produce_all(&client, &tables, 0, 1500).await;
    let cues = Arc::new(Cues {
        failed_confirmations: AtomicU32::new(2),
        lost_assignments: AtomicU32::new(1),
        fenced_commits: AtomicU32::new(1),
        ..Cues::default()
    });
    let (door, lake_dir, job_cues) = (local(&cluster), warehouse.clone(), Arc::clone(&cues));
    let started = Instant::now();
    let (result, ctx) = tokio::task::spawn_blocking(move || run_once(door, lake_dir, job_cues)).await.expect("job");
    result.expect("the job catches up despite the faults");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(cues.injected.load(Ordering::SeqCst), 4, "every cue was used");
    for cue in [&cues.failed_confirmations, &cues.lost_assignments, &cues.fenced_commits] {
        assert_eq!(cue.load(Ordering::SeqCst), 0);
    }
    assert!(ctx.metrics.rounds_committed.load(Ordering::Relaxed) >= 3);
    // The table whose assignment was lost came back after the coordinator's time-out; the fenced cluster commit was
    // caught up from the lake by the next round: the lake has every offset once and the cluster agrees with it.
    common::wait_tiered(&client, &tables.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    common::check_lake_and_cluster(&client, &warehouse, &tables, 1500).await;
}

/// A ListOffsets answer that leaves out a bucket fails the round with the reason; it never plans the other buckets
/// alone and lets the job call the table caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_answers_that_leave_out_a_bucket_fail_the_round_and_commit_nothing() {
    let common::Setup { dir: _dir, warehouse, cluster, client, tables } = common::setup().await;
    common::produce_all(&client, &tables[..1], 0, 500).await;
    let cues = Arc::new(Cues { short_offsets: AtomicBool::new(true), ..Cues::default() });
    let (door, lake_dir, job_cues) = (local(&cluster), warehouse.clone(), Arc::clone(&cues));
    let (result, ctx) = tokio::task::spawn_blocking(move || run_once(door, lake_dir, job_cues)).await.expect("job");
    assert!(cues.injected.load(Ordering::SeqCst) > 0, "answers were shortened");
    assert_eq!(ctx.metrics.rounds_committed.load(Ordering::Relaxed), 0, "nothing was committed");
    let errors = ctx.errors().join("; ");
    assert!(result.is_err() || !errors.is_empty(), "the job does not end as a success");
    assert!(errors.contains("end and") && errors.contains("start offsets for the 4 buckets"), "{errors}");
}

/// Fetches of one byte from a cluster 20 ms away: every gathered request brings one bucket's batch and leaves the
/// others for the next, which ask again; every offset still reaches the lake exactly once (pypaimon reads it) and the cluster agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_fetches_whose_budget_one_bucket_spends_ask_the_others_again_and_tier_every_offset_once() {
    let common::Setup { dir: _dir, warehouse, cluster, client, tables } = common::setup().await;
    common::produce_all(&client, &tables, 0, 1500).await;
    let cues = Arc::new(Cues { slow_fetch_many: AtomicBool::new(true), ..Cues::default() });
    let (door, lake_dir, job_cues) = (local(&cluster), warehouse.clone(), Arc::clone(&cues));
    let job = tokio::task::spawn_blocking(move || run_once_fetching(door, lake_dir, job_cues, 1));
    let (result, _ctx) = tokio::time::timeout(Duration::from_secs(300), job).await.expect("the job ends").expect("job");
    result.expect("the job tiers with one-byte fetches");
    assert!(cues.fetch_many_calls.load(Ordering::SeqCst) > 0, "packed splits gathered their fetches");
    assert!(cues.turns_left.load(Ordering::SeqCst) > 0, "some buckets were left for the next request");
    common::wait_tiered(&client, &tables.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    common::check_lake_and_cluster(&client, &warehouse, &tables, 1500).await;
}

/// A cluster that answers every bucket empty below its high watermark (rows only Fluss's remote log storage holds)
/// fails the round with the reason; a packed split's gathered fetches do not take the empty answers for turns left
/// to the next request and ask for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_answered_empty_below_the_high_watermark_fail_the_round_with_the_reason() {
    let common::Setup { dir: _dir, warehouse, cluster, client, tables } = common::setup().await;
    common::produce_all(&client, &tables[..1], 0, 500).await;
    let cues = Arc::new(Cues { empty_fetches: AtomicBool::new(true), ..Cues::default() });
    let (door, lake_dir, job_cues) = (local(&cluster), warehouse.clone(), Arc::clone(&cues));
    let job = tokio::task::spawn_blocking(move || run_once(door, lake_dir, job_cues));
    let (result, ctx) = tokio::time::timeout(Duration::from_secs(120), job)
        .await
        .expect("the job ends instead of asking for ever")
        .expect("job");
    assert!(cues.injected.load(Ordering::SeqCst) > 0, "answers were emptied");
    assert!(cues.fetch_many_calls.load(Ordering::SeqCst) > 0, "packed splits gathered their fetches");
    assert_eq!(ctx.metrics.rounds_committed.load(Ordering::Relaxed), 0, "nothing was committed");
    let errors = ctx.errors().join("; ");
    assert!(result.is_err() || !errors.is_empty(), "the job does not end as a success");
    assert!(errors.contains("answered nothing at offset") && errors.contains("remote log storage"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_answers_that_leave_out_a_table_never_pass_for_acceptance() {
    let common::Setup { dir: _dir, warehouse, cluster, client, tables } = common::setup().await;
    common::produce_all(&client, &tables[..1], 0, 500).await;
    let cues = Arc::new(Cues { short_answers: AtomicBool::new(true), ..Cues::default() });
    let (door, lake_dir, job_cues) = (local(&cluster), warehouse.clone(), Arc::clone(&cues));
    let (result, ctx) = tokio::task::spawn_blocking(move || run_once(door, lake_dir, job_cues)).await.expect("job");
    assert!(cues.injected.load(Ordering::SeqCst) > 0, "answers were shortened");
    // An answer that omits a table could hide its rejection: the round is never committed (its epoch check gets no
    // answer for it) and the job gives up with the reason, instead of tiering as if accepted.
    assert_eq!(ctx.metrics.rounds_committed.load(Ordering::Relaxed), 0, "nothing was committed");
    let errors = ctx.errors().join("; ");
    assert!(result.is_err() || !errors.is_empty(), "the job does not end as a success");
    assert!(errors.contains("did not answer") || errors.contains("failed"), "{errors}");
    let snapshots = warehouse.join("db.db").join(tables[0].path.table.clone()).join("snapshot");
    let committed = std::fs::read_dir(&snapshots).map(|d| d.count()).unwrap_or(0);
    assert_eq!(committed, 0, "no Paimon snapshot in {}", snapshots.display());
}
