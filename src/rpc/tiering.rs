//! The gRPC client as the tiering job's [`TieringCluster`]: the model's requests in, the wire's messages out.

use arrow::array::RecordBatch;

use crate::error::{Error, ErrorKind, Result};
use crate::model::log::LogBatch;
use crate::model::table::{TableDescriptor, TablePath};
use crate::model::tiering::{
    Assignment, BucketAddr, FetchAsk, FetchedLog, HeartbeatRequest, HeartbeatResponse, KvSnapshotRef, LakeBucketOffset,
    LakeCommit, LakeSnapshot, TableAnswer, TableEpoch, TableSchedule, TieringCluster, fetch_each,
};
use crate::rpc::{ClusterClient, pb_path, proto};

fn entry(e: &TableEpoch) -> proto::PbHeartbeatReqForTable {
    proto::PbHeartbeatReqForTable {
        table_id: e.table_id,
        coordinator_epoch: e.coordinator_epoch,
        tiering_epoch: e.tiering_epoch,
        lake_tiering_stats: None,
        fail_reason: None,
    }
}

fn answers(all: Vec<proto::PbHeartbeatRespForTable>) -> Vec<TableAnswer> {
    all.into_iter()
        .map(|a| TableAnswer {
            table_id: a.table_id,
            rejection: a.error.map(|e| (ErrorKind::from_code(e.error_code), e.error_message.unwrap_or_default())),
        })
        .collect()
}

