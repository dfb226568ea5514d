//! Shared pieces of the end-to-end tests: a cluster with a mix of tables, the `tier` command as a subprocess, and
//! the lake read back by pypaimon or pyiceberg (not by our code) and checked row by row against the generator.

#![allow(dead_code)]

pub mod faults;
pub mod s3;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use arrow::array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::DataType;
use fluss_tiering::cluster::ClusterConfig;
use fluss_tiering::model::table::{TableDescriptor, TablePath, parse_schema};
use fluss_tiering::rpc::ClusterClient;
use fluss_tiering::serve::EmbeddedCluster;
use fluss_tiering::workload::{KvMix, ProduceOptions, Workload, produce};

/// The generator every test produces with.
pub const WORKLOAD: Workload = Workload { seed: 11, partitions: 3 };

pub struct TestTable {
    pub id: i64,
    pub path: TablePath,
    pub descriptor: TableDescriptor,
}

/// How a test's job talks to the cluster: Fluss's protocol by default (what Fluss users run), gRPC for the smaller
/// set of tests kept on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Fluss,
    Grpc,
}

impl Transport {
    /// The `--cluster` URL of `cluster` over this transport.
    pub fn url(self, cluster: &EmbeddedCluster) -> String {
        match self {
            Transport::Fluss => format!("fluss://{}", cluster.fluss_addr().expect("the Fluss door is open")),
            Transport::Grpc => cluster.url(),
        }
    }
}

/// The job's `--cluster` URL: over Fluss's protocol.
pub fn job_url(cluster: &EmbeddedCluster) -> String {
    Transport::Fluss.url(cluster)
}

/// A cluster served in the test process with both doors (the test's own client uses gRPC), with a short heartbeat
/// time-out so a crashed job's tables come back fast.
pub async fn start_cluster(dir: &Path) -> (EmbeddedCluster, ClusterClient) {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster = EmbeddedCluster::start_with(test_config(dir), any, Some(any)).await.expect("start cluster");
    let client = ClusterClient::connect(&cluster.url()).await.expect("connect");
    (cluster, client)
}

/// The tests' cluster configuration on data directory `dir`.
pub fn test_config(dir: &Path) -> ClusterConfig {
    let mut config = ClusterConfig::new(dir);
    config.heartbeat_timeout = Duration::from_millis(1500);
    config.failure_backoff = Duration::from_millis(200);
    config
}

/// Shuts `cluster` down and starts it again with `config` on the same addresses (both doors).
pub async fn restart_cluster(cluster: EmbeddedCluster, config: ClusterConfig) -> (EmbeddedCluster, ClusterClient) {
    let (addr, fluss_addr) = (cluster.addr(), cluster.fluss_addr());
    cluster.shutdown().await.expect("shutdown");
    let cluster = EmbeddedCluster::start_with(config, addr, fluss_addr).await.expect("restart");
    let client = ClusterClient::connect(&cluster.url()).await.expect("reconnect");
    (cluster, client)
}

/// The 3-table mix: bucketed, partitioned, and one with every other column type.
pub async fn create_tables(client: &ClusterClient) -> Vec<TestTable> {
    let specs = [
        ("db.orders", "id:int64,customer:string,amount:decimal(10,2),ts:timestamp", 4, None),
        ("db.clicks", "id:int64,region:string,url:string,ts:timestamp", 2, Some("region")),
        (
            "db.sensors",
            "id:int64,sensor:int32,reading:float64,ratio:float32,ok:bool,day:date,raw:binary,tiny:int8,short:int16,\
             code:char(4),key:binary(6),at:time(3),ms:timestamp(3),ns:timestamp(9),ltz:timestamp_ltz(6),\
             t0:time(0),t9:time(9),s0:timestamp(0),ltz3:timestamp_ltz(3),ltz9:timestamp_ltz(9)",
            3,
            None,
        ),
    ];
    let mut tables = Vec::new();
    for (name, schema, buckets, partition_key) in specs {
        let mut descriptor = TableDescriptor {
            columns: parse_schema(schema).expect("schema"),
            buckets,
            partition_key: partition_key.map(str::to_string),
            primary_key: vec![],
            properties: Default::default(),
        };
        descriptor.properties.insert("table.datalake.freshness".into(), "200ms".into());
        let path: TablePath = name.parse().expect("path");
        let id = client.create_table(&path, &descriptor, false).await.expect("create table");
        tables.push(TestTable { id, path, descriptor });
    }
    tables
}

