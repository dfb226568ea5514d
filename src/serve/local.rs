//! The door without a wire: a [`Cluster`] in this process as the tiering job's [`TieringCluster`], each call a
//! method call on the cluster (run on the blocking pool: the cluster locks and writes to disk). Tests drive the real
//! dataflow through it (wrapped in fault injectors at the cluster boundary), so what they check is the job, not a
//! transport. The cluster itself is the real one, state on disk and all: in process, not in memory.
//!
//! It answers with the coordinator's own results and errors, kinds kept, as the gRPC door does; where the trait asks
//! for one answer per bucket (offsets, KV snapshots) it answers in the order asked and fails on a bucket the table
//! does not have. What only a wire can do wrong (lost replies, short answers, time-outs) is for the tests' wrappers
//! to inject.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;

use crate::cluster::coordinator::{Heartbeat, HeartbeatEntry, TieringStatus};
use crate::cluster::{BucketId, Cluster, fetch_budget};
use crate::error::{Error, ErrorKind, Result};
use crate::model::log::LogBatch;
use crate::model::now_ms;
use crate::model::table::{TableDescriptor, TableInfo, TablePath};
use crate::model::tiering::{
    Assignment, BucketAddr, FetchAsk, FetchedLog, HeartbeatRequest, HeartbeatResponse, KvSnapshotRef, LakeBucketOffset,
    LakeCommit, LakeSnapshot, TableAnswer, TableEpoch, TableSchedule, TieringCluster,
};

/// A cluster of this process, seen through the tiering job's trait.
#[derive(Clone)]
pub struct LocalDoor {
    cluster: Arc<Cluster>,
}

impl LocalDoor {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        LocalDoor { cluster }
    }

    /// Runs `f` on the blocking pool: the cluster's methods may block on disk.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Cluster) -> Result<T> + Send + 'static) -> Result<T> {
        let cluster = Arc::clone(&self.cluster);
        tokio::task::spawn_blocking(move || f(&cluster))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cluster task failed: {e}")))?
    }

    async fn table(&self, path: &TablePath) -> Result<TableInfo> {
        let path = path.clone();
        self.blocking(move |c| c.table_by_path(&path)).await
    }
}

fn entry(e: &TableEpoch) -> HeartbeatEntry {
    HeartbeatEntry { table_id: e.table_id, coordinator_epoch: e.coordinator_epoch, tiering_epoch: e.tiering_epoch }
}

fn answers(outcomes: Vec<(i64, Result<()>)>) -> Vec<TableAnswer> {
    outcomes
        .into_iter()
        .map(|(table_id, r)| TableAnswer { table_id, rejection: r.err().map(|e| (e.kind(), e.to_string())) })
        .collect()
}

/// A table as `schedules` reports it (`disabled`: not a lake table).
fn schedule((t, status): (TableInfo, Option<TieringStatus>)) -> TableSchedule {
    TableSchedule {
        table_id: t.table_id,
        path: t.path,
        state: status.as_ref().map(|s| s.state.name()).unwrap_or("disabled").to_string(),
        due_in: status.as_ref().and_then(|s| s.due_in),
        has_data: status.as_ref().is_some_and(|s| s.has_data),
        last_error: status.and_then(|s| s.last_error),
    }
}

