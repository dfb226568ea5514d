//! The committers under lake faults: lost replies, failed reloads, competing writers, slow commits, expired history.
//! Each case runs our committer, and where a naive protocol would go wrong, the naive protocol too, to show the
//! difference. Iceberg faults act in its catalog, Paimon faults in its catalog and its snapshot publication; lakes
//! are read back with pyiceberg and pypaimon.

mod common;

use std::sync::Arc;

use common::faults::{Fault, Faults, FaultyCatalog, FaultyPaimon};
use common::{WORKLOAD, read_lake};
use fluss_tiering::ErrorKind;
use fluss_tiering::lake::iceberg::IcebergFactory;
use fluss_tiering::lake::paimon::{PaimonFactory, PaimonPublish, Publish};
use fluss_tiering::lake::{
    BucketOffset, CommitMarker, LakeCommitter, LakeOptions, LakeTieringFactory, TableContext, WriterContext,
    WrittenData, lake_schema, with_system_columns,
};
use fluss_tiering::model::table::{TableDescriptor, TablePath, parse_schema};
use fluss_tiering::model::tiering::{LakeBucketOffset, OffsetsFile};
use iceberg::spec::{DataFile, deserialize_data_file_from_json};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, NamespaceIdent, TableIdent};

struct Lake {
    _dir: tempfile::TempDir,
    warehouse: std::path::PathBuf,
    faulty: Arc<FaultyCatalog>,
    factory: IcebergFactory,
    table: TableContext,
}

async fn lake() -> Lake {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("warehouse");
    let inner = IcebergFactory::open_catalog(&warehouse).await.expect("catalog");
    let faulty = FaultyCatalog::new(inner);
    let factory = IcebergFactory::with_catalog(faulty.clone(), &warehouse, LakeOptions::default()).expect("factory");
    let table = test_table();
    assert!(factory.prepare_table(&table).await.expect("create").is_none());
    Lake { _dir: dir, warehouse, faulty, factory, table }
}

/// The test table: `db.t`, one bucket, `id:int64,name:string`.
fn test_table() -> TableContext {
    let descriptor = TableDescriptor {
        columns: parse_schema("id:int64,name:string").expect("schema"),
        buckets: 1,
        partition_key: None,
        primary_key: vec![],
        properties: Default::default(),
    };
    TableContext { table_id: 1, path: "db.t".parse::<TablePath>().expect("path"), descriptor }
}

/// Lake files for rows `[from, to)` of bucket `bucket`.
async fn write_rows(
    factory: &dyn LakeTieringFactory,
    table: &TableContext,
    from: u64,
    to: u64,
    bucket: i32,
) -> WrittenData {
    let ctx =
        WriterContext { partition_name: None, bucket, file_prefix: format!("test-{}", uuid::Uuid::new_v4().simple()) };
    let mut writer = factory.create_writer(table, ctx).await.expect("writer");
    let ids: Vec<u64> = (from..to).collect();
    let batch = WORKLOAD.batch(&table.descriptor, &ids).expect("rows");
    let schema = lake_schema(&table.descriptor);
    writer
        .write(with_system_columns(&schema, &batch, bucket, from as i64, 0).expect("system columns"))
        .await
        .expect("write");
    writer.complete().await.expect("complete")
}

impl Lake {
    async fn write(&self, from: u64, to: u64, bucket: i32) -> WrittenData {
        write_rows(&self.factory, &self.table, from, to, bucket).await
    }

    async fn committer(&self) -> Box<dyn LakeCommitter> {
        self.factory.create_committer(&self.table).await.expect("committer")
    }

    /// A committer straight on the SQL catalog, as a second job would have.
    async fn other_committer(&self) -> Box<dyn LakeCommitter> {
        IcebergFactory::with_catalog(self.faulty.inner.clone(), &self.warehouse, LakeOptions::default())
            .expect("factory")
            .create_committer(&self.table)
            .await
            .expect("committer")
    }

    fn rows(&self) -> usize {
        read_lake(&self.warehouse, &self.table.path).rows.num_rows()
    }

    async fn iceberg_table(&self) -> Table {
        let ident = TableIdent::new(NamespaceIdent::new("db".into()), "t".into());
        self.faulty.inner.load_table(&ident).await.expect("load")
    }
}

fn marker(round: &str, end: i64) -> CommitMarker {
    prepared(CommitMarker {
        round_id: round.into(),
        table_id: 1,
        tiering_epoch: 1,
        offsets: vec![BucketOffset { partition_id: None, partition_name: None, bucket: 0, offset: end }],
        offsets_file: None,
    })
}