/// Produces rows `[start_row, start_row + rows)` into every table.
pub async fn produce_all(client: &ClusterClient, tables: &[TestTable], start_row: u64, rows: u64) {
    for t in tables {
        let opts = ProduceOptions { start_row, rows, batch: 777, rate: None, concurrency: 4, kv: KvMix::default() };
        let report = produce(client, t.id, &t.descriptor, &WORKLOAD, &opts).await.expect("produce");
        assert_eq!(report.rows, rows);
    }
}

/// A tier run that takes longer than this is stuck: it is killed and the test fails with its output.
const TIER_DEADLINE: Duration = Duration::from_secs(180);

/// Runs `fluss-tiering tier --once` (plus `args`) against the cluster, with `env` set, and waits for it.
pub async fn tier(url: &str, warehouse: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Output {
    tier_in(None, url, warehouse, args, env).await
}

/// [`tier`] run as on a host of its own: in working directory `home` (created), with its temp dir under it.
pub async fn tier_in(
    home: Option<&Path>,
    url: &str,
    warehouse: impl AsRef<OsStr>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let (stdout, stderr) = (tempfile::tempfile().expect("stdout file"), tempfile::tempfile().expect("stderr file"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fluss-tiering"));
    if let Some(home) = home {
        std::fs::create_dir_all(home.join("tmp")).expect("home");
        cmd.current_dir(home).env("TMPDIR", home.join("tmp"));
    }
    cmd.args(["tier", "--cluster", url, "--warehouse"])
        .arg(warehouse)
        .args(["--once", "--poll-interval", "100ms", "--target-file-size", "65536"])
        .args(short_lake_timeout(args))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(stdout.try_clone().expect("clone"))
        .stderr(stderr.try_clone().expect("clone"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start tier");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tier {args:?} did not finish within {TIER_DEADLINE:?}:\n{}", read_all(&stderr));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Output { status, stdout: read_all(&stdout).into_bytes(), stderr: read_all(&stderr).into_bytes() }
}

/// Local-disk commits take milliseconds: a short lake time-out (and so a short Paimon claim lease) keeps a crashed
/// job's claim from holding the next job back for the default minute, unless the test sets its own.
fn short_lake_timeout(args: &[&str]) -> Vec<&'static str> {
    if args.contains(&"--lake-timeout") { vec![] } else { vec!["--lake-timeout", "5s"] }
}

fn read_all(mut file: &std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    text
}

/// Asserts a tier run exited 0, showing its output otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "tier failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A lake table as pypaimon or pyiceberg reads it.
pub struct LakeTable {
    pub rows: RecordBatch,
    pub snapshots: u64,
    pub current_snapshot_id: Option<i64>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// The data files the current snapshot references (local paths: `file://` or `file:` taken off).
    pub files: Vec<PathBuf>,
    /// With [`read_lake_each_key`]: for each key, the rows its filtered read found and the buckets it planned.
    pub per_key: Vec<(u64, u64)>,
}

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FLUSS_TIERING_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(venv.exists(), "the lake readers are not installed: run `bash .ci/run` once (it creates .venv)");
    venv
}

/// Reads `table` from the lake in `warehouse` with pypaimon or pyiceberg, whichever format the warehouse holds.
pub fn read_lake(warehouse: &Path, table: &TablePath) -> LakeTable {
    dump_lake(warehouse, table, &[])
}

/// The rows of every data file the lake's current snapshot references, unmerged (a Paimon primary-key table's
/// merged read hides a change committed twice): `__bucket`, `__offset` and the partition key.
pub fn read_lake_raw(warehouse: &Path, table: &TablePath) -> LakeTable {
    dump_lake(warehouse, table, &["--raw"])
}

/// [`read_lake`] of a Paimon table some of whose snapshots were published by hand, without a round marker (a
/// test's naive protocol); elsewhere a missing marker fails the read.
pub fn read_lake_without_markers(warehouse: &Path, table: &TablePath) -> LakeTable {
    dump_lake(warehouse, table, &["--allow-missing-markers"])
}

/// Reads a Paimon table once per key (`{column: value}`), filtered on it, so that pypaimon prunes buckets by its own
/// hash of the key: a key in another bucket than Paimon's function gives is not found.
pub fn read_lake_each_key(warehouse: &Path, table: &TablePath, keys: &[serde_json::Value]) -> LakeTable {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), serde_json::to_vec(keys).expect("json")).expect("write keys");
    dump_lake(warehouse, table, &["--each-key", &file.path().display().to_string()])
}

fn dump_lake(warehouse: &Path, table: &TablePath, flags: &[&str]) -> LakeTable {
    dump_lake_at(warehouse.as_os_str(), table, flags, &[])
}

