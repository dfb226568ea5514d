//! The enumerator: the source of the tiering graph (Fluss's `TieringSourceEnumerator`). Runs on worker 0.
//!
//! It heartbeats the coordinator (tables in progress, finished and failed, and a request for a new table), plans a
//! round for each table it is given (split generator), and emits the round's splits and plan at a timestamp of
//! their own. Outcomes from the committer come back on its feedback input.
//!
//! Frontier contract:
//! - Output times are round numbers `0, 1, 2, …`, one per round, increasing in the order tables were assigned.
//! - A round's time `t` is held (on both outputs) from the table's assignment until its splits and plan are
//!   emitted, or until planning fails or finds nothing to do; no output at `t` follows. The plan counts the splits
//!   sent at `t`, all of its round (asserted: the committer relies on it).
//! - The feedback input is connected to no output (an empty connection): outcomes never hold back the frontier,
//!   which is what keeps the loop from livelocking.
//! - All capabilities are dropped when the job stops (`--once` caught up, SIGINT, or a fatal error), which ends
//!   the dataflow once in-flight rounds are committed.
//!
//! Invariants (with [`super::rounds::Rounds`]):
//! 1. A table has at most one round in flight. When the coordinator hands out a table this job still holds (its
//!    epoch was superseded: a coordinator restart, a heartbeat time-out), the old round is fenced and the new
//!    assignment waits until the old round's outcome is back.
//! 2. A round the coordinator rejects (fenced epoch, stale coordinator, table gone) is fenced: it never reaches its
//!    lake commit, and it is neither heartbeated nor reported any more (its epoch is dead). Rejections are matched to
//!    the epoch heartbeated, not only the table. (A job frozen past the heartbeat time-out may reach its commit before
//!    its next heartbeat: the committer confirms the epoch itself first.)
//! 3. Stopping: no new table is asked for; rounds not yet in their lake commit are fenced and reported failed at
//!    once (another job may take them); rounds in their lake commit are waited for (each lake call is bounded by
//!    the lake time-out) and reported as they end. No table is reported failed while its commit may still land.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use timely::progress::Antichain;
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::model::tiering::{
    Assignment, HeartbeatRequest, HeartbeatResponse, TableEpoch, TableSchedule, TieringCluster,
};

use super::bridge::Tasks;
use super::rounds::Fence;
use super::split_generator::{Planned, RoundRequest, plan_round};
use super::types::{Failure, RoundOutcome, RoundPlan, Split};
use super::{JobContext, Phase};

/// A failed round to report: `(table_id, tiering_epoch, reason)`.
type Failed = (i64, i64, String);
/// A finished round to report: `(table_id, tiering_epoch, forced)`; a forced one (cut short by its deadline) has
/// the table re-queued at once.
type Finished = (i64, i64, bool);

/// Why a table is handed back when the job stops.
const STOPPED: &str = "the tiering job stopped";
/// `--once`: a job that holds no table says what it waits for after this long, and again this often.
const WAIT_REPORT_AFTER: Duration = Duration::from_secs(2);
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(5);

/// A table this job holds: assigned, and not yet reported finished or failed.
struct Held {
    tiering_epoch: i64,
    round_id: String,
    assigned_at: Instant,
    /// A newer assignment of the table, waiting for this round's outcome (invariant 1).
    next: Option<Assignment>,
}

enum Event {
    Heartbeat {
        /// The `(table_id, tiering_epoch)` heartbeated as in progress, in request order (the response's order).
        sent: Vec<(i64, i64)>,
        finished: Vec<Finished>,
        failed: Vec<Failed>,
        response: Result<HeartbeatResponse>,
    },
    Planned {
        table_id: i64,
        time: u64,
        planned: Result<Planned>,
    },
    /// The lake-enabled tables at start: what `--once` must catch up.
    Tables(Result<BTreeSet<i64>>),
    /// `--once`, waiting: where the tables stand with the coordinator.
    Schedules(Result<Vec<TableSchedule>>),
}

