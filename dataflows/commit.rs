//! The committer (Fluss's `TieringCommitOperator`): gathers each round's write results on worker 0 and, when both
//! input frontiers have passed the round's time, commits it exactly once:
//!
//! ```text
//!   plan + write results ──▶ checks ──▶ (0) the base recorded with the cluster, if the cluster lacks it
//!                                      ──▶ PrepareLakeTableSnapshot: the cluster writes the merged offsets to a file
//!                                      ──▶ (1) lake commit, conditional on the lake snapshot the round was planned from,
//!                                          carrying the round's marker (round id, tiering epoch, the offsets file
//!                                          as `fluss-offsets`)
//!                                      ──▶ (2) CommitLakeTableSnapshot naming the file, fenced by the tiering epoch
//!                                      ──▶ (3) outcome to the enumerator
//! ```
//!
//! This is Fluss 0.9's contract (prepare, lake commit with the file, commit), with two differences that keep it exactly
//! once when the cluster is behind the lake: the prepared file holds every bucket's offset, the cluster's previous
//! ones ignored; and a round is planned from the lake's latest snapshot, not from the cluster's record, so where
//! Fluss's missing-snapshot check records the lake's snapshot and then fails the round (its data was read from stale
//! offsets), (0) records it and the round goes on. If (1) lands and (2) does not, the round fails; the next round of
//! the table finds the newer snapshot in the lake (the source of truth), tiers from its offsets and brings the cluster
//! up to date. What (1) did is decided by
//! [`crate::lake::outcome`]: a round's files are deleted only when the lake, walked back to the round's base, does
//! not hold it; an unknown outcome keeps them.
//!
//! Invariants:
//! 1. A round enters (1) only if the coordinator confirmed its tiering epoch just before (a job frozen past the
//!    coordinator's heartbeat time-out learns here that its table went to another job, before touching the lake) and
//!    the enumerator has not fenced it since ([`super::rounds::Rounds::begin_commit`]).
//! 2. One table never has two rounds committing here at once: a second one fails (a bug upstream, said loudly).
//! 3. A round that read anything commits a snapshot, files or not: a round whose changes net to zero still records
//!    its offsets (a marker-only snapshot), so the next round does not read the same range again.
//! 4. A round begins its lake commit within half the orphan age of its splits going out, and the lake time-out is
//!    at most half the orphan age: a file the sweep finds older than the orphan age belongs to a round that has
//!    landed (it is referenced) or never will ([`crate::lake::sweep`]).
//!
//! Frontier contract: a round's plan holds a capability at its time `t` until the round's outcome is emitted. Rounds
//! of different tables commit concurrently; one table has at most one round in flight, so its rounds stay ordered.
//! What it relies on is asserted (`debug_assert!`): one plan per time, and a round past both input frontiers has
//! its plan and one result per split (the enumerator and the readers hold `t` until then).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint;
use crate::lake::{BucketOffset, CommitMarker, LakeCommitter, TableBucket, WrittenData};
use crate::model::tiering::{HeartbeatRequest, LakeBucketOffset, LakeCommit, LakeSnapshot, TableEpoch};

use super::bridge::CapabilityTasks;
use super::types::{Failure, RoundOutcome, RoundPlan, RoundStats, SplitRange, WriteResult};
use super::{JobContext, Phase};

#[derive(Default)]
struct Round {
    /// The plan, with when it arrived: the round's splits went out to the readers then.
    plan: Option<(Capability<u64>, RoundPlan, Instant)>,
    results: Vec<WriteResult>,
}

