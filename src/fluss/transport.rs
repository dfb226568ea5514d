//! The tiering job's Fluss transport: [`TieringCluster`] over Fluss's own protocol, so `tier --cluster fluss://…`
//! talks to a cluster the way Fluss's Flink tiering job does (LakeTieringHeartbeat, GetTableInfo, GetLakeSnapshot,
//! ListOffsets, FetchLog, PrepareLakeTableSnapshot and CommitLakeTableSnapshot with the offsets file's path).
//!
//! ```text
//!   bootstrap servers ──MetaData──▶ nodes: the coordinator, the tablet servers
//!   heartbeats, table and lake info, prepare, commit ──▶ the coordinator
//!   ListOffsets, FetchLog, ScanKv ──▶ each bucket's leader (MetaData of its table, cached); NOT_LEADER_OR_FOLLOWER,
//!                                     LEADER_NOT_AVAILABLE or a broken connection: MetaData again, then the new leader
//! ```
//!
//! One node in both roles (this project's cluster by default) is the same picture with every node on one address.
//! A primary-key bucket new to the lake is read with ScanKv (Fluss 1.0) while the round is planned, held in memory
//! until its split reads it, then its changelog after the scan's offset. Connections are a small pool per server,
//! each used by one call at a time, re-opened after a failure; every call is bounded by the time-out.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use tokio::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::fluss::ApiKey;
use crate::fluss::client::Connection;
use crate::fluss::json;
use crate::fluss::messages as m;
use crate::model::log::LogBatch;
use crate::model::record;
use crate::model::table::{TableDescriptor, TablePath};
use crate::model::tiering::{
    Assignment, BucketAddr, FetchAsk, FetchedLog, HeartbeatRequest, HeartbeatResponse, KvSnapshotRef, LakeBucketOffset,
    LakeCommit, LakeSnapshot, TableAnswer, TableEpoch, TieringCluster, offsets_in_order,
};
use crate::model::{compacted, kv_record};

/// Connections kept to each server: fetches of several splits and the heartbeat run side by side.
const POOL: usize = 4;
/// Tries of a bucket's call, each after asking MetaData where its leader is now.
const LEADER_ATTEMPTS: u32 = 4;

/// Connections to one server.
struct Pool {
    connections: Vec<Mutex<Option<Connection>>>,
    next: AtomicUsize,
}

/// The servers of the cluster, as MetaData last named them.
#[derive(Debug, Clone)]
struct Nodes {
    coordinator: SocketAddr,
    tablet_servers: HashMap<i32, SocketAddr>,
}

pub struct FlussCluster {
    bootstrap: Vec<String>,
    timeout: Duration,
    pools: std::sync::Mutex<HashMap<SocketAddr, Arc<Pool>>>,
    nodes: std::sync::Mutex<Nodes>,
    /// Each bucket's leader (a tablet server's node id), as MetaData last named it.
    leaders: std::sync::Mutex<HashMap<BucketAddr, i32>>,
    /// Table paths by id: MetaData asks by path, a bucket names its table by id.
    paths: std::sync::Mutex<HashMap<i64, TablePath>>,
    /// Buckets read with ScanKv while a round was planned, until its split reads them: (bucket, scan id) → rows.
    scans: std::sync::Mutex<HashMap<(BucketAddr, i64), Vec<RecordBatch>>>,
    next_scan: AtomicI64,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a bucket's call failed because its leader moved or its server went away: ask MetaData, try again.
fn leader_moved(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NotLeaderOrFollower | ErrorKind::LeaderNotAvailable | ErrorKind::Network)
}