struct Enumerator {
    ctx: Arc<JobContext>,
    tasks: Tasks<Event>,
    coordinator_epoch: Option<i32>,
    held: BTreeMap<i64, Held>,
    /// Finished rounds to report in the next heartbeat.
    finished: Vec<Finished>,
    failed: Vec<Failed>,
    heartbeat_in_flight: bool,
    next_heartbeat: Instant,
    rpc_failures: u32,
    next_time: u64,
    /// Capabilities at `next_time` for the splits and plans outputs; `None` once the job has stopped.
    base: Option<[Capability<u64>; 2]>,
    /// Capabilities of rounds being planned.
    planning: BTreeMap<u64, [Capability<u64>; 2]>,
    /// `--once`: the tables still to catch up (`None` until known).
    remaining: Option<BTreeSet<i64>>,
    failures: BTreeMap<i64, u32>,
    stopping: bool,
    /// Since when the job has held no table (the schedule phase), if it holds none.
    idle_since: Option<Instant>,
    /// `--once`: when to say again what the job waits for, and whether it is asking the cluster now.
    next_wait_report: Option<Instant>,
    wait_report_in_flight: bool,
    /// The job's workers, over which a round's packed splits are spread.
    peers: usize,
}

/// Builds the enumerator on `scope`; returns its splits and plans.
pub fn enumerator<'scope>(
    scope: Scope<'scope, u64>,
    ctx: Arc<JobContext>,
    outcomes: Stream<'scope, u64, Vec<RoundOutcome>>,
) -> (Stream<'scope, u64, Vec<Split>>, Stream<'scope, u64, Vec<RoundPlan>>) {
    let mut builder = OperatorBuilder::new("Enumerator".to_owned(), scope);
    let info = builder.operator_info();
    // Outputs first, then the input with an empty connection (see the frontier contract).
    let (splits_out, splits) = builder.new_output::<Vec<Split>>();
    let (plans_out, plans) = builder.new_output::<Vec<RoundPlan>>();
    let mut outcomes_in = builder.new_input_connection(outcomes, Pipeline, Vec::<(usize, Antichain<u64>)>::new());
    let mut splits_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Split>>>::from(splits_out);
    let mut plans_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<RoundPlan>>>::from(plans_out);
    let activator = scope.activator_for(Rc::clone(&info.address));
    let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
    let active = scope.index() == 0;
    let peers = scope.peers();

    builder.build(move |capabilities| {
        let mut caps = capabilities.into_iter();
        let base = match (caps.next(), caps.next(), active) {
            (Some(a), Some(b), true) => Some([a, b]),
            _ => None, // other workers emit nothing: their capabilities drop here
        };
        let mut state = Enumerator {
            tasks: Tasks::new(ctx.runtime.clone(), sync_activator),
            coordinator_epoch: None,
            held: BTreeMap::new(),
            finished: Vec::new(),
            failed: Vec::new(),
            heartbeat_in_flight: false,
            next_heartbeat: Instant::now(),
            rpc_failures: 0,
            next_time: 0,
            base,
            planning: BTreeMap::new(),
            remaining: None,
            failures: BTreeMap::new(),
            stopping: false,
            idle_since: Some(ctx.started),
            next_wait_report: None,
            wait_report_in_flight: false,
            peers,
            ctx,
        };
        if state.base.is_some() && state.ctx.config.once {
            let client = state.ctx.client.clone();
            state.tasks.spawn(async move { Event::Tables(tables_to_catch_up(client.as_ref()).await) }, |panic| {
                Event::Tables(Err(Error::new(ErrorKind::Internal, format!("listing tables panicked: {panic}"))))
            });
        }
        move |_frontiers| {
            let mut outcomes = Vec::new();
            outcomes_in.for_each(|_cap, data| outcomes.append(data));
            if state.base.is_none() {
                return;
            }
            for o in outcomes {
                state.on_outcome(o);
            }
            let mut emitted_splits = splits_out.activate();
            let mut emitted_plans = plans_out.activate();
            for (_, event) in state.tasks.ready() {
                match event {
                    Event::Heartbeat { sent, finished, failed, response } => {
                        state.on_heartbeat(sent, finished, failed, response)
                    }
                    Event::Planned { table_id, time, planned } => {
                        let Some([split_cap, plan_cap]) = state.planning.remove(&time) else {
                            continue;
                        };
                        if let Some((splits, plan)) = state.on_planned(table_id, planned) {
                            if let Some(held) = state.held.get(&table_id) {
                                state.ctx.metrics.add_phase(Phase::Plan, held.assigned_at.elapsed());
                            }
                            // The committer's contract: the plan counts the splits sent at its time, all of its round.
                            debug_assert!(
                                plan.splits as usize == splits.len()
                                    && splits.iter().all(|s| s.round_id == plan.round_id),
                                "round {}: a plan of {} splits, {} sent",
                                plan.round_id,
                                plan.splits,
                                splits.len()
                            );
                            emitted_splits.session(&split_cap).give_iterator(splits.into_iter());
                            emitted_plans.session(&plan_cap).give(plan);
                        }
                    }
                    Event::Tables(Ok(tables)) => state.remaining = Some(tables),
                    Event::Tables(Err(e)) => state.fatal(format!("cannot list tables: {e}")),
                    Event::Schedules(answer) => state.on_schedules(answer),
                }
            }
            if state.held.is_empty() && state.idle_since.is_none() {
                state.idle_since = Some(Instant::now());
            }
            state.maybe_stop();
            state.maybe_heartbeat();
            state.maybe_report_waiting();
            // A heartbeat in flight wakes the operator when it returns; waking it before would spin the worker.
            if state.base.is_some() && !state.heartbeat_in_flight {
                let mut wake = state.next_heartbeat.saturating_duration_since(Instant::now());
                if state.ctx.config.once {
                    wake = wake.min(WAIT_REPORT_AFTER);
                }
                activator.activate_after(wake);
            }
        }
    });
    (splits, plans)
}

