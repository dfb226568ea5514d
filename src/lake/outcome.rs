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
//!    built. Guarding the publication itself is the format's part, as far as its lake allows: Iceberg's is
//!    conditional on the table being as loaded (a fenced catalog over the catalog's compare-and-swap); Paimon's
//!    filesystem commit publishes on whatever is latest, so a round publishes only while it holds its claim on the
//!    base (`paimon/claim.rs` says what that leaves open).

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
fn settle(table: &str, call: CommitCall, call_error: Option<Error>, lookup: Result<Option<i64>>) -> Result<i64> {
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
fn check_base(latest: Option<&TieredSnapshot>, base: Option<i64>) -> Result<()> {
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
    /// Publishes the commit (found afterwards by `key`), guarded as the format can (invariant 4); an error means
    /// nothing was sent.
    async fn publish(&self, table: &Self::Table, payload: Self::Payload, key: &Self::Key) -> Result<Published>;
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
pub async fn drive<S: CommitSteps>(
    steps: &S,
    table_path: &str,
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
    let published = match steps.publish(&table, payload, &key).await? {
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
    settle(table_path, call, call_error, lookup)
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

    /// A scripted format: its newest snapshot, what its publication answers, and what a reload finds.
    struct Script {
        latest: Option<i64>,
        published: std::sync::Mutex<Option<Result<Published>>>,
        /// What a reload of the table finds (an error: the reload fails).
        reload: Result<Option<i64>>,
        steps: std::sync::Mutex<Vec<&'static str>>,
    }

    fn lake_error(what: &str) -> Error {
        Error::new(ErrorKind::Lake, what.to_string())
    }

    impl Script {
        fn new(latest: Option<i64>, published: Result<Published>, reload: Result<Option<i64>>) -> Self {
            let published = std::sync::Mutex::new(Some(published));
            Script { latest, published, reload, steps: Default::default() }
        }

        fn step(&self, name: &'static str) {
            self.steps.lock().expect("lock").push(name);
        }

        fn steps(&self) -> Vec<&'static str> {
            self.steps.lock().expect("lock").clone()
        }
    }

    fn marker() -> CommitMarker {
        CommitMarker {
            round_id: "round".into(),
            table_id: 1,
            tiering_epoch: 1,
            offsets: vec![],
            offsets_file: Some("/offsets".into()),
        }
    }

    #[async_trait]
    impl CommitSteps for Script {
        type Table = bool;
        type Payload = ();
        type Key = ();

        async fn load(&self) -> Result<bool> {
            self.step("load");
            match &self.reload {
                Err(e) => Err(lake_error(&e.to_string())),
                Ok(_) => Ok(true),
            }
        }

        async fn latest(&self, _: &bool) -> Result<Option<TieredSnapshot>> {
            self.step("latest");
            Ok(self.latest.map(|snapshot_id| TieredSnapshot { snapshot_id, committed_at_ms: 0, marker: marker() }))
        }

        async fn prepare(&self, _: &bool, _: Vec<WrittenData>, _: &CommitMarker) -> Result<((), ())> {
            self.step("prepare");
            Ok(((), ()))
        }

        async fn publish(&self, _: &bool, _: (), _: &()) -> Result<Published> {
            self.step("publish");
            self.published.lock().expect("lock").take().expect("published once")
        }

        async fn find(&self, _: &bool, _: &(), _: &CommitMarker, _: Option<i64>) -> Result<Option<i64>> {
            self.step("find");
            match &self.reload {
                Ok(found) => Ok(*found),
                Err(e) => Err(lake_error(&e.to_string())),
            }
        }
    }

    fn run(script: &Script, base: Option<i64>) -> Result<i64> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(drive(script, "db.t", false, vec![], &marker(), base))
    }

    /// The sequence, in order, and what each answer of the lake makes of the round.
    #[test]
    fn the_driver_asks_in_order_and_the_lake_decides() {
        // A publication that names its snapshot is final: no reload.
        let s = Script::new(Some(4), Ok(Published::Landed(5)), Ok(None));
        assert_eq!(run(&s, Some(4)).expect("landed"), 5);
        assert_eq!(s.steps(), ["latest", "prepare", "publish"]);
        // A moved base: nothing is prepared or published, and the files may go.
        let s = Script::new(Some(6), Ok(Published::Landed(7)), Ok(None));
        assert_eq!(run(&s, Some(4)).expect_err("moved").kind(), ErrorKind::FencedTieringEpoch);
        assert_eq!(s.steps(), ["latest"]);
        // A failed call whose round the reload finds landed.
        let s = Script::new(None, Ok(Published::Failed(lake_error("lost reply"))), Ok(Some(1)));
        assert_eq!(run(&s, None).expect("landed"), 1);
        assert_eq!(s.steps(), ["latest", "prepare", "publish", "load", "find"]);
        // Went through, but the lake does not hold the round: someone else was first.
        let s = Script::new(None, Ok(Published::WentThrough), Ok(None));
        assert_eq!(run(&s, None).expect_err("filtered").kind(), ErrorKind::FencedTieringEpoch);
        // Failed and absent: not committed (the files may go); failed and unreadable: unknown (keep them).
        let s = Script::new(None, Ok(Published::Failed(lake_error("down"))), Ok(None));
        assert_eq!(run(&s, None).expect_err("absent").kind(), ErrorKind::Lake);
        let s = Script::new(None, Ok(Published::Failed(lake_error("down"))), Err(lake_error("down")));
        assert_eq!(run(&s, None).expect_err("unreadable").kind(), ErrorKind::CommitOutcomeUnknown);
        assert_eq!(s.steps(), ["latest", "prepare", "publish", "load"]);
        // Refused and absent: fenced.
        let s = Script::new(None, Ok(Published::Refused(lake_error("moved"))), Ok(None));
        assert_eq!(run(&s, None).expect_err("refused").kind(), ErrorKind::FencedTieringEpoch);
        // A publication that could not be sent is its own error, unchanged, with no look-up.
        let s = Script::new(None, Err(Error::new(ErrorKind::FencedTieringEpoch, "claim lost")), Ok(None));
        assert_eq!(run(&s, None).expect_err("not sent").to_string(), "claim lost");
        assert_eq!(s.steps(), ["latest", "prepare", "publish"]);
    }
}