/// Commits rounds; emits one outcome per round.
pub fn commit<'scope>(
    plans: Stream<'scope, u64, Vec<RoundPlan>>,
    results: Stream<'scope, u64, Vec<WriteResult>>,
    ctx: Arc<JobContext>,
) -> Stream<'scope, u64, Vec<RoundOutcome>> {
    let scope = plans.scope();
    plans.binary_frontier::<_, CapacityContainerBuilder<Vec<RoundOutcome>>, _, _, _, _>(
        results,
        Pipeline,
        Exchange::new(|_: &WriteResult| 0),
        "Commit",
        move |_initial, info| {
            let mut tasks: CapabilityTasks<RoundOutcome> =
                CapabilityTasks::new(ctx.runtime.clone(), scope.worker().sync_activator_for(info.address.to_vec()));
            let mut rounds: BTreeMap<u64, Round> = BTreeMap::new();
            // Table id -> the round committing (invariant 2).
            let mut committing: BTreeMap<i64, String> = BTreeMap::new();
            move |(plans_in, plans_frontier), (results_in, results_frontier), output| {
                plans_in.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    for plan in data.drain(..) {
                        let round = rounds.entry(*cap.time()).or_default();
                        debug_assert!(round.plan.is_none(), "two plans at time {}: one round per time", cap.time());
                        round.plan = Some((cap.clone(), plan, Instant::now()));
                    }
                });
                results_in.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        rounds.entry(t).or_default().results.append(data);
                    }
                });
                let complete: Vec<u64> = rounds
                    .keys()
                    .copied()
                    .filter(|t| !plans_frontier.less_equal(t) && !results_frontier.less_equal(t))
                    .collect();
                for t in complete {
                    let Some(round) = rounds.remove(&t) else {
                        continue;
                    };
                    // The enumerator holds a round's time until its plan is out, and the readers hold it until each of
                    // the round's splits reported: past both frontiers, the round is whole.
                    debug_assert!(round.plan.is_some(), "write results at time {t} without a round plan");
                    let Some((cap, plan, sent)) = round.plan else {
                        tracing::error!(time = t, results = round.results.len(), "write results without a round plan");
                        continue;
                    };
                    debug_assert!(
                        round.results.len() == plan.splits as usize
                            && round.results.iter().all(|r| r.round_id == plan.round_id),
                        "round {} is complete with {} results of its {} splits",
                        plan.round_id,
                        round.results.len(),
                        plan.splits
                    );
                    ctx.metrics.add_phase(Phase::ReadWrite, sent.elapsed());
                    let (table_id, round_id) = (plan.table.table_id, plan.round_id.clone());
                    if let Some(other) = committing.get(&table_id) {
                        let message = format!("table {table_id}: round {round_id} while round {other} is committing");
                        tracing::error!(%message, "two rounds of one table in flight");
                        let failure = Failure::new(ErrorKind::Internal, message);
                        output.session(&cap).give(RoundOutcome { table_id, round_id, result: Err(failure) });
                        continue;
                    }
                    committing.insert(table_id, round_id.clone());
                    let on_panic = move |panic: String| {
                        tracing::error!(%panic, round = %round_id, "a commit task panicked");
                        let failure = Failure::new(ErrorKind::Internal, format!("the commit task panicked: {panic}"));
                        RoundOutcome { table_id, round_id, result: Err(failure) }
                    };
                    let ctx = Arc::clone(&ctx);
                    let span = round_span(&plan.table.path, plan.tiering_epoch, &plan.round_id);
                    let commit = async move { commit_round(&ctx, plan, round.results, sent).await }.instrument(span);
                    tasks.spawn(cap, commit, on_panic);
                }
                for (cap, outcome) in tasks.ready() {
                    if committing.get(&outcome.table_id) == Some(&outcome.round_id) {
                        committing.remove(&outcome.table_id);
                    }
                    output.session(&cap).give(outcome);
                }
            }
        },
    )
}

/// The span of everything done for one round: its planning and its commit.
pub(crate) fn round_span(table: &crate::model::table::TablePath, epoch: i64, round: &str) -> tracing::Span {
    tracing::info_span!("round", table = %table, epoch, round)
}

