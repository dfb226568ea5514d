//! The cluster's Fluss door, driven by clients that are not ours: the official Python client (pyfluss, from PyPI)
//! for everything a Fluss user does, and raw frames for the bad input a well-behaved client never sends.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches, sort_to_indices, take};
use bytes::{Buf, Bytes};
use fluss_tiering::ErrorKind;
use fluss_tiering::cluster::BucketId;
use fluss_tiering::cluster::{Cluster, ClusterConfig};
use fluss_tiering::fluss::frame::RequestHeader;
use fluss_tiering::fluss::messages as m;
use fluss_tiering::fluss::transport::FlussCluster;
use fluss_tiering::model::record::{self, BatchSpec, Compression};
use fluss_tiering::model::tiering::TieringCluster;
use fluss_tiering::serve::EmbeddedCluster;
use fluss_tiering::serve::fluss::{FlussDoor, Topology};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{assert_success, python, read_lake, tier};

/// Runs one command of `tests/fluss_client.py` against `addr`; returns its JSON answer.
fn pyfluss(addr: SocketAddr, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fluss_client.py"))
        .arg(addr.to_string())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "pyfluss {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line")
}

fn read_arrow(path: &Path) -> RecordBatch {
    let reader = arrow::ipc::reader::FileReader::try_new(std::fs::File::open(path).expect("open"), None).expect("ipc");
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    concat_batches(&schema, &batches).expect("concat")
}

/// Rows sorted by `id`.
fn by_id(batch: &RecordBatch) -> RecordBatch {
    let order = sort_to_indices(batch.column_by_name("id").expect("id"), None, None).expect("sort");
    let columns: Vec<ArrayRef> = batch.columns().iter().map(|c| take(c, &order, None).expect("take")).collect();
    RecordBatch::try_new(batch.schema(), columns).expect("batch")
}

/// Asserts that `got` holds the rows of `written` (matched by id), every column of `written` equal.
fn assert_same_rows(what: &str, written: &RecordBatch, got: &RecordBatch) {
    let (written, got) = (by_id(written), by_id(got));
    assert_eq!(got.num_rows(), written.num_rows(), "{what}: row count");
    for field in written.schema().fields() {
        let column = got.column_by_name(field.name()).unwrap_or_else(|| panic!("{what}: no column {}", field.name()));
        let column = cast(column, field.data_type()).expect("cast to the written type");
        let expected = written.column_by_name(field.name()).expect("written column");
        assert_eq!(column.as_ref(), expected.as_ref(), "{what}: column {} equals what pyfluss wrote", field.name());
    }
}

/// `(id, partition, bucket, offset)` of every row, sorted by id.
fn positions(batch: &RecordBatch, partition_column: &str) -> Vec<(i64, String, i32, i64)> {
    let batch = by_id(batch);
    let ids = batch.column_by_name("id").expect("id").as_any().downcast_ref::<Int64Array>().expect("int64").clone();
    let buckets =
        cast(batch.column_by_name("__bucket").expect("__bucket"), &arrow::datatypes::DataType::Int32).expect("cast");
    let buckets = buckets.as_any().downcast_ref::<Int32Array>().expect("int32").clone();
    let offsets = batch.column_by_name("__offset").expect("__offset");
    let offsets = offsets.as_any().downcast_ref::<Int64Array>().expect("int64");
    let parts = cast(batch.column_by_name(partition_column).expect("partition"), &arrow::datatypes::DataType::Utf8)
        .expect("cast");
    let parts = parts.as_any().downcast_ref::<StringArray>().expect("strings");
    (0..batch.num_rows())
        .map(|i| {
            let part = if parts.is_null(i) { String::new() } else { parts.value(i).to_string() };
            (ids.value(i), part, buckets.value(i), offsets.value(i))
        })
        .collect()
}

/// Every (partition, bucket) holds offsets 0..n once each.
fn assert_dense(what: &str, positions: &[(i64, String, i32, i64)]) {
    let mut per_bucket: std::collections::BTreeMap<(String, i32), Vec<i64>> = Default::default();
    for (_, p, b, o) in positions {
        per_bucket.entry((p.clone(), *b)).or_default().push(*o);
    }
    for (bucket, mut offsets) in per_bucket {
        offsets.sort_unstable();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "{what}: bucket {bucket:?}, offsets once");
    }
}

struct Files(tempfile::TempDir);

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

