//! The `fluss-tiering` command line.

mod bench;
mod doors;
mod freshness;
pub mod options;
mod plot;
mod tier;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::cluster::{Cluster, ClusterConfig};
use crate::model::table::{DATALAKE_FRESHNESS, TableDescriptor, TablePath, parse_duration, parse_schema};
use crate::model::tiering::TieringCluster;
use crate::rpc::ClusterClient;
use crate::serve::server;
use crate::workload::{KvMix, ProduceOptions, Workload, produce};

#[derive(Debug, Parser)]
#[command(
    name = "fluss-tiering",
    version,
    about = "Lake tiering service on timely dataflow, with its own Fluss-compatible cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cluster server until SIGINT/SIGTERM.
    Cluster(ClusterArgs),
    /// Create a table.
    CreateTable(CreateTableArgs),
    /// Drop a table and its data.
    DropTable(DropTableArgs),
    /// Change a table's schema: add a nullable column.
    AlterTable(AlterTableArgs),
    /// Produce generated rows (a pure function of seed and row number) into a table.
    Produce(ProduceArgs),
    /// List tables with buckets, end offsets and tiering state.
    Tables(ClusterUrl),
    /// Tiering status per table: state, epoch, lake snapshot, tiered vs end offsets (lag), last tiered, failures.
    Status(ClusterUrl),
    /// Run the tiering job: move new data from the cluster into the lake, exactly once.
    ///
    /// The Flink tiering job's options are accepted as Fluss operators spell them (`--fluss.bootstrap.servers`,
    /// `--datalake.format`, `--datalake.paimon.warehouse`, `--datalake.iceberg.*`, `--lake.tiering.*`).
    Tier(TierArgs),
    /// Make lake tables due now instead of at their freshness (an administrative request of this project's
    /// cluster, over its gRPC door; Apache Fluss has none), and show where each stands.
    Schedule(ScheduleArgs),
    /// Start an embedded cluster, create and fill a few tables, tier them with 2 workers and show what landed.
    Demo(DemoArgs),
    /// Measure tiering throughput per worker count against an arrow-rs Parquet baseline.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true, args_override_self = true)]
pub struct TierArgs {
    /// The cluster: `http://HOST:PORT` (its gRPC door) or `fluss://HOST:PORT` (Fluss's own protocol; also
    /// `--fluss.bootstrap.servers HOST:PORT`; of a list, the first server is used).
    #[arg(long)]
    pub cluster: String,
    /// The lake's warehouse: a local directory, or `s3://BUCKET/PREFIX` on S3 or an S3-compatible store (see the
    /// `--s3-*` flags).
    #[arg(long)]
    pub warehouse: String,
    /// The Iceberg SQL catalog, `sqlite:PATH` (default: WAREHOUSE/catalog.db; required for a warehouse on S3).
    #[arg(long)]
    pub catalog: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    /// Lake format: paimon (Fluss's default) or iceberg.
    #[arg(long, default_value = "paimon", value_parser = ["paimon", "iceberg"])]
    pub format: String,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Exit 0 once every lake-enabled table has caught up with the offsets seen at start.
    #[arg(long)]
    pub once: bool,
    /// Make every lake table due now instead of at its freshness (needs this project's cluster: see `schedule`).
    #[arg(long)]
    pub now: bool,
    /// Read flags from FILE: `key: value` lines, with these flags' names (without `--`) or the Fluss job's keys;
    /// flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// When the job ends, write its totals and phase times to this file as JSON.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    #[command(flatten)]
    pub timely: TimelyArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// How to reach a warehouse on S3: flags, or the standard AWS environment variables. Credentials given neither way
/// come from the AWS default chain (profile, instance role).
#[derive(Args, Clone, Default)]
pub struct S3Args {
    /// The S3 endpoint URL, for S3-compatible stores (default: AWS's).
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The S3 region (default: AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Path-style requests (ENDPOINT/BUCKET/KEY), as most S3-compatible servers want.
    #[arg(long)]
    pub s3_path_style_access: bool,
    /// The access key id (prefer the environment: flags show in the process list).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    /// The secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// A session token, for temporary credentials.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub s3_session_token: Option<String>,
}

impl S3Args {
    /// The lake's S3 settings.
    pub fn settings(&self) -> crate::lake::S3Settings {
        crate::lake::S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone().or_else(|| std::env::var("AWS_DEFAULT_REGION").ok()),
            path_style: self.s3_path_style_access,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            session_token: self.s3_session_token.clone(),
        }
    }
}

impl std::fmt::Debug for S3Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The settings' Debug, which never shows the secrets.
        self.settings().fmt(f)
    }
}