/// Commits one round and says how it went.
/// `read_started`: when the round's splits went out (no file of the round is older).
async fn commit_round(
    ctx: &JobContext,
    plan: RoundPlan,
    results: Vec<WriteResult>,
    read_started: Instant,
) -> RoundOutcome {
    let started = std::time::Instant::now();
    let (table_id, round_id) = (plan.table.table_id, plan.round_id.clone());
    let result = try_commit(ctx, &plan, results, read_started).await;
    match &result {
        Ok(stats) => {
            ctx.metrics.add_committed_round(started.elapsed());
            tracing::info!(snapshot = ?stats.snapshot_id, rows = stats.rows, ms = started.elapsed().as_millis() as u64,
                "round committed to lake and cluster");
        }
        Err(e) => {
            tracing::warn!(error = %e, "round not committed")
        }
    }
    RoundOutcome { table_id, round_id, result: result.map_err(|e| Failure::from(&e)) }
}

async fn try_commit(
    ctx: &JobContext,
    plan: &RoundPlan,
    results: Vec<WriteResult>,
    read_started: Instant,
) -> Result<RoundStats> {
    let started = Instant::now();
    let committer = ctx.bounded("opening the lake committer", ctx.lake.create_committer(&plan.table)).await?;
    let gathered = gather(plan, results);
    let (all_files, beyond_gap) = (gathered.all_files(), gathered.beyond_gap.clone());
    let mut stats = gathered.stats.clone();
    let committed = lake_commit(ctx, committer.as_ref(), plan, gathered, read_started).await;
    ctx.metrics.add_phase(Phase::LakeCommit, started.elapsed());
    let committed = match committed {
        Ok(committed) => committed,
        Err(e) if e.kind() == ErrorKind::CommitOutcomeUnknown => return Err(e),
        Err(e) => {
            if let Err(cleanup) = ctx.bounded("deleting a failed round's files", committer.abort(all_files)).await {
                tracing::warn!(error = %cleanup, "could not delete the files of a failed round");
            }
            return Err(e);
        }
    };
    if !beyond_gap.is_empty()
        && let Err(cleanup) = ctx.bounded("deleting files past a gap", committer.abort(beyond_gap)).await
    {
        tracing::warn!(error = %cleanup, "could not delete files written past a deadline gap");
    }
    let Some((snapshot_id, marker)) = committed else { return Ok(stats) };
    stats.snapshot_id = Some(snapshot_id);
    failpoint::hit("after-lake-commit");
    let started = Instant::now();
    let committed = cluster_commit(ctx, plan, snapshot_id, &marker).await;
    ctx.metrics.add_phase(Phase::ClusterCommit, started.elapsed());
    committed.map_err(|e| {
        Error::new(e.kind(), format!("lake snapshot {snapshot_id} committed, but the cluster commit failed: {e}"))
    })?;
    failpoint::hit("after-cluster-commit");
    ctx.metrics.committed(&plan.table.path.to_string(), marker.offsets.iter().map(|o| o.offset).sum());
    sweep_if_due(ctx, committer.as_ref(), plan.table.table_id).await;
    Ok(stats)
}

/// Sweeps the table's orphan files after its first commit in this job, then at most once per orphan age; a sweep
/// that fails is only logged (the round is committed).
async fn sweep_if_due(ctx: &JobContext, committer: &dyn LakeCommitter, table_id: i64) {
    let due = {
        let mut swept = ctx.swept.lock().unwrap_or_else(|p| p.into_inner());
        let due = swept.get(&table_id).is_none_or(|at| at.elapsed() >= ctx.config.orphan_age);
        if due {
            swept.insert(table_id, Instant::now());
        }
        due
    };
    if !due {
        return;
    }
    match ctx.bounded("sweeping orphan files", committer.sweep(ctx.config.orphan_age)).await {
        Ok(swept) => ctx.metrics.add_swept(swept.files, swept.bytes),
        Err(e) => {
            tracing::warn!(error = %e, "the orphan-file sweep failed; the table's next commit tries again");
            ctx.swept.lock().unwrap_or_else(|p| p.into_inner()).remove(&table_id);
        }
    }
}

/// A round's write results, checked and summed up.
pub struct Gathered {
    /// The files to commit.
    pub written: Vec<WrittenData>,
    /// Files written past a gap that a deadline left in their bucket: never committed.
    pub beyond_gap: Vec<WrittenData>,
    /// Where each bucket read this round gets to.
    pub reached: BTreeMap<TableBucket, i64>,
    pub stats: RoundStats,
    /// Why the round cannot be committed, if it cannot (the first failed split's failure, kind kept).
    pub problem: Option<Failure>,
}