impl FlussCluster {
    /// Parses `fluss://HOST:PORT[,HOST:PORT…]` (bootstrap servers) and learns the cluster's nodes from the first
    /// server that answers MetaData.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Arc<Self>> {
        let bad = || Error::new(ErrorKind::InvalidArgument, format!("{url:?} is not fluss://HOST:PORT[,HOST:PORT…]"));
        let rest = url.strip_prefix("fluss://").ok_or_else(bad)?;
        let bootstrap: Vec<String> =
            rest.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        if bootstrap.is_empty() {
            return Err(bad());
        }
        let (nodes, leaders) = Self::bootstrap(&bootstrap, timeout).await?;
        debug_assert!(leaders.is_empty(), "an empty MetaData request names no bucket");
        Ok(Arc::new(FlussCluster {
            bootstrap,
            timeout,
            pools: Default::default(),
            nodes: std::sync::Mutex::new(nodes),
            leaders: Default::default(),
            paths: Default::default(),
            scans: Default::default(),
            next_scan: AtomicI64::new(1),
        }))
    }

    /// MetaData from the first bootstrap server that answers; the error names every server tried.
    async fn bootstrap(servers: &[String], timeout: Duration) -> Result<(Nodes, Vec<(BucketAddr, i32)>)> {
        let mut failures = Vec::new();
        for server in servers {
            let attempt = async {
                let addr = resolve(server, timeout).await?;
                let mut conn = Connection::connect(addr, timeout).await?;
                let resp: m::MetadataResponse = conn.call(ApiKey::GetMetadata, &m::MetadataRequest::default()).await?;
                read_metadata(&resp, timeout).await
            };
            match attempt.await {
                Ok(found) => return Ok(found),
                Err(e) => failures.push(format!("{server}: {e}")),
            }
        }
        Err(Error::new(ErrorKind::Network, format!("no bootstrap server answered: {}", failures.join("; "))))
    }

    /// The pool of connections to `addr`.
    fn pool(&self, addr: SocketAddr) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        Arc::clone(pools.entry(addr).or_insert_with(|| {
            Arc::new(Pool { connections: (0..POOL).map(|_| Mutex::new(None)).collect(), next: AtomicUsize::new(0) })
        }))
    }

    /// One call to the server at `addr` on a pooled connection; a connection that failed is dropped and the next
    /// call opens a new one.
    async fn call_on<T: prost::Message + Default>(
        &self,
        addr: SocketAddr,
        key: ApiKey,
        request: &impl prost::Message,
    ) -> Result<T> {
        let pool = self.pool(addr);
        let slot = &pool.connections[pool.next.fetch_add(1, Ordering::Relaxed) % pool.connections.len()];
        let mut held = slot.lock().await;
        let conn = match held.as_mut() {
            Some(conn) => conn,
            None => held.insert(Connection::connect(addr, self.timeout).await?),
        };
        let result = conn.call(key, request).await;
        if result.as_ref().is_err_and(|e| matches!(e.kind(), ErrorKind::Network | ErrorKind::RequestTimeOut)) {
            *held = None;
        }
        result
    }

    /// A call to the coordinator. A coordinator that cannot be reached may have moved: the nodes are asked for
    /// again, so the next call goes to the one MetaData names.
    async fn call<T: prost::Message + Default>(&self, key: ApiKey, request: &impl prost::Message) -> Result<T> {
        let coordinator = lock(&self.nodes).coordinator;
        let result = self.call_on(coordinator, key, request).await;
        if result.as_ref().is_err_and(|e| e.kind() == ErrorKind::Network)
            && let Ok((nodes, _)) = Self::bootstrap(&self.bootstrap, self.timeout).await
        {
            *lock(&self.nodes) = nodes;
        }
        result
    }

    async fn table_json(&self, path: &TablePath) -> Result<m::GetTableInfoResponse> {
        let info: m::GetTableInfoResponse =
            self.call(ApiKey::GetTableInfo, &m::TablePathRequest { table_path: pb_path(path) }).await?;
        lock(&self.paths).insert(info.table_id, path.clone());
        Ok(info)
    }

    /// The path of table `table_id` (every table listed, the first time a process meets it).
    async fn path_of(&self, table_id: i64) -> Result<TablePath> {
        if let Some(path) = lock(&self.paths).get(&table_id) {
            return Ok(path.clone());
        }
        self.tables().await?;
        lock(&self.paths)
            .get(&table_id)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::TableNotExist, format!("no table has id {table_id}")))
    }

    /// Asks MetaData for the leaders of a table's buckets (of one partition), and for the nodes.
    async fn refresh_leaders(&self, table_id: i64, partition_id: Option<i64>) -> Result<()> {
        let path = self.path_of(table_id).await?;
        let req = m::MetadataRequest {
            table_path: vec![pb_path(&path)],
            partitions_path: vec![],
            partitions_id: partition_id.into_iter().collect(),
        };
        let resp: m::MetadataResponse = self.call(ApiKey::GetMetadata, &req).await?;
        let (nodes, leaders) = read_metadata(&resp, self.timeout).await?;
        *lock(&self.nodes) = nodes;
        let mut known = lock(&self.leaders);
        known.retain(|(t, p, _), _| !(*t == table_id && *p == partition_id));
        known.extend(leaders.into_iter().filter(|((t, p, _), _)| *t == table_id && *p == partition_id));
        Ok(())
    }

    /// The address of a bucket's leader, asking MetaData when it is not known.
    async fn leader_of(&self, bucket: BucketAddr) -> Result<SocketAddr> {
        let known = |this: &Self| {
            let node = lock(&this.leaders).get(&bucket).copied()?;
            lock(&this.nodes).tablet_servers.get(&node).copied()
        };
        if let Some(addr) = known(self) {
            return Ok(addr);
        }
        self.refresh_leaders(bucket.0, bucket.1).await?;
        known(self).ok_or_else(|| {
            Error::new(
                ErrorKind::LeaderNotAvailable,
                format!("MetaData names no reachable leader of bucket {bucket:?}"),
            )
        })
    }

    /// After a call about `bucket` failed with `e` on try `attempt`: whether to try again on the leader MetaData
    /// names now (the leader moved, NOT_LEADER_OR_FOLLOWER or LEADER_NOT_AVAILABLE, or cannot be reached). The cached
    /// leader is forgotten, and a short pause lets the cluster elect a new one.
    async fn follow_leader(&self, bucket: BucketAddr, e: &Error, attempt: &mut u32) -> bool {
        if !leader_moved(e.kind()) || *attempt >= LEADER_ATTEMPTS {
            return false;
        }
        tracing::info!(?bucket, error = %e, attempt = *attempt, "the bucket's leader moved or is unreachable: asking MetaData");
        lock(&self.leaders).remove(&bucket);
        tokio::time::sleep(Duration::from_millis(100 * u64::from(*attempt))).await;
        *attempt += 1;
        true
    }
}

