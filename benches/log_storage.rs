//! Produce and fetch throughput of the cluster, end to end over gRPC on loopback (rows/s and bytes/s).
//!
//! Run: `cargo bench --bench log_storage`. Each produce is durable (fsync) before it is acknowledged.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fluss_tiering::cluster::ClusterConfig;
use fluss_tiering::model::record;
use fluss_tiering::model::table::{TableDescriptor, parse_schema};
use fluss_tiering::model::tiering::{LogReader, TieringCluster};
use fluss_tiering::rpc::ClusterClient;
use fluss_tiering::serve::EmbeddedCluster;
use fluss_tiering::workload::Workload;

const ROWS_PER_BATCH: u64 = 8192;
const BATCHES: u64 = 16;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, client, table_id, payloads) = runtime.block_on(async {
        let cluster = EmbeddedCluster::start(ClusterConfig::new(dir.path())).await.expect("cluster");
        let client = ClusterClient::connect(&cluster.url()).await.expect("connect");
        let d = TableDescriptor {
            columns: parse_schema("id:int64,name:string,amount:decimal(12,2),score:float64,ts:timestamp")
                .expect("schema"),
            buckets: 1,
            partition_key: None,
            primary_key: vec![],
            properties: Default::default(),
        };
        let table_id = client.create_table(&"bench.log".parse().expect("path"), &d, false).await.expect("create");
        let w = Workload { seed: 3, partitions: 1 };
        let payloads: Vec<_> = (0..BATCHES)
            .map(|i| {
                let rows: Vec<u64> = (i * ROWS_PER_BATCH..(i + 1) * ROWS_PER_BATCH).collect();
                record::encode_all(&[w.batch(&d, &rows).expect("batch")]).expect("encode")
            })
            .collect();
        (cluster, client, table_id, payloads)
    });
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let rows = ROWS_PER_BATCH * BATCHES;

    let mut group = c.benchmark_group("cluster");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(rows));
    group.bench_function("produce rows (fsync per batch)", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for p in &payloads {
                    black_box(client.produce_records(table_id, None, 0, p.clone()).await.expect("produce"));
                }
            })
        })
    });
    group.throughput(Throughput::Bytes(bytes));
    // Read as the job reads: its one fetch loop over the gRPC client.
    let reads: Arc<dyn TieringCluster> = Arc::new(client.clone());
    group.bench_function("fetch bytes (4 MiB per request)", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut reader = LogReader::new(Arc::clone(&reads), (table_id, None, 0), 0, Some(rows as i64), 4 << 20);
                while let Some(batches) = reader.next().await.expect("fetch") {
                    black_box(batches);
                }
            })
        })
    });
    group.finish();
    runtime.block_on(cluster.shutdown()).expect("shutdown");
}

criterion_group!(benches, bench);
criterion_main!(benches);
