//! `bench`: end-to-end tiering throughput on the embedded cluster, for each worker count, against the baseline of
//! encoding the same Arrow batches straight to Parquet with arrow-rs (no cluster, no dataflow), measured in the same
//! run. The ratio tiering/baseline is the figure that matters; absolute numbers depend on the machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::cluster::ClusterConfig;
use crate::dataflows::{JobReport, PhaseSeconds};
use crate::lake::{lake_schema, with_system_columns};
use crate::model::table::{DATALAKE_FRESHNESS, TableDescriptor, TablePath, parse_duration, parse_schema};
use crate::model::tiering::{FetchAsk, LogReader, TieringCluster, answers_checked};
use crate::rpc::ClusterClient;
use crate::serve::{EmbeddedCluster, LocalDoor};
use crate::workload::{KvMix, ProduceOptions, Workload, produce};

use super::tier::{print_summary, run_job, run_job_on, runtime};
use super::{S3Args, TierArgs, TimelyArgs, TuningArgs};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rows per table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    #[arg(long, default_value_t = 1)]
    pub tables: u32,
    #[arg(long, default_value_t = 4)]
    pub buckets: u32,
    /// The share of the tables that have a primary key (`id`, plus `part` when partitioned), written with upserts
    /// and deletes (`--update-ratio`, `--delete-ratio`) and consolidated by key before they reach the lake.
    #[arg(long, default_value_t = 0.0)]
    pub pk_ratio: f64,
    /// Primary-key tables: the share of rows that update an earlier key.
    #[arg(long, default_value_t = 0.5)]
    pub update_ratio: f64,
    /// Primary-key tables: the share of rows that delete an earlier key.
    #[arg(long, default_value_t = 0.05)]
    pub delete_ratio: f64,
    /// Partitions per table (more than 1 adds a string partition column `part`).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Worker counts to run, e.g. 1,2.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Timely processes per run (each with `--workers` threads); more than 1 runs the job as that many
    /// `tier` processes on localhost.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Rows per stored batch of a bucket, as a Fluss client's per-bucket batching makes them (fewer when a bucket
    /// gets fewer rows): a small value gives many tiny batches, the cost a producer that does not batch imposes.
    #[arg(long, default_value_t = 8192)]
    pub batch_rows: u64,
    /// Columns of the benchmark table.
    #[arg(long, default_value = "id:int64,name:string,amount:decimal(12,2),score:float64,ok:bool,ts:timestamp")]
    pub schema: String,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Instead of generated rows: a TPC-H table (tpch:lineitem, …) at `--scale-factor`, the same rows in every table.
    #[arg(long)]
    pub dataset: Option<String>,
    /// TPC-H scale factor of `--dataset` (1 = lineitem's 6 million rows).
    #[arg(long, default_value_t = 1.0, requires = "dataset")]
    pub scale_factor: f64,
    /// A bucket's range is cut into splits of at most this many rows.
    #[arg(long, default_value_t = 1_000_000)]
    pub split_rows: u64,
    /// Lake format: paimon or iceberg.
    #[arg(long, default_value = "paimon", value_parser = ["paimon", "iceberg"])]
    pub format: String,
    /// How the job reaches the embedded cluster, one run per transport and worker count: grpc (its gRPC door),
    /// fluss (Fluss's own protocol), direct (its door without a wire: the stored batches reach the job as read from
    /// their segments, with no copy into a message and through a socket), or several (`grpc,fluss,direct`).
    #[arg(long, value_delimiter = ',', default_value = "grpc", value_parser = ["grpc", "fluss", "direct"])]
    pub transport: Vec<String>,
    /// Where to keep the cluster and the local lakes (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where the runs' lakes live, one run per warehouse, transport and worker count: `local` (under `--dir`) and
    /// `s3://BUCKET/PREFIX` (an existing bucket; see the `--s3-*` flags), e.g. `local,s3://bench/lakes` to set
    /// local disk against object storage in one run. Each run tiers into a new folder of its own there.
    #[arg(long, value_delimiter = ',', default_value = "local")]
    pub warehouse: Vec<String>,
    #[command(flatten)]
    pub s3: S3Args,
    /// Instead of throughput: produce at `--rate` for this long while a job tiers continuously, then report the lag
    /// from append to visible in the lake (p50, p99) per table against its freshness (e.g. 30s).
    #[arg(long)]
    pub freshness_for: Option<String>,
    /// Rows per second per table produced during `--freshness-for`.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// table.datalake.freshness of the tables of a `--freshness-for` run.
    #[arg(long, default_value = "1s")]
    pub table_freshness: String,
    /// Write one JSON document per run (one per line) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the run as an SVG chart: throughput per worker count against the baseline, or (`--freshness-for`) each
    /// table's lake lag over time.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Instead of tiering: produce `--rows` through each door of the cluster (gRPC and Fluss's protocol) and fetch
    /// them back through each; reports rows/s, MB/s and CPU seconds per door and operation.
    #[arg(long)]
    pub doors: bool,
}

