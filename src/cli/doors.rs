//! `bench --doors`: the same rows produced through each front door of the embedded cluster (gRPC and Fluss's own
//! protocol) and fetched back through each with the job's own reader (`LogReader` over each door's `TieringCluster`
//! client), in one run, so the doors compare by ratio. Both send and receive the same Fluss log batches; what differs
//! is the wire around them, and the client: the Fluss one asks MetaData for each bucket's leader once (not counted
//! in `requests`). CPU seconds count the client and the embedded
//! server together (one process), the same for both doors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::cluster::ClusterConfig;
use crate::fluss::ApiKey;
use crate::fluss::client::Connection;
use crate::fluss::messages as m;
use crate::fluss::transport::FlussCluster;
use crate::model::record;
use crate::model::table::{TableDescriptor, TablePath, parse_schema};
use crate::model::tiering::{LogReader, TieringCluster};
use crate::rpc::ClusterClient;
use crate::serve::EmbeddedCluster;
use crate::workload::Workload;

use super::bench::{BenchArgs, cpu_seconds};
use super::tier::runtime;

/// Rows per produced batch (one batch per request, as a client's writer sends them).
const BATCH_ROWS: u64 = 8192;
/// The most a fetch may return per bucket and request.
const FETCH_BYTES: i32 = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
struct DoorRun {
    door: &'static str,
    operation: &'static str,
    rows: u64,
    bytes: u64,
    requests: u64,
    wall_seconds: f64,
    rows_per_second: f64,
    mb_per_second: f64,
    cpu_seconds: f64,
}

/// Measures `work` (which returns rows, bytes and requests).
async fn measure<F: Future<Output = anyhow::Result<(u64, u64, u64)>>>(
    door: &'static str,
    operation: &'static str,
    work: F,
) -> anyhow::Result<DoorRun> {
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let (rows, bytes, requests) = work.await?;
    let wall = started.elapsed().as_secs_f64();
    Ok(DoorRun {
        door,
        operation,
        rows,
        bytes,
        requests,
        wall_seconds: wall,
        rows_per_second: rows as f64 / wall,
        mb_per_second: bytes as f64 / wall / 1e6,
        cpu_seconds: cpu_seconds() - cpu,
    })
}

