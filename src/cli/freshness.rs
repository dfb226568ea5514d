//! `bench --freshness-for`: how long a row takes from its append to the cluster until it is visible in the lake,
//! while a producer runs at a fixed rate and a tiering job runs continuously.
//!
//! Both ends come from durable records, not from the job's own view: the append time is the one the cluster stored
//! with each batch, the visible time is the commit time of the first lake snapshot whose tiered offsets cover the
//! row. Lags are weighted by rows.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::lake::{self, LakeOptions, TableBucket, TableContext};
use crate::model::table::{DATALAKE_FRESHNESS, TableDescriptor, TablePath, parse_duration};
use crate::model::tiering::{LogReader, TieringCluster};
use crate::rpc::ClusterClient;
use crate::workload::{KvMix, ProduceOptions, Workload, produce};

use super::tier::{print_summary, run_job_with};
use super::{TierArgs, TimelyArgs, TuningArgs};

/// What to run.
pub struct Experiment {
    pub cluster: String,
    pub warehouse: PathBuf,
    pub workers: usize,
    pub format: String,
    /// How long the producer runs.
    pub duration: Duration,
    /// Rows per second per table.
    pub rate: f64,
    pub workload: Workload,
}

/// The freshness of one table: one JSON document of `bench --json`.
#[derive(Debug, Serialize)]
pub struct TableFreshness {
    kind: &'static str,
    pub table: String,
    freshness_target_seconds: f64,
    rate_rows_per_second: f64,
    rows: u64,
    /// Rows appended but in no lake snapshot when the job stopped (should be 0).
    rows_not_visible: u64,
    lake_snapshots: usize,
    p50_seconds: f64,
    p99_seconds: f64,
    max_seconds: f64,
    /// `(seconds since the first append, lag)`: the lake's lag behind the cluster over time, where the lag at `t` is
    /// `t` minus the append time of the oldest row not yet visible (0 when the lake holds everything): it grows
    /// between commits and drops at each one (a sawtooth).
    pub lag_over_time: Vec<(f64, f64)>,
}

