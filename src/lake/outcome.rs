//! A lake commit, driven in one place for every format, and what it did, decided in one place.
//!
//! [`drive`] runs the one sequence that keeps a round exactly once: check that the table's newest tiering snapshot
//! is still the round's base, build the commit, publish it on condition, and, unless the call named the round's
//! snapshot, reload the lake and look for the round. A format answers the questions ([`CommitSteps`]: its newest
//! tiering snapshot, a conditional commit, a look-up by round) and never decides.
//!
//! A commit call can answer three ways (it went through, the lake refused it, or it failed without saying whether
//! it landed), and the lake can then be asked whether the round's snapshot is there, by walking the ancestry from the
//! current snapshot back to the snapshot the round was planned from. [`decide`] combines the two:
//!
//! | commit \ look-up | found (snapshot `s`) | absent          | unreadable    |
//! |------------------|----------------------|-----------------|---------------|
//! | went through     | landed `s`           | fenced          | unknown       |
//! | refused          | landed `s`           | fenced          | unknown       |
//! | failed           | landed `s`           | not committed   | unknown       |
//!
//! Invariants:
//! 1. The lake is the source of truth: whenever the look-up finds the round, it landed, whatever the call said.
//! 2. A round's files are deleted only on `Fenced` or `NotCommitted`, i.e. only when a readable lake, walked back to
//!    the round's base, does not hold the round. Never on `Unknown`: a refusal alone is not proof, since a library
//!    that retried may have landed an earlier attempt.
//! 3. "Went through" without the round in the lake means the lake filtered the commit (Paimon drops an identifier
//!    at or below one already committed): someone else committed first.
//! 4. Nothing is published unless the table's newest tiering snapshot was still the round's base when the commit was
//!    built; the publication itself is conditional on the table being as loaded (the format's part).

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint;
use crate::lake::{CommitMarker, TieredSnapshot, WrittenData};

/// What the commit call answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitCall {
    /// The call returned success.
    WentThrough,
    /// The lake refused the commit (a conflict, a failed condition): nothing of it was applied.
    Refused,
    /// The call failed in a way that does not say whether it was applied (a lost reply, a time-out).
    Failed,
}

/// What walking the lake's ancestry back to the round's base found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A snapshot carrying the round's marker.
    Found(i64),
    /// No snapshot between the current one and the base carries the round's marker.
    Absent,
    /// The lake could not be read.
    Unreadable,
}

/// The round's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The round's snapshot is in the lake.
    Landed(i64),
    /// Someone else committed first, or the lake refused: nothing of this round is in the lake.
    Fenced,
    /// The commit failed and the lake does not hold the round: its files can go.
    NotCommitted,
    /// Nobody can tell yet: the files must be kept, the next round (planned from the lake) will know.
    Unknown,
}

/// Combines a commit call's answer with what the lake holds (see the module's table).
pub fn decide(call: CommitCall, lookup: Lookup) -> Decision {
    match (call, lookup) {
        (_, Lookup::Found(snapshot_id)) => Decision::Landed(snapshot_id),
        (CommitCall::WentThrough, Lookup::Absent) => Decision::Fenced,
        (CommitCall::WentThrough, Lookup::Unreadable) => Decision::Unknown,
        (CommitCall::Refused, Lookup::Absent) => Decision::Fenced,
        (CommitCall::Refused, Lookup::Unreadable) => Decision::Unknown,
        (CommitCall::Failed, Lookup::Absent) => Decision::NotCommitted,
        (CommitCall::Failed, Lookup::Unreadable) => Decision::Unknown,
    }
}

/// The decision as the committer's result: the snapshot id when the round landed, otherwise an error whose kind
/// says what to do with the files (`FencedTieringEpoch` or `Lake`: delete them; `CommitOutcomeUnknown`: keep them).
/// `call_error` is what the commit call reported, `lookup` the walk of the lake back to the base.
pub fn settle(table: &str, call: CommitCall, call_error: Option<Error>, lookup: Result<Option<i64>>) -> Result<i64> {
    let (found, lookup_error) = match lookup {
        Ok(Some(id)) => (Lookup::Found(id), None),
        Ok(None) => (Lookup::Absent, None),
        Err(e) => (Lookup::Unreadable, Some(e)),
    };
    let cause = |e: Option<Error>| e.map(|e| format!(": {e}")).unwrap_or_default();
    match decide(call, found) {
        Decision::Landed(id) => {
            if let Some(e) = call_error {
                tracing::warn!(table, error = %e, snapshot = id, "the commit reported an error but landed");
            }
            Ok(id)
        }
        Decision::Fenced => Err(Error::new(
            ErrorKind::FencedTieringEpoch,
            format!(
                "another commit reached lake table {table} first; this round's was not applied{}",
                cause(call_error)
            ),
        )),
        Decision::NotCommitted => Err(Error::new(
            ErrorKind::Lake,
            format!("the commit to lake table {table} failed and the lake does not hold it{}", cause(call_error)),
        )),
        Decision::Unknown => Err(Error::new(
            ErrorKind::CommitOutcomeUnknown,
            format!(
                "the commit to lake table {table} ended with {:?} and the lake cannot be read to tell whether it landed{}",
                call_error.map(|e| e.to_string()),
                cause(lookup_error)
            ),
        )),
    }
}