/// `--once`: the lake-enabled tables that hold data now (a table never written to has nothing to catch up, and
/// the coordinator never hands it out).
async fn tables_to_catch_up(client: &dyn TieringCluster) -> Result<BTreeSet<i64>> {
    let mut out = BTreeSet::new();
    for (table_id, path, descriptor) in client.tables().await? {
        if descriptor.datalake_enabled()?
            && client.end_offsets(table_id, &path, &descriptor).await?.iter().any(|(_, end)| *end > 0)
        {
            out.insert(table_id);
        }
    }
    Ok(out)
}

/// What a job with no table waits for: each table still to catch up as the coordinator sees it, or, from a cluster
/// that does not say, how many.
fn waiting_message(remaining: &BTreeSet<i64>, answer: Result<Vec<TableSchedule>>) -> String {
    let n = remaining.len();
    match answer {
        Ok(all) => {
            let waiting: Vec<&TableSchedule> = all.iter().filter(|t| remaining.contains(&t.table_id)).collect();
            let tables: Vec<String> = waiting.iter().map(|t| t.describe()).collect();
            let hint = match waiting.iter().any(|t| t.state == "scheduled" && t.has_data) {
                true => " (`tier --now` or `schedule` makes them due now)",
                false => "",
            };
            match tables.is_empty() {
                true => format!("waiting for the coordinator to hand out one of the {n} table(s) to catch up"),
                false => format!("waiting for the coordinator to hand out a table: {}{hint}", tables.join("; ")),
            }
        }
        Err(e) if e.kind() == ErrorKind::Unsupported => format!(
            "waiting for the coordinator to hand out one of the {n} table(s) to catch up; this cluster does not say \
             when they are due (each is due one table.datalake.freshness after its last round)"
        ),
        Err(e) => format!("waiting for the coordinator to hand out one of the {n} table(s) to catch up ({e})"),
    }
}

