//! Claims: the exclusive, leased right of one tiering round to commit on top of a tiering snapshot.
//!
//! Paimon's filesystem commit publishes on top of whatever snapshot is latest when it runs; it cannot be made
//! conditional on the snapshot a round was planned from. Two rounds planned from the same base (a job that lost its
//! table and the job that took it over) could then both commit, the second on top of the first, each with the same
//! rows. A claim closes that: before its commit, a round creates `TABLE/fluss-offsets/claims/BASE.GEN.json`
//! exclusively (a hard link, which fails if the name exists), and commits only while its claim is the newest one of
//! that base and unexpired.
//!
//! Invariants:
//! 1. At most one round holds the claim on a base at any moment: a claim is taken by creating a name no one has.
//! 2. A claim can be taken over only after it expired (its holder died or stalled): the taker creates the next
//!    generation. The old holder checks its claim after its last pause point and before committing, so it gives way.
//! 3. Claims on bases below the newest tiering snapshot are garbage: nobody can commit from a stale base (the
//!    committer checks the base first), so they are removed after each commit.
//!
//! What is left: a holder that stalls *between* its last check and Paimon's publication for longer than the lease
//! (the lease is the lake commit time-out, which also abandons the commit), and Paimon's own publication, which checks for the snapshot file
//! and then renames onto it (not atomic). Wall-clock leases assume the hosts' clocks agree to well within a lease.

use std::path::{Path, PathBuf};
use std::time::Duration;

use paimon::table::Table;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// What a claim file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    round_id: String,
    tiering_epoch: i64,
    /// Milliseconds since the epoch after which the claim may be taken over.
    expires_at_ms: i64,
}

/// A claim this round holds.
#[derive(Debug)]
pub struct Held {
    base: i64,
    generation: u64,
    round_id: String,
}

/// The claims of one lake table.
pub struct Claims {
    dir: PathBuf,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::new(ErrorKind::Lake, context).with_source(e)
}

fn fenced(message: String) -> Error {
    Error::new(ErrorKind::FencedTieringEpoch, message)
}

