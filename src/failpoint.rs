//! Crash points for tests. `FLUSS_TIERING_FAILPOINT=NAME` makes the process exit with code [`EXIT_CODE`] the first
//! time it reaches the point called `NAME`, as if it had been killed there; `NAME:pause` stops the process instead
//! (SIGSTOP), as if it had hung there, until someone sends it SIGCONT; `NAME:error` makes the call at an error point
//! fail once (see [`injected_error`]). Without the variable a point costs one load of a cached value; points sit on
//! per-split and per-round paths, never per row.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The variable that arms a point.
pub const ENV: &str = "FLUSS_TIERING_FAILPOINT";
/// The exit code of a process stopped by a point.
pub const EXIT_CODE: i32 = 86;

/// Every point, in the order a round passes them.
pub const POINTS: [&str; 5] =
    ["mid-split", "before-epoch-check", "before-lake-commit", "after-lake-commit", "after-cluster-commit"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Exit,
    Pause,
    Error,
}

/// The armed point and what it does, from the environment.
fn armed() -> Option<&'static (String, Mode)> {
    static ARMED: OnceLock<Option<(String, Mode)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var(ENV).ok().map(|v| {
                if let Some(point) = v.strip_suffix(":pause") {
                    (point.to_string(), Mode::Pause)
                } else if let Some(point) = v.strip_suffix(":error") {
                    (point.to_string(), Mode::Error)
                } else {
                    (v, Mode::Exit)
                }
            })
        })
        .as_ref()
}

/// Whether the armed point has acted already (points act once).
static FIRED: AtomicBool = AtomicBool::new(false);

/// Acts if `name` is the armed point, the first time only: exits, or stops the process until it is continued.
pub fn hit(name: &str) {
    match armed() {
        Some((point, Mode::Exit)) if point == name => {
            eprintln!("failpoint {name} reached: exiting with code {EXIT_CODE}");
            std::process::exit(EXIT_CODE);
        }
        Some((point, Mode::Pause)) if point == name && !FIRED.swap(true, Ordering::Relaxed) => {
            eprintln!("failpoint {name} reached: pausing (SIGSTOP)");
            // SAFETY: raise only sends a signal to this process.
            unsafe { libc::raise(libc::SIGSTOP) };
            eprintln!("failpoint {name}: continued");
        }
        _ => {}
    }
}

/// Whether the call at error point `name` must fail, as armed by `NAME:error` (once): e.g. `lake-commit-reply`, a
/// lake commit that lands but whose reply is lost.
pub fn injected_error(name: &str) -> bool {
    matches!(armed(), Some((point, Mode::Error)) if point == name && !FIRED.swap(true, Ordering::Relaxed))
}

/// The variable that slows lake commits down: `db.table=MILLIS[,db.other=MILLIS…]`.
pub const SLOW_COMMIT_ENV: &str = "FLUSS_TIERING_SLOW_COMMIT";

/// Sleeps before the lake commit of `table` when `FLUSS_TIERING_SLOW_COMMIT` names it (a slow catalog, for tests).
pub async fn slow_commit(table: &str) {
    static DELAYS: OnceLock<Vec<(String, u64)>> = OnceLock::new();
    let delays = DELAYS.get_or_init(|| {
        std::env::var(SLOW_COMMIT_ENV)
            .map(|v| {
                v.split(',')
                    .filter_map(|item| item.split_once('='))
                    .filter_map(|(t, ms)| ms.trim().parse().ok().map(|ms| (t.trim().to_string(), ms)))
                    .collect()
            })
            .unwrap_or_default()
    });
    if let Some((_, ms)) = delays.iter().find(|(t, _)| t == table) {
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    }
}

/// The variable that slows every fetch of the tiering job down by that many milliseconds (a slow cluster).
pub const SLOW_FETCH_ENV: &str = "FLUSS_TIERING_SLOW_FETCH";

/// Sleeps before a fetch when `FLUSS_TIERING_SLOW_FETCH` is set.
pub async fn slow_fetch() {
    static DELAY: OnceLock<Option<u64>> = OnceLock::new();
    if let Some(ms) = DELAY.get_or_init(|| std::env::var(SLOW_FETCH_ENV).ok().and_then(|v| v.parse().ok())) {
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    }
}