/// The nodes and bucket leaders a MetaData answer names (host names resolved).
async fn read_metadata(resp: &m::MetadataResponse, timeout: Duration) -> Result<(Nodes, Vec<(BucketAddr, i32)>)> {
    let addr = async |n: &m::PbServerNode| -> Result<SocketAddr> {
        let port = u16::try_from(n.port)
            .map_err(|_| Error::new(ErrorKind::CorruptMessage, format!("MetaData names port {}", n.port)))?;
        match n.host.parse() {
            Ok(ip) => Ok(SocketAddr::new(ip, port)),
            Err(_) => resolve(&format!("{}:{port}", n.host), timeout).await,
        }
    };
    let coordinator = resp
        .coordinator_server
        .as_ref()
        .ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "MetaData names no coordinator"))?;
    let mut tablet_servers = HashMap::new();
    for n in &resp.tablet_servers {
        tablet_servers.insert(n.node_id, addr(n).await?);
    }
    let nodes = Nodes { coordinator: addr(coordinator).await?, tablet_servers };
    let mut leaders = Vec::new();
    let mut add = |table_id: i64, partition_id: Option<i64>, buckets: &[m::PbBucketMetadata]| {
        for b in buckets {
            if let Some(leader) = b.leader_id {
                leaders.push(((table_id, partition_id, b.bucket_id), leader));
            }
        }
    };
    for t in &resp.table_metadata {
        add(t.table_id, None, &t.bucket_metadata);
    }
    for p in &resp.partition_metadata {
        add(p.table_id, Some(p.partition_id), &p.bucket_metadata);
    }
    Ok((nodes, leaders))
}

async fn resolve(server: &str, timeout: Duration) -> Result<SocketAddr> {
    tokio::time::timeout(timeout, tokio::net::lookup_host(server))
        .await
        .map_err(|_| Error::new(ErrorKind::RequestTimeOut, format!("resolving {server} timed out")))?
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("cannot resolve {server}")).with_source(e))?
        .next()
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, format!("{server} resolves to no address")))
}

fn pb_path(p: &TablePath) -> m::PbTablePath {
    m::PbTablePath { database_name: p.database.clone(), table_name: p.table.clone() }
}

fn entry(e: &TableEpoch) -> m::PbHeartbeatReqForTable {
    m::PbHeartbeatReqForTable {
        table_id: e.table_id,
        coordinator_epoch: e.coordinator_epoch,
        tiering_epoch: e.tiering_epoch,
    }
}

fn answers(all: Vec<m::PbHeartbeatRespForTable>) -> Vec<TableAnswer> {
    all.into_iter()
        .map(|a| TableAnswer {
            table_id: a.table_id,
            rejection: a.error.map(|e| (ErrorKind::from_code(e.error_code), e.error_message.unwrap_or_default())),
        })
        .collect()
}

