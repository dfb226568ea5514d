//! `tier` and `demo`: the tiering job from the command line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::ClusterConfig;
use crate::dataflows::{self, JobContext, JobReport, TierConfig};
use crate::lake::{self, LakeOptions, TableContext};
use crate::model::table::{DATALAKE_FRESHNESS, TableDescriptor, TablePath, parse_duration, parse_schema};
use crate::model::tiering::TieringCluster;
use crate::rpc::ClusterClient;
use crate::serve::EmbeddedCluster;
use crate::workload::{KvMix, ProduceOptions, Workload, produce};

use super::{TierArgs, TimelyArgs, TuningArgs};

/// Timely's configuration from its flags.
pub fn timely_config(args: &TimelyArgs) -> anyhow::Result<timely::Config> {
    use timely::CommunicationConfig;
    if args.workers == 0 || args.processes == 0 {
        bail!("-w and -n must be at least 1");
    }
    if args.process >= args.processes {
        bail!("-p {} is not a process index below -n {}", args.process, args.processes);
    }
    let communication = if args.processes > 1 {
        let addresses: Vec<String> = match &args.hostfile {
            Some(file) => {
                let text =
                    std::fs::read_to_string(file).with_context(|| format!("reading hostfile {}", file.display()))?;
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).take(args.processes).collect()
            }
            None => (0..args.processes).map(|i| format!("localhost:{}", 2101 + i)).collect(),
        };
        if addresses.len() < args.processes {
            bail!("the hostfile names {} addresses for -n {}", addresses.len(), args.processes);
        }
        CommunicationConfig::Cluster {
            threads: args.workers,
            process: args.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    } else if args.workers > 1 {
        CommunicationConfig::Process(args.workers)
    } else {
        CommunicationConfig::Thread
    };
    Ok(timely::Config { communication, worker: timely::WorkerConfig::default() })
}

fn tier_config(tuning: &TuningArgs, once: bool) -> anyhow::Result<TierConfig> {
    if tuning.max_tables == 0 || tuning.max_splits_per_worker == 0 || tuning.split_rows == 0 {
        bail!("--max-tables, --max-splits-per-worker and --split-rows must be at least 1");
    }
    let (lake_timeout, orphan_age) = (parse_duration(&tuning.lake_timeout)?, parse_duration(&tuning.orphan_age)?);
    if lake_timeout > crate::lake::MAX_LAKE_TIMEOUT {
        bail!("--lake-timeout ({lake_timeout:?}) must be at most {:?}", crate::lake::MAX_LAKE_TIMEOUT);
    }
    if orphan_age < lake_timeout * 2 {
        // The sweep's premise: a round commits within half the orphan age, and a commit takes at most the time-out.
        bail!("--orphan-age ({orphan_age:?}) must be at least twice --lake-timeout ({lake_timeout:?})");
    }
    Ok(TierConfig {
        once,
        poll_interval: parse_duration(&tuning.poll_interval)?,
        max_tables_in_flight: tuning.max_tables,
        max_splits_in_flight: tuning.max_splits_per_worker,
        split_rows: tuning.split_rows,
        fetch_max_bytes: tuning.fetch_max_bytes.max(1),
        max_round_duration: tuning.max_round_duration.as_deref().map(parse_duration).transpose()?,
        lake_timeout,
        orphan_age,
        ..TierConfig::default()
    })
}

/// Runs one tiering job as `args` describe it; returns the job's context for its metrics.
///
/// The job gets a tokio runtime of its own, where splits are fetched, decoded and encoded: one thread per timely
/// worker of this process for the encoding, plus one, so that fetches and heartbeats never wait behind an encoder
/// (with only `-w` threads, a 1-worker job fetched and encoded in turn, not at once).
pub(super) fn run_job(args: &TierArgs) -> anyhow::Result<Arc<JobContext>> {
    run_job_with(args, |_| {})
}

/// [`run_job`], calling `started` with the job's context before the workers start (to watch or stop it).
pub(super) fn run_job_with(args: &TierArgs, started: impl FnOnce(&Arc<JobContext>)) -> anyhow::Result<Arc<JobContext>> {
    run_job_through(args, None, started)
}

/// [`run_job`] through `door` instead of `args.cluster`: a cluster of this process, reached without a wire.
pub(super) fn run_job_on(args: &TierArgs, door: Arc<dyn TieringCluster>) -> anyhow::Result<Arc<JobContext>> {
    run_job_through(args, Some(door), |_| {})
}