async fn pyfluss_round_trip(format: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files(tempfile::tempdir().expect("tempdir"));
    let config = ClusterConfig::new(dir.path().join("cluster"));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster = EmbeddedCluster::start_with(config.clone(), any, Some(any)).await.expect("start");
    let (grpc, fluss) = (cluster.addr(), cluster.fluss_addr().expect("the Fluss door is open"));

    let created = pyfluss(fluss, &["create", "fl.plain", "3"]);
    assert_eq!(created["buckets"], 3);
    assert_eq!(created["properties"]["table.datalake.format"], "paimon", "the server's default is applied");
    pyfluss(fluss, &["create", "fl.parts", "2", "region"]);
    pyfluss(fluss, &["write", "fl.plain", "0", "120", &files.arg("plain-0.arrow")]);
    pyfluss(fluss, &["write", "fl.parts", "0", "50", &files.arg("parts-0.arrow"), "EU"]);
    pyfluss(fluss, &["write", "fl.parts", "50", "80", &files.arg("parts-1.arrow"), "US"]);

    let written = |prefix: &str, n: usize| -> RecordBatch {
        let parts: Vec<RecordBatch> = (0..n).map(|i| read_arrow(&files.path(&format!("{prefix}-{i}.arrow")))).collect();
        concat_batches(&parts[0].schema(), &parts).expect("concat")
    };
    pyfluss(fluss, &["scan", "fl.plain", "120", &files.arg("scan.arrow")]);
    assert_same_rows("scan before the restart", &written("plain", 1), &read_arrow(&files.path("scan.arrow")));
    let offsets = pyfluss(fluss, &["offsets", "fl.plain"]);
    let latest: i64 =
        offsets["latest"].as_object().expect("latest").values().map(|v| v.as_i64().expect("offset")).sum();
    assert_eq!(latest, 120, "{offsets}");
    assert!(offsets["earliest"].as_object().expect("earliest").values().all(|v| v == 0), "{offsets}");

    // A restart on the same addresses keeps every acknowledged row, and writers go on.
    cluster.shutdown().await.expect("shutdown");
    let _cluster = EmbeddedCluster::start_with(config, grpc, Some(fluss)).await.expect("restart");
    pyfluss(fluss, &["write", "fl.plain", "120", "200", &files.arg("plain-1.arrow")]);
    pyfluss(fluss, &["write", "fl.parts", "80", "100", &files.arg("parts-2.arrow"), "EU"]);
    let (plain_rows, parts_rows) = (written("plain", 2), written("parts", 3));
    pyfluss(fluss, &["scan", "fl.plain", "200", &files.arg("scan.arrow")]);
    let scanned = read_arrow(&files.path("scan.arrow"));
    assert_same_rows("scan after the restart", &plain_rows, &scanned);
    let cluster_positions = positions(&scanned, "__partition");
    assert_dense("the log", &cluster_positions);
    pyfluss(fluss, &["scan", "fl.parts", "100", &files.arg("scan-parts.arrow")]);
    let scanned_parts = read_arrow(&files.path("scan-parts.arrow"));
    assert_same_rows("partitioned scan", &parts_rows, &scanned_parts);

    // Our job tiers what pyfluss wrote; readers that are not ours find every value, every offset once.
    let warehouse = dir.path().join("lake");
    assert_success(&tier(&format!("http://{grpc}"), &warehouse, &["--format", format], &[]).await);
    let lake = read_lake(&warehouse, &"fl.plain".parse().expect("path"));
    assert_same_rows("the lake", &plain_rows, &lake.rows);
    let mut lake_positions = positions(&lake.rows, "region");
    for p in &mut lake_positions {
        p.1.clear();
    }
    let plain_positions: Vec<_> = cluster_positions.iter().map(|(i, _, b, o)| (*i, String::new(), *b, *o)).collect();
    assert_eq!(lake_positions, plain_positions, "each row sits in the lake at the bucket and offset the log gave it");
    let lake_parts = read_lake(&warehouse, &"fl.parts".parse().expect("path"));
    assert_same_rows("the partitioned lake table", &parts_rows, &lake_parts.rows);
    assert_eq!(positions(&lake_parts.rows, "region"), positions(&scanned_parts, "__partition"));

    // pyfluss reads the tiered offsets back as the lake snapshot.
    let snapshot = pyfluss(fluss, &["lake", "fl.plain"]);
    let ends = pyfluss(fluss, &["offsets", "fl.plain"])["latest"].clone();
    let tiered: std::collections::BTreeMap<String, i64> = snapshot["buckets"]
        .as_object()
        .expect("buckets")
        .iter()
        .map(|(k, v)| (k.trim_start_matches('/').to_string(), v.as_i64().expect("offset")))
        .collect();
    // Buckets that never held a row are not in the snapshot (nothing of them was tiered).
    let latest: std::collections::BTreeMap<String, i64> = ends
        .as_object()
        .expect("latest")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().expect("offset")))
        .filter(|(_, end)| *end > 0)
        .collect();
    assert_eq!(tiered, latest, "the lake snapshot pyfluss reads names every bucket's end offset: {snapshot}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyfluss_writes_and_scans_through_a_restart_and_the_job_tiers_it_to_paimon() {
    pyfluss_round_trip("paimon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyfluss_writes_and_scans_through_a_restart_and_the_job_tiers_it_to_iceberg() {
    pyfluss_round_trip("iceberg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_tiers_over_fluss_protocol_with_prepare_and_commit_of_an_offsets_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files(tempfile::tempdir().expect("tempdir"));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let data = dir.path().join("cluster");
    let cluster = EmbeddedCluster::start_with(ClusterConfig::new(&data), any, Some(any)).await.expect("start");
    let fluss = cluster.fluss_addr().expect("the Fluss door is open");
    pyfluss(fluss, &["create", "wire.plain", "3"]);
    pyfluss(fluss, &["create", "wire.parts", "2", "region"]);
    pyfluss(fluss, &["write", "wire.plain", "0", "90", &files.arg("plain.arrow")]);
    pyfluss(fluss, &["write", "wire.parts", "0", "30", &files.arg("parts-0.arrow"), "EU"]);
    pyfluss(fluss, &["write", "wire.parts", "30", "50", &files.arg("parts-1.arrow"), "US"]);

    // The job talks to the cluster only through Fluss's protocol: heartbeats, table info, offsets, fetches, and the
    // commit as Fluss 0.9 makes it (PrepareLakeTableSnapshot → offsets file → CommitLakeTableSnapshot naming it).
    let warehouse = dir.path().join("lake");
    assert_success(&tier(&format!("fluss://{fluss}"), &warehouse, &[], &[]).await);
    pyfluss(fluss, &["scan", "wire.plain", "90", &files.arg("scan.arrow")]);
    let scanned = read_arrow(&files.path("scan.arrow"));
    let lake = read_lake(&warehouse, &"wire.plain".parse().expect("path"));
    assert_same_rows("the lake, tiered over Fluss's protocol", &read_arrow(&files.path("plain.arrow")), &lake.rows);
    let mut lake_positions = positions(&lake.rows, "region");
    for p in &mut lake_positions {
        p.1.clear();
    }
    assert_eq!(
        lake_positions,
        positions(&scanned, "__partition"),
        "every row at the bucket and offset the log gave it"
    );
    let parts = concat_batches(
        &read_arrow(&files.path("parts-0.arrow")).schema(),
        &[read_arrow(&files.path("parts-0.arrow")), read_arrow(&files.path("parts-1.arrow"))],
    )
    .expect("concat");
    let lake_parts = read_lake(&warehouse, &"wire.parts".parse().expect("path"));
    assert_same_rows("the partitioned table, tiered over Fluss's protocol", &parts, &lake_parts.rows);

    let snapshot = pyfluss(fluss, &["lake", "wire.plain"]);
    let tiered: i64 =
        snapshot["buckets"].as_object().expect("buckets").values().map(|v| v.as_i64().expect("offset")).sum();
    assert_eq!(tiered, 90, "the lake snapshot pyfluss reads: {snapshot}");
    // The offsets files PrepareLakeTableSnapshot wrote, in Fluss's JSON.
    let offsets: Vec<PathBuf> = common::walk(&data.join("remote/lake"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "offsets"))
        .collect();
    assert!(offsets.len() >= 2, "one offsets file per table at least: {offsets:?}");
    let parsed: Vec<serde_json::Value> =
        offsets.iter().map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")).collect();
    assert!(parsed.iter().any(|j| j["bucket_offsets"].is_array()), "{parsed:?}");
    assert!(parsed.iter().any(|j| j["partition_offsets"].is_array()), "{parsed:?}");
}

/// Fluss's own tiering service (the Flink job) and this one take turns on a table. Each snapshot of the job follows
/// Fluss 0.9's contract: `fluss-offsets` names the offsets file the cluster's PrepareLakeTableSnapshot wrote. A lake
/// snapshot that Fluss's service committed (its commit user, `fluss-offsets`, none of our properties) and that the
/// cluster never recorded is read as the lake's latest tiering snapshot, recorded with the cluster, and tiered on
/// from: every offset once, read back by pyiceberg or pypaimon, and pyfluss.
async fn fluss_own_tiering_service_between_our_rounds(format: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files(tempfile::tempdir().expect("tempdir"));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let data = dir.path().join("cluster");
    let config = ClusterConfig { datalake_format: Some(format.into()), ..ClusterConfig::new(&data) };
    let cluster = EmbeddedCluster::start_with(config, any, Some(any)).await.expect("start");
    let fluss = cluster.fluss_addr().expect("the Fluss door is open");
    let url = format!("fluss://{fluss}");
    let table: fluss_tiering::model::table::TablePath = "turns.t".parse().expect("path");
    let table_id = pyfluss(fluss, &["create", "turns.t", "2"])["table_id"].as_i64().expect("table id");
    let warehouse = dir.path().join("lake");
    let args = ["--format", format];
    let tier_lake = || tier(&url, &warehouse, &args, &[]);
    let sum = |snapshot: &serde_json::Value| -> i64 {
        snapshot["buckets"].as_object().expect("buckets").values().map(|v| v.as_i64().expect("offset")).sum()
    };

    // Our job: its snapshot names the cluster's offsets file, which the cluster recorded.
    pyfluss(fluss, &["write", "turns.t", "0", "40", &files.arg("w0.arrow")]);
    assert_success(&tier_lake().await);
    let lake = read_lake(&warehouse, &table);
    let ours = lake.properties["fluss-offsets-file"].as_str().expect("the snapshot names a file").to_string();
    let remote = data.join("remote").canonicalize().expect("remote dir");
    assert!(
        Path::new(&ours).canonicalize().expect("the file exists").starts_with(&remote),
        "the offsets file {ours} is the cluster's (under {})",
        remote.display()
    );
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&ours).expect("read")).expect("json");
    assert_eq!((file["version"].as_i64(), file["table_id"].as_i64()), (Some(1), Some(table_id)), "Fluss's JSON");
    let recorded = pyfluss(fluss, &["lake", "turns.t"]);
    assert_eq!(recorded["snapshot_id"].as_i64(), lake.current_snapshot_id, "{recorded}");
    assert_eq!(sum(&recorded), 40);

    // Fluss's service tiers the next rows; the cluster does not learn of it (as after a lost commit).
    pyfluss(fluss, &["write", "turns.t", "40", "70", &files.arg("w1.arrow")]);
    pyfluss(fluss, &["scan", "turns.t", "70", &files.arg("scan.arrow")]);
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fluss_commit.py"))
        .arg(&warehouse)
        .arg("turns.t")
        .arg(files.path("scan.arrow"))
        .arg(data.join("remote"))
        .arg(table_id.to_string())
        .arg(format)
        .output()
        .expect("run python");
    assert!(out.status.success(), "fluss_commit.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default()).expect("json");
    assert_eq!(theirs["rows"], 30, "{theirs}");
    if format == "paimon" {
        // As Fluss's committer makes it: its commit user, Paimon's batch identifier (Long.MAX_VALUE), the property.
        let id = theirs["snapshot_id"].as_i64().expect("id");
        let file = warehouse.join("turns.db").join("t").join("snapshot").join(format!("snapshot-{id}"));
        let snapshot: serde_json::Value = serde_json::from_slice(&std::fs::read(file).expect("read")).expect("json");
        assert_eq!(snapshot["commitUser"], "__fluss_lake_tiering", "{snapshot}");
        assert_eq!(snapshot["commitIdentifier"], i64::MAX, "{snapshot}");
        assert_eq!(snapshot["properties"]["fluss-offsets"], theirs["offsets_file"], "{snapshot}");
    }
    assert_eq!(sum(&pyfluss(fluss, &["lake", "turns.t"])), 40, "the cluster has not recorded Fluss's snapshot");

    // Nothing new: the job records Fluss's snapshot with the cluster, its offsets file as it is.
    assert_success(&tier_lake().await);
    let recorded = pyfluss(fluss, &["lake", "turns.t"]);
    assert_eq!(recorded["snapshot_id"], theirs["snapshot_id"], "the cluster recorded Fluss's snapshot: {recorded}");
    assert_eq!(sum(&recorded), 70);

    // New rows are tiered on from Fluss's offsets: every offset once, in the raw files.
    pyfluss(fluss, &["write", "turns.t", "70", "100", &files.arg("w2.arrow")]);
    assert_success(&tier_lake().await);
    // A Paimon append table's read is its raw files (nothing merges); Iceberg's raw read keeps every column.
    let raw = match format {
        "paimon" => read_lake(&warehouse, &table),
        _ => common::read_lake_raw(&warehouse, &table),
    };
    let written = ["w0", "w1", "w2"].map(|w| read_arrow(&files.path(&format!("{w}.arrow"))));
    let written = concat_batches(&written[0].schema(), &written).expect("concat");
    assert_same_rows("the lake after both services", &written, &raw.rows);
    pyfluss(fluss, &["scan", "turns.t", "100", &files.arg("scan-all.arrow")]);
    let mut lake_positions = positions(&raw.rows, "id");
    let mut log_positions = positions(&read_arrow(&files.path("scan-all.arrow")), "id");
    for p in lake_positions.iter_mut().chain(log_positions.iter_mut()) {
        p.1.clear();
    }
    assert_eq!(lake_positions, log_positions, "every row once, at the bucket and offset the log gave it");
    let recorded = pyfluss(fluss, &["lake", "turns.t"]);
    assert_eq!(recorded["snapshot_id"].as_i64(), raw.current_snapshot_id, "{recorded}");
    assert_eq!(sum(&recorded), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_fluss_own_tiering_service_is_recorded_with_the_cluster_and_tiered_on_from_iceberg() {
    fluss_own_tiering_service_between_our_rounds("iceberg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_fluss_own_tiering_service_is_recorded_with_the_cluster_and_tiered_on_from_paimon() {
    fluss_own_tiering_service_between_our_rounds("paimon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyfluss_admin_calls_get_the_answers_and_error_codes_of_a_java_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster = EmbeddedCluster::start_with(ClusterConfig::new(dir.path()), any, Some(any)).await.expect("start");
    let out = pyfluss(cluster.fluss_addr().expect("door"), &["admin"]);
    let expect = |key: &str, value: serde_json::Value| assert_eq!(out[key], value, "{key}: {out}");
    expect("duplicate_database", 6.into());
    expect("databases", serde_json::json!(["adm"]));
    expect("exists", serde_json::json!([true, false]));
    expect("duplicate_table", 8.into());
    expect("missing_database", 4.into());
    expect("tables", serde_json::json!(["t1"]));
    expect("table_exists", serde_json::json!([true, false]));
    expect("unknown_table", 7.into());
    expect("unsupported_type", 15.into());
    expect("primary_key_table", 0.into());
    expect("iceberg_composite_key", 15.into());
    expect("no_lake_snapshot", 53.into());
    expect("not_empty", 5.into());
    expect("tables_after_drop", serde_json::json!([]));
    expect("database_after_drop", false.into());
}

// ---- Raw frames -------------------------------------------------------------------------------------------------

struct Raw {
    stream: TcpStream,
    next_id: i32,
}

/// A response: its type (0 success, 1 error), request id and body.
#[derive(Debug)]
struct Answer {
    kind: u8,
    request_id: i32,
    body: Bytes,
}

impl Answer {
    fn error_code(&self) -> i32 {
        assert_eq!(self.kind, 1, "an ERROR_RESPONSE");
        m::ErrorResponse::decode(self.body.clone()).expect("error body").error_code
    }
    fn ok<T: Message + Default>(&self) -> T {
        assert_eq!(self.kind, 0, "a SUCCESS_RESPONSE, got {:?}", m::ErrorResponse::decode(self.body.clone()));
        T::decode(self.body.clone()).expect("response body")
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw { stream: TcpStream::connect(addr).await.expect("connect"), next_id: 0 }
    }

    async fn send_frame(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next answer; `None` when the server closed the connection.
    async fn answer(&mut self) -> Option<Answer> {
        let len = match self.stream.read_i32().await {
            Ok(len) => len,
            Err(_) => return None,
        };
        let mut frame = vec![0u8; len as usize];
        self.stream.read_exact(&mut frame).await.ok()?;
        let mut frame = Bytes::from(frame);
        let kind = frame.get_u8();
        let request_id = frame.get_i32();
        Some(Answer { kind, request_id, body: frame })
    }

    async fn call_raw(&mut self, api_key: i16, api_version: i16, body: &[u8]) -> Answer {
        self.next_id += 1;
        let header = RequestHeader { api_key, api_version, request_id: self.next_id };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
        bytes.extend_from_slice(&api_key.to_be_bytes());
        bytes.extend_from_slice(&api_version.to_be_bytes());
        bytes.extend_from_slice(&header.request_id.to_be_bytes());
        bytes.extend_from_slice(body);
        self.send_frame(&bytes).await;
        let answer = self.answer().await.expect("an answer");
        assert_eq!(answer.request_id, self.next_id, "answers carry their request's id");
        answer
    }

    async fn call(&mut self, api_key: i16, body: &impl Message) -> Answer {
        self.call_raw(api_key, 0, &body.encode_to_vec()).await
    }
}

/// A cluster served only through a Fluss door with a 64 KiB frame limit.
async fn door(dir: &Path) -> (SocketAddr, Arc<Cluster>, tokio::sync::oneshot::Sender<()>) {
    let cluster = Arc::new(Cluster::open(ClusterConfig::new(dir)).expect("open"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let door = FlussDoor::new(Arc::clone(&cluster)).with_max_frame(64 << 10);
    tokio::spawn(door.serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, cluster, stop)
}

const TABLE_JSON: &str = r#"{"version":1,"schema":{"version":1,"columns":[{"name":"id","data_type":{"type":"BIGINT"},"id":0},
    {"name":"name","data_type":{"type":"STRING"},"id":1}],"highest_field_id":1},"partition_key":[],"bucket_key":[],
    "bucket_count":2,"properties":{},"custom_properties":{}}"#;

/// Creates database `raw` and its table `t` (TABLE_JSON) through the door; returns the table id and schema id.
async fn create_table(c: &mut Raw) -> (i64, i16) {
    let db = m::CreateDatabaseRequest { database_name: "raw".into(), ignore_if_exists: false, database_json: None };
    let _: m::EmptyResponse = c.call(1001, &db).await.ok();
    let path = m::PbTablePath { database_name: "raw".into(), table_name: "t".into() };
    let create = m::CreateTableRequest {
        table_path: path.clone(),
        table_json: TABLE_JSON.as_bytes().to_vec(),
        ignore_if_exists: false,
    };
    let _: m::EmptyResponse = c.call(1005, &create).await.ok();
    let info: m::GetTableInfoResponse = c.call(1007, &m::TablePathRequest { table_path: path }).await.ok();
    (info.table_id, info.schema_id as i16)
}

fn rows(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, true),
        arrow::datatypes::Field::new("name", arrow::datatypes::DataType::Utf8, true),
    ]));
    let names: Vec<String> = ids.clone().map(|i| format!("n{i}")).collect();
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(StringArray::from(names))])
        .expect("batch")
}