/// A FetchLog's answer for each of `buckets`, in that order, each bucket's error (a leader that moved, …) its own.
fn answers_of(resp: m::FetchLogResponse, buckets: &[BucketAddr]) -> Vec<Result<m::PbFetchLogRespForBucket>> {
    let mut by_bucket: HashMap<BucketAddr, m::PbFetchLogRespForBucket> = HashMap::new();
    for table in resp.tables_resp {
        for b in table.buckets_resp {
            by_bucket.insert((table.table_id, b.partition_id, b.bucket_id), b);
        }
    }
    buckets
        .iter()
        .map(|bucket| {
            let answer = by_bucket.remove(bucket).ok_or_else(|| {
                Error::new(ErrorKind::CorruptMessage, format!("FetchLog answered without bucket {bucket:?}"))
            })?;
            check(answer.error_code, answer.error_message.clone())?;
            Ok(answer)
        })
        .collect()
}

/// One bucket's FetchLog answer as the job reads it: its stored batches split apart.
fn fetched_log(answer: m::PbFetchLogRespForBucket) -> Result<FetchedLog> {
    let high_watermark = answer
        .high_watermark
        .ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "a FetchLog answer without a high watermark"))?;
    let batches = match &answer.records {
        Some(records) => record::split(records)?
            .into_iter()
            .map(|b| {
                let h = *b.header();
                LogBatch {
                    base_offset: h.base_offset,
                    record_count: h.offset_span(),
                    append_timestamp: h.commit_timestamp,
                    records: b.bytes().clone(),
                }
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(FetchedLog { high_watermark, log_start_offset: answer.log_start_offset.unwrap_or(0), batches })
}

/// A FetchLog of many buckets (each of one table and partition), grouped by table, up to `max_bytes` in all.
fn many_buckets(asks: &[FetchAsk], max_bytes: i32) -> m::FetchLogRequest {
    let mut tables: Vec<m::PbFetchLogReqForTable> = Vec::new();
    for ask in asks {
        let (table_id, partition_id, bucket_id) = ask.bucket;
        let bucket = m::PbFetchLogReqForBucket {
            partition_id,
            bucket_id,
            fetch_offset: ask.offset,
            max_fetch_bytes: ask.max_bytes,
        };
        match tables.iter_mut().find(|t| t.table_id == table_id) {
            Some(table) => table.buckets_req.push(bucket),
            None => tables.push(m::PbFetchLogReqForTable {
                table_id,
                projection_pushdown_enabled: false,
                projected_fields: vec![],
                buckets_req: vec![bucket],
            }),
        }
    }
    m::FetchLogRequest {
        follower_server_id: -1,
        max_bytes,
        tables_req: tables,
        max_wait_ms: Some(0),
        min_bytes: Some(1),
    }
}

/// A per-bucket or per-table error of a response.
fn check(code: Option<i32>, message: Option<String>) -> Result<()> {
    match code {
        None | Some(0) => Ok(()),
        Some(code) => Err(Error::from_code(code, message)),
    }
}

/// Bytes asked per ScanKv call, and rows per batch handed to a split.
const SCAN_BATCH_BYTES: i32 = 4 << 20;
const SCAN_BATCH_ROWS: usize = 8192;

impl FlussCluster {
    /// Every row of one primary-key bucket with ScanKv (Fluss 1.0), and the log offset they are consistent with:
    /// the whole scan on the bucket's leader (a scanner lives on one server), begun again if the leader moves.
    async fn scan_bucket(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        bucket_id: i32,
    ) -> Result<(Vec<Vec<u8>>, i64)> {
        let (bucket, mut attempt) = ((table_id, partition_id, bucket_id), 1);
        loop {
            let scanned = match self.leader_of(bucket).await {
                Ok(leader) => self.scan_bucket_on(leader, table_id, partition_id, bucket_id).await,
                Err(e) => Err(e),
            };
            match scanned {
                Err(e) if self.follow_leader(bucket, &e, &mut attempt).await => {}
                Err(e) if e.kind() == ErrorKind::UnsupportedVersion => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "bucket {bucket_id} of primary-key table {table_id} is new to the lake, and its state is \
                             read with ScanKv, which this cluster does not serve ({e}): Fluss 0.9 and older keep it \
                             in RocksDB snapshots, which this job cannot read yet (Fluss 1.0 serves ScanKv); log \
                             tables keep tiering"
                        ),
                    ));
                }
                other => return other,
            }
        }
    }

    async fn scan_bucket_on(
        &self,
        leader: SocketAddr,
        table_id: i64,
        partition_id: Option<i64>,
        bucket_id: i32,
    ) -> Result<(Vec<Vec<u8>>, i64)> {
        let mut req = m::ScanKvRequest {
            bucket_scan_req: Some(m::PbScanReqForBucket { table_id, partition_id, bucket_id, limit: None }),
            call_seq_id: Some(0),
            batch_size_bytes: Some(SCAN_BATCH_BYTES),
            ..Default::default()
        };
        let mut values = Vec::new();
        let mut log_offset = None;
        loop {
            let resp: m::ScanKvResponse = self.call_on(leader, ApiKey::ScanKv, &req).await?;
            check(resp.error_code, resp.error_message)?;
            log_offset = log_offset.or(resp.log_offset);
            if let Some(records) = &resp.records {
                values.extend(kv_record::parse_values(records)?);
            }
            if resp.has_more_results != Some(true) {
                break;
            }
            if resp.records.is_none() {
                return Err(Error::new(
                    ErrorKind::CorruptMessage,
                    "a ScanKv answer with more rows to come and none in it",
                ));
            }
            let id = resp.scanner_id.ok_or_else(|| {
                Error::new(ErrorKind::CorruptMessage, "a ScanKv answer with more rows and no scanner id")
            })?;
            let seq = req.call_seq_id.unwrap_or(0).checked_add(1);
            req = m::ScanKvRequest {
                scanner_id: Some(id),
                call_seq_id: seq,
                batch_size_bytes: Some(SCAN_BATCH_BYTES),
                ..Default::default()
            };
        }
        let log_offset = log_offset
            .ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "a ScanKv answer without its log offset"))?;
        Ok((values, log_offset))
    }
}

