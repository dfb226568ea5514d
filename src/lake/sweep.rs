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
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind, Result};

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub files: u64,
    pub bytes: u64,
}

/// [`old_candidates`] and [`delete_unreferenced`] off the async threads (file-system walks block).
pub async fn sweep_dir<F, R>(
    table: String,
    root: PathBuf,
    is_candidate: fn(&Path) -> bool,
    min_age: Duration,
    referenced: F,
) -> Result<Swept>
where
    F: FnOnce() -> R,
    R: std::future::Future<Output = Result<BTreeSet<String>>>,
{
    let listing = tokio::task::spawn_blocking(move || old_candidates(&root, is_candidate, min_age));
    let candidates =
        listing.await.map_err(|e| Error::new(ErrorKind::Internal, "the sweep's listing").with_source(e))??;
    if candidates.is_empty() {
        return Ok(Swept::default());
    }
    let referenced = referenced().await?;
    let deleting = tokio::task::spawn_blocking(move || delete_unreferenced(&table, candidates, &referenced));
    deleting.await.map_err(|e| Error::new(ErrorKind::Internal, "the sweep's deletes").with_source(e))
}

/// The files under `root` that `is_candidate` accepts (it sees the path relative to `root`) and that were last
/// modified more than `min_age` ago, with their sizes. List these first, then read what is referenced
/// (invariant 2).
pub fn old_candidates(
    root: &Path,
    is_candidate: impl Fn(&Path) -> bool,
    min_age: Duration,
) -> Result<Vec<(PathBuf, u64)>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e) => {
                return Err(Error::new(ErrorKind::Lake, format!("listing {}", dir.display())).with_source(e));
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let old = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > min_age);
            if old && is_candidate(path.strip_prefix(root).unwrap_or(&path)) {
                out.push((path, meta.len()));
            }
        }
    }
    Ok(out)
}

/// Deletes the candidates whose file name `referenced` lacks (lake file names are unique); a file that cannot be
/// deleted is logged and skipped (the next sweep tries again).
pub fn delete_unreferenced(table: &str, candidates: Vec<(PathBuf, u64)>, referenced: &BTreeSet<String>) -> Swept {
    let mut swept = Swept::default();
    for (path, bytes) in candidates {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if referenced.contains(&name) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                swept.files += 1;
                swept.bytes += bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(table, file = %path.display(), error = %e, "cannot delete an orphan file"),
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

    #[test]
    fn only_old_unreferenced_candidates_are_orphans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        for name in ["live.parquet", "orphan.parquet", "other.txt"] {
            std::fs::write(data.join(name), b"x").expect("write");
        }
        std::fs::write(dir.path().join("metadata.json"), b"x").expect("write");
        let referenced: BTreeSet<String> = ["live.parquet".to_string()].into();
        let candidate = |p: &Path| p.starts_with("data") && p.extension().is_some_and(|e| e == "parquet");
        let young = old_candidates(dir.path(), candidate, Duration::from_secs(3600)).expect("list");
        assert!(young.is_empty(), "young files are never candidates: {young:?}");
        std::thread::sleep(Duration::from_millis(20));
        let old = old_candidates(dir.path(), candidate, Duration::from_millis(5)).expect("list");
        assert_eq!(old.len(), 2, "the data files only: {old:?}");
        assert_eq!(delete_unreferenced("t", old, &referenced), Swept { files: 1, bytes: 1 });
        assert!(data.join("live.parquet").exists() && !data.join("orphan.parquet").exists());
    }
}
