//! Small JSON state files, replaced atomically: write a temporary file, fsync it, rename it over the old one, fsync
//! the directory. A crash leaves either the old or the new state, never a mix.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::log::sync_dir;
use crate::error::{Error, ErrorKind, Result};

/// Reads the state at `path`, or `None` when there is none yet.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::new(ErrorKind::Storage, format!("{} is not valid state", path.display())).with_source(e)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Durably replaces the state at `path` with `value`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::new(ErrorKind::Internal, "state file without a directory"))?;
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::new(ErrorKind::Internal, "serializing state").with_source(e))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    sync_dir(dir)
}