fn batch(ids: std::ops::Range<i64>, schema_id: i16, writer: Option<(i64, i32)>) -> Bytes {
    record::encode(BatchSpec { schema_id, writer, compression: Compression::Zstd }, &rows(ids), None).expect("encode")
}

fn produce(table_id: i64, bucket_id: i32, records: Bytes) -> m::ProduceLogRequest {
    m::ProduceLogRequest {
        acks: -1,
        table_id,
        timeout_ms: 30_000,
        buckets_req: vec![m::PbProduceLogReqForBucket { partition_id: None, bucket_id, records }],
    }
}

fn fetch(table_id: i64, bucket_id: i32, fetch_offset: i64, max_wait_ms: i32) -> m::FetchLogRequest {
    m::FetchLogRequest::one_bucket(table_id, bucket_id, fetch_offset, 1 << 20, max_wait_ms)
}

fn produced(answer: &Answer) -> (Option<i32>, Option<i64>) {
    let resp: m::ProduceLogResponse = answer.ok();
    assert_eq!(resp.buckets_resp.len(), 1, "one answer per bucket asked");
    (resp.buckets_resp[0].error_code, resp.buckets_resp[0].base_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_error_codes_of_a_java_server_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _cluster, _stop) = door(dir.path()).await;
    let mut c = Raw::connect(addr).await;
    let hello = m::ApiVersionsRequest { client_software_name: "test".into(), client_software_version: "0".into() };
    let versions: m::ApiVersionsResponse = c.call(1000, &hello).await.ok();
    assert!(versions.api_versions.iter().any(|v| v.api_key == 1014), "ProduceLog is listed");
    assert_eq!(versions.server_type, None, "one node in both roles names no server type");

    assert_eq!(c.call_raw(1999, 0, &[]).await.error_code(), 2, "an api key not served: UNSUPPORTED_VERSION");
    assert_eq!(c.call_raw(1000, 7, &hello.encode_to_vec()).await.error_code(), 2, "a version not served");
    assert_eq!(c.call_raw(1001, 0, &[]).await.error_code(), 3, "required fields missing: CORRUPT_MESSAGE");
    assert_eq!(c.call_raw(1003, 0, &[0xFF, 0xFF, 0xFF]).await.error_code(), 3, "a body that is not protobuf");
    // A produce bucket without its records (field 3 of a field-4 message): a nested required field.
    let mut nested = m::ProduceLogRequest { acks: -1, table_id: 0, timeout_ms: 1, buckets_req: vec![] }.encode_to_vec();
    nested.extend([0x22, 0x02, 0x10, 0x00]);
    assert_eq!(c.call_raw(1014, 0, &nested).await.error_code(), 3, "a nested required field missing");
    assert_eq!(c.call_raw(1000, 0, &vec![0u8; 100 << 10]).await.error_code(), 3, "a frame over the limit");
    let _: m::ApiVersionsResponse = c.call(1000, &hello).await.ok();

    let (table_id, schema_id) = create_table(&mut c).await;

    let mut corrupt = batch(0..3, schema_id, None).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    assert_eq!(
        produced(&c.call(1014, &produce(table_id, 0, corrupt.into())).await).0,
        Some(14),
        "bad crc: CORRUPT_RECORD"
    );
    assert_eq!(
        produced(&c.call(1014, &produce(table_id, 0, batch(0..3, 99, None))).await).0,
        Some(9),
        "SCHEMA_NOT_EXIST"
    );
    assert_eq!(produced(&c.call(1014, &produce(table_id, 5, batch(0..3, schema_id, None))).await).0, Some(21));
    assert_eq!(c.call(1014, &produce(table_id + 9, 0, batch(0..3, schema_id, None))).await.error_code(), 7);
    assert_eq!(
        c.call(
            1021,
            &m::ListOffsetsRequest {
                follower_server_id: -1,
                offset_type: 1,
                table_id,
                partition_id: None,
                bucket_id: vec![0],
                start_timestamp: None
            }
        )
        .await
        .ok::<m::ListOffsetsResponse>()
        .buckets_resp[0]
            .offset,
        Some(0),
        "nothing of the refused batches was stored"
    );
    assert_eq!(produced(&c.call(1014, &produce(table_id, 0, batch(0..3, schema_id, None))).await), (None, Some(0)));

    let fetched: m::FetchLogResponse = c.call(1015, &fetch(table_id, 0, 99, 0)).await.ok();
    assert_eq!(fetched.tables_resp[0].buckets_resp[0].error_code, Some(19), "past the end: LOG_OFFSET_OUT_OF_RANGE");
    let fetched: m::FetchLogResponse = c.call(1015, &fetch(table_id, 0, -2, 0)).await.ok();
    let stored = fetched.tables_resp[0].buckets_resp[0].records.clone().expect("records");
    let stored = record::split(&stored).expect("whole batches");
    assert_eq!(stored.len(), 1);
    stored[0].check_crc().expect("the stored batch keeps its crc");
    assert_eq!(stored[0].header().base_offset, 0);

    // A commit naming an offsets file this cluster did not write is refused, whatever the file holds.
    let commit = m::CommitLakeTableSnapshotRequest {
        tables_req: vec![],
        lake_table_snapshot_metadata: vec![m::PbLakeTableSnapshotMetadata {
            table_id,
            snapshot_id: 1,
            tiered_bucket_offsets_file_path: "/etc/hostname".into(),
            readable_bucket_offsets_file_path: None,
            earliest_snapshot_id_to_keep: None,
        }],
    };
    let refused: m::CommitLakeTableSnapshotResponse = c.call(1030, &commit).await.ok();
    assert_eq!(refused.table_resp[0].error_code, Some(ErrorKind::InvalidArgument.code()), "{refused:?}");

    // A frame too short to hold a header cannot be answered: that connection closes, the server goes on.
    c.send_frame(&3i32.to_be_bytes()).await;
    c.send_frame(&[0, 0, 0]).await;
    assert!(c.answer().await.is_none(), "the connection is closed");
    let mut d = Raw::connect(addr).await;
    let _: m::ApiVersionsResponse = d.call(1000, &hello).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_writers_long_polling_fetches_and_timestamp_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _cluster, _stop) = door(dir.path()).await;
    let mut c = Raw::connect(addr).await;
    let (table_id, schema_id) = create_table(&mut c).await;

    let writer =
        c.call(1026, &m::InitWriterRequest { table_path: vec![] }).await.ok::<m::InitWriterResponse>().writer_id;
    let again =
        c.call(1026, &m::InitWriterRequest { table_path: vec![] }).await.ok::<m::InitWriterResponse>().writer_id;
    assert_ne!(writer, again, "every InitWriter gets a new id");
    let first = batch(0..4, schema_id, Some((writer, 0)));
    assert_eq!(produced(&c.call(1014, &produce(table_id, 1, first.clone())).await), (None, Some(0)));
    assert_eq!(produced(&c.call(1014, &produce(table_id, 1, first)).await), (None, Some(0)), "a repeat: same offset");
    let gap = batch(4..6, schema_id, Some((writer, 2)));
    assert_eq!(produced(&c.call(1014, &produce(table_id, 1, gap)).await).0, Some(31), "OUT_OF_ORDER_SEQUENCE");

    // A fetch at the end waits for the next append (max_wait 20 s: it returns when the append lands).
    let mut waiting = Raw::connect(addr).await;
    let fetch_at_end = tokio::spawn(async move { waiting.call(1015, &fetch(table_id, 1, 4, 20_000)).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before_second = fluss_tiering::model::now_ms();
    let next = batch(4..6, schema_id, Some((writer, 1)));
    assert_eq!(produced(&c.call(1014, &produce(table_id, 1, next)).await), (None, Some(4)));
    let woken: m::FetchLogResponse = fetch_at_end.await.expect("task").ok();
    let records = woken.tables_resp[0].buckets_resp[0].records.clone().expect("the append wakes the fetch");
    assert_eq!(record::split(&records).expect("batches")[0].header().base_offset, 4);

    let by_time = |ts| m::ListOffsetsRequest {
        follower_server_id: -1,
        offset_type: 2,
        table_id,
        partition_id: None,
        bucket_id: vec![1],
        start_timestamp: Some(ts),
    };
    let offset = |r: m::ListOffsetsResponse| r.buckets_resp[0].offset;
    assert_eq!(offset(c.call(1021, &by_time(0)).await.ok()), Some(0));
    assert_eq!(offset(c.call(1021, &by_time(before_second)).await.ok()), Some(4));
    assert_eq!(offset(c.call(1021, &by_time(i64::MAX)).await.ok()), Some(6), "after every append: the end");
}

/// Forwards connections to `target`; the first answer to a request of `api_key` (ProduceLog, PutKv) is dropped and
/// its connection cut, as if the network failed after the server stored the batch.
async fn lossy_proxy(target: SocketAddr, api_key: i16) -> (SocketAddr, Arc<AtomicBool>) {
    let (addr, dropped, _) = proxy(target, Some(api_key)).await;
    (addr, dropped)
}

/// Every request frame a proxy forwarded: `(api key, body)`.
type Recorded = Arc<std::sync::Mutex<Vec<(i16, Vec<u8>)>>>;

/// Forwards connections to `target`, recording every request; with `lose`, the first answer to a request of that
/// api key is dropped and its connection cut.
async fn proxy(target: SocketAddr, lose: Option<i16>) -> (SocketAddr, Arc<AtomicBool>, Recorded) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dropped = Arc::new(AtomicBool::new(false));
    let recorded: Recorded = Arc::default();
    let (flag, record) = (Arc::clone(&dropped), Arc::clone(&recorded));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (flag, record) = (Arc::clone(&flag), Arc::clone(&record));
            tokio::spawn(async move {
                let server = TcpStream::connect(target).await.expect("connect");
                let (mut client_rd, mut client_wr) = client.into_split();
                let (mut server_rd, mut server_wr) = server.into_split();
                let produce_ids = Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
                let ids = Arc::clone(&produce_ids);
                let upstream = tokio::spawn(async move {
                    while let Ok(len) = client_rd.read_i32().await {
                        let mut frame = vec![0u8; len as usize];
                        if client_rd.read_exact(&mut frame).await.is_err() {
                            break;
                        }
                        let key = i16::from_be_bytes([frame[0], frame[1]]);
                        record.lock().expect("lock").push((key, frame[8..].to_vec()));
                        if Some(key) == lose {
                            ids.lock()
                                .expect("lock")
                                .push(i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]));
                        }
                        if server_wr.write_all(&len.to_be_bytes()).await.is_err()
                            || server_wr.write_all(&frame).await.is_err()
                        {
                            break;
                        }
                    }
                });
                while let Ok(len) = server_rd.read_i32().await {
                    let mut frame = vec![0u8; len as usize];
                    if server_rd.read_exact(&mut frame).await.is_err() {
                        break;
                    }
                    let id = i32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
                    let is_produce = produce_ids.lock().expect("lock").contains(&id);
                    if is_produce && !flag.swap(true, Ordering::SeqCst) {
                        // Stored, never acknowledged: cut both ways.
                        upstream.abort();
                        return;
                    }
                    if client_wr.write_all(&len.to_be_bytes()).await.is_err()
                        || client_wr.write_all(&frame).await.is_err()
                    {
                        break;
                    }
                }
                upstream.abort();
            });
        }
    });
    (addr, dropped, recorded)
}