/// The most rows the producer builds at once (a chunk's batches are in memory together).
const MAX_PRODUCE_CHUNK_ROWS: u64 = 1 << 21;

/// One measured run.
#[derive(Debug, Serialize)]
struct Run {
    kind: &'static str,
    /// How the job reached the cluster (`grpc`, `fluss`; `-` for the baseline).
    transport: String,
    /// Where its lake lived: `local` or `s3` (`-` for the baseline, which writes to local disk).
    warehouse: &'static str,
    /// Worker threads per process.
    workers: usize,
    processes: usize,
    rows: u64,
    arrow_bytes: u64,
    parquet_bytes: u64,
    files: u64,
    wall_seconds: f64,
    rows_per_second: f64,
    arrow_mb_per_second: f64,
    ratio_to_baseline: f64,
    mean_file_bytes: f64,
    /// Primary-key changes read; `rows` is what consolidation by key left of them (plus the log tables' rows).
    changes_read: u64,
    /// CPU seconds the run used, the embedded cluster serving its fetches included: `cpu_seconds / wall_seconds` is
    /// how many cores it kept busy, which bounds what more workers can gain on this machine.
    cpu_seconds: f64,
    /// CPU seconds per million rows written: per-core efficiency, comparable between a one-thread baseline and a
    /// job that keeps several cores busy (the wall-time ratio is not).
    cpu_seconds_per_million_rows: f64,
    rounds_committed: u64,
    /// Where the time went (zero for the baseline, which is all encoding).
    phase_seconds: PhaseSeconds,
    cores: usize,
    cpu_model: String,
    /// The process's peak resident memory so far (VmHWM): every run of one `bench` shares the process.
    peak_rss_bytes: u64,
}