impl Gathered {
    /// Every file of the round, to delete when it fails.
    fn all_files(&self) -> Vec<WrittenData> {
        self.written.iter().chain(&self.beyond_gap).cloned().collect()
    }
}

/// Checks that every split of the round reported, then keeps, per bucket, the splits that continue each other from
/// the bucket's start: a split that a deadline cut short ends its bucket's round, and later sub-ranges of that bucket
/// wait for the next round (their files are deleted), so a bucket's committed range never has a hole. A packed
/// split's buckets have no other range in the round (the planner's promise, checked here): its files are committed
/// whole, each bucket up to where its range was reached.
pub fn gather(plan: &RoundPlan, results: Vec<WriteResult>) -> Gathered {
    let indexes: BTreeSet<u32> = results.iter().map(|r| r.index).collect();
    let complete = results.len() == plan.splits as usize
        && indexes.len() == results.len()
        && results.iter().all(|r| r.round_id == plan.round_id);
    let mut problem = results.iter().find_map(|r| r.written.as_ref().err().cloned());
    if problem.is_none() && !complete {
        let message =
            format!("round {} gathered {} distinct results for {} splits", plan.round_id, indexes.len(), plan.splits);
        problem = Some(Failure::new(ErrorKind::Internal, message));
    }
    let mut g = Gathered {
        written: Vec::new(),
        beyond_gap: Vec::new(),
        reached: BTreeMap::new(),
        stats: RoundStats::default(),
        problem,
    };
    let mut by_bucket: BTreeMap<TableBucket, Vec<(i64, i64, WrittenData, i64)>> = BTreeMap::new();
    let mut packed: Vec<(Vec<SplitRange>, WrittenData, Vec<i64>)> = Vec::new();
    let mut ranges_per_bucket: BTreeMap<TableBucket, usize> = BTreeMap::new();
    for r in results {
        for range in &r.ranges {
            *ranges_per_bucket.entry(range.bucket).or_default() += 1;
        }
        let Ok((w, reached)) = r.written else { continue };
        match (r.ranges.as_slice(), reached.as_slice()) {
            ([range], [reached]) => {
                by_bucket.entry(range.bucket).or_default().push((range.start, range.stop, w, *reached))
            }
            (ranges, reached) if ranges.len() == reached.len() && !ranges.is_empty() => {
                packed.push((r.ranges, w, reached.to_vec()))
            }
            _ => {
                let message = format!(
                    "split {} of round {} reported {} ranges reached for {}",
                    r.index,
                    r.round_id,
                    reached.len(),
                    r.ranges.len()
                );
                g.problem.get_or_insert(Failure::new(ErrorKind::Internal, message));
                g.beyond_gap.push(w);
            }
        }
    }
    fn add(g: &mut Gathered, w: WrittenData) {
        g.stats.rows += w.rows;
        g.stats.files += w.files;
        g.stats.file_bytes += w.file_bytes;
        g.written.push(w);
    }
    for (ranges, w, reached) in packed {
        if let Some(shared) = ranges.iter().find(|range| ranges_per_bucket.get(&range.bucket) != Some(&1)) {
            let message =
                format!("bucket {:?} of a packed split has another range in round {}", shared.bucket, plan.round_id);
            g.problem.get_or_insert(Failure::new(ErrorKind::Internal, message));
            g.beyond_gap.push(w);
            continue;
        }
        for (range, reached) in ranges.iter().zip(reached) {
            g.stats.forced |= reached < range.stop;
            // A range nothing was read from leaves its bucket where the lake has it (a bucket new to the lake is
            // not recorded at a log start that retention may move). Packed ranges are log ranges, without a snapshot.
            if reached > range.start {
                g.reached.insert(range.bucket, reached);
            }
        }
        add(&mut g, w);
    }
    for (bucket, mut splits) in by_bucket {
        splits.sort_by_key(|(start, ..)| *start);
        let mut next: Option<i64> = None;
        let mut open = true;
        for (start, stop, w, reached) in splits {
            if open && next.is_none_or(|n| n == start) {
                add(&mut g, w);
                next = Some(reached);
                if reached < stop {
                    g.stats.forced = true;
                    open = false;
                }
            } else {
                g.beyond_gap.push(w);
            }
        }
        // Recorded even when it did not move: a primary-key bucket's range that starts at its KV snapshot's offset
        // was read from the snapshot, and its first split reads once whatever the deadline.
        if let Some(reached) = next {
            g.reached.insert(bucket, reached);
        }
    }
    g
}