/// Timely's own worker and process flags.
#[derive(Debug, Args, Clone)]
pub struct TimelyArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// This process's index in 0..processes.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// File with one host:port per line, one per process (default localhost:2101, localhost:2102, …).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct TuningArgs {
    /// Heartbeat and table-poll period.
    #[arg(long, default_value = "1s")]
    pub poll_interval: String,
    /// A lake file rolls over at this many bytes.
    #[arg(long, default_value_t = 128 << 20)]
    pub target_file_size: usize,
    /// Tables held at once.
    #[arg(long, default_value_t = 2)]
    pub max_tables: usize,
    /// Splits each worker works on at once.
    #[arg(long, default_value_t = 2)]
    pub max_splits_per_worker: usize,
    /// A bucket's new range is cut into splits of at most this many rows, so one bucket can keep several workers busy.
    #[arg(long, default_value_t = 1_000_000)]
    pub split_rows: u64,
    /// Bytes per fetch request (at least one stored batch is always returned); a split of many small ranges shares
    /// them among the ranges it fetches at once (at least 64 KiB each).
    #[arg(long, default_value_t = 8 << 20)]
    pub fetch_max_bytes: i32,
    /// A round still reading after this long commits what it has read and goes again (default: the table's
    /// freshness, as in Fluss).
    #[arg(long)]
    pub max_round_duration: Option<String>,
    /// A call to the cluster that takes longer fails (and is retried by the next heartbeat or round).
    #[arg(long, default_value = "30s")]
    pub rpc_timeout: String,
    /// A lake call that takes longer fails; a lake commit that takes longer has an unknown outcome (its files are
    /// kept), and its claim on the lake table lasts this long.
    #[arg(long, default_value = "60s")]
    pub lake_timeout: String,
    /// Files no lake snapshot references are deleted once older than this (left by killed jobs and fenced rounds);
    /// a table is swept after its first commit in a job, then at most once per this period. Keep it well above the
    /// longest round plus the heartbeat and lake time-outs.
    #[arg(long, default_value = "24h")]
    pub orphan_age: String,
}