impl Enumerator {
    fn on_outcome(&mut self, o: RoundOutcome) {
        let ours = self.held.get(&o.table_id).is_some_and(|h| h.round_id == o.round_id);
        if !ours {
            tracing::debug!(table_id = o.table_id, round = %o.round_id, "outcome of a round no longer held");
            return;
        }
        // Whether the round was fenced (invariant 2), asked before `release` closes it.
        let fenced = self.ctx.rounds.fenced(o.table_id, &o.round_id).is_some();
        let Some(held) = self.release(o.table_id) else {
            return;
        };
        match o.result {
            Ok(stats) if fenced => {
                // Committed to the lake before the fence came (the lake's conditional commit allowed it); the
                // coordinator refused or will refuse its epoch, and the next round brings the cluster up to date.
                tracing::info!(table_id = o.table_id, round = %o.round_id, snapshot = ?stats.snapshot_id,
                    "a fenced round ended after its lake commit");
            }
            Ok(stats) => {
                tracing::info!(table_id = o.table_id, round = %o.round_id, rows = stats.rows, files = stats.files,
                    snapshot = ?stats.snapshot_id, "round committed");
                self.finished.push((o.table_id, held.tiering_epoch, stats.forced));
                if stats.forced {
                    // Not caught up yet: the rest of the backlog is the next round's.
                    tracing::info!(table_id = o.table_id, "round force-finished at its deadline; re-queueing at once");
                    self.failures.remove(&o.table_id);
                } else {
                    self.caught_up(o.table_id);
                }
            }
            Err(failure) if fenced => {
                self.ctx.metrics.add_failed_round();
                tracing::info!(table_id = o.table_id, round = %o.round_id, reason = %failure, "fenced round ended");
            }
            Err(failure) => self.round_failed(o.table_id, held.tiering_epoch, &failure),
        }
    }

    /// Drops the table's round (its outcome is in, or it never got going) and starts the assignment that waited for
    /// it, if any.
    fn release(&mut self, table_id: i64) -> Option<Held> {
        let mut held = self.held.remove(&table_id)?;
        self.ctx.rounds.close(table_id, &held.round_id);
        if let Some(next) = held.next.take() {
            self.start_round(next); // handed back at once if the job is stopping
        }
        Some(held)
    }

    /// Fences the table's round (invariant 2); says whether it can still reach the lake.
    fn fence(&mut self, table_id: i64, reason: &str) -> Fence {
        let Some(held) = self.held.get(&table_id) else { return Fence::NotInFlight };
        let fence = self.ctx.rounds.fence(table_id, reason);
        if fence == Fence::Fenced {
            tracing::warn!(table_id, round = %held.round_id, reason, "round fenced: it will not be committed");
        }
        fence
    }

    /// The coordinator rejected `epoch` of `table_id`: fence the round of that epoch, or drop the deferred assignment
    /// of that epoch (it will not be handed out as such again).
    fn rejected(&mut self, table_id: i64, epoch: i64, reason: &str) {
        let Some(held) = self.held.get_mut(&table_id) else { return };
        if held.next.as_ref().is_some_and(|n| n.tiering_epoch == epoch) {
            tracing::info!(table_id, epoch, "a deferred assignment was rejected; dropping it");
            held.next = None;
        } else if held.tiering_epoch == epoch && self.fence(table_id, reason) == Fence::TooLate {
            tracing::warn!(table_id, "the rejected round is in its lake commit already");
        }
    }

