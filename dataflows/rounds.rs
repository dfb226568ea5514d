//! The rounds a job has in flight, shared by the enumerator (which opens, fences and closes them) and the committer
//! (which must be let into the lake commit). Both run on worker 0 of process 0.
//!
//! ```text
//!   open ──▶ Open ──begin_commit──▶ Committing ──close──▶ (gone)
//!              │                        ▲
//!              └──fence──▶ Fenced ──────┘ begin_commit refused; close when the outcome is back
//! ```
//!
//! Invariants:
//! 1. A table has at most one round in flight in a job: `open` refuses a second one.
//! 2. A round reaches its lake commit only through `begin_commit`, which refuses a fenced round. Once it began, a
//!    round cannot be fenced here any more (`fence` answers `TooLate`): its fate is the lake's conditional commit.
//! 3. A round leaves only by `close`, when the enumerator is done with it: its outcome is back, or its planning
//!    failed or found nothing to do.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Open,
    Committing,
    Fenced(String),
}

#[derive(Debug)]
struct Entry {
    round_id: String,
    stage: Stage,
}

/// What fencing a table's round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The round had not begun its lake commit: it never will.
    Fenced,
    /// The round is in its lake commit already.
    TooLate,
    /// No round of the table is in flight (or it was fenced before).
    NotInFlight,
}

/// The rounds in flight, by table id.
#[derive(Debug, Default)]
pub struct Rounds {
    by_table: Mutex<BTreeMap<i64, Entry>>,
}

impl Rounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Entry>> {
        self.by_table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new round of `table_id` (invariant 1).
    pub fn open(&self, table_id: i64, round_id: &str) -> Result<()> {
        let mut rounds = self.lock();
        if let Some(other) = rounds.get(&table_id) {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("table {table_id} already has round {} in flight; refusing round {round_id}", other.round_id),
            ));
        }
        rounds.insert(table_id, Entry { round_id: round_id.to_string(), stage: Stage::Open });
        Ok(())
    }

    /// Keeps the table's round out of the lake, if it is not committing yet (invariant 2).
    pub fn fence(&self, table_id: i64, reason: &str) -> Fence {
        let mut rounds = self.lock();
        let Some(entry) = rounds.get_mut(&table_id) else { return Fence::NotInFlight };
        match entry.stage {
            Stage::Open => {
                entry.stage = Stage::Fenced(reason.to_string());
                Fence::Fenced
            }
            Stage::Committing => Fence::TooLate,
            Stage::Fenced(_) => Fence::NotInFlight,
        }
    }

    /// Lets round `round_id` of `table_id` into its lake commit, unless it was fenced (invariant 2) or is not the
    /// table's round in flight (invariant 1).
    pub fn begin_commit(&self, table_id: i64, round_id: &str) -> Result<()> {
        let mut rounds = self.lock();
        match rounds.get_mut(&table_id) {
            Some(entry) if entry.round_id == round_id => match &entry.stage {
                Stage::Open => {
                    entry.stage = Stage::Committing;
                    Ok(())
                }
                Stage::Fenced(reason) => Err(Error::new(
                    ErrorKind::FencedTieringEpoch,
                    format!("round {round_id} was fenced before its lake commit: {reason}"),
                )),
                Stage::Committing => {
                    Err(Error::new(ErrorKind::Internal, format!("round {round_id} began its lake commit twice")))
                }
            },
            other => Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "round {round_id} of table {table_id} is not the round in flight ({:?}): refusing its commit",
                    other.map(|e| e.round_id.clone())
                ),
            )),
        }
    }

    /// Why round `round_id` was fenced, if it was: its readers can stop early, saying why.
    pub fn fenced(&self, table_id: i64, round_id: &str) -> Option<String> {
        match self.lock().get(&table_id) {
            Some(Entry { round_id: r, stage: Stage::Fenced(reason) }) if r == round_id => Some(reason.clone()),
            _ => None,
        }
    }

    /// The round's outcome is back: the table is free for its next round (invariant 3).
    pub fn close(&self, table_id: i64, round_id: &str) {
        let mut rounds = self.lock();
        if rounds.get(&table_id).is_some_and(|e| e.round_id == round_id) {
            rounds.remove(&table_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_round_per_table_and_fenced_rounds_never_commit() {
        let rounds = Rounds::default();
        rounds.open(1, "a").expect("open");
        assert_eq!(rounds.open(1, "b").expect_err("second round").kind(), ErrorKind::Internal);
        rounds.open(2, "c").expect("another table");
        assert_eq!(rounds.fence(1, "coordinator said so"), Fence::Fenced);
        assert_eq!(rounds.fenced(1, "a").as_deref(), Some("coordinator said so"));
        assert_eq!(rounds.begin_commit(1, "a").expect_err("fenced").kind(), ErrorKind::FencedTieringEpoch);
        assert_eq!(rounds.fence(1, "again"), Fence::NotInFlight);
        rounds.close(1, "a");
        rounds.open(1, "b").expect("free again after close");
    }

    #[test]
    fn a_committing_round_cannot_be_fenced_and_a_stranger_cannot_commit() {
        let rounds = Rounds::default();
        rounds.open(1, "a").expect("open");
        rounds.begin_commit(1, "a").expect("commit");
        assert_eq!(rounds.fence(1, "too late"), Fence::TooLate);
        assert_eq!(rounds.begin_commit(1, "a").expect_err("twice").kind(), ErrorKind::Internal);
        assert_eq!(rounds.begin_commit(1, "zzz").expect_err("not in flight").kind(), ErrorKind::Internal);
        assert_eq!(rounds.fence(9, "nothing"), Fence::NotInFlight);
    }
}
