//! Claims: the exclusive, leased right of one tiering round to commit on top of a tiering snapshot.
//!
//! Paimon's filesystem commit publishes on top of whatever snapshot is latest when it runs; it cannot be made
//! conditional on the snapshot a round was planned from. Two rounds planned from the same base (a job that lost its
//! table and the job that took it over) could then both commit, the second on top of the first, each with the same
//! rows. A claim closes that: before its commit, a round creates `TABLE/fluss-offsets/claims/BASE.GEN.json`
//! exclusively (the store's exclusive creation: an exclusive open on disk, a conditional put on S3), and commits only
//! while its claim is the newest one of that base and unexpired.
//!
//! Invariants:
//! 1. At most one round holds the claim on a base at any moment: a claim is taken by creating a name no one has.
//! 2. A claim can be taken over only after it expired (its holder died or stalled): the taker creates the next
//!    generation. The old holder checks its claim after its last pause point and before committing, so it gives way.
//! 3. Claims on bases below the newest tiering snapshot are garbage: nobody can commit from a stale base (the
//!    committer checks the base first), so they are removed after each commit.
//! 4. A claim file that is not a claim (its writer died, ran out of disk or timed out between creating the name and
//!    writing the bytes) fences the rounds that find it until it is older than the longest lease any job may take
//!    ([`MAX_LAKE_TIMEOUT`]), then is taken over like an expired claim: a writer that resumes and finishes it writes
//!    an expiry at most a lease after it created the file, so past, and its `check` fails. It blocks its base for
//!    that long, not until the sweep. (This compares the store's modification time with this host's clock, and
//!    trusts every writer to have capped its lease, as `tier` does.)
//!
//! What is left: a holder that stalls *between* its last check and Paimon's publication for longer than the lease
//! (the lease is the lake commit time-out, which also abandons the commit), and Paimon's own publication, which
//! checks for the snapshot file and then renames onto it (writes it, on S3): not atomic, so only claims keep two
//! tiering rounds apart, not writers other than ours. Wall-clock leases assume the hosts' clocks agree to well
//! within a lease.

use std::time::Duration;

use paimon::table::Table;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::lake::MAX_LAKE_TIMEOUT;
use crate::lake::store::Store;

/// What a claim file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    round_id: String,
    tiering_epoch: i64,
    /// Milliseconds since the epoch after which the claim may be taken over.
    expires_at_ms: i64,
}

/// The newest claim on a base, as found.
#[derive(Debug)]
enum Newest {
    Claimed(u64, Claim),
    /// A claim file whose bytes are not (yet) a claim: another round is creating it (on disk the name appears
    /// before its bytes), or its writer died or failed mid-write and left it torn. Either way someone else took
    /// that generation; the age of the file (if the store gives one) tells the two apart.
    Unreadable(u64, Option<Duration>),
}

/// A claim this round holds.
#[derive(Debug)]
pub struct Held {
    base: i64,
    generation: u64,
    round_id: String,
}

/// The claims of one lake table.
pub struct Claims<'a> {
    store: &'a Store,
    /// The URI of the claims directory.
    dir: String,
    /// How old a torn claim must be to be taken over (invariant 4).
    torn_after: Duration,
}

fn fenced(message: String) -> Error {
    Error::new(ErrorKind::FencedTieringEpoch, message)
}

impl<'a> Claims<'a> {
    /// The claims of `table`, in `store`.
    pub fn of(store: &'a Store, table: &Table) -> Self {
        let dir = format!("{}/claims", super::marker_dir(table));
        Claims { store, dir, torn_after: MAX_LAKE_TIMEOUT }
    }

    fn path(&self, base: i64, generation: u64) -> String {
        format!("{}/{base}.{generation}.json", self.dir)
    }