impl Default for TuningArgs {
    /// The command line's defaults (for the runs `demo`, `bench` and the freshness run make themselves).
    fn default() -> Self {
        TuningArgs {
            poll_interval: "1s".into(),
            target_file_size: 128 << 20,
            max_tables: 2,
            max_splits_per_worker: 2,
            split_rows: 1_000_000,
            fetch_max_bytes: 8 << 20,
            max_round_duration: None,
            rpc_timeout: "30s".into(),
            lake_timeout: "60s".into(),
            orphan_age: "24h".into(),
        }
    }
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct DemoArgs {
    /// Directory for the demo's cluster data and warehouse (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rows per table.
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
    /// Lake format: paimon or iceberg.
    #[arg(long, default_value = "paimon", value_parser = ["paimon", "iceberg"])]
    pub format: String,
    #[command(flatten)]
    pub timely: TimelyArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The cluster's gRPC door, e.g. http://127.0.0.1:9123
    #[arg(long)]
    pub cluster: String,
    /// Tables to make due (database.table; repeat or separate by commas); every lake table when absent.
    #[arg(long, value_delimiter = ',')]
    pub table: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ClusterUrl {
    /// The cluster, e.g. http://127.0.0.1:9123
    #[arg(long)]
    pub cluster: String,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Where the cluster keeps its logs and metadata.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:9123")]
    pub listen: String,
    /// Also serve Apache Fluss's own protocol (PLAINTEXT) here, for Fluss clients such as pyfluss
    /// (`bootstrap.servers`), e.g. 127.0.0.1:9124.
    #[arg(long)]
    pub fluss_listen: Option<String>,
    /// The lake format tables created over Fluss's protocol get (`table.datalake.format`) unless they name one.
    #[arg(long, default_value = "paimon")]
    pub datalake_format: String,
    /// A tiering job that has not heartbeated for this long loses its tables (e.g. 2min, 30s).
    #[arg(long, default_value = "2min")]
    pub tiering_timeout: String,
    /// First retry delay of a table whose round failed; it doubles with each consecutive failure (at most 5min).
    #[arg(long, default_value = "1s")]
    pub failure_backoff: String,
    /// Segment size in bytes at which a bucket log rolls.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// A primary-key bucket takes a KV snapshot after this many changes.
    #[arg(long, default_value_t = 100_000)]
    pub kv_snapshot_every: u64,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct CreateTableArgs {
    #[arg(long)]
    pub cluster: String,
    /// database.table
    #[arg(long)]
    pub table: String,
    /// Columns, e.g. "id:int64,name:string,ts:timestamp".
    #[arg(long)]
    pub schema: String,
    #[arg(long, default_value_t = 1)]
    pub buckets: u32,
    #[arg(long)]
    pub partition_by: Option<String>,
    /// Primary-key columns, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub primary_key: Vec<String>,
    /// table.datalake.freshness, e.g. 30s (default 3min).
    #[arg(long)]
    pub freshness: Option<String>,
    /// Do not tier this table (table.datalake.enabled = false).
    #[arg(long)]
    pub no_datalake: bool,
    /// Succeed when the table exists already.
    #[arg(long)]
    pub if_not_exists: bool,
}

#[derive(Debug, Args)]
pub struct AlterTableArgs {
    #[arg(long)]
    pub cluster: String,
    #[arg(long)]
    pub table: String,
    /// The column to add, NAME:TYPE (e.g. note:string).
    #[arg(long)]
    pub add_column: String,
}

#[derive(Debug, Args)]
pub struct DropTableArgs {
    #[arg(long)]
    pub cluster: String,
    #[arg(long)]
    pub table: String,
    #[arg(long)]
    pub if_exists: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").args(["dataset", "from"])))]
pub struct ProduceArgs {
    #[arg(long)]
    pub cluster: String,
    #[arg(long)]
    pub table: String,
    /// Generated rows to produce (the built-in generator).
    #[arg(long, required_unless_present_any = ["dataset", "from"], conflicts_with_all = ["dataset", "from"])]
    pub rows: Option<u64>,
    /// A TPC-H table instead of generated rows: tpch:lineitem, tpch:orders, … (the `tpchgen` crate's rows).
    #[arg(long, conflicts_with = "from")]
    pub dataset: Option<String>,
    /// TPC-H scale factor (1 = lineitem's 6 million rows).
    #[arg(long, default_value_t = 1.0, requires = "dataset")]
    pub scale_factor: f64,
    /// A Parquet (.parquet) or CSV (.csv, with a header line) file instead of generated rows.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// With --dataset or --from: the columns (e.g. "id:int64,name:string"); default: the dataset's, or the file's
    /// (a CSV file's inferred from its values). An existing table must have exactly these.
    #[arg(long, requires = "source")]
    pub schema: Option<String>,
    /// With --dataset or --from: the buckets of the table when this run creates it (it does when absent).
    #[arg(long, default_value_t = 1, requires = "source")]
    pub buckets: u32,
    #[arg(long, default_value_t = 0, conflicts_with = "source")]
    pub seed: u64,
    /// First row number (rows are numbered across runs: continue where the last run stopped).
    #[arg(long, default_value_t = 0, conflicts_with = "source")]
    pub start_row: u64,
    /// Rows per second (unlimited when absent).
    #[arg(long, conflicts_with = "source")]
    pub rate: Option<f64>,
    /// Rows per chunk; each chunk is one request per (partition, bucket) (with --dataset/--from: rows per batch,
    /// one request each).
    #[arg(long, default_value_t = 10_000)]
    pub batch: u64,
    /// Distinct partitions for a partitioned table.
    #[arg(long, default_value_t = 3, conflicts_with = "source")]
    pub partitions: u32,
    /// Primary-key tables: the share of rows that update an existing key (the rest insert new keys).
    #[arg(long, default_value_t = 0.0, conflicts_with = "source")]
    pub update_ratio: f64,
    /// Primary-key tables: the share of rows that delete an existing key.
    #[arg(long, default_value_t = 0.0, conflicts_with = "source")]
    pub delete_ratio: f64,
}

/// An error and its causes, each named once: a cause whose text an outer message already carries (errors that print
/// their source, wrappers that repeat it: "transport error: transport error: …") is left out.
pub fn describe(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        // These run timely workers on their own threads, beside a runtime of their own.
        Command::Tier(args) => return tier::run_tier(args),
        Command::Demo(args) => return tier::run_demo(args),
        Command::Bench(args) => return bench::run_bench(args),
        other => other,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        match command {
            Command::Cluster(args) => run_cluster(args).await,
            Command::CreateTable(args) => create_table(args).await,
            Command::DropTable(args) => {
                let client = connect(&args.cluster).await?;
                client.drop_table(&args.table.parse()?, args.if_exists).await?;
                println!("dropped {}", args.table);
                Ok(())
            }
            Command::AlterTable(args) => {
                let (name, ty) = args
                    .add_column
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("--add-column must be NAME:TYPE, not {:?}", args.add_column))?;
                let client = connect(&args.cluster).await?;
                let schema_id = client.add_column(&args.table.parse()?, name.trim(), ty.trim()).await?;
                println!("{} now has schema {schema_id}", args.table);
                Ok(())
            }
            Command::Produce(args) => run_produce(args).await,
            Command::Tables(args) => print_tables(&connect(&args.cluster).await?).await,
            Command::Status(args) => print_status(&connect(&args.cluster).await?).await,
            Command::Schedule(args) => schedule(args).await,
            Command::Tier(_) | Command::Demo(_) | Command::Bench(_) => unreachable!("handled above"),
        }
    })
}

async fn connect(url: &str) -> anyhow::Result<ClusterClient> {
    if url.starts_with("fluss://") {
        bail!("{url}: this command talks to the cluster's gRPC door (http://HOST:PORT), not Fluss's protocol");
    }
    Ok(ClusterClient::connect(url).await?)
}

async fn schedule(args: ScheduleArgs) -> anyhow::Result<()> {
    let tables: Vec<TablePath> = args.table.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
    let client = connect(&args.cluster).await?;
    for table in client.schedule_now(&tables).await? {
        println!("{}", table.schedule().describe());
    }
    Ok(())
}

async fn run_cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let mut config = ClusterConfig::new(&args.data_dir);
    config.heartbeat_timeout = parse_duration(&args.tiering_timeout)?;
    config.failure_backoff = parse_duration(&args.failure_backoff)?;
    config.segment_bytes = args.segment_bytes;
    if args.kv_snapshot_every == 0 {
        bail!("--kv-snapshot-every must be at least 1");
    }
    config.kv_snapshot_every = args.kv_snapshot_every;
    config.datalake_format = Some(args.datalake_format.clone());
    let cluster = Arc::new(tokio::task::spawn_blocking(move || Cluster::open(config)).await??);
    if let Some(addr) = args.metrics_addr {
        let for_metrics = Arc::clone(&cluster);
        let bound = crate::metrics::serve(addr, Arc::new(move || for_metrics.render_metrics())).await?;
        println!("metrics on http://{bound}/metrics");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("cluster serving on http://{addr} (data in {})", args.data_dir.display());
    let fluss = match &args.fluss_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await.with_context(|| format!("cannot listen on {at}"))?;
            println!("Fluss protocol on {} (bootstrap.servers)", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    server::serve(cluster, listener, fluss, shutdown_signal()).await?;
    println!("cluster stopped");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits the process at once (for a job that cannot wind down).
/// The handlers are registered when this is called (inside a runtime), not when first polled: a signal in between
/// would kill the process with the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let first = signals();
    async move {
        match first {
            Ok(first) => first.await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGINT/SIGTERM");
                std::future::pending::<()>().await
            }
        }
        if let Ok(second) = signals() {
            tokio::spawn(async move {
                second.await;
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            });
        }
    }
}

/// Registers for SIGINT and SIGTERM now; the future resolves on the first of them.
fn signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    Ok(async move {
        tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} }
    })
}