#[async_trait::async_trait]
impl TieringCluster for ClusterClient {
    async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        let req = proto::LakeTieringHeartbeatRequest {
            tiering_tables: request.tiering.iter().map(entry).collect(),
            finished_tables: request.finished.iter().map(entry).collect(),
            failed_tables: request
                .failed
                .iter()
                .map(|(e, reason)| proto::PbHeartbeatReqForTable { fail_reason: Some(reason.clone()), ..entry(e) })
                .collect(),
            request_table: Some(request.request_table),
            force_finished_tables: request.force_finished.clone(),
        };
        let resp = self.lake_tiering_heartbeat(req).await?;
        let assignment = match resp.tiering_table {
            None => None,
            Some(t) => {
                let path = t.table_path.ok_or_else(|| {
                    Error::new(ErrorKind::CorruptMessage, format!("table {} was assigned without a path", t.table_id))
                })?;
                let path = TablePath::new(path.database_name, path.table_name)?;
                Some(Assignment { table_id: t.table_id, path, tiering_epoch: t.tiering_epoch })
            }
        };
        Ok(HeartbeatResponse {
            coordinator_epoch: resp.coordinator_epoch,
            assignment,
            tiering: answers(resp.tiering_table_resp),
            finished: answers(resp.finished_table_resp),
            failed: answers(resp.failed_table_resp),
        })
    }

    async fn table_info(&self, path: &TablePath) -> Result<(i64, TableDescriptor)> {
        ClusterClient::table_info(self, path).await
    }

    async fn tables(&self) -> Result<Vec<(i64, TablePath, TableDescriptor)>> {
        Ok(self.list_tables().await?.into_iter().map(|t| (t.table_id, t.path, t.descriptor)).collect())
    }

    async fn partitions(&self, path: &TablePath) -> Result<Vec<(i64, String)>> {
        self.list_partitions(path).await
    }

    async fn list_offsets(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        buckets: &[i32],
        latest: bool,
    ) -> Result<Vec<i64>> {
        ClusterClient::list_offsets(self, table_id, partition_id, buckets, latest).await
    }

    async fn lake_snapshot(&self, path: &TablePath) -> Result<Option<LakeSnapshot>> {
        Ok(ClusterClient::lake_snapshot(self, path).await?.map(|s| LakeSnapshot {
            snapshot_id: s.snapshot_id,
            buckets: s
                .bucket_snapshots
                .iter()
                .map(|b| LakeBucketOffset {
                    partition_id: b.partition_id,
                    bucket: b.bucket_id,
                    log_end_offset: b.log_offset.unwrap_or(0),
                    max_timestamp: None,
                })
                .collect(),
        }))
    }

    async fn kv_snapshots(
        &self,
        path: &TablePath,
        partition_name: Option<&str>,
        buckets: &[i32],
    ) -> Result<Vec<(i32, Option<KvSnapshotRef>)>> {
        Ok(self
            .latest_kv_snapshots(path, partition_name)
            .await?
            .into_iter()
            .filter(|s| buckets.contains(&s.bucket_id))
            .map(|s| {
                let snapshot = s.snapshot_id.zip(s.log_offset).map(|(snapshot_id, log_offset)| KvSnapshotRef {
                    snapshot_id,
                    log_offset,
                    batch_count: s.batch_count,
                    held_by_planner: false,
                });
                (s.bucket_id, snapshot)
            })
            .collect())
    }

    async fn fetch(
        &self,
        (table_id, partition_id, bucket): BucketAddr,
        offset: i64,
        max_bytes: i32,
    ) -> Result<FetchedLog> {
        Ok(fetched(ClusterClient::fetch(self, table_id, partition_id, bucket, offset, max_bytes).await?))
    }

    /// A cluster of an earlier version, without FetchLogs, is asked one bucket at a time.
    async fn fetch_many(&self, asks: &[FetchAsk], max_bytes: i32) -> Result<Vec<Result<FetchedLog>>> {
        match ClusterClient::fetch_many(self, asks, max_bytes).await {
            Ok(answers) => Ok(answers.into_iter().map(|a| a.map(fetched)).collect()),
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(fetch_each(self, asks).await),
            Err(e) => Err(e),
        }
    }

    async fn kv_snapshot_batch(
        &self,
        (table_id, partition_id, bucket): BucketAddr,
        snapshot_id: i64,
        index: i32,
    ) -> Result<(Vec<RecordBatch>, i32)> {
        self.fetch_kv_snapshot(table_id, partition_id, bucket, snapshot_id, index).await
    }

    async fn schedules(&self) -> Result<Vec<TableSchedule>> {
        Ok(self.list_tables().await?.iter().map(|t| t.schedule()).collect())
    }

    async fn schedule_now(&self, tables: &[TablePath]) -> Result<Vec<TableSchedule>> {
        Ok(ClusterClient::schedule_now(self, tables).await?.iter().map(|t| t.schedule()).collect())
    }

    async fn prepare_lake_offsets(
        &self,
        table_id: i64,
        path: &TablePath,
        offsets: &[LakeBucketOffset],
    ) -> Result<String> {
        ClusterClient::prepare_lake_offsets(self, table_id, path, offsets).await
    }

    async fn commit_lake_snapshot(&self, commit: &LakeCommit) -> Result<()> {
        let buckets_req = commit
            .snapshot
            .buckets
            .iter()
            .map(|o| proto::PbLakeTableOffsetForBucket {
                partition_id: o.partition_id,
                bucket_id: o.bucket,
                log_end_offset: Some(o.log_end_offset),
                max_timestamp: o.max_timestamp,
            })
            .collect();
        ClusterClient::commit_lake_snapshot(
            self,
            proto::PbLakeTableSnapshotInfo {
                table_id: commit.table_id,
                snapshot_id: commit.snapshot.snapshot_id,
                buckets_req,
                table_path: Some(pb_path(&commit.path)),
                tiering_epoch: commit.tiering_epoch,
                coordinator_epoch: commit.coordinator_epoch,
            },
        )
        .await
    }
}

/// A FetchLog answer of the gRPC door as the job reads it.
fn fetched(resp: proto::FetchLogResponse) -> FetchedLog {
    FetchedLog {
        high_watermark: resp.high_watermark,
        log_start_offset: resp.log_start_offset,
        batches: resp
            .batches
            .into_iter()
            .map(|b| LogBatch {
                base_offset: b.base_offset,
                record_count: b.record_count,
                append_timestamp: b.append_timestamp,
                records: b.records,
            })
            .collect(),
    }
}