#[async_trait::async_trait]
impl TieringCluster for LocalDoor {
    async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        let hb = Heartbeat {
            tiering: request.tiering.iter().map(entry).collect(),
            finished: request.finished.iter().map(entry).collect(),
            failed: request.failed.iter().map(|(e, reason)| (entry(e), Some(reason.clone()))).collect(),
            force_finished: request.force_finished.clone(),
            request_table: request.request_table,
        };
        let out = self.blocking(move |c| c.coordinator().heartbeat(&hb, Instant::now(), now_ms())).await?;
        Ok(HeartbeatResponse {
            coordinator_epoch: out.coordinator_epoch,
            assignment: out.assignment.map(|a| Assignment {
                table_id: a.table_id,
                path: a.path,
                tiering_epoch: a.tiering_epoch,
            }),
            tiering: answers(out.tiering),
            finished: answers(out.finished),
            failed: answers(out.failed),
        })
    }

    async fn table_info(&self, path: &TablePath) -> Result<(i64, TableDescriptor)> {
        let t = self.table(path).await?;
        Ok((t.table_id, t.descriptor))
    }

    async fn tables(&self) -> Result<Vec<(i64, TablePath, TableDescriptor)>> {
        let all = self.blocking(|c| Ok(c.list_tables())).await?;
        Ok(all.into_iter().map(|(t, _)| (t.table_id, t.path, t.descriptor)).collect())
    }

    async fn partitions(&self, path: &TablePath) -> Result<Vec<(i64, String)>> {
        let t = self.table(path).await?;
        Ok(t.partitions.into_iter().map(|(name, id)| (id, name)).collect())
    }

    async fn list_offsets(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        buckets: &[i32],
        latest: bool,
    ) -> Result<Vec<i64>> {
        let buckets = buckets.to_vec();
        self.blocking(move |c| {
            buckets.iter().map(|&bucket| c.list_offset(BucketId { table_id, partition_id, bucket }, latest)).collect()
        })
        .await
    }

    async fn lake_snapshot(&self, path: &TablePath) -> Result<Option<LakeSnapshot>> {
        let table_id = self.table(path).await?.table_id;
        match self.blocking(move |c| c.coordinator().lake_snapshot(table_id).cloned()).await {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(e) if e.kind() == ErrorKind::LakeSnapshotNotExist => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn kv_snapshots(
        &self,
        path: &TablePath,
        partition_name: Option<&str>,
        buckets: &[i32],
    ) -> Result<Vec<(i32, Option<KvSnapshotRef>)>> {
        let table = self.table(path).await?;
        let partition_id = match partition_name {
            Some(name) => Some(*table.partitions.get(name).ok_or_else(|| {
                Error::new(ErrorKind::UnknownTableOrBucket, format!("table {path} has no partition {name:?}"))
            })?),
            None => None,
        };
        let table_id = table.table_id;
        let latest = self.blocking(move |c| c.latest_kv_snapshots(table_id, partition_id)).await?;
        buckets
            .iter()
            .map(|&bucket| {
                let at = usize::try_from(bucket).ok().and_then(|i| latest.get(i)).ok_or_else(|| {
                    Error::new(ErrorKind::UnknownTableOrBucket, format!("table {path} has no bucket {bucket}"))
                })?;
                let snapshot = at.map(|s| KvSnapshotRef {
                    snapshot_id: s.snapshot_id,
                    log_offset: s.log_offset,
                    batch_count: s.batch_count,
                    held_by_planner: false,
                });
                Ok((bucket, snapshot))
            })
            .collect()
    }

    async fn fetch(
        &self,
        (table_id, partition_id, bucket): BucketAddr,
        offset: i64,
        max_bytes: i32,
    ) -> Result<FetchedLog> {
        let id = BucketId { table_id, partition_id, bucket };
        let max_bytes = fetch_budget(max_bytes);
        Ok(fetched(self.blocking(move |c| c.fetch(id, offset, max_bytes)).await?))
    }

    async fn fetch_many(&self, asks: &[FetchAsk], max_bytes: i32) -> Result<Vec<Result<FetchedLog>>> {
        let asks = asks.to_vec();
        let max_bytes = fetch_budget(max_bytes);
        let answers = self.blocking(move |c| Ok(c.fetch_many(&asks, max_bytes))).await?;
        Ok(answers.into_iter().map(|a| a.map(fetched)).collect())
    }

    async fn kv_snapshot_batch(
        &self,
        (table_id, partition_id, bucket): BucketAddr,
        snapshot_id: i64,
        index: i32,
    ) -> Result<(Vec<RecordBatch>, i32)> {
        let id = BucketId { table_id, partition_id, bucket };
        let (batch, count) = self.blocking(move |c| c.fetch_kv_snapshot(id, snapshot_id, index)).await?;
        Ok((vec![batch], count))
    }

    async fn commit_lake_snapshot(&self, commit: &LakeCommit) -> Result<()> {
        let who = HeartbeatEntry {
            table_id: commit.table_id,
            coordinator_epoch: commit.coordinator_epoch,
            tiering_epoch: commit.tiering_epoch,
        };
        let snapshot = commit.snapshot.clone();
        self.blocking(move |c| c.coordinator().commit_lake_snapshot(&who, snapshot.snapshot_id, &snapshot.buckets))
            .await
    }

    async fn prepare_lake_offsets(
        &self,
        table_id: i64,
        _path: &TablePath,
        offsets: &[LakeBucketOffset],
    ) -> Result<String> {
        let offsets = offsets.to_vec();
        self.blocking(move |c| c.prepare_lake_offsets(table_id, &offsets, true)).await
    }

    async fn schedules(&self) -> Result<Vec<TableSchedule>> {
        Ok(self.blocking(|c| Ok(c.list_tables())).await?.into_iter().map(schedule).collect())
    }

    async fn schedule_now(&self, tables: &[TablePath]) -> Result<Vec<TableSchedule>> {
        let tables = tables.to_vec();
        Ok(self.blocking(move |c| c.schedule_now(&tables)).await?.into_iter().map(schedule).collect())
    }
}

/// The cluster's read as the job takes it.
fn fetched(fetched: crate::cluster::Fetched) -> FetchedLog {
    FetchedLog {
        high_watermark: fetched.high_watermark,
        log_start_offset: fetched.log_start_offset,
        batches: fetched
            .batches
            .into_iter()
            .map(|b| LogBatch {
                base_offset: b.base_offset,
                record_count: i64::from(b.record_count),
                append_timestamp: b.append_timestamp,
                records: b.records,
            })
            .collect(),
    }
}