    /// The newest claim on `base`, with its generation.
    async fn newest(&self, base: i64) -> Result<Option<Newest>> {
        let prefix = format!("{base}.");
        let listed = self.store.list(&self.dir).await?;
        let newest = listed
            .iter()
            .filter_map(|f| Some((f.relative.strip_prefix(&prefix)?.strip_suffix(".json")?.parse::<u64>().ok()?, f)))
            .max_by_key(|(generation, _)| *generation);
        let Some((generation, file)) = newest else { return Ok(None) };
        let bytes = self.store.read(&self.path(base, generation)).await?.unwrap_or_default();
        Ok(Some(match serde_json::from_slice(&bytes) {
            Ok(claim) => Newest::Claimed(generation, claim),
            Err(_) => {
                let age = file.modified.and_then(|m| std::time::SystemTime::now().duration_since(m).ok());
                Newest::Unreadable(generation, age)
            }
        }))
    }

    /// Takes the claim on the successor of `base` (`None`: an empty lake) for `lease`, or says who holds it.
    pub async fn take(&self, base: Option<i64>, round_id: &str, tiering_epoch: i64, lease: Duration) -> Result<Held> {
        let base = base.unwrap_or(0);
        if lease > MAX_LAKE_TIMEOUT {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a claim lease of {lease:?} is over {MAX_LAKE_TIMEOUT:?}"),
            ));
        }
        let now = crate::model::now_ms();
        let generation = match self.newest(base).await? {
            Some(Newest::Claimed(generation, c)) if c.round_id == round_id => {
                return Ok(Held { base, generation, round_id: round_id.to_string() });
            }
            Some(Newest::Claimed(_, c)) if c.expires_at_ms > now => {
                return Err(fenced(format!(
                    "round {} (tiering epoch {}) holds the commit on top of lake snapshot {base} for {} ms more",
                    c.round_id,
                    c.tiering_epoch,
                    c.expires_at_ms - now
                )));
            }
            // Older than any lease: its writer's claim, were it to finish writing it now, has expired (invariant 4).
            Some(Newest::Unreadable(generation, Some(age))) if age > self.torn_after => {
                tracing::warn!(base, generation, "taking over a torn commit claim");
                generation + 1
            }
            Some(Newest::Unreadable(generation, _)) => {
                return Err(fenced(format!(
                    "another round is claiming the commit on top of lake snapshot {base} (claim generation \
                     {generation} is being written)"
                )));
            }
            Some(Newest::Claimed(generation, c)) => {
                tracing::warn!(base, holder = %c.round_id, "taking over an expired commit claim");
                generation + 1
            }
            None => 0,
        };
        let claim = Claim {
            round_id: round_id.to_string(),
            tiering_epoch,
            expires_at_ms: now.saturating_add(lease.as_millis() as i64),
        };
        let body = serde_json::to_vec(&claim).map_err(|e| Error::new(ErrorKind::Internal, "claim").with_source(e))?;
        if self.store.create_exclusive(&self.path(base, generation), body).await? {
            Ok(Held { base, generation, round_id: round_id.to_string() })
        } else {
            Err(fenced(format!("another round claimed the commit on top of lake snapshot {base} first")))
        }
    }

    /// Whether `held` is the newest claim on its base (expired or not).
    async fn is_newest(&self, held: &Held) -> Result<Option<Claim>> {
        Ok(match self.newest(held.base).await? {
            Some(Newest::Claimed(generation, c)) if generation == held.generation && c.round_id == held.round_id => {
                Some(c)
            }
            _ => None,
        })
    }

    /// Fails unless `held` is still the newest claim on its base and unexpired.
    pub async fn check(&self, held: &Held) -> Result<()> {
        match self.is_newest(held).await? {
            Some(c) if c.expires_at_ms > crate::model::now_ms() => Ok(()),
            _ => Err(fenced(format!(
                "round {}'s claim on lake snapshot {} expired or was taken over: not committing",
                held.round_id, held.base
            ))),
        }
    }

    /// Gives `held` up: its round did not land and never will (its files are deleted), so the next round from the same
    /// base need not wait for the lease to run out. Best effort: an expired claim is taken over anyway.
    pub async fn release(&self, held: &Held) {
        if matches!(self.is_newest(held).await, Ok(Some(_))) {
            let _ = self.store.delete(&self.path(held.base, held.generation)).await;
        }
    }

    /// Removes the claims on bases below `snapshot_id` (invariant 3); best effort.
    pub async fn clear_below(&self, snapshot_id: i64) {
        let Ok(listed) = self.store.list(&self.dir).await else { return };
        for f in listed {
            let base = f.relative.split('.').next().and_then(|b| b.parse::<i64>().ok());
            if base.is_some_and(|b| b < snapshot_id) {
                let _ = self.store.delete(&f.uri).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &std::path::Path) -> Store {
        Store::open(&dir.into()).await.expect("store")
    }

    fn claims(store: &Store) -> Claims<'_> {
        Claims { store, dir: store.uri("claims"), torn_after: MAX_LAKE_TIMEOUT }
    }

    #[tokio::test]
    async fn one_holder_per_base_until_the_lease_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let c = claims(&store);
        let a = c.take(Some(3), "a", 1, Duration::from_secs(60)).await.expect("a claims");
        let err = c.take(Some(3), "b", 2, Duration::from_secs(60)).await.expect_err("b is refused while a holds it");
        assert_eq!(err.kind(), ErrorKind::FencedTieringEpoch);
        c.check(&a).await.expect("a still holds it");
        // Another base is independent.
        c.take(Some(4), "b", 2, Duration::from_secs(60)).await.expect("b claims base 4");
        c.clear_below(4).await;
        assert!(c.newest(3).await.expect("list").is_none(), "claims below the newest snapshot are removed");
        assert!(c.newest(4).await.expect("list").is_some());
    }

    #[tokio::test]
    async fn an_expired_claim_is_taken_over_and_its_holder_gives_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let c = claims(&store);
        let a = c.take(None, "a", 1, Duration::ZERO).await.expect("a claims");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = c.take(None, "b", 2, Duration::from_secs(60)).await.expect("b takes the expired claim over");
        assert_eq!(c.check(&a).await.expect_err("a gives way").kind(), ErrorKind::FencedTieringEpoch);
        c.check(&b).await.expect("b holds it");
        assert_eq!(b.generation, a.generation + 1);
        c.release(&a).await;
        c.check(&b).await.expect("a stale holder's release does not touch the new holder's claim");
        c.release(&b).await;
        c.take(None, "c", 3, Duration::from_secs(60)).await.expect("a released claim is free at once");
    }

    #[tokio::test]
    async fn a_claim_being_written_fences_the_round_that_finds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let c = claims(&store);
        // The name exists, its bytes not yet.
        assert!(store.create_exclusive(&c.path(0, 0), Vec::new()).await.expect("create"));
        let err = c.take(None, "b", 2, Duration::from_secs(60)).await.expect_err("b gives way");
        assert_eq!(err.kind(), ErrorKind::FencedTieringEpoch, "{err}");
    }

    #[tokio::test]
    async fn a_torn_claim_older_than_the_lease_is_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let c = claims(&store);
        // A writer that died between creating the name and writing the bytes.
        assert!(store.create_exclusive(&c.path(5, 0), b"{\"round_id\":".to_vec()).await.expect("create"));
        let young = c.take(Some(5), "b", 2, Duration::from_millis(10)).await.expect_err("younger than any lease");
        assert_eq!(young.kind(), ErrorKind::FencedTieringEpoch, "{young}");
        // Older than the longest lease (shortened here), whatever lease the taker holds.
        let c = Claims { torn_after: Duration::from_millis(10), ..c };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let held = c.take(Some(5), "b", 2, Duration::from_secs(60)).await.expect("older than any lease: taken over");
        assert_eq!(held.generation, 1);
        c.check(&held).await.expect("b holds it");
    }
}
