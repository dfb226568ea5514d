//! Primary-key tables end to end: upserts and deletes in the cluster, tiered into Paimon primary-key tables, read
//! back merged by pypaimon and compared key by key with the generator's replayed state.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, Int32Array, Int64Array};
use arrow::compute::{SortColumn, cast, lexsort_to_indices, take_record_batch};
use common::*;
use fluss_tiering::cluster::ClusterConfig;
use fluss_tiering::dataflows::JobReport;
use fluss_tiering::failpoint;
use fluss_tiering::model::bucketing::PrimaryKeys;
use fluss_tiering::model::table::{TableDescriptor, TablePath, parse_schema};
use fluss_tiering::rpc::ClusterClient;
use fluss_tiering::serve::EmbeddedCluster;
use fluss_tiering::workload::{KvMix, ProduceOptions, produce};

const MIX: KvMix = KvMix { update: 0.4, delete: 0.15 };

struct KvSetup {
    dir: tempfile::TempDir,
    warehouse: std::path::PathBuf,
    cluster: EmbeddedCluster,
    client: ClusterClient,
    tables: Vec<TestTable>,
}

/// A cluster taking KV snapshots every 250 changes, with a bucketed and a partitioned primary-key table.
async fn kv_setup() -> KvSetup {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ClusterConfig::new(dir.path().join("cluster"));
    config.heartbeat_timeout = Duration::from_millis(1500);
    config.failure_backoff = Duration::from_millis(200);
    config.kv_snapshot_every = 250;
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster = EmbeddedCluster::start_with(config, any, Some(any)).await.expect("start cluster");
    let client = ClusterClient::connect(&cluster.url()).await.expect("connect");
    let specs = [
        ("db.users", "id:int64,name:string,score:float64,ts:timestamp", 3, None, vec!["id"]),
        (
            "db.accounts",
            "id:int64,region:string,balance:decimal(12,2),ok:bool",
            2,
            Some("region"),
            vec!["id", "region"],
        ),
    ];
    let mut tables = Vec::new();
    for (name, schema, buckets, partition_key, key) in specs {
        let mut descriptor = TableDescriptor {
            columns: parse_schema(schema).expect("schema"),
            buckets,
            partition_key: partition_key.map(str::to_string),
            primary_key: key.into_iter().map(str::to_string).collect(),
            properties: Default::default(),
        };
        descriptor.properties.insert("table.datalake.freshness".into(), "300ms".into());
        let path: TablePath = name.parse().expect("path");
        let id = client.create_table(&path, &descriptor, false).await.expect("create table");
        // As the cluster holds it: with the options that say how its keys are bucketed.
        let (_, descriptor) = client.table_info(&path).await.expect("table info");
        tables.push(TestTable { id, path, descriptor });
    }
    KvSetup { warehouse: dir.path().join("warehouse"), dir, cluster, client, tables }
}

async fn upsert_all(client: &ClusterClient, tables: &[TestTable], start_row: u64, rows: u64) {
    for t in tables {
        let opts = ProduceOptions { start_row, rows, batch: 400, rate: None, concurrency: 4, kv: MIX };
        let report = produce(client, t.id, &t.descriptor, &WORKLOAD, &opts).await.expect("produce");
        assert_eq!(report.rows, rows);
    }
}

/// The lake table (read merged by pypaimon) equals the generator's state after `rows` rows: the same keys, and for
/// each key the values of the row that last upserted it, in the bucket of its key.
fn check_state(warehouse: &std::path::Path, t: &TestTable, rows: u64) {
    check_state_added(warehouse, t, rows, None);
}

/// `check_state`, where `added = (column, row)` names a column added when row `row` was produced: keys last written
/// before then read it as null.
fn check_state_added(warehouse: &std::path::Path, t: &TestTable, rows: u64, added: Option<(&str, u64)>) {
    let lake = read_lake(warehouse, &t.path);
    let state: BTreeMap<u64, u64> = WORKLOAD.kv_state(rows, MIX);
    let batch = &lake.rows;
    assert_eq!(batch.num_rows(), state.len(), "{}: one row per live key", t.path);
    let ids = batch.column_by_name("id").expect("id").clone();
    let sorted = take_record_batch(
        batch,
        &lexsort_to_indices(&[SortColumn { values: ids, options: None }], None).expect("sort"),
    )
    .expect("take");
    let lake_ids = sorted.column_by_name("id").expect("id").as_any().downcast_ref::<Int64Array>().expect("int64");
    let keys: Vec<i64> = state.keys().map(|k| *k as i64).collect();
    assert_eq!(lake_ids.values().to_vec(), keys, "{}: the lake's keys are the live keys", t.path);
    let buckets = sorted.column_by_name("__bucket").expect("bucket").as_any().downcast_ref::<Int32Array>();
    let pk = PrimaryKeys::of(&t.descriptor).expect("keys");
    let expected_buckets = pk.buckets(&pk.columns_by_name(&sorted).expect("key columns"), t.descriptor.buckets);
    for (i, (k, b)) in keys.iter().zip(expected_buckets.expect("buckets")).enumerate() {
        assert_eq!(buckets.expect("int32").value(i), b as i32, "key {k}'s bucket");
    }
    let pairs: Vec<(u64, u64)> = state.iter().map(|(k, r)| (*r, *k)).collect();
    let expected = WORKLOAD.kv_batch(&t.descriptor, &pairs).expect("expected rows");
    for (i, field) in expected.schema().fields().iter().enumerate() {
        let got = cast(sorted.column_by_name(field.name()).expect("column"), field.data_type()).expect("cast");
        let mut want = expected.column(i).clone();
        if let Some((column, since)) = added.filter(|(c, _)| *c == field.name()) {
            let before: arrow::array::BooleanArray = pairs.iter().map(|(r, _)| Some(*r < since)).collect();
            want = arrow::compute::nullif(&want, &before).expect("nullif");
            assert!(want.null_count() > 0 && want.null_count() < want.len(), "{column}: old and new rows both");
        }
        assert_eq!(got.as_ref(), want.as_ref(), "{}: column {} key by key", t.path, field.name());
    }
}