/// Values (`[schema id i16 LE][CompactedRow]`) as batches of the table's current schema: a row of an older schema
/// reads the columns added since as null.
fn rows_of(d: &TableDescriptor, values: &[Vec<u8>]) -> Result<Vec<RecordBatch>> {
    let current = d.arrow_schema();
    let mut out = Vec::new();
    for chunk in values.chunks(SCAN_BATCH_ROWS) {
        let mut parts = Vec::new();
        for run in chunk.chunk_by(|a, b| a.get(..2) == b.get(..2)) {
            let id = run[0]
                .get(..2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| Error::new(ErrorKind::CorruptRecord, "a scanned value shorter than its schema id"))?;
            parts.push(compacted::decode_rows_of_schema(d, id, run.iter().map(|v| &v[2..]))?);
        }
        out.push(
            arrow::compute::concat_batches(&current, &parts)
                .map_err(|e| Error::new(ErrorKind::Internal, "joining scanned rows").with_source(e))?,
        );
    }
    Ok(out)
}

#[async_trait::async_trait]
impl TieringCluster for FlussCluster {
    async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        let req = m::LakeTieringHeartbeatRequest {
            tiering_tables: request.tiering.iter().map(entry).collect(),
            finished_tables: request.finished.iter().map(entry).collect(),
            // Fluss's heartbeat carries no reason: the job's log and metrics keep it.
            failed_tables: request.failed.iter().map(|(e, _)| entry(e)).collect(),
            request_table: Some(request.request_table),
            force_finished_tables: request.force_finished.clone(),
        };
        let resp: m::LakeTieringHeartbeatResponse = self.call(ApiKey::LakeTieringHeartbeat, &req).await?;
        let assignment = match resp.tiering_table {
            None => None,
            Some(t) => Some(Assignment {
                table_id: t.table_id,
                path: TablePath::new(t.table_path.database_name, t.table_path.table_name)?,
                tiering_epoch: t.tiering_epoch,
            }),
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
        let info = self.table_json(path).await?;
        Ok((info.table_id, json::read_table(&info.table_json)?))
    }