/// Phase 1: the conditional lake commit. Returns the snapshot the cluster must learn about, with its marker, or
/// nothing when there is nothing to commit anywhere (a round of no rows on an empty lake: every range empty, or a
/// first fetch that found nothing).
async fn lake_commit(
    ctx: &JobContext,
    committer: &dyn LakeCommitter,
    plan: &RoundPlan,
    g: Gathered,
    read_started: Instant,
) -> Result<Option<(i64, CommitMarker)>> {
    if let Some(problem) = g.problem {
        return Err(Error::new(problem.kind(), format!("a split failed: {}", problem.message)));
    }
    // A table dropped (and maybe re-created under the same name) since the round was planned gets nothing.
    let (current_id, _) = ctx.client.table_info(&plan.table.path).await?;
    if current_id != plan.table.table_id {
        return Err(Error::new(
            ErrorKind::TableNotExist,
            format!(
                "table {} was dropped and re-created during the round (id {} is now {current_id})",
                plan.table.path, plan.table.table_id
            ),
        ));
    }
    let base_id = plan.base.as_ref().map(|b| b.snapshot_id);
    // Offsets of every bucket ever tiered: the base's, overridden by this round's.
    let mut merged: BTreeMap<TableBucket, BucketOffset> = plan
        .base
        .iter()
        .flat_map(|b| b.marker.offsets.iter())
        .map(|o| (TableBucket { partition_id: o.partition_id, bucket: o.bucket }, o.clone()))
        .collect();
    for b in &plan.buckets {
        let bucket = TableBucket { partition_id: b.partition_id, bucket: b.bucket };
        if let Some(&reached) = g.reached.get(&bucket) {
            merged.insert(bucket, BucketOffset { offset: reached, ..b.clone() });
        }
    }
    let marker = CommitMarker {
        round_id: plan.round_id.clone(),
        table_id: plan.table.table_id,
        tiering_epoch: plan.tiering_epoch,
        offsets: merged.into_values().collect(),
        offsets_file: None,
    };
    let base_offsets = plan.base.as_ref().map(|b| b.marker.offset_map()).unwrap_or_default();
    if g.written.iter().all(|w| w.files == 0) && marker.offset_map() == base_offsets {
        // Nothing read: this round only brings the cluster up to the lake's latest snapshot, if it is behind.
        return Ok(plan
            .base
            .as_ref()
            .filter(|_| plan.cluster_behind)
            .map(|base| (base.snapshot_id, base.marker.clone())));
    }
    // Invariant 1: a round whose epoch is dead, or that the enumerator fenced (the job stopping), goes no further.
    failpoint::hit("before-epoch-check");
    // The sweep's premise (invariant 4): no round commits files older than half the orphan age.
    let age = read_started.elapsed();
    if age > ctx.config.orphan_age / 2 {
        return Err(Error::new(
            ErrorKind::Lake,
            format!(
                "the round has run for {age:?}, more than half of the orphan age ({:?}): its oldest files may be \
                 swept, so it is not committed (raise --orphan-age, or lower the round's duration)",
                ctx.config.orphan_age
            ),
        ));
    }
    confirm_epoch(ctx, plan).await?;
    ctx.rounds.begin_commit(plan.table.table_id, &plan.round_id)?;
    if let Some(base) = plan.base.as_ref().filter(|_| plan.cluster_behind) {
        tracing::info!(
            snapshot = base.snapshot_id,
            "the cluster has not recorded the lake's latest snapshot: recording it"
        );
        cluster_commit(ctx, plan, base.snapshot_id, &base.marker).await.map_err(|e| {
            let what = format!("recording the lake's latest snapshot {} with the cluster failed", base.snapshot_id);
            Error::new(e.kind(), format!("{what}: {e}"))
        })?;
    }
    let mut marker = marker;
    marker.offsets_file = Some(prepare(ctx, plan, &marker).await?);
    tracing::info!(files = g.written.iter().map(|w| w.files).sum::<u64>(), "committing to the lake");
    failpoint::slow_commit(&plan.table.path.to_string()).await;
    // Conditional on the lake still being where the round started: otherwise another writer (a zombie job, a job
    // that took the table over) committed in between, and committing on top would duplicate its rows.
    let snapshot_id =
        match tokio::time::timeout(ctx.config.lake_timeout, committer.commit(g.written, &marker, base_id)).await {
            Ok(committed) => committed?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::CommitOutcomeUnknown,
                    format!("the lake commit took longer than {:?}: its outcome is unknown", ctx.config.lake_timeout),
                ));
            }
        };
    Ok(Some((snapshot_id, marker)))
}