    fn on_heartbeat(
        &mut self,
        sent: Vec<(i64, i64)>,
        finished: Vec<Finished>,
        failed: Vec<Failed>,
        response: Result<HeartbeatResponse>,
    ) {
        self.heartbeat_in_flight = false;
        let now = Instant::now();
        self.next_heartbeat = now + self.ctx.config.poll_interval;
        // One answer per table sent, in order: anything else could hide a rejection, so it counts as a failure.
        let response = response.and_then(|resp| {
            let answered: Vec<i64> = resp.tiering.iter().map(|r| r.table_id).collect();
            let asked: Vec<i64> = sent.iter().map(|(table_id, _)| *table_id).collect();
            match answered == asked {
                true => Ok(resp),
                false => Err(Error::new(
                    ErrorKind::CorruptMessage,
                    format!("the heartbeat answer is for tables {answered:?}, not the tables sent {asked:?}"),
                )),
            }
        });
        let resp = match response {
            Ok(resp) => resp,
            Err(e) => {
                self.rpc_failures += 1;
                tracing::warn!(error = %e, failures = self.rpc_failures, "heartbeat failed; will retry");
                let give_up = self.rpc_failures >= self.ctx.config.max_rpc_failures;
                if self.stopping && give_up {
                    // The coordinator's time-out will take the tables back.
                    tracing::warn!(finished = finished.len(), failed = failed.len(), "giving up reporting tables");
                } else {
                    self.finished.extend(finished);
                    self.failed.extend(failed);
                }
                if self.ctx.config.once && give_up && !self.stopping {
                    self.fatal(format!(
                        "the coordinator did not answer {} heartbeats in a row: {e}",
                        self.rpc_failures
                    ));
                }
                return;
            }
        };
        self.rpc_failures = 0;
        if self.coordinator_epoch.is_some_and(|e| e != resp.coordinator_epoch) {
            tracing::warn!(epoch = resp.coordinator_epoch, "the coordinator restarted; re-registering");
        }
        self.coordinator_epoch = Some(resp.coordinator_epoch);
        for (r, &(table_id, epoch)) in resp.tiering.iter().zip(&sent) {
            let Some((kind, message)) = &r.rejection else { continue };
            // The epoch this job heartbeated for the table is dead (superseded, a new coordinator, the table gone):
            // its round must not reach the lake (invariant 2).
            tracing::warn!(table_id, epoch, ?kind, message, "coordinator rejected a table in progress");
            if *kind == ErrorKind::InvalidCoordinator {
                self.next_heartbeat = now;
            }
            let reason = format!("the coordinator rejected tiering epoch {epoch}: {message}");
            self.rejected(table_id, epoch, &reason);
        }
        for r in resp.finished.iter().chain(&resp.failed) {
            if let Some((kind, message)) = &r.rejection {
                tracing::warn!(
                    table_id = r.table_id,
                    ?kind,
                    message,
                    "coordinator rejected a finished or failed report"
                );
            }
        }
        if let Some(table) = resp.assignment {
            self.assigned(table);
            // Ask again right away while there is room for more tables.
            self.next_heartbeat = now;
        }
    }

    /// A table handed out by the coordinator: a round starts now, or once the table's old round is over.
    fn assigned(&mut self, table: Assignment) {
        let table_id = table.table_id;
        if !self.held.contains_key(&table_id) {
            return self.start_round(table);
        }
        // Handed out again under a new epoch: the round still held is stale (invariant 1).
        self.fence(table_id, &format!("the table was handed out again under tiering epoch {}", table.tiering_epoch));
        tracing::info!(table_id, epoch = table.tiering_epoch, "re-assigned while its old round is in flight; waiting");
        if let Some(held) = self.held.get_mut(&table_id) {
            held.next = Some(table);
        }
    }

