//! Lakes on object storage: the job tiers into `s3://lake/FORMAT` on a real S3-compatible server (moto's, its own
//! process on a loopback port; `common::s3`), and pypaimon / pyiceberg read the tables back from that endpoint,
//! every (bucket, offset) once: after a clean run, after a crash at every point of a round, and after a lake
//! commit whose reply was lost; and the orphan sweep then leaves no unreferenced data file in the bucket. Nothing of
//! the lake is written to local disk but the Iceberg SQL catalog. A store that ignores conditional puts is refused
//! with the reason.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;

use common::s3::S3Server;
use common::*;
use fluss_tiering::failpoint;

/// A test's lake on S3: the warehouse URI, the Iceberg catalog on local disk (Iceberg only), the server.
struct S3Lake {
    s3: S3Server,
    warehouse: String,
    catalog: Option<PathBuf>,
    /// The job's working and temp directory (empty at the start): a lake file mistaken for a local path lands here.
    home: PathBuf,
}

impl S3Lake {
    async fn start(format: &str, dir: &std::path::Path) -> Self {
        let s3 = S3Server::start().await;
        let catalog = (format == "iceberg").then(|| dir.join("catalog.db"));
        S3Lake { s3, warehouse: format!("s3://lake/{format}"), catalog, home: dir.join("job") }
    }

    /// `tier`'s flags for this lake, besides the warehouse. Rounds are not cut at the tables' 200 ms freshness: a
    /// file put to moto under a loaded machine can take longer, and a round cut before any split is done commits
    /// nothing and goes again.
    fn args<'a>(&'a self, format: &'a str, catalog: &'a str) -> Vec<&'a str> {
        let mut args = vec!["--format", format, "--s3-path-style-access", "--max-round-duration", "60s"];
        if self.catalog.is_some() {
            args.extend(["--catalog", catalog]);
        }
        args
    }

    fn catalog_arg(&self) -> String {
        self.catalog.as_ref().map(|c| format!("sqlite:{}", c.display())).unwrap_or_default()
    }

    async fn tier(&self, url: &str, format: &str, extra: &[&str], faults: &[(&str, &str)]) -> std::process::Output {
        self.tier_in(Some(&self.home), url, format, extra, faults).await
    }

    /// [`S3Lake::tier`] as on a host of its own (`home`: its working and temp directory).
    async fn tier_in(
        &self,
        home: Option<&std::path::Path>,
        url: &str,
        format: &str,
        extra: &[&str],
        faults: &[(&str, &str)],
    ) -> std::process::Output {
        let catalog = self.catalog_arg();
        let mut args = self.args(format, &catalog);
        args.extend(extra);
        let env = self.s3.env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend(faults);
        tier_in(home, url, &self.warehouse, &args, &env).await
    }

    /// The data files in the bucket (listed by boto3) that no table's current snapshot references (as its reader
    /// says).
    fn unreferenced_data_files(&self, format: &str, tables: &[TestTable]) -> Vec<String> {
        let referenced: std::collections::BTreeSet<String> = tables
            .iter()
            .flat_map(|t| self.read(&t.path).files)
            .filter_map(|f| Some(f.file_name()?.to_string_lossy().into_owned()))
            .collect();
        let keys = self.s3.keys("lake", &format!("{format}/"));
        let name = |k: &String| k.rsplit('/').next().unwrap_or_default().to_string();
        keys.into_iter().filter(|k| k.ends_with(".parquet") && !referenced.contains(&name(k))).collect()
    }

    fn read(&self, table: &fluss_tiering::model::table::TablePath) -> LakeTable {
        let catalog = self.catalog_arg();
        let flags: Vec<&str> = if self.catalog.is_some() { vec!["--catalog", &catalog] } else { Vec::new() };
        dump_lake_at(OsStr::new(&self.warehouse), table, &flags, &self.s3.env())
    }
}