/// Asks the coordinator whether it still holds the round's tiering epoch (a heartbeat of this table alone); a
/// rejection fences the round. What is left (the epoch expiring during the lake commit) is the lake's conditional
/// commit's to catch.
async fn confirm_epoch(ctx: &JobContext, plan: &RoundPlan) -> Result<()> {
    let table_id = plan.table.table_id;
    let entry = TableEpoch { table_id, coordinator_epoch: plan.coordinator_epoch, tiering_epoch: plan.tiering_epoch };
    let request = HeartbeatRequest { tiering: vec![entry], ..Default::default() };
    // A network error is not a rejection: a few tries (each bounded by the RPC time-out) before the round gives up.
    let mut attempt = 0u32;
    let response = loop {
        match ctx.client.heartbeat(&request).await {
            Ok(response) => break response,
            Err(e) if e.kind() == ErrorKind::Network && attempt < 3 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "confirming the tiering epoch failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    };
    match response.tiering.as_slice() {
        [answer] if answer.table_id == table_id => match &answer.rejection {
            None => Ok(()),
            Some((_, message)) => Err(Error::new(
                ErrorKind::FencedTieringEpoch,
                format!(
                    "the coordinator no longer holds tiering epoch {} ({message}): not committing",
                    plan.tiering_epoch
                ),
            )),
        },
        other => Err(Error::new(
            ErrorKind::Internal,
            format!("the coordinator answered a one-table heartbeat with {} answers", other.len()),
        )),
    }
}

/// The marker's offsets as the cluster records them.
fn lake_offsets(marker: &CommitMarker) -> Vec<LakeBucketOffset> {
    marker
        .offsets
        .iter()
        .map(|o| LakeBucketOffset {
            partition_id: o.partition_id,
            bucket: o.bucket,
            log_end_offset: o.offset,
            max_timestamp: None,
        })
        .collect()
}

/// PrepareLakeTableSnapshot: the cluster writes the marker's offsets to a file and names it.
async fn prepare(ctx: &JobContext, plan: &RoundPlan, marker: &CommitMarker) -> Result<String> {
    let offsets = lake_offsets(marker);
    ctx.client
        .prepare_lake_offsets(plan.table.table_id, &plan.table.path, &offsets)
        .await
        .map_err(|e| Error::new(e.kind(), format!("the cluster did not prepare the round's offsets file: {e}")))
}

/// Phase 2: tell the cluster, under the round's tiering epoch, naming the snapshot's offsets file (one prepared now
/// for a snapshot of an earlier version, which names none).
async fn cluster_commit(ctx: &JobContext, plan: &RoundPlan, snapshot_id: i64, marker: &CommitMarker) -> Result<()> {
    let offsets_file = match &marker.offsets_file {
        Some(file) => file.clone(),
        None => prepare(ctx, plan, marker).await?,
    };
    let buckets = lake_offsets(marker);
    let commit = LakeCommit {
        table_id: plan.table.table_id,
        path: plan.table.path.clone(),
        coordinator_epoch: plan.coordinator_epoch,
        tiering_epoch: plan.tiering_epoch,
        snapshot: LakeSnapshot { snapshot_id, buckets },
        offsets_file,
    };
    ctx.client.commit_lake_snapshot(&commit).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::{TableDescriptor, parse_schema};

    fn plan(splits: u32) -> RoundPlan {
        let descriptor = TableDescriptor {
            columns: parse_schema("id:int64").expect("schema"),
            buckets: 4,
            partition_key: None,
            primary_key: vec![],
            properties: Default::default(),
        };
        RoundPlan {
            table: crate::lake::TableContext { table_id: 1, path: "db.t".parse().expect("path"), descriptor },
            tiering_epoch: 1,
            coordinator_epoch: 0,
            round_id: "r".into(),
            splits,
            base: None,
            buckets: vec![],
            cluster_behind: false,
        }
    }

    fn result(index: u32, ranges: &[(i32, i64, i64, i64)]) -> WriteResult {
        let rows = ranges.iter().map(|(_, start, _, reached)| (reached - start) as u64).sum();
        WriteResult {
            round_id: "r".into(),
            index,
            ranges: ranges
                .iter()
                .map(|&(bucket, start, stop, _)| SplitRange {
                    bucket: TableBucket { partition_id: None, bucket },
                    start,
                    stop,
                })
                .collect(),
            written: Ok((
                WrittenData { payload: vec![index as u8], files: 1, file_bytes: 1, rows },
                ranges.iter().map(|r| r.3).collect(),
            )),
        }
    }

    fn reached(g: &Gathered) -> Vec<(i32, i64)> {
        g.reached.iter().map(|(b, r)| (b.bucket, *r)).collect()
    }

    #[test]
    fn a_cut_split_ends_its_bucket_and_later_pieces_wait() {
        // Bucket 0 in three pieces, the second cut short by the deadline: the third's files are not committed.
        let g = gather(
            &plan(3),
            vec![result(0, &[(0, 0, 10, 10)]), result(1, &[(0, 10, 20, 15)]), result(2, &[(0, 20, 30, 30)])],
        );
        assert!(g.problem.is_none());
        assert_eq!(reached(&g), [(0, 15)]);
        assert_eq!((g.written.len(), g.beyond_gap.len(), g.stats.rows, g.stats.forced), (2, 1, 15, true));
    }

    #[test]
    fn a_packed_split_commits_whole_with_each_bucket_where_it_got() {
        // Buckets 1-3 packed, the deadline came during bucket 2 and before bucket 3.
        let packed = result(1, &[(1, 0, 10, 10), (2, 0, 10, 4), (3, 5, 10, 5)]);
        let g = gather(&plan(2), vec![result(0, &[(0, 0, 10, 10)]), packed]);
        assert!(g.problem.is_none());
        assert_eq!(reached(&g), [(0, 10), (1, 10), (2, 4)], "bucket 3, not read, stays where the lake has it");
        assert_eq!((g.written.len(), g.beyond_gap.len(), g.stats.rows, g.stats.forced), (2, 0, 24, true));
    }

    #[test]
    fn a_packed_bucket_with_another_range_fails_the_round() {
        let g = gather(&plan(2), vec![result(0, &[(0, 0, 10, 10)]), result(1, &[(0, 10, 20, 20), (1, 0, 5, 5)])]);
        assert_eq!(g.problem.map(|p| p.kind()), Some(ErrorKind::Internal));
        assert_eq!(g.beyond_gap.len(), 1, "the packed split's files are deleted with the round");
        let g = gather(
            &plan(1),
            vec![WriteResult {
                written: Ok((WrittenData::default(), vec![10])),
                ..result(0, &[(0, 0, 10, 10), (1, 0, 5, 5)])
            }],
        );
        assert!(g.problem.is_some(), "reached offsets must match the ranges");
    }
}