/// A cluster laid out as Java Fluss lays one out: a coordinator and two tablet servers on ports of their own.
struct Nodes {
    coordinator: SocketAddr,
    tablets: Vec<SocketAddr>,
    topology: Arc<Topology>,
    cluster: Arc<Cluster>,
}

async fn java_layout(dir: &Path) -> Nodes {
    let cluster = Arc::new(Cluster::open(ClusterConfig::new(dir)).expect("open"));
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let (coordinator, tablets) = (bind().await, [bind().await, bind().await]);
    let address = |l: &TcpListener| l.local_addr().expect("addr");
    let topology = Topology::new(address(&coordinator), tablets.iter().map(address).collect()).expect("topology");
    let nodes = Nodes {
        coordinator: address(&coordinator),
        tablets: tablets.iter().map(address).collect(),
        topology: Arc::clone(&topology),
        cluster: Arc::clone(&cluster),
    };
    let door = FlussDoor::new(Arc::clone(&cluster)).as_coordinator(Arc::clone(&topology));
    tokio::spawn(door.serve(coordinator, std::future::pending()));
    for (i, listener) in tablets.into_iter().enumerate() {
        let door = FlussDoor::new(Arc::clone(&cluster)).as_tablet_server(Arc::clone(&topology), i as i32 + 1);
        tokio::spawn(door.serve(listener, std::future::pending()));
    }
    nodes
}

