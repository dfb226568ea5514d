//! Crash points for tests: with `FLUSS_TIERING_FAILPOINT=NAME`, the process exits with code [`EXIT_CODE`] the first
//! time it reaches the point called `NAME`, as if it had been killed there. Without the variable a point costs one
//! load of a cached value; points sit on per-split and per-round paths, never per row.

use std::sync::OnceLock;

/// The variable that arms a point.
pub const ENV: &str = "FLUSS_TIERING_FAILPOINT";
/// The exit code of a process stopped by a point.
pub const EXIT_CODE: i32 = 86;

/// Every point, in the order a round passes them.
pub const POINTS: [&str; 4] = ["mid-split", "before-lake-commit", "after-lake-commit", "after-cluster-commit"];

/// Exits the process if `name` is the armed point.
pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    if ARMED.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        eprintln!("failpoint {name} reached: exiting with code {EXIT_CODE}");
        std::process::exit(EXIT_CODE);
    }
}