/// [`read_lake`] of a warehouse anywhere (`s3://…` too): `flags` for the reader (`--catalog sqlite:PATH`), `env`
/// for its store (the AWS variables).
pub fn dump_lake_at(warehouse: &OsStr, table: &TablePath, flags: &[&str], env: &[(&str, String)]) -> LakeTable {
    let dump = tempfile::NamedTempFile::new().expect("tempfile");
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lake_dump.py"))
        .arg(warehouse)
        .arg(table.to_string())
        .arg(dump.path())
        .args(flags)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run python");
    assert!(out.status.success(), "the lake reader failed: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json summary");
    let file = std::fs::File::open(dump.path()).expect("open dump");
    let reader = arrow::ipc::reader::FileReader::try_new(file, None).expect("ipc file");
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    LakeTable {
        rows: concat_batches(&schema, &batches).expect("concat"),
        snapshots: summary["snapshots"].as_u64().expect("snapshots"),
        current_snapshot_id: summary["current_snapshot_id"].as_i64(),
        properties: summary["properties"].as_object().cloned().unwrap_or_default(),
        per_key: summary["per_key"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| Some((v[0].as_u64()?, v[1].as_u64()?))).collect())
            .unwrap_or_default(),
        files: summary["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| {
                let f = f.as_str().expect("path");
                PathBuf::from(f.strip_prefix("file://").or_else(|| f.strip_prefix("file:")).unwrap_or(f))
            })
            .collect(),
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("lake has no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has an unexpected type"))
}

/// The cluster's high watermark of every (partition name, bucket) of a table.
pub async fn end_offsets(client: &ClusterClient, t: &TestTable) -> BTreeMap<(String, i32), i64> {
    let buckets: Vec<i32> = (0..t.descriptor.buckets as i32).collect();
    let partitions: Vec<(Option<i64>, String)> = if t.descriptor.is_partitioned() {
        client.list_partitions(&t.path).await.expect("partitions").into_iter().map(|(id, n)| (Some(id), n)).collect()
    } else {
        vec![(None, String::new())]
    };
    let mut out = BTreeMap::new();
    for (pid, name) in partitions {
        let ends = client.list_offsets(t.id, pid, &buckets, true).await.expect("offsets");
        for (b, end) in buckets.iter().zip(ends) {
            out.insert((name.clone(), *b), end);
        }
    }
    out
}

/// Checks that the lake holds every (partition, bucket, offset) of the cluster exactly once, that rows `0..total` are
/// all there, and that every value equals what the generator produced for that row.
pub fn check_exactly_once(lake: &LakeTable, t: &TestTable, ends: &BTreeMap<(String, i32), i64>, total: u64) {
    let batch = &lake.rows;
    assert_eq!(batch.num_rows() as u64, total, "{}: row count", t.path);
    let buckets = column::<Int32Array>(batch, "__bucket");
    let offsets = column::<Int64Array>(batch, "__offset");
    let ids = column::<Int64Array>(batch, "id");
    let partitions: Vec<String> = match &t.descriptor.partition_key {
        Some(key) => {
            let values = cast(batch.column_by_name(key).expect("partition column"), &DataType::Utf8).expect("cast");
            let values = values.as_any().downcast_ref::<StringArray>().expect("strings");
            values.iter().map(|v| v.expect("partition value").to_string()).collect()
        }
        None => vec![String::new(); batch.num_rows()],
    };

    let mut seen: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    for (i, partition) in partitions.iter().enumerate() {
        let id = ids.value(i) as u64;
        assert_eq!(buckets.value(i) as u64, id % u64::from(t.descriptor.buckets), "row {id} is in its bucket");
        if let Some(key) = &t.descriptor.partition_key {
            let ty = t.descriptor.column(key).expect("key").data_type;
            let expected = fluss_tiering::workload::Workload::partition_name(WORKLOAD.partition_of(id), ty);
            assert_eq!(*partition, expected, "row {id} is in its partition");
        }
        seen.entry((partition.clone(), buckets.value(i))).or_default().push(offsets.value(i));
    }
    let expected_buckets: BTreeMap<(String, i32), i64> =
        ends.iter().filter(|(_, e)| **e > 0).map(|(k, v)| (k.clone(), *v)).collect();
    let seen_buckets: BTreeMap<(String, i32), i64> = seen.iter().map(|(k, v)| (k.clone(), v.len() as i64)).collect();
    assert_eq!(seen_buckets, expected_buckets, "{}: rows per bucket equal the cluster's end offsets", t.path);
    for (key, mut offs) in seen {
        offs.sort_unstable();
        let dense: Vec<i64> = (0..offs.len() as i64).collect();
        assert_eq!(offs, dense, "{}: bucket {key:?} holds each offset exactly once", t.path);
    }
    let mut sorted: Vec<u64> = ids.values().iter().map(|v| *v as u64).collect();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..total).collect::<Vec<_>>(), "{}: every produced row exactly once", t.path);

    let row_numbers: Vec<u64> = ids.values().iter().map(|v| *v as u64).collect();
    let expected = WORKLOAD.batch(&t.descriptor, &row_numbers).expect("expected rows");
    for (i, field) in expected.schema().fields().iter().enumerate() {
        let got = cast(batch.column_by_name(field.name()).expect("column"), field.data_type())
            .expect("cast to the Fluss type");
        assert_eq!(
            got.as_ref(),
            expected.column(i).as_ref(),
            "{}: column {} equals the produced values",
            t.path,
            field.name()
        );
    }
}

