//! End to end, in each lake format: produce into a cluster, run the `tier` command, read the lake back with a reader
//! that is not ours (pypaimon, pyiceberg).

mod common;

/// Runs an `async fn(format)` as one test per lake format.
/// Each format over Fluss's protocol (the job's default transport), and Paimon over gRPC too.
macro_rules! for_each_format {
    ($name:ident, $run:expr) => {
        mod $name {
            use super::Transport;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn paimon() {
                ($run)("paimon", Transport::Fluss).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn iceberg() {
                ($run)("iceberg", Transport::Fluss).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn paimon_over_grpc() {
                ($run)("paimon", Transport::Grpc).await
            }
        }
    };
}

use std::time::Duration;

use common::*;
use fluss_tiering::failpoint;

for_each_format!(three_tables_exactly_once_then_only_the_delta, super::exactly_once_then_only_the_delta);
async fn exactly_once_then_only_the_delta(format: &str, transport: Transport) {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 3000).await;

    // Small splits: each bucket's range is cut into several sub-ranges, all committed in the round's one snapshot.
    assert_success(
        &tier(&transport.url(&cluster), &warehouse, &["--format", format, "-w", "2", "--split-rows", "170"], &[]).await,
    );
    let mut first_snapshots = Vec::new();
    for t in &tables {
        let lake = read_lake(&warehouse, &t.path);
        check_exactly_once(&lake, t, &end_offsets(&client, t).await, 3000);
        assert_eq!(lake.properties.get("fluss-table-id").and_then(|v| v.as_str()), Some(t.id.to_string().as_str()));
        assert!(lake.properties.contains_key("fluss-offsets") && lake.properties.contains_key("fluss-tiering-epoch"));
        first_snapshots.push(lake.snapshots);
        // The cluster knows the lake's snapshot.
        let recorded = client.lake_snapshot(&t.path).await.expect("snapshot").expect("recorded");
        assert_eq!(Some(recorded.snapshot_id), lake.current_snapshot_id);
    }

    // More data: the next run adds exactly the delta, in new snapshots (one per round; a round that outlives the
    // tables' 200 ms freshness commits what it read and another round follows).
    produce_all(&client, &tables, 3000, 1200).await;
    assert_success(&tier(&transport.url(&cluster), &warehouse, &["--format", format, "-w", "2"], &[]).await);
    for (t, before) in tables.iter().zip(first_snapshots) {
        let lake = read_lake(&warehouse, &t.path);
        check_exactly_once(&lake, t, &end_offsets(&client, t).await, 4200);
        assert!(lake.snapshots > before, "{}: the delta went into new snapshots", t.path);
    }

    // Nothing new: a run finishes without touching the lake.
    assert_success(&tier(&transport.url(&cluster), &warehouse, &["--format", format], &[]).await);
    for t in &tables {
        assert_eq!(read_lake(&warehouse, &t.path).rows.num_rows(), 4200);
    }
}

/// Sorts lake rows by (partition value, bucket, offset) so runs can be compared.
fn canonical(t: &TestTable, lake: &LakeTable) -> arrow::array::RecordBatch {
    use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
    let b = &lake.rows;
    let mut keys = Vec::new();
    if let Some(key) = &t.descriptor.partition_key {
        keys.push(SortColumn { values: b.column_by_name(key).expect("key").clone(), options: None });
    }
    for name in ["__bucket", "__offset"] {
        keys.push(SortColumn { values: b.column_by_name(name).expect("system column").clone(), options: None });
    }
    let indices = lexsort_to_indices(&keys, None).expect("sort");
    take_record_batch(b, &indices).expect("take")
}

for_each_format!(
    same_lake_content_with_one_worker_two_workers_and_two_processes,
    super::same_content_whatever_the_workers
);
async fn same_content_whatever_the_workers(format: &str, transport: Transport) {
    let Setup { dir, cluster, client, tables, .. } = setup().await;
    produce_all(&client, &tables, 0, 2500).await;
    let url = transport.url(&cluster);

    // One cluster, three lakes: each lake starts empty, so each run tiers everything (the lake is the source of truth).
    let (w1, w2, n2) = (dir.path().join("w1"), dir.path().join("w2"), dir.path().join("n2"));
    // One split at a time per worker: a finished split must start the next one (regression: it once waited forever).
    assert_success(&tier(&url, &w1, &["--format", format, "-w", "1", "--max-splits-per-worker", "1"], &[]).await);
    assert_success(&tier(&url, &w2, &["--format", format, "-w", "2", "--split-rows", "100"], &[]).await);

    let ports = free_ports(2);
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).expect("hostfile");
    let hostfile = hostfile.display().to_string();
    let args0 = ["--format", format, "-n", "2", "-p", "0", "-h", &hostfile];
    let args1 = ["--format", format, "-n", "2", "-p", "1", "-h", &hostfile];
    let p0 = tier(&url, &n2, &args0, &[]);
    let p1 = tier(&url, &n2, &args1, &[]);
    let (p0, p1) = tokio::join!(p0, p1);
    assert_success(&p0);
    assert_success(&p1);

    for t in &tables {
        let ends = end_offsets(&client, t).await;
        let lakes: Vec<LakeTable> = [&w1, &w2, &n2].iter().map(|w| read_lake(w, &t.path)).collect();
        for lake in &lakes {
            check_exactly_once(lake, t, &ends, 2500);
        }
        let reference = canonical(t, &lakes[0]);
        assert_eq!(canonical(t, &lakes[1]), reference, "{}: -w 2 equals -w 1", t.path);
        assert_eq!(canonical(t, &lakes[2]), reference, "{}: -n 2 equals -w 1", t.path);
    }
}