fn run_job_through(
    args: &TierArgs,
    door: Option<Arc<dyn TieringCluster>>,
    started: impl FnOnce(&Arc<JobContext>),
) -> anyhow::Result<Arc<JobContext>> {
    let timely_config = timely_config(&args.timely)?;
    let config = tier_config(&args.tuning, args.once)?;
    if args.tuning.target_file_size < 1024 {
        bail!("--target-file-size must be at least 1024 bytes");
    }
    let runtime = runtime("tier-io", args.timely.workers + 1)?;
    let options = LakeOptions { target_file_size: args.tuning.target_file_size, commit_timeout: config.lake_timeout };
    let rpc_timeout = parse_duration(&args.tuning.rpc_timeout)?;
    let through_door = door.is_some();
    let (client, lake) = runtime.block_on(async {
        // fluss://HOST:PORT speaks Fluss's own protocol; http://HOST:PORT the gRPC door.
        let client: Arc<dyn TieringCluster> = match (door, args.cluster.starts_with("fluss://")) {
            (Some(door), _) => door,
            (None, true) => crate::fluss::transport::FlussCluster::connect(&args.cluster, rpc_timeout).await?,
            (None, false) => Arc::new(ClusterClient::connect_with_timeout(&args.cluster, rpc_timeout).await?),
        };
        let warehouse = lake::Warehouse::parse(&args.warehouse, args.s3.settings())?;
        let lake = lake::factory(&args.format, &warehouse, args.catalog.as_deref(), options).await?;
        if args.now {
            // After the lake is known to open: a job that cannot run does not make tables due.
            let tables = client.schedule_now(&[]).await.context("--now")?;
            for table in tables {
                tracing::info!("--now: {}", table.describe());
            }
        }
        if args.format == "iceberg" {
            // Said at start, not only when their rounds fail: these tables will not reach an Iceberg lake.
            for (_, path, _) in client.tables().await?.iter().filter(|(_, _, d)| d.has_primary_key()) {
                tracing::warn!(table = %path, "primary-key table: Iceberg cannot take its deletes (the iceberg \
                    crate cannot commit delete files); its rounds will fail; tier it with --format paimon");
            }
        }
        Ok::<_, anyhow::Error>((client, lake))
    })?;
    let ctx = Arc::new(JobContext::new(runtime.handle().clone(), client, lake, config));
    if let Some(addr) = args.metrics_addr {
        let for_metrics = Arc::clone(&ctx);
        let bound = runtime.block_on(crate::metrics::serve(addr, Arc::new(move || for_metrics.metrics.render())))?;
        tracing::info!(%bound, "serving metrics");
    }
    let on_signal = Arc::clone(&ctx);
    let signal = {
        let _runtime = runtime.enter();
        super::shutdown_signal()
    };
    runtime.spawn(async move {
        signal.await;
        on_signal.request_shutdown();
    });
    let cluster = if through_door { "a door of this process" } else { args.cluster.as_str() };
    tracing::info!(job = %ctx.job_id, %cluster, format = %args.format, once = args.once, "tiering job started");
    started(&ctx);
    let bar = args.once.then(|| progress_bar(Arc::clone(&ctx)));
    let result = dataflows::run(timely_config, Arc::clone(&ctx));
    if let Some((stop, thread)) = bar {
        drop(stop);
        let _ = thread.join();
    }
    result?;
    Ok(ctx)
}

/// A progress bar of the offsets committed against those seen to tier, redrawn until the returned sender is
/// dropped; drawn on stderr only when it is a terminal.
fn progress_bar(ctx: Arc<JobContext>) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        use std::io::IsTerminal;
        let target = if std::io::stderr().is_terminal() {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let bar = indicatif::ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} rows {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_millis(200)) {
            let (done, todo) = ctx.metrics.rows_progress();
            bar.set_length(todo.max(0) as u64);
            bar.set_position(done.max(0) as u64);
            let m = ctx.metrics.report();
            bar.set_message(
                ctx.waiting()
                    .unwrap_or_else(|| format!("committed; {} rounds, {} failed", m.rounds_committed, m.rounds_failed)),
            );
        }
        bar.finish_and_clear();
    });
    (stop, thread)
}