pub(crate) async fn create_table(args: CreateTableArgs) -> anyhow::Result<()> {
    let path: TablePath = args.table.parse()?;
    let mut descriptor = TableDescriptor {
        columns: parse_schema(&args.schema)?,
        buckets: args.buckets,
        partition_key: args.partition_by,
        primary_key: args.primary_key,
        properties: Default::default(),
    };
    if let Some(f) = args.freshness {
        parse_duration(&f)?;
        descriptor.properties.insert(DATALAKE_FRESHNESS.into(), f);
    }
    if args.no_datalake {
        descriptor.properties.insert(crate::model::table::DATALAKE_ENABLED.into(), "false".into());
    }
    descriptor.validate()?;
    let client = connect(&args.cluster).await?;
    let id = client.create_table(&path, &descriptor, args.if_not_exists).await?;
    println!("table {path} has id {id}");
    Ok(())
}

async fn run_produce(args: ProduceArgs) -> anyhow::Result<()> {
    let client = connect(&args.cluster).await?;
    let path: TablePath = args.table.parse()?;
    let Some(rows) = args.rows else { return produce_source(&client, &path, &args).await };
    let (table_id, descriptor) = client.table_info(&path).await?;
    if args.rate.is_some_and(|r| r.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)) {
        bail!("--rate must be a positive number of rows per second");
    }
    let workload = Workload { seed: args.seed, partitions: args.partitions };
    let opts = ProduceOptions {
        start_row: args.start_row,
        rows,
        batch: args.batch,
        rate: args.rate,
        concurrency: 8,
        kv: KvMix { update: args.update_ratio, delete: args.delete_ratio },
    };
    let report = produce(&client, table_id, &descriptor, &workload, &opts).await?;
    print_produced(&path, &report);
    Ok(())
}

