//! The failure modes Fluss's users hit, each reproduced, each survived with nothing lost and nothing duplicated.

mod common;

use std::time::Duration;

use common::*;
use fluss_tiering::cluster::table::TableDescriptor;
use fluss_tiering::failpoint;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_recreated_mid_round_gets_nothing_while_others_keep_tiering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("warehouse");
    let (cluster, client) = start_cluster(&dir.path().join("cluster")).await;
    let tables = create_tables(&client).await;
    // Only the first table has data, so the first split written, where the job pauses, is one of its.
    produce_all(&client, &tables[..1], 0, 2000).await;

    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let pause = [(failpoint::ENV, "mid-split:pause".to_string())];
    let mut job = spawn_tier(&cluster.url(), &warehouse, &["--max-tables", "1"], &pause, &stderr);
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
    signal(&job, libc::SIGTERM);
    let status = wait_exit(job, Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(stderr.path()).expect("log");
    assert!(status.success(), "the job stops cleanly on SIGTERM:\n{log}");
    assert!(resumed.elapsed() < Duration::from_secs(60));

    // The old round failed and left no files; nothing reached the lake table of that name.
    assert!(log.contains("does not exist") || log.contains("dropped and re-created"), "the old round failed:\n{log}");
    let lake = read_lake(&warehouse, &old.path);
    assert_eq!(lake.rows.num_rows(), 0, "nothing was committed under {}", old.path);
    let data_dir = warehouse.join("db").join(&old.path.table).join("data");
    let leftovers: Vec<_> =
        walk(&data_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    assert!(leftovers.is_empty(), "the failed round's files are removed: {leftovers:?}");

    // The other tables kept tiering, exactly once.
    for t in &tables[1..] {
        check_exactly_once(&read_lake(&warehouse, &t.path), t, &end_offsets(&client, t).await, 1000);
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_of_one_table_does_not_delay_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("warehouse");
    let (cluster, client) = start_cluster(&dir.path().join("cluster")).await;
    let tables = create_tables(&client).await;
    produce_all(&client, &tables, 0, 1000).await;

    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let slow = [(failpoint::SLOW_COMMIT_ENV, format!("{}=6000", tables[0].path))];
    let job = spawn_tier(&cluster.url(), &warehouse, &["--max-tables", "3"], &slow, &stderr);
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
    signal(&job, libc::SIGTERM);
    let status = wait_exit(job, Duration::from_secs(120)).await;
    assert!(status.success(), "{}", std::fs::read_to_string(stderr.path()).unwrap_or_default());
    for t in &tables {
        check_exactly_once(&read_lake(&warehouse, &t.path), t, &end_offsets(&client, t).await, 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_survives_a_coordinator_restart_mid_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (warehouse, data) = (dir.path().join("warehouse"), dir.path().join("cluster"));
    let (cluster, client) = start_cluster(&data).await;
    let tables = create_tables(&client).await;
    produce_all(&client, &tables, 0, 1000).await;

    // The job stops between its lake commit and its cluster commit; meanwhile the cluster restarts.
    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let pause = [(failpoint::ENV, "after-lake-commit:pause".to_string())];
    let mut job = spawn_tier(&cluster.url(), &warehouse, &["--max-tables", "3"], &pause, &stderr);
    wait_stopped(&mut job, "after-lake-commit").await;
    let addr = cluster.addr();
    cluster.shutdown().await.expect("shutdown");
    let mut config = fluss_tiering::cluster::ClusterConfig::new(&data);
    config.heartbeat_timeout = Duration::from_millis(1500);
    let _cluster = fluss_tiering::cluster::server::EmbeddedCluster::start_at(config, addr).await.expect("restart");
    let client = fluss_tiering::rpc::ClusterClient::connect(&format!("http://{addr}")).await.expect("reconnect");

    signal(&job, libc::SIGCONT);
    produce_all(&client, &tables, 1000, 500).await;
    wait_tiered(&client, &tables.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    signal(&job, libc::SIGTERM);
    let status = wait_exit(job, Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(stderr.path()).expect("log");
    assert!(status.success(), "{log}");
    assert!(log.contains("the coordinator restarted"), "the job noticed the new coordinator epoch:\n{log}");
    for t in &tables {
        let lake = read_lake(&warehouse, &t.path);
        check_exactly_once(&lake, t, &end_offsets(&client, t).await, 1500);
        let recorded = client.lake_snapshot(&t.path).await.expect("snapshot").expect("recorded");
        assert_eq!(
            Some(recorded.snapshot_id),
            lake.current_snapshot_id,
            "{}: the cluster agrees with the lake",
            t.path
        );
    }
}