/// Crashes the job at `point`, produces a little more, restarts it, and checks the lake and the cluster.
async fn crash_then_recover(point: &str, format: &str, transport: Transport) {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 2000).await;

    let args = ["--format", format, "-w", "2"];
    let crashed = tier(&transport.url(&cluster), &warehouse, &args, &[(failpoint::ENV, point)]).await;
    assert_eq!(
        crashed.status.code(),
        Some(failpoint::EXIT_CODE),
        "the job stops at {point}: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );

    produce_all(&client, &tables, 2000, 500).await;
    assert_success(&tier(&transport.url(&cluster), &warehouse, &args, &[]).await);
    check_lake_and_cluster(&client, &warehouse, &tables, 2500).await;
}

for_each_format!(crash_mid_split, |f, t| super::crash_then_recover(super::failpoint::POINTS[0], f, t));
for_each_format!(crash_after_files_before_lake_commit, |f, t| super::crash_then_recover(
    super::failpoint::POINTS[2],
    f,
    t
));
for_each_format!(crash_between_lake_commit_and_cluster_commit, |f, t| super::crash_then_recover(
    super::failpoint::POINTS[3],
    f,
    t
));
for_each_format!(crash_after_cluster_commit, |f, t| super::crash_then_recover(super::failpoint::POINTS[4], f, t));

/// A job frozen at `point` past the heartbeat time-out (a zombie), while a second job takes its tables over and
/// tiers everything; then the zombie resumes. Returns the zombie's stderr.
async fn zombie_resumes_after_takeover(point: &str, format: &str, transport: Transport) -> String {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 1500).await;

    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let pause = [(failpoint::ENV, format!("{point}:pause"))];
    let args = ["--format", format, "--once", "--max-tables", "1"];
    let mut zombie = spawn_tier(&transport.url(&cluster), &warehouse, &args, &pause, &stderr);
    wait_stopped(&mut zombie, point).await;

    // Its heartbeats stop; after the time-out another job gets the tables under new epochs.
    produce_all(&client, &tables, 1500, 300).await;
    assert_success(&tier(&transport.url(&cluster), &warehouse, &["--format", format, "-w", "2"], &[]).await);

    signal(&zombie, libc::SIGCONT);
    let status = wait_exit(zombie, Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(stderr.path()).expect("zombie log");
    assert!(status.success(), "the zombie ends cleanly after its round is refused:\n{log}");
    check_lake_and_cluster(&client, &warehouse, &tables, 1800).await;
    log
}

for_each_format!(zombie_lake_commit_is_refused_when_the_lake_moved, super::zombie_lake_commit_is_refused);
async fn zombie_lake_commit_is_refused(format: &str, transport: Transport) {
    let log = zombie_resumes_after_takeover("before-lake-commit", format, transport).await;
    // Iceberg: the fenced catalog refuses a commit on a table that moved. Paimon: the zombie's claim on its base was
    // taken over, or the lake moved. Or, thawed past its lake time-out, the zombie's commit is cut by the time-out at
    // its first wait, before it publishes (outcome unknown: its files are kept). Either way the lake check above
    // found every row once.
    let refusals = [
        "the table moved",
        "another commit reached lake table",
        "expired or was taken over",
        "the lake table moved",
        "the lake commit took longer than",
    ];
    assert!(
        log.contains("round not committed") && refusals.iter().any(|r| log.contains(r)),
        "the zombie's commit was refused:\n{log}"
    );
}