/// Free loopback ports for timely's processes.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// Whether a process is stopped (state `T` in /proc).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
        .unwrap_or(false)
}

/// Starts `fluss-tiering tier` (not `--once` unless asked) with its stderr in `stderr`, and `env` set.
pub fn spawn_tier(
    url: &str,
    warehouse: impl AsRef<OsStr>,
    args: &[&str],
    env: &[(&str, String)],
    stderr: &tempfile::NamedTempFile,
) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fluss-tiering"));
    cmd.args(["tier", "--cluster", url, "--warehouse"])
        .arg(warehouse)
        .args(["--poll-interval", "100ms"])
        .args(short_lake_timeout(args))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(stderr.reopen().expect("reopen"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start tier")
}

/// Waits until `child` stops at its pause point.
pub async fn wait_stopped(child: &mut std::process::Child, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !is_stopped(child.id()) {
        assert!(std::time::Instant::now() < deadline, "the job never reached {what}");
        assert!(child.try_wait().expect("wait").is_none(), "the job exited before {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `signal` to `child`.
pub fn signal(child: &std::process::Child, signal: i32) {
    // SAFETY: sends a signal to a child process we started.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// Waits until the cluster's record of every table's lake offsets reaches its end offsets.
pub async fn wait_tiered(client: &ClusterClient, tables: &[&TestTable], within: Duration) {
    let deadline = std::time::Instant::now() + within;
    for t in tables {
        loop {
            let ends: i64 = end_offsets(client, t).await.values().sum();
            let tiered: i64 = client
                .lake_snapshot(&t.path)
                .await
                .expect("snapshot")
                .map(|s| s.bucket_snapshots.iter().filter_map(|b| b.log_offset).sum())
                .unwrap_or(0);
            if tiered == ends {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{} did not catch up ({tiered} of {ends})", t.path);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits for `child` to exit; kills it and fails the test if it takes longer than `within`.
pub async fn wait_exit(mut child: std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the job did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops a running job with SIGTERM, checks that it exits cleanly, and returns its log.
pub async fn stop_job(job: std::process::Child, stderr: &tempfile::NamedTempFile) -> String {
    signal(&job, libc::SIGTERM);
    let status = wait_exit(job, Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(stderr.path()).expect("log");
    assert!(status.success(), "the job stops cleanly on SIGTERM:\n{log}");
    log
}

/// Checks every table's lake exactly once against `total` produced rows, and that the cluster's record of the lake
/// names the lake's current snapshot.
pub async fn check_lake_and_cluster(client: &ClusterClient, warehouse: &Path, tables: &[TestTable], total: u64) {
    check_read_lake_and_cluster(client, |t| read_lake(warehouse, t), tables, total).await;
}

/// [`check_lake_and_cluster`] with the lake read by `read`.
pub async fn check_read_lake_and_cluster(
    client: &ClusterClient,
    read: impl Fn(&TablePath) -> LakeTable,
    tables: &[TestTable],
    total: u64,
) {
    for t in tables {
        let lake = read(&t.path);
        check_exactly_once(&lake, t, &end_offsets(client, t).await, total);
        let recorded = client.lake_snapshot(&t.path).await.expect("snapshot").expect("recorded");
        assert_eq!(
            Some(recorded.snapshot_id),
            lake.current_snapshot_id,
            "{}: the cluster agrees with the lake",
            t.path
        );
    }
}

/// A test's world: a temporary directory, a running cluster with the 3-table mix, and where its lake goes.
pub struct Setup {
    pub dir: tempfile::TempDir,
    /// `DIR/warehouse`.
    pub warehouse: PathBuf,
    pub cluster: EmbeddedCluster,
    pub client: ClusterClient,
    pub tables: Vec<TestTable>,
}

/// Starts a cluster in `DIR/cluster` and creates the 3-table mix in it.
pub async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client) = start_cluster(&dir.path().join("cluster")).await;
    let tables = create_tables(&client).await;
    Setup { warehouse: dir.path().join("warehouse"), dir, cluster, client, tables }
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}