/// How long the job may take to catch up once the producer stops.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Runs the experiment on `tables` (created, empty) and reports each one's freshness.
pub fn measure(
    runtime: &tokio::runtime::Runtime,
    client: &ClusterClient,
    tables: &[(i64, TablePath, TableDescriptor)],
    e: &Experiment,
) -> anyhow::Result<Vec<TableFreshness>> {
    if e.rate.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        anyhow::bail!("--rate must be a positive number of rows per second");
    }
    let job = TierArgs {
        cluster: e.cluster.clone(),
        warehouse: e.warehouse.display().to_string(),
        s3: Default::default(),
        catalog: None,
        format: e.format.clone(),
        metrics_addr: None,
        once: false,
        now: false,
        config: None,
        report_json: None,
        timely: TimelyArgs { workers: e.workers, processes: 1, process: 0, hostfile: None },
        tuning: TuningArgs { poll_interval: "200ms".into(), ..TuningArgs::default() },
        help: None,
    };
    let rows = (e.rate * e.duration.as_secs_f64()).ceil() as u64;
    println!(
        "producing {rows} rows into each of {} tables at {} rows/s for {:.0}s while tiering with {} worker(s)",
        tables.len(),
        e.rate,
        e.duration.as_secs_f64(),
        e.workers
    );
    let producer_error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let started = Instant::now();
    let ctx = run_job_with(&job, |ctx| {
        let (ctx, client, tables, handle) =
            (Arc::clone(ctx), client.clone(), tables.to_vec(), runtime.handle().clone());
        let (workload, rate, error) = (e.workload.clone(), e.rate, Arc::clone(&producer_error));
        std::thread::spawn(move || {
            let result = handle.block_on(async {
                // About 20 appends a second per table, each a batch per bucket.
                let batch = ((rate / 20.0).ceil() as u64).max(1);
                let opts = ProduceOptions {
                    start_row: 0,
                    rows,
                    batch,
                    rate: Some(rate),
                    concurrency: 4,
                    kv: KvMix::default(),
                };
                let producers =
                    tables.iter().map(|(id, _, descriptor)| produce(&client, *id, descriptor, &workload, &opts));
                futures::future::try_join_all(producers).await?;
                wait_caught_up(&client, &tables).await
            });
            if let Err(err) = result {
                *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            }
            ctx.request_shutdown();
        });
    })?;
    print_summary(&ctx.metrics.report(), started.elapsed());
    if let Some(err) = producer_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(err.context("the freshness run's producer failed"));
    }

    let results = runtime.block_on(async {
        let lake = lake::factory(&e.format, &e.warehouse.as_path().into(), None, LakeOptions::default()).await?;
        let mut out = Vec::new();
        for (id, path, descriptor) in tables {
            let table = TableContext { table_id: *id, path: path.clone(), descriptor: descriptor.clone() };
            let history = lake.create_committer(&table).await?.history().await?;
            let visible: Vec<(i64, std::collections::BTreeMap<TableBucket, i64>)> =
                history.iter().map(|s| (s.committed_at_ms, s.marker.offset_map())).collect();
            let mut lags: Vec<(i64, u64)> = Vec::new();
            let mut not_visible = 0u64;
            let mut logs = Vec::new();
            for ((partition_id, bucket), _) in client.end_offsets(*id, path, descriptor).await? {
                let key = TableBucket { partition_id, bucket };
                let batches = stored_batches(client, *id, partition_id, bucket).await?;
                logs.push((key, batches.clone()));
                for (base, count, appended) in batches {
                    let end = base + count;
                    let mut covered = base;
                    for (committed_at, offsets) in &visible {
                        let upto = offsets.get(&key).copied().unwrap_or(0).min(end);
                        if upto > covered {
                            lags.push((committed_at - appended, (upto - covered) as u64));
                            covered = upto;
                        }
                    }
                    not_visible += (end - covered) as u64;
                }
            }
            let target = descriptor.properties.get(DATALAKE_FRESHNESS).map(|f| parse_duration(f)).transpose()?;
            lags.sort_unstable();
            out.push(TableFreshness {
                kind: "freshness",
                table: path.to_string(),
                freshness_target_seconds: target.map(|t| t.as_secs_f64()).unwrap_or(0.0),
                rate_rows_per_second: e.rate,
                rows: lags.iter().map(|(_, n)| n).sum::<u64>() + not_visible,
                rows_not_visible: not_visible,
                lake_snapshots: history.len(),
                p50_seconds: percentile(&lags, 0.50),
                p99_seconds: percentile(&lags, 0.99),
                max_seconds: lags.last().map(|(ms, _)| *ms as f64 / 1000.0).unwrap_or(0.0),
                lag_over_time: lag_over_time(&visible, &logs),
            });
        }
        anyhow::Ok(out)
    })?;
    println!(
        "\n{:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "table", "freshness", "rows", "snapshots", "p50 (s)", "p99 (s)", "max (s)", "not visible"
    );
    for r in &results {
        println!(
            "{:<12} {:>9.1}s {:>10} {:>10} {:>10.2} {:>10.2} {:>10.2} {:>12}",
            r.table,
            r.freshness_target_seconds,
            r.rows,
            r.lake_snapshots,
            r.p50_seconds,
            r.p99_seconds,
            r.max_seconds,
            r.rows_not_visible
        );
    }
    Ok(results)
}

/// A lake snapshot's tiered offset per bucket.
type Offsets = std::collections::BTreeMap<TableBucket, i64>;
/// A stored batch: `(base offset, record count, append time in ms)`.
type StoredBatch = (i64, i64, i64);

