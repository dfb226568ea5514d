//! The coordinator's tiering state: which table is tiered when, by whom, under which epoch (Fluss's
//! `LakeTableTieringManager`), and the lake snapshot each table has reached.
//!
//! ```text
//!   New ──▶ Scheduled ──(freshness elapsed)──▶ Pending ──(request_table)──▶ Tiering ──(finished)──▶ Tiered ─▶ Scheduled
//!              ▲                                 ▲  ▲                          │                       │
//!              │                                 │  └──(failed / time-out)── Failed                    │
//!              │                                 └──────────────────(force-finished)───────────────────┘
//! ```
//!
//! Invariants:
//! 1. Entering `Pending` bumps the table's tiering epoch, so every assignment has an epoch of its own.
//! 2. Only the holder of the current epoch, while the table is `Tiering`, may renew, finish, fail or commit; anything
//!    else is answered with `FencedTieringEpoch`. A job whose heartbeats stop for `heartbeat_timeout` loses the table.
//! 3. A failed round is retried after a backoff that doubles with each consecutive failure (from
//!    `failure_backoff`, at most [`MAX_BACKOFF`]); one bad table cannot keep the others' jobs busy.
//! 4. Epochs, lake snapshots and last-tiered times are persisted before the change is acknowledged, and the
//!    coordinator epoch grows on every start: after a restart no stale epoch becomes valid again, and a table that was
//!    `Pending` or `Tiering` is re-queued under a new epoch. With [`TieringEpochs::PerStart`] (what Fluss's
//!    coordinator does, keeping them in memory) tiering epochs count from 0 again on every start, and only the
//!    coordinator epoch tells a job of an earlier start apart: nothing in the lake may rely on tiering epochs growing.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::persist::{read_json, write_json};
use crate::error::{Error, ErrorKind, Result};
use crate::model::table::TableInfo;
use crate::model::table::TablePath;

/// Fluss's `TIERING_SERVICE_TIMEOUT_MS`.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(120);
/// The first retry delay after a failed round.
pub const DEFAULT_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// What a start does with the tables' tiering epochs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TieringEpochs {
    /// Carried over from the persisted state: they keep growing across restarts.
    #[default]
    Persisted,
    /// Counted from 0 again, as Fluss's `LakeTableTieringManager` does (its epochs live in memory).
    PerStart,
}
/// The longest retry delay after failed rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where a table is in its tiering cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TieringState {
    New,
    Initialized,
    Scheduled,
    Pending,
    Tiering,
    Tiered,
    Failed,
}

impl TieringState {
    fn valid_previous(self) -> &'static [TieringState] {
        use TieringState::*;
        match self {
            New | Initialized => &[],
            Scheduled => &[New, Initialized, Tiered, Failed],
            Pending => &[Scheduled, Failed, Tiered],
            Tiering => &[Pending],
            Tiered | Failed => &[Tiering],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TieringState::New => "new",
            TieringState::Initialized => "initialized",
            TieringState::Scheduled => "scheduled",
            TieringState::Pending => "pending",
            TieringState::Tiering => "tiering",
            TieringState::Tiered => "tiered",
            TieringState::Failed => "failed",
        }
    }
}

pub use crate::model::tiering::{LakeBucketOffset, LakeSnapshot};

/// A table handed to a tiering job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TieringAssignment {
    pub table_id: i64,
    pub path: TablePath,
    pub tiering_epoch: i64,
}

/// A table's entry in a heartbeat: which round of which table.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatEntry {
    pub table_id: i64,
    pub coordinator_epoch: i32,
    pub tiering_epoch: i64,
}

/// What one heartbeat reports.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub tiering: Vec<HeartbeatEntry>,
    pub finished: Vec<HeartbeatEntry>,
    /// Failed rounds, with the reason when the job gave one.
    pub failed: Vec<(HeartbeatEntry, Option<String>)>,
    pub force_finished: Vec<i64>,
    pub request_table: bool,
}