fn print_produced(path: &TablePath, report: &crate::workload::ProduceReport) {
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "produced {} rows into {path} in {} requests, {:.1} MB of log batches, {:.2}s: {:.0} rows/s, {:.1} MB/s",
        report.rows,
        report.requests,
        report.bytes as f64 / 1e6,
        secs,
        report.rows as f64 / secs,
        report.bytes as f64 / 1e6 / secs
    );
}

/// `produce --dataset` / `--from`: the source's rows into the table, created with the source's columns when absent.
async fn produce_source(client: &ClusterClient, path: &TablePath, args: &ProduceArgs) -> anyhow::Result<()> {
    use crate::dataset::{Source, produce_source};
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let given = args.schema.as_deref().map(parse_schema).transpose()?;
    let existing = match client.table_info(path).await {
        Ok(table) => Some(table),
        Err(e) if e.kind() == crate::ErrorKind::TableNotExist => None,
        Err(e) => return Err(e.into()),
    };
    if let (Some(columns), Some((_, descriptor))) = (&given, &existing)
        && &descriptor.columns != columns
    {
        bail!("{path} exists with other columns than --schema gives");
    }
    let source = match (&args.dataset, &args.from) {
        (Some(dataset), _) => Source::dataset(dataset, args.scale_factor)?,
        (None, Some(file)) => Source::file(file, given.clone())?,
        (None, None) => bail!("give --rows, --dataset or --from"),
    };
    let (table_id, descriptor) = match existing {
        Some(table) => table,
        None => {
            let columns = match given {
                Some(columns) => columns,
                None => source.columns()?,
            };
            let descriptor = TableDescriptor {
                columns,
                buckets: args.buckets,
                partition_key: None,
                primary_key: vec![],
                properties: Default::default(),
            };
            descriptor.validate()?;
            client.create_table(path, &descriptor, false).await?;
            println!("created {path} with {} columns in {} bucket(s)", descriptor.columns.len(), args.buckets);
            client.table_info(path).await?
        }
    };
    // A CSV file is read with the table's types, not guessed ones ("007" stays a string), and not inferred twice.
    let source = match source {
        Source::Csv { path, columns: None } => Source::Csv { path, columns: Some(descriptor.columns.clone()) },
        other => other,
    };
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let report = produce_source(client, table_id, &descriptor, &source, batch, 8).await?;
    print_produced(path, &report);
    Ok(())
}

