//! The gRPC wire: code generated from `proto/fluss_api.proto`, a typed client, that client as the job's
//! [`crate::model::tiering::TieringCluster`] ([`tiering`]), and errors as statuses ([`status`]).
//!
//! Layering: the wire sees `crate::model` and `crate::error`; it imports no cluster, door, job or lake, and the
//! cluster none of it (checked by `.ci/run`).

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, ErrorKind, Result};
use crate::model::ipc;
use crate::model::record;
use crate::model::table::{TableDescriptor, TablePath};
use crate::model::tiering::LakeBucketOffset;

pub mod status;
pub mod tiering;

/// Generated messages and services (package `fluss`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("fluss");
}

use proto::coordinator_service_client::CoordinatorServiceClient;
use proto::tablet_service_client::TabletServiceClient;

/// Largest message either side accepts: a fetch of a few large batches fits.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// A table as `ListTables` describes it.
#[derive(Debug, Clone)]
pub struct TableSummary {
    pub table_id: i64,
    pub path: TablePath,
    pub descriptor: TableDescriptor,
    pub tiering_state: String,
    pub tiering_epoch: i64,
    pub lake_snapshot_id: Option<i64>,
    pub last_tiered_ms: Option<i64>,
    pub failures: u64,
    pub last_error: Option<String>,
    pub due_in_ms: Option<i64>,
    pub has_data: bool,
}

impl TableSummary {
    fn from_pb(t: proto::PbTableInfo) -> Result<Self> {
        let p = t.table_path.ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "table without a path"))?;
        Ok(TableSummary {
            table_id: t.table_id,
            path: TablePath::new(p.database_name, p.table_name)?,
            descriptor: descriptor(&t.table_json)?,
            tiering_state: t.tiering_state,
            tiering_epoch: t.tiering_epoch,
            lake_snapshot_id: t.lake_snapshot_id,
            last_tiered_ms: t.last_tiered_time,
            failures: t.failures.max(0) as u64,
            last_error: t.last_error,
            due_in_ms: t.due_in_ms,
            has_data: t.has_data,
        })
    }

    /// The coordinator's view of the table, in the model's terms.
    pub fn schedule(&self) -> crate::model::tiering::TableSchedule {
        crate::model::tiering::TableSchedule {
            table_id: self.table_id,
            path: self.path.clone(),
            state: self.tiering_state.clone(),
            due_in: self.due_in_ms.map(|ms| std::time::Duration::from_millis(ms.max(0) as u64)),
            has_data: self.has_data,
            last_error: self.last_error.clone(),
        }
    }
}

/// How long a call to the cluster may take unless the caller says otherwise.
pub const DEFAULT_RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client of one cluster; cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct ClusterClient {
    coordinator: CoordinatorServiceClient<Channel>,
    tablet: TabletServiceClient<Channel>,
}

fn descriptor(json: &[u8]) -> Result<TableDescriptor> {
    serde_json::from_slice(json)
        .map_err(|e| Error::new(ErrorKind::CorruptMessage, "table_json is not a descriptor").with_source(e))
}

/// A table path as the wire spells it.
pub fn pb_path(p: &TablePath) -> proto::PbTablePath {
    proto::PbTablePath { database_name: p.database.clone(), table_name: p.table.clone() }
}