/// Fails unless the lake's latest tiering snapshot is still the round's `base`: otherwise another writer (a zombie
/// job, a job that took the table over) committed since the round was planned, and committing on top would
/// duplicate its rows. Nothing is committed, so the round's files can go.
pub fn check_base(latest: Option<&TieredSnapshot>, base: Option<i64>) -> Result<()> {
    if latest.map(|l| l.snapshot_id) == base {
        return Ok(());
    }
    let moved_to = latest.map(|l| format!("{} ({})", l.snapshot_id, l.marker.round_id));
    Err(Error::new(
        ErrorKind::FencedTieringEpoch,
        format!("the lake table moved from snapshot {base:?} to {moved_to:?} since the round was planned"),
    ))
}

/// What a publication answered, when it was sent.
pub enum Published {
    /// It went through, and says which snapshot is the round's.
    Landed(i64),
    /// It went through without naming a snapshot (Paimon filters a stale identifier and still answers success).
    WentThrough,
    /// The lake refused it: nothing of it was applied.
    Refused(Error),
    /// It failed without saying whether it was applied.
    Failed(Error),
}

/// A format's answers to the questions of a commit; [`drive`] asks them in order.
#[async_trait]
pub trait CommitSteps: Send + Sync {
    /// The lake table as one load of it has it.
    type Table: Send + Sync;
    /// A commit built and ready to publish.
    type Payload: Send;
    /// What finds the round in the lake afterwards, besides its marker.
    type Key: Send + Sync;
    /// The lake table as the catalog has it now.
    async fn load(&self) -> Result<Self::Table>;
    /// The table's newest tiering snapshot.
    async fn latest(&self, table: &Self::Table) -> Result<Option<TieredSnapshot>>;
    /// Builds the commit of `written` carrying `marker`: nothing of it is visible yet.
    async fn prepare(
        &self,
        table: &Self::Table,
        written: Vec<WrittenData>,
        marker: &CommitMarker,
    ) -> Result<(Self::Payload, Self::Key)>;
    /// Publishes the commit, on condition that the table is still as `table` has it; an error means nothing was sent.
    async fn publish(&self, table: &Self::Table, payload: Self::Payload) -> Result<Published>;
    /// The round's snapshot, looked for above `base` (where a round planned from `base` lands).
    async fn find(
        &self,
        table: &Self::Table,
        key: &Self::Key,
        marker: &CommitMarker,
        base: Option<i64>,
    ) -> Result<Option<i64>>;
}

/// Commits a round planned from `base` into `table` (loaded by the caller) and says what became of it: the snapshot
/// id when it landed, otherwise an error whose kind says what to do with the files (see [`settle`]).
pub async fn drive<S: CommitSteps + ?Sized>(
    steps: &S,
    name: &str,
    table: S::Table,
    written: Vec<WrittenData>,
    marker: &CommitMarker,
    base: Option<i64>,
) -> Result<i64> {
    check_base(steps.latest(&table).await?.as_ref(), base)?;
    // Fluss's contract: a snapshot names the offsets file the cluster prepared.
    marker.prepared_file()?;
    let (payload, key) = steps.prepare(&table, written, marker).await?;
    failpoint::hit("before-lake-commit");
    let published = match steps.publish(&table, payload).await? {
        Published::Landed(_) | Published::WentThrough if failpoint::injected_error("lake-commit-reply") => {
            Published::Failed(Error::new(ErrorKind::Lake, "injected: the commit landed but its reply was lost"))
        }
        published => published,
    };
    let (call, call_error) = match published {
        Published::Landed(snapshot_id) => return Ok(snapshot_id),
        Published::WentThrough => (CommitCall::WentThrough, None),
        Published::Refused(e) => (CommitCall::Refused, Some(e)),
        Published::Failed(e) => (CommitCall::Failed, Some(e)),
    };
    let lookup = match steps.load().await {
        Ok(reloaded) => steps.find(&reloaded, &key, marker, base).await,
        Err(e) => Err(e),
    };
    settle(name, call, call_error, lookup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_of_the_table() {
        use CommitCall::*;
        use Decision::*;
        use Lookup::*;
        let table = [
            (WentThrough, Found(7), Landed(7)),
            (WentThrough, Absent, Fenced),
            (WentThrough, Unreadable, Unknown),
            (Refused, Found(7), Landed(7)),
            (Refused, Absent, Fenced),
            (Refused, Unreadable, Unknown),
            (Failed, Found(7), Landed(7)),
            (Failed, Absent, NotCommitted),
            (Failed, Unreadable, Unknown),
        ];
        for (call, lookup, expected) in table {
            assert_eq!(decide(call, lookup), expected, "{call:?} x {lookup:?}");
        }
    }

    /// Invariant 2, stated over every case: files go only when a readable lake lacks the round.
    #[test]
    fn files_are_deleted_only_when_the_lake_says_so() {
        for call in [CommitCall::WentThrough, CommitCall::Refused, CommitCall::Failed] {
            for lookup in [Lookup::Found(1), Lookup::Absent, Lookup::Unreadable] {
                let deletes = matches!(decide(call, lookup), Decision::Fenced | Decision::NotCommitted);
                let lake_says_absent = lookup == Lookup::Absent;
                assert_eq!(deletes, lake_says_absent, "{call:?} x {lookup:?}");
            }
        }
    }
}