/// Reads every bucket of a table back through `cluster` with the job's own [`LogReader`]: rows, bytes, requests.
async fn read_back(cluster: Arc<dyn TieringCluster>, table_id: i64, buckets: u32) -> anyhow::Result<(u64, u64, u64)> {
    let (mut rows, mut bytes, mut requests) = (0u64, 0u64, 0u64);
    for bucket in 0..buckets as i32 {
        let mut reader = LogReader::new(Arc::clone(&cluster), (table_id, None, bucket), 0, None, FETCH_BYTES);
        loop {
            requests += 1;
            let Some(batches) = reader.next().await? else { break };
            for b in &batches {
                bytes += b.records.len() as u64;
                rows += u64::try_from(b.record_count)?;
            }
        }
    }
    Ok((rows, bytes, requests))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("fluss-tiering-doors-").tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let runtime = runtime("doors", 2)?;
    runtime.block_on(async {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let cluster = EmbeddedCluster::start_with(ClusterConfig::new(dir.join("cluster")), any, Some(any)).await?;
        let fluss_addr = cluster.fluss_addr().ok_or_else(|| anyhow::anyhow!("the Fluss door did not open"))?;
        let grpc = ClusterClient::connect(&cluster.url()).await?;
        let mut fluss = Connection::connect(fluss_addr, TIMEOUT).await?;
        let descriptor = TableDescriptor {
            columns: parse_schema(&args.schema)?,
            buckets: args.buckets,
            partition_key: None,
            primary_key: vec![],
            properties: [("table.datalake.enabled".to_string(), "false".to_string())].into(),
        };
        let workload = Workload { seed: args.seed, partitions: 1 };
        // The same payloads for both doors, built before any clock starts.
        let mut payloads: Vec<(i32, u64, Bytes)> = Vec::new();
        for (i, lo) in (0..args.rows).step_by(BATCH_ROWS as usize).enumerate() {
            let rows: Vec<u64> = (lo..(lo + BATCH_ROWS).min(args.rows)).collect();
            let bucket = (i as u64 % u64::from(args.buckets)) as i32;
            let batch = workload.batch(&descriptor, &rows)?;
            payloads.push((bucket, rows.len() as u64, record::encode_all(&[batch])?));
        }
        let grpc_table = grpc.create_table(&"doors.grpc".parse::<TablePath>()?, &descriptor, false).await?;
        let fluss_table = grpc.create_table(&"doors.fluss".parse::<TablePath>()?, &descriptor, false).await?;
        let total_bytes: u64 = payloads.iter().map(|(_, _, p)| p.len() as u64).sum();

        let mut runs = Vec::new();
        runs.push(
            measure("grpc", "produce", async {
                for (bucket, _, payload) in &payloads {
                    grpc.produce_records(grpc_table, None, *bucket, payload.clone()).await?;
                }
                Ok((args.rows, total_bytes, payloads.len() as u64))
            })
            .await?,
        );
        runs.push(
            measure("fluss", "produce", async {
                for (bucket, _, payload) in &payloads {
                    let req = m::ProduceLogRequest {
                        acks: -1,
                        table_id: fluss_table,
                        timeout_ms: TIMEOUT.as_millis() as i32,
                        buckets_req: vec![m::PbProduceLogReqForBucket {
                            partition_id: None,
                            bucket_id: *bucket,
                            records: payload.clone(),
                        }],
                    };
                    let resp: m::ProduceLogResponse = fluss.call(ApiKey::ProduceLog, &req).await?;
                    if let Some(code) = resp.buckets_resp.first().and_then(|b| b.error_code) {
                        anyhow::bail!("ProduceLog failed with Fluss error {code}");
                    }
                }
                Ok((args.rows, total_bytes, payloads.len() as u64))
            })
            .await?,
        );
        let fluss_reads: Arc<dyn TieringCluster> =
            FlussCluster::connect(&format!("fluss://{fluss_addr}"), TIMEOUT).await?;
        let grpc_reads: Arc<dyn TieringCluster> = Arc::new(grpc.clone());
        runs.push(measure("grpc", "fetch", read_back(grpc_reads, grpc_table, args.buckets)).await?);
        runs.push(measure("fluss", "fetch", read_back(fluss_reads, fluss_table, args.buckets)).await?);
        for run in &runs {
            anyhow::ensure!(
                run.rows == args.rows,
                "{} {} moved {} rows, not {}",
                run.door,
                run.operation,
                run.rows,
                args.rows
            );
        }
        println!(
            "doors: {} rows, {:.1} MB of Fluss log batches, {} buckets",
            args.rows,
            total_bytes as f64 / 1e6,
            args.buckets
        );
        println!(
            "{:<6} {:<8} {:>10} {:>12} {:>10} {:>8} {:>9}",
            "door", "op", "wall s", "rows/s", "MB/s", "cpu s", "requests"
        );
        for r in &runs {
            println!(
                "{:<6} {:<8} {:>10.3} {:>12.0} {:>10.1} {:>8.3} {:>9}",
                r.door, r.operation, r.wall_seconds, r.rows_per_second, r.mb_per_second, r.cpu_seconds, r.requests
            );
        }
        let ratio = |op| {
            let wall = |door| runs.iter().find(|r| r.door == door && r.operation == op).map(|r| r.wall_seconds);
            wall("grpc").zip(wall("fluss")).map(|(g, f)| g / f).unwrap_or(0.0)
        };
        println!(
            "speed-up of the Fluss door over gRPC (wall time): produce {:.2}x, fetch {:.2}x",
            ratio("produce"),
            ratio("fetch")
        );
        if let Some(path) = &args.json {
            let lines: Vec<String> = runs.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
            std::fs::write(path, lines.join("\n") + "\n")?;
        }
        cluster.shutdown().await?;
        Ok(())
    })
}
