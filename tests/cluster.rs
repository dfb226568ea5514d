//! The cluster as a client sees it: a real server on an ephemeral loopback port, driven over gRPC.

use std::time::Duration;

use arrow::array::Array;

use fluss_tiering::ErrorKind;
use fluss_tiering::cluster::ClusterConfig;
use fluss_tiering::model::table::{TableDescriptor, TablePath, parse_schema};
use fluss_tiering::rpc::ClusterClient;
use fluss_tiering::rpc::proto::{self, LakeTieringHeartbeatRequest, PbHeartbeatReqForTable};
use fluss_tiering::serve::EmbeddedCluster;
use fluss_tiering::workload::{KvMix, ProduceOptions, Workload, produce};

fn descriptor(schema: &str, buckets: u32, partition_key: Option<&str>, freshness: &str) -> TableDescriptor {
    let mut d = TableDescriptor {
        columns: parse_schema(schema).expect("schema"),
        buckets,
        partition_key: partition_key.map(str::to_string),
        primary_key: vec![],
        properties: Default::default(),
    };
    d.properties.insert("table.datalake.freshness".into(), freshness.into());
    d
}

fn config(dir: &std::path::Path) -> ClusterConfig {
    let mut c = ClusterConfig::new(dir);
    c.segment_bytes = 64 << 10; // small segments: many rolls
    c.heartbeat_timeout = Duration::from_millis(600);
    c.failure_backoff = Duration::from_millis(300);
    c
}

async fn start(dir: &std::path::Path) -> (EmbeddedCluster, ClusterClient) {
    let cluster = EmbeddedCluster::start(config(dir)).await.expect("start cluster");
    let client = ClusterClient::connect(&cluster.url()).await.expect("connect");
    (cluster, client)
}

/// Every `id` stored in a bucket, in offset order, read with the job's own reader (which checks that offsets are
/// dense from 0), up to the bucket's high watermark.
async fn read_ids(
    client: &ClusterClient,
    descriptor: &TableDescriptor,
    table_id: i64,
    partition_id: Option<i64>,
    bucket: i32,
) -> Vec<i64> {
    use fluss_tiering::model::tiering::{LogReader, TieringCluster};
    let cluster: std::sync::Arc<dyn TieringCluster> = std::sync::Arc::new(client.clone());
    let mut reader = LogReader::new(cluster, (table_id, partition_id, bucket), 0, None, 16 << 10);
    let (mut ids, mut offset) = (Vec::new(), 0);
    while let Some(batches) = reader.next().await.expect("fetch") {
        for b in batches {
            assert_eq!(b.base_offset, offset, "batches are contiguous");
            let batch = fluss_tiering::model::record::LogRecordBatch::parse(b.records.clone()).expect("a Fluss batch");
            batch.check_crc().expect("stored batches keep their crc");
            assert_eq!(batch.header().base_offset, b.base_offset, "the stored batch carries its offset");
            let x = batch.decode(&descriptor.arrow_schema()).expect("stored records decode").records;
            assert_eq!(x.num_rows() as i64, b.record_count);
            let col = x.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().expect("id column");
            ids.extend(col.values().iter().copied());
            offset += b.record_count;
        }
    }
    // The reader stopped at an empty answer: one at the high watermark.
    let last = client.fetch(table_id, partition_id, bucket, offset, 16 << 10).await.expect("fetch");
    assert!(last.batches.is_empty() && last.high_watermark == offset, "fetch stops only at the high watermark");
    ids
}