async fn tiers_into_s3_through_crashes_and_lost_replies(format: &str) {
    let Setup { dir, warehouse, cluster, client, tables } = setup().await;
    let lake = S3Lake::start(format, dir.path()).await;
    let url = job_url(&cluster);

    produce_all(&client, &tables, 0, 1000).await;
    assert_success(&lake.tier(&url, format, &[], &[]).await);
    check_read_lake_and_cluster(&client, |t| lake.read(t), &tables, 1000).await;
    let keys = lake.s3.keys("lake", &format!("{format}/"));
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{format}: the data files are in the bucket: {keys:?}");
    assert!(!warehouse.exists(), "nothing of the lake on local disk");
    let local: Vec<_> = walk(&lake.home).into_iter().filter(|p| !p.starts_with(lake.home.join("tmp"))).collect();
    assert!(local.is_empty(), "{format}: the job wrote nothing to its working directory: {local:?}");

    // A crash at every point of a round, each with more rows to tier.
    let mut total = 1000;
    for point in failpoint::POINTS {
        produce_all(&client, &tables, total, 100).await;
        total += 100;
        let out = lake.tier(&url, format, &[], &[(failpoint::ENV, point)]).await;
        assert_eq!(out.status.code(), Some(failpoint::EXIT_CODE), "{format}: the job crashed at {point}");
    }
    produce_all(&client, &tables, total, 100).await;
    total += 100;
    let orphans = lake.unreferenced_data_files(format, &tables);
    assert!(!orphans.is_empty(), "{format}: the crashes left files no snapshot references");
    // A lake commit that lands and then reports an error.
    let out = lake.tier(&url, format, &["--max-tables", "1"], &[(failpoint::ENV, "lake-commit-reply:error")]).await;
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("commit reported an error but landed"), "{format}: the committer looked in the lake:\n{log}");
    // The sweep (after a table's first commit in a job), through the same store: the crashes' files are older than
    // the shortest orphan age the job accepts.
    produce_all(&client, &tables, total, 100).await;
    total += 100;
    tokio::time::sleep(std::time::Duration::from_millis(10_500)).await;
    let out = lake.tier(&url, format, &["--orphan-age", "10s"], &[]).await;
    assert_success(&out);
    let left = lake.unreferenced_data_files(format, &tables);
    assert!(
        left.is_empty(),
        "{format}: the sweep deleted every orphan: {left:?} (of {} before)\n{}",
        orphans.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    check_read_lake_and_cluster(&client, |t| lake.read(t), &tables, total).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_on_s3_tiers_every_offset_once_through_crashes_and_lost_replies() {
    tiers_into_s3_through_crashes_and_lost_replies("paimon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_on_s3_tiers_every_offset_once_through_crashes_and_lost_replies() {
    tiers_into_s3_through_crashes_and_lost_replies("iceberg").await;
}

/// Two timely processes (`-n 2`) as on two hosts: distinct working and temp directories, sharing only the bucket
/// (and, for Iceberg, the catalog URI). The second dies mid-round (at its first split); the first, its peer gone,
/// does not report success; both restart and tier everything: every offset once, nothing of the lake on either
/// host's disk.
async fn two_processes_sharing_only_the_bucket(format: &str) {
    let Setup { dir, warehouse, cluster, client, tables } = setup().await;
    let lake = S3Lake::start(format, dir.path()).await;
    let url = job_url(&cluster);
    let ports = free_ports(2);
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).expect("hostfile");
    let hostfile = hostfile.display().to_string();
    let homes = [dir.path().join("host0"), dir.path().join("host1")];
    let run = |process: usize, faults: &'static [(&'static str, &'static str)]| {
        let index = process.to_string();
        let lake = &lake;
        let (url, hostfile, home) = (&url, &hostfile, &homes[process]);
        async move {
            let args = ["-n", "2", "-p", index.as_str(), "-h", hostfile.as_str()];
            lake.tier_in(Some(home), url, format, &args, faults).await
        }
    };

    produce_all(&client, &tables, 0, 1000).await;
    const DIES_AT_A_SPLIT: &[(&str, &str)] = &[(failpoint::ENV, "mid-split")];
    let (first, second) = tokio::join!(run(0, &[]), run(1, DIES_AT_A_SPLIT));
    assert_eq!(second.status.code(), Some(failpoint::EXIT_CODE), "{format}: the second process died at a split");
    assert!(!first.status.success(), "{format}: the first process does not report success without its peer");

    produce_all(&client, &tables, 1000, 200).await;
    let (first, second) = tokio::join!(run(0, &[]), run(1, &[]));
    assert_success(&first);
    assert_success(&second);
    check_read_lake_and_cluster(&client, |t| lake.read(t), &tables, 1200).await;
    assert!(!warehouse.exists(), "nothing of the lake on local disk");
    for home in &homes {
        let local: Vec<_> = walk(home).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
        assert!(local.is_empty(), "{format}: no lake file on {}: {local:?}", home.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paimon_on_s3_two_processes_sharing_only_the_bucket_tier_every_offset_once() {
    two_processes_sharing_only_the_bucket("paimon").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_on_s3_two_processes_sharing_only_the_bucket_tier_every_offset_once() {
    two_processes_sharing_only_the_bucket("iceberg").await;
}

/// A store that accepts a second conditional put of one name cannot keep a round's commit exclusive: the job says
/// so and does not start, in either format, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_conditional_puts_is_refused_with_the_reason() {
    let Setup { dir, cluster, client, tables, .. } = setup().await;
    produce_all(&client, &tables, 0, 100).await;
    let s3 = S3Server::start_without_conditional_puts().await;
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let catalog = format!("sqlite:{}", dir.path().join("catalog.db").display());
    for (format, extra) in [("paimon", vec![]), ("iceberg", vec!["--catalog", catalog.as_str()])] {
        let mut args = vec!["--format", format, "--s3-path-style-access"];
        args.extend(extra);
        let out = tier(&job_url(&cluster), format!("s3://lake/{format}"), &args, &env).await;
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{format}: the job refused the store:\n{log}");
        assert!(log.contains("accepted a second conditional put"), "{format}: the reason is given:\n{log}");
        let left = s3.keys("lake", &format!("{format}/"));
        assert!(left.is_empty(), "{format}: nothing was written but the probe, and it was removed: {left:?}");
    }
}

/// An Iceberg warehouse on S3 without a catalog URI is refused up front: the SQL catalog cannot live in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iceberg_warehouse_on_s3_needs_a_catalog_uri() {
    let Setup { cluster, .. } = setup().await;
    let s3 = S3Server::start().await;
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["--format", "iceberg", "--s3-path-style-access"];
    let out = tier(&job_url(&cluster), "s3://lake/iceberg", &args, &env).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && log.contains("needs --catalog"), "{log}");
}

/// `bench --warehouse local,s3://…` sets local disk against the bucket in one run: the baseline, then the same rows
/// tiered into each (by `-n 2` processes, which get the endpoint and credentials from the parent's flags), each run's
/// lake a new folder under the S3 prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sets_local_disk_against_s3() {
    let s3 = S3Server::start().await;
    let env = s3.env();
    let var = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).expect(name);
    for format in ["paimon", "iceberg"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let json = dir.path().join("runs.jsonl");
        let prefix = format!("bench-{format}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
            .args(["bench", "--rows", "3000", "--buckets", "2", "--workers", "1", "--processes", "2"])
            .args(["--format", format, "--warehouse", &format!("local,s3://lake/{prefix}"), "--s3-path-style-access"])
            .args(["--s3-endpoint", &s3.endpoint, "--s3-region", "us-east-1"])
            .args(["--s3-access-key-id", &var("AWS_ACCESS_KEY_ID")])
            .args(["--s3-secret-access-key", &var("AWS_SECRET_ACCESS_KEY")])
            .arg("--json")
            .arg(&json)
            .arg("--dir")
            .arg(dir.path().join("work"))
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_REGION")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .output()
            .expect("bench");
        assert!(out.status.success(), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&json).expect("json file");
        let runs: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        let stores: Vec<&str> = runs.iter().map(|r| r["warehouse"].as_str().expect("warehouse")).collect();
        assert_eq!(stores, ["-", "local", "s3"], "{format}: the baseline, then one run per warehouse: {runs:?}");
        assert!(runs.iter().all(|r| r["rows"].as_u64() == Some(3000)), "{format}: every run tiers every row: {runs:?}");
        let keys = s3.keys("lake", &format!("{prefix}/"));
        let lake = format!("{prefix}/lake-grpc-w1-");
        assert!(keys.iter().any(|k| k.starts_with(&lake) && k.ends_with(".parquet")), "{format}: {keys:?}");
    }
}
