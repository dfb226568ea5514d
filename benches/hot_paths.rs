//! The hot pieces of a tiering round, one by one: decoding a fetched batch, appending the system columns, encoding
//! Parquet, cutting splits over 10,000 buckets, and gathering an epoch of 1,000 write results.
//!
//! Run: `cargo bench --bench hot_paths`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fluss_tiering::dataflows::commit::gather;
use fluss_tiering::dataflows::split_generator::{BucketState, cut, ranges};
use fluss_tiering::dataflows::types::{RoundPlan, SplitRange, WriteResult};
use fluss_tiering::lake::{BucketOffset, TableBucket, TableContext, WrittenData, lake_schema, with_system_columns};
use fluss_tiering::model::record;
use fluss_tiering::model::table::{TableDescriptor, TablePath, parse_schema};
use fluss_tiering::workload::Workload;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

const ROWS: u64 = 8192;

fn table() -> TableDescriptor {
    TableDescriptor {
        columns: parse_schema("id:int64,name:string,amount:decimal(12,2),score:float64,ok:bool,ts:timestamp")
            .expect("schema"),
        buckets: 1,
        partition_key: None,
        primary_key: vec![],
        properties: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let d = table();
    let rows: Vec<u64> = (0..ROWS).collect();
    let batch = Workload { seed: 1, partitions: 1 }.batch(&d, &rows).expect("batch");
    let stored = record::encode_all(std::slice::from_ref(&batch)).expect("encode");
    let schema = lake_schema(&d);
    let with_system = with_system_columns(&schema, &batch, 0, 0, 0).expect("system columns");

    let mut g = c.benchmark_group("round");
    g.throughput(Throughput::Elements(ROWS));
    g.bench_function("decode a fetched batch (ZSTD)", |b| {
        b.iter(|| black_box(record::LogRecordBatch::parse(stored.clone()).and_then(|x| x.read(&d)).expect("decode")))
    });
    g.bench_function("append system columns", |b| {
        b.iter(|| black_box(with_system_columns(&schema, &batch, 3, 1000, 1).expect("append")))
    });
    g.bench_function("encode Parquet (snappy)", |b| {
        b.iter(|| {
            let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).expect("writer");
            w.write(&with_system).expect("write");
            black_box(w.into_inner().expect("close"))
        })
    });

    let buckets: Vec<BucketState> = (0..10_000)
        .map(|i| BucketState {
            bucket: TableBucket { partition_id: Some(i64::from(i / 100)), bucket: i % 100 },
            partition_name: Some(format!("p{}", i / 100)),
            log_start: 0,
            high_watermark: 5_000 + i64::from(i),
            kv_snapshot: None,
        })
        .collect();
    let lake: BTreeMap<TableBucket, i64> = buckets.iter().step_by(2).map(|b| (b.bucket, 4_000)).collect();
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("split generation, 10k buckets", |b| {
        b.iter(|| {
            let r = ranges(&buckets, &lake).expect("ranges");
            black_box(r.iter().map(|r| cut(r.start, r.stop, 1_000).len()).sum::<usize>())
        })
    });

    let plan = RoundPlan {
        table: TableContext { table_id: 1, path: "db.t".parse::<TablePath>().expect("path"), descriptor: d.clone() },
        tiering_epoch: 1,
        coordinator_epoch: 1,
        round_id: "r".into(),
        splits: 1000,
        base: None,
        buckets: (0..1000)
            .map(|i| BucketOffset { partition_id: None, partition_name: None, bucket: i, offset: 100 })
            .collect(),
        cluster_behind: false,
    };
    let results: Vec<WriteResult> = (0..1000)
        .map(|i| WriteResult {
            round_id: "r".into(),
            index: i,
            ranges: vec![SplitRange {
                bucket: TableBucket { partition_id: None, bucket: i as i32 },
                start: 0,
                stop: 100,
            }],
            written: Ok((WrittenData { payload: vec![0; 256], files: 1, file_bytes: 4096, rows: 100 }, vec![100])),
        })
        .collect();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("gather an epoch of 1k write results", |b| {
        b.iter(|| black_box(gather(&plan, results.clone()).reached.len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