/// Against a coordinator and two tablet servers (each serving only its role's calls and its own buckets), pyfluss
/// writes through the bucket leaders, and the job, bootstrapped from a list whose first server is down, tiers every
/// offset once; with every leader moved, a job started afresh and one whose leaders are cached (the transport itself)
/// both follow them through MetaData.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_tiers_a_coordinator_and_tablet_servers_and_follows_moved_leaders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files(tempfile::tempdir().expect("tempdir"));
    let nodes = java_layout(&dir.path().join("cluster")).await;
    pyfluss(nodes.coordinator, &["create", "topo.plain", "3"]);
    pyfluss(nodes.coordinator, &["create", "topo.parts", "2", "region"]);
    pyfluss(nodes.coordinator, &["write", "topo.plain", "0", "60", &files.arg("plain-0.arrow")]);
    pyfluss(nodes.coordinator, &["write", "topo.parts", "0", "40", &files.arg("parts-0.arrow"), "EU"]);

    // Each node serves its role only: the coordinator no FetchLog, a tablet server no tiering heartbeat, and a
    // tablet server a bucket it does not lead answers NOT_LEADER_OR_FOLLOWER.
    let table_id = nodes.cluster.table_by_path(&"topo.plain".parse().expect("path")).expect("table").table_id;
    let fetch = m::FetchLogRequest::one_bucket(table_id, 0, 0, 1 << 20, 0);
    assert_eq!(Raw::connect(nodes.coordinator).await.call(1015, &fetch).await.error_code(), 2);
    let heartbeat = m::LakeTieringHeartbeatRequest::default();
    assert_eq!(Raw::connect(nodes.tablets[0]).await.call(1042, &heartbeat).await.error_code(), 2);
    let bucket0 = BucketId { table_id, partition_id: None, bucket: 0 };
    let (leader, _) = nodes.topology.leader(bucket0);
    let other = nodes.tablets[(leader % 2) as usize];
    let answer = Raw::connect(other).await.call(1015, &fetch).await;
    assert_eq!(answer.kind, 0, "a FetchLog answer, with the bucket's error in it");
    let resp = m::FetchLogResponse::decode(answer.body).expect("FetchLog answer");
    assert_eq!(resp.tables_resp[0].buckets_resp[0].error_code, Some(12), "NOT_LEADER_OR_FOLLOWER");

    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let url = format!("fluss://{dead},{}", nodes.coordinator);
    let warehouse = dir.path().join("lake");
    assert_success(&tier(&url, &warehouse, &[], &[]).await);

    // Every leader moves to the other tablet server; pyfluss writes more through the new leaders.
    let parts = nodes.cluster.table_by_path(&"topo.parts".parse().expect("path")).expect("table");
    let eu = parts.partitions.get("EU").copied();
    let mut buckets: Vec<BucketId> = (0..3).map(|bucket| BucketId { table_id, partition_id: None, bucket }).collect();
    buckets.extend((0..2).map(|bucket| BucketId { table_id: parts.table_id, partition_id: eu, bucket }));
    let move_all = || {
        for &b in &buckets {
            let (leader, _) = nodes.topology.leader(b);
            nodes.topology.move_leader(b, leader % 2 + 1).expect("move");
        }
    };
    // The transport with its leaders cached meets the move: it follows them.
    let transport = FlussCluster::connect(&url, Duration::from_secs(10)).await.expect("connect");
    let before = transport.list_offsets(table_id, None, &[0, 1, 2], true).await.expect("offsets");
    move_all();
    let fetched = transport.fetch((table_id, None, 0), 0, 1 << 20).await.expect("fetch from the new leader");
    assert_eq!(fetched.high_watermark, before[0]);
    move_all();
    let after = transport.list_offsets(table_id, None, &[0, 1, 2], true).await.expect("offsets from the new leaders");
    assert_eq!(after, before);
    move_all();

    pyfluss(nodes.coordinator, &["write", "topo.plain", "60", "100", &files.arg("plain-1.arrow")]);
    pyfluss(nodes.coordinator, &["write", "topo.parts", "40", "70", &files.arg("parts-1.arrow"), "EU"]);
    assert_success(&tier(&url, &warehouse, &[], &[]).await);

    for (table, written) in [("topo.plain", ["plain-0", "plain-1"]), ("topo.parts", ["parts-0", "parts-1"])] {
        let written = written.map(|w| read_arrow(&files.path(&format!("{w}.arrow"))));
        let written = concat_batches(&written[0].schema(), &written).expect("concat");
        let lake = read_lake(&warehouse, &table.parse().expect("path"));
        assert_same_rows(table, &written, &lake.rows);
        assert_dense(table, &positions(&lake.rows, "region"));
        let recorded = pyfluss(nodes.coordinator, &["lake", table]);
        assert_eq!(recorded["snapshot_id"].as_i64(), lake.current_snapshot_id, "{table}: {recorded}");
    }
}