impl Claims {
    /// The claims directory of `table`: a local warehouse only (claims are hard links).
    pub fn of(table: &Table) -> Result<Self> {
        let dir = crate::lake::local_dir(table.location()).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("lake table at {}: commit claims need a local warehouse", table.location()),
            )
        })?;
        Ok(Claims { dir: dir.join(super::MARKER_DIR).join("claims") })
    }

    fn path(&self, base: i64, generation: u64) -> PathBuf {
        self.dir.join(format!("{base}.{generation}.json"))
    }

    /// The newest claim on `base`, with its generation.
    fn newest(&self, base: i64) -> Result<Option<(u64, Claim)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("listing {}", self.dir.display()))(e)),
        };
        let prefix = format!("{base}.");
        let newest = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)?.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max();
        let Some(generation) = newest else { return Ok(None) };
        let path = self.path(base, generation);
        let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        let claim = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(ErrorKind::Lake, format!("claim {} is malformed", path.display())).with_source(e)
        })?;
        Ok(Some((generation, claim)))
    }

    /// Takes the claim on the successor of `base` (`None`: an empty lake) for `lease`, or says who holds it.
    pub fn take(&self, base: Option<i64>, round_id: &str, tiering_epoch: i64, lease: Duration) -> Result<Held> {
        let base = base.unwrap_or(0);
        let now = crate::model::now_ms();
        let generation = match self.newest(base)? {
            Some((generation, c)) if c.round_id == round_id => {
                return Ok(Held { base, generation, round_id: round_id.to_string() });
            }
            Some((_, c)) if c.expires_at_ms > now => {
                return Err(fenced(format!(
                    "round {} (tiering epoch {}) holds the commit on top of lake snapshot {base} for {} ms more",
                    c.round_id,
                    c.tiering_epoch,
                    c.expires_at_ms - now
                )));
            }
            Some((generation, c)) => {
                tracing::warn!(base, holder = %c.round_id, "taking over an expired commit claim");
                generation + 1
            }
            None => 0,
        };
        std::fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        let claim = Claim {
            round_id: round_id.to_string(),
            tiering_epoch,
            expires_at_ms: now.saturating_add(lease.as_millis() as i64),
        };
        let body = serde_json::to_vec(&claim).map_err(|e| Error::new(ErrorKind::Internal, "claim").with_source(e))?;
        let target = self.path(base, generation);
        match create_exclusive(&target, &body) {
            Ok(()) => Ok(Held { base, generation, round_id: round_id.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(fenced(format!("another round claimed the commit on top of lake snapshot {base} first")))
            }
            Err(e) => Err(io(format!("creating {}", target.display()))(e)),
        }
    }

    /// Fails unless `held` is still the newest claim on its base and unexpired.
    pub fn check(&self, held: &Held) -> Result<()> {
        match self.newest(held.base)? {
            Some((generation, c))
                if generation == held.generation
                    && c.round_id == held.round_id
                    && c.expires_at_ms > crate::model::now_ms() =>
            {
                Ok(())
            }
            other => Err(fenced(format!(
                "round {}'s claim on lake snapshot {} expired or was taken over ({:?}): not committing",
                held.round_id,
                held.base,
                other.map(|(_, c)| c.round_id)
            ))),
        }
    }

    /// Gives `held` up: its round did not land and never will (its files are deleted), so the next round from the same
    /// base need not wait for the lease to run out. Best effort: an expired claim is taken over anyway.
    pub fn release(&self, held: &Held) {
        if matches!(self.newest(held.base), Ok(Some((generation, c))) if generation == held.generation && c.round_id == held.round_id)
        {
            let _ = std::fs::remove_file(self.path(held.base, held.generation));
        }
    }

    /// Removes the claims on bases below `snapshot_id` (invariant 3); best effort.
    pub fn clear_below(&self, snapshot_id: i64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.split('.').next().and_then(|b| b.parse::<i64>().ok());
            if base.is_some_and(|b| b < snapshot_id) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Creates `target` with `body`, durably, unless the name exists (then `AlreadyExists`): the file is written under a
/// name of its own and hard-linked, which no one else's link can replace.
pub fn create_exclusive(target: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let linked = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, target)?;
        // The new name itself is durable once its directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(dir: &std::path::Path) -> Claims {
        Claims { dir: dir.join("claims") }
    }

    #[test]
    fn one_holder_per_base_until_the_lease_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = claims(dir.path());
        let a = c.take(Some(3), "a", 1, Duration::from_secs(60)).expect("a claims");
        let err = c.take(Some(3), "b", 2, Duration::from_secs(60)).expect_err("b is refused while a holds it");
        assert_eq!(err.kind(), ErrorKind::FencedTieringEpoch);
        c.check(&a).expect("a still holds it");
        // Another base is independent.
        c.take(Some(4), "b", 2, Duration::from_secs(60)).expect("b claims base 4");
        c.clear_below(4);
        assert!(c.newest(3).expect("list").is_none(), "claims below the newest snapshot are removed");
        assert!(c.newest(4).expect("list").is_some());
    }

    #[test]
    fn an_expired_claim_is_taken_over_and_its_holder_gives_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = claims(dir.path());
        let a = c.take(None, "a", 1, Duration::ZERO).expect("a claims");
        std::thread::sleep(Duration::from_millis(5));
        let b = c.take(None, "b", 2, Duration::from_secs(60)).expect("b takes the expired claim over");
        assert_eq!(c.check(&a).expect_err("a gives way").kind(), ErrorKind::FencedTieringEpoch);
        c.check(&b).expect("b holds it");
        assert_eq!(b.generation, a.generation + 1);
        c.release(&a);
        c.check(&b).expect("a stale holder's release does not touch the new holder's claim");
        c.release(&b);
        c.take(None, "c", 3, Duration::from_secs(60)).expect("a released claim is free at once");
    }
}