/// The sawtooth of [`TableFreshness::lag_over_time`]: at each commit, the lag just before it (from the previous
/// commit's oldest invisible row) and just after it. `logs` are each bucket's stored batches `(base, count, appended)`.
fn lag_over_time(commits: &[(i64, Offsets)], logs: &[(TableBucket, Vec<StoredBatch>)]) -> Vec<(f64, f64)> {
    let Some(start) = logs.iter().flat_map(|(_, b)| b.iter().map(|(_, _, appended)| *appended)).min() else {
        return Vec::new();
    };
    // The append time of the oldest row appended by `at` that the lake of `offsets` does not hold; `at` if none.
    let oldest_invisible = |offsets: Option<&Offsets>, at: i64| {
        logs.iter()
            .filter_map(|(key, batches)| {
                let tiered = offsets.and_then(|o| o.get(key)).copied().unwrap_or(0);
                batches.iter().find(|(base, count, _)| base + count > tiered).map(|(_, _, appended)| *appended)
            })
            .filter(|appended| *appended <= at)
            .min()
            .unwrap_or(at)
    };
    let secs = |ms: i64| ms as f64 / 1000.0;
    let next_append =
        |after: i64| logs.iter().flat_map(|(_, b)| b.iter().map(|(_, _, a)| *a)).filter(|a| *a > after).min();
    let commits: Vec<&(i64, Offsets)> = commits.iter().filter(|(at, _)| *at >= start).collect();
    let mut out = vec![(0.0, 0.0)];
    let mut before: Option<&Offsets> = None;
    for (i, (at, offsets)) in commits.iter().map(|c| (c.0, &c.1)).enumerate() {
        out.push((secs(at - start), secs(at - oldest_invisible(before, at))));
        let after = oldest_invisible(Some(offsets), at);
        out.push((secs(at - start), secs(at - after)));
        // Caught up: the lag stays 0 until the next row is appended (if that comes before the next commit).
        let next_commit = commits.get(i + 1).map(|c| c.0).unwrap_or(i64::MAX);
        if after == at
            && let Some(next) = next_append(at).filter(|n| *n < next_commit)
        {
            out.push((secs(next - start), 0.0));
        }
        before = Some(offsets);
    }
    out
}

/// Waits until the cluster's record of the lake covers every table's end offsets.
async fn wait_caught_up(client: &ClusterClient, tables: &[(i64, TablePath, TableDescriptor)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    for (id, path, descriptor) in tables {
        loop {
            let ends = client.end_offsets(*id, path, descriptor).await?;
            let tiered = client.tiered_offsets(path).await?;
            if ends.iter().all(|(k, end)| tiered.get(k).copied().unwrap_or(0) >= *end) {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("{path} did not catch up within {}s of the producer's end", CATCH_UP.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `(base offset, rows, append time in ms)` of every batch stored in one bucket.
async fn stored_batches(
    client: &ClusterClient,
    table_id: i64,
    partition_id: Option<i64>,
    bucket: i32,
) -> anyhow::Result<Vec<(i64, i64, i64)>> {
    let mut out = Vec::new();
    let cluster: std::sync::Arc<dyn TieringCluster> = std::sync::Arc::new(client.clone());
    let mut reader = LogReader::new(cluster, (table_id, partition_id, bucket), 0, None, 8 << 20);
    while let Some(batches) = reader.next().await.context("fetching")? {
        out.extend(batches.iter().map(|b| (b.base_offset, b.record_count, b.append_timestamp)));
    }
    Ok(out)
}

/// The `q`-quantile in seconds of lags in ms weighted by rows, sorted by lag.
fn percentile(sorted: &[(i64, u64)], q: f64) -> f64 {
    let total: u64 = sorted.iter().map(|(_, n)| n).sum();
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (ms, n) in sorted {
        seen += n;
        if seen >= rank {
            return *ms as f64 / 1000.0;
        }
    }
    0.0
}

#[cfg(test)]
mod lag_tests {
    use super::*;

    #[test]
    fn the_lag_drops_at_each_commit_and_stays_at_zero_until_the_next_append() {
        let bucket = TableBucket { partition_id: None, bucket: 0 };
        // Batches of 10 rows appended at 0 s, 1 s and 5 s; commits at 2 s (the first two) and 3 s (all three
        // would be 30, but the third is not appended yet: caught up), then 6 s (everything).
        let logs = vec![(bucket, vec![(0, 10, 0), (10, 10, 1000), (20, 10, 5000)])];
        let commits = vec![
            (2000, Offsets::from([(bucket, 20)])),
            (3000, Offsets::from([(bucket, 20)])),
            (6000, Offsets::from([(bucket, 30)])),
        ];
        let points = lag_over_time(&commits, &logs);
        let expected = [(0.0, 0.0), (2.0, 2.0), (2.0, 0.0), (3.0, 0.0), (3.0, 0.0), (5.0, 0.0), (6.0, 1.0), (6.0, 0.0)];
        assert_eq!(points, expected);
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_weigh_lags_by_rows() {
        let lags = [(100, 98), (2000, 1), (9000, 1)];
        assert_eq!(percentile(&lags, 0.5), 0.1);
        assert_eq!(percentile(&lags, 0.99), 2.0);
        assert_eq!(percentile(&lags, 1.0), 9.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
