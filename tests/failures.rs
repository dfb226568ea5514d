//! The failure modes Fluss's users hit, each reproduced, each survived with nothing lost and nothing duplicated.

mod common;

use std::time::Duration;

use arrow::array::Array;

use common::*;
use fluss_tiering::failpoint;
use fluss_tiering::model::table::TableDescriptor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_recreated_mid_round_gets_nothing_while_others_keep_tiering() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    // Only the first table has data, so the first split written, where the job pauses, is one of its.
    produce_all(&client, &tables[..1], 0, 2000).await;

    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let pause = [(failpoint::ENV, "mid-split:pause".to_string())];
    let mut job = spawn_tier(&job_url(&cluster), &warehouse, &["--max-tables", "1"], &pause, &stderr);
    wait_stopped(&mut job, "mid-split").await;

    // Mid-round, the table is dropped and re-created under the same name, with other data.
    let old = &tables[0];
    client.drop_table(&old.path, false).await.expect("drop");
    let descriptor: TableDescriptor = old.descriptor.clone();
    let new_id = client.create_table(&old.path, &descriptor, false).await.expect("re-create");
    let recreated = TestTable { id: new_id, path: old.path.clone(), descriptor };
    produce_all(&client, std::slice::from_ref(&recreated), 0, 300).await;
    produce_all(&client, &tables[1..], 0, 1000).await;

    let resumed = std::time::Instant::now();
    signal(&job, libc::SIGCONT);
    wait_tiered(&client, &tables[1..].iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    // The re-created table's rounds fail, each with the reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(stderr.path()).unwrap_or_default().contains("was the table dropped and re-created") {
        assert!(std::time::Instant::now() < deadline, "no round of the re-created table failed with the reason");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = stop_job(job, &stderr).await;
    assert!(resumed.elapsed() < Duration::from_secs(60));

    // The old round (of the dropped table's id) failed and left no files; nothing reached the lake table of that name.
    let log = plain(&log);
    let old_failed = log
        .lines()
        .filter(|l| l.contains("tiering round failed") || l.contains("fenced round ended"))
        .filter(|l| l.contains(&format!("table_id={} ", old.id)))
        .find(|l| l.contains("dropped and re-created") || l.contains("does not exist"));
    assert!(old_failed.is_some(), "the old round (table id {}) failed with the reason:\n{log}", old.id);
    let lake = read_lake(&warehouse, &old.path);
    assert_eq!(lake.rows.num_rows(), 0, "nothing was committed under {}", old.path);
    let table_dir = warehouse.join(format!("{}.db", old.path.database)).join(&old.path.table);
    assert!(table_dir.is_dir(), "the Paimon table directory is where the check looks: {}", table_dir.display());
    let leftovers: Vec<_> =
        walk(&table_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    assert!(leftovers.is_empty(), "the failed round's files are removed: {leftovers:?}");

    // The other tables kept tiering, exactly once.
    for t in &tables[1..] {
        check_exactly_once(&read_lake(&warehouse, &t.path), t, &end_offsets(&client, t).await, 1000);
    }
}

/// A log without its terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_of_one_table_does_not_delay_the_others() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 1000).await;

    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let slow = [(failpoint::SLOW_COMMIT_ENV, format!("{}=6000", tables[0].path))];
    let job = spawn_tier(&job_url(&cluster), &warehouse, &["--max-tables", "3"], &slow, &stderr);
    let started = std::time::Instant::now();

    // The other tables are tiered while the slow table's commit is still sleeping.
    wait_tiered(&client, &tables[1..].iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    let others_done = started.elapsed();
    assert!(
        client.lake_snapshot(&tables[0].path).await.expect("snapshot").is_none()
            && others_done < Duration::from_secs(6),
        "the other tables finished ({others_done:?}) before the slow table's first commit"
    );
    wait_tiered(&client, &[&tables[0]], Duration::from_secs(60)).await;
    stop_job(job, &stderr).await;
    for t in &tables {
        check_exactly_once(&read_lake(&warehouse, &t.path), t, &end_offsets(&client, t).await, 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_survives_a_coordinator_restart_mid_round() {
    let Setup { dir, warehouse, cluster, client, tables } = setup().await;
    let data = dir.path().join("cluster");
    produce_all(&client, &tables, 0, 1000).await;

    // The job stops between its lake commit and its cluster commit; meanwhile the cluster restarts.
    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let pause = [(failpoint::ENV, "after-lake-commit:pause".to_string())];
    let mut job = spawn_tier(&job_url(&cluster), &warehouse, &["--max-tables", "3"], &pause, &stderr);
    wait_stopped(&mut job, "after-lake-commit").await;
    let (_cluster, client) = restart_cluster(cluster, test_config(&data)).await;

    signal(&job, libc::SIGCONT);
    produce_all(&client, &tables, 1000, 500).await;
    wait_tiered(&client, &tables.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    let log = stop_job(job, &stderr).await;
    assert!(log.contains("the coordinator restarted"), "the job noticed the new coordinator epoch:\n{log}");
    check_lake_and_cluster(&client, &warehouse, &tables, 1500).await;
}

/// Fluss's coordinator keeps tiering epochs in memory: after its restart they count from 0 again, so the job's next
/// Paimon rounds come with epochs the lake has already seen. They land, every offset once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_rounds_land_after_a_coordinator_restart_that_counts_tiering_epochs_from_zero() {
    let Setup { dir, warehouse, cluster, client, tables } = setup().await;
    let tier_paimon = |cluster: &fluss_tiering::serve::EmbeddedCluster| {
        let url = job_url(cluster);
        let warehouse = warehouse.clone();
        async move { assert_success(&tier(&url, &warehouse, &["--format", "paimon"], &[]).await) }
    };
    for round in 0..3 {
        produce_all(&client, &tables, round * 500, 500).await;
        tier_paimon(&cluster).await;
    }
    let before: Vec<i64> = client.list_tables().await.expect("tables").iter().map(|t| t.tiering_epoch).collect();
    assert!(before.iter().all(|&e| e >= 3), "three rounds, three epochs at least: {before:?}");

    let mut config = test_config(&dir.path().join("cluster"));
    config.tiering_epochs = fluss_tiering::cluster::coordinator::TieringEpochs::PerStart;
    let (cluster, client) = restart_cluster(cluster, config).await;
    let after: Vec<i64> = client.list_tables().await.expect("tables").iter().map(|t| t.tiering_epoch).collect();
    assert!(after.iter().all(|&e| e <= 1), "the epochs start over: {after:?}");
    for round in 3..5 {
        produce_all(&client, &tables, round * 500, 500).await;
        tier_paimon(&cluster).await;
    }
    check_lake_and_cluster(&client, &warehouse, &tables, 2500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_table_fails_with_a_reason_and_backoff_while_the_others_keep_tiering() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 1000).await;
    // Over gRPC: a failed round's reason reaches `status` in a field of our gRPC heartbeat (Fluss's has none).
    let url = Transport::Grpc.url(&cluster);
    // Iceberg: its columns carry types a job checks the Fluss table against.
    assert_success(&tier(&url, &warehouse, &["--format", "iceberg"], &[]).await);

    // Outside, someone widens db.sensors.sensor from int to long: the lake table no longer fits the Fluss table.
    let retype = format!(
        "from pyiceberg.catalog.sql import SqlCatalog\nfrom pyiceberg.types import LongType\n\
         c = SqlCatalog('fluss', uri='sqlite:///{w}/catalog.db', warehouse='file://{w}')\n\
         t = c.load_table('db.sensors')\nwith t.update_schema() as u:\n    u.update_column('sensor', LongType())\n",
        w = warehouse.canonicalize().expect("warehouse").display()
    );
    let out = std::process::Command::new(python()).arg("-c").arg(&retype).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    produce_all(&client, &tables, 1000, 500).await;

    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let job = spawn_tier(&url, &warehouse, &["--format", "iceberg", "--max-tables", "3"], &[], &stderr);
    wait_tiered(&client, &[&tables[0], &tables[1]], Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["status", "--cluster", &cluster.url()])
        .output()
        .expect("status");
    let log = stop_job(job, &stderr).await;

    let status = String::from_utf8_lossy(&status.stdout);
    let line = status.lines().find(|l| l.starts_with("db.sensors")).expect("sensors in status");
    assert!(line.contains("has type long but the Fluss column is int"), "status says why: {line}");
    let sensors =
        client.list_tables().await.expect("tables").into_iter().find(|t| t.path == tables[2].path).expect("listed");
    // Rounds started at most every backoff (200 ms, doubling): a handful of failures, not hundreds.
    assert!((2..=8).contains(&sensors.failures), "sensors failed {} times in about 4 s", sensors.failures);
    assert!(log.contains("has type long"), "the job's log says why:\n{log}");

    for t in &tables[..2] {
        check_exactly_once(&read_lake(&warehouse, &t.path), t, &end_offsets(&client, t).await, 1500);
    }
    assert_eq!(read_lake(&warehouse, &tables[2].path).rows.num_rows(), 1000, "nothing more reached the bad table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_past_its_freshness_commits_what_it_read_and_goes_again() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 3000).await;

    // A slow cluster: every fetch takes 100 ms and returns one stored batch, so a round cannot read a bucket's backlog
    // within the tables' 200 ms freshness.
    let slow = [(failpoint::SLOW_FETCH_ENV, "100".to_string())];
    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let job = spawn_tier(
        &job_url(&cluster),
        &warehouse,
        &["-w", "2", "--fetch-max-bytes", "1", "--split-rows", "400"],
        &slow,
        &stderr,
    );
    wait_tiered(&client, &tables.iter().collect::<Vec<_>>(), Duration::from_secs(120)).await;
    let log = stop_job(job, &stderr).await;
    assert!(log.contains("force-finished at its deadline"), "rounds hit their deadline:\n{log}");
    for t in &tables {
        let lake = read_lake(&warehouse, &t.path);
        check_exactly_once(&lake, t, &end_offsets(&client, t).await, 3000);
        assert!(lake.snapshots >= 2, "{}: the backlog was committed over several rounds", t.path);
    }
}

/// Tiers `rows` rows of each test table with `tier --once ARGS` (each round's deadline 1 ms after planning began, so
/// past before its first split starts), checks every offset once, and returns each table's snapshot count.
async fn tier_past_the_deadline(rows: u64, args: &[&str]) -> Vec<(String, u64)> {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, rows).await;
    let args: Vec<&str> = ["--once", "--max-round-duration", "1ms"].iter().chain(args).copied().collect();
    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let job = spawn_tier(&job_url(&cluster), &warehouse, &args, &[], &stderr);
    let status = wait_exit(job, Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(stderr.path()).expect("log");
    assert!(status.success(), "the job caught up and exited:\n{log}");
    let mut snapshots = Vec::new();
    for t in &tables {
        let lake = read_lake(&warehouse, &t.path);
        check_exactly_once(&lake, t, &end_offsets(&client, t).await, rows);
        snapshots.push((t.path.to_string(), lake.snapshots));
    }
    snapshots
}

/// Every split still reads once past its deadline, so the job catches up over many short rounds (one stored batch
/// per fetch, ranges cut at 500 rows) instead of re-queueing empty ones for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_that_start_past_their_deadline_still_make_progress() {
    for (table, snapshots) in tier_past_the_deadline(2000, &["--fetch-max-bytes", "1", "--split-rows", "500"]).await {
        assert!(snapshots >= 2, "{table}: over several cut-short rounds");
    }
}

/// The same with ranges left whole (packed, in Paimon): every range of a round that starts past its deadline is read
/// once, so one round takes each table's backlog (one fetch holds it), not one bucket per pack per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_past_its_deadline_reads_every_bucket_it_holds() {
    for (table, snapshots) in tier_past_the_deadline(600, &[]).await {
        assert_eq!(snapshots, 1, "{table}: one round took every bucket");
    }
}

/// Rounds of the busy table committed by a job over a few seconds of steady produce, next to `empty` empty tables.
async fn busy_rounds_beside(empty: usize) -> (u64, Vec<i64>) {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    let busy = &tables[0];
    let mut empty_ids = Vec::new();
    for i in 0..empty {
        let path = format!("empty.t{i}").parse().expect("path");
        empty_ids.push(client.create_table(&path, &tables[2].descriptor, false).await.expect("create"));
    }
    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let job = spawn_tier(&job_url(&cluster), &warehouse, &["--max-tables", "2"], &[], &stderr);
    let mut produced = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        produce_all(&client, std::slice::from_ref(busy), produced, 100).await;
        produced += 100;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_tiered(&client, &[busy], Duration::from_secs(60)).await;
    stop_job(job, &stderr).await;
    let lake = read_lake(&warehouse, &busy.path);
    check_exactly_once(&lake, busy, &end_offsets(&client, busy).await, produced);
    let listed = client.list_tables().await.expect("tables");
    let epochs = listed.iter().filter(|t| empty_ids.contains(&t.table_id)).map(|t| t.tiering_epoch).collect();
    (lake.snapshots, epochs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tables_cost_the_busy_table_nothing() {
    let (alone, _) = busy_rounds_beside(0).await;
    let (beside, epochs) = busy_rounds_beside(100).await;
    assert!(epochs.iter().all(|e| *e == 0), "an empty table is never handed to a job: {epochs:?}");
    assert!(beside * 4 >= alone * 3, "the busy table committed {beside} rounds beside 100 empty tables, {alone} alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_evolves_the_lake_table_and_old_rows_read_null() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 1000).await;
    assert_success(&tier(&job_url(&cluster), &warehouse, &[], &[]).await);

    let old = &tables[0];
    // Rows stored under the old schema, not yet tiered when the column is added.
    produce_all(&client, std::slice::from_ref(old), 1000, 200).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args([
            "alter-table",
            "--cluster",
            &cluster.url(),
            "--table",
            &old.path.to_string(),
            "--add-column",
            "note:string",
        ])
        .output()
        .expect("alter-table");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, descriptor) = client.table_info(&old.path).await.expect("info");
    let evolved = TestTable { id: old.id, path: old.path.clone(), descriptor };
    // Producers still on the old schema are refused with a clear error.
    let stale = WORKLOAD.batch(&old.descriptor, &[5000]).expect("batch");
    let err = client.produce(old.id, None, 0, &[stale]).await.expect_err("old schema");
    assert_eq!(err.kind(), fluss_tiering::ErrorKind::SchemaMismatch);
    produce_all(&client, std::slice::from_ref(&evolved), 1200, 300).await;
    assert_success(&tier(&job_url(&cluster), &warehouse, &[], &[]).await);

    let lake = read_lake(&warehouse, &old.path);
    check_exactly_once(&lake, old, &end_offsets(&client, old).await, 1500);
    let ids =
        lake.rows.column_by_name("id").expect("id").as_any().downcast_ref::<arrow::array::Int64Array>().expect("ids");
    let note = arrow::compute::cast(
        lake.rows.column_by_name("note").expect("note column in the lake"),
        &arrow::datatypes::DataType::Utf8,
    )
    .expect("cast");
    let note = note.as_any().downcast_ref::<arrow::array::StringArray>().expect("strings");
    let new_rows: Vec<u64> = (1200..1500).collect();
    let expected = WORKLOAD.batch(&evolved.descriptor, &new_rows).expect("rows");
    let expected = expected
        .column_by_name("note")
        .expect("note")
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .expect("strings");
    for i in 0..lake.rows.num_rows() {
        let id = ids.value(i);
        if id < 1200 {
            assert!(note.is_null(i), "row {id}, produced before the column existed, reads null");
        } else {
            let j = (id - 1200) as usize;
            assert_eq!(note.is_null(i), expected.is_null(j), "row {id}");
            if !expected.is_null(j) {
                assert_eq!(note.value(i), expected.value(j), "row {id}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paimon_table_whose_creation_was_cut_short_is_created_again() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    produce_all(&client, &tables, 0, 700).await;
    // What a crash in the middle of the catalog's create-table leaves behind: the database, the table's directory
    // and an empty schema file, no snapshot.
    let schema_dir = warehouse.join("db.db").join("orders").join("schema");
    std::fs::create_dir_all(&schema_dir).expect("dirs");
    std::fs::write(schema_dir.join("schema-0"), b"").expect("torn schema file");
    let out = tier(&job_url(&cluster), &warehouse, &[], &[]).await;
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("half-created"), "the repair is logged");
    check_lake_and_cluster(&client, &warehouse, &tables, 700).await;
}
