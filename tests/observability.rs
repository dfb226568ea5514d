//! What a person at the command line types and sees: the job's Prometheus metrics, `status`, what `tier --once`
//! says while it waits, `--now`, the Flink tiering job's spellings, and readable output in files.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn scrape(addr: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if response.starts_with("HTTP/1.1 200") { Some(response) } else { None }
}

/// The body of an HTTP response.
fn body(response: &str) -> String {
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Every family and sample name in OpenMetrics `texts`, as the Python Prometheus client's parser reads them (it
/// fails on anything that is not OpenMetrics).
fn parse_openmetrics(texts: &[String]) -> BTreeSet<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(python());
    cmd.arg("-c").arg(
        "import json, sys\n\
         from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
         names = set()\n\
         for path in sys.argv[1:]:\n\
         \x20   for family in text_string_to_metric_families(open(path).read()):\n\
         \x20       names.add(family.name)\n\
         \x20       names.update(sample.name for sample in family.samples)\n\
         print(json.dumps(sorted(names)))\n",
    );
    for (i, text) in texts.iter().enumerate() {
        let path = dir.path().join(format!("metrics-{i}.txt"));
        std::fs::write(&path, text).expect("write");
        cmd.arg(path);
    }
    let out = cmd.output().expect("python");
    assert!(out.status.success(), "the parser refused the metrics: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("names")
}

/// The metric names a text puts in backticks (`fluss_tiering_…`, `fluss_cluster_…`, labels left out).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.starts_with("fluss_tiering_") || quoted.starts_with("fluss_cluster_"))
        .map(|quoted| quoted.split('{').next().unwrap_or(quoted).to_string())
        .collect()
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_lag_falling_to_zero() {
    let Setup { dir: _dir, warehouse, cluster, client, tables } = setup().await;
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let job = spawn_tier(&cluster.url(), &warehouse, &["--metrics-addr", &addr], &[], &stderr);
    let lag_series = format!("fluss_tiering_table_lag_offsets{{table=\"{}\"}}", tables[0].path);

    // Produce for a while, scraping as we go: the lag is seen above zero while rounds chase the producer.
    let mut max_lag = 0.0f64;
    let mut produced = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        produce_all(&client, &tables[..1], produced, 200).await;
        produced += 200;
        if let Some(m) = scrape(&addr) {
            max_lag = max_lag.max(value(&m, &lag_series).unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then it falls to zero once the producer stops and the job has caught up. (The job's lag is as of its latest
    // round's planning; the cluster's own metrics have the lag as of now.)
    wait_tiered(&client, &[&tables[0]], Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        if let Some(m) = scrape(&addr).filter(|m| value(m, &lag_series) == Some(0.0)) {
            break m;
        }
        assert!(Instant::now() < deadline, "the lag never reached zero");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(max_lag > 0.0, "the lag was seen above zero while producing");
    assert!(value(&last, "fluss_tiering_rows_total").unwrap_or(0.0) >= produced as f64);
    assert!(value(&last, "fluss_tiering_commit_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(value(&last, "fluss_tiering_rounds_committed_total").unwrap_or(0.0) >= 1.0);
    assert!(last.contains("fluss_tiering_commit_seconds_bucket{le=\"+Inf\"}"));
    stop_job(job, &stderr).await;

    // Both endpoints read by a parser that is not ours (the Python Prometheus client's strict OpenMetrics parser)
    // carry every metric the README names.
    let served = Arc::clone(cluster.cluster());
    let render: fluss_tiering::metrics::Render = Arc::new(move || served.render_metrics());
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster_addr = fluss_tiering::metrics::serve(any, render).await.expect("serve cluster metrics").to_string();
    let job_text = body(&last);
    let cluster_text = body(&scrape(&cluster_addr).expect("cluster metrics"));
    let families = parse_openmetrics(&[job_text, cluster_text]);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let listed = metric_names(&readme);
    assert!(listed.len() >= 15, "the README names the metrics: {listed:?}");
    for name in &listed {
        assert!(families.contains(name), "{name} (README) is not served: {families:?}");
    }
    check_exactly_once(
        &read_lake(&warehouse, &tables[0].path),
        &tables[0],
        &end_offsets(&client, &tables[0]).await,
        produced,
    );
}

/// Runs `fluss-tiering bench ARGS --json FILE` in a temporary directory; returns its JSON documents.
fn bench(args: &[&str]) -> Vec<serde_json::Value> {
    bench_and_plot(args).0
}

/// [`bench`] with `--plot FILE.svg`; also returns the SVG.
fn bench_and_plot(args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (json, plot) = (dir.path().join("runs.jsonl"), dir.path().join("plot.svg"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .arg("--dir")
        .arg(dir.path().join("work"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&json).expect("json file");
    let runs = text.lines().map(|l| serde_json::from_str(l).expect("one JSON document per line")).collect();
    (runs, std::fs::read_to_string(&plot).expect("the plot"))
}

#[test]
fn bench_writes_one_json_document_per_run() {
    const ROWS: u64 = 100_000;
    let rows = ROWS.to_string();
    let (runs, svg) =
        bench_and_plot(&["--rows", &rows, "--buckets", "2", "--workers", "1,2", "--transport", "grpc,fluss,direct"]);
    assert_eq!(runs.len(), 7, "the baseline, then one run per transport and worker count");
    assert!(svg.starts_with("<svg") && svg.contains("rows per second") && svg.contains("baseline (1 core)"), "{svg}");
    assert!(
        svg.contains("tiering, grpc") && svg.contains("tiering, fluss") && svg.contains("tiering, direct"),
        "{svg}"
    );
    assert!(runs[0]["kind"].as_str().expect("kind").starts_with("baseline"));
    let made: Vec<(String, u64)> = runs
        .iter()
        .skip(1)
        .map(|r| (r["transport"].as_str().expect("transport").to_string(), r["workers"].as_u64().expect("workers")))
        .collect();
    let expected = [("grpc", 1), ("grpc", 2), ("fluss", 1), ("fluss", 2), ("direct", 1), ("direct", 2)]
        .map(|(t, w)| (t.to_string(), w));
    assert_eq!(made, expected);
    for r in &runs {
        for field in ["rows", "arrow_bytes", "parquet_bytes", "files", "cores", "peak_rss_bytes"] {
            assert!(r[field].as_u64().expect(field) > 0, "{field} is positive in {r}");
        }
        for field in ["wall_seconds", "rows_per_second", "arrow_mb_per_second", "ratio_to_baseline"] {
            assert!(r[field].as_f64().expect(field) > 0.0, "{field} is positive in {r}");
        }
        assert_eq!(r["rows"].as_u64(), Some(ROWS), "every run tiers every row");
        assert!(!r["cpu_model"].as_str().expect("cpu model").is_empty());
    }
    for r in runs.iter().skip(1) {
        let phases = r["phase_seconds"].as_object().expect("phase_seconds");
        for phase in ["schedule", "plan", "fetch", "decode", "encode_write", "lake_commit", "cluster_commit"] {
            assert!(phases[phase].as_f64().expect(phase) >= 0.0, "{phase} in {r}");
        }
        for phase in ["fetch", "encode_write", "lake_commit"] {
            assert!(phases[phase].as_f64().expect(phase) > 0.0, "{phase} took time in {r}");
        }
        let sum: f64 = phases.values().filter_map(|v| v.as_f64()).sum();
        let wall = r["wall_seconds"].as_f64().expect("wall");
        assert!((sum - wall).abs() <= 0.1 * wall, "phases add up to {sum}s, the run took {wall}s: {r}");
    }
}

#[test]
fn bench_tiers_a_tpch_table() {
    let runs = bench(&["--dataset", "tpch:nation", "--workers", "1", "--buckets", "2"]);
    assert_eq!(runs.len(), 2, "the baseline and one run");
    assert!(runs.iter().all(|r| r["rows"].as_u64() == Some(25)), "TPC-H has 25 nations: {runs:?}");
}

#[test]
fn bench_runs_the_job_as_several_processes() {
    let runs = bench(&["--rows", "30000", "--buckets", "3", "--partitions", "2", "--workers", "1", "--processes", "2"]);
    let run = &runs[1];
    assert_eq!(run["processes"].as_u64(), Some(2));
    assert_eq!(run["rows"].as_u64(), Some(30_000), "the two processes together tier every row once");
    // 2 partitions x 3 buckets, their small ranges packed: at most one file set per worker per partition, not one
    // per bucket.
    let files = run["files"].as_u64().expect("files");
    assert!((2..=4).contains(&files), "{files} files: {run}");
}

#[test]
fn freshness_run_reports_append_to_visible_lag_per_table() {
    let (tables, svg) = bench_and_plot(&[
        "--freshness-for",
        "5s",
        "--rate",
        "2000",
        "--table-freshness",
        "500ms",
        "--tables",
        "2",
        "--workers",
        "2",
    ]);
    assert_eq!(tables.len(), 2, "one document per table");
    for t in &tables {
        assert_eq!(t["kind"], "freshness");
        assert_eq!(t["rows"].as_u64(), Some(10_000), "5s at 2000 rows/s: {t}");
        assert_eq!(t["rows_not_visible"].as_u64(), Some(0), "every row reached the lake: {t}");
        assert_eq!(t["freshness_target_seconds"].as_f64(), Some(0.5));
        // Rows became visible while the producer ran, round after round, not in one commit at the end (5 s of
        // producing leave room for a few rounds even on a loaded machine, where one round can take seconds).
        assert!(t["lake_snapshots"].as_u64().expect("snapshots") >= 3, "{t}");
        let (p50, p99, max) = (
            t["p50_seconds"].as_f64().expect("p50"),
            t["p99_seconds"].as_f64().expect("p99"),
            t["max_seconds"].as_f64().expect("max"),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{t}");
        // The lag over time: a sawtooth that drops at every commit and never exceeds the worst row's lag by more
        // than a poll's worth.
        let points: Vec<(f64, f64)> = serde_json::from_value(t["lag_over_time"].clone()).expect("lag_over_time");
        let drops = points.windows(2).filter(|w| w[0].0 == w[1].0 && w[1].1 < w[0].1).count();
        assert!(drops >= 3, "the lag drops at commits: {points:?}");
        assert!(points.iter().all(|(_, lag)| *lag >= 0.0 && *lag <= max + 1.0), "{points:?}");
        assert!(svg.contains(t["table"].as_str().expect("table")), "the plot names {t}");
    }
}

#[test]
fn bench_reports_what_consolidation_saves_on_a_primary_key_workload() {
    use fluss_tiering::workload::{KvMix, Workload};
    let runs =
        bench(&["--rows", "40000", "--buckets", "2", "--pk-ratio", "1", "--update-ratio", "0.8", "--workers", "1"]);
    let run = &runs[1];
    let (changes, rows) = (run["changes_read"].as_u64().expect("changes"), run["rows"].as_u64().expect("rows"));
    // 80% of the rows update an earlier key, each update two changes (-U, +U): one round (bench rounds are not cut
    // short) writes exactly one row per key alive at the end, whatever happened to it on the way.
    let live = Workload { seed: 7, partitions: 1 }.kv_state(40_000, KvMix { update: 0.8, delete: 0.05 }).len();
    assert_eq!(rows, live as u64, "one row per live key: {run}");
    assert!(changes > 40_000 && rows * 2 < changes, "consolidation writes a fraction of the changes: {run}");
}

/// What a person sees of `demo` with its output in files: no escape codes in the logs, no INFO lines (they would
/// drown the summary), and stdout ends with the warehouse to open.
#[test]
fn demo_output_is_readable_in_files_and_ends_with_its_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["demo", "--rows", "2000", "--dir"])
        .arg(dir.path().join("demo"))
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .status()
        .expect("demo");
    let (out, err) =
        (std::fs::read_to_string(&stdout).expect("stdout"), std::fs::read_to_string(&stderr).expect("stderr"));
    assert!(status.success(), "{out}\n{err}");
    assert!(!err.contains('\u{1b}') && !out.contains('\u{1b}'), "no escape codes in files:\n{err}");
    assert!(!err.contains(" INFO "), "the demo's logs are warnings and above:\n{err}");
    let last = out.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(last.starts_with("The lake is a Paimon filesystem catalog: warehouse file://"), "{out}");
    // The job tiered over Fluss's protocol, and every table caught up both times.
    assert!(out.contains("which the job tiers over"), "{out}");
    let lags: Vec<&str> =
        out.lines().filter(|l| l.starts_with("demo.")).filter_map(|l| l.split_whitespace().last()).collect();
    assert!(lags.len() == 8 && lags.iter().all(|lag| *lag == "0"), "4 tables, 2 rounds, no lag: {out}");

    // A command that fails names each cause once.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["tables", "--cluster", "http://127.0.0.1:1"])
        .output()
        .expect("tables");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("an error line:\n{err}"));
    let parts: Vec<&str> = line.trim_start_matches("error: ").split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} twice in {line:?}");
    }
    assert!(!err.contains('\u{1b}'), "no escape codes in a pipe");
}

/// A log table `id:int64,name:string` with the default freshness (3 minutes).
fn id_and_name(buckets: u32) -> fluss_tiering::model::table::TableDescriptor {
    fluss_tiering::model::table::TableDescriptor {
        columns: fluss_tiering::model::table::parse_schema("id:int64,name:string").expect("schema"),
        buckets,
        partition_key: None,
        primary_key: vec![],
        properties: Default::default(),
    }
}

/// Polls `file` until a line contains every one of `needles`; returns that line.
async fn wait_for_line(file: &std::path::Path, needles: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no line with {needles:?} within {within:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first run of a new user: a table with the default freshness (3 minutes, counted from its creation), rows
/// produced, `tier --once`. The job says within seconds what it waits for and when the table is due; `--now` makes
/// it due at once and the run ends within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_once_says_what_it_waits_for_and_now_tiers_at_once() {
    use fluss_tiering::model::table::TablePath;
    let Setup { dir: _dir, warehouse, cluster, client, .. } = setup().await;
    let descriptor = id_and_name(2);
    let path: TablePath = "db.fresh".parse().expect("path");
    let id = client.create_table(&path, &descriptor, false).await.expect("create");
    let table = TestTable { id, path: path.clone(), descriptor };
    produce_all(&client, std::slice::from_ref(&table), 0, 1000).await;

    let stderr = tempfile::NamedTempFile::new().expect("stderr");
    let job = spawn_tier(&cluster.url(), &warehouse, &["--once"], &[], &stderr);
    let line =
        wait_for_line(stderr.path(), &["waiting for", "db.fresh: scheduled, due in"], Duration::from_secs(20)).await;
    eprintln!("{line}");
    assert!(line.contains("--now"), "the message says how to tier now: {line}");
    assert!(line.contains("m5") || line.contains("2m") || line.contains("3m"), "due in minutes: {line}");
    assert!(!line.contains('\u{1b}'), "no escape codes in a file: {line}");
    stop_job(job, &stderr).await;

    // `schedule` refuses a table that does not exist, by name.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["schedule", "--cluster", &cluster.url(), "--table", "db.nope"])
        .output()
        .expect("schedule");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("db.nope"), "{out:?}");

    let started = Instant::now();
    let out = tier(&cluster.url(), &warehouse, &["--now"], &[]).await;
    assert_success(&out);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "--now tiers at once, not after the freshness: took {took:?}");
    check_exactly_once(&read_lake(&warehouse, &path), &table, &end_offsets(&client, &table).await, 1000);

    // `schedule` makes the table (tiered, due again one freshness later) due now and says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["schedule", "--cluster", &cluster.url(), "--table", "db.fresh"])
        .output()
        .expect("schedule");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("db.fresh: pending"), "{out:?}");
}

/// On a terminal the waiting message is the progress bar's: run under `script` (a pseudo-terminal) with logs at
/// warnings, so the text can only come from the bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_progress_bar_says_what_the_job_waits_for() {
    let Setup { dir, warehouse, cluster, client, .. } = setup().await;
    let descriptor = id_and_name(1);
    let path = "db.later".parse().expect("path");
    let id = client.create_table(&path, &descriptor, false).await.expect("create");
    produce_all(&client, &[TestTable { id, path, descriptor }], 0, 100).await;
    let typescript = dir.path().join("typescript");
    let command = format!(
        "timeout 60 {} tier --cluster {} --warehouse {} --once --poll-interval 100ms",
        env!("CARGO_BIN_EXE_fluss-tiering"),
        cluster.url(),
        warehouse.display()
    );
    let mut terminal = std::process::Command::new("script")
        .args(["-q", "-f", "-c", &command])
        .arg(&typescript)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script (util-linux)");
    let seen = wait_for_line(&typescript, &["db.later: scheduled, due in"], Duration::from_secs(30)).await;
    let _ = terminal.kill();
    let _ = terminal.wait();
    assert!(!seen.contains(" INFO "), "the bar, not a log line: {seen}");
}

/// A Fluss user's command line for the Flink tiering job, unchanged, against the cluster's Fluss door: the job tiers
/// exactly once, and the options that mean nothing here are named as ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flink_jobs_command_line_tiers_exactly_once() {
    use fluss_tiering::cluster::ClusterConfig;
    use fluss_tiering::serve::EmbeddedCluster;
    let dir = tempfile::tempdir().expect("tempdir");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ClusterConfig::new(dir.path().join("cluster"));
    config.heartbeat_timeout = Duration::from_millis(1500);
    let cluster = EmbeddedCluster::start_with(config, any, Some(any)).await.expect("cluster");
    let client = fluss_tiering::rpc::ClusterClient::connect(&cluster.url()).await.expect("connect");
    let tables = create_tables(&client).await;
    produce_all(&client, &tables, 0, 1500).await;
    let fluss = cluster.fluss_addr().expect("the Fluss door").to_string();
    let warehouse = dir.path().join("paimon");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["tier", "--fluss.bootstrap.servers", &fluss, "--datalake.format", "paimon"])
        .args(["--datalake.paimon.metastore", "filesystem", "--datalake.paimon.warehouse"])
        .arg(&warehouse)
        .args(["--lake.tiering.io.tmp.dirs", "/tmp/flink-io", "--fluss.tiering.poll.table.interval", "200"])
        .args(["--once", "--lake-timeout", "5s"])
        .env("RUST_LOG", "info")
        .output()
        .expect("tier");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--lake.tiering.io.tmp.dirs ignored"), "{err}");
    assert!(err.contains("fluss://"), "the Fluss transport was used:\n{err}");
    for t in &tables {
        check_exactly_once(&read_lake(&warehouse, &t.path), t, &end_offsets(&client, t).await, 1500);
    }

    // Fluss's protocol has no request to tier a table now: `--now` over it is refused, saying so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluss-tiering"))
        .args(["tier", "--fluss.bootstrap.servers", &fluss, "--datalake.paimon.warehouse"])
        .arg(&warehouse)
        .args(["--once", "--now"])
        .output()
        .expect("tier");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--now") && err.contains("no such request"), "{err}");
}