/// A multi-threaded tokio runtime with `threads` workers named `name` (so profiles tell the job's threads from
/// an embedded cluster's).
pub(super) fn runtime(name: &str, threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run_tier(args: TierArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let ctx = run_job(&args)?;
    let report = ctx.metrics.report();
    print_summary(&report, started.elapsed());
    if let Some(path) = &args.report_json {
        std::fs::write(path, serde_json::to_string(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub(super) fn print_summary(r: &JobReport, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "tiered {} rows in {} splits into {} files ({:.1} MB) in {:.2}s ({:.0} rows/s); rounds: {} committed, {} empty, {} failed",
        r.rows,
        r.splits,
        r.files,
        r.file_bytes as f64 / 1e6,
        secs,
        r.rows as f64 / secs,
        r.rounds_committed,
        r.rounds_empty,
        r.rounds_failed,
    );
    if r.changes_read > 0 {
        println!("primary-key changes read: {} (consolidated by key before writing)", r.changes_read);
    }
    let p = &r.phases;
    println!(
        "phases (s): schedule {:.2}, plan {:.2}, fetch {:.2}, decode {:.2}, encode/write {:.2}, lake commit {:.2}, cluster commit {:.2}",
        p.schedule, p.plan, p.fetch, p.decode, p.encode_write, p.lake_commit, p.cluster_commit
    );
}

/// The demo's tables: a bucketed one, a partitioned one, one with every other type, and (Paimon only) a primary-key
/// table written with updates and deletes: `(name, schema, buckets, partition key, primary key)`.
const DEMO_TABLES: [(&str, &str, u32, Option<&str>, bool); 4] = [
    ("demo.orders", "id:int64,customer:string,amount:decimal(10,2),ts:timestamp", 4, None, false),
    ("demo.clicks", "id:int64,region:string,url:string,ts:timestamp", 2, Some("region"), false),
    ("demo.sensors", "id:int64,sensor:int32,reading:float64,ratio:float32,ok:bool,day:date,raw:binary", 3, None, false),
    ("demo.accounts", "id:int64,owner:string,balance:decimal(12,2),updated:timestamp", 3, None, true),
];

/// How the demo's primary-key table is written: half the rows update an earlier key, one in twenty deletes one.
const DEMO_KV: KvMix = KvMix { update: 0.5, delete: 0.05 };

pub fn run_demo(args: super::DemoArgs) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("fluss-tiering-demo-{}", uuid::Uuid::new_v4().simple())),
    };
    let (data_dir, warehouse) = (dir.join("cluster"), dir.join("warehouse"));
    println!("demo directory: {}", dir.display());
    // The embedded cluster and the demo's client live on a runtime of their own, beside the job's.
    let runtime = runtime("cluster-io", 2)?;
    let mut config = ClusterConfig::new(&data_dir);
    config.heartbeat_timeout = Duration::from_secs(10);
    // Both doors open: the demo's producer writes through gRPC, the job tiers over Fluss's own protocol, as it
    // would from a Fluss cluster.
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster = runtime.block_on(EmbeddedCluster::start_with(config, any, Some(any)))?;
    let url = cluster.url();
    let fluss = cluster.fluss_addr().map(|a| format!("fluss://{a}")).context("the Fluss door did not open")?;
    println!("embedded cluster on {url} (gRPC) and {fluss} (Fluss's protocol, which the job tiers over)");
    let client = runtime.block_on(ClusterClient::connect(&url))?;

    let mut tables = Vec::new();
    for (name, schema, buckets, partition_key, keyed) in DEMO_TABLES {
        if keyed && args.format == "iceberg" {
            println!("skipping {name}: primary-key tables tier to Paimon only");
            continue;
        }
        let path: TablePath = name.parse()?;
        let mut descriptor = TableDescriptor {
            columns: parse_schema(schema)?,
            buckets,
            partition_key: partition_key.map(str::to_string),
            primary_key: if keyed { vec!["id".into()] } else { vec![] },
            properties: Default::default(),
        };
        descriptor.properties.insert(DATALAKE_FRESHNESS.into(), "1s".into());
        let id = runtime.block_on(client.create_table(&path, &descriptor, true))?;
        // As the cluster holds it, with the options that say how its keys are bucketed.
        let (_, descriptor) = runtime.block_on(client.table_info(&path))?;
        tables.push((id, path, descriptor));
    }
    let timely = if args.timely.workers == 1 && args.timely.processes == 1 {
        TimelyArgs { workers: 2, ..args.timely.clone() }
    } else {
        args.timely.clone()
    };
    let job = TierArgs {
        cluster: fluss.clone(),
        warehouse: warehouse.display().to_string(),
        catalog: None,
        s3: Default::default(),
        format: args.format.clone(),
        metrics_addr: None,
        once: true,
        now: false,
        config: None,
        report_json: None,
        timely,
        tuning: TuningArgs { poll_interval: "200ms".into(), max_tables: 4, ..TuningArgs::default() },
        help: None,
    };

    for (step, (start_row, rows)) in [(0, args.rows), (args.rows, args.rows / 5)].into_iter().enumerate() {
        let workload = Workload { seed: 2026, partitions: 3 };
        for (id, path, descriptor) in &tables {
            let kv = if descriptor.has_primary_key() { DEMO_KV } else { KvMix::default() };
            let opts = ProduceOptions { start_row, rows, batch: 10_000, rate: None, concurrency: 8, kv };
            let report = runtime.block_on(produce(&client, *id, descriptor, &workload, &opts))?;
            println!("produced {} rows into {path}", report.rows);
        }
        println!("\n== tiering round {} with {} worker(s) ==", step + 1, job.timely.workers * job.timely.processes);
        let started = Instant::now();
        let ctx = run_job(&job)?;
        print_summary(&ctx.metrics.report(), started.elapsed());
        runtime.block_on(async {
            let lake = lake::factory(&args.format, &warehouse.as_path().into(), None, LakeOptions::default()).await?;
            print_lake(&client, lake.as_ref(), &tables).await
        })?;
    }
    runtime.block_on(cluster.shutdown())?;
    let warehouse = warehouse.canonicalize().unwrap_or(warehouse.clone());
    if args.format == "iceberg" {
        println!(
            "\nThe lake is an Iceberg SQL catalog: catalog \"fluss\", uri sqlite:///{0}/catalog.db, warehouse file://{0}",
            warehouse.display()
        );
    } else {
        println!("\nThe lake is a Paimon filesystem catalog: warehouse file://{}", warehouse.display());
    }
    Ok(())
}

/// What landed: per table, the lake's snapshot and offsets against the cluster's end offsets.
async fn print_lake(
    client: &ClusterClient,
    lake: &dyn lake::LakeTieringFactory,
    tables: &[(i64, TablePath, TableDescriptor)],
) -> anyhow::Result<()> {
    println!("{:<14} {:>20} {:>12} {:>12} {:>8}", "table", "lake snapshot", "end offsets", "in lake", "lag");
    for (id, path, descriptor) in tables {
        let ctx = TableContext { table_id: *id, path: path.clone(), descriptor: descriptor.clone() };
        let latest = lake.create_committer(&ctx).await?.latest().await?;
        let in_lake: i64 = latest.as_ref().map(|l| l.marker.offsets.iter().map(|o| o.offset).sum()).unwrap_or(0);
        let end: i64 = client.end_offsets(*id, path, descriptor).await?.iter().map(|(_, e)| e).sum();
        println!(
            "{:<14} {:>20} {:>12} {:>12} {:>8}",
            path.to_string(),
            latest.map(|l| l.snapshot_id.to_string()).unwrap_or_else(|| "-".into()),
            end,
            in_lake,
            end - in_lake
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_age_below_twice_the_lake_time_out_is_refused() {
        let tuning = TuningArgs { orphan_age: "90s".into(), lake_timeout: "60s".into(), ..TuningArgs::default() };
        let err = tier_config(&tuning, false).expect_err("refused");
        assert!(err.to_string().contains("--orphan-age"), "{err}");
        let tuning = TuningArgs { orphan_age: "2min".into(), ..tuning };
        assert_eq!(tier_config(&tuning, false).expect("accepted").orphan_age, Duration::from_secs(120));
    }

    /// A claim's lease is the lake time-out; a torn claim waits out the longest one (claim.rs, invariant 4).
    #[test]
    fn a_lake_time_out_over_the_longest_claim_lease_is_refused() {
        let tuning = TuningArgs { orphan_age: "24h".into(), lake_timeout: "16min".into(), ..TuningArgs::default() };
        let err = tier_config(&tuning, false).expect_err("refused");
        assert!(err.to_string().contains("--lake-timeout"), "{err}");
        let tuning = TuningArgs { lake_timeout: "15min".into(), ..tuning };
        assert_eq!(tier_config(&tuning, false).expect("accepted").lake_timeout, crate::lake::MAX_LAKE_TIMEOUT);
    }
}