for_each_format!(stale_job_cannot_commit_to_the_cluster, super::stale_job_is_fenced);
async fn stale_job_is_fenced(format: &str, transport: Transport) {
    let log = zombie_resumes_after_takeover("after-lake-commit", format, transport).await;
    assert!(log.contains("is fenced"), "the zombie's cluster commit was refused under its stale epoch:\n{log}");
}

/// The schema files of a Paimon table, oldest first, as JSON.
fn paimon_schemas(warehouse: &std::path::Path, table: &str) -> Vec<serde_json::Value> {
    let dir = warehouse.join("db.db").join(table).join("schema");
    let mut ids: Vec<u64> = std::fs::read_dir(&dir)
        .expect("schema dir")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("schema-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    let read = |id: u64| std::fs::read(dir.join(format!("schema-{id}"))).expect("read schema");
    ids.into_iter().map(|id| serde_json::from_slice(&read(id)).expect("schema json")).collect()
}

/// Fluss's coordinator creates a table's lake table itself (Fluss 0.9: the Fluss columns, then `__bucket INT`,
/// `__offset BIGINT`, `__timestamp TIMESTAMP_LTZ(3)`, all nullable; `bucket = -1`, `partition.legacy-name = false`,
/// the Fluss properties as `fluss.*`, and no table id of ours). The job adopts it and tiers into it, every offset
/// once; a column the Fluss table gains goes before the system columns, where Fluss's coordinator adds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_tiers_into_the_lake_table_fluss_created() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    let create = format!(
        r#"
import pyarrow as pa
from pypaimon import CatalogFactory, Schema
c = CatalogFactory.create({{"warehouse": "file://{w}"}})
c.create_database("db", True)
fields = [("id", pa.int64()), ("customer", pa.string()), ("amount", pa.decimal128(10, 2)), ("ts", pa.timestamp("us")),
          ("__bucket", pa.int32()), ("__offset", pa.int64()), ("__timestamp", pa.timestamp("ms", tz="UTC"))]
options = {{"bucket": "-1", "partition.legacy-name": "false", "fluss.table.datalake.enabled": "true",
           "fluss.table.datalake.format": "paimon", "fluss.table.datalake.freshness": "200ms"}}
c.create_table("db.orders", Schema.from_pyarrow_schema(pa.schema(fields), options=options), False)
"#,
        w = warehouse.display()
    );
    let out = std::process::Command::new(python()).arg("-c").arg(&create).output().expect("python");
    assert!(out.status.success(), "creating the lake table as Fluss does: {}", String::from_utf8_lossy(&out.stderr));
    produce_all(&client, &tables, 0, 1000).await;
    assert_success(&tier(&job_url(&cluster), &warehouse, &["--format", "paimon"], &[]).await);
    check_lake_and_cluster(&client, &warehouse, &tables, 1000).await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["alter-table", "--cluster", &cluster.url(), "--table", "db.orders", "--add-column", "note:string"])
        .output()
        .expect("alter-table");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let orders = &tables[0];
    let (_, descriptor) = client.table_info(&orders.path).await.expect("info");
    let evolved = TestTable { id: orders.id, path: orders.path.clone(), descriptor };
    produce_all(&client, std::slice::from_ref(&evolved), 1000, 300).await;
    assert_success(&tier(&job_url(&cluster), &warehouse, &["--format", "paimon"], &[]).await);
    check_exactly_once(&read_lake(&warehouse, &orders.path), orders, &end_offsets(&client, orders).await, 1300);
    let schemas = paimon_schemas(&warehouse, "orders");
    let latest = schemas.last().expect("a schema");
    let names: Vec<&str> =
        latest["fields"].as_array().expect("fields").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["id", "customer", "amount", "ts", "note", "__bucket", "__offset", "__timestamp"]);
    assert!(latest["options"].get("fluss.table-id").is_none(), "the table is left as Fluss made it: {latest}");
    assert_eq!(latest["fields"][7]["type"], "TIMESTAMP(3) WITH LOCAL TIME ZONE", "{latest}");
    check_lake_and_cluster(&client, &warehouse, &tables[1..], 1000).await;

    // The tables the job created are laid out as Fluss's coordinator lays them out, with our table id besides.
    let ours = paimon_schemas(&warehouse, "clicks").pop().expect("a schema");
    let fields: Vec<(&str, &str)> = ours["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| Some((f["name"].as_str()?, f["type"].as_str()?)))
        .filter(|(name, _)| name.starts_with("__"))
        .collect();
    assert_eq!(
        fields,
        [("__bucket", "INT"), ("__offset", "BIGINT"), ("__timestamp", "TIMESTAMP(3) WITH LOCAL TIME ZONE")]
    );
    let options = &ours["options"];
    assert_eq!((options["partition.legacy-name"].as_str(), options["bucket"].as_str()), (Some("false"), Some("-1")));
    assert_eq!(options["fluss.table.datalake.freshness"], "200ms", "the Fluss properties as fluss.*: {ours}");
    assert_eq!(options["fluss.table-id"], tables[1].id.to_string(), "{ours}");
}