    fn start_round(&mut self, table: Assignment) {
        if self.stopping {
            // Handed out by a heartbeat sent before the stop: handed back at once (invariant 3).
            self.failed.push((table.table_id, table.tiering_epoch, STOPPED.to_string()));
            return;
        }
        let (Some(base), Some(coordinator_epoch)) = (&mut self.base, self.coordinator_epoch) else {
            return;
        };
        let path = table.path.clone();
        if let Some(since) = self.idle_since.take() {
            self.ctx.metrics.add_phase(Phase::Schedule, since.elapsed());
        }
        self.ctx.set_waiting(None);
        self.next_wait_report = None;
        let time = self.next_time;
        self.next_time += 1;
        let caps = [base[0].delayed(&time), base[1].delayed(&time)];
        for cap in base.iter_mut() {
            cap.downgrade(&self.next_time);
        }
        self.planning.insert(time, caps);
        let round_id = format!("{}-t{}-e{}-r{}", self.ctx.job_id, table.table_id, table.tiering_epoch, time);
        if let Err(e) = self.ctx.rounds.open(table.table_id, &round_id) {
            // Cannot happen while `assigned` defers re-assignments: a bug, said loudly, and the table handed back.
            tracing::error!(error = %e, "a second round of one table");
            self.planning.remove(&time);
            self.failed.push((table.table_id, table.tiering_epoch, e.to_string()));
            return;
        }
        tracing::info!(table = %path, table_id = table.table_id, epoch = table.tiering_epoch, round = %round_id, "tiering round started");
        let held = Held {
            tiering_epoch: table.tiering_epoch,
            round_id: round_id.clone(),
            assigned_at: Instant::now(),
            next: None,
        };
        self.held.insert(table.table_id, held);
        let ctx = Arc::clone(&self.ctx);
        let (table_id, epoch, workers) = (table.table_id, table.tiering_epoch, self.peers);
        let span = super::commit::round_span(&path, epoch, &round_id);
        let on_panic = move |panic: String| Event::Planned {
            table_id,
            time,
            planned: Err(Error::new(ErrorKind::Internal, format!("planning panicked: {panic}"))),
        };
        self.tasks.spawn(
            async move {
                let request = RoundRequest {
                    table_id,
                    path,
                    tiering_epoch: epoch,
                    coordinator_epoch,
                    round_id,
                    route_base: time * 7919,
                    split_rows: ctx.config.split_rows,
                    workers,
                    started_ms: crate::model::now_ms(),
                    max_duration: ctx.config.max_round_duration,
                    lake_timeout: ctx.config.lake_timeout,
                };
                let planned = plan_round(ctx.client.as_ref(), ctx.lake.as_ref(), request).await;
                if let Ok(p) = &planned {
                    ctx.metrics.planned(&p.plan.table.path.to_string(), p.end_total, p.tiered_total);
                }
                Event::Planned { table_id, time, planned }
            }
            .instrument(span),
            on_panic,
        );
    }

    /// Returns what to emit for a planned round, if anything.
    fn on_planned(&mut self, table_id: i64, planned: Result<Planned>) -> Option<(Vec<Split>, RoundPlan)> {
        let held = self.held.get(&table_id)?;
        let (epoch, fenced) = (held.tiering_epoch, self.ctx.rounds.fenced(table_id, &held.round_id).is_some());
        match planned {
            _ if fenced => {
                // Fenced while planning: nothing to read, nothing to report (its epoch is dead).
                self.release(table_id);
                None
            }
            Ok(p) if p.splits.is_empty() && !p.plan.cluster_behind => {
                tracing::info!(table_id, "nothing new to tier; round finished without a commit");
                self.release(table_id);
                self.finished.push((table_id, epoch, false));
                self.ctx.metrics.add_empty_round();
                self.caught_up(table_id);
                None
            }
            Ok(p) if p.plan.round_id == held.round_id => Some((p.splits, p.plan)),
            Ok(_) => {
                self.release(table_id);
                None
            }
            Err(e) => {
                self.release(table_id);
                let failure = Failure::new(e.kind(), format!("planning failed: {e}"));
                self.round_failed(table_id, epoch, &failure);
                None
            }
        }
    }

    fn caught_up(&mut self, table_id: i64) {
        self.failures.remove(&table_id);
        if let Some(remaining) = &mut self.remaining {
            remaining.remove(&table_id);
        }
    }