async fn tier_report(url: &str, warehouse: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> JobReport {
    let report = tempfile::NamedTempFile::new().expect("report file");
    let path = report.path().display().to_string();
    let mut all = vec!["--report-json", path.as_str()];
    all.extend_from_slice(args);
    assert_success(&tier(url, warehouse, &all, env).await);
    serde_json::from_str(&std::fs::read_to_string(report.path()).expect("report")).expect("report JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_and_deletes_reach_paimon_as_the_final_state_key_by_key() {
    let KvSetup { dir: _dir, warehouse, cluster, client, tables } = kv_setup().await;
    upsert_all(&client, &tables, 0, 3000).await;
    let changelog: i64 = {
        let mut n = 0;
        for t in &tables {
            n += end_offsets(&client, t).await.values().sum::<i64>();
        }
        n
    };

    // First tiering of tables with data: every bucket starts from its KV snapshot, then the changelog after it.
    let first = tier_report(&job_url(&cluster), &warehouse, &["-w", "2"], &[]).await;
    for t in &tables {
        check_state(&warehouse, t, 3000);
    }
    // The lake tables as Fluss's coordinator makes them: Paimon buckets by the key less the partition key.
    for (table, bucket_key) in [("users", "id"), ("accounts", "id")] {
        let dir = warehouse.join("db.db").join(table).join("schema");
        let schema: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("schema-0")).expect("schema")).expect("json");
        assert_eq!(schema["options"]["bucket-key"], bucket_key, "{table}: {schema}");
        assert!(schema["options"].get("changelog-producer").is_none(), "no changelog promised: {schema}");
    }
    // users: 3 buckets; accounts: 2 buckets in each of the generator's 3 partitions. Every one has had more than
    // 250 changes, so every one has a snapshot to start from.
    assert_eq!(first.snapshot_splits, 3 + 2 * 3, "every bucket starts from its snapshot: {first:?}");
    assert!(
        (first.changes_read as i64) < changelog,
        "starting from snapshots reads less than the whole changelog ({} of {changelog}): {first:?}",
        first.changes_read
    );
    assert!(first.rows <= first.changes_read, "consolidation writes at most one row per change");

    // More upserts and deletes, over several rounds: the lake follows the state.
    for (start, rows) in [(3000, 1500), (4500, 700)] {
        upsert_all(&client, &tables, start, rows).await;
        let later = tier_report(&job_url(&cluster), &warehouse, &["-w", "2"], &[]).await;
        assert_eq!(later.snapshot_splits, 0, "buckets the lake has are read from the changelog");
        assert!(later.rows < later.changes_read, "updates of one key in one round cost one write: {later:?}");
        for t in &tables {
            check_state(&warehouse, t, start + rows);
        }
    }
}

/// Crashes the job at `point` while it tiers primary-key tables, writes more, restarts it: the lake equals the state.
/// Over gRPC the crashed round is the first (a KV snapshot, then the changelog after it). Over Fluss's protocol a
/// bucket new to the lake is read whole with ScanKv, at the bucket's end (no changelog in that round to crash in, and
/// only snapshot rows in the lake), so a first round puts the buckets in the lake and the crashed one reads changes.
async fn kv_crash_then_recover(point: &str, transport: Transport) {
    let KvSetup { dir: _dir, warehouse, cluster, client, tables } = kv_setup().await;
    let url = transport.url(&cluster);
    upsert_all(&client, &tables, 0, 1000).await;
    if transport == Transport::Fluss {
        assert_success(&tier(&url, &warehouse, &["-w", "2"], &[]).await);
    }
    upsert_all(&client, &tables, 1000, 500).await;
    let crashed = tier(&url, &warehouse, &["-w", "2"], &[(failpoint::ENV, point)]).await;
    assert_eq!(crashed.status.code(), Some(failpoint::EXIT_CODE), "{}", String::from_utf8_lossy(&crashed.stderr));
    upsert_all(&client, &tables, 1500, 600).await;
    assert_success(&tier(&url, &warehouse, &["-w", "2"], &[]).await);
    for t in &tables {
        check_state(&warehouse, t, 2100);
        check_changes_at_most_once(&warehouse, t);
        let recorded = client.lake_snapshot(&t.path).await.expect("snapshot").expect("recorded");
        assert_eq!(Some(recorded.snapshot_id), read_lake(&warehouse, &t.path).current_snapshot_id);
    }
}