/// The answer: per-table outcomes in the order of the request, and maybe a table to tier.
#[derive(Debug, Default)]
pub struct HeartbeatOutcome {
    pub coordinator_epoch: i32,
    pub assignment: Option<TieringAssignment>,
    pub tiering: Vec<(i64, Result<()>)>,
    pub finished: Vec<(i64, Result<()>)>,
    pub failed: Vec<(i64, Result<()>)>,
}

/// A table's tiering status, for `tables` and `status`.
#[derive(Debug, Clone)]
pub struct TieringStatus {
    pub state: TieringState,
    pub tiering_epoch: i64,
    pub lake_snapshot_id: Option<i64>,
    pub last_tiered_ms: Option<i64>,
    pub failures: u64,
    pub last_error: Option<String>,
    /// A scheduled table: how long until it is pending.
    pub due_in: Option<Duration>,
    /// Whether the table ever received a record.
    pub has_data: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PersistedTable {
    tiering_epoch: i64,
    last_tiered_ms: Option<i64>,
    failures: u64,
    #[serde(default)]
    consecutive_failures: u32,
    #[serde(default)]
    last_error: Option<String>,
    lake: Option<LakeSnapshot>,
    /// Whether a job held or was about to hold the table: it is re-queued after a restart.
    in_flight: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    coordinator_epoch: i32,
    tables: BTreeMap<i64, PersistedTable>,
}

struct TableTiering {
    path: TablePath,
    freshness: Duration,
    state: TieringState,
    /// When a `Scheduled` table becomes `Pending`.
    due: Option<Instant>,
    /// Last sign of life from the job holding a `Tiering` table.
    last_heartbeat: Option<Instant>,
    /// Whether the table ever received a record: a table that never did is not handed to jobs at all.
    has_data: bool,
    persisted: PersistedTable,
}

/// The coordinator's tiering manager.
pub struct Coordinator {
    file: PathBuf,
    heartbeat_timeout: Duration,
    failure_backoff: Duration,
    coordinator_epoch: i32,
    tables: BTreeMap<i64, TableTiering>,
    /// FIFO of pending tables; entries of tables that left `Pending` are skipped lazily.
    pending: VecDeque<i64>,
}

impl Coordinator {
    /// Loads the persisted state, starts a new coordinator epoch and registers the lake-enabled `tables`.
    pub fn open(
        file: PathBuf,
        heartbeat_timeout: Duration,
        failure_backoff: Duration,
        epochs: TieringEpochs,
        tables: &[TableInfo],
        now: Instant,
        now_ms: i64,
    ) -> Result<Self> {
        let mut persisted: Persisted = read_json(&file)?.unwrap_or_default();
        persisted.coordinator_epoch += 1;
        let mut coordinator = Coordinator {
            file,
            heartbeat_timeout,
            failure_backoff,
            coordinator_epoch: persisted.coordinator_epoch,
            tables: BTreeMap::new(),
            pending: VecDeque::new(),
        };
        for info in tables {
            let Some(freshness) = lake_freshness(info)? else {
                continue;
            };
            let mut saved = persisted.tables.remove(&info.table_id).unwrap_or_default();
            if epochs == TieringEpochs::PerStart {
                saved.tiering_epoch = 0;
            }
            let was_in_flight = saved.in_flight;
            let last_tiered_ms = saved.last_tiered_ms;
            coordinator.tables.insert(
                info.table_id,
                TableTiering {
                    path: info.path.clone(),
                    freshness,
                    state: TieringState::Initialized,
                    due: None,
                    last_heartbeat: None,
                    has_data: false,
                    persisted: saved,
                },
            );
            if was_in_flight {
                // A job may still think it holds the table: the new epoch fences it (invariant 3).
                coordinator.force(info.table_id, TieringState::Failed);
                coordinator.transition(info.table_id, TieringState::Pending, now)?;
            } else {
                let since_tiered = last_tiered_ms.map(|t| Duration::from_millis((now_ms - t).max(0) as u64));
                coordinator.schedule(info.table_id, now, since_tiered)?;
            }
        }
        // State of tables dropped while the coordinator was down is not carried over.
        coordinator.save()?;
        Ok(coordinator)
    }