/// The newest metadata file of an Iceberg table of `db`, as JSON (our catalog puts tables in `WAREHOUSE/db/T`,
/// pyiceberg's in `WAREHOUSE/db.db/T`).
fn iceberg_metadata(warehouse: &std::path::Path, table: &str) -> serde_json::Value {
    let newest = ["db", "db.db"]
        .iter()
        .flat_map(|db| std::fs::read_dir(warehouse.join(db).join(table).join("metadata")).into_iter().flatten())
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).expect("mtime"))
        .expect("a metadata file");
    serde_json::from_slice(&std::fs::read(newest).expect("read")).expect("metadata json")
}

/// The source column names of the default partition spec and of the default sort order of an Iceberg table.
fn iceberg_layout(metadata: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let name = |id: &serde_json::Value| -> String {
        let schema = metadata["schemas"].as_array().expect("schemas").last().expect("a schema");
        let field = schema["fields"].as_array().expect("fields").iter().find(|f| f["id"] == *id).expect("field");
        field["name"].as_str().expect("name").to_string()
    };
    let pick = |list: &str, default: &str, id_key: &str| -> Vec<String> {
        let chosen = metadata[list].as_array().expect(list).iter().find(|s| s[id_key] == metadata[default]);
        chosen.expect("the default")["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .map(|f| name(&f["source-id"]))
            .collect()
    };
    (pick("partition-specs", "default-spec-id", "spec-id"), pick("sort-orders", "default-sort-order-id", "order-id"))
}

/// Iceberg tables as Fluss lays them out: the job creates them so (identity on the partition key, then on
/// `__bucket`; sorted by `__offset`), and tiers into one that Fluss's coordinator created (no table id of ours),
/// every offset once either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_tables_are_laid_out_as_fluss_lays_them_out_and_fluss_s_own_are_adopted() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    std::fs::create_dir_all(&warehouse).expect("warehouse");
    let create = format!(
        r#"
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import DecimalType, IntegerType, LongType, NestedField, StringType, TimestampType, TimestamptzType
c = SqlCatalog("fluss", uri="sqlite:///{w}/catalog.db", warehouse="file://{w}")
c.create_namespace("db")
schema = Schema(
    NestedField(1, "id", LongType(), required=False), NestedField(2, "customer", StringType(), required=False),
    NestedField(3, "amount", DecimalType(10, 2), required=False), NestedField(4, "ts", TimestampType(), required=False),
    NestedField(5, "__bucket", IntegerType(), required=True), NestedField(6, "__offset", LongType(), required=True),
    NestedField(7, "__timestamp", TimestamptzType(), required=True))
spec = PartitionSpec(PartitionField(source_id=5, field_id=1000, transform=IdentityTransform(), name="__bucket"))
c.create_table("db.orders", schema, partition_spec=spec, sort_order=SortOrder(SortField(source_id=6)))
"#,
        w = warehouse.display()
    );
    let out = std::process::Command::new(python()).arg("-c").arg(&create).output().expect("python");
    assert!(out.status.success(), "creating the lake table as Fluss does: {}", String::from_utf8_lossy(&out.stderr));
    produce_all(&client, &tables, 0, 1000).await;
    assert_success(&tier(&job_url(&cluster), &warehouse, &["--format", "iceberg"], &[]).await);
    check_lake_and_cluster(&client, &warehouse, &tables, 1000).await;

    let theirs = iceberg_metadata(&warehouse, "orders");
    assert!(theirs["properties"].get("fluss.table-id").is_none(), "Fluss's table is left as it was: {theirs}");
    let bucket_offset = (vec!["__bucket".to_string()], vec!["__offset".to_string()]);
    assert_eq!(iceberg_layout(&theirs), bucket_offset);
    assert_eq!(iceberg_layout(&iceberg_metadata(&warehouse, "sensors")), bucket_offset, "ours, unpartitioned");
    let clicks = (vec!["region".to_string(), "__bucket".to_string()], vec!["__offset".to_string()]);
    assert_eq!(iceberg_layout(&iceberg_metadata(&warehouse, "clicks")), clicks, "ours, partitioned");
}

