//! The gRPC face of a [`Cluster`]: decodes requests, runs the blocking work off the async runtime, encodes answers.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::cluster::coordinator::{Heartbeat, HeartbeatEntry, LakeBucketOffset, TieringStatus};
use crate::cluster::{BucketId, Cluster, fetch_budget};
use crate::error::{Error, ErrorKind, Result};
use crate::model::now_ms;
use crate::model::table::{TableDescriptor, TableInfo, TablePath};
use crate::model::tiering::FetchAsk;
use crate::rpc::pb_path;
use crate::rpc::proto::{self, coordinator_service_server::CoordinatorService, tablet_service_server::TabletService};

/// Serves both gRPC services from one cluster.
#[derive(Clone)]
pub struct ClusterService {
    cluster: Arc<Cluster>,
}

impl ClusterService {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterService { cluster }
    }

    /// Runs `f` on the blocking pool (disk I/O, fsync) and turns its error into a status.
    async fn kv_write(&self, req: proto::PutKvRequest, delete: bool) -> Result<Response<proto::PutKvResponse>, Status> {
        let bucket_id = req.bucket_id;
        let appended = self
            .blocking(move |c| c.put_kv(req.table_id, req.partition_name.as_deref(), bucket_id, req.records, delete))
            .await?;
        Ok(Response::new(proto::PutKvResponse {
            partition_id: appended.partition_id,
            bucket_id,
            base_offset: appended.base_offset,
            changes: i64::from(appended.record_count),
        }))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Cluster) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let cluster = Arc::clone(&self.cluster);
        tokio::task::spawn_blocking(move || f(&cluster))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
            .map_err(Status::from)
    }
}

pub(crate) fn table_path(p: Option<proto::PbTablePath>) -> Result<TablePath> {
    let p = p.ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "missing table_path"))?;
    TablePath::new(p.database_name, p.table_name)
}

fn table_json(d: &TableDescriptor) -> Result<Vec<u8>> {
    serde_json::to_vec(d).map_err(|e| Error::new(ErrorKind::Internal, "serializing a descriptor").with_source(e))
}

fn entry(e: &proto::PbHeartbeatReqForTable) -> HeartbeatEntry {
    HeartbeatEntry { table_id: e.table_id, coordinator_epoch: e.coordinator_epoch, tiering_epoch: e.tiering_epoch }
}

fn resp(outcomes: Vec<(i64, Result<()>)>) -> Vec<proto::PbHeartbeatRespForTable> {
    outcomes
        .into_iter()
        .map(|(table_id, r)| proto::PbHeartbeatRespForTable {
            table_id,
            error: r
                .err()
                .map(|e| proto::ErrorResponse { error_code: e.kind().code(), error_message: Some(e.to_string()) }),
        })
        .collect()
}

#[tonic::async_trait]
impl CoordinatorService for ClusterService {
    async fn create_table(
        &self,
        req: Request<proto::CreateTableRequest>,
    ) -> Result<Response<proto::CreateTableResponse>, Status> {
        let req = req.into_inner();
        let path = table_path(req.table_path)?;
        let descriptor: TableDescriptor = serde_json::from_slice(&req.table_json).map_err(|e| {
            Status::from(Error::new(ErrorKind::InvalidArgument, format!("table_json is not a table descriptor: {e}")))
        })?;
        let info = self.blocking(move |c| c.create_table(path, descriptor, req.ignore_if_exists)).await?;
        Ok(Response::new(proto::CreateTableResponse { table_id: info.table_id }))
    }

    async fn drop_table(
        &self,
        req: Request<proto::DropTableRequest>,
    ) -> Result<Response<proto::DropTableResponse>, Status> {
        let req = req.into_inner();
        let path = table_path(req.table_path)?;
        self.blocking(move |c| c.drop_table(&path, req.ignore_if_not_exists)).await?;
        Ok(Response::new(proto::DropTableResponse {}))
    }