async fn produce_rows(client: &ClusterClient, table_id: i64, d: &TableDescriptor, start_row: u64, rows: u64) {
    let opts = ProduceOptions { start_row, rows, batch: 97, rate: None, concurrency: 4, kv: KvMix::default() };
    let report = produce(client, table_id, d, &Workload { seed: 42, partitions: 3 }, &opts).await.expect("produce");
    assert_eq!(report.rows, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_round_trip_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: TablePath = "db.events".parse().expect("path");
    let d = descriptor("id:int64,name:string,amount:decimal(10,2),ok:bool,ts:timestamp", 4, None, "1h");
    let (cluster, client) = start(dir.path()).await;
    let table_id = client.create_table(&path, &d, false).await.expect("create");
    produce_rows(&client, table_id, &d, 0, 3000).await;

    let check = |ids: Vec<i64>, bucket: i64, upto: i64| {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        let expected: Vec<i64> = (0..upto).filter(|r| r % 4 == bucket).collect();
        assert_eq!(sorted, expected, "bucket {bucket} holds exactly its rows");
    };
    for b in 0..4 {
        check(read_ids(&client, &d, table_id, None, b).await, i64::from(b), 3000);
    }
    let ends = client.list_offsets(table_id, None, &[0, 1, 2, 3], true).await.expect("offsets");
    assert_eq!(ends.iter().sum::<i64>(), 3000);

    // Restart: every acknowledged record is still there and offsets continue.
    cluster.shutdown().await.expect("shutdown");
    let (cluster, client) = start(dir.path()).await;
    assert_eq!(client.list_offsets(table_id, None, &[0, 1, 2, 3], true).await.expect("offsets"), ends);
    produce_rows(&client, table_id, &d, 3000, 1000).await;
    for b in 0..4 {
        check(read_ids(&client, &d, table_id, None, b).await, i64::from(b), 4000);
    }
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_created_on_demand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: TablePath = "db.parted".parse().expect("path");
    let d = descriptor("id:int64,region:string,v:float64", 2, Some("region"), "1h");
    let (_cluster, client) = start(dir.path()).await;
    let table_id = client.create_table(&path, &d, false).await.expect("create");
    produce_rows(&client, table_id, &d, 0, 900).await;
    let partitions = client.list_partitions(&path).await.expect("partitions");
    assert_eq!(partitions.len(), 3);
    let w = Workload { seed: 42, partitions: 3 };
    let mut total = 0;
    for (pid, name) in partitions {
        for b in 0..2 {
            let ids = read_ids(&client, &d, table_id, Some(pid), b).await;
            for id in &ids {
                assert_eq!(
                    Workload::partition_name(
                        w.partition_of(*id as u64),
                        fluss_tiering::model::table::ColumnType::String
                    ),
                    name
                );
                assert_eq!(*id % 2, i64::from(b));
            }
            total += ids.len();
        }
    }
    assert_eq!(total, 900);
    // Rows of one partition sent under another's name are refused.
    let batch = w.batch(&d, &[0]).expect("batch");
    let wrong = Workload::partition_name((w.partition_of(0) + 1) % 3, fluss_tiering::model::table::ColumnType::String);
    let err = client.produce(table_id, Some(&wrong), 0, &[batch]).await.expect_err("wrong partition");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_on_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: TablePath = "db.torn".parse().expect("path");
    let d = descriptor("id:int64,name:string", 1, None, "1h");
    let (cluster, client) = start(dir.path()).await;
    let table_id = client.create_table(&path, &d, false).await.expect("create");
    let w = Workload { seed: 1, partitions: 1 };
    for i in 0..5u64 {
        let batch = w.batch(&d, &[i * 2, i * 2 + 1]).expect("batch");
        client.produce(table_id, None, 0, &[batch]).await.expect("produce");
    }
    cluster.shutdown().await.expect("shutdown");

    // A crash mid-append leaves half an entry: cut the newest segment short.
    let bucket_dir = dir.path().join(format!("log/t{table_id}/p-/b0"));
    let mut segments: Vec<_> = std::fs::read_dir(&bucket_dir).expect("ls").map(|e| e.expect("entry").path()).collect();
    segments.sort();
    let newest = segments.last().expect("segment");
    let len = std::fs::metadata(newest).expect("meta").len();
    std::fs::OpenOptions::new().write(true).open(newest).expect("open").set_len(len - 7).expect("truncate");

    let (_cluster, client) = start(dir.path()).await;
    assert_eq!(client.list_offsets(table_id, None, &[0], true).await.expect("offsets"), vec![8]);
    assert_eq!(read_ids(&client, &d, table_id, None, 0).await, (0..8).collect::<Vec<_>>());
    let batch = w.batch(&d, &[100]).expect("batch");
    let appended = client.produce(table_id, None, 0, &[batch]).await.expect("produce");
    assert_eq!(appended.base_offset, 8, "offsets continue after the torn tail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: TablePath = "db.strict".parse().expect("path");
    let d = descriptor("id:int64,name:string", 2, None, "1h");
    let (_cluster, client) = start(dir.path()).await;
    let table_id = client.create_table(&path, &d, false).await.expect("create");

    let err = client.create_table(&path, &d, false).await.expect_err("duplicate");
    assert_eq!(err.kind(), ErrorKind::TableAlreadyExist);
    assert_eq!(client.create_table(&path, &d, true).await.expect("ignore if exists"), table_id);

    let err = client.table_info(&"db.nope".parse().expect("path")).await.expect_err("unknown table");
    assert_eq!(err.kind(), ErrorKind::TableNotExist);
    assert!(err.to_string().contains("db.nope"), "{err}");

    let other = descriptor("id:int32,name:string", 1, None, "1h");
    let batch = Workload { seed: 0, partitions: 1 }.batch(&other, &[1]).expect("batch");
    let err = client.produce(table_id, None, 0, &[batch]).await.expect_err("schema mismatch");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);

    let good = Workload { seed: 0, partitions: 1 }.batch(&d, &[1, 2]).expect("batch");
    let err = client.produce(table_id, None, 7, std::slice::from_ref(&good)).await.expect_err("invalid bucket");
    assert_eq!(err.kind(), ErrorKind::UnknownTableOrBucket);

    let err = client
        .produce_records(table_id, None, 0, bytes::Bytes::from_static(b"not arrow"))
        .await
        .expect_err("malformed");
    assert_eq!(err.kind(), ErrorKind::CorruptRecord);

    client.produce(table_id, None, 0, &[good]).await.expect("produce");
    let err = client.fetch(table_id, None, 0, 3, 1024).await.expect_err("out of range");
    assert_eq!(err.kind(), ErrorKind::OffsetOutOfRange);
    let err = client.fetch(table_id + 100, None, 0, 0, 1024).await.expect_err("unknown table id");
    assert_eq!(err.kind(), ErrorKind::TableNotExist);

    let mut pk = d.clone();
    pk.primary_key = vec!["id".into()];
    let pk_id = client.create_table(&"db.pk".parse().expect("path"), &pk, false).await.expect("pk table");
    let rows = Workload { seed: 0, partitions: 1 }.batch(&pk, &[1, 2]).expect("batch");
    let err = client.produce(pk_id, None, 0, std::slice::from_ref(&rows)).await.expect_err("produce into a pk table");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = client.put_kv(table_id, None, 0, &[rows], false).await.expect_err("put into a log table");
    assert_eq!(err.kind(), ErrorKind::NonPrimaryKeyTable);
}

fn req_for(table_id: i64, coordinator_epoch: i32, tiering_epoch: i64) -> PbHeartbeatReqForTable {
    PbHeartbeatReqForTable { table_id, coordinator_epoch, tiering_epoch, lake_tiering_stats: None, fail_reason: None }
}

fn snapshot(
    table_id: i64,
    coordinator_epoch: i32,
    tiering_epoch: i64,
    snapshot_id: i64,
    offset: i64,
) -> proto::PbLakeTableSnapshotInfo {
    proto::PbLakeTableSnapshotInfo {
        table_id,
        snapshot_id,
        buckets_req: vec![proto::PbLakeTableOffsetForBucket {
            partition_id: None,
            bucket_id: 0,
            log_end_offset: Some(offset),
            max_timestamp: None,
        }],
        table_path: None,
        tiering_epoch,
        coordinator_epoch,
    }
}

async fn request(client: &ClusterClient) -> proto::LakeTieringHeartbeatResponse {
    client
        .lake_tiering_heartbeat(LakeTieringHeartbeatRequest { request_table: Some(true), ..Default::default() })
        .await
        .expect("heartbeat")
}

async fn request_until_assigned(client: &ClusterClient) -> (i32, proto::PbLakeTieringTableInfo) {
    for _ in 0..100 {
        let resp = request(client).await;
        if let Some(t) = resp.tiering_table {
            return (resp.coordinator_epoch, t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no table was assigned within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiering_state_machine_with_two_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: TablePath = "db.tiered".parse().expect("path");
    let d = descriptor("id:int64", 1, None, "300ms");
    let (cluster, service_a) = start(dir.path()).await;
    let service_b = ClusterClient::connect(&cluster.url()).await.expect("connect");
    let table_id = service_a.create_table(&path, &d, false).await.expect("create");
    // A table that never received a record is never handed out; this one has data.
    let batch = Workload { seed: 0, partitions: 1 }.batch(&d, &[0]).expect("batch");
    service_a.produce(table_id, None, 0, &[batch]).await.expect("produce");

    // Not before freshness has elapsed, then to the first service that asks.
    assert!(request(&service_a).await.tiering_table.is_none(), "a new table waits one freshness interval");
    let (ce, assigned) = request_until_assigned(&service_a).await;
    assert_eq!((assigned.table_id, assigned.tiering_epoch), (table_id, 1));
    assert!(request(&service_b).await.tiering_table.is_none(), "a table is tiered by one service at a time");

    // Heartbeats keep it; silence loses it to the other service under a new epoch.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resp = service_a
            .lake_tiering_heartbeat(LakeTieringHeartbeatRequest {
                tiering_tables: vec![req_for(table_id, ce, 1)],
                ..Default::default()
            })
            .await
            .expect("heartbeat");
        assert!(resp.tiering_table_resp[0].error.is_none(), "renewal accepted");
    }
    assert!(request(&service_b).await.tiering_table.is_none(), "still held while heartbeating");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (_, taken) = request_until_assigned(&service_b).await;
    assert_eq!((taken.table_id, taken.tiering_epoch), (table_id, 2));

    // The timed-out service is fenced: its commit and its heartbeat are rejected.
    let err = service_a.commit_lake_snapshot(snapshot(table_id, ce, 1, 11, 5)).await.expect_err("stale commit");
    assert_eq!(err.kind(), ErrorKind::FencedTieringEpoch);
    let resp = service_a
        .lake_tiering_heartbeat(LakeTieringHeartbeatRequest {
            finished_tables: vec![req_for(table_id, ce, 1)],
            ..Default::default()
        })
        .await
        .expect("heartbeat");
    let code = resp.finished_table_resp[0].error.as_ref().map(|e| e.error_code);
    assert_eq!(code, Some(ErrorKind::FencedTieringEpoch.code()));
    assert!(service_a.lake_snapshot(&path).await.expect("snapshot").is_none());

    // The owner commits and finishes; the table is scheduled again and comes back under epoch 3.
    service_b.commit_lake_snapshot(snapshot(table_id, ce, 2, 22, 5)).await.expect("commit");
    let resp = service_b
        .lake_tiering_heartbeat(LakeTieringHeartbeatRequest {
            finished_tables: vec![req_for(table_id, ce, 2)],
            ..Default::default()
        })
        .await
        .expect("heartbeat");
    assert!(resp.finished_table_resp[0].error.is_none());
    let lake = service_b.lake_snapshot(&path).await.expect("snapshot").expect("exists");
    assert_eq!((lake.snapshot_id, lake.bucket_snapshots[0].log_offset), (22, Some(5)));
    let (_, again) = request_until_assigned(&service_a).await;
    assert_eq!(again.tiering_epoch, 3);

    // A failed round is re-queued after a backoff, under a new epoch, with its reason on record.
    let failed =
        PbHeartbeatReqForTable { fail_reason: Some("lake table is broken".into()), ..req_for(table_id, ce, 3) };
    service_a
        .lake_tiering_heartbeat(LakeTieringHeartbeatRequest { failed_tables: vec![failed], ..Default::default() })
        .await
        .expect("heartbeat");
    let summary =
        service_a.list_tables().await.expect("tables").into_iter().find(|t| t.table_id == table_id).expect("listed");
    assert_eq!(summary.last_error.as_deref(), Some("lake table is broken"));
    assert_eq!(summary.failures, 2, "the time-out and the reported failure");
    assert!(request(&service_b).await.tiering_table.is_none(), "not before the backoff has passed");
    let (_, retried) = request_until_assigned(&service_b).await;
    assert_eq!(retried.tiering_epoch, 4);

    // A restart keeps epochs and snapshots, starts a new coordinator epoch and fences the old holder.
    cluster.shutdown().await.expect("shutdown");
    let (_cluster, client) = start(dir.path()).await;
    let (ce2, after) = request_until_assigned(&client).await;
    assert_eq!(ce2, ce + 1);
    assert_eq!(after.tiering_epoch, 5, "the in-flight round's epoch never becomes valid again");
    let err = client.commit_lake_snapshot(snapshot(table_id, ce2, 4, 33, 9)).await.expect_err("stale after restart");
    assert_eq!(err.kind(), ErrorKind::FencedTieringEpoch);
    let lake = client.lake_snapshot(&path).await.expect("snapshot").expect("exists");
    assert_eq!(lake.snapshot_id, 22);
}

/// A bucket's changelog: `(id, name, change type)` in offset order.
async fn read_changelog(
    client: &ClusterClient,
    descriptor: &TableDescriptor,
    table_id: i64,
    bucket: i32,
    from: i64,
) -> Vec<(i64, Option<String>, i8)> {
    let mut out = Vec::new();
    let cluster: std::sync::Arc<dyn fluss_tiering::model::tiering::TieringCluster> =
        std::sync::Arc::new(client.clone());
    let mut reader =
        fluss_tiering::model::tiering::LogReader::new(cluster, (table_id, None, bucket), from, None, 16 << 10);
    while let Some(batches) = reader.next().await.expect("fetch") {
        for b in batches {
            for x in [b.read(descriptor).expect("decode")] {
                let ids = x.column_by_name("id").expect("id").as_any().downcast_ref::<arrow::array::Int64Array>();
                let names =
                    x.column_by_name("name").expect("name").as_any().downcast_ref::<arrow::array::StringArray>();
                let kinds = x.column_by_name("_change_type").expect("change type");
                let kinds = kinds.as_any().downcast_ref::<arrow::array::Int8Array>().expect("int8");
                let (ids, names) = (ids.expect("int64"), names.expect("strings"));
                for i in 0..x.num_rows() {
                    let name = (!names.is_null(i)).then(|| names.value(i).to_string());
                    out.push((ids.value(i), name, kinds.value(i)));
                }
            }
        }
    }
    out
}

/// Replays changelog entries onto a state, checking that every before-image (-U, -D) is the key's current row.
fn replay(state: &mut std::collections::BTreeMap<i64, Option<String>>, log: &[(i64, Option<String>, i8)]) {
    for (id, name, kind) in log {
        match kind {
            0 => assert!(state.insert(*id, name.clone()).is_none(), "+I of key {id}, which exists"),
            1 | 3 => {
                assert_eq!(state.get(id), Some(name), "before-image of key {id} is its current row");
                if *kind == 3 {
                    state.remove(id);
                }
            }
            2 => assert!(state.insert(*id, name.clone()).is_some(), "+U of key {id}, which does not exist"),
            other => panic!("change type {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_tables_keep_state_changelog_and_snapshots_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.kv_snapshot_every = 200;
    let cluster = EmbeddedCluster::start(cfg.clone()).await.expect("start");
    let client = ClusterClient::connect(&cluster.url()).await.expect("connect");
    let mut d = descriptor("id:int64,name:string", 2, None, "1min");
    d.primary_key = vec!["id".into()];
    let path: TablePath = "db.kv".parse().expect("path");
    let id = client.create_table(&path, &d, false).await.expect("create");
    // As the cluster holds it: with the options that say how its keys are bucketed.
    let (_, d) = client.table_info(&path).await.expect("table info");
    let workload = Workload { seed: 9, partitions: 1 };
    let mix = KvMix { update: 0.4, delete: 0.2 };
    let opts = ProduceOptions { start_row: 0, rows: 1500, batch: 100, rate: None, concurrency: 4, kv: mix };
    assert_eq!(produce(&client, id, &d, &workload, &opts).await.expect("produce").rows, 1500);

    // The expected state, as the generator replays it: key -> the `name` of the row that last upserted it.
    let expected = |rows: u64| -> std::collections::BTreeMap<i64, Option<String>> {
        let state = workload.kv_state(rows, mix);
        let pairs: Vec<(u64, u64)> = state.iter().map(|(k, r)| (*r, *k)).collect();
        let batch = workload.kv_batch(&d, &pairs).expect("batch");
        let names = batch.column(1).as_any().downcast_ref::<arrow::array::StringArray>().expect("names");
        pairs
            .iter()
            .enumerate()
            .map(|(i, (_, k))| (*k as i64, (!names.is_null(i)).then(|| names.value(i).to_string())))
            .collect()
    };
    let mut from_logs = std::collections::BTreeMap::new();
    for bucket in 0..2 {
        replay(&mut from_logs, &read_changelog(&client, &d, id, bucket, 0).await);
    }
    assert_eq!(from_logs, expected(1500), "the changelog replays to the generator's state");

    // Snapshots were taken (every 200 changes); snapshot + the log after it give the same state.
    let snapshots = client.latest_kv_snapshots(&path, None).await.expect("snapshots");
    let mut from_snapshots = std::collections::BTreeMap::new();
    for s in &snapshots {
        let (snapshot_id, log_offset) = (s.snapshot_id.expect("snapshot taken"), s.log_offset.expect("offset"));
        assert!(log_offset > 0);
        for index in 0..s.batch_count {
            let (batches, count) =
                client.fetch_kv_snapshot(id, None, s.bucket_id, snapshot_id, index).await.expect("snapshot batch");
            assert_eq!(count, s.batch_count);
            for b in batches {
                let ids = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().expect("ids");
                let names = b.column(1).as_any().downcast_ref::<arrow::array::StringArray>().expect("names");
                for i in 0..b.num_rows() {
                    from_snapshots.insert(ids.value(i), (!names.is_null(i)).then(|| names.value(i).to_string()));
                }
            }
        }
        replay(&mut from_snapshots, &read_changelog(&client, &d, id, s.bucket_id, log_offset).await);
    }
    assert_eq!(from_snapshots, expected(1500), "snapshot + changelog after it = the state");

    // After a restart the state is recovered: more operations continue from it (their before-images check it).
    cluster.shutdown().await.expect("shutdown");
    let cluster = EmbeddedCluster::start(cfg).await.expect("restart");
    let client = ClusterClient::connect(&cluster.url()).await.expect("connect");
    let more = ProduceOptions { start_row: 1500, rows: 500, ..opts };
    produce(&client, id, &d, &workload, &more).await.expect("produce more");
    let mut after = std::collections::BTreeMap::new();
    for bucket in 0..2 {
        replay(&mut after, &read_changelog(&client, &d, id, bucket, 0).await);
    }
    assert_eq!(after, expected(2000));
    // Bad writes get clear errors.
    let no_key =
        Workload { seed: 1, partitions: 1 }.batch(&descriptor("name:string", 1, None, "1min"), &[1]).expect("b");
    let err = client.put_kv(id, None, 0, &[no_key], true).await.expect_err("delete without the key column");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
}

/// A cluster that accepts connections and never answers: every call gives up after the client's time-out, as a
/// network error, instead of hanging a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_fails_calls_after_the_rpc_time_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // read nothing, write nothing, close nothing
        }
    });
    let started = std::time::Instant::now();
    let timeout = Duration::from_millis(300);
    let err = match ClusterClient::connect_with_timeout(&url, timeout).await {
        Ok(client) => client.list_tables().await.expect_err("no answer"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the time-out: {:?}", started.elapsed());
}

/// The one log-reading loop: from an offset inside a batch to a stop inside another, to the end, and past the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_reader_reads_ranges_and_refuses_to_read_past_the_end() {
    use fluss_tiering::model::tiering::LogReader;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = descriptor("id:int64,name:string", 1, None, "1h");
    let (_cluster, client) = start(dir.path()).await;
    let table_id = client.create_table(&"db.reader".parse().expect("path"), &d, false).await.expect("create");
    for chunk in 0..5u64 {
        let ids: Vec<u64> = (chunk * 10..chunk * 10 + 10).collect();
        let batch = Workload { seed: 0, partitions: 1 }.batch(&d, &ids).expect("batch");
        client.produce(table_id, None, 0, &[batch]).await.expect("produce");
    }
    // Small fetches, so that a range takes several answers.
    let read = |from: i64, stop: Option<i64>| {
        let client = client.clone();
        async move {
            let mut reader = LogReader::new(std::sync::Arc::new(client), (table_id, None, 0), from, stop, 1);
            let mut batches = Vec::new();
            while let Some(answer) = reader.next().await? {
                assert!(!answer.is_empty(), "an answer holds at least one batch");
                batches.extend(answer.into_iter().map(|b| (b.base_offset, b.record_count)));
            }
            Ok::<_, fluss_tiering::Error>(batches)
        }
    };
    assert_eq!(read(0, None).await.expect("all"), vec![(0, 10), (10, 10), (20, 10), (30, 10), (40, 10)]);
    // The first batch holds the start, the last one the stop: both stick out of [15, 25).
    assert_eq!(read(15, Some(25)).await.expect("range"), vec![(10, 10), (20, 10)]);
    assert_eq!(read(20, Some(20)).await.expect("empty range"), vec![]);
    let err = read(40, Some(60)).await.expect_err("the log ends at 50");
    assert_eq!(err.kind(), ErrorKind::OffsetOutOfRange);
    assert!(err.to_string().contains("before the stop offset 60"), "{err}");
}

/// Many buckets in one fetch, through every door (no wire, gRPC, Fluss's protocol): an answer per ask in order, each
/// bucket's error its own; a request's byte budget goes to the first buckets (the first always gets a batch) and
/// the rest answer empty below their high watermark, to be asked again; readers driven by such requests with a small
/// budget read every bucket whole, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_buckets_are_fetched_in_one_request_within_its_byte_budget_through_every_door() {
    use fluss_tiering::model::tiering::{FetchAsk, LogReader, TieringCluster};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let cluster = EmbeddedCluster::start_with(config(dir.path()), any, Some(any)).await.expect("start cluster");
    let client = ClusterClient::connect(&cluster.url()).await.expect("connect");
    let path: TablePath = "db.many".parse().expect("path");
    let d = descriptor("id:int64,name:string", 4, None, "1h");
    let table_id = client.create_table(&path, &d, false).await.expect("create");
    produce_rows(&client, table_id, &d, 0, 4000).await;
    let ends = client.list_offsets(table_id, None, &[0, 1, 2, 3], true).await.expect("offsets");
    let fluss_url = format!("fluss://{}", cluster.fluss_addr().expect("a Fluss door"));
    let fluss = fluss_tiering::fluss::transport::FlussCluster::connect(&fluss_url, Duration::from_secs(10))
        .await
        .expect("connect over Fluss's protocol");
    let doors: [(&str, Arc<dyn TieringCluster>); 3] = [
        ("local", Arc::new(fluss_tiering::serve::LocalDoor::new(Arc::clone(cluster.cluster())))),
        ("grpc", Arc::new(client.clone())),
        ("fluss", fluss),
    ];
    let ask = |bucket: i32, offset: i64| FetchAsk { bucket: (table_id, None, bucket), offset, max_bytes: 1 << 20 };
    for (door, c) in doors {
        // Ample budget: every bucket answers for itself; a bucket that does not exist fails alone.
        let asks = [ask(0, 0), ask(99, 0), ask(1, 0), ask(2, 0), ask(3, 0)];
        let answers = c.fetch_many(&asks, 64 << 20).await.expect("fetch many");
        assert_eq!(answers.len(), asks.len(), "{door}: an answer per ask");
        assert!(answers[1].is_err(), "{door}: bucket 99 does not exist");
        for (i, bucket) in [(0, 0), (2, 1), (3, 2), (4, 3)] {
            let log = answers[i].as_ref().expect("a bucket that exists is read");
            assert!(!log.batches.is_empty(), "{door}: bucket {bucket} answered with batches");
            assert_eq!(log.batches[0].base_offset, 0, "{door}: bucket {bucket} from its offset");
            assert_eq!(log.high_watermark, ends[bucket], "{door}: bucket {bucket}'s high watermark");
        }
        // A budget of one byte: the first bucket still gets a batch, the others are left for the next request.
        let tight = c.fetch_many(&asks[2..], 1).await.expect("fetch many");
        let tight: Vec<_> = tight.into_iter().map(|a| a.expect("read")).collect();
        assert_eq!(tight[0].batches.len(), 1, "{door}: the first bucket gets one batch");
        for log in &tight[1..] {
            assert!(log.batches.is_empty() && log.high_watermark > 0, "{door}: the rest answer empty below their end");
        }
        // Readers driven by 1 KiB requests read each bucket whole, in order, exactly once.
        let mut readers: Vec<LogReader> = (0..4)
            .map(|b| LogReader::new(Arc::clone(&c), (table_id, None, b), 0, Some(ends[b as usize]), 1 << 20))
            .collect();
        let mut read = [0i64; 4];
        let mut requests = 0;
        loop {
            let open: Vec<usize> = (0..4).filter(|&b| readers[b].ask().is_some()).collect();
            if open.is_empty() {
                break;
            }
            let asks: Vec<FetchAsk> = open.iter().filter_map(|&b| readers[b].ask()).collect();
            let answers = c.fetch_many(&asks, 1 << 10).await.expect("fetch many");
            requests += 1;
            assert!(requests < 10_000, "{door}: the readers make progress");
            for (&b, answer) in open.iter().zip(answers) {
                let batches = readers[b].take(answer.expect("read")).expect("contiguous").expect("not past the stop");
                for batch in batches {
                    assert_eq!(batch.base_offset, read[b], "{door}: bucket {b} in order");
                    read[b] += batch.record_count;
                }
            }
        }
        assert_eq!(read.to_vec(), ends, "{door}: every bucket read whole");
    }
    cluster.shutdown().await.expect("shutdown");
}