    pub fn coordinator_epoch(&self) -> i32 {
        self.coordinator_epoch
    }

    /// Registers a new lake-enabled table: its first round starts after one freshness interval.
    pub fn add_table(&mut self, info: &TableInfo, now: Instant) -> Result<()> {
        let Some(freshness) = lake_freshness(info)? else {
            return Ok(());
        };
        self.tables.insert(
            info.table_id,
            TableTiering {
                path: info.path.clone(),
                freshness,
                state: TieringState::New,
                due: None,
                last_heartbeat: None,
                has_data: false,
                persisted: PersistedTable::default(),
            },
        );
        self.schedule(info.table_id, now, Some(Duration::ZERO))
    }

    /// Notes that a table received records (on produce, and at start for tables with data on disk).
    pub fn note_data(&mut self, table_id: i64) {
        if let Some(t) = self.tables.get_mut(&table_id) {
            t.has_data = true;
        }
    }

    /// Forgets a dropped table: its holder's next heartbeat or commit fails with `TableNotExist`.
    pub fn remove_table(&mut self, table_id: i64) -> Result<()> {
        if self.tables.remove(&table_id).is_some() {
            self.save()?;
        }
        Ok(())
    }

    /// Moves due tables to `Pending` and takes tables away from jobs that stopped heartbeating.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        let due: Vec<i64> = self
            .tables
            .iter()
            .filter(|(_, t)| t.state == TieringState::Scheduled && t.due.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let table = self.table_mut(id)?;
            if table.has_data {
                self.transition(id, TieringState::Pending, now)?;
            } else {
                // An empty table costs no job any work: look again after another freshness interval.
                table.due = Some(now + table.freshness);
            }
        }
        let timeout = self.heartbeat_timeout;
        let expired: Vec<i64> = self
            .tables
            .iter()
            .filter(|(_, t)| {
                t.state == TieringState::Tiering
                    && t.last_heartbeat.is_some_and(|h| now.saturating_duration_since(h) >= timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            tracing::warn!(table_id = id, "tiering job timed out; re-queueing the table under a new epoch");
            self.fail(id, now, Some("the tiering job stopped heartbeating".into()))?;
        }
        Ok(())
    }

    /// Handles one `LakeTieringHeartbeat`, in Fluss's order: failed, in progress, finished, then a new request.
    pub fn heartbeat(&mut self, hb: &Heartbeat, now: Instant, now_ms: i64) -> Result<HeartbeatOutcome> {
        self.tick(now)?;
        let mut out = HeartbeatOutcome { coordinator_epoch: self.coordinator_epoch, ..Default::default() };
        for (e, reason) in &hb.failed {
            let r = self.validate(e).map(|_| ()).and_then(|()| self.fail(e.table_id, now, reason.clone()));
            out.failed.push((e.table_id, r));
        }
        for e in &hb.tiering {
            let r = self.validate(e).map(|t| t.last_heartbeat = Some(now));
            out.tiering.push((e.table_id, r));
        }
        for e in &hb.finished {
            let force = hb.force_finished.contains(&e.table_id);
            let r = self.validate(e).map(|_| ()).and_then(|()| self.finish(e.table_id, force, now, now_ms));
            out.finished.push((e.table_id, r));
        }
        if hb.request_table {
            out.assignment = self.request_table(now)?;
        }
        Ok(out)
    }

    /// Records a lake snapshot committed by the holder of the table's current epoch; offsets merge over the
    /// previous snapshot's (new wins).
    pub fn commit_lake_snapshot(
        &mut self,
        entry: &HeartbeatEntry,
        snapshot_id: i64,
        buckets: &[LakeBucketOffset],
    ) -> Result<()> {
        self.validate(entry)?;
        let table = self.table_mut(entry.table_id)?;
        let mut merged: BTreeMap<(Option<i64>, i32), LakeBucketOffset> = table
            .persisted
            .lake
            .iter()
            .flat_map(|l| l.buckets.iter())
            .map(|b| ((b.partition_id, b.bucket), *b))
            .collect();
        for b in buckets {
            merged.insert((b.partition_id, b.bucket), *b);
        }
        table.persisted.lake = Some(LakeSnapshot { snapshot_id, buckets: merged.into_values().collect() });
        self.save()
    }

    /// The table's latest lake snapshot.
    pub fn lake_snapshot(&self, table_id: i64) -> Result<&LakeSnapshot> {
        let table = self.table(table_id)?;
        table.persisted.lake.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::LakeSnapshotNotExist, format!("table {} has no lake snapshot yet", table.path))
        })
    }

    pub fn status(&self, table_id: i64) -> Option<TieringStatus> {
        self.tables.get(&table_id).map(|t| TieringStatus {
            state: t.state,
            tiering_epoch: t.persisted.tiering_epoch,
            lake_snapshot_id: t.persisted.lake.as_ref().map(|l| l.snapshot_id),
            last_tiered_ms: t.persisted.last_tiered_ms,
            failures: t.persisted.failures,
            last_error: t.persisted.last_error.clone(),
            due_in: match t.state {
                TieringState::Scheduled => t.due.map(|d| d.saturating_duration_since(Instant::now())),
                _ => None,
            },
            has_data: t.has_data,
        })
    }

    /// Makes a scheduled table with data due now (an administrative request: `tier --now`, `schedule`); it becomes
    /// pending at the next tick. Any other table is left as it is: pending or tiering already, or without data
    /// (which would only push its next look further out).
    pub fn schedule_now(&mut self, table_id: i64, now: Instant) -> Result<()> {
        let table = self.table_mut(table_id)?;
        if table.state == TieringState::Scheduled && table.has_data {
            table.due = Some(now);
        }
        Ok(())
    }

    fn request_table(&mut self, now: Instant) -> Result<Option<TieringAssignment>> {
        while let Some(id) = self.pending.pop_front() {
            if self.tables.get(&id).is_some_and(|t| t.state == TieringState::Pending) {
                self.transition(id, TieringState::Tiering, now)?;
                let t = self.table(id)?;
                return Ok(Some(TieringAssignment {
                    table_id: id,
                    path: t.path.clone(),
                    tiering_epoch: t.persisted.tiering_epoch,
                }));
            }
        }
        Ok(None)
    }

    fn finish(&mut self, table_id: i64, force: bool, now: Instant, now_ms: i64) -> Result<()> {
        let table = self.table_mut(table_id)?;
        table.persisted.last_tiered_ms = Some(now_ms);
        table.persisted.consecutive_failures = 0;
        table.persisted.last_error = None;
        self.transition(table_id, TieringState::Tiered, now)?;
        if force {
            self.transition(table_id, TieringState::Pending, now)
        } else {
            self.schedule(table_id, now, Some(Duration::ZERO))
        }
    }

    /// A failed round: the table is retried after a backoff that doubles with each consecutive failure.
    fn fail(&mut self, table_id: i64, now: Instant, reason: Option<String>) -> Result<()> {
        let base = self.failure_backoff;
        let table = self.table_mut(table_id)?;
        table.persisted.failures += 1;
        table.persisted.consecutive_failures += 1;
        table.persisted.last_error = reason.or(Some("the round failed (no reason given)".into()));
        let doublings = table.persisted.consecutive_failures.saturating_sub(1).min(20);
        let backoff = base.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        self.transition(table_id, TieringState::Failed, now)?;
        self.transition(table_id, TieringState::Scheduled, now)?;
        self.table_mut(table_id)?.due = Some(now + backoff);
        Ok(())
    }

    /// Schedules the next round `freshness - since_tiered` from now (at once when never tiered after a restart).
    fn schedule(&mut self, table_id: i64, now: Instant, since_tiered: Option<Duration>) -> Result<()> {
        self.transition(table_id, TieringState::Scheduled, now)?;
        let table = self.table_mut(table_id)?;
        let wait = since_tiered.map(|s| table.freshness.saturating_sub(s)).unwrap_or(Duration::ZERO);
        table.due = Some(now + wait);
        Ok(())
    }

    /// The entry of the round that holds the table now. Fluss's CommitLakeTableSnapshot names no epoch: what can
    /// be checked is that a round holds the table at all.
    pub fn holder(&self, table_id: i64) -> Result<HeartbeatEntry> {
        let table = self.table(table_id)?;
        if table.state != TieringState::Tiering {
            return Err(Error::new(
                ErrorKind::FencedTieringEpoch,
                format!("table {} is {}: no tiering round holds it", table.path, table.state.name()),
            ));
        }
        Ok(HeartbeatEntry {
            table_id,
            coordinator_epoch: self.coordinator_epoch,
            tiering_epoch: table.persisted.tiering_epoch,
        })
    }

    fn validate(&mut self, e: &HeartbeatEntry) -> Result<&mut TableTiering> {
        if e.coordinator_epoch != self.coordinator_epoch {
            return Err(Error::new(
                ErrorKind::InvalidCoordinator,
                format!(
                    "coordinator epoch {} is stale; the current one is {}",
                    e.coordinator_epoch, self.coordinator_epoch
                ),
            ));
        }
        let table = self.table_mut(e.table_id)?;
        if table.persisted.tiering_epoch != e.tiering_epoch || table.state != TieringState::Tiering {
            return Err(Error::new(
                ErrorKind::FencedTieringEpoch,
                format!(
                    "tiering epoch {} of table {} is fenced: the table is {} under epoch {}",
                    e.tiering_epoch,
                    table.path,
                    table.state.name(),
                    table.persisted.tiering_epoch
                ),
            ));
        }
        Ok(table)
    }

    /// Applies a transition with its side effects; an invalid one is an internal error.
    fn transition(&mut self, table_id: i64, to: TieringState, now: Instant) -> Result<()> {
        let table = self.table_mut(table_id)?;
        if !to.valid_previous().contains(&table.state) {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("table {}: invalid tiering transition {} -> {}", table.path, table.state.name(), to.name()),
            ));
        }
        table.state = to;
        let mut persist = false;
        match to {
            TieringState::Pending => {
                table.persisted.tiering_epoch += 1;
                table.persisted.in_flight = true;
                table.due = None;
                self.pending.push_back(table_id);
                persist = true;
            }
            TieringState::Tiering => table.last_heartbeat = Some(now),
            TieringState::Tiered | TieringState::Failed => {
                table.last_heartbeat = None;
                table.persisted.in_flight = false;
                persist = true;
            }
            TieringState::New | TieringState::Initialized | TieringState::Scheduled => {}
        }
        if persist { self.save() } else { Ok(()) }
    }

    /// Sets a state without checks: only for rebuilding state at start.
    fn force(&mut self, table_id: i64, to: TieringState) {
        if let Some(t) = self.tables.get_mut(&table_id) {
            t.state = to;
        }
    }

    fn table(&self, table_id: i64) -> Result<&TableTiering> {
        self.tables.get(&table_id).ok_or_else(|| {
            Error::new(ErrorKind::TableNotExist, format!("table {table_id} does not exist or is not tiered"))
        })
    }

    fn table_mut(&mut self, table_id: i64) -> Result<&mut TableTiering> {
        self.tables.get_mut(&table_id).ok_or_else(|| {
            Error::new(ErrorKind::TableNotExist, format!("table {table_id} does not exist or is not tiered"))
        })
    }

    fn save(&self) -> Result<()> {
        let persisted = Persisted {
            coordinator_epoch: self.coordinator_epoch,
            tables: self.tables.iter().map(|(id, t)| (*id, t.persisted.clone())).collect(),
        };
        write_json(&self.file, &persisted)
    }
}

/// The freshness of a lake-enabled table, `None` when tiering is off for it.
fn lake_freshness(info: &TableInfo) -> Result<Option<Duration>> {
    if info.descriptor.datalake_enabled()? { info.descriptor.freshness().map(Some) } else { Ok(None) }
}