    async fn alter_table_add_column(
        &self,
        req: Request<proto::AlterTableAddColumnRequest>,
    ) -> Result<Response<proto::AlterTableAddColumnResponse>, Status> {
        let req = req.into_inner();
        let path = table_path(req.table_path)?;
        let column = crate::model::table::Column { name: req.column_name, data_type: req.column_type.parse()? };
        let schema_id = self.blocking(move |c| c.add_column(&path, column)).await?;
        Ok(Response::new(proto::AlterTableAddColumnResponse { schema_id }))
    }

    async fn list_tables(
        &self,
        _req: Request<proto::ListTablesRequest>,
    ) -> Result<Response<proto::ListTablesResponse>, Status> {
        let tables = self.cluster.list_tables().into_iter().map(pb_table_info).collect::<Result<_>>()?;
        Ok(Response::new(proto::ListTablesResponse { tables }))
    }

    async fn schedule_tiering(
        &self,
        req: Request<proto::ScheduleTieringRequest>,
    ) -> Result<Response<proto::ScheduleTieringResponse>, Status> {
        let paths: Vec<TablePath> =
            req.into_inner().tables.into_iter().map(|p| table_path(Some(p))).collect::<Result<_>>()?;
        let tables = self.blocking(move |c| c.schedule_now(&paths)).await?;
        let tables = tables.into_iter().map(pb_table_info).collect::<Result<_>>()?;
        Ok(Response::new(proto::ScheduleTieringResponse { tables }))
    }

    async fn get_table_info(
        &self,
        req: Request<proto::GetTableInfoRequest>,
    ) -> Result<Response<proto::GetTableInfoResponse>, Status> {
        let path = table_path(req.into_inner().table_path)?;
        let t = self.cluster.table_by_path(&path)?;
        Ok(Response::new(proto::GetTableInfoResponse {
            table_id: t.table_id,
            schema_id: t.descriptor.columns.len() as i32,
            table_json: table_json(&t.descriptor)?,
            created_time: t.created_ms,
            modified_time: t.modified_ms,
        }))
    }

    async fn list_partition_infos(
        &self,
        req: Request<proto::ListPartitionInfosRequest>,
    ) -> Result<Response<proto::ListPartitionInfosResponse>, Status> {
        let path = table_path(req.into_inner().table_path)?;
        let t = self.cluster.table_by_path(&path)?;
        let partitions_info = t
            .partitions
            .iter()
            .map(|(name, id)| proto::PbPartitionInfo { partition_id: *id, partition_name: name.clone() })
            .collect();
        Ok(Response::new(proto::ListPartitionInfosResponse { partitions_info }))
    }

    async fn lake_tiering_heartbeat(
        &self,
        req: Request<proto::LakeTieringHeartbeatRequest>,
    ) -> Result<Response<proto::LakeTieringHeartbeatResponse>, Status> {
        let req = req.into_inner();
        let hb = Heartbeat {
            tiering: req.tiering_tables.iter().map(entry).collect(),
            finished: req.finished_tables.iter().map(entry).collect(),
            failed: req.failed_tables.iter().map(|e| (entry(e), e.fail_reason.clone())).collect(),
            force_finished: req.force_finished_tables.clone(),
            request_table: req.request_table.unwrap_or(false),
        };
        let out = self.blocking(move |c| c.coordinator().heartbeat(&hb, Instant::now(), now_ms())).await?;
        Ok(Response::new(proto::LakeTieringHeartbeatResponse {
            coordinator_epoch: out.coordinator_epoch,
            tiering_table: out.assignment.map(|a| proto::PbLakeTieringTableInfo {
                table_id: a.table_id,
                table_path: Some(pb_path(&a.path)),
                tiering_epoch: a.tiering_epoch,
            }),
            tiering_table_resp: resp(out.tiering),
            finished_table_resp: resp(out.finished),
            failed_table_resp: resp(out.failed),
        }))
    }