/// The marker with its offsets written to a file in Fluss's JSON, as a cluster's PrepareLakeTableSnapshot writes it.
fn prepared(marker: CommitMarker) -> CommitMarker {
    let buckets: Vec<LakeBucketOffset> = marker
        .offsets
        .iter()
        .map(|o| LakeBucketOffset {
            partition_id: None,
            bucket: o.bucket,
            log_end_offset: o.offset,
            max_timestamp: None,
        })
        .collect();
    let file = OffsetsFile::new(marker.table_id, false, &buckets).expect("offsets file");
    let dir = std::env::temp_dir().join("fluss-tiering-test-offsets");
    std::fs::create_dir_all(&dir).expect("offsets dir");
    let path = dir.join(format!("{}.offsets", uuid::Uuid::new_v4()));
    std::fs::write(&path, serde_json::to_vec(&file).expect("json")).expect("write offsets");
    CommitMarker { offsets_file: Some(path.display().to_string()), ..marker }
}

/// The data files inside a write result (what a committer that bypasses ours would append).
fn data_files(table: &Table, written: &WrittenData) -> Vec<DataFile> {
    let v: serde_json::Value = serde_json::from_slice(&written.payload).expect("payload");
    let spec_id = v["spec_id"].as_i64().expect("spec id") as i32;
    let schema = table.metadata().current_schema();
    let partition_type = table.metadata().default_partition_spec().partition_type(schema).expect("partition type");
    v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            deserialize_data_file_from_json(f.as_str().expect("json"), spec_id, &partition_type, schema).expect("file")
        })
        .collect()
}

