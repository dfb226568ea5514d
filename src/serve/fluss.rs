//! The Fluss door: Apache Fluss's own protocol ([`crate::fluss`]) over the same [`Cluster`] as the gRPC door, so
//! the official clients (pyfluss, fluss-rs) create tables, write and read on it.
//!
//! ```text
//!   connection ─▶ reader: frame ─▶ checks ─▶ handler (blocking pool) ─▶ writer task ─▶ connection
//!                   checks: api key served (else UNSUPPORTED_VERSION), version, size (CORRUPT_MESSAGE, frame skipped),
//!                           required fields (CORRUPT_MESSAGE); FetchLog runs on its own task (it may long-poll),
//!                           every other request in arrival order, so one writer's batches reach a bucket in sequence
//! ```
//!
//! By default one node in both roles, as `fluss-wire-protocol.md` §6.2 describes: ApiVersions lists every api key
//! served and no server type; MetaData names coordinator 0 and tablet server 1, both on the address the client
//! connected to, and server 1 leads every bucket. Laid out as a Java cluster instead ([`Topology`]), doors on
//! separate ports play the coordinator and the tablet servers: each serves only its role's api keys (the others:
//! UNSUPPORTED_VERSION) and says its server type, MetaData names every node and each bucket's leader, and a tablet
//! server answers a bucket it does not lead with NOT_LEADER_OR_FOLLOWER, so a client must find and follow leaders. Log records are stored as sent (Fluss log batches) and fetched without re-encoding;
//! primary-key writes (KV batches of CompactedRows) become the changelog the log stores, and lookups answer
//! CompactedRows.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::cluster::coordinator::{Heartbeat, HeartbeatEntry};
use crate::cluster::{BucketId, Cluster};
use crate::error::{Error, ErrorKind, Result};
use crate::fluss::frame::{self, Incoming, MAX_FRAME_BYTES, RequestHeader};
use crate::fluss::json::{self, CreateDefaults};
use crate::fluss::messages as m;
use crate::fluss::{ApiKey, ServedBy, messages::missing_required};
use crate::model::table::{TableInfo, TablePath};
use crate::model::tiering::{FetchAsk, LakeBucketOffset};
use crate::serve::kv_scan::Scanners;

/// The longest a FetchLog may wait for `min_bytes` (a client's `max_wait_ms` above it is capped).
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// The node ids of the one node's two roles.
const COORDINATOR_ID: i32 = 0;
const TABLET_SERVER_ID: i32 = 1;
/// Answers queued for one connection before its reader waits for the writer.
const QUEUED_ANSWERS: usize = 64;
/// FetchLog requests of one connection served at once (a client has one per server in flight).
const MAX_FETCHES_PER_CONNECTION: usize = 8;
/// A connection that sends nothing for this long is closed (Netty's `netty.connection.max-idle-time` default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The nodes of a cluster laid out as Java Fluss lays one out: a coordinator and tablet servers (node ids 1..=n), each
/// bucket led by one tablet server. Shared by the doors that play the nodes (and by tests, which move leaders).
pub struct Topology {
    coordinator: SocketAddr,
    tablet_servers: Vec<SocketAddr>,
    /// Buckets whose leadership moved: bucket → (leader, leader epoch).
    moved: std::sync::Mutex<HashMap<BucketId, (i32, i32)>>,
}

impl Topology {
    pub fn new(coordinator: SocketAddr, tablet_servers: Vec<SocketAddr>) -> Result<Arc<Self>> {
        if tablet_servers.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConfig, "a cluster needs at least one tablet server"));
        }
        Ok(Arc::new(Topology { coordinator, tablet_servers, moved: Default::default() }))
    }

    /// A bucket's leader (a tablet server's node id) and leader epoch: server `bucket mod n + 1` until moved.
    pub fn leader(&self, id: BucketId) -> (i32, i32) {
        let moved = self.moved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        moved.get(&id).copied().unwrap_or_else(|| {
            let n = self.tablet_servers.len() as i64;
            ((i64::from(id.bucket).rem_euclid(n) + 1) as i32, 0)
        })
    }

    /// Makes tablet server `node` the bucket's leader under a new leader epoch, as Fluss's coordinator does when a
    /// server goes away.
    pub fn move_leader(&self, id: BucketId, node: i32) -> Result<()> {
        if !(1..=self.tablet_servers.len() as i32).contains(&node) {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("there is no tablet server {node}")));
        }
        let (_, epoch) = self.leader(id);
        let mut moved = self.moved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        moved.insert(id, (node, epoch + 1));
        Ok(())
    }

    fn node(&self, node_id: i32) -> m::PbServerNode {
        let addr = match node_id {
            COORDINATOR_ID => self.coordinator,
            n => self.tablet_servers[(n - 1) as usize],
        };
        m::PbServerNode { node_id, host: addr.ip().to_string(), port: i32::from(addr.port()) }
    }
}

/// Which node a door plays.
#[derive(Clone)]
enum Layout {
    /// One node in both roles.
    Single,
    Coordinator(Arc<Topology>),
    TabletServer(Arc<Topology>, i32),
}

impl Layout {
    /// Why this node does not serve `key`, if it does not (a Java server has no handler for another role's calls).
    fn refusal(&self, key: ApiKey) -> Option<Error> {
        let (served, role) = match self {
            Layout::Single => return None,
            Layout::Coordinator(_) => (key.served_by() != ServedBy::TabletServers, "the coordinator"),
            Layout::TabletServer(..) => (key.served_by() != ServedBy::Coordinator, "a tablet server"),
        };
        (!served).then(|| Error::new(ErrorKind::UnsupportedVersion, format!("{role} does not serve {key:?}")))
    }