/// The CPU model, from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// CPU time (user + system) of this process and its waited-for children so far, in seconds.
pub(super) fn cpu_seconds() -> f64 {
    let of = |who| {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return 0.0;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

/// The process's peak resident set size in bytes, from /proc/self/status.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.workers.is_empty()
        || args.workers.contains(&0)
        || args.rows == 0
        || args.tables == 0
        || args.processes == 0
        || args.partitions == 0
        || args.batch_rows == 0
    {
        bail!("--rows, --tables, --partitions, --processes, --batch-rows and every --workers entry must be at least 1");
    }
    if args.doors {
        return super::doors::run(&args);
    }
    let temp = tempfile::Builder::new().prefix("fluss-tiering-bench-").tempdir().context("creating a temp dir")?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    // The embedded cluster runs on a runtime of its own; each job brings its own.
    let runtime = runtime("cluster-io", 2)?;
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster =
        runtime.block_on(EmbeddedCluster::start_with(ClusterConfig::new(dir.join("cluster")), any, Some(any)))?;
    let client = runtime.block_on(ClusterClient::connect(&cluster.url()))?;
    let fluss = cluster.fluss_addr().map(|a| format!("fluss://{a}")).context("the Fluss door did not open")?;
    let url_of = |transport: &str| if transport == "fluss" { fluss.clone() } else { cluster.url() };
    if args.transport.is_empty() {
        bail!("--transport needs grpc, fluss or both");
    }
    // Each run tiers into a lake of its own, named by transport and worker count: a repeat would find it full.
    let unique = |list: Vec<String>| list.len() == list.iter().collect::<std::collections::BTreeSet<_>>().len();
    if !unique(args.transport.clone()) || !unique(args.workers.iter().map(|w| w.to_string()).collect()) {
        bail!("--transport and --workers must not name one value twice");
    }
    if args.freshness_for.is_some() && args.transport.len() > 1 {
        bail!("--freshness-for runs one job: give one --transport");
    }
    let direct = args.transport.iter().any(|t| t == "direct");
    if direct && (args.processes > 1 || args.freshness_for.is_some()) {
        bail!("--transport direct is a door of this process: not with --processes or --freshness-for");
    }
    let warehouses =
        args.warehouse.iter().map(|w| BenchWarehouse::parse(w, &args.s3)).collect::<Result<Vec<_>, _>>()?;
    // Runs are named by the kind of their warehouse: one of each.
    if !unique(warehouses.iter().map(|w| w.name().to_string()).collect()) || warehouses.is_empty() {
        bail!("--warehouse needs local, one s3://BUCKET/PREFIX, or both");
    }
    if args.freshness_for.is_some() && args.warehouse != ["local"] {
        bail!("--freshness-for runs on a local warehouse: drop --warehouse");
    }
    // Lakes on a bucket outlive the run: a stamp keeps a repeat from finding its lake full.
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let workload = Workload { seed: args.seed, partitions: args.partitions };
    let dataset = args.dataset.as_deref().map(|d| crate::dataset::Source::dataset(d, args.scale_factor)).transpose()?;
    if dataset.is_some() && (args.partitions > 1 || args.pk_ratio > 0.0 || args.freshness_for.is_some()) {
        bail!("--dataset loads log tables without partitions: drop --partitions, --pk-ratio and --freshness-for");
    }
    let mut columns = match &dataset {
        Some(source) => source.columns()?,
        None => parse_schema(&args.schema)?,
    };
    let partition_key = (args.partitions > 1).then(|| "part".to_string());
    if partition_key.is_some() {
        if columns.iter().any(|c| c.name == "part") {
            bail!("--partitions adds a column `part`: the schema must not have one");
        }
        columns.extend(parse_schema("part:string")?);
    }

    if !(0.0..=1.0).contains(&args.pk_ratio) {
        bail!("--pk-ratio must be between 0 and 1");
    }
    let pk_tables = (f64::from(args.tables) * args.pk_ratio).round() as u32;
    if pk_tables > 0 && args.format == "iceberg" {
        bail!(
            "primary-key tables tier to Paimon only (the iceberg crate cannot commit deletes): drop --format iceberg"
        );
    }
    let kv = KvMix { update: args.update_ratio, delete: args.delete_ratio };
    let mut tables = Vec::new();
    for i in 0..args.tables {
        let path: TablePath = format!("bench.t{i}").parse()?;
        let mut descriptor = TableDescriptor {
            columns: columns.clone(),
            buckets: args.buckets,
            partition_key: partition_key.clone(),
            primary_key: if i < pk_tables {
                std::iter::once("id".to_string()).chain(partition_key.clone()).collect()
            } else {
                vec![]
            },
            properties: Default::default(),
        };
        // Throughput runs want rounds to start at once; the freshness run measures against the table's own setting.
        let freshness = if args.freshness_for.is_some() { args.table_freshness.as_str() } else { "100ms" };
        descriptor.properties.insert(DATALAKE_FRESHNESS.into(), freshness.into());
        let id = runtime.block_on(client.create_table(&path, &descriptor, false))?;
        // As the cluster holds it, with the options that say how its keys are bucketed.
        let (_, descriptor) = runtime.block_on(client.table_info(&path))?;
        tables.push((id, path, descriptor));
    }
    if let Some(duration) = &args.freshness_for {
        let experiment = super::freshness::Experiment {
            cluster: url_of(&args.transport[0]),
            warehouse: dir.join("lake-freshness"),
            workers: args.workers[0],
            format: args.format.clone(),
            duration: parse_duration(duration)?,
            rate: args.rate,
            workload,
        };
        let result = super::freshness::measure(&runtime, &client, &tables, &experiment);
        runtime.block_on(cluster.shutdown())?;
        let report = result?;
        if let Some(path) = &args.json {
            let lines: Vec<String> = report.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
            std::fs::write(path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &args.plot {
            let series: Vec<super::plot::Series> =
                report.iter().map(|t| (t.table.clone(), t.lag_over_time.clone())).collect();
            let title =
                format!("Lake lag: age of the oldest row not yet in the lake (freshness {})", args.table_freshness);
            super::plot::lines(path, &title, "seconds since the producer started", "lag (s)", &series)?;
        }
        return Ok(());
    }
    let produce_started = Instant::now();
    let mut total_rows = 0;
    for (id, _, descriptor) in &tables {
        if let Some(source) = &dataset {
            let report = runtime.block_on(crate::dataset::produce_source(&client, *id, descriptor, source, 8192, 8))?;
            total_rows += report.rows;
            continue;
        }
        total_rows += args.rows;
        // As a Fluss client batches: rows accumulate per bucket, so each bucket's stored batches hold about
        // --batch-rows rows however many buckets share a chunk (a chunk is split by partition and bucket).
        let groups = u64::from(args.buckets) * u64::from(args.partitions);
        let opts = ProduceOptions {
            start_row: 0,
            rows: args.rows,
            batch: args.batch_rows.saturating_mul(groups).clamp(1, MAX_PRODUCE_CHUNK_ROWS),
            rate: None,
            concurrency: 8,
            kv: if descriptor.has_primary_key() { kv } else { KvMix::default() },
        };
        runtime.block_on(produce(&client, *id, descriptor, &workload, &opts))?;
    }
    println!("produced {total_rows} rows in {:.2}s", produce_started.elapsed().as_secs_f64());

    // The baseline compresses as the lake's writer does: zstd for Paimon (its default), snappy for our Iceberg writer.
    let codec = match args.format.as_str() {
        "paimon" => Compression::ZSTD(Default::default()),
        _ => Compression::SNAPPY,
    };
    let baseline = runtime.block_on(baseline(&client, &tables, &dir, codec))?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut runs = vec![Run {
        kind: "baseline: arrow-rs Parquet encode",
        transport: "-".into(),
        warehouse: "-",
        workers: 1,
        processes: 1,
        rows: total_rows,
        arrow_bytes: baseline.arrow_bytes,
        parquet_bytes: baseline.parquet_bytes,
        files: 1,
        wall_seconds: baseline.took.as_secs_f64(),
        rows_per_second: total_rows as f64 / baseline.took.as_secs_f64(),
        arrow_mb_per_second: baseline.arrow_bytes as f64 / 1e6 / baseline.took.as_secs_f64(),
        ratio_to_baseline: 1.0,
        mean_file_bytes: baseline.parquet_bytes as f64 / args.tables as f64,
        changes_read: 0,
        cpu_seconds: baseline.cpu_seconds,
        cpu_seconds_per_million_rows: baseline.cpu_seconds * 1e6 / total_rows.max(1) as f64,
        rounds_committed: 0,
        phase_seconds: PhaseSeconds::default(),
        cores,
        cpu_model: cpu_model(),
        peak_rss_bytes: peak_rss(),
    }];
    let mut runs_to_make: Vec<(&BenchWarehouse, &String, usize)> = Vec::new();
    for w in &warehouses {
        for t in &args.transport {
            runs_to_make.extend(args.workers.iter().map(|n| (w, t, *n)));
        }
    }
    for (store, transport, workers) in runs_to_make {
        let lake = format!("lake-{transport}-w{workers}");
        let (warehouse, catalog) = match store {
            BenchWarehouse::Local => (dir.join(&lake).display().to_string(), None),
            // Iceberg's SQL catalog stays on local disk, as the job's users would run it; Paimon's is the warehouse.
            BenchWarehouse::S3(base) => (
                format!("{}/{lake}-{stamp}", base.trim_end_matches('/')),
                (args.format == "iceberg")
                    .then(|| format!("sqlite:{}", dir.join(format!("catalog-{lake}-{stamp}.db")).display())),
            ),
        };
        let job = TierArgs {
            cluster: url_of(transport),
            warehouse,
            s3: args.s3.clone(),
            catalog,
            format: args.format.clone(),
            metrics_addr: None,
            once: true,
            now: false,
            config: None,
            report_json: None,
            timely: TimelyArgs { workers, processes: args.processes, process: 0, hostfile: None },
            tuning: TuningArgs {
                poll_interval: "100ms".into(),
                split_rows: args.split_rows,
                // The tables' freshness is short so rounds start at once; rounds must not be cut short by it.
                max_round_duration: Some("1h".into()),
                ..TuningArgs::default()
            },
            help: None,
        };
        // Each run tiers into an empty lake, so each tiers every row (the lake is the source of truth).
        std::thread::sleep(Duration::from_millis(200));
        let (started, cpu_before) = (Instant::now(), cpu_seconds());
        let report = if transport == "direct" {
            run_job_on(&job, Arc::new(LocalDoor::new(Arc::clone(cluster.cluster()))))?.metrics.report()
        } else if args.processes == 1 {
            run_job(&job)?.metrics.report()
        } else {
            run_processes(&job, &dir, &format!("{}-{lake}", store.name()))?
        };
        let (took, cpu) = (started.elapsed(), cpu_seconds() - cpu_before);
        print_summary(&report, took);
        let secs = took.as_secs_f64();
        runs.push(Run {
            kind: "tiering",
            transport: transport.clone(),
            warehouse: store.name(),
            workers,
            processes: args.processes,
            rows: report.rows,
            arrow_bytes: baseline.arrow_bytes,
            parquet_bytes: report.file_bytes,
            files: report.files,
            wall_seconds: secs,
            rows_per_second: total_rows as f64 / secs,
            arrow_mb_per_second: baseline.arrow_bytes as f64 / 1e6 / secs,
            ratio_to_baseline: baseline.took.as_secs_f64() / secs,
            mean_file_bytes: report.file_bytes as f64 / report.files.max(1) as f64,
            changes_read: report.changes_read,
            cpu_seconds: cpu,
            cpu_seconds_per_million_rows: cpu * 1e6 / report.rows.max(1) as f64,
            rounds_committed: report.rounds_committed,
            phase_seconds: report.phases,
            cores,
            cpu_model: cpu_model(),
            peak_rss_bytes: peak_rss(),
        });
    }
    runtime.block_on(cluster.shutdown())?;

    println!(
        "\n{:<36} {:>9} {:>10} {:>9} {:>12} {:>10} {:>12} {:>8} {:>10} {:>12}",
        "run",
        "workers",
        "rows",
        "seconds",
        "rows/s",
        "Arrow MB/s",
        "Parquet MB",
        "ratio",
        "cores busy",
        "CPU s/M rows"
    );
    for r in &runs {
        let run = match r.transport.as_str() {
            "-" => r.kind.to_string(),
            transport => format!("{} over {transport}, {}", r.kind, r.warehouse),
        };
        println!(
            "{:<36} {:>9} {:>10} {:>9.2} {:>12.0} {:>10.1} {:>12.1} {:>8.2} {:>10.2} {:>12.2}",
            run,
            format!("{}x{}", r.processes, r.workers),
            r.rows,
            r.wall_seconds,
            r.rows_per_second,
            r.arrow_mb_per_second,
            r.parquet_bytes as f64 / 1e6,
            r.ratio_to_baseline,
            r.cpu_seconds / r.wall_seconds,
            r.cpu_seconds_per_million_rows
        );
    }
    println!(
        "(ratio = baseline time / run time, wall clock; CPU s/M rows = CPU seconds per million rows written, per-core \
         efficiency; a primary-key run's rows are what consolidation left of its changes; {cores} cores, {}; peak RSS {:.0} MB)",
        cpu_model(),
        peak_rss() as f64 / 1e6
    );
    println!(
        "\n{:<18} {:>9} {:>7} {:>7} {:>7} {:>13} {:>12} {:>15}",
        "run", "schedule", "plan", "fetch", "decode", "encode/write", "lake commit", "cluster commit"
    );
    for r in runs.iter().skip(1) {
        let p = &r.phase_seconds;
        println!(
            "{:<18} {:>9.2} {:>7.2} {:>7.2} {:>7.2} {:>13.2} {:>12.2} {:>15.2}",
            format!("{}x{} {} {}", r.processes, r.workers, r.transport, r.warehouse),
            p.schedule,
            p.plan,
            p.fetch,
            p.decode,
            p.encode_write,
            p.lake_commit,
            p.cluster_commit
        );
    }
    if let Some(path) = &args.json {
        let lines: Vec<String> = runs.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        std::fs::write(path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let total = |r: &Run| (r.workers * r.processes) as f64;
        let mut series: Vec<super::plot::Series> = warehouses
            .iter()
            .flat_map(|w| args.transport.iter().map(move |t| (w.name(), t)))
            .map(|(w, t)| {
                let ours = |r: &&Run| &r.transport == t && r.warehouse == w;
                let points = runs.iter().filter(ours).map(|r| (total(r), r.rows_per_second));
                let name = if warehouses.len() > 1 { format!("tiering, {t}, {w}") } else { format!("tiering, {t}") };
                (name, points.collect())
            })
            .collect();
        let baseline = runs[0].rows_per_second;
        let mut workers: Vec<f64> = runs.iter().skip(1).map(total).collect();
        workers.sort_by(f64::total_cmp);
        workers.dedup();
        series.push(("baseline (1 core)".to_string(), workers.iter().map(|w| (*w, baseline)).collect()));
        let title = format!("Tiering throughput: {total_rows} rows, {} buckets, {}", args.buckets, args.format);
        super::plot::lines(path, &title, "workers", "rows per second", &series)?;
    }
    Ok(())
}

/// Where a bench run's lake lives.
enum BenchWarehouse {
    /// A directory under `--dir`.
    Local,
    /// `s3://BUCKET/PREFIX`, as given.
    S3(String),
}

impl BenchWarehouse {
    fn parse(text: &str, s3: &S3Args) -> anyhow::Result<Self> {
        if text == "local" {
            return Ok(BenchWarehouse::Local);
        }
        match crate::lake::Warehouse::parse(text, s3.settings())? {
            crate::lake::Warehouse::S3(_) => Ok(BenchWarehouse::S3(text.to_string())),
            crate::lake::Warehouse::Local(_) => {
                bail!("--warehouse {text:?}: give local (a directory under --dir) or s3://BUCKET/PREFIX")
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            BenchWarehouse::Local => "local",
            BenchWarehouse::S3(_) => "s3",
        }
    }
}

/// Runs `job` as `job.timely.processes` `tier` processes of this executable on localhost; returns their combined
/// report (rows and files summed; rounds and phases from process 0, where the enumerator and committer run).
fn run_processes(job: &TierArgs, dir: &std::path::Path, name: &str) -> anyhow::Result<JobReport> {
    let n = job.timely.processes;
    let ports: Vec<u16> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let hostfile = dir.join(format!("hosts-{name}"));
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>())?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let t = &job.tuning;
    let children: Vec<(PathBuf, std::process::Child)> = (0..n)
        .map(|p| {
            let report = dir.join(format!("report-{name}-p{p}.json"));
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("tier").arg("--cluster").arg(&job.cluster).arg("--warehouse").arg(&job.warehouse);
            // The same job as the in-process runs: every setting of `job` goes on the command line.
            cmd.args(["--once", "--format", &job.format, "--poll-interval", &t.poll_interval]);
            cmd.args([
                "--split-rows",
                &t.split_rows.to_string(),
                "--target-file-size",
                &t.target_file_size.to_string(),
            ]);
            cmd.args(["--max-tables", &t.max_tables.to_string()]);
            cmd.args(["--max-splits-per-worker", &t.max_splits_per_worker.to_string()]);
            cmd.args(["--fetch-max-bytes", &t.fetch_max_bytes.to_string()]);
            cmd.args(["--max-round-duration", t.max_round_duration.as_deref().unwrap_or("1h")]);
            cmd.args(["-w", &job.timely.workers.to_string(), "-n", &n.to_string(), "-p", &p.to_string()]);
            cmd.arg("-h").arg(&hostfile).arg("--report-json").arg(&report);
            if let Some(catalog) = &job.catalog {
                cmd.args(["--catalog", catalog]);
            }
            // S3 settings through the environment, where credentials do not show in the process list.
            let s3 = &job.s3;
            let vars = [
                ("AWS_ENDPOINT_URL", &s3.s3_endpoint),
                ("AWS_REGION", &s3.s3_region),
                ("AWS_ACCESS_KEY_ID", &s3.s3_access_key_id),
                ("AWS_SECRET_ACCESS_KEY", &s3.s3_secret_access_key),
                ("AWS_SESSION_TOKEN", &s3.s3_session_token),
            ];
            cmd.envs(vars.into_iter().filter_map(|(k, v)| Some((k, v.as_deref()?))));
            if s3.s3_path_style_access {
                cmd.arg("--s3-path-style-access");
            }
            cmd.stdout(std::process::Stdio::null());
            Ok((report, cmd.spawn().context("starting a tier process")?))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut reports = Vec::new();
    for (p, (report, mut child)) in children.into_iter().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            bail!("tier process {p} of {n} failed: {status}");
        }
        let text = std::fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()))?;
        reports.push(serde_json::from_str::<JobReport>(&text)?);
    }
    let mut total = reports.first().cloned().unwrap_or_default();
    total.rows = reports.iter().map(|r| r.rows).sum();
    total.files = reports.iter().map(|r| r.files).sum();
    total.file_bytes = reports.iter().map(|r| r.file_bytes).sum();
    total.splits = reports.iter().map(|r| r.splits).sum();
    Ok(total)
}

struct Baseline {
    cpu_seconds: f64,
    arrow_bytes: u64,
    parquet_bytes: u64,
    took: Duration,
}

/// Fetches every table's batches (with system columns, as tiering writes them), then times encoding them to one
/// Parquet file per table with arrow-rs alone.
async fn baseline(
    client: &ClusterClient,
    tables: &[(i64, TablePath, TableDescriptor)],
    dir: &std::path::Path,
    codec: Compression,
) -> anyhow::Result<Baseline> {
    let mut per_table = Vec::new();
    let mut arrow_bytes = 0u64;
    for (id, path, descriptor) in tables {
        let schema = lake_schema(descriptor);
        let mut batches = Vec::new();
        let cluster: Arc<dyn TieringCluster> = Arc::new(client.clone());
        let mut readers: Vec<LogReader> = client
            .end_offsets(*id, path, descriptor)
            .await?
            .into_iter()
            .map(|((partition, bucket), end)| {
                LogReader::new(Arc::clone(&cluster), (*id, partition, bucket), 0, Some(end), 8 << 20)
            })
            .collect();
        // Read as the job reads many small buckets: up to 64 at a time in one request.
        while !readers.is_empty() {
            readers.retain(|r| r.ask().is_some());
            for group in readers.chunks_mut(64) {
                let asks: Vec<FetchAsk> = group.iter().filter_map(LogReader::ask).collect();
                let answers = answers_checked(&asks, cluster.fetch_many(&asks, 8 << 20).await?)?;
                for ((reader, ask), answer) in group.iter_mut().zip(&asks).zip(answers) {
                    for stored in reader.take(answer?)?.unwrap_or_default() {
                        let b = stored.read(descriptor)?;
                        let (bucket, offset) = (ask.bucket.2, stored.base_offset);
                        let b = with_system_columns(&schema, &b, bucket, offset, stored.append_timestamp)?;
                        arrow_bytes += arrow_size(&b);
                        batches.push(b);
                    }
                }
            }
        }
        per_table.push((schema, batches));
    }
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let mut parquet_bytes = 0u64;
    for (i, (schema, batches)) in per_table.iter().enumerate() {
        let path = dir.join(format!("baseline-{i}.parquet"));
        let file = std::fs::File::create(&path)?;
        let props = WriterProperties::builder().set_compression(codec).build();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        for b in batches {
            writer.write(b)?;
        }
        writer.close()?;
        parquet_bytes += std::fs::metadata(&path)?.len();
    }
    let took = started.elapsed();
    Ok(Baseline { cpu_seconds: cpu_seconds() - cpu_before, arrow_bytes, parquet_bytes, took })
}

/// Bytes of the values a batch holds (not of the buffers it shares with other batches).
fn arrow_size(batch: &arrow::record_batch::RecordBatch) -> u64 {
    batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64).sum()
}
