//! The orphan-file sweep: deletes the files of a lake table that no snapshot references and that are old enough
//! that no round can still be writing or committing them. They are left by jobs killed mid-round, by rounds fenced
//! while frozen, and by rounds whose outcome stayed unknown and did not land.
//!
//! Invariants:
//! 1. Only files the format names as candidates are considered (data files, manifests, tiering bookkeeping), never
//!    table metadata, schemas or snapshots; a table with tags or branches (snapshots we do not read) is not swept.
//! 2. A file is deleted only if no live snapshot references its name and it is older than `min_age` (the orphan
//!    age). Candidates are listed before references are read, so a file committed in between is seen as referenced.
//! 3. No round commits files older than half the orphan age, and a commit is bounded by the lake time-out, at most
//!    half the orphan age (`dataflows::commit`, invariant 4; `tier` refuses other settings). So a file older than
//!    the orphan age is referenced by a round that landed, or belongs to one that never will. What is left: a commit
//!    frozen inside its publication for longer than the orphan age (the same window as Paimon's claim lease).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::lake::store::{Listed, Store};

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub files: u64,
    pub bytes: u64,
}

/// Sweeps the table whose directory is `root` (a URI in `store`): [`old_candidates`], then what `referenced` names
/// (read after the listing: invariant 2), then [`delete_unreferenced`].
pub async fn sweep_dir<F, R>(
    store: &Store,
    table: &str,
    root: &str,
    is_candidate: fn(&Path) -> bool,
    min_age: Duration,
    referenced: F,
) -> Result<Swept>
where
    F: FnOnce() -> R,
    R: std::future::Future<Output = Result<BTreeSet<String>>>,
{
    let candidates = old_candidates(store, root, is_candidate, min_age).await?;
    if candidates.is_empty() {
        return Ok(Swept::default());
    }
    let referenced = referenced().await?;
    Ok(delete_unreferenced(store, table, candidates, &referenced).await)
}

/// The files below `root` that `is_candidate` accepts (it sees the path relative to `root`) and that were last
/// modified more than `min_age` ago (a file whose store gives no time is never old). List these first, then read
/// what is referenced (invariant 2).
pub async fn old_candidates(
    store: &Store,
    root: &str,
    is_candidate: impl Fn(&Path) -> bool,
    min_age: Duration,
) -> Result<Vec<Listed>> {
    let now = SystemTime::now();
    let old = |f: &Listed| f.modified.and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > min_age);
    Ok(store.list(root).await?.into_iter().filter(|f| old(f) && is_candidate(Path::new(&f.relative))).collect())
}

/// Deletes the candidates whose file name `referenced` lacks (lake file names are unique); a file that cannot be
/// deleted is logged and skipped (the next sweep tries again).
pub async fn delete_unreferenced(
    store: &Store,
    table: &str,
    candidates: Vec<Listed>,
    referenced: &BTreeSet<String>,
) -> Swept {
    let mut swept = Swept::default();
    for file in candidates {
        if referenced.contains(&file_name(&file.uri)) {
            continue;
        }
        match store.delete(&file.uri).await {
            Ok(()) => {
                swept.files += 1;
                swept.bytes += file.size;
            }
            Err(e) => tracing::warn!(table, file = %file.uri, error = %e, "cannot delete an orphan file"),
        }
    }
    if swept.files > 0 {
        tracing::info!(table, files = swept.files, bytes = swept.bytes, "deleted orphan files");
    }
    swept
}

/// The file name of a path or URI.
pub fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_old_unreferenced_candidates_are_orphans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().into()).await.expect("store");
        for name in ["data/live.parquet", "data/orphan.parquet", "data/other.txt", "metadata.json"] {
            assert!(store.create_exclusive(&store.uri(name), b"x".to_vec()).await.expect("write"));
        }
        let referenced: BTreeSet<String> = ["live.parquet".to_string()].into();
        let candidate = |p: &Path| p.starts_with("data") && p.extension().is_some_and(|e| e == "parquet");
        let root = store.root().to_string();
        let young = old_candidates(&store, &root, candidate, Duration::from_secs(3600)).await.expect("list");
        assert!(young.is_empty(), "young files are never candidates: {young:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let old = old_candidates(&store, &root, candidate, Duration::from_millis(5)).await.expect("list");
        assert_eq!(old.len(), 2, "the data files only: {old:?}");
        assert_eq!(delete_unreferenced(&store, "t", old, &referenced).await, Swept { files: 1, bytes: 1 });
        let left: Vec<String> = store.list(&root).await.expect("list").into_iter().map(|f| f.relative).collect();
        assert!(left.contains(&"data/live.parquet".to_string()) && !left.contains(&"data/orphan.parquet".into()));
    }
}