impl ClusterClient {
    /// Connects to `url` (`http://HOST:PORT`); every call fails after [`DEFAULT_RPC_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_timeout(url, DEFAULT_RPC_TIMEOUT).await
    }

    /// Connects to `url`; every call (and the connection itself) fails as a network error after `timeout`, so a
    /// hung cluster stalls a round for at most that long.
    pub async fn connect_with_timeout(url: &str, timeout: std::time::Duration) -> Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("invalid cluster URL {url:?}")).with_source(e))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::new(ErrorKind::Network, format!("cannot reach the cluster at {url}")).with_source(e))?;
        Ok(ClusterClient {
            coordinator: CoordinatorServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            tablet: TabletServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    pub async fn create_table(
        &self,
        path: &TablePath,
        descriptor: &TableDescriptor,
        ignore_if_exists: bool,
    ) -> Result<i64> {
        let table_json = serde_json::to_vec(descriptor)
            .map_err(|e| Error::new(ErrorKind::Internal, "serializing").with_source(e))?;
        let req = proto::CreateTableRequest { table_path: Some(pb_path(path)), table_json, ignore_if_exists };
        Ok(self.coordinator.clone().create_table(req).await?.into_inner().table_id)
    }

    /// Adds a nullable column `name` of type `column_type` (as spelled on the command line); returns the schema id.
    pub async fn add_column(&self, path: &TablePath, name: &str, column_type: &str) -> Result<i32> {
        let req = proto::AlterTableAddColumnRequest {
            table_path: Some(pb_path(path)),
            column_name: name.to_string(),
            column_type: column_type.to_string(),
        };
        Ok(self.coordinator.clone().alter_table_add_column(req).await?.into_inner().schema_id)
    }

    pub async fn drop_table(&self, path: &TablePath, ignore_if_not_exists: bool) -> Result<()> {
        let req = proto::DropTableRequest { table_path: Some(pb_path(path)), ignore_if_not_exists };
        self.coordinator.clone().drop_table(req).await?;
        Ok(())
    }

    pub async fn list_tables(&self) -> Result<Vec<TableSummary>> {
        let resp = self.coordinator.clone().list_tables(proto::ListTablesRequest {}).await?.into_inner();
        resp.tables.into_iter().map(TableSummary::from_pb).collect()
    }

    /// Makes `tables` (every lake table when empty) due now; answers their state after.
    pub async fn schedule_now(&self, tables: &[TablePath]) -> Result<Vec<TableSummary>> {
        let req = proto::ScheduleTieringRequest { tables: tables.iter().map(pb_path).collect() };
        let resp = self.coordinator.clone().schedule_tiering(req).await?.into_inner();
        resp.tables.into_iter().map(TableSummary::from_pb).collect()
    }

    /// The table's id and descriptor.
    pub async fn table_info(&self, path: &TablePath) -> Result<(i64, TableDescriptor)> {
        let req = proto::GetTableInfoRequest { table_path: Some(pb_path(path)) };
        let resp = self.coordinator.clone().get_table_info(req).await?.into_inner();
        Ok((resp.table_id, descriptor(&resp.table_json)?))
    }

    /// `(partition_id, partition_name)` of every partition.
    pub async fn list_partitions(&self, path: &TablePath) -> Result<Vec<(i64, String)>> {
        let req = proto::ListPartitionInfosRequest { table_path: Some(pb_path(path)) };
        let resp = self.coordinator.clone().list_partition_infos(req).await?.into_inner();
        Ok(resp.partitions_info.into_iter().map(|p| (p.partition_id, p.partition_name)).collect())
    }

    /// Appends Fluss log batches (back to back) to a bucket; acknowledged once durable.
    pub async fn produce_records(
        &self,
        table_id: i64,
        partition_name: Option<&str>,
        bucket: i32,
        records: Bytes,
    ) -> Result<proto::ProduceLogResponse> {
        let req = proto::ProduceLogRequest {
            table_id,
            partition_name: partition_name.map(str::to_string),
            bucket_id: bucket,
            records,
        };
        Ok(self.tablet.clone().produce_log(req).await?.into_inner())
    }

    /// Appends rows to a bucket, each batch as one Fluss log batch of the schema its columns are (schema `n` is
    /// the table's first `n` columns), ZSTD-compressed.
    pub async fn produce(
        &self,
        table_id: i64,
        partition_name: Option<&str>,
        bucket: i32,
        batches: &[RecordBatch],
    ) -> Result<proto::ProduceLogResponse> {
        self.produce_records(table_id, partition_name, bucket, record::encode_all(batches)?).await
    }

    /// Upserts full rows (`delete == false`) or deletes rows by key in one bucket of a primary-key table.
    pub async fn put_kv(
        &self,
        table_id: i64,
        partition_name: Option<&str>,
        bucket: i32,
        batches: &[RecordBatch],
        delete: bool,
    ) -> Result<proto::PutKvResponse> {
        let req = proto::PutKvRequest {
            table_id,
            partition_name: partition_name.map(str::to_string),
            bucket_id: bucket,
            records: ipc::encode(batches)?,
        };
        let mut tablet = self.tablet.clone();
        let resp = if delete { tablet.delete_kv(req).await? } else { tablet.put_kv(req).await? };
        Ok(resp.into_inner())
    }

    /// The latest KV snapshot of each bucket (of one partition) of a table, in bucket order.
    pub async fn latest_kv_snapshots(
        &self,
        path: &TablePath,
        partition_name: Option<&str>,
    ) -> Result<Vec<proto::PbKvSnapshot>> {
        let req = proto::GetLatestKvSnapshotsRequest {
            table_path: Some(pb_path(path)),
            partition_name: partition_name.map(str::to_string),
        };
        Ok(self.tablet.clone().get_latest_kv_snapshots(req).await?.into_inner().latest_snapshots)
    }

    /// Batch `index` of a KV snapshot, with the snapshot's batch count.
    pub async fn fetch_kv_snapshot(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        bucket: i32,
        snapshot_id: i64,
        index: i32,
    ) -> Result<(Vec<RecordBatch>, i32)> {
        let req = proto::FetchKvSnapshotRequest {
            table_id,
            partition_id,
            bucket_id: bucket,
            snapshot_id,
            batch_index: index,
        };
        let resp = self.tablet.clone().fetch_kv_snapshot(req).await?.into_inner();
        Ok((ipc::decode(&resp.records)?, resp.batch_count))
    }

    pub async fn fetch(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        bucket: i32,
        offset: i64,
        max_bytes: i32,
    ) -> Result<proto::FetchLogResponse> {
        let req = proto::FetchLogRequest {
            table_id,
            partition_id,
            bucket_id: bucket,
            fetch_offset: offset,
            max_fetch_bytes: max_bytes,
        };
        Ok(self.tablet.clone().fetch_log(req).await?.into_inner())
    }

    /// Many buckets in one FetchLogs request: an answer per ask, in order, each bucket's error its own.
    pub async fn fetch_many(
        &self,
        asks: &[crate::model::tiering::FetchAsk],
        max_bytes: i32,
    ) -> Result<Vec<Result<proto::FetchLogResponse>>> {
        let buckets = asks
            .iter()
            .map(|a| proto::FetchLogRequest {
                table_id: a.bucket.0,
                partition_id: a.bucket.1,
                bucket_id: a.bucket.2,
                fetch_offset: a.offset,
                max_fetch_bytes: a.max_bytes,
            })
            .collect();
        let resp = self.tablet.clone().fetch_logs(proto::FetchLogsRequest { buckets, max_bytes }).await?.into_inner();
        if resp.answers.len() != asks.len() {
            return Err(Error::new(
                ErrorKind::CorruptMessage,
                format!("FetchLogs asked {} buckets and got {} answers", asks.len(), resp.answers.len()),
            ));
        }
        Ok(resp
            .answers
            .into_iter()
            .map(|a| match (a.error_code, a.log) {
                (Some(code), _) => Err(Error::from_code(code, a.error_message)),
                (None, Some(log)) => Ok(log),
                (None, None) => Err(Error::new(ErrorKind::CorruptMessage, "a FetchLogs answer without a log")),
            })
            .collect())
    }

    /// The latest (high watermark) or earliest offset of each bucket, in the order asked.
    pub async fn list_offsets(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        buckets: &[i32],
        latest: bool,
    ) -> Result<Vec<i64>> {
        let req = proto::ListOffsetsRequest {
            follower_server_id: -1,
            offset_type: i32::from(latest),
            table_id,
            partition_id,
            bucket_id: buckets.to_vec(),
        };
        let resp = self.tablet.clone().list_offsets(req).await?.into_inner();
        let answers =
            resp.buckets_resp.into_iter().map(|b| (b.bucket_id, b.error_code, b.error_message, b.offset)).collect();
        crate::model::tiering::offsets_in_order(table_id, buckets, answers)
    }

    pub async fn lake_tiering_heartbeat(
        &self,
        req: proto::LakeTieringHeartbeatRequest,
    ) -> Result<proto::LakeTieringHeartbeatResponse> {
        Ok(self.coordinator.clone().lake_tiering_heartbeat(req).await?.into_inner())
    }

    /// The table's latest lake snapshot as the cluster recorded it, `None` when there is none.
    pub async fn lake_snapshot(&self, path: &TablePath) -> Result<Option<proto::GetLakeSnapshotResponse>> {
        let req = proto::GetLakeSnapshotRequest { table_path: Some(pb_path(path)) };
        match self.coordinator.clone().get_lake_snapshot(req).await {
            Ok(resp) => Ok(Some(resp.into_inner())),
            Err(status) => match Error::from(status) {
                e if e.kind() == ErrorKind::LakeSnapshotNotExist => Ok(None),
                e => Err(e),
            },
        }
    }

    /// The tiered offset of every bucket as the cluster recorded it with the table's latest lake snapshot:
    /// `(partition id, bucket) → offset`; empty when the table was never tiered.
    pub async fn tiered_offsets(&self, path: &TablePath) -> Result<std::collections::HashMap<(Option<i64>, i32), i64>> {
        Ok(match self.lake_snapshot(path).await? {
            Some(s) => {
                s.bucket_snapshots.iter().map(|b| ((b.partition_id, b.bucket_id), b.log_offset.unwrap_or(0))).collect()
            }
            None => Default::default(),
        })
    }

    /// PrepareLakeTableSnapshot of one table with every bucket's offset (the cluster's previous ones ignored): the
    /// path of the offsets file the coordinator wrote.
    pub async fn prepare_lake_offsets(
        &self,
        table_id: i64,
        path: &TablePath,
        offsets: &[LakeBucketOffset],
    ) -> Result<String> {
        let bucket_offsets = offsets
            .iter()
            .map(|b| proto::PbBucketOffset {
                partition_id: b.partition_id,
                bucket_id: b.bucket,
                log_end_offset: Some(b.log_end_offset),
            })
            .collect();
        let req = proto::PrepareLakeTableSnapshotRequest {
            bucket_offsets: vec![proto::PbTableOffsets { table_id, table_path: Some(pb_path(path)), bucket_offsets }],
            ignore_previous_table_offsets: Some(true),
        };
        let resp = self.coordinator.clone().prepare_lake_table_snapshot(req).await?.into_inner();
        let [answer] = resp.prepare_lake_table_resp.as_slice() else {
            return Err(Error::new(
                ErrorKind::CorruptMessage,
                "PrepareLakeTableSnapshot answered for other than one table",
            ));
        };
        if let Some(code) = answer.error_code {
            return Err(Error::from_code(code, answer.error_message.clone()));
        }
        answer
            .lake_table_offsets_path
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "PrepareLakeTableSnapshot answered no path"))
    }

    /// Records a lake snapshot with the coordinator; a per-table rejection (fenced epoch, …) is an error.
    pub async fn commit_lake_snapshot(&self, info: proto::PbLakeTableSnapshotInfo) -> Result<()> {
        let req = proto::CommitLakeTableSnapshotRequest { tables_req: vec![info] };
        let resp = self.coordinator.clone().commit_lake_table_snapshot(req).await?.into_inner();
        match resp.table_resp.into_iter().next() {
            Some(t) => match t.error_code {
                None => Ok(()),
                Some(code) => Err(Error::from_code(code, t.error_message)),
            },
            None => Err(Error::new(ErrorKind::CorruptMessage, "commit response without a table entry")),
        }
    }
}