    /// NOT_LEADER_OR_FOLLOWER unless this node leads the bucket.
    fn check_leader(&self, id: BucketId) -> Result<()> {
        match self {
            Layout::Single => Ok(()),
            Layout::TabletServer(topology, node) => match topology.leader(id) {
                (leader, _) if leader == *node => Ok(()),
                (leader, epoch) => Err(Error::new(
                    ErrorKind::NotLeaderOrFollower,
                    format!("tablet server {node} does not lead bucket {id:?}: server {leader} does (epoch {epoch})"),
                )),
            },
            Layout::Coordinator(_) => {
                Err(Error::new(ErrorKind::NotLeaderOrFollower, "the coordinator leads no bucket"))
            }
        }
    }

    /// ApiVersions' server type: 1 coordinator, 2 tablet server; none for one node in both roles (a client checks the
    /// type against the role it expects of a connection).
    fn server_type(&self) -> Option<i32> {
        match self {
            Layout::Single => None,
            Layout::Coordinator(_) => Some(1),
            Layout::TabletServer(..) => Some(2),
        }
    }
}

/// The Fluss door of one cluster.
pub struct FlussDoor {
    cluster: Arc<Cluster>,
    defaults: CreateDefaults,
    max_frame: usize,
    /// The address MetaData names for this node; by default the one each client connected to.
    advertised: Option<SocketAddr>,
    scanners: Scanners,
    layout: Layout,
    /// Calls this door plays a release without (listed in no ApiVersions answer, refused).
    withheld: Vec<ApiKey>,
}