    async fn tables(&self) -> Result<Vec<(i64, TablePath, TableDescriptor)>> {
        let dbs: m::ListDatabasesResponse =
            self.call(ApiKey::ListDatabases, &m::ListDatabasesRequest { include_summary: None }).await?;
        let mut out = Vec::new();
        for db in dbs.database_name {
            let tables: m::ListTablesResponse =
                self.call(ApiKey::ListTables, &m::DatabaseNameRequest { database_name: db.clone() }).await?;
            for name in tables.table_name {
                let path = TablePath::new(db.clone(), name)?;
                match self.table_info(&path).await {
                    Ok((id, descriptor)) => out.push((id, path, descriptor)),
                    // A table the model cannot hold is not this job's to tier; it is said, not fatal.
                    Err(e) if e.kind() == ErrorKind::InvalidTable => {
                        tracing::warn!(table = %path, error = %e, "skipping a table this job cannot tier");
                    }
                    Err(e) if e.kind() == ErrorKind::TableNotExist => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    async fn partitions(&self, path: &TablePath) -> Result<Vec<(i64, String)>> {
        let req = m::ListPartitionInfosRequest { table_path: pb_path(path), partial_partition_spec: None };
        let resp: m::ListPartitionInfosResponse = self.call(ApiKey::ListPartitionInfos, &req).await?;
        Ok(resp
            .partitions_info
            .into_iter()
            .map(|p| {
                let name: Vec<String> = p.partition_spec.partition_key_values.into_iter().map(|kv| kv.value).collect();
                (p.partition_id, name.join("$"))
            })
            .collect())
    }

    async fn list_offsets(
        &self,
        table_id: i64,
        partition_id: Option<i64>,
        buckets: &[i32],
        latest: bool,
    ) -> Result<Vec<i64>> {
        // One request per leader; buckets whose leader moved are asked again where MetaData now says.
        let mut answers = Vec::with_capacity(buckets.len());
        let mut pending = buckets.to_vec();
        let mut attempt = 1;
        while !pending.is_empty() {
            let mut by_leader: BTreeMap<SocketAddr, Vec<i32>> = BTreeMap::new();
            let mut moved = Vec::new();
            for &bucket in &pending {
                match self.leader_of((table_id, partition_id, bucket)).await {
                    Ok(leader) => by_leader.entry(leader).or_default().push(bucket),
                    Err(e) if leader_moved(e.kind()) => moved.push((bucket, e.kind(), e.to_string())),
                    Err(e) => return Err(e),
                }
            }
            for (leader, group) in by_leader {
                let req = m::ListOffsetsRequest {
                    follower_server_id: -1,
                    offset_type: i32::from(latest),
                    table_id,
                    partition_id,
                    bucket_id: group.clone(),
                    start_timestamp: None,
                };
                match self.call_on::<m::ListOffsetsResponse>(leader, ApiKey::ListOffsets, &req).await {
                    Ok(resp) => {
                        for b in resp.buckets_resp {
                            match b.error_code.map(ErrorKind::from_code) {
                                Some(kind) if leader_moved(kind) => {
                                    moved.push((b.bucket_id, kind, b.error_message.unwrap_or_default()));
                                }
                                _ => answers.push((b.bucket_id, b.error_code, b.error_message, b.offset)),
                            }
                        }
                    }
                    Err(e) if leader_moved(e.kind()) => {
                        moved.extend(group.into_iter().map(|b| (b, e.kind(), e.to_string())));
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some((bucket, kind, why)) = moved.first().filter(|_| attempt >= LEADER_ATTEMPTS) {
                return Err(Error::new(*kind, format!("ListOffsets of bucket {bucket} found no leader: {why}")));
            }
            if !moved.is_empty() {
                {
                    let mut known = lock(&self.leaders);
                    for (bucket, ..) in &moved {
                        known.remove(&(table_id, partition_id, *bucket));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            pending = moved.into_iter().map(|(b, ..)| b).collect();
            attempt += 1;
        }
        // Answers from several leaders, back in the order asked (a bucket not asked for goes last, and is refused).
        answers.sort_by_key(|(b, ..)| buckets.iter().position(|x| x == b).unwrap_or(usize::MAX));
        offsets_in_order(table_id, buckets, answers)
    }

    async fn lake_snapshot(&self, path: &TablePath) -> Result<Option<LakeSnapshot>> {
        let req = m::GetLakeSnapshotRequest { table_path: pb_path(path), snapshot_id: None, readable: None };
        match self.call::<m::GetLakeSnapshotResponse>(ApiKey::GetLakeSnapshot, &req).await {
            Ok(s) => Ok(Some(LakeSnapshot {
                snapshot_id: s.snapshot_id,
                buckets: s
                    .bucket_snapshots
                    .into_iter()
                    .filter_map(|b| {
                        Some(LakeBucketOffset {
                            partition_id: b.partition_id,
                            bucket: b.bucket_id,
                            log_end_offset: b.log_offset?,
                            max_timestamp: None,
                        })
                    })
                    .collect(),
            })),
            Err(e) if e.kind() == ErrorKind::LakeSnapshotNotExist => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Each bucket read now with ScanKv, held until its split reads it ([`TieringCluster::kv_snapshot_batch`]).
    async fn kv_snapshots(
        &self,
        path: &TablePath,
        partition_name: Option<&str>,
        buckets: &[i32],
    ) -> Result<Vec<(i32, Option<KvSnapshotRef>)>> {
        let (table_id, descriptor) = self.table_info(path).await?;
        let partition_id = match partition_name {
            None => None,
            Some(name) => {
                Some(self.partitions(path).await?.into_iter().find(|(_, n)| n == name).map(|(id, _)| id).ok_or_else(
                    || Error::new(ErrorKind::PartitionNotExists, format!("table {path} has no partition {name}")),
                )?)
            }
        };
        let mut out = Vec::with_capacity(buckets.len());
        for &bucket in buckets {
            let (values, log_offset) = self.scan_bucket(table_id, partition_id, bucket).await?;
            let batches = rows_of(&descriptor, &values)?;
            let snapshot_id = self.next_scan.fetch_add(1, Ordering::Relaxed);
            let batch_count = i32::try_from(batches.len())
                .map_err(|_| Error::new(ErrorKind::Internal, "a bucket of too many batches"))?;
            let mut scans = self.scans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // An earlier round's scan of this bucket that no split read (the round failed) is dropped.
            let addr = (table_id, partition_id, bucket);
            scans.retain(|(a, _), _| *a != addr);
            if !batches.is_empty() {
                scans.insert((addr, snapshot_id), batches);
            }
            out.push((bucket, Some(KvSnapshotRef { snapshot_id, log_offset, batch_count, held_by_planner: true })));
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        (table_id, partition_id, bucket_id): BucketAddr,
        offset: i64,
        max_bytes: i32,
    ) -> Result<FetchedLog> {
        let mut req = m::FetchLogRequest::one_bucket(table_id, bucket_id, offset, max_bytes, 0);
        req.tables_req[0].buckets_req[0].partition_id = partition_id;
        let (bucket, mut attempt) = ((table_id, partition_id, bucket_id), 1);
        let answer = loop {
            let fetched = match self.leader_of(bucket).await {
                Ok(leader) => {
                    self.call_on(leader, ApiKey::FetchLog, &req).await.and_then(|resp: m::FetchLogResponse| {
                        answers_of(resp, &[bucket])
                            .into_iter()
                            .next()
                            .unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "an answer per bucket asked")))
                    })
                }
                Err(e) => Err(e),
            };
            match fetched {
                Err(e) if self.follow_leader(bucket, &e, &mut attempt).await => {}
                other => break other?,
            }
        };
        fetched_log(answer)
    }

    /// One FetchLog per leader, the leaders asked at once. A leader's failure is its buckets' alone: where the leader
    /// moved or could not be reached, its buckets forget it and are asked again alone, at once, each following its
    /// new leader; any other failure is each of its asks' answer.
    async fn fetch_many(&self, asks: &[FetchAsk], max_bytes: i32) -> Result<Vec<Result<FetchedLog>>> {
        let mut by_leader: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
        for (i, ask) in asks.iter().enumerate() {
            // A bucket whose leader is not known now is left for the fetch alone, which waits for one.
            if let Ok(leader) = self.leader_of(ask.bucket).await {
                by_leader.entry(leader).or_default().push(i);
            }
        }
        let calls = by_leader.into_iter().map(|(leader, indexes)| async move {
            let mine: Vec<FetchAsk> = indexes.iter().map(|&i| asks[i]).collect();
            let answered = self.call_on(leader, ApiKey::FetchLog, &many_buckets(&mine, max_bytes)).await;
            (indexes, mine, answered)
        });
        let mut answers: Vec<Option<Result<FetchedLog>>> = asks.iter().map(|_| None).collect();
        for (indexes, mine, answered) in futures::future::join_all(calls).await {
            match answered {
                Ok(resp) => {
                    let buckets: Vec<BucketAddr> = mine.iter().map(|a| a.bucket).collect();
                    for (i, answer) in indexes.into_iter().zip(answers_of(resp, &buckets)) {
                        if answer.as_ref().is_err_and(|e| leader_moved(e.kind())) {
                            lock(&self.leaders).remove(&asks[i].bucket);
                        }
                        answers[i] = Some(answer.and_then(fetched_log));
                    }
                }
                Err(e) if leader_moved(e.kind()) => {
                    let mut leaders = lock(&self.leaders);
                    for ask in &mine {
                        leaders.remove(&ask.bucket);
                    }
                }
                Err(e) => {
                    for i in indexes {
                        answers[i] = Some(Err(e.shared()));
                    }
                }
            }
        }
        let again = answers.iter().zip(asks).map(|(answer, ask)| async move {
            match answer {
                Some(Err(e)) if leader_moved(e.kind()) => Some(self.fetch(ask.bucket, ask.offset, ask.max_bytes).await),
                Some(_) => None,
                None => Some(self.fetch(ask.bucket, ask.offset, ask.max_bytes).await),
            }
        });
        let again = futures::future::join_all(again).await;
        Ok(answers
            .into_iter()
            .zip(again)
            .map(|(answer, again)| {
                again.or(answer).unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "a bucket left unanswered")))
            })
            .collect())
    }

    async fn kv_snapshot_batch(
        &self,
        bucket: BucketAddr,
        snapshot_id: i64,
        index: i32,
    ) -> Result<(Vec<RecordBatch>, i32)> {
        let mut scans = self.scans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let gone = || {
            Error::new(ErrorKind::KvSnapshotNotExist, format!("scan {snapshot_id} of bucket {bucket:?} is not held"))
        };
        let batches = scans.get(&(bucket, snapshot_id)).ok_or_else(gone)?;
        let count = batches.len();
        let batch = usize::try_from(index).ok().and_then(|i| batches.get(i)).cloned().ok_or_else(gone)?;
        if usize::try_from(index).is_ok_and(|i| i + 1 == count) {
            scans.remove(&(bucket, snapshot_id));
        }
        Ok((vec![batch], count as i32))
    }

    async fn prepare_lake_offsets(
        &self,
        table_id: i64,
        path: &TablePath,
        offsets: &[LakeBucketOffset],
    ) -> Result<String> {
        let prepare = m::PrepareLakeTableSnapshotRequest {
            bucket_offsets: vec![m::PbTableOffsets {
                table_id,
                table_path: pb_path(path),
                bucket_offsets: offsets
                    .iter()
                    .map(|b| m::PbBucketOffset {
                        partition_id: b.partition_id,
                        bucket_id: b.bucket,
                        log_end_offset: Some(b.log_end_offset),
                    })
                    .collect(),
            }],
            ignore_previous_table_offsets: Some(true),
        };
        let prepared: m::PrepareLakeTableSnapshotResponse =
            self.call(ApiKey::PrepareLakeTableSnapshot, &prepare).await?;
        let [answer] = prepared.prepare_lake_table_resp.as_slice() else {
            return Err(Error::new(
                ErrorKind::CorruptMessage,
                "PrepareLakeTableSnapshot answered for other than one table",
            ));
        };
        check(answer.error_code, answer.error_message.clone())?;
        answer
            .lake_table_offsets_path
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::CorruptMessage, "PrepareLakeTableSnapshot answered no path"))
    }

    /// Fluss 0.9's contract: the commit names the offsets file PrepareLakeTableSnapshot wrote (and, for the tablet
    /// servers' metrics, carries the offsets themselves).
    async fn commit_lake_snapshot(&self, commit: &LakeCommit) -> Result<()> {
        let path = commit.offsets_file.clone();
        let request = m::CommitLakeTableSnapshotRequest {
            tables_req: vec![m::PbLakeTableSnapshotInfo {
                table_id: Some(commit.table_id),
                snapshot_id: commit.snapshot.snapshot_id,
                buckets_req: commit
                    .snapshot
                    .buckets
                    .iter()
                    .map(|b| m::PbLakeTableOffsetForBucket {
                        partition_id: b.partition_id,
                        bucket_id: b.bucket,
                        log_end_offset: Some(b.log_end_offset),
                        max_timestamp: b.max_timestamp,
                    })
                    .collect(),
                table_path: Some(pb_path(&commit.path)),
            }],
            lake_table_snapshot_metadata: vec![m::PbLakeTableSnapshotMetadata {
                table_id: commit.table_id,
                snapshot_id: commit.snapshot.snapshot_id,
                tiered_bucket_offsets_file_path: path.clone(),
                readable_bucket_offsets_file_path: Some(path),
                // -1: keep every earlier snapshot. Fluss deletes the offsets files of the entries it drops, and an earlier
                // lake snapshot (or a re-recorded one) may still name its file.
                earliest_snapshot_id_to_keep: Some(-1),
            }],
        };
        let resp: m::CommitLakeTableSnapshotResponse = self.call(ApiKey::CommitLakeTableSnapshot, &request).await?;
        match resp.table_resp.as_slice() {
            [t] if t.table_id == commit.table_id => check(t.error_code, t.error_message.clone()),
            _ => {
                Err(Error::new(ErrorKind::CorruptMessage, "CommitLakeTableSnapshot answered for other than the table"))
            }
        }
    }
}