/// A cluster of Fluss 0.9 serves no ScanKv: a primary-key table's buckets new to the lake cannot be read, so its
/// rounds fail with an error that says why, while the log table beside it tiers every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_scan_kv_a_primary_key_table_fails_with_the_reason_while_log_tables_tier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files(tempfile::tempdir().expect("tempdir"));
    let cluster = Arc::new(Cluster::open(ClusterConfig::new(dir.path().join("cluster"))).expect("open"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let door = FlussDoor::new(Arc::clone(&cluster)).without(&[fluss_tiering::fluss::ApiKey::ScanKv]);
    tokio::spawn(door.serve(listener, std::future::pending()));
    pyfluss(addr, &["create", "old.plain", "2"]);
    pyfluss(addr, &["pk-create", "old.kv", "2", "id"]);
    pyfluss(addr, &["write", "old.plain", "0", "30", &files.arg("plain.arrow")]);
    pyfluss(addr, &["upsert", "old.kv", "0", "20", "1"]);

    let warehouse = dir.path().join("lake");
    let out = tier(&format!("fluss://{addr}"), &warehouse, &[], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a --once job cannot catch up a table it cannot read");
    assert!(stderr.contains("is new to the lake, and its state is read with ScanKv"), "the error says why:\n{stderr}");
    assert!(stderr.contains("RocksDB snapshots"), "and what the cluster offers instead:\n{stderr}");
    let plain = read_lake(&warehouse, &"old.plain".parse().expect("path"));
    assert_same_rows("the log table", &read_arrow(&files.path("plain.arrow")), &plain.rows);
    assert!(!warehouse.join("old.db").join("kv").join("snapshot").exists(), "nothing of the primary-key table landed");
}

/// Every request the job sends over Fluss's protocol (a log table, a partitioned one, a primary-key table read with
/// ScanKv; heartbeats, prepare, commit) decodes with Google's protobuf runtime from a proto2 descriptor of Fluss's
/// messages (proto/fluss_wire.proto, Fluss's required labels): no required field missing, no field Fluss does not
/// know. A Java server would reject the first and misread the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_the_job_sends_decodes_with_a_strict_proto2_decoder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files(tempfile::tempdir().expect("tempdir"));
    let cluster = Arc::new(Cluster::open(ClusterConfig::new(dir.path().join("cluster"))).expect("open"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (proxy, _, recorded) = proxy(listener.local_addr().expect("addr"), None).await;
    // The door names the proxy in MetaData, so every connection goes through it.
    let door = FlussDoor::new(Arc::clone(&cluster)).advertise(proxy);
    tokio::spawn(door.serve(listener, std::future::pending()));
    pyfluss(proxy, &["create", "strict.plain", "2"]);
    pyfluss(proxy, &["create", "strict.parts", "2", "region"]);
    pyfluss(proxy, &["pk-create", "strict.kv", "2", "id"]);
    pyfluss(proxy, &["write", "strict.plain", "0", "30", &files.arg("plain.arrow")]);
    pyfluss(proxy, &["write", "strict.parts", "0", "20", &files.arg("parts.arrow"), "EU"]);
    pyfluss(proxy, &["upsert", "strict.kv", "0", "20", "1"]);
    // Only the job's requests: what pyfluss sent before each run is left out.
    let take = || std::mem::take(&mut *recorded.lock().expect("lock"));
    take();
    let warehouse = dir.path().join("lake");
    assert_success(&tier(&format!("fluss://{proxy}"), &warehouse, &[], &[]).await);
    let mut sent = take();
    pyfluss(proxy, &["upsert", "strict.kv", "10", "30", "2"]);
    take();
    assert_success(&tier(&format!("fluss://{proxy}"), &warehouse, &[], &[]).await);
    sent.extend(take());

    let requests = files.path("requests.jsonl");
    let lines: Vec<String> = sent
        .iter()
        .map(|(key, body)| {
            let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({"api_key": key, "body": hex}).to_string()
        })
        .collect();
    std::fs::write(&requests, lines.join("\n")).expect("write requests");
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/strict_decode.py"))
        .arg(env!("FLUSS_WIRE_DESCRIPTOR"))
        .arg(&requests)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "strict_decode.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("json");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["control"], "refused", "the decoder is strict: a request without its required field fails");
    assert_eq!(report["unknown_control"], "refused", "and a field Fluss does not know fails too");
    // Every tiering request, and every other kind the job sends, was seen and decoded.
    for (key, what) in [
        (1000, "ApiVersions"),
        (1003, "ListDatabases"),
        (1007, "GetTableInfo"),
        (1008, "ListTables"),
        (1009, "ListPartitionInfos"),
        (1012, "MetaData"),
        (1015, "FetchLog"),
        (1021, "ListOffsets"),
        (1030, "CommitLakeTableSnapshot"),
        (1032, "GetLakeSnapshot"),
        (1042, "LakeTieringHeartbeat"),
        (1052, "PrepareLakeTableSnapshot"),
        (1061, "ScanKv"),
    ] {
        let decoded = report["decoded"][key.to_string()].as_u64().unwrap_or(0);
        assert!(decoded > 0, "no {what} ({key}) request was decoded: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_whose_acknowledgement_is_lost_is_retried_by_pyfluss_and_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files(tempfile::tempdir().expect("tempdir"));
    let cluster = Arc::new(Cluster::open(ClusterConfig::new(dir.path())).expect("open"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let door_addr = listener.local_addr().expect("addr");
    let (proxy, dropped) = lossy_proxy(door_addr, 1014).await;
    // The door names the proxy in MetaData, so every connection pyfluss opens goes through it.
    let door = FlussDoor::new(Arc::clone(&cluster)).advertise(proxy);
    tokio::spawn(door.serve(listener, std::future::pending()));

    pyfluss(proxy, &["create", "lossy.t", "1"]);
    pyfluss(proxy, &["write", "lossy.t", "0", "40", &files.arg("written.arrow")]);
    assert!(dropped.load(Ordering::SeqCst), "an acknowledgement was lost on the way");
    pyfluss(proxy, &["scan", "lossy.t", "40", &files.arg("scan.arrow")]);
    let scanned = read_arrow(&files.path("scan.arrow"));
    assert_same_rows("after the retry", &read_arrow(&files.path("written.arrow")), &scanned);
    let offsets = pyfluss(proxy, &["offsets", "lossy.t"]);
    assert_eq!(offsets["latest"]["0"], 40, "the retried batch took its offsets once: {offsets}");
}

// ---- Primary-key tables -----------------------------------------------------------------------------------------

/// One change as pyfluss's log scanner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    partition: String,
    bucket: i64,
    offset: i64,
    change_type: i64,
    id: i64,
    version: i64,
}

const INSERT: i64 = 1;
const UPDATE_BEFORE: i64 = 2;
const UPDATE_AFTER: i64 = 3;
const DELETE: i64 = 4;

/// The changelog of a table, read by pyfluss until `records` changes arrived.
fn changelog(addr: SocketAddr, table: &str, records: usize) -> Vec<Change> {
    let out = pyfluss(addr, &["changelog", table, &records.to_string()]);
    let changes: Vec<Change> = out["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| Change {
            partition: r[0].as_str().expect("partition").to_string(),
            bucket: r[1].as_i64().expect("bucket"),
            offset: r[2].as_i64().expect("offset"),
            change_type: r[3].as_i64().expect("change type"),
            id: r[4].as_i64().expect("id"),
            version: r[5].as_i64().expect("version"),
        })
        .collect();
    assert_eq!(changes.len(), records, "{table}: the changelog holds exactly the changes the writes made");
    changes
}

/// Per key (partition, id): its bucket and its changes.
type ByKey<T> = std::collections::BTreeMap<(String, i64), (i64, Vec<T>)>;

/// Per key (partition, id): its changes in log order, as (change type, version), after checking that each key's
/// changes sit in one bucket and each bucket's offsets are unique.
fn changes_by_key(changes: &[Change]) -> ByKey<(i64, i64)> {
    let mut by_key: ByKey<(i64, i64, i64)> = Default::default();
    let mut seen = std::collections::BTreeSet::new();
    for c in changes {
        assert!(seen.insert((c.partition.clone(), c.bucket, c.offset)), "offset {c:?} once");
        let entry = by_key.entry((c.partition.clone(), c.id)).or_insert((c.bucket, Vec::new()));
        assert_eq!(entry.0, c.bucket, "every change of key {} in one bucket", c.id);
        entry.1.push((c.offset, c.change_type, c.version));
    }
    by_key
        .into_iter()
        .map(|(k, (b, mut v))| {
            v.sort_unstable();
            (k, (b, v.into_iter().map(|(_, t, ver)| (t, ver)).collect()))
        })
        .collect()
}

/// pyfluss's lookups of keys `from..to`: for each, the version its row equals, or `None` where it has none.
fn lookups(addr: SocketAddr, table: &str, range: std::ops::Range<i64>, partition: &str) -> Vec<Option<i64>> {
    let (from, to) = (range.start.to_string(), range.end.to_string());
    let out = pyfluss(addr, &["lookup", table, &from, &to, partition]);
    range
        .map(|i| {
            let v = &out["versions"][i.to_string()];
            assert!(v.is_null() || v.is_i64(), "key {i}: {v}");
            v.as_i64()
        })
        .collect()
}

fn versions(spans: &[(std::ops::Range<i64>, Option<i64>)]) -> Vec<Option<i64>> {
    spans.iter().flat_map(|(r, v)| r.clone().map(move |_| *v)).collect()
}

async fn pyfluss_primary_keys(format: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ClusterConfig::new(dir.path().join("cluster"));
    config.datalake_format = Some(format.into());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster = EmbeddedCluster::start_with(config.clone(), any, Some(any)).await.expect("start");
    let (grpc, fluss) = (cluster.addr(), cluster.fluss_addr().expect("the Fluss door is open"));

    // Paimon buckets a composite key; Iceberg only one column (besides the partition column).
    let key = if format == "paimon" { "id,code" } else { "id" };
    let created = pyfluss(fluss, &["pk-create", "kv.users", "3", key]);
    assert_eq!(created["properties"]["table.datalake.format"], format, "{created}");
    assert_eq!(created["properties"]["table.kv.format-version"], "2", "{created}");
    pyfluss(fluss, &["pk-create", "kv.regions", "2", "id", "region"]);

    // Inserts, updates, an upsert of identical rows, deletes of present and of absent keys.
    for args in [
        &["upsert", "kv.users", "0", "40", "1"][..],
        &["upsert", "kv.users", "10", "20", "2"],
        &["upsert", "kv.users", "0", "5", "1"],
        &["delete", "kv.users", "30", "35"],
        &["delete", "kv.users", "100", "103"],
        &["upsert", "kv.regions", "0", "20", "1", "EU"],
        &["upsert", "kv.regions", "20", "30", "1", "US"],
        &["upsert", "kv.regions", "5", "10", "3", "EU"],
        &["delete", "kv.regions", "0", "2", "EU"],
    ] {
        pyfluss(fluss, args);
    }
    let users = versions(&[
        (0..10, Some(1)),
        (10..20, Some(2)),
        (20..30, Some(1)),
        (30..35, None),
        (35..40, Some(1)),
        (40..45, None),
    ]);
    assert_eq!(lookups(fluss, "kv.users", 0..45, ""), users, "every column of every key as written");
    let eu = versions(&[(0..2, None), (2..5, Some(1)), (5..10, Some(3)), (10..20, Some(1))]);
    assert_eq!(lookups(fluss, "kv.regions", 0..20, "EU"), eu);
    assert_eq!(lookups(fluss, "kv.regions", 20..30, "US"), vec![Some(1); 10]);

    // The changelog as a Java tablet server writes it: +I, -U/+U (for an identical row too: the default merge
    // engine keeps the new row), -D; nothing for absent keys.
    let changes = changelog(fluss, "kv.users", 75);
    let by_key = changes_by_key(&changes);
    for ((_, id), (_, seq)) in &by_key {
        let expected: &[(i64, i64)] = match id {
            0..5 => &[(INSERT, 1), (UPDATE_BEFORE, 1), (UPDATE_AFTER, 1)],
            10..20 => &[(INSERT, 1), (UPDATE_BEFORE, 1), (UPDATE_AFTER, 2)],
            30..35 => &[(INSERT, 1), (DELETE, 1)],
            _ => &[(INSERT, 1)],
        };
        assert_eq!(seq, expected, "key {id}'s changes");
    }
    assert_eq!(by_key.len(), 40);
    // Writes that changed nothing still took an offset each (a writer's sequence goes on).
    let ends = pyfluss(fluss, &["offsets", "kv.users"])["latest"].clone();
    let end_sum: i64 = ends.as_object().expect("latest").values().map(|v| v.as_i64().expect("offset")).sum();
    assert!(end_sum > 75, "empty batches for the deletes of absent keys: {ends}");
    let regions = changes_by_key(&changelog(fluss, "kv.regions", 42));
    assert_eq!(regions[&("EU".to_string(), 0)].1, vec![(INSERT, 1), (DELETE, 1)]);
    assert_eq!(regions[&("EU".to_string(), 7)].1, vec![(INSERT, 1), (UPDATE_BEFORE, 1), (UPDATE_AFTER, 3)]);

    // Through a restart: the state and the changelog are kept, and writes go on from them.
    cluster.shutdown().await.expect("shutdown");
    let _cluster = EmbeddedCluster::start_with(config, grpc, Some(fluss)).await.expect("restart");
    pyfluss(fluss, &["upsert", "kv.users", "40", "45", "1"]);
    let after: Vec<Option<i64>> = [&users[..40], &[Some(1); 5]].concat();
    assert_eq!(lookups(fluss, "kv.users", 0..45, ""), after);
    let changes = changelog(fluss, "kv.users", 80);
    let by_key = changes_by_key(&changes);
    assert_eq!(by_key.len(), 45);

    if format != "paimon" {
        // Fluss's own bucketing (a table of no lake format, or Lance's), whose hash mixes a key's tail bytes one by
        // one: keys whose compacted bytes end in bytes of 0x80 and above (-1, 128, 200, 300, …) are where fluss-rs
        // and a Java client differ; pyfluss's writes land only if our buckets are pyfluss's.
        pyfluss(fluss, &["pk-create", "kv.plain", "3", "id", "", "lance"]);
        pyfluss(fluss, &["upsert", "kv.plain", "-5", "310", "1"]);
        assert_eq!(lookups(fluss, "kv.plain", -5..310, ""), vec![Some(1); 315]);
        // The Iceberg lake does not take primary-key tables (tests/primary_keys.rs), and a Paimon lake refuses keys
        // bucketed the Iceberg way: its readers would look for them in other buckets.
        let out = tier(&format!("http://{grpc}"), &dir.path().join("lake"), &["--format", "paimon"], &[]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("bucketed for iceberg"), "{stderr}");
        return;
    }
    // The job tiers the table over Fluss's protocol (each bucket new to the lake read with ScanKv, then its
    // changelog after the scan's offset); pypaimon finds each live key once, in the bucket pyfluss put it in.
    let warehouse = dir.path().join("lake");
    assert_success(&tier(&format!("fluss://{fluss}"), &warehouse, &[], &[]).await);
    let lake = by_id(&read_lake(&warehouse, &"kv.users".parse().expect("path")).rows);
    let ids = lake.column_by_name("id").expect("id").as_any().downcast_ref::<Int64Array>().expect("ids").clone();
    let names = cast(lake.column_by_name("name").expect("name"), &arrow::datatypes::DataType::Utf8).expect("utf8");
    let names = names.as_any().downcast_ref::<StringArray>().expect("names");
    let buckets =
        cast(lake.column_by_name("__bucket").expect("__bucket"), &arrow::datatypes::DataType::Int64).expect("cast");
    let buckets = buckets.as_any().downcast_ref::<Int64Array>().expect("buckets");
    let live: Vec<i64> = (0..45).filter(|i| after[*i as usize].is_some()).collect();
    assert_eq!(ids.values().to_vec(), live, "the lake's keys are the live keys");
    for i in 0..lake.num_rows() {
        let id = ids.value(i);
        let version = after[id as usize].expect("live");
        assert_eq!(names.value(i), format!("v{version}-{id}"), "key {id}'s row");
        assert_eq!(buckets.value(i), by_key[&(String::new(), id)].0, "key {id} in the bucket pyfluss chose");
    }
    // The raw files hold each change at most once, each at an offset the changelog gave it (or -1: a row of the
    // scan, each key at most once).
    let raw = common::read_lake_raw(&warehouse, &"kv.users".parse().expect("path")).rows;
    let logged: std::collections::BTreeSet<(i64, i64)> = changes.iter().map(|c| (c.bucket, c.offset)).collect();
    let raw_buckets =
        cast(raw.column_by_name("__bucket").expect("__bucket"), &arrow::datatypes::DataType::Int64).expect("cast");
    let raw_buckets = raw_buckets.as_any().downcast_ref::<Int64Array>().expect("buckets");
    let raw_offsets =
        raw.column_by_name("__offset").expect("__offset").as_any().downcast_ref::<Int64Array>().expect("offsets");
    let raw_ids = raw.column_by_name("id").expect("id").as_any().downcast_ref::<Int64Array>().expect("ids").clone();
    let mut in_files = std::collections::BTreeSet::new();
    for i in 0..raw.num_rows() {
        let at = (raw_buckets.value(i), raw_offsets.value(i));
        let once = if at.1 == -1 { (at.0, -1 - raw_ids.value(i)) } else { at };
        assert!(in_files.insert(once), "change {at:?} (key {}) once in the raw files", raw_ids.value(i));
        assert!(at.1 == -1 || logged.contains(&at), "change {at:?} is one the changelog holds");
    }
    assert!(raw_offsets.iter().any(|o| o == Some(-1)), "the buckets new to the lake started from a scan");

    // Two timely processes: a split of a scanned bucket runs where the planner holds the scan (worker 0), and the
    // lake is the same key by key.
    let ports = common::free_ports(2);
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).expect("hostfile");
    let (hostfile, n2, url) = (hostfile.display().to_string(), dir.path().join("lake-n2"), format!("fluss://{fluss}"));
    let (args0, args1) = (["-n", "2", "-p", "0", "-h", &hostfile], ["-n", "2", "-p", "1", "-h", &hostfile]);
    let (p0, p1) = tokio::join!(tier(&url, &n2, &args0, &[]), tier(&url, &n2, &args1, &[]));
    assert_success(&p0);
    assert_success(&p1);
    let again = by_id(&read_lake(&n2, &"kv.users".parse().expect("path")).rows);
    for column in ["id", "name", "__bucket"] {
        let (a, b) = (again.column_by_name(column).expect("column"), lake.column_by_name(column).expect("column"));
        assert_eq!(a.as_ref(), b.as_ref(), "two processes tier the same {column}s");
    }
    // A read filtered on each key (pypaimon prunes buckets by its own hash) finds it: Paimon's bucketing agrees.
    let keys: Vec<serde_json::Value> =
        live.iter().map(|id| serde_json::json!({"id": id, "code": format!("c{}", id % 3)})).collect();
    let filtered = common::read_lake_each_key(&warehouse, &"kv.users".parse().expect("path"), &keys);
    // (Each read planned one bucket of three: pypaimon did prune, so a key in another bucket would not be found.)
    assert_eq!(filtered.per_key, vec![(1, 1); live.len()], "every live key found by a bucket-pruned read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyfluss_upserts_deletes_and_looks_up_paimon_bucketed_keys_through_a_restart_and_the_job_tiers_them() {
    pyfluss_primary_keys("paimon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyfluss_upserts_deletes_and_looks_up_iceberg_bucketed_keys_through_a_restart() {
    pyfluss_primary_keys("iceberg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_kv_whose_acknowledgement_is_lost_is_retried_by_pyfluss_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Arc::new(Cluster::open(ClusterConfig::new(dir.path())).expect("open"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let door_addr = listener.local_addr().expect("addr");
    let (proxy, dropped) = lossy_proxy(door_addr, 1016).await;
    let door = FlussDoor::new(Arc::clone(&cluster)).advertise(proxy);
    tokio::spawn(door.serve(listener, std::future::pending()));

    pyfluss(proxy, &["pk-create", "lossy.kv", "1", "id"]);
    pyfluss(proxy, &["upsert", "lossy.kv", "0", "30", "1"]);
    assert!(dropped.load(Ordering::SeqCst), "an acknowledgement was lost on the way");
    // Applied a second time, the retried batch would log -U/+U of every key and take offsets of its own.
    assert_eq!(lookups(proxy, "lossy.kv", 0..30, ""), vec![Some(1); 30]);
    let changes = changes_by_key(&changelog(proxy, "lossy.kv", 30));
    assert!(changes.values().all(|(_, seq)| seq == &[(INSERT, 1)]), "{changes:?}");
    let id = cluster.table_by_path(&"lossy.kv".parse().expect("path")).expect("table").table_id;
    let end =
        cluster.list_offset(fluss_tiering::cluster::BucketId { table_id: id, partition_id: None, bucket: 0 }, true);
    assert_eq!(end.expect("end offset"), 30, "the retried batch took its offsets once");
}

/// KV records of keys `ids` with `name = "{tag}{id}"`, as a Fluss client encodes them for `table`; `None` tags
/// delete.
fn kv_records(
    table: &fluss_tiering::model::table::TableDescriptor,
    ids: &[i64],
    tag: Option<&str>,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use fluss_tiering::model::compacted;
    let keys = fluss_tiering::model::bucketing::PrimaryKeys::of(table).expect("keys");
    let names: Vec<String> = ids.iter().map(|i| format!("{}{i}", tag.unwrap_or_default())).collect();
    let batch = RecordBatch::try_new(
        table.arrow_schema(),
        vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(names))],
    )
    .expect("batch");
    let types: Vec<_> = table.columns.iter().map(|c| c.data_type).collect();
    let values = compacted::encode_rows(&compacted::cells_of(&batch, &types).expect("cells"), ids.len()).expect("rows");
    let encoded = keys.encode(&keys.columns_of(batch.columns())).expect("keys");
    encoded.into_iter().zip(values).map(|(k, v)| (k, tag.map(|_| v))).collect()
}

fn put_kv(
    table_id: i64,
    bucket_id: i32,
    schema_id: i16,
    writer: Option<(i64, i32)>,
    records: &[(Vec<u8>, Option<Vec<u8>>)],
) -> m::PutKvRequest {
    use fluss_tiering::model::kv_record::{KvRecord, encode};
    let records: Vec<KvRecord> = records.iter().map(|(k, v)| KvRecord { key: k, value: v.as_deref() }).collect();
    m::PutKvRequest {
        acks: -1,
        table_id,
        timeout_ms: 30_000,
        target_columns: vec![],
        buckets_req: vec![m::PbPutKvReqForBucket {
            partition_id: None,
            bucket_id,
            records: encode(schema_id, writer, &records).expect("encode").into(),
        }],
        agg_mode: None,
    }
}

/// `(error code, error message, log end offset)` of a one-bucket PutKv answer.
fn put(answer: &Answer) -> (Option<i32>, String, Option<i64>) {
    let resp: m::PutKvResponse = answer.ok();
    let b = &resp.buckets_resp[0];
    (b.error_code, b.error_message.clone().unwrap_or_default(), b.log_end_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_in_the_wrong_bucket_with_foreign_keys_or_repeated_late_are_refused_or_answered_without_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, cluster, _stop) = door(dir.path()).await;
    let mut c = Raw::connect(addr).await;
    let db = m::CreateDatabaseRequest { database_name: "raw".into(), ignore_if_exists: false, database_json: None };
    let _: m::EmptyResponse = c.call(1001, &db).await.ok();
    let path = m::PbTablePath { database_name: "raw".into(), table_name: "kv".into() };
    let json = TABLE_JSON.replace(r#""highest_field_id":1"#, r#""highest_field_id":1,"primary_key":["id"]"#);
    let create =
        m::CreateTableRequest { table_path: path.clone(), table_json: json.into_bytes(), ignore_if_exists: false };
    let _: m::EmptyResponse = c.call(1005, &create).await.ok();
    let info = cluster.table_by_path(&"raw.kv".parse().expect("path")).expect("table");
    let (id, schema_id, d) = (info.table_id, info.descriptor.schema_id(), info.descriptor.clone());
    let keys = fluss_tiering::model::bucketing::PrimaryKeys::of(&d).expect("keys");
    let v1 = kv_records(&d, &[1], Some("v1-"));
    let home = keys.bucket_of(&v1[0].0, d.buckets) as i32;

    // Writer 5: v1, then v2, then a late repeat of v1's batch: answered, not applied over v2.
    let (code, msg, end) = put(&c.call(1016, &put_kv(id, home, schema_id, Some((5, 0)), &v1)).await);
    assert_eq!((code, end), (None, Some(1)), "{msg}");
    let v2 = kv_records(&d, &[1], Some("v2-"));
    assert_eq!(put(&c.call(1016, &put_kv(id, home, schema_id, Some((5, 1)), &v2)).await).2, Some(3), "-U, +U");
    assert_eq!(put(&c.call(1016, &put_kv(id, home, schema_id, Some((5, 0)), &v1)).await).2, Some(3), "a repeat");
    let lookup = m::LookupRequest {
        table_id: id,
        buckets_req: vec![m::PbLookupReqForBucket { partition_id: None, bucket_id: home, keys: vec![v1[0].0.clone()] }],
        insert_if_not_exists: None,
    };
    let found: m::LookupResponse = c.call(1017, &lookup).await.ok();
    let value = found.buckets_resp[0].values[0].values.clone().expect("key 1 has a row");
    assert_eq!(i16::from_le_bytes([value[0], value[1]]), schema_id);
    let types: Vec<_> = d.columns.iter().map(|c| c.data_type).collect();
    let row = fluss_tiering::model::compacted::decode_rows([&value[2..]], &d.arrow_schema(), &types).expect("row");
    let names = row.column(1).as_any().downcast_ref::<StringArray>().expect("names");
    assert_eq!(names.value(0), "v2-1", "the state follows the log, not the late repeat");

    // A delete of an absent key changes nothing, yet takes an offset (the writer's sequence goes on).
    let absent = kv_records(&d, &[1000], None);
    let absent_home = keys.bucket_of(&absent[0].0, d.buckets) as i32;
    let before = cluster
        .list_offset(fluss_tiering::cluster::BucketId { table_id: id, partition_id: None, bucket: absent_home }, true)
        .expect("end");
    let (code, msg, end) = put(&c.call(1016, &put_kv(id, absent_home, schema_id, Some((6, 0)), &absent)).await);
    assert_eq!((code, end), (None, Some(before + 1)), "{msg}");

    // Refused, each with its reason, the connection still usable.
    let other = (home + 1) % d.buckets as i32;
    let (code, msg, _) = put(&c.call(1016, &put_kv(id, other, schema_id, None, &v2)).await);
    assert!(code == Some(1000) && msg.contains(&format!("belongs in bucket {home}")), "{code:?} {msg}");
    let mut foreign = kv_records(&d, &[1], Some("x"));
    foreign[0].0 = kv_records(&d, &[2], Some("x"))[0].0.clone();
    let (code, msg, _) = put(&c.call(1016, &put_kv(id, home, schema_id, None, &foreign)).await);
    assert!(code.is_some() && msg.contains("not its row's primary key"), "{code:?} {msg}");
    let mut partial = put_kv(id, home, schema_id, None, &v2);
    partial.target_columns = vec![0];
    let (code, msg, _) = put(&c.call(1016, &partial).await);
    assert!(code == Some(35) && msg.contains("partial updates"), "{code:?} {msg}");
    let mut corrupt = put_kv(id, home, schema_id, None, &v2);
    let mut bytes = corrupt.buckets_req[0].records.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    corrupt.buckets_req[0].records = bytes.into();
    let (code, msg, _) = put(&c.call(1016, &corrupt).await);
    assert!(code.is_some() && msg.contains("crc"), "{code:?} {msg}");
    let (code, msg, _) = put(&c.call(1016, &put_kv(id, home, schema_id + 1, None, &v2)).await);
    assert_eq!(code, Some(9), "SCHEMA_NOT_EXIST: {msg}");
    // Nothing refused was applied: key 1 still has its one row, v2.
    let found: m::LookupResponse = c.call(1017, &lookup).await.ok();
    let value = found.buckets_resp[0].values[0].values.clone().expect("key 1 has a row");
    let row = fluss_tiering::model::compacted::decode_rows([&value[2..]], &d.arrow_schema(), &types).expect("row");
    assert_eq!(row.column(1).as_any().downcast_ref::<StringArray>().expect("names").value(0), "v2-1");
    let log_table = produce(id, 0, batch(0..1, schema_id, None));
    assert!(produced(&c.call(1014, &log_table).await).0.is_some(), "ProduceLog into a primary-key table");

    // ScanKv (Fluss 1.0): the bucket's rows one batch at a time, consistent with the log offset of the first answer.
    let more = kv_records(&d, &(10..40).collect::<Vec<_>>(), Some("s"));
    let mut expected = std::collections::BTreeSet::from(["v2-1".to_string()]);
    for (i, (k, v)) in (10..).zip(&more) {
        if keys.bucket_of(k, d.buckets) as i32 == home {
            let _ = c.call(1016, &put_kv(id, home, schema_id, None, &[(k.clone(), v.clone())])).await;
            expected.insert(format!("s{i}"));
        }
    }
    let end = cluster
        .list_offset(fluss_tiering::cluster::BucketId { table_id: id, partition_id: None, bucket: home }, true)
        .expect("end");
    let (current, _) = cluster
        .scan_kv(fluss_tiering::cluster::BucketId { table_id: id, partition_id: None, bucket: home })
        .expect("scan");
    let scan = |scanner_id: Option<Vec<u8>>, call_seq_id: i32| m::ScanKvRequest {
        bucket_scan_req: scanner_id.is_none().then_some(m::PbScanReqForBucket {
            table_id: id,
            partition_id: None,
            bucket_id: home,
            limit: None,
        }),
        scanner_id,
        call_seq_id: Some(call_seq_id),
        batch_size_bytes: Some(1),
        close_scanner: None,
    };
    let first: m::ScanKvResponse = c.call(1061, &scan(None, 0)).await.ok();
    assert_eq!((first.error_code, first.log_offset), (None, Some(end)), "{first:?}");
    let mut values =
        fluss_tiering::model::kv_record::parse_values(first.records.as_deref().expect("rows")).expect("values");
    let scanner = first.scanner_id.clone().expect("more to read");
    let wrong: m::ScanKvResponse = c.call(1061, &scan(Some(scanner.clone()), 5)).await.ok();
    assert_eq!(wrong.error_code, Some(68), "a call out of sequence");
    let mut seq = 1;
    while let Some(true) = {
        let next: m::ScanKvResponse = c.call(1061, &scan(Some(scanner.clone()), seq)).await.ok();
        assert_eq!(next.error_code, None, "{next:?}");
        values.extend(
            fluss_tiering::model::kv_record::parse_values(next.records.as_deref().expect("rows")).expect("values"),
        );
        seq += 1;
        next.has_more_results
    } {}
    assert_eq!(values, current, "every row once, in key order");
    let names: std::collections::BTreeSet<String> = values
        .iter()
        .map(|v| {
            let row = fluss_tiering::model::compacted::decode_rows([&v[2..]], &d.arrow_schema(), &types).expect("row");
            row.column(1).as_any().downcast_ref::<StringArray>().expect("names").value(0).to_string()
        })
        .collect();
    assert_eq!(names, expected);
    let gone: m::ScanKvResponse = c.call(1061, &scan(Some(scanner), seq)).await.ok();
    assert_eq!(gone.error_code, Some(67), "an ended scan's id is unknown");
    let mut both = scan(None, 0);
    both.scanner_id = Some(b"x".to_vec());
    assert_eq!(c.call(1061, &both).await.ok::<m::ScanKvResponse>().error_code, Some(68));

    // GetLatestKvSnapshots: every bucket, none snapshotted yet (a snapshot every 100,000 changes).
    let latest: m::GetLatestKvSnapshotsResponse =
        c.call(1023, &m::GetLatestKvSnapshotsRequest { table_path: path.clone(), partition_name: None }).await.ok();
    assert_eq!(latest.table_id, id);
    assert_eq!(
        latest.latest_snapshots.iter().map(|s| (s.bucket_id, s.snapshot_id)).collect::<Vec<_>>(),
        vec![(0, None), (1, None)]
    );

    // After a column is added, a writer still on the old schema is served: its rows read the new column as null.
    let column = fluss_tiering::model::table::Column {
        name: "extra".into(),
        data_type: fluss_tiering::model::table::ColumnType::Int32,
    };
    cluster.add_column(&"raw.kv".parse().expect("path"), column).expect("add column");
    let v3 = kv_records(&d, &[1], Some("v3-"));
    let (code, msg, _) = put(&c.call(1016, &put_kv(id, home, schema_id, None, &v3)).await);
    assert_eq!(code, None, "a write of the old schema: {msg}");
    let now = cluster.table_by_path(&"raw.kv".parse().expect("path")).expect("table").descriptor;
    let found: m::LookupResponse = c.call(1017, &lookup).await.ok();
    let value = found.buckets_resp[0].values[0].values.clone().expect("key 1 has a row");
    assert_eq!(i16::from_le_bytes([value[0], value[1]]), now.schema_id(), "answered in the current schema");
    let types: Vec<_> = now.columns.iter().map(|c| c.data_type).collect();
    let row = fluss_tiering::model::compacted::decode_rows([&value[2..]], &now.arrow_schema(), &types).expect("row");
    assert_eq!(row.column(1).as_any().downcast_ref::<StringArray>().expect("names").value(0), "v3-1");
    assert!(row.column(2).is_null(0), "the added column reads null");
}