/// The first lake commit lands, then reports an error, as if its reply had been lost: the one commit driver looks in
/// the lake, finds its own round there and goes on, in either format, without committing the round twice.
async fn lake_commit_whose_reply_is_lost_is_found_not_repeated(format: &str) {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 1000).await;
    let faults = [(failpoint::ENV, "lake-commit-reply:error")];
    let out = tier(&job_url(&cluster), &warehouse, &["--format", format, "--max-tables", "1"], &faults).await;
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("commit reported an error but landed"), "{format}: the committer looked in the lake:\n{log}");
    check_lake_and_cluster(&client, &warehouse, &tables, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_commit_whose_reply_is_lost_is_found_in_the_lake_not_repeated() {
    lake_commit_whose_reply_is_lost_is_found_not_repeated("paimon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_commit_whose_reply_is_lost_is_found_in_the_lake_not_repeated() {
    lake_commit_whose_reply_is_lost_is_found_not_repeated("iceberg").await;
}

/// The text of one value as Arrow shows it (`""` for null).
fn shown(batch: &arrow::array::RecordBatch, column: &str, row: usize) -> String {
    let array = batch.column_by_name(column).unwrap_or_else(|| panic!("no column {column}"));
    arrow::util::display::array_value_to_string(array, row).expect("display")
}

/// Runs `fluss-tiering produce --cluster URL ARGS` and checks it succeeded.
fn produce_command(url: &str, args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["produce", "--cluster", url])
        .args(args)
        .output()
        .expect("produce");
    assert!(out.status.success(), "produce {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Research data: a TPC-H table from the standard generator (`produce --dataset`), and a user's own Parquet and CSV
/// files written by pyarrow (`produce --from`), into tables the command creates, then one tiering run: pypaimon reads
/// exactly the source's rows, value for value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_and_users_files_reach_the_lake_value_for_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, _client) = start_cluster(&dir.path().join("cluster")).await;
    let (url, warehouse) = (cluster.url(), dir.path().join("warehouse"));
    produce_command(&url, &["--table", "tpch.lineitem", "--dataset", "tpch:lineitem", "--scale-factor", "0.01"]);

    // 500 rows, written by pyarrow: a null every 17 names, a comma and a quote in every name (CSV quoting).
    const ROWS: usize = 500;
    let (parquet, csv) = (dir.path().join("data.parquet"), dir.path().join("data.csv"));
    let script = "import datetime, decimal, sys\n\
        import pyarrow as pa, pyarrow.csv, pyarrow.parquet\n\
        n = int(sys.argv[3])\n\
        t = pa.table({\n\
        \x20   'id': pa.array(range(n), pa.int64()),\n\
        \x20   'name': [None if i % 17 == 0 else f'n,\"{i}\"' for i in range(n)],\n\
        \x20   'price': pa.array([decimal.Decimal(i * 125) / 100 for i in range(n)], pa.decimal128(10, 2)),\n\
        \x20   'day': [datetime.date(2026, 1, 1) + datetime.timedelta(days=i) for i in range(n)],\n\
        \x20   'ok': [i % 3 == 0 for i in range(n)],\n\
        \x20   'x': [i + 0.5 for i in range(n)],\n\
        })\n\
        pyarrow.parquet.write_table(t, sys.argv[1])\n\
        pyarrow.csv.write_csv(t, sys.argv[2])\n";
    let out = std::process::Command::new(python())
        .args(["-c", script])
        .args([&parquet, &csv])
        .arg(ROWS.to_string())
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parquet_arg = parquet.display().to_string();
    produce_command(&url, &["--table", "files.parquet", "--from", &parquet_arg, "--buckets", "3"]);
    let csv_arg = csv.display().to_string();
    let schema = "id:int64,name:string,price:decimal(10,2),day:date,ok:bool,x:float64";
    produce_command(&url, &["--table", "files.csv", "--from", &csv_arg, "--schema", schema]);

    // An existing table takes only a source with its columns: the refusal names the one missing.
    let partial = dir.path().join("partial.csv");
    std::fs::write(&partial, "id,name,price,day,x\n1,a,1.00,2026-01-01,0.5\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["produce", "--cluster", &url, "--table", "files.parquet", "--from"])
        .arg(&partial)
        .output()
        .expect("produce");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no column ok"), "{err}");

    // A load that fails part-way says how many rows landed: batches of 3, one bucket, a bad value in row 11.
    let bad = dir.path().join("bad.csv");
    let lines: Vec<String> = (1..=10).map(|i| i.to_string()).chain(["x".to_string()]).collect();
    std::fs::write(&bad, format!("id\n{}\n", lines.join("\n"))).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["produce", "--cluster", &url, "--table", "files.bad", "--schema", "id:int64", "--batch", "3", "--from"])
        .arg(&bad)
        .output()
        .expect("produce");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("acknowledged 9 rows") && err.contains("x"), "{err}");

    assert_success(&tier(&url, &warehouse, &["--now"], &[]).await);
    let landed = read_lake(&warehouse, &"files.bad".parse().expect("path"));
    let ids: Vec<String> = (0..landed.rows.num_rows()).map(|r| shown(&landed.rows, "id", r)).collect();
    assert_eq!(ids, (1..=9).map(|i| i.to_string()).collect::<Vec<_>>(), "the prefix the error counted, in order");

    // TPC-H: the generator's row count, and every 97th row field by field.
    let lake = read_lake(&warehouse, &"tpch.lineitem".parse().expect("path"));
    let expected: Vec<String> =
        tpchgen::generators::LineItemGenerator::new(0.01, 1, 1).iter().map(|l| l.to_string()).collect();
    assert_eq!(lake.rows.num_rows(), expected.len(), "every generated row once");
    let rows = &lake.rows;
    let by_key: std::collections::HashMap<(String, String), usize> =
        (0..rows.num_rows()).map(|i| ((shown(rows, "l_orderkey", i), shown(rows, "l_linenumber", i)), i)).collect();
    assert_eq!(by_key.len(), expected.len(), "no (order, line) twice");
    let columns = fluss_tiering::model::table::parse_schema(fluss_tiering::dataset::TPCH_TABLES[7].1).expect("schema");
    let columns: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    for line in expected.iter().step_by(97) {
        let fields: Vec<&str> = line.split('|').collect();
        let row = by_key[&(fields[0].to_string(), fields[3].to_string())];
        for (c, name) in columns.iter().enumerate() {
            let (got, want) = (shown(rows, name, row), fields[c]);
            let same =
                got == want || got.parse::<f64>().ok().zip(want.parse::<f64>().ok()).is_some_and(|(a, b)| a == b);
            assert!(same, "{name} of {line}: the lake has {got:?}");
        }
    }

    // The files: every row once with the values pyarrow wrote.
    for table in ["files.parquet", "files.csv"] {
        let lake = read_lake(&warehouse, &table.parse().expect("path"));
        let rows = &lake.rows;
        assert_eq!(rows.num_rows(), ROWS, "{table}");
        let days = arrow::compute::cast(rows.column_by_name("day").expect("day"), &arrow::datatypes::DataType::Int32)
            .expect("days");
        let days = days.as_any().downcast_ref::<arrow::array::Int32Array>().expect("int32");
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..ROWS {
            let i: usize = shown(rows, "id", r).parse().expect("id");
            assert!(seen.insert(i), "{table}: id {i} twice");
            let name = rows.column_by_name("name").expect("name");
            match i % 17 {
                0 => assert!(name.is_null(r), "{table}: name of {i} is null"),
                _ => assert_eq!(shown(rows, "name", r), format!("n,\"{i}\""), "{table}"),
            }
            assert_eq!(shown(rows, "price", r), format!("{}.{:02}", i * 125 / 100, i * 125 % 100), "{table}");
            assert_eq!(days.value(r), 20454 + i as i32, "{table}: day of {i}");
            assert_eq!(shown(rows, "ok", r), i.is_multiple_of(3).to_string(), "{table}");
            assert_eq!(shown(rows, "x", r), format!("{}", i as f64 + 0.5), "{table}");
        }
    }
}