impl FlussDoor {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let defaults = CreateDefaults { buckets: 1 };
        FlussDoor {
            cluster,
            defaults,
            max_frame: MAX_FRAME_BYTES,
            advertised: None,
            scanners: Scanners::default(),
            layout: Layout::Single,
            withheld: Vec::new(),
        }
    }

    /// Plays a Fluss release that lacks `keys`, as Fluss 0.9 lacks ScanKv: a client finds them in no ApiVersions
    /// answer, and a call of one is refused.
    pub fn without(mut self, keys: &[ApiKey]) -> Self {
        self.withheld.extend_from_slice(keys);
        self
    }

    /// Why this door does not serve `key`, if it does not: its role's, or its release's.
    fn refusal(&self, key: ApiKey) -> Option<Error> {
        if self.withheld.contains(&key) {
            return Some(Error::new(ErrorKind::UnsupportedVersion, format!("this release does not serve {key:?}")));
        }
        self.layout.refusal(key)
    }

    /// Plays the coordinator of `topology`.
    pub fn as_coordinator(mut self, topology: Arc<Topology>) -> Self {
        self.layout = Layout::Coordinator(topology);
        self
    }

    /// Plays tablet server `node` (from 1) of `topology`.
    pub fn as_tablet_server(mut self, topology: Arc<Topology>, node: i32) -> Self {
        self.layout = Layout::TabletServer(topology, node);
        self
    }

    /// Names `addr` in MetaData instead of the address a client connected to (a proxy or NAT in between).
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertised = Some(addr);
        self
    }

    /// Refuses frames longer than `bytes` (tests use a small limit).
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Serves connections from `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let door = Arc::new(self);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let door = Arc::clone(&door);
                        connections.spawn(async move {
                            if let Err(e) = door.connection(stream).await {
                                tracing::debug!(%peer, error = %e, "Fluss connection closed");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "accepting a Fluss connection failed"),
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
        Ok(())
    }

    /// Serves one connection. Everything it started (its writer, its fetches) ends with it: the fetches run in a
    /// set that is dropped, and so aborted, when the connection ends or the door stops.
    async fn connection(self: Arc<Self>, stream: TcpStream) -> Result<()> {
        let _ = stream.set_nodelay(true);
        let local = match self.advertised {
            Some(addr) => addr,
            None => stream.local_addr().map_err(|e| Error::new(ErrorKind::Network, "local address").with_source(e))?,
        };
        let (mut reader, mut writer) = stream.into_split();
        let (answers, mut outbox) = mpsc::channel::<Bytes>(QUEUED_ANSWERS);
        let writing = async move {
            while let Some(frame) = outbox.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
        };
        let reading = async move {
            let mut fetches = tokio::task::JoinSet::new();
            let result = loop {
                while fetches.try_join_next().is_some() {}
                let incoming =
                    match tokio::time::timeout(IDLE_TIMEOUT, frame::read_request(&mut reader, self.max_frame)).await {
                        Ok(incoming) => incoming,
                        // As a Java server does: a connection silent for this long is closed.
                        Err(_) => break Ok(()),
                    };
                let (header, body) = match incoming {
                    Ok(Incoming::Request(header, body)) => (header, body),
                    Ok(Incoming::Oversize(header, len)) => {
                        let err = Error::new(
                            ErrorKind::CorruptMessage,
                            format!("a request of {len} bytes exceeds the {} bytes a request may have", self.max_frame),
                        );
                        let _ = answers.send(frame::error(header.request_id, &err)).await;
                        continue;
                    }
                    Ok(Incoming::Closed) => break Ok(()),
                    Err(e) => break Err(e),
                };
                let key = match check(header, &body) {
                    Ok(key) => key,
                    Err(e) => {
                        let _ = answers.send(frame::error(header.request_id, &e)).await;
                        continue;
                    }
                };
                if key == ApiKey::FetchLog {
                    // Fetches may long-poll, so they run beside the other requests, a bounded number at a time.
                    if fetches.len() >= MAX_FETCHES_PER_CONNECTION {
                        fetches.join_next().await;
                    }
                    let (door, answers) = (Arc::clone(&self), answers.clone());
                    fetches.spawn(async move {
                        let answer = door.answer(key, header, body, local).await;
                        let _ = answers.send(answer).await;
                    });
                } else {
                    let answer = self.answer(key, header, body, local).await;
                    if answers.send(answer).await.is_err() {
                        break Ok(());
                    }
                }
            };
            drop(fetches);
            result
        };
        let (result, ()) = tokio::join!(reading, writing);
        result
    }

    /// The response frame of one checked request.
    async fn answer(&self, key: ApiKey, header: RequestHeader, body: Bytes, local: SocketAddr) -> Bytes {
        match self.handle(key, body, local).await {
            Ok(encoded) => frame::success_encoded(header.request_id, &encoded)
                .unwrap_or_else(|e| frame::error(header.request_id, &e)),
            Err(e) => {
                if !matches!(
                    e.kind(),
                    ErrorKind::TableNotExist | ErrorKind::DatabaseNotExist | ErrorKind::LakeSnapshotNotExist
                ) {
                    tracing::debug!(api = ?key, error = %e, "Fluss request failed");
                }
                frame::error(header.request_id, &e)
            }
        }
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Cluster) -> Result<T> + Send + 'static) -> Result<T> {
        let cluster = Arc::clone(&self.cluster);
        tokio::task::spawn_blocking(move || f(&cluster))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("request task failed: {e}")))?
    }

    /// Handles one request; returns the encoded response body.
    async fn handle(&self, key: ApiKey, body: Bytes, local: SocketAddr) -> Result<Vec<u8>> {
        if let Some(refusal) = self.refusal(key) {
            return Err(refusal);
        }
        Ok(match key {
            ApiKey::ApiVersions => {
                decode::<m::ApiVersionsRequest>(body)?;
                let api_versions = ApiKey::ALL
                    .iter()
                    .filter(|k| self.refusal(**k).is_none())
                    .map(|k| m::PbApiVersion {
                        api_key: i32::from(*k as i16),
                        min_version: 0,
                        max_version: i32::from(k.max_version()),
                    })
                    .collect();
                m::ApiVersionsResponse { api_versions, server_type: self.layout.server_type() }.encode_to_vec()
            }
            ApiKey::CreateDatabase => {
                let req: m::CreateDatabaseRequest = decode(body)?;
                let comment = database_comment(req.database_json.as_deref())?;
                self.blocking(move |c| c.create_database(&req.database_name, comment, req.ignore_if_exists)).await?;
                m::EmptyResponse {}.encode_to_vec()
            }
            ApiKey::DropDatabase => {
                let req: m::DropDatabaseRequest = decode(body)?;
                self.blocking(move |c| c.drop_database(&req.database_name, req.ignore_if_not_exists, req.cascade))
                    .await?;
                m::EmptyResponse {}.encode_to_vec()
            }
            ApiKey::ListDatabases => {
                decode::<m::ListDatabasesRequest>(body)?;
                let names = self.cluster.databases().into_iter().map(|d| d.name).collect();
                m::ListDatabasesResponse { database_name: names }.encode_to_vec()
            }
            ApiKey::DatabaseExists => {
                let req: m::DatabaseNameRequest = decode(body)?;
                m::ExistsResponse { exists: self.cluster.database(&req.database_name).is_ok() }.encode_to_vec()
            }
            ApiKey::GetDatabaseInfo => {
                let req: m::DatabaseNameRequest = decode(body)?;
                let info = self.cluster.database(&req.database_name)?;
                let mut json = serde_json::json!({"version": 1, "custom_properties": {}});
                if let Some(comment) = info.comment {
                    json["comment"] = comment.into();
                }
                m::GetDatabaseInfoResponse {
                    database_json: json.to_string().into_bytes(),
                    created_time: info.created_ms,
                    modified_time: info.modified_ms,
                }
                .encode_to_vec()
            }
            ApiKey::CreateTable => {
                let req: m::CreateTableRequest = decode(body)?;
                let path = table_path(&req.table_path)?;
                let descriptor = json::parse_table(&req.table_json, &self.defaults)?;
                self.blocking(move |c| {
                    c.database(&path.database)?;
                    c.create_table(path, descriptor, req.ignore_if_exists).map(drop)
                })
                .await?;
                m::EmptyResponse {}.encode_to_vec()
            }
            ApiKey::DropTable => {
                let req: m::DropTableRequest = decode(body)?;
                let path = table_path(&req.table_path)?;
                self.blocking(move |c| c.drop_table(&path, req.ignore_if_not_exists)).await?;
                m::EmptyResponse {}.encode_to_vec()
            }
            ApiKey::GetTableInfo => {
                let req: m::TablePathRequest = decode(body)?;
                let t = self.cluster.table_by_path(&table_path(&req.table_path)?)?;
                m::GetTableInfoResponse {
                    table_id: t.table_id,
                    schema_id: i32::from(t.descriptor.schema_id()),
                    table_json: json::table_json(&t.descriptor)?,
                    created_time: t.created_ms,
                    modified_time: t.modified_ms,
                }
                .encode_to_vec()
            }
            ApiKey::ListTables => {
                let req: m::DatabaseNameRequest = decode(body)?;
                self.cluster.database(&req.database_name)?;
                let names = self
                    .cluster
                    .list_tables()
                    .into_iter()
                    .filter(|(t, _)| t.path.database == req.database_name)
                    .map(|(t, _)| t.path.table)
                    .collect();
                m::ListTablesResponse { table_name: names }.encode_to_vec()
            }
            ApiKey::TableExists => {
                let req: m::TablePathRequest = decode(body)?;
                let exists = self.cluster.table_by_path(&table_path(&req.table_path)?).is_ok();
                m::ExistsResponse { exists }.encode_to_vec()
            }
            ApiKey::GetTableSchema => {
                let req: m::GetTableSchemaRequest = decode(body)?;
                let t = self.cluster.table_by_path(&table_path(&req.table_path)?)?;
                let schema_id = match req.schema_id {
                    None => t.descriptor.schema_id(),
                    Some(id) => i16::try_from(id)
                        .map_err(|_| Error::new(ErrorKind::SchemaNotExist, format!("schema id {id} does not exist")))?,
                };
                m::GetTableSchemaResponse {
                    schema_id: i32::from(schema_id),
                    schema_json: json::schema_json_of(&t.descriptor, schema_id)?,
                }
                .encode_to_vec()
            }
            ApiKey::ListPartitionInfos => {
                let req: m::ListPartitionInfosRequest = decode(body)?;
                let t = self.cluster.table_by_path(&table_path(&req.table_path)?)?;
                let key = t.descriptor.partition_key.clone().ok_or_else(|| {
                    Error::new(ErrorKind::TableNotPartitioned, format!("table {} is not partitioned", t.path))
                })?;
                let wanted = match req.partial_partition_spec {
                    Some(spec) if !spec.partition_key_values.is_empty() => Some(partition_name(&t, &spec)?),
                    _ => None,
                };
                let partitions_info = t
                    .partitions
                    .iter()
                    .filter(|(name, _)| wanted.as_ref().is_none_or(|w| w == *name))
                    .map(|(name, id)| m::PbPartitionInfo {
                        partition_id: *id,
                        partition_spec: m::PbPartitionSpec {
                            partition_key_values: vec![m::PbKeyValue { key: key.clone(), value: name.clone() }],
                        },
                    })
                    .collect();
                m::ListPartitionInfosResponse { partitions_info }.encode_to_vec()
            }
            ApiKey::CreatePartition => {
                let req: m::CreatePartitionRequest = decode(body)?;
                let path = table_path(&req.table_path)?;
                let t = self.cluster.table_by_path(&path)?;
                let name = partition_name(&t, &req.partition_spec)?;
                self.blocking(move |c| c.create_partition(&path, &name, req.ignore_if_not_exists)).await?;
                m::EmptyResponse {}.encode_to_vec()
            }
            ApiKey::GetMetadata => self.metadata(decode(body)?, local)?.encode_to_vec(),
            ApiKey::InitWriter => {
                decode::<m::InitWriterRequest>(body)?;
                let writer_id = self.blocking(|c| c.new_writer_id()).await?;
                m::InitWriterResponse { writer_id }.encode_to_vec()
            }
            ApiKey::ProduceLog => self.produce(decode(body)?).await?.encode_to_vec(),
            ApiKey::FetchLog => self.fetch(decode(body)?).await?.encode_to_vec(),
            ApiKey::PutKv => self.put_kv(decode(body)?).await?.encode_to_vec(),
            ApiKey::Lookup => self.lookup(decode(body)?).await?.encode_to_vec(),
            ApiKey::GetLatestKvSnapshots => {
                let req: m::GetLatestKvSnapshotsRequest = decode(body)?;
                let t = self.cluster.table_by_path(&table_path(&req.table_path)?)?;
                if !t.descriptor.has_primary_key() {
                    return Err(Error::new(
                        ErrorKind::NonPrimaryKeyTable,
                        format!("table {} has no primary key", t.path),
                    ));
                }
                let partition_id = match &req.partition_name {
                    None => None,
                    Some(name) => Some(*t.partitions.get(name).ok_or_else(|| {
                        Error::new(ErrorKind::PartitionNotExists, format!("table {} has no partition {name}", t.path))
                    })?),
                };
                let table_id = t.table_id;
                let latest = self.blocking(move |c| c.latest_kv_snapshots(table_id, partition_id)).await?;
                let latest_snapshots = latest
                    .into_iter()
                    .enumerate()
                    .map(|(bucket, s)| m::PbKvSnapshot {
                        bucket_id: bucket as i32,
                        snapshot_id: s.map(|s| s.snapshot_id),
                        log_offset: s.map(|s| s.log_offset),
                    })
                    .collect();
                m::GetLatestKvSnapshotsResponse { table_id, partition_id, latest_snapshots }.encode_to_vec()
            }
            ApiKey::ListOffsets => self.list_offsets(decode(body)?).await?.encode_to_vec(),
            ApiKey::ScanKv => {
                let answer = self.scan_kv(decode(body)?).await;
                answer
                    .unwrap_or_else(|e| m::ScanKvResponse {
                        error_code: Some(e.kind().code()),
                        error_message: Some(e.to_string()),
                        ..Default::default()
                    })
                    .encode_to_vec()
            }
            ApiKey::GetFileSystemSecurityToken => {
                // The cluster's files are local: no credentials are needed to read them.
                m::GetFileSystemSecurityTokenResponse {
                    schema: "file".into(),
                    token: Vec::new(),
                    expiration_time: None,
                }
                .encode_to_vec()
            }
            ApiKey::LakeTieringHeartbeat => self.heartbeat(decode(body)?).await?.encode_to_vec(),
            ApiKey::PrepareLakeTableSnapshot => self.prepare(decode(body)?).await?.encode_to_vec(),
            ApiKey::CommitLakeTableSnapshot => self.commit(decode(body)?).await?.encode_to_vec(),
            ApiKey::GetLakeSnapshot => {
                let req: m::GetLakeSnapshotRequest = decode(body)?;
                if req.snapshot_id.is_some() && req.readable == Some(true) {
                    return Err(Error::new(ErrorKind::InvalidArgument, "ask for a snapshot id or the readable one"));
                }
                let t = self.cluster.table_by_path(&table_path(&req.table_path)?)?;
                let lake =
                    self.cluster.coordinator().lake_snapshot(t.table_id).cloned().map_err(|e| match e.kind() {
                        // A table the coordinator does not schedule (tiering off) has no lake snapshot either.
                        ErrorKind::TableNotExist => Error::new(
                            ErrorKind::LakeSnapshotNotExist,
                            format!("table {} has no lake snapshot", t.path),
                        ),
                        _ => e,
                    })?;
                if req.snapshot_id.is_some_and(|id| id != lake.snapshot_id) {
                    return Err(Error::new(
                        ErrorKind::LakeSnapshotNotExist,
                        format!("table {} keeps only its latest lake snapshot, {}", t.path, lake.snapshot_id),
                    ));
                }
                m::GetLakeSnapshotResponse {
                    table_id: t.table_id,
                    snapshot_id: lake.snapshot_id,
                    bucket_snapshots: lake
                        .buckets
                        .iter()
                        .map(|b| m::PbLakeSnapshotForBucket {
                            partition_id: b.partition_id,
                            bucket_id: b.bucket,
                            log_offset: Some(b.log_end_offset),
                        })
                        .collect(),
                }
                .encode_to_vec()
            }
        })
    }

    /// LakeTieringHeartbeat: the coordinator's tiering state machine, as over gRPC (Fluss sends no failure reason).
    async fn heartbeat(&self, req: m::LakeTieringHeartbeatRequest) -> Result<m::LakeTieringHeartbeatResponse> {
        let entry = |e: &m::PbHeartbeatReqForTable| HeartbeatEntry {
            table_id: e.table_id,
            coordinator_epoch: e.coordinator_epoch,
            tiering_epoch: e.tiering_epoch,
        };
        let hb = Heartbeat {
            tiering: req.tiering_tables.iter().map(entry).collect(),
            finished: req.finished_tables.iter().map(entry).collect(),
            failed: req.failed_tables.iter().map(|e| (entry(e), None)).collect(),
            force_finished: req.force_finished_tables.clone(),
            request_table: req.request_table.unwrap_or(false),
        };
        let out =
            self.blocking(move |c| c.coordinator().heartbeat(&hb, Instant::now(), crate::model::now_ms())).await?;
        let answers = |all: Vec<(i64, Result<()>)>| -> Vec<m::PbHeartbeatRespForTable> {
            all.into_iter()
                .map(|(table_id, r)| m::PbHeartbeatRespForTable {
                    table_id,
                    error: r
                        .err()
                        .map(|e| m::ErrorResponse { error_code: e.kind().code(), error_message: Some(e.to_string()) }),
                })
                .collect()
        };
        Ok(m::LakeTieringHeartbeatResponse {
            coordinator_epoch: out.coordinator_epoch,
            tiering_table: out.assignment.map(|a| m::PbLakeTieringTableInfo {
                table_id: a.table_id,
                table_path: m::PbTablePath { database_name: a.path.database, table_name: a.path.table },
                tiering_epoch: a.tiering_epoch,
            }),
            tiering_table_resp: answers(out.tiering),
            finished_table_resp: answers(out.finished),
            failed_table_resp: answers(out.failed),
        })
    }

    /// PrepareLakeTableSnapshot: per table, the merged offsets written to a file whose path is answered.
    async fn prepare(&self, req: m::PrepareLakeTableSnapshotRequest) -> Result<m::PrepareLakeTableSnapshotResponse> {
        let ignore_previous = req.ignore_previous_table_offsets.unwrap_or(false);
        self.blocking(move |c| {
            let prepare_lake_table_resp = req
                .bucket_offsets
                .iter()
                .map(|t| {
                    let offsets: Result<Vec<LakeBucketOffset>> = t
                        .bucket_offsets
                        .iter()
                        .map(|b| LakeBucketOffset::from_request(b.partition_id, b.bucket_id, b.log_end_offset, None))
                        .collect();
                    let path = offsets.and_then(|o| c.prepare_lake_offsets(t.table_id, &o, ignore_previous));
                    m::PbPrepareLakeTableRespForTable {
                        error_code: path.as_ref().err().map(|e| e.kind().code()),
                        error_message: path.as_ref().err().map(|e| e.to_string()),
                        table_id: Some(t.table_id),
                        lake_table_offsets_path: path.ok(),
                    }
                })
                .collect();
            Ok(m::PrepareLakeTableSnapshotResponse { prepare_lake_table_resp })
        })
        .await
    }

    /// CommitLakeTableSnapshot: with snapshot metadata (Fluss 0.9), the offsets are the tiered file's; without
    /// (the legacy form), the request's own. The request names no tiering epoch: the table must be held by a round.
    async fn commit(&self, req: m::CommitLakeTableSnapshotRequest) -> Result<m::CommitLakeTableSnapshotResponse> {
        self.blocking(move |c| {
            let commit_one = |table_id: i64, snapshot_id: i64, offsets: Result<Vec<LakeBucketOffset>>| {
                let r = offsets.and_then(|o| {
                    let mut coordinator = c.coordinator();
                    let holder = coordinator.holder(table_id)?;
                    coordinator.commit_lake_snapshot(&holder, snapshot_id, &o)
                });
                if let Err(e) = &r {
                    tracing::warn!(table_id, error = %e, "rejected lake snapshot commit");
                }
                m::PbCommitLakeTableSnapshotRespForTable {
                    error_code: r.as_ref().err().map(|e| e.kind().code()),
                    error_message: r.err().map(|e| e.to_string()),
                    table_id,
                }
            };
            let table_resp = if req.lake_table_snapshot_metadata.is_empty() {
                req.tables_req
                    .iter()
                    .map(|t| {
                        let table_id = t.table_id.unwrap_or(-1);
                        let offsets = t
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
                        commit_one(table_id, t.snapshot_id, offsets)
                    })
                    .collect()
            } else {
                req.lake_table_snapshot_metadata
                    .iter()
                    .map(|meta| {
                        let offsets = c.read_lake_offsets(&meta.tiered_bucket_offsets_file_path).and_then(|file| {
                            match file.table_id == meta.table_id {
                                true => file.buckets(),
                                false => Err(Error::new(
                                    ErrorKind::InvalidArgument,
                                    format!(
                                        "offsets file of table {} named for table {}",
                                        file.table_id, meta.table_id
                                    ),
                                )),
                            }
                        });
                        commit_one(meta.table_id, meta.snapshot_id, offsets)
                    })
                    .collect()
            };
            Ok(m::CommitLakeTableSnapshotResponse { table_resp })
        })
        .await
    }

    fn metadata(&self, req: m::MetadataRequest, local: SocketAddr) -> Result<m::MetadataResponse> {
        let topology = match &self.layout {
            Layout::Single => None,
            Layout::Coordinator(t) | Layout::TabletServer(t, _) => Some(Arc::clone(t)),
        };
        let node = |node_id| match &topology {
            Some(t) => t.node(node_id),
            None => m::PbServerNode { node_id, host: local.ip().to_string(), port: i32::from(local.port()) },
        };
        let buckets = |t: &TableInfo, partition_id: Option<i64>| -> Vec<m::PbBucketMetadata> {
            (0..t.descriptor.buckets as i32)
                .map(|bucket_id| {
                    let id = BucketId { table_id: t.table_id, partition_id, bucket: bucket_id };
                    let (leader, epoch) = topology.as_ref().map_or((TABLET_SERVER_ID, 0), |t| t.leader(id));
                    m::PbBucketMetadata {
                        bucket_id,
                        leader_id: Some(leader),
                        replica_id: vec![leader],
                        leader_epoch: Some(epoch),
                    }
                })
                .collect()
        };
        let mut table_metadata = Vec::new();
        for p in &req.table_path {
            let t = self.cluster.table_by_path(&table_path(p)?)?;
            table_metadata.push(m::PbTableMetadata {
                table_path: p.clone(),
                table_id: t.table_id,
                schema_id: i32::from(t.descriptor.schema_id()),
                table_json: json::table_json(&t.descriptor)?,
                bucket_metadata: buckets(&t, None),
                created_time: t.created_ms,
                modified_time: t.modified_ms,
            });
        }
        let mut partition_metadata = Vec::new();
        let partition = |t: &TableInfo, name: &str, partition_id: i64| m::PbPartitionMetadata {
            table_id: t.table_id,
            partition_name: name.to_string(),
            partition_id,
            bucket_metadata: buckets(t, Some(partition_id)),
        };
        for p in &req.partitions_path {
            let t = self.cluster.table_by_path(&TablePath::new(p.database_name.clone(), p.table_name.clone())?)?;
            let name = p.partition_name.as_deref().unwrap_or_default();
            let id = t.partitions.get(name).copied().ok_or_else(|| {
                Error::new(ErrorKind::PartitionNotExists, format!("table {} has no partition {name:?}", t.path))
            })?;
            partition_metadata.push(partition(&t, name, id));
        }
        if !req.partitions_id.is_empty() {
            for (t, _) in self.cluster.list_tables() {
                for (name, id) in &t.partitions {
                    if req.partitions_id.contains(id) {
                        partition_metadata.push(partition(&t, name, *id));
                    }
                }
            }
        }
        let tablet_servers = match &topology {
            Some(t) => (1..=t.tablet_servers.len() as i32).map(node).collect(),
            None => vec![node(TABLET_SERVER_ID)],
        };
        Ok(m::MetadataResponse {
            coordinator_server: Some(node(COORDINATOR_ID)),
            tablet_servers,
            table_metadata,
            partition_metadata,
        })
    }

    async fn produce(&self, req: m::ProduceLogRequest) -> Result<m::ProduceLogResponse> {
        let table = self.cluster.table_by_id(req.table_id)?;
        let mut buckets_resp = Vec::with_capacity(req.buckets_req.len());
        for b in req.buckets_req {
            let (partition_id, bucket_id) = (b.partition_id, b.bucket_id);
            let led = self.layout.check_leader(BucketId { table_id: req.table_id, partition_id, bucket: bucket_id });
            let result = match led.and_then(|()| partition_name_of(&table, partition_id)) {
                Ok(name) => {
                    self.blocking(move |c| c.produce(req.table_id, name.as_deref(), bucket_id, b.records)).await
                }
                Err(e) => Err(e),
            };
            let (base_offset, error) = match result {
                Ok(appended) => (Some(appended.base_offset), None),
                Err(e) => (None, Some(e)),
            };
            buckets_resp.push(m::PbProduceLogRespForBucket {
                partition_id,
                bucket_id,
                error_code: error.as_ref().map(|e| e.kind().code()),
                error_message: error.map(|e| e.to_string()),
                base_offset,
            });
        }
        Ok(m::ProduceLogResponse { buckets_resp })
    }

    /// Writes each bucket's KV batch in turn; a bucket's failure is its own (the others still apply). Partial
    /// updates (`target_columns`) and aggregation modes are refused.
    async fn put_kv(&self, req: m::PutKvRequest) -> Result<m::PutKvResponse> {
        let table = self.cluster.table_by_id(req.table_id)?;
        let refusal = match (req.target_columns.is_empty(), req.agg_mode.unwrap_or(0)) {
            (false, _) => Some("partial updates (target columns) are not supported: write full rows"),
            (true, 0) => None,
            (true, _) => Some("aggregation modes are not supported"),
        };
        let mut buckets_resp = Vec::with_capacity(req.buckets_req.len());
        for b in req.buckets_req {
            let (partition_id, bucket_id) = (b.partition_id, b.bucket_id);
            let led = self.layout.check_leader(BucketId { table_id: req.table_id, partition_id, bucket: bucket_id });
            let result = match (refusal, led.and_then(|()| partition_name_of(&table, partition_id))) {
                (Some(why), _) => Err(Error::new(ErrorKind::InvalidTargetColumn, why)),
                (None, Ok(name)) => {
                    self.blocking(move |c| {
                        c.put_kv_batch(req.table_id, name.as_deref(), bucket_id, &b.records)?;
                        c.list_offset(BucketId { table_id: req.table_id, partition_id, bucket: bucket_id }, true)
                    })
                    .await
                }
                (None, Err(e)) => Err(e),
            };
            let (log_end_offset, error) = match result {
                Ok(end) => (Some(end), None),
                Err(e) => (None, Some(e)),
            };
            buckets_resp.push(m::PbPutKvRespForBucket {
                partition_id,
                bucket_id,
                error_code: error.as_ref().map(|e| e.kind().code()),
                error_message: error.map(|e| e.to_string()),
                log_end_offset,
            });
        }
        Ok(m::PutKvResponse { buckets_resp })
    }

    /// A ScanKv call: a new scan of a bucket, or the next batch (or the end) of an open one. Errors travel in the
    /// response body, as Fluss's do.
    async fn scan_kv(&self, req: m::ScanKvRequest) -> Result<m::ScanKvResponse> {
        let invalid = |m: &str| Error::new(ErrorKind::InvalidScanRequest, m.to_string());
        let (batch, log_offset) = match (req.bucket_scan_req, req.scanner_id) {
            (Some(_), Some(_)) => return Err(invalid("a ScanKv call names a new scan or a scanner id, not both")),
            (None, None) => return Err(invalid("a ScanKv call names a new scan or a scanner id")),
            (Some(_), None) if req.close_scanner == Some(true) => {
                return Err(invalid("a new scan cannot close a scanner"));
            }
            (Some(b), None) => {
                let id = BucketId { table_id: b.table_id, partition_id: b.partition_id, bucket: b.bucket_id };
                self.layout.check_leader(id)?;
                let admitted = self.scanners.admit(b.limit, req.call_seq_id, req.batch_size_bytes)?;
                let (values, log_offset) = self.blocking(move |c| c.scan_kv(id)).await?;
                (self.scanners.open(admitted, values)?, Some(log_offset))
            }
            (None, Some(id)) => {
                let close = req.close_scanner == Some(true);
                (self.scanners.next(&id, close, req.call_seq_id, req.batch_size_bytes)?, None)
            }
        };
        Ok(m::ScanKvResponse {
            error_code: None,
            error_message: None,
            scanner_id: batch.scanner_id,
            has_more_results: Some(batch.has_more_results),
            records: batch.records,
            log_offset,
        })
    }

    /// Looks keys up bucket by bucket; a key without a row answers an empty value.
    async fn lookup(&self, req: m::LookupRequest) -> Result<m::LookupResponse> {
        if req.insert_if_not_exists == Some(true) {
            return Err(Error::new(ErrorKind::InvalidArgument, "insert-if-not-exists lookups are not supported"));
        }
        let (table_id, layout) = (req.table_id, self.layout.clone());
        self.blocking(move |c| {
            let buckets_resp = req
                .buckets_req
                .into_iter()
                .map(|b| {
                    let id = BucketId { table_id, partition_id: b.partition_id, bucket: b.bucket_id };
                    let keys: Vec<&[u8]> = b.keys.iter().map(Vec::as_slice).collect();
                    let found = layout.check_leader(id).and_then(|()| c.lookup(id, &keys));
                    m::PbLookupRespForBucket {
                        partition_id: b.partition_id,
                        bucket_id: b.bucket_id,
                        error_code: found.as_ref().err().map(|e| e.kind().code()),
                        error_message: found.as_ref().err().map(|e| e.to_string()),
                        values: found.unwrap_or_default().into_iter().map(|values| m::PbValue { values }).collect(),
                    }
                })
                .collect();
            Ok(m::LookupResponse { buckets_resp })
        })
        .await
    }

    /// Reads every asked bucket; with less than `min_bytes` found, waits for appends up to `max_wait_ms`.
    async fn fetch(&self, req: m::FetchLogRequest) -> Result<m::FetchLogResponse> {
        let wait = Duration::from_millis(u64::try_from(req.max_wait_ms.unwrap_or(0)).unwrap_or(0)).min(MAX_FETCH_WAIT);
        let min_bytes = usize::try_from(req.min_bytes.unwrap_or(1)).unwrap_or(0);
        // A response must fit in a frame, whatever the client asks for.
        let max_bytes = usize::try_from(req.max_bytes).unwrap_or(0).min(MAX_FRAME_BYTES / 2);
        let deadline = Instant::now() + wait;
        let req = Arc::new(req);
        loop {
            // Armed before reading, so an append between the read and the wait still wakes it.
            let appended = self.cluster.appends().notified();
            let (request, layout) = (Arc::clone(&req), self.layout.clone());
            let (response, bytes) = self.blocking(move |c| Ok(read_buckets(c, &layout, &request, max_bytes))).await?;
            let now = Instant::now();
            if bytes >= min_bytes || now >= deadline {
                return Ok(response);
            }
            let _ = tokio::time::timeout(deadline - now, appended).await;
        }
    }

    async fn list_offsets(&self, req: m::ListOffsetsRequest) -> Result<m::ListOffsetsResponse> {
        let layout = self.layout.clone();
        self.blocking(move |c| {
            let buckets_resp = req
                .bucket_id
                .iter()
                .map(|&bucket| {
                    let id = BucketId { table_id: req.table_id, partition_id: req.partition_id, bucket };
                    let offset = layout.check_leader(id).and_then(|()| match req.offset_type {
                        0 => c.list_offset(id, false),
                        1 => c.list_offset(id, true),
                        2 => match req.start_timestamp {
                            Some(ts) => c.offset_for_timestamp(id, ts),
                            None => {
                                Err(Error::new(ErrorKind::InvalidArgument, "a timestamp offset needs startTimestamp"))
                            }
                        },
                        other => Err(Error::new(ErrorKind::InvalidArgument, format!("unknown offset type {other}"))),
                    });
                    m::PbListOffsetsRespForBucket {
                        bucket_id: bucket,
                        error_code: offset.as_ref().err().map(|e| e.kind().code()),
                        error_message: offset.as_ref().err().map(|e| e.to_string()),
                        offset: offset.ok(),
                    }
                })
                .collect();
            Ok(m::ListOffsetsResponse { buckets_resp })
        })
        .await
    }
}

/// One pass over a FetchLog's buckets: the stored batches, back to back as they sit in the log, and how many bytes.
/// The buckets this server can read are read together by [`Cluster::fetch_many`], which spends the byte budget.
fn read_buckets(
    cluster: &Cluster,
    layout: &Layout,
    req: &m::FetchLogRequest,
    max_bytes: usize,
) -> (m::FetchLogResponse, usize) {
    // Each bucket's ask, or why it cannot be read here.
    let asks: Vec<Result<FetchAsk>> = req
        .tables_req
        .iter()
        .flat_map(|table| {
            table.buckets_req.iter().map(move |b| {
                let id = BucketId { table_id: table.table_id, partition_id: b.partition_id, bucket: b.bucket_id };
                layout.check_leader(id)?;
                if table.projection_pushdown_enabled {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "projection pushdown is not supported by this cluster yet",
                    ));
                }
                let from = match b.fetch_offset {
                    -2 => cluster.list_offset(id, false)?,
                    offset => offset,
                };
                Ok(FetchAsk {
                    bucket: (id.table_id, id.partition_id, id.bucket),
                    offset: from,
                    max_bytes: b.max_fetch_bytes,
                })
            })
        })
        .collect();
    let readable: Vec<_> = asks.iter().filter_map(|a| a.as_ref().ok().copied()).collect();
    let mut read = cluster.fetch_many(&readable, max_bytes).into_iter();
    let mut answers = asks.into_iter().map(|ask| {
        ask.and_then(|_| read.next().unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "a bucket left unread"))))
    });
    let mut total = 0usize;
    let mut tables_resp = Vec::with_capacity(req.tables_req.len());
    for table in &req.tables_req {
        let mut buckets_resp = Vec::with_capacity(table.buckets_req.len());
        for b in &table.buckets_req {
            let answer =
                answers.next().unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "a bucket left unanswered")));
            buckets_resp.push(match answer {
                Ok(fetched) => {
                    let mut records = BytesMut::with_capacity(fetched.batches.iter().map(|s| s.records.len()).sum());
                    for stored in &fetched.batches {
                        records.extend_from_slice(&stored.records);
                    }
                    total += records.len();
                    m::PbFetchLogRespForBucket {
                        partition_id: b.partition_id,
                        bucket_id: b.bucket_id,
                        error_code: None,
                        error_message: None,
                        high_watermark: Some(fetched.high_watermark),
                        log_start_offset: Some(fetched.log_start_offset),
                        records: (!records.is_empty()).then(|| records.freeze()),
                    }
                }
                Err(e) => m::PbFetchLogRespForBucket {
                    partition_id: b.partition_id,
                    bucket_id: b.bucket_id,
                    error_code: Some(e.kind().code()),
                    error_message: Some(e.to_string()),
                    high_watermark: None,
                    log_start_offset: None,
                    records: None,
                },
            });
        }
        tables_resp.push(m::PbFetchLogRespForTable { table_id: table.table_id, buckets_resp });
    }
    (m::FetchLogResponse { tables_resp }, total)
}

/// Checks what can be checked before a request is decoded.
fn check(header: RequestHeader, body: &[u8]) -> Result<ApiKey> {
    let key = ApiKey::from_i16(header.api_key).ok_or_else(|| {
        Error::new(ErrorKind::UnsupportedVersion, format!("api key {} is not served by this cluster", header.api_key))
    })?;
    if !(0..=key.max_version()).contains(&header.api_version) {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion,
            format!("{key:?} version {} is not served (versions 0..={})", header.api_version, key.max_version()),
        ));
    }
    if let Some(path) = missing_required(body, key.required_fields()) {
        let path: Vec<String> = path.iter().map(u32::to_string).collect();
        return Err(Error::new(
            ErrorKind::CorruptMessage,
            format!("{key:?} request lacks its required field {}", path.join(".")),
        ));
    }
    Ok(key)
}

fn decode<T: Message + Default>(body: Bytes) -> Result<T> {
    T::decode(body).map_err(|e| {
        Error::new(ErrorKind::CorruptMessage, format!("the request is not a valid {}", std::any::type_name::<T>()))
            .with_source(e)
    })
}

fn table_path(p: &m::PbTablePath) -> Result<TablePath> {
    TablePath::new(p.database_name.clone(), p.table_name.clone())
}

/// The comment of a CreateDatabase `database_json` (`{"version":1,"comment"?,"custom_properties":{}}`).
fn database_comment(json: Option<&[u8]>) -> Result<Option<String>> {
    let Some(json) = json else { return Ok(None) };
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("database_json is not JSON: {e}")))?;
    if value.get("custom_properties").and_then(|p| p.as_object()).is_some_and(|p| !p.is_empty()) {
        return Err(Error::new(ErrorKind::InvalidArgument, "database custom properties are not supported yet"));
    }
    Ok(value.get("comment").and_then(|c| c.as_str()).map(str::to_string))
}

/// The name of the partition a spec names (one key: the table's partition key).
fn partition_name(t: &TableInfo, spec: &m::PbPartitionSpec) -> Result<String> {
    match (spec.partition_key_values.as_slice(), &t.descriptor.partition_key) {
        ([kv], Some(key)) if &kv.key == key => Ok(kv.value.clone()),
        _ => Err(Error::new(
            ErrorKind::PartitionSpecInvalid,
            format!("table {} is partitioned by {:?}: name that one key", t.path, t.descriptor.partition_key),
        )),
    }
}

/// The name of a partition given by id (`None` for a table that is not partitioned).
fn partition_name_of(t: &TableInfo, partition_id: Option<i64>) -> Result<Option<String>> {
    match partition_id {
        None => Ok(None),
        Some(id) => t.partitions.iter().find(|(_, p)| **p == id).map(|(name, _)| Some(name.clone())).ok_or_else(|| {
            Error::new(ErrorKind::PartitionNotExists, format!("table {} has no partition with id {id}", t.path))
        }),
    }
}