/// iceberg-rust's own append: reload, re-apply on whatever is there, commit. No marker, no condition.
async fn plain_append(catalog: &dyn Catalog, table: Table, files: Vec<DataFile>) -> iceberg::Result<Table> {
    let tx = Transaction::new(&table);
    let tx = tx.fast_append().add_data_files(files).apply(tx)?;
    tx.commit(catalog).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_recognized_not_repeated() {
    let l = lake().await;
    let committer = l.committer().await;
    l.faulty.script(Fault::LostReply);
    let id = committer.commit(vec![l.write(0, 100, 0).await], &marker("r1", 100), None).await.expect("landed");
    let latest = committer.latest().await.expect("latest").expect("a marker");
    assert_eq!((latest.snapshot_id, latest.marker.round_id.as_str()), (id, "r1"));
    assert_eq!(l.faulty.injected().get(&Fault::LostReply), Some(&1));
    assert_eq!(l.rows(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_with_another_commit_on_top_is_found_by_walking_back_to_the_base() {
    // Ours lands, another tiering commit (the next round of a job that took over) lands on top, and our reply is
    // lost. Only the newest marker is theirs: looking at it alone says "not committed", and deleting our files would
    // break the snapshot below that references them.
    let l = lake().await;
    let ours = l.write(0, 100, 0).await;
    let other = l.other_committer().await;
    let theirs = l.write(100, 150, 0).await;
    l.faulty.compete_after(Box::new(move || {
        Box::pin(async move {
            let base = other.latest().await.expect("latest").map(|s| s.snapshot_id);
            other.commit(vec![theirs], &marker("theirs", 150), base).await.expect("the other commit lands on top");
        })
    }));
    l.faulty.script(Fault::LostReplyThenCompetitor);
    let committer = l.committer().await;
    let id = committer.commit(vec![ours.clone()], &marker("ours", 100), None).await.expect("found by walking back");
    let table = l.iceberg_table().await;
    let snapshots: Vec<_> = table.metadata().snapshots().map(|s| (s.snapshot_id(), s.parent_snapshot_id())).collect();
    let parent = table.metadata().current_snapshot().and_then(|s| s.parent_snapshot_id());
    assert_eq!(Some(id), parent, "ours is the snapshot below theirs: {snapshots:?}");
    for f in data_files(&table, &ours) {
        assert!(std::path::Path::new(f.file_path().trim_start_matches("file:")).exists(), "{} is kept", f.file_path());
    }
    assert_eq!(l.rows(), 150, "both commits' rows are readable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcome_keeps_files_and_recovery_finds_the_commit_where_a_naive_retry_duplicates() {
    // Ours: the reply is lost and the reload that would tell fails too: the outcome is unknown, nothing is retried,
    // and the next round, planned from the lake, finds the commit and has nothing left to write.
    let l = lake().await;
    let committer = l.committer().await;
    l.faulty.script(Fault::LostReply);
    l.faulty.script(Fault::ReloadFails);
    let written = l.write(0, 100, 0).await;
    let err = committer.commit(vec![written.clone()], &marker("r1", 100), None).await.expect_err("unknown");
    assert_eq!(err.kind(), ErrorKind::CommitOutcomeUnknown);
    for f in data_files(&l.iceberg_table().await, &written) {
        let path = f.file_path().trim_start_matches("file:").to_string();
        assert!(std::path::Path::new(&path).exists(), "{path} is kept while the outcome is unknown");
    }
    let recovered = committer.latest().await.expect("latest").expect("landed");
    assert_eq!(recovered.marker.offset_map().values().copied().collect::<Vec<_>>(), vec![100]);
    assert_eq!(l.rows(), 100);

    // Naive: after the error, retry the round from the job's own view of the offsets (as Fluss does from the
    // cluster's), writing the rows again and committing them on top of whatever the table holds now. (Re-adding the
    // very same files would be caught by iceberg-rust's duplicate-file check; rewritten rows are not.)
    let n = lake().await;
    let committer = n.committer().await;
    n.faulty.script(Fault::LostReply);
    n.faulty.script(Fault::ReloadFails);
    assert!(committer.commit(vec![n.write(0, 100, 0).await], &marker("r1", 100), None).await.is_err());
    let now = committer.latest().await.expect("latest").map(|s| s.snapshot_id);
    let rewritten = n.write(0, 100, 0).await;
    committer.commit(vec![rewritten], &marker("r1-retry", 100), now).await.expect("the naive retry commits");
    assert_eq!(n.rows(), 200, "the naive retry duplicates every row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_before_the_commit_commits_nothing() {
    let l = lake().await;
    let committer = l.committer().await;
    let written = l.write(0, 100, 0).await;
    l.faulty.script(Fault::ReloadFails);
    let err = committer.commit(vec![written.clone()], &marker("r1", 100), None).await.expect_err("reload fails");
    assert_ne!(err.kind(), ErrorKind::CommitOutcomeUnknown, "nothing was sent: the outcome is known");
    assert!(committer.latest().await.expect("latest").is_none());
    committer.commit(vec![written], &marker("r2", 100), None).await.expect("the next attempt commits");
    assert_eq!(l.rows(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_competing_tiering_commit_between_reload_and_commit_is_not_duplicated() {
    // Another job (one that took the table over) commits the same rows while ours is about to.
    let l = lake().await;
    let ours = l.write(0, 100, 0).await;
    let theirs = l.write(0, 100, 0).await;
    let other = l.other_committer().await;
    l.faulty.compete(Box::new(move || {
        Box::pin(async move {
            other.commit(vec![theirs], &marker("theirs", 100), None).await.expect("the other job commits");
        })
    }));
    let committer = l.committer().await;
    let err = committer.commit(vec![ours.clone()], &marker("ours", 100), None).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::FencedTieringEpoch);
    committer.abort(vec![ours]).await.expect("our files are deleted");
    assert_eq!(committer.latest().await.expect("latest").expect("marker").marker.round_id, "theirs");
    assert_eq!(l.rows(), 100);

    // Naive: iceberg-rust's own commit. The append is built on the table as read before the other job's commit;
    // `Transaction::commit` reloads, finds the table moved, re-applies the append on top and commits.
    let n = lake().await;
    let ours = n.write(0, 100, 0).await;
    let theirs = n.write(0, 100, 0).await;
    let table = n.iceberg_table().await;
    let files = data_files(&table, &ours);
    n.other_committer().await.commit(vec![theirs], &marker("theirs", 100), None).await.expect("the other job commits");
    plain_append(n.faulty.inner.as_ref(), table, files).await.expect("the naive append rebases and commits");
    assert_eq!(n.rows(), 200, "the rebased append duplicates every row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_is_found_below_foreign_snapshots_and_its_expiry_fails_closed() {
    let l = lake().await;
    let committer = l.committer().await;
    let first = committer.commit(vec![l.write(0, 100, 0).await], &marker("r1", 100), None).await.expect("commit");
    // Someone else appends rows of their own (bucket -1) on top: the newest snapshot carries no marker.
    let foreign = l.write(5000, 5010, -1).await;
    let table = l.iceberg_table().await;
    let files = data_files(&table, &foreign);
    plain_append(l.faulty.inner.as_ref(), table, files).await.expect("foreign append");
    let latest = committer.latest().await.expect("latest").expect("found by walking back");
    assert_eq!(latest.snapshot_id, first);
    // A committer that only looks at the newest snapshot finds no offsets there, and would tier everything again.
    let newest = read_lake(&l.warehouse, &l.table.path);
    assert!(!newest.properties.contains_key("fluss-offsets"), "the newest snapshot carries no marker");
    assert_ne!(newest.current_snapshot_id, Some(first));

    // Retention removes the snapshot with the marker: recovery refuses to guess.
    let table = l.iceberg_table().await;
    let tx = Transaction::new(&table);
    let tx = tx.expire_snapshots().expire_snapshot_ids([first]).apply(tx).expect("expire");
    tx.commit(l.faulty.inner.as_ref()).await.expect("expired");
    let err = committer.latest().await.expect_err("fails closed");
    assert_eq!(err.kind(), ErrorKind::Lake);
    assert!(err.to_string().contains("expired"), "{err}");
}

/// Many rounds of the real job over the 3-table mix, with faults drawn at random at every lake commit and load,
/// then the oracle: pyiceberg or pypaimon sees every produced row exactly once. `FLUSS_TIERING_FAULT_SEED` replays a
/// run, `FLUSS_TIERING_FAULT_ROUNDS` (default 200) makes it longer.
async fn randomized_rounds_under_faults(format: &str) {
    use fluss_tiering::dataflows::{self, JobContext, TierConfig};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let seed: u64 = std::env::var("FLUSS_TIERING_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let rounds: u64 = std::env::var("FLUSS_TIERING_FAULT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    println!("{format}: fault seed {seed} (replay with FLUSS_TIERING_FAULT_SEED={seed}), {rounds} rounds");

    let common::Setup { dir: _dir, warehouse, cluster, client, tables } = common::setup().await;
    let options = LakeOptions { target_file_size: 65536, ..LakeOptions::default() };
    let (lake, faults): (Arc<dyn LakeTieringFactory>, Arc<Faults>) = match format {
        "iceberg" => {
            let faulty = FaultyCatalog::new(IcebergFactory::open_catalog(&warehouse).await.expect("catalog"));
            (
                Arc::new(IcebergFactory::with_catalog(faulty.clone(), &warehouse, options).expect("factory")),
                faulty.faults(),
            )
        }
        _ => {
            let faulty = FaultyPaimon::new(PaimonFactory::open_catalog(&warehouse).await.expect("catalog"));
            let factory = PaimonFactory::with_catalog(faulty.clone(), &warehouse, faulty.clone(), options);
            (Arc::new(factory.expect("paimon")), faulty.faults())
        }
    };
    faults.randomize(seed, 20, 400);

    let (ctx_tx, ctx_rx) = std::sync::mpsc::channel();
    let url = cluster.url();
    let job = std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let client = runtime.block_on(fluss_tiering::rpc::ClusterClient::connect(&url)).expect("connect");
        // A short lake time-out: a Paimon claim left by a round whose outcome stayed unknown expires soon.
        let config = TierConfig {
            poll_interval: Duration::from_millis(50),
            max_tables_in_flight: 3,
            lake_timeout: Duration::from_secs(2),
            ..TierConfig::default()
        };
        let ctx = Arc::new(JobContext::new(runtime.handle().clone(), Arc::new(client), lake, config));
        ctx_tx.send(Arc::clone(&ctx)).expect("send");
        dataflows::run(timely::Config::process(2), ctx)
    });
    let ctx = ctx_rx.recv().expect("job context");

    let mut produced = 0u64;
    let started = Instant::now();
    while ctx.metrics.rounds_committed.load(Ordering::Relaxed) + ctx.metrics.rounds_failed.load(Ordering::Relaxed)
        < rounds
    {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "seed {seed}: {rounds} rounds did not happen in 10 minutes"
        );
        common::produce_all(&client, &tables, produced, 40).await;
        produced += 40;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let injected = faults.injected();
    faults.calm();

    // Without faults the job catches up: the cluster's record of the lake reaches every end offset.
    common::wait_tiered(&client, &tables.iter().collect::<Vec<_>>(), Duration::from_secs(120)).await;
    ctx.request_shutdown();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !job.is_finished() {
        assert!(Instant::now() < deadline, "seed {seed}: the job did not stop within 2 minutes of the request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    job.join().expect("job thread").expect("job");

    println!(
        "{format} seed {seed}: {} rounds committed, {} failed, faults injected: {injected:?}",
        ctx.metrics.rounds_committed.load(Ordering::Relaxed),
        ctx.metrics.rounds_failed.load(Ordering::Relaxed)
    );
    assert!(injected.get(&Fault::LostReply).copied().unwrap_or(0) > 0, "seed {seed}: no lost reply was injected");
    assert!(injected.get(&Fault::ReloadFails).copied().unwrap_or(0) > 0, "seed {seed}: no failed reload was injected");
    for t in &tables {
        let lake = read_lake(&warehouse, &t.path);
        common::check_exactly_once(&lake, t, &common::end_offsets(&client, t).await, produced);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_rounds_under_faults_stay_exactly_once() {
    randomized_rounds_under_faults("iceberg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_rounds_under_faults_stay_exactly_once_paimon() {
    randomized_rounds_under_faults("paimon").await;
}

/// A Paimon lake on a [`FaultyPaimon`], with the test table created.
struct PaimonLake {
    _dir: tempfile::TempDir,
    warehouse: std::path::PathBuf,
    faulty: Arc<FaultyPaimon>,
    factory: PaimonFactory,
    table: TableContext,
}

async fn paimon_lake() -> PaimonLake {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("warehouse");
    let faulty = FaultyPaimon::new(PaimonFactory::open_catalog(&warehouse).await.expect("catalog"));
    let factory = PaimonFactory::with_catalog(faulty.clone(), &warehouse, faulty.clone(), LakeOptions::default())
        .expect("paimon");
    let table = test_table();
    assert!(factory.prepare_table(&table).await.expect("create").is_none());
    PaimonLake { _dir: dir, warehouse, faulty, factory, table }
}

impl PaimonLake {
    async fn write(&self, from: u64, to: u64) -> WrittenData {
        write_rows(&self.factory, &self.table, from, to, 0).await
    }

    async fn committer(&self) -> Box<dyn LakeCommitter> {
        self.factory.create_committer(&self.table).await.expect("committer")
    }

    /// A committer straight on the filesystem catalog, as a second job would have.
    async fn other_committer(&self) -> Box<dyn LakeCommitter> {
        PaimonFactory::with_catalog(
            self.faulty.catalog.clone(),
            &self.warehouse,
            Arc::new(PaimonPublish),
            LakeOptions::default(),
        )
        .expect("paimon")
        .create_committer(&self.table)
        .await
        .expect("committer")
    }

    fn rows(&self) -> usize {
        read_lake(&self.warehouse, &self.table.path).rows.num_rows()
    }

    /// The table's data files on disk.
    fn data_files(&self) -> Vec<std::path::PathBuf> {
        common::walk(&self.warehouse).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect()
    }
}

/// A marker with its own tiering epoch: Paimon's commit identifier, which it filters when not increasing.
fn epoch_marker(round: &str, end: i64, epoch: i64) -> CommitMarker {
    CommitMarker { tiering_epoch: epoch, ..marker(round, end) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_a_lost_reply_is_recognized_not_repeated() {
    let l = paimon_lake().await;
    let committer = l.committer().await;
    l.faulty.script(Fault::LostReply);
    let id = committer.commit(vec![l.write(0, 100).await], &epoch_marker("r1", 100, 1), None).await.expect("landed");
    let latest = committer.latest().await.expect("latest").expect("a marker");
    assert_eq!((latest.snapshot_id, latest.marker.round_id.as_str()), (id, "r1"));
    assert_eq!(l.faulty.injected().get(&Fault::LostReply), Some(&1));
    assert_eq!(l.rows(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_rounds_whose_tiering_epochs_went_back_land_and_keep_every_snapshot_s_marker() {
    // Fluss's coordinator counts tiering epochs from 0 again after a restart: the next rounds come with epochs at or
    // below those already in the lake. A round that crashed before its publication left its marker behind, too.
    let l = paimon_lake().await;
    let committer = l.committer().await;
    let first = committer.commit(vec![l.write(0, 100).await], &epoch_marker("r1", 100, 3), None).await.expect("r1");
    let markers = l.warehouse.join("db.db").join("t").join("fluss-offsets");
    let crashed = serde_json::to_vec(&epoch_marker("crashed", 150, 4)).expect("json");
    std::fs::write(markers.join("2.json"), crashed).expect("a crashed round's marker");
    let second =
        committer.commit(vec![l.write(100, 200).await], &epoch_marker("r2", 200, 1), Some(first)).await.expect("r2");
    let third =
        committer.commit(vec![l.write(200, 300).await], &epoch_marker("r3", 300, 2), Some(second)).await.expect("r3");
    let ancestry = committer.tiered_ancestry(false).await.expect("ancestry");
    let rounds: Vec<(i64, &str, i64)> =
        ancestry.iter().map(|s| (s.snapshot_id, s.marker.round_id.as_str(), s.marker.offsets[0].offset)).collect();
    assert_eq!(rounds, [(third, "r3", 300), (second, "r2", 200), (first, "r1", 100)], "every snapshot its own marker");
    assert_eq!(l.rows(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_a_lost_reply_with_another_commit_on_top_is_found_by_walking_back_to_the_base() {
    let l = paimon_lake().await;
    let ours = l.write(0, 100).await;
    let theirs = l.write(100, 150).await;
    let other = l.other_committer().await;
    l.faulty.compete_after(Box::new(move || {
        Box::pin(async move {
            let base = other.latest().await.expect("latest").map(|s| s.snapshot_id);
            other.commit(vec![theirs], &epoch_marker("theirs", 150, 2), base).await.expect("lands on top");
        })
    }));
    l.faulty.script(Fault::LostReplyThenCompetitor);
    let committer = l.committer().await;
    let id = committer.commit(vec![ours], &epoch_marker("ours", 100, 1), None).await.expect("found by walking back");
    let latest = committer.latest().await.expect("latest").expect("marker");
    assert_eq!(latest.marker.round_id, "theirs");
    assert!(latest.snapshot_id > id, "ours ({id}) is below theirs ({})", latest.snapshot_id);
    assert_eq!(l.rows(), 150, "both commits' rows are readable: our files were kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_unknown_outcome_keeps_files_and_recovery_finds_the_commit() {
    let l = paimon_lake().await;
    let committer = l.committer().await;
    l.faulty.script(Fault::LostReply);
    l.faulty.script(Fault::ReloadFails);
    let written = l.write(0, 100).await;
    let files = l.data_files();
    assert!(!files.is_empty());
    let err = committer.commit(vec![written], &epoch_marker("r1", 100, 1), None).await.expect_err("unknown");
    assert_eq!(err.kind(), ErrorKind::CommitOutcomeUnknown, "{err}");
    assert_eq!(l.data_files(), files, "every file is kept while the outcome is unknown");
    let recovered = committer.latest().await.expect("latest").expect("landed");
    assert_eq!(recovered.marker.round_id, "r1");
    assert_eq!(l.rows(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_a_competing_tiering_commit_during_ours_is_refused_where_plain_publication_duplicates() {
    // Another job (one that took the table over, planned from the same base) commits the same rows while our
    // publication is under way: our claim on the successor of the base refuses it.
    let l = paimon_lake().await;
    let theirs = l.write(0, 100).await;
    let other = l.other_committer().await;
    let refused = Arc::new(std::sync::Mutex::new(None));
    let seen = Arc::clone(&refused);
    l.faulty.compete(Box::new(move || {
        Box::pin(async move {
            let result = other.commit(vec![theirs], &epoch_marker("theirs", 100, 2), None).await;
            *seen.lock().expect("lock") = Some(result.map_err(|e| e.kind()));
        })
    }));
    let committer = l.committer().await;
    committer.commit(vec![l.write(0, 100).await], &epoch_marker("ours", 100, 1), None).await.expect("ours lands");
    let theirs = refused.lock().expect("lock").take().expect("the competitor ran");
    assert_eq!(theirs, Err(ErrorKind::FencedTieringEpoch), "the competitor is refused by our claim");
    assert_eq!(l.rows(), 100);

    // Plain publication (Paimon's own commit, no claim, no base check): both land, every row twice.
    let n = paimon_lake().await;
    let table = n.faulty.catalog.get_table(&paimon::catalog::Identifier::new("db", "t")).await.expect("table");
    for (written, epoch) in [(n.write(0, 100).await, 1), (n.write(0, 100).await, 2)] {
        let messages: Vec<paimon::table::CommitMessage> = serde_json::from_slice::<Vec<Vec<u8>>>(&written.payload)
            .expect("messages")
            .iter()
            .map(|b| {
                paimon::table::CommitMessage::deserialize(paimon::table::COMMIT_MESSAGE_SERIALIZER_VERSION, b)
                    .expect("message")
            })
            .collect();
        PaimonPublish.publish(&table, messages, epoch).await.expect("plain publication");
    }
    let rows = common::read_lake_without_markers(&n.warehouse, &n.table.path).rows.num_rows();
    assert_eq!(rows, 200, "plain publication duplicates every row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_a_column_retyped_outside_fails_the_table_with_the_reason() {
    let l = paimon_lake().await;
    let change = paimon::spec::SchemaChange::UpdateColumnType {
        field_names: vec!["id".into()],
        new_data_type: paimon::spec::DataType::Double(paimon::spec::DoubleType::new()),
        keep_nullability: true,
    };
    l.faulty
        .catalog
        .alter_table(&paimon::catalog::Identifier::new("db", "t"), vec![change], false)
        .await
        .expect("retype outside");
    let err = l.factory.prepare_table(&l.table).await.expect_err("the lake column no longer fits");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
    assert!(err.to_string().contains("column id has type"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_names_its_offsets_file_so_its_metadata_does_not_grow_with_buckets() {
    let l = lake().await;
    let committer = l.committer().await;
    let offsets: Vec<BucketOffset> = (0..2000)
        .map(|bucket| BucketOffset { partition_id: None, partition_name: None, bucket, offset: 10 + i64::from(bucket) })
        .collect();
    let marker = prepared(CommitMarker { offsets, ..marker("wide", 0) });
    committer.commit(vec![l.write(0, 10, 0).await], &marker, None).await.expect("commit");
    let table = l.iceberg_table().await;
    let summary = &table.metadata().current_snapshot().expect("snapshot").summary().additional_properties;
    let property = summary.get("fluss-offsets").expect("offsets property");
    assert!(property.len() < 300, "a path, not 2000 buckets inline: {} bytes", property.len());
    let read = committer.latest().await.expect("latest").expect("marker");
    assert_eq!(read.marker.offsets, marker.offsets, "the offsets come back from the file");
    // The outside reader follows the path too.
    let lake = read_lake(&l.warehouse, &l.table.path);
    let outside: Vec<serde_json::Value> =
        serde_json::from_str(lake.properties["fluss-offsets"].as_str().expect("offsets")).expect("json");
    assert_eq!(outside.len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_the_sweep_deletes_unreferenced_old_files_but_leaves_a_tagged_table_alone() {
    let l = paimon_lake().await;
    let committer = l.committer().await;
    committer.commit(vec![l.write(0, 10).await], &epoch_marker("r1", 10, 1), None).await.expect("commit");
    let live = l.data_files();
    l.write(10, 20).await; // written, never committed: an orphan
    let all = l.data_files();
    assert!(all.len() > live.len());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let min_age = std::time::Duration::from_millis(20);

    // A tag holds snapshots the sweep does not read: nothing is deleted.
    let tag_dir = l.warehouse.join("db.db").join("t").join("tag");
    std::fs::create_dir_all(&tag_dir).expect("tag dir");
    std::fs::write(tag_dir.join("tag-1"), b"{}").expect("tag");
    assert_eq!(committer.sweep(min_age).await.expect("sweep").files, 0, "a tagged table is not swept");
    assert_eq!(l.data_files(), all);

    std::fs::remove_dir_all(&tag_dir).expect("untag");
    assert!(committer.sweep(min_age).await.expect("sweep").files > 0, "the orphan is deleted");
    assert_eq!(l.data_files(), live, "only the committed files are left");
    assert_eq!(l.rows(), 10);
}

/// A Paimon table `db.t` (`id`, `name`, and with `system_columns` Fluss's three) made outside this job, without a
/// `fluss.table-id`: by Fluss's coordinator when it has the system columns, by someone else when not.
async fn paimon_table_made_outside(system_columns: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    use paimon::spec::{BigIntType, DataType, IntType, LocalZonedTimestampType, Schema, VarCharType};
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("warehouse");
    let catalog = PaimonFactory::open_catalog(&warehouse).await.expect("catalog");
    catalog.create_database("db", true, Default::default()).await.expect("database");
    let string = VarCharType::with_nullable(true, VarCharType::MAX_LENGTH).expect("varchar");
    let mut schema = Schema::builder()
        .column("id", DataType::BigInt(BigIntType::with_nullable(true)))
        .column("name", DataType::VarChar(string))
        .option("bucket", "-1");
    if system_columns {
        let ts = LocalZonedTimestampType::with_nullable(true, 3).expect("ltz");
        schema = schema
            .column("__bucket", DataType::Int(IntType::with_nullable(true)))
            .column("__offset", DataType::BigInt(BigIntType::with_nullable(true)))
            .column("__timestamp", DataType::LocalZonedTimestamp(ts));
    }
    let schema = schema.build().expect("schema");
    catalog.create_table(&paimon::catalog::Identifier::new("db", "t"), schema, false).await.expect("the table");
    (dir, warehouse)
}

/// A Paimon table of the same name that is neither ours (no `fluss.table-id`) nor Fluss's (no system columns) is
/// refused, not written into, and not evolved either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_a_lake_table_of_the_same_name_that_is_not_a_fluss_table_s_is_refused() {
    let (_dir, warehouse) = paimon_table_made_outside(false).await;
    let factory = fluss_tiering::lake::factory("paimon", &warehouse.as_path().into(), None, LakeOptions::default())
        .await
        .expect("paimon");
    let mut wider = test_table();
    wider.descriptor.columns = parse_schema("id:int64,name:string,extra:int32").expect("schema");
    let err = factory.prepare_table(&wider).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(err.to_string().contains("is not a Fluss table's"), "{err}");
    let schemas = warehouse.join("db.db").join("t").join("schema");
    assert!(!schemas.join("schema-1").exists(), "the table was left as it was");
}

/// A table Fluss's coordinator created (system columns, no id of ours) is adopted; once tiered, its snapshots name
/// their Fluss table, and a re-created Fluss table of the same name (another id) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_a_table_fluss_created_is_adopted_and_its_snapshots_name_their_fluss_table() {
    let (_dir, warehouse) = paimon_table_made_outside(true).await;
    let factory = fluss_tiering::lake::factory("paimon", &warehouse.as_path().into(), None, LakeOptions::default())
        .await
        .expect("paimon");
    let table = test_table();
    assert!(factory.prepare_table(&table).await.expect("adopted").is_none());
    let committer = factory.create_committer(&table).await.expect("committer");
    committer
        .commit(vec![write_rows(factory.as_ref(), &table, 0, 10, 0).await], &marker("r1", 10), None)
        .await
        .expect("commit");
    assert_eq!(factory.prepare_table(&table).await.expect("prepared").expect("a snapshot").marker.table_id, 1);
    let recreated = TableContext { table_id: 2, ..test_table() };
    let err = factory.prepare_table(&recreated).await.expect_err("another table's lake table");
    assert_eq!(err.kind(), ErrorKind::TableNotExist, "{err}");
    assert!(err.to_string().contains("is of Fluss table id 1, not 2"), "{err}");
}

/// An Iceberg table of ours whose partition spec has a field the job cannot fill from a split (a bucket transform, as
/// on a bucket key) is refused before anything in it is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_a_partition_spec_the_job_cannot_fill_is_refused_before_the_table_is_changed() {
    use iceberg::TableCreation;
    use iceberg::spec::{NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("warehouse");
    let catalog = IcebergFactory::open_catalog(&warehouse).await.expect("catalog");
    let namespace = NamespaceIdent::new("db".into());
    catalog.create_namespace(&namespace, Default::default()).await.expect("namespace");
    let fields = [
        ("id", PrimitiveType::Long, false),
        ("name", PrimitiveType::String, false),
        ("__bucket", PrimitiveType::Int, true),
        ("__offset", PrimitiveType::Long, true),
        ("__timestamp", PrimitiveType::Timestamptz, true),
    ];
    let fields = fields.into_iter().enumerate().map(|(i, (name, ty, required))| {
        let id = i as i32 + 1;
        Arc::new(match required {
            true => NestedField::required(id, name, Type::Primitive(ty)),
            false => NestedField::optional(id, name, Type::Primitive(ty)),
        })
    });
    let schema = Schema::builder().with_fields(fields).build().expect("schema");
    let spec = UnboundPartitionSpec::builder().add_partition_field(1, "id_bucket", Transform::Bucket(4)).expect("spec");
    let creation = TableCreation::builder()
        .name("t".into())
        .schema(schema)
        .partition_spec(spec.build())
        .properties([("fluss.table-id".to_string(), "1".to_string())])
        .build();
    catalog.create_table(&namespace, creation).await.expect("the table");
    let factory = IcebergFactory::with_catalog(catalog.clone(), &warehouse, LakeOptions::default()).expect("factory");
    let mut wider = test_table();
    wider.descriptor.columns = parse_schema("id:int64,name:string,extra:int32").expect("schema");
    let err = factory.prepare_table(&wider).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("which this job cannot fill"), "{err}");
    let table = catalog.load_table(&TableIdent::new(namespace, "t".into())).await.expect("load");
    assert!(table.metadata().current_schema().field_by_name("extra").is_none(), "the table was left as it was");
}