    async fn get_lake_snapshot(
        &self,
        req: Request<proto::GetLakeSnapshotRequest>,
    ) -> Result<Response<proto::GetLakeSnapshotResponse>, Status> {
        let path = table_path(req.into_inner().table_path)?;
        let table = self.cluster.table_by_path(&path)?;
        let snapshot = self.cluster.coordinator().lake_snapshot(table.table_id)?.clone();
        let names: std::collections::HashMap<i64, &String> = table.partitions.iter().map(|(n, id)| (*id, n)).collect();
        Ok(Response::new(proto::GetLakeSnapshotResponse {
            table_id: table.table_id,
            snapshot_id: snapshot.snapshot_id,
            bucket_snapshots: snapshot
                .buckets
                .iter()
                .map(|b| proto::PbLakeSnapshotForBucket {
                    partition_id: b.partition_id,
                    bucket_id: b.bucket,
                    log_offset: Some(b.log_end_offset),
                    partition_name: b.partition_id.and_then(|p| names.get(&p)).map(|n| n.to_string()),
                })
                .collect(),
        }))
    }

    async fn prepare_lake_table_snapshot(
        &self,
        req: Request<proto::PrepareLakeTableSnapshotRequest>,
    ) -> Result<Response<proto::PrepareLakeTableSnapshotResponse>, Status> {
        let req = req.into_inner();
        let ignore_previous = req.ignore_previous_table_offsets.unwrap_or(false);
        let prepare_lake_table_resp = self
            .blocking(move |c| {
                Ok(req
                    .bucket_offsets
                    .iter()
                    .map(|t| {
                        let offsets: Result<Vec<LakeBucketOffset>> = t
                            .bucket_offsets
                            .iter()
                            .map(|b| {
                                LakeBucketOffset::from_request(b.partition_id, b.bucket_id, b.log_end_offset, None)
                            })
                            .collect();
                        let path = offsets.and_then(|o| c.prepare_lake_offsets(t.table_id, &o, ignore_previous));
                        proto::PbPrepareLakeTableRespForTable {
                            error_code: path.as_ref().err().map(|e| e.kind().code()),
                            error_message: path.as_ref().err().map(|e| e.to_string()),
                            table_id: Some(t.table_id),
                            lake_table_offsets_path: path.ok(),
                        }
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(proto::PrepareLakeTableSnapshotResponse { prepare_lake_table_resp }))
    }

    async fn commit_lake_table_snapshot(
        &self,
        req: Request<proto::CommitLakeTableSnapshotRequest>,
    ) -> Result<Response<proto::CommitLakeTableSnapshotResponse>, Status> {
        let tables = req.into_inner().tables_req;
        let table_resp = self
            .blocking(move |c| {
                let mut coordinator = c.coordinator();
                let outcomes = tables
                    .iter()
                    .map(|t| {
                        let who = HeartbeatEntry {
                            table_id: t.table_id,
                            coordinator_epoch: t.coordinator_epoch,
                            tiering_epoch: t.tiering_epoch,
                        };
                        let buckets: Result<Vec<LakeBucketOffset>> = t
                            .buckets_req
                            .iter()
                            .map(|b| {
                                LakeBucketOffset::from_request(
                                    b.partition_id,
                                    b.bucket_id,
                                    b.log_end_offset,
                                    b.max_timestamp,
                                )
                            })
                            .collect();
                        let r = buckets.and_then(|b| coordinator.commit_lake_snapshot(&who, t.snapshot_id, &b));
                        if let Err(e) = &r {
                            tracing::warn!(table_id = t.table_id, error = %e, "rejected lake snapshot commit");
                        }
                        proto::PbCommitLakeTableSnapshotRespForTable {
                            table_id: t.table_id,
                            error_code: r.as_ref().err().map(|e| e.kind().code()),
                            error_message: r.err().map(|e| e.to_string()),
                        }
                    })
                    .collect();
                Ok(outcomes)
            })
            .await?;
        Ok(Response::new(proto::CommitLakeTableSnapshotResponse { table_resp }))
    }
}

#[tonic::async_trait]
impl TabletService for ClusterService {
    async fn produce_log(
        &self,
        req: Request<proto::ProduceLogRequest>,
    ) -> Result<Response<proto::ProduceLogResponse>, Status> {
        let req = req.into_inner();
        let bucket_id = req.bucket_id;
        let appended = self
            .blocking(move |c| c.produce(req.table_id, req.partition_name.as_deref(), req.bucket_id, req.records))
            .await?;
        Ok(Response::new(proto::ProduceLogResponse {
            partition_id: appended.partition_id,
            bucket_id,
            base_offset: appended.base_offset,
            record_count: i64::from(appended.record_count),
        }))
    }

    async fn fetch_log(
        &self,
        req: Request<proto::FetchLogRequest>,
    ) -> Result<Response<proto::FetchLogResponse>, Status> {
        let req = req.into_inner();
        let id = BucketId { table_id: req.table_id, partition_id: req.partition_id, bucket: req.bucket_id };
        let max_bytes = fetch_budget(req.max_fetch_bytes).min(crate::rpc::MAX_MESSAGE_BYTES / 2);
        let fetched = self.blocking(move |c| c.fetch(id, req.fetch_offset, max_bytes)).await?;
        Ok(Response::new(fetch_log_response(fetched)))
    }

    async fn fetch_logs(
        &self,
        req: Request<proto::FetchLogsRequest>,
    ) -> Result<Response<proto::FetchLogsResponse>, Status> {
        let req = req.into_inner();
        let asks: Vec<FetchAsk> = req
            .buckets
            .iter()
            .map(|b| FetchAsk {
                bucket: (b.table_id, b.partition_id, b.bucket_id),
                offset: b.fetch_offset,
                max_bytes: b.max_fetch_bytes,
            })
            .collect();
        // A response must fit in a message, whatever the client asks for.
        let max_bytes = fetch_budget(req.max_bytes).min(crate::rpc::MAX_MESSAGE_BYTES / 2);
        let answers = self.blocking(move |c| Ok(c.fetch_many(&asks, max_bytes))).await?;
        let answers = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(fetched) => proto::PbFetchLogsAnswer {
                    error_code: None,
                    error_message: None,
                    log: Some(fetch_log_response(fetched)),
                },
                Err(e) => proto::PbFetchLogsAnswer {
                    error_code: Some(e.kind().code()),
                    error_message: Some(e.to_string()),
                    log: None,
                },
            })
            .collect();
        Ok(Response::new(proto::FetchLogsResponse { answers }))
    }

    async fn list_offsets(
        &self,
        req: Request<proto::ListOffsetsRequest>,
    ) -> Result<Response<proto::ListOffsetsResponse>, Status> {
        let req = req.into_inner();
        let latest = match req.offset_type {
            0 => false,
            1 => true,
            other => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("offset type {other} is not supported (0 earliest, 1 latest)"),
                )
                .into());
            }
        };
        let buckets_resp = self
            .blocking(move |c| {
                Ok(req
                    .bucket_id
                    .iter()
                    .map(|&bucket| {
                        let id = BucketId { table_id: req.table_id, partition_id: req.partition_id, bucket };
                        match c.list_offset(id, latest) {
                            Ok(offset) => proto::PbListOffsetsRespForBucket {
                                bucket_id: bucket,
                                offset: Some(offset),
                                ..Default::default()
                            },
                            Err(e) => proto::PbListOffsetsRespForBucket {
                                bucket_id: bucket,
                                error_code: Some(e.kind().code()),
                                error_message: Some(e.to_string()),
                                offset: None,
                            },
                        }
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(proto::ListOffsetsResponse { buckets_resp }))
    }

    async fn get_latest_kv_snapshots(
        &self,
        req: Request<proto::GetLatestKvSnapshotsRequest>,
    ) -> Result<Response<proto::GetLatestKvSnapshotsResponse>, Status> {
        let req = req.into_inner();
        let path = table_path(req.table_path)?;
        let table = self.cluster.table_by_path(&path)?;
        let partition_id = match &req.partition_name {
            Some(name) => Some(*table.partitions.get(name).ok_or_else(|| {
                Error::new(ErrorKind::UnknownTableOrBucket, format!("table {path} has no partition {name:?}"))
            })?),
            None => None,
        };
        let table_id = table.table_id;
        // Log tables have no KV state: every bucket answers "no snapshot", as Fluss does.
        let latest = self.blocking(move |c| c.latest_kv_snapshots(table_id, partition_id)).await?;
        let latest_snapshots = latest
            .into_iter()
            .enumerate()
            .map(|(bucket, s)| proto::PbKvSnapshot {
                bucket_id: bucket as i32,
                snapshot_id: s.map(|s| s.snapshot_id),
                log_offset: s.map(|s| s.log_offset),
                row_count: s.map(|s| s.row_count).unwrap_or(0),
                batch_count: s.map(|s| s.batch_count).unwrap_or(0),
            })
            .collect();
        Ok(Response::new(proto::GetLatestKvSnapshotsResponse { table_id, partition_id, latest_snapshots }))
    }

    async fn put_kv(&self, req: Request<proto::PutKvRequest>) -> Result<Response<proto::PutKvResponse>, Status> {
        self.kv_write(req.into_inner(), false).await
    }

    async fn delete_kv(&self, req: Request<proto::PutKvRequest>) -> Result<Response<proto::PutKvResponse>, Status> {
        self.kv_write(req.into_inner(), true).await
    }

    async fn fetch_kv_snapshot(
        &self,
        req: Request<proto::FetchKvSnapshotRequest>,
    ) -> Result<Response<proto::FetchKvSnapshotResponse>, Status> {
        let req = req.into_inner();
        let id = BucketId { table_id: req.table_id, partition_id: req.partition_id, bucket: req.bucket_id };
        let (batch, batch_count) =
            self.blocking(move |c| c.fetch_kv_snapshot(id, req.snapshot_id, req.batch_index)).await?;
        Ok(Response::new(proto::FetchKvSnapshotResponse { records: crate::model::ipc::encode(&[batch])?, batch_count }))
    }
}

/// A table with the coordinator's view of it (`disabled`: not a lake table).
fn pb_table_info((t, status): (TableInfo, Option<TieringStatus>)) -> Result<proto::PbTableInfo> {
    Ok(proto::PbTableInfo {
        table_id: t.table_id,
        table_path: Some(pb_path(&t.path)),
        table_json: table_json(&t.descriptor)?,
        tiering_state: status.as_ref().map(|s| s.state.name()).unwrap_or("disabled").to_string(),
        tiering_epoch: status.as_ref().map(|s| s.tiering_epoch).unwrap_or(0),
        lake_snapshot_id: status.as_ref().and_then(|s| s.lake_snapshot_id),
        last_tiered_time: status.as_ref().and_then(|s| s.last_tiered_ms),
        failures: status.as_ref().map(|s| s.failures as i64).unwrap_or(0),
        due_in_ms: status.as_ref().and_then(|s| s.due_in).map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        has_data: status.as_ref().is_some_and(|s| s.has_data),
        last_error: status.and_then(|s| s.last_error),
    })
}

/// A bucket's stored batches as the gRPC door sends them.
fn fetch_log_response(fetched: crate::cluster::Fetched) -> proto::FetchLogResponse {
    proto::FetchLogResponse {
        high_watermark: fetched.high_watermark,
        log_start_offset: fetched.log_start_offset,
        batches: fetched
            .batches
            .into_iter()
            .map(|b| proto::PbFetchedBatch {
                base_offset: b.base_offset,
                record_count: i64::from(b.record_count),
                append_timestamp: b.append_timestamp,
                records: b.records,
            })
            .collect(),
    }
}