    fn round_failed(&mut self, table_id: i64, epoch: i64, failure: &Failure) {
        let reason = &failure.message;
        tracing::warn!(table_id, reason, kind = ?failure.kind(), "tiering round failed");
        self.ctx.metrics.add_failed_round();
        self.failed.push((table_id, epoch, reason.to_string()));
        if failure.kind() == ErrorKind::FencedTieringEpoch {
            // Another round got there first: the table is making progress, only not through this round. It does not
            // count towards `--once` giving up.
            return;
        }
        let failures = self.failures.entry(table_id).or_default();
        *failures += 1;
        if self.ctx.config.once && *failures >= self.ctx.config.max_round_failures {
            let n = *failures;
            self.fatal(format!("table {table_id} failed {n} rounds in a row; last reason: {reason}"));
        }
    }

    /// Stops the job with an error: held rounds not yet committing are handed back at once (invariant 3).
    fn fatal(&mut self, message: String) {
        tracing::error!(%message, "tiering job stopping");
        self.ctx.record_error(message);
        self.stopping = true;
    }

    fn maybe_stop(&mut self) {
        if !self.stopping && self.ctx.shutdown_requested() {
            tracing::info!("shutdown requested: stopping rounds not yet committing, waiting for the others");
            self.stopping = true;
        }
        if self.stopping {
            // Invariant 3: what has not reached its lake commit is handed back now; the rest ends on its own.
            // (A round fenced before answers `NotInFlight`, one in its lake commit `TooLate`.)
            let held: Vec<(i64, i64)> = self.held.iter().map(|(id, h)| (*id, h.tiering_epoch)).collect();
            for (table_id, epoch) in held {
                if self.fence(table_id, "the tiering job is stopping") == Fence::Fenced {
                    self.failed.push((table_id, epoch, STOPPED.to_string()));
                }
            }
            for (table_id, held) in &mut self.held {
                if let Some(next) = held.next.take() {
                    self.failed.push((*table_id, next.tiering_epoch, STOPPED.to_string()));
                }
            }
        }
        let caught_up = self.remaining.as_ref().is_some_and(BTreeSet::is_empty);
        // A question about the schedules is not waited for: its answer only feeds a message.
        let quiet = self.held.is_empty()
            && self.finished.is_empty()
            && self.failed.is_empty()
            && !self.heartbeat_in_flight
            && self.tasks.in_flight() == usize::from(self.wait_report_in_flight);
        if (self.stopping || caught_up) && quiet {
            tracing::info!("enumerator done");
            self.base = None;
            self.planning.clear();
        }
    }

    /// `--once` with no table held for a while: asks where the tables still to catch up stand, so the job can say
    /// what it waits for (a table is due only after its freshness, minutes after its creation by default).
    fn maybe_report_waiting(&mut self) {
        let now = Instant::now();
        let (Some(remaining), Some(since)) = (&self.remaining, self.idle_since) else { return };
        if !self.ctx.config.once
            || self.stopping
            || self.wait_report_in_flight
            || !self.held.is_empty()
            || remaining.is_empty()
            || now < since + WAIT_REPORT_AFTER
            || self.next_wait_report.is_some_and(|at| now < at)
        {
            return;
        }
        self.wait_report_in_flight = true;
        let client = self.ctx.client.clone();
        self.tasks.spawn(async move { Event::Schedules(client.schedules().await) }, |panic| {
            Event::Schedules(Err(Error::new(ErrorKind::Internal, format!("asking for schedules panicked: {panic}"))))
        });
    }

    fn on_schedules(&mut self, answer: Result<Vec<TableSchedule>>) {
        self.wait_report_in_flight = false;
        self.next_wait_report = Some(Instant::now() + WAIT_REPORT_EVERY);
        let Some(remaining) = self.remaining.as_ref().filter(|_| self.held.is_empty()) else { return };
        let message = waiting_message(remaining, answer);
        tracing::info!("{message}");
        self.ctx.set_waiting(Some(message));
    }