pub(crate) async fn print_tables(client: &ClusterClient) -> anyhow::Result<()> {
    let tables = client.list_tables().await?;
    println!(
        "{:<6} {:<28} {:>7} {:>10} {:>12} {:<10} {:>6} {:>20}",
        "id", "table", "buckets", "partitions", "end offsets", "tiering", "epoch", "lake snapshot"
    );
    for t in tables {
        let partitions = if t.descriptor.is_partitioned() { client.list_partitions(&t.path).await?.len() } else { 0 };
        let end: i64 = client.end_offsets(t.table_id, &t.path, &t.descriptor).await?.iter().map(|(_, e)| e).sum();
        println!(
            "{:<6} {:<28} {:>7} {:>10} {:>12} {:<10} {:>6} {:>20}",
            t.table_id,
            t.path.to_string(),
            t.descriptor.buckets,
            partitions,
            end,
            t.tiering_state,
            t.tiering_epoch,
            t.lake_snapshot_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

async fn print_status(client: &ClusterClient) -> anyhow::Result<()> {
    let now = crate::model::now_ms();
    println!(
        "{:<24} {:<10} {:>6} {:>20} {:>12} {:>12} {:>10} {:>12} {:>8}  last error",
        "table", "state", "epoch", "lake snapshot", "tiered", "end", "lag", "last tiered", "failures"
    );
    for t in client.list_tables().await? {
        let ends = client.end_offsets(t.table_id, &t.path, &t.descriptor).await?;
        let lake = client.tiered_offsets(&t.path).await?;
        let end: i64 = ends.iter().map(|(_, e)| e).sum();
        let tiered: i64 = ends.iter().map(|(k, _)| lake.get(k).copied().unwrap_or(0)).sum();
        println!(
            "{:<24} {:<10} {:>6} {:>20} {:>12} {:>12} {:>10} {:>12} {:>8}  {}",
            t.path.to_string(),
            t.tiering_state,
            t.tiering_epoch,
            t.lake_snapshot_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            tiered,
            end,
            end - tiered,
            t.last_tiered_ms
                .map(|ms| format!("{:.1}s ago", (now - ms) as f64 / 1000.0))
                .unwrap_or_else(|| "never".into()),
            t.failures,
            t.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

#[cfg(test)]
mod describe_tests {
    #[test]
    fn causes_are_named_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = anyhow::Error::new(inner)
            .context("tcp connect error: connection refused")
            .context("transport error")
            .context("transport error")
            .context("connecting to http://127.0.0.1:1");
        assert_eq!(
            super::describe(&e),
            "connecting to http://127.0.0.1:1: transport error: tcp connect error: connection refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "fluss-tiering",
            "tier",
            "--cluster",
            "http://x:1",
            "--warehouse",
            "w",
            "-w",
            "2",
            "-n",
            "2",
            "-p",
            "1",
            "-h",
            "hosts",
        ])
        .expect("timely flags parse");
        let Command::Tier(args) = cli.command else { panic!("tier") };
        assert_eq!((args.timely.workers, args.timely.processes, args.timely.process), (2, 2, 1));
        assert!(
            Cli::try_parse_from(["fluss-tiering", "tier", "--cluster", "u", "--warehouse", "w", "--bogus"]).is_err()
        );
    }
}