/// In the raw files (not the merged read, which would hide a change committed twice), each change of the changelog
/// (partition, bucket, `__offset`) appears at most once across the committed snapshots. Rows from a KV snapshot
/// carry offset -1 and are not changes.
fn check_changes_at_most_once(warehouse: &std::path::Path, t: &TestTable) {
    let raw = read_lake_raw(warehouse, &t.path).rows;
    let buckets = raw.column_by_name("__bucket").expect("__bucket");
    let buckets = cast(buckets, &arrow::datatypes::DataType::Int32).expect("int32");
    let buckets = buckets.as_any().downcast_ref::<Int32Array>().expect("int32");
    let offsets =
        cast(raw.column_by_name("__offset").expect("__offset"), &arrow::datatypes::DataType::Int64).expect("i64");
    let offsets = offsets.as_any().downcast_ref::<Int64Array>().expect("int64");
    let partitions = t.descriptor.partition_key.as_ref().map(|k| {
        cast(raw.column_by_name(k).expect("partition column"), &arrow::datatypes::DataType::Utf8).expect("utf8")
    });
    let mut seen: BTreeMap<(String, i32, i64), u32> = BTreeMap::new();
    for i in 0..raw.num_rows() {
        if offsets.value(i) < 0 {
            continue;
        }
        let partition = partitions
            .as_ref()
            .map(|p| p.as_any().downcast_ref::<arrow::array::StringArray>().expect("utf8").value(i).to_string())
            .unwrap_or_default();
        *seen.entry((partition, buckets.value(i), offsets.value(i))).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "{}: changes committed more than once: {twice:?}", t.path);
    assert!(!seen.is_empty(), "{}: the raw files hold changes", t.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_mid_split() {
    kv_crash_then_recover(failpoint::POINTS[0], Transport::Fluss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_mid_split_over_grpc() {
    kv_crash_then_recover(failpoint::POINTS[0], Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_before_lake_commit() {
    kv_crash_then_recover(failpoint::POINTS[2], Transport::Fluss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_before_lake_commit_over_grpc() {
    kv_crash_then_recover(failpoint::POINTS[2], Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_between_lake_commit_and_cluster_commit() {
    kv_crash_then_recover(failpoint::POINTS[3], Transport::Fluss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_between_lake_commit_and_cluster_commit_over_grpc() {
    kv_crash_then_recover(failpoint::POINTS[3], Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_after_cluster_commit() {
    kv_crash_then_recover(failpoint::POINTS[4], Transport::Fluss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crash_after_cluster_commit_over_grpc() {
    kv_crash_then_recover(failpoint::POINTS[4], Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_reaches_the_primary_key_lake_table_and_older_keys_read_null() {
    let KvSetup { dir: _dir, warehouse, cluster, client, tables } = kv_setup().await;
    let users = &tables[0];
    upsert_all(&client, std::slice::from_ref(users), 0, 1200).await;
    assert_success(&tier(&job_url(&cluster), &warehouse, &[], &[]).await);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["alter-table", "--cluster", &cluster.url(), "--table", "db.users", "--add-column", "note:string"])
        .output()
        .expect("alter-table");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, descriptor) = client.table_info(&users.path).await.expect("info");
    let evolved = TestTable { id: users.id, path: users.path.clone(), descriptor };
    // The cluster rebuilds the buckets' state in the new schema; updates of old keys carry the new column.
    upsert_all(&client, std::slice::from_ref(&evolved), 1200, 800).await;
    assert_success(&tier(&job_url(&cluster), &warehouse, &[], &[]).await);
    check_state_added(&warehouse, &evolved, 2000, Some(("note", 1200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_refuses_primary_key_tables_with_a_clear_error_while_log_tables_tier() {
    let KvSetup { dir: _dir, warehouse, cluster, client, tables } = kv_setup().await;
    upsert_all(&client, &tables[..1], 0, 500).await;
    let logs = create_tables(&client).await;
    produce_all(&client, &logs, 0, 800).await;

    let out = tier(&job_url(&cluster), &warehouse, &["--format", "iceberg", "--max-tables", "4"], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a --once job cannot catch up a table it cannot tier");
    assert!(stderr.contains("its rounds will fail"), "the job says so at start:\n{stderr}");
    assert!(stderr.contains("cannot commit delete files"), "the error says why:\n{stderr}");
    assert!(stderr.contains("--format paimon"), "and what to do:\n{stderr}");
    for t in &logs {
        check_exactly_once(&read_lake(&warehouse, &t.path), t, &end_offsets(&client, t).await, 800);
    }
}