    fn maybe_heartbeat(&mut self) {
        let Some(_) = &self.base else { return };
        let reports = !self.finished.is_empty() || !self.failed.is_empty();
        if self.heartbeat_in_flight || (!reports && Instant::now() < self.next_heartbeat) {
            return;
        }
        let want_more = self.remaining.as_ref().is_none_or(|r| !r.is_empty());
        // The first heartbeat asks too: its response carries the coordinator epoch the assignment needs.
        let request_table = !self.stopping && want_more && self.held.len() < self.ctx.config.max_tables_in_flight;
        let coordinator_epoch = self.coordinator_epoch.unwrap_or(0);
        let entry = |(table_id, tiering_epoch): (i64, i64)| TableEpoch { table_id, coordinator_epoch, tiering_epoch };
        let finished = std::mem::take(&mut self.finished);
        let failed = std::mem::take(&mut self.failed);
        // Invariant 2: a fenced round's epoch is dead; a deferred assignment's epoch is alive.
        let rounds = &self.ctx.rounds;
        let sent: Vec<(i64, i64)> = self
            .held
            .iter()
            .flat_map(|(id, h)| {
                let current = rounds.fenced(*id, &h.round_id).is_none().then_some((*id, h.tiering_epoch));
                current.into_iter().chain(h.next.as_ref().map(|n| (*id, n.tiering_epoch)))
            })
            .collect();
        let req = HeartbeatRequest {
            tiering: sent.iter().copied().map(entry).collect(),
            finished: finished.iter().map(|(id, epoch, _)| entry((*id, *epoch))).collect(),
            failed: failed.iter().map(|(id, epoch, reason)| (entry((*id, *epoch)), reason.clone())).collect(),
            request_table,
            force_finished: finished.iter().filter(|(_, _, forced)| *forced).map(|(id, _, _)| *id).collect(),
        };
        self.heartbeat_in_flight = true;
        let client = self.ctx.client.clone();
        // A panic loses no report: they go out again with the next heartbeat.
        let (sent_again, finished_again, failed_again) = (sent.clone(), finished.clone(), failed.clone());
        let on_panic = move |panic: String| Event::Heartbeat {
            sent: sent_again,
            finished: finished_again,
            failed: failed_again,
            response: Err(Error::new(ErrorKind::Internal, format!("the heartbeat task panicked: {panic}"))),
        };
        self.tasks.spawn(
            async move {
                let response = client.heartbeat(&req).await;
                Event::Heartbeat { sent, finished, failed, response }
            },
            on_panic,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(table_id: i64, state: &str, due_in: Option<Duration>, has_data: bool) -> TableSchedule {
        TableSchedule {
            table_id,
            path: format!("db.t{table_id}").parse().expect("path"),
            state: state.into(),
            due_in,
            has_data,
            last_error: None,
        }
    }

    #[test]
    fn a_waiting_job_names_each_table_it_waits_for_and_when_it_is_due() {
        let remaining: BTreeSet<i64> = [1, 2].into();
        let all = vec![
            table(1, "scheduled", Some(Duration::from_secs(175)), true),
            table(2, "pending", None, true),
            table(3, "scheduled", Some(Duration::from_secs(5)), true), // caught up already: not named
        ];
        let message = waiting_message(&remaining, Ok(all));
        assert!(message.contains("db.t1: scheduled, due in 2m55s"), "{message}");
        assert!(message.contains("db.t2: pending"), "{message}");
        assert!(!message.contains("db.t3"), "{message}");
        assert!(message.contains("--now"), "{message}");

        let unsupported = Error::new(ErrorKind::Unsupported, "no");
        let message = waiting_message(&remaining, Err(unsupported));
        assert!(message.contains("2 table(s)") && message.contains("does not say"), "{message}");
    }
}
