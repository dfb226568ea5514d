//! Fluss's RPC messages (`FlussApi.proto`, proto2, package `fluss`), written from their field numbers: only the ones
//! this project serves or sends. `required` fields are always encoded, as a Java peer demands; on decode, prost reads
//! an absent one as its default, so requests are also checked with [`missing_required`].

use bytes::Bytes;

/// The body of an ERROR_RESPONSE frame, and the per-table error of some responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorResponse {
    #[prost(int32, required, tag = "1")]
    pub error_code: i32,
    #[prost(string, optional, tag = "2")]
    pub error_message: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbTablePath {
    #[prost(string, required, tag = "1")]
    pub database_name: String,
    #[prost(string, required, tag = "2")]
    pub table_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbPhysicalTablePath {
    #[prost(string, required, tag = "1")]
    pub database_name: String,
    #[prost(string, required, tag = "2")]
    pub table_name: String,
    #[prost(string, optional, tag = "3")]
    pub partition_name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbKeyValue {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbPartitionSpec {
    #[prost(message, repeated, tag = "1")]
    pub partition_key_values: Vec<PbKeyValue>,
}

// ---- ApiVersions (1000) -------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiVersionsRequest {
    #[prost(string, required, tag = "1")]
    pub client_software_name: String,
    #[prost(string, required, tag = "2")]
    pub client_software_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbApiVersion {
    #[prost(int32, required, tag = "1")]
    pub api_key: i32,
    #[prost(int32, required, tag = "2")]
    pub min_version: i32,
    #[prost(int32, required, tag = "3")]
    pub max_version: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiVersionsResponse {
    #[prost(message, repeated, tag = "1")]
    pub api_versions: Vec<PbApiVersion>,
    #[prost(int32, optional, tag = "2")]
    pub server_type: Option<i32>,
}

// ---- Databases ----------------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateDatabaseRequest {
    #[prost(string, required, tag = "1")]
    pub database_name: String,
    #[prost(bool, required, tag = "2")]
    pub ignore_if_exists: bool,
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub database_json: Option<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DropDatabaseRequest {
    #[prost(string, required, tag = "1")]
    pub database_name: String,
    #[prost(bool, required, tag = "2")]
    pub ignore_if_not_exists: bool,
    #[prost(bool, required, tag = "3")]
    pub cascade: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListDatabasesRequest {
    #[prost(bool, optional, tag = "1")]
    pub include_summary: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListDatabasesResponse {
    #[prost(string, repeated, tag = "1")]
    pub database_name: Vec<String>,
}

/// DatabaseExists and GetDatabaseInfo requests, and ListTables: one database name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DatabaseNameRequest {
    #[prost(string, required, tag = "1")]
    pub database_name: String,
}

/// DatabaseExists and TableExists responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExistsResponse {
    #[prost(bool, required, tag = "1")]
    pub exists: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetDatabaseInfoResponse {
    #[prost(bytes = "vec", required, tag = "3")]
    pub database_json: Vec<u8>,
    #[prost(int64, required, tag = "4")]
    pub created_time: i64,
    #[prost(int64, required, tag = "5")]
    pub modified_time: i64,
}

/// The response of the RPCs that answer nothing (CreateDatabase, CreateTable, DropTable, …).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EmptyResponse {}

// ---- Tables -------------------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateTableRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(bytes = "vec", required, tag = "2")]
    pub table_json: Vec<u8>,
    #[prost(bool, required, tag = "3")]
    pub ignore_if_exists: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DropTableRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(bool, required, tag = "2")]
    pub ignore_if_not_exists: bool,
}

/// GetTableInfo, TableExists and GetLakeSnapshot-like requests: one table path.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TablePathRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTableInfoResponse {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(int32, required, tag = "2")]
    pub schema_id: i32,
    #[prost(bytes = "vec", required, tag = "3")]
    pub table_json: Vec<u8>,
    #[prost(int64, required, tag = "4")]
    pub created_time: i64,
    #[prost(int64, required, tag = "5")]
    pub modified_time: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListTablesResponse {
    #[prost(string, repeated, tag = "1")]
    pub table_name: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTableSchemaRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(int32, optional, tag = "2")]
    pub schema_id: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetTableSchemaResponse {
    #[prost(int32, required, tag = "1")]
    pub schema_id: i32,
    #[prost(bytes = "vec", required, tag = "2")]
    pub schema_json: Vec<u8>,
}

// ---- Partitions ---------------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPartitionInfosRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(message, optional, tag = "2")]
    pub partial_partition_spec: Option<PbPartitionSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbPartitionInfo {
    #[prost(int64, required, tag = "1")]
    pub partition_id: i64,
    #[prost(message, required, tag = "2")]
    pub partition_spec: PbPartitionSpec,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPartitionInfosResponse {
    #[prost(message, repeated, tag = "1")]
    pub partitions_info: Vec<PbPartitionInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreatePartitionRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(message, required, tag = "2")]
    pub partition_spec: PbPartitionSpec,
    #[prost(bool, required, tag = "3")]
    pub ignore_if_not_exists: bool,
}

// ---- Metadata (1012) ----------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRequest {
    #[prost(message, repeated, tag = "1")]
    pub table_path: Vec<PbTablePath>,
    #[prost(message, repeated, tag = "2")]
    pub partitions_path: Vec<PbPhysicalTablePath>,
    #[prost(int64, repeated, packed = "true", tag = "3")]
    pub partitions_id: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbServerNode {
    #[prost(int32, required, tag = "1")]
    pub node_id: i32,
    #[prost(string, required, tag = "2")]
    pub host: String,
    #[prost(int32, required, tag = "3")]
    pub port: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbBucketMetadata {
    #[prost(int32, required, tag = "1")]
    pub bucket_id: i32,
    #[prost(int32, optional, tag = "2")]
    pub leader_id: Option<i32>,
    #[prost(int32, repeated, packed = "true", tag = "3")]
    pub replica_id: Vec<i32>,
    #[prost(int32, optional, tag = "4")]
    pub leader_epoch: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbTableMetadata {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(int64, required, tag = "2")]
    pub table_id: i64,
    #[prost(int32, required, tag = "3")]
    pub schema_id: i32,
    #[prost(bytes = "vec", required, tag = "4")]
    pub table_json: Vec<u8>,
    #[prost(message, repeated, tag = "5")]
    pub bucket_metadata: Vec<PbBucketMetadata>,
    #[prost(int64, required, tag = "6")]
    pub created_time: i64,
    #[prost(int64, required, tag = "7")]
    pub modified_time: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbPartitionMetadata {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(string, required, tag = "2")]
    pub partition_name: String,
    #[prost(int64, required, tag = "3")]
    pub partition_id: i64,
    #[prost(message, repeated, tag = "4")]
    pub bucket_metadata: Vec<PbBucketMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataResponse {
    #[prost(message, optional, tag = "1")]
    pub coordinator_server: Option<PbServerNode>,
    #[prost(message, repeated, tag = "2")]
    pub tablet_servers: Vec<PbServerNode>,
    #[prost(message, repeated, tag = "3")]
    pub table_metadata: Vec<PbTableMetadata>,
    #[prost(message, repeated, tag = "4")]
    pub partition_metadata: Vec<PbPartitionMetadata>,
}

// ---- Writers and the log ------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct InitWriterRequest {
    #[prost(message, repeated, tag = "1")]
    pub table_path: Vec<PbTablePath>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InitWriterResponse {
    #[prost(int64, required, tag = "1")]
    pub writer_id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbProduceLogReqForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(bytes = "bytes", required, tag = "3")]
    pub records: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProduceLogRequest {
    #[prost(int32, required, tag = "1")]
    pub acks: i32,
    #[prost(int64, required, tag = "2")]
    pub table_id: i64,
    #[prost(int32, required, tag = "3")]
    pub timeout_ms: i32,
    #[prost(message, repeated, tag = "4")]
    pub buckets_req: Vec<PbProduceLogReqForBucket>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbProduceLogRespForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int32, optional, tag = "3")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "4")]
    pub error_message: Option<String>,
    #[prost(int64, optional, tag = "5")]
    pub base_offset: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProduceLogResponse {
    #[prost(message, repeated, tag = "1")]
    pub buckets_resp: Vec<PbProduceLogRespForBucket>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbFetchLogReqForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int64, required, tag = "3")]
    pub fetch_offset: i64,
    #[prost(int32, required, tag = "4")]
    pub max_fetch_bytes: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbFetchLogReqForTable {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(bool, required, tag = "2")]
    pub projection_pushdown_enabled: bool,
    #[prost(int32, repeated, packed = "true", tag = "3")]
    pub projected_fields: Vec<i32>,
    #[prost(message, repeated, tag = "4")]
    pub buckets_req: Vec<PbFetchLogReqForBucket>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchLogRequest {
    #[prost(int32, required, tag = "1")]
    pub follower_server_id: i32,
    #[prost(int32, required, tag = "2")]
    pub max_bytes: i32,
    #[prost(message, repeated, tag = "3")]
    pub tables_req: Vec<PbFetchLogReqForTable>,
    #[prost(int32, optional, tag = "4")]
    pub max_wait_ms: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    pub min_bytes: Option<i32>,
}

impl FetchLogRequest {
    /// A client's fetch of one bucket of a table that is not partitioned, whole rows, waiting up to `max_wait_ms`
    /// for a first byte.
    pub fn one_bucket(
        table_id: i64,
        bucket_id: i32,
        fetch_offset: i64,
        max_fetch_bytes: i32,
        max_wait_ms: i32,
    ) -> Self {
        FetchLogRequest {
            follower_server_id: -1,
            max_bytes: max_fetch_bytes.saturating_mul(4),
            tables_req: vec![PbFetchLogReqForTable {
                table_id,
                projection_pushdown_enabled: false,
                projected_fields: vec![],
                buckets_req: vec![PbFetchLogReqForBucket {
                    partition_id: None,
                    bucket_id,
                    fetch_offset,
                    max_fetch_bytes,
                }],
            }],
            max_wait_ms: Some(max_wait_ms),
            min_bytes: Some(1),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbFetchLogRespForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int32, optional, tag = "3")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "4")]
    pub error_message: Option<String>,
    #[prost(int64, optional, tag = "5")]
    pub high_watermark: Option<i64>,
    #[prost(int64, optional, tag = "6")]
    pub log_start_offset: Option<i64>,
    #[prost(bytes = "bytes", optional, tag = "8")]
    pub records: Option<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbFetchLogRespForTable {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(message, repeated, tag = "2")]
    pub buckets_resp: Vec<PbFetchLogRespForBucket>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchLogResponse {
    #[prost(message, repeated, tag = "1")]
    pub tables_resp: Vec<PbFetchLogRespForTable>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOffsetsRequest {
    #[prost(int32, required, tag = "1")]
    pub follower_server_id: i32,
    #[prost(int32, required, tag = "2")]
    pub offset_type: i32,
    #[prost(int64, required, tag = "3")]
    pub table_id: i64,
    #[prost(int64, optional, tag = "4")]
    pub partition_id: Option<i64>,
    #[prost(int32, repeated, packed = "true", tag = "5")]
    pub bucket_id: Vec<i32>,
    #[prost(int64, optional, tag = "6")]
    pub start_timestamp: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbListOffsetsRespForBucket {
    #[prost(int32, required, tag = "1")]
    pub bucket_id: i32,
    #[prost(int32, optional, tag = "2")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "3")]
    pub error_message: Option<String>,
    #[prost(int64, optional, tag = "4")]
    pub offset: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOffsetsResponse {
    #[prost(message, repeated, tag = "1")]
    pub buckets_resp: Vec<PbListOffsetsRespForBucket>,
}

// ---- Primary-key tables ------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbPutKvReqForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(bytes = "bytes", required, tag = "3")]
    pub records: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutKvRequest {
    #[prost(int32, required, tag = "1")]
    pub acks: i32,
    #[prost(int64, required, tag = "2")]
    pub table_id: i64,
    #[prost(int32, required, tag = "3")]
    pub timeout_ms: i32,
    /// Empty: every column (a partial update names the columns it writes).
    #[prost(int32, repeated, packed = "true", tag = "4")]
    pub target_columns: Vec<i32>,
    #[prost(message, repeated, tag = "5")]
    pub buckets_req: Vec<PbPutKvReqForBucket>,
    #[prost(int32, optional, tag = "6")]
    pub agg_mode: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbPutKvRespForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int32, optional, tag = "3")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "4")]
    pub error_message: Option<String>,
    /// The changelog's end offset after the write.
    #[prost(int64, optional, tag = "5")]
    pub log_end_offset: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutKvResponse {
    #[prost(message, repeated, tag = "1")]
    pub buckets_resp: Vec<PbPutKvRespForBucket>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbLookupReqForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub keys: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupRequest {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(message, repeated, tag = "2")]
    pub buckets_req: Vec<PbLookupReqForBucket>,
    #[prost(bool, optional, tag = "3")]
    pub insert_if_not_exists: Option<bool>,
}

/// A looked-up value: `[schema id i16 LE][CompactedRow]`, absent when the key has no row.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbValue {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub values: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbLookupRespForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int32, optional, tag = "3")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "4")]
    pub error_message: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub values: Vec<PbValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupResponse {
    #[prost(message, repeated, tag = "1")]
    pub buckets_resp: Vec<PbLookupRespForBucket>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetLatestKvSnapshotsRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(string, optional, tag = "2")]
    pub partition_name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbKvSnapshot {
    #[prost(int32, required, tag = "1")]
    pub bucket_id: i32,
    #[prost(int64, optional, tag = "2")]
    pub snapshot_id: Option<i64>,
    #[prost(int64, optional, tag = "3")]
    pub log_offset: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetLatestKvSnapshotsResponse {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(int64, optional, tag = "2")]
    pub partition_id: Option<i64>,
    #[prost(message, repeated, tag = "3")]
    pub latest_snapshots: Vec<PbKvSnapshot>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbScanReqForBucket {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(int64, optional, tag = "2")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "3")]
    pub bucket_id: i32,
    #[prost(int64, optional, tag = "4")]
    pub limit: Option<i64>,
}

/// Either a new scan (`bucket_scan_req`) or the next call of an open one (`scanner_id`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScanKvRequest {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub scanner_id: Option<Vec<u8>>,
    #[prost(message, optional, tag = "2")]
    pub bucket_scan_req: Option<PbScanReqForBucket>,
    #[prost(int32, optional, tag = "3")]
    pub call_seq_id: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub batch_size_bytes: Option<i32>,
    #[prost(bool, optional, tag = "5")]
    pub close_scanner: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScanKvResponse {
    #[prost(int32, optional, tag = "1")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub error_message: Option<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub scanner_id: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    pub has_more_results: Option<bool>,
    /// A value record batch; absent when empty.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub records: Option<Vec<u8>>,
    /// The log offset the scan's rows are consistent with (first response only).
    #[prost(int64, optional, tag = "6")]
    pub log_offset: Option<i64>,
}

// ---- Security token and lake snapshot -----------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetFileSystemSecurityTokenResponse {
    #[prost(string, required, tag = "1")]
    pub schema: String,
    #[prost(bytes = "vec", required, tag = "2")]
    pub token: Vec<u8>,
    #[prost(int64, optional, tag = "3")]
    pub expiration_time: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetLakeSnapshotRequest {
    #[prost(message, required, tag = "1")]
    pub table_path: PbTablePath,
    #[prost(int64, optional, tag = "2")]
    pub snapshot_id: Option<i64>,
    #[prost(bool, optional, tag = "3")]
    pub readable: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbLakeSnapshotForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int64, optional, tag = "3")]
    pub log_offset: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetLakeSnapshotResponse {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(int64, required, tag = "2")]
    pub snapshot_id: i64,
    #[prost(message, repeated, tag = "3")]
    pub bucket_snapshots: Vec<PbLakeSnapshotForBucket>,
}

// ---- Tiering (private api keys: 1042 heartbeat, 1052 prepare, 1030 commit) -----------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbHeartbeatReqForTable {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(int32, required, tag = "2")]
    pub coordinator_epoch: i32,
    #[prost(int64, required, tag = "3")]
    pub tiering_epoch: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LakeTieringHeartbeatRequest {
    #[prost(message, repeated, tag = "1")]
    pub tiering_tables: Vec<PbHeartbeatReqForTable>,
    #[prost(message, repeated, tag = "2")]
    pub finished_tables: Vec<PbHeartbeatReqForTable>,
    #[prost(message, repeated, tag = "3")]
    pub failed_tables: Vec<PbHeartbeatReqForTable>,
    #[prost(bool, optional, tag = "4")]
    pub request_table: Option<bool>,
    #[prost(int64, repeated, packed = "false", tag = "5")]
    pub force_finished_tables: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbLakeTieringTableInfo {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(message, required, tag = "2")]
    pub table_path: PbTablePath,
    #[prost(int64, required, tag = "3")]
    pub tiering_epoch: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbHeartbeatRespForTable {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(message, optional, tag = "2")]
    pub error: Option<ErrorResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LakeTieringHeartbeatResponse {
    #[prost(int32, required, tag = "1")]
    pub coordinator_epoch: i32,
    #[prost(message, optional, tag = "2")]
    pub tiering_table: Option<PbLakeTieringTableInfo>,
    #[prost(message, repeated, tag = "3")]
    pub tiering_table_resp: Vec<PbHeartbeatRespForTable>,
    #[prost(message, repeated, tag = "4")]
    pub finished_table_resp: Vec<PbHeartbeatRespForTable>,
    #[prost(message, repeated, tag = "5")]
    pub failed_table_resp: Vec<PbHeartbeatRespForTable>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbBucketOffset {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int64, optional, tag = "4")]
    pub log_end_offset: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbTableOffsets {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(message, required, tag = "2")]
    pub table_path: PbTablePath,
    #[prost(message, repeated, tag = "3")]
    pub bucket_offsets: Vec<PbBucketOffset>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PrepareLakeTableSnapshotRequest {
    #[prost(message, repeated, tag = "1")]
    pub bucket_offsets: Vec<PbTableOffsets>,
    #[prost(bool, optional, tag = "2")]
    pub ignore_previous_table_offsets: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbPrepareLakeTableRespForTable {
    #[prost(int32, optional, tag = "1")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub error_message: Option<String>,
    #[prost(int64, optional, tag = "3")]
    pub table_id: Option<i64>,
    #[prost(string, optional, tag = "4")]
    pub lake_table_offsets_path: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PrepareLakeTableSnapshotResponse {
    #[prost(message, repeated, tag = "1")]
    pub prepare_lake_table_resp: Vec<PbPrepareLakeTableRespForTable>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbLakeTableOffsetForBucket {
    #[prost(int64, optional, tag = "1")]
    pub partition_id: Option<i64>,
    #[prost(int32, required, tag = "2")]
    pub bucket_id: i32,
    #[prost(int64, optional, tag = "4")]
    pub log_end_offset: Option<i64>,
    #[prost(int64, optional, tag = "6")]
    pub max_timestamp: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbLakeTableSnapshotInfo {
    #[prost(int64, optional, tag = "1")]
    pub table_id: Option<i64>,
    #[prost(int64, required, tag = "2")]
    pub snapshot_id: i64,
    #[prost(message, repeated, tag = "3")]
    pub buckets_req: Vec<PbLakeTableOffsetForBucket>,
    #[prost(message, optional, tag = "4")]
    pub table_path: Option<PbTablePath>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbLakeTableSnapshotMetadata {
    #[prost(int64, required, tag = "1")]
    pub table_id: i64,
    #[prost(int64, required, tag = "2")]
    pub snapshot_id: i64,
    #[prost(string, required, tag = "3")]
    pub tiered_bucket_offsets_file_path: String,
    #[prost(string, optional, tag = "4")]
    pub readable_bucket_offsets_file_path: Option<String>,
    #[prost(int64, optional, tag = "5")]
    pub earliest_snapshot_id_to_keep: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitLakeTableSnapshotRequest {
    #[prost(message, repeated, tag = "1")]
    pub tables_req: Vec<PbLakeTableSnapshotInfo>,
    #[prost(message, repeated, tag = "2")]
    pub lake_table_snapshot_metadata: Vec<PbLakeTableSnapshotMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbCommitLakeTableSnapshotRespForTable {
    #[prost(int32, optional, tag = "1")]
    pub error_code: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub error_message: Option<String>,
    #[prost(int64, required, tag = "3")]
    pub table_id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitLakeTableSnapshotResponse {
    #[prost(message, repeated, tag = "1")]
    pub table_resp: Vec<PbCommitLakeTableSnapshotRespForTable>,
}

/// The required fields of a message (proto2), and those of the messages in its fields.
#[derive(Debug)]
pub struct Required {
    pub fields: &'static [u32],
    /// `(field, rule)`: every occurrence of that (message) field must satisfy the rule.
    pub nested: &'static [(u32, Required)],
}

/// A message without required fields.
pub const NOTHING_REQUIRED: Required = Required { fields: &[], nested: &[] };
/// `PbTablePath` and `PbPhysicalTablePath`: database and table names.
pub const TABLE_PATH: Required = Required { fields: &[1, 2], nested: &[] };

/// The first required field `body` lacks, as a path of field numbers (`[4, 2]`: field 2 of a field-4 message), if
/// any: prost reads an absent required field as its default, where a Java peer refuses the message.
pub fn missing_required(body: &[u8], rule: &Required) -> Option<Vec<u32>> {
    let fields = top_level_fields(body);
    if let Some(f) = rule.fields.iter().find(|f| !fields.iter().any(|(n, _)| n == *f)) {
        return Some(vec![*f]);
    }
    for (field, inner) in rule.nested {
        for (_, value) in fields.iter().filter(|(n, _)| n == field) {
            if let Some(mut path) = value.and_then(|v| missing_required(v, inner)) {
                path.insert(0, *field);
                return Some(path);
            }
        }
    }
    None
}

/// The top-level fields of a protobuf body: their numbers, and the bytes of the length-delimited ones. A malformed
/// tail is left for prost's own decode to report.
fn top_level_fields(body: &[u8]) -> Vec<(u32, Option<&[u8]>)> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((key, n)) = varint(rest) else { break };
        rest = &rest[n..];
        let (field, wire_type) = ((key >> 3) as u32, key & 7);
        let (skip, value) = match wire_type {
            0 => (varint(rest).map(|(_, n)| n), None),
            1 => (Some(8), None),
            2 => match varint(rest).and_then(|(len, n)| Some((usize::try_from(len).ok()?, n))) {
                Some((len, n)) => match n.checked_add(len).filter(|&end| end <= rest.len()) {
                    Some(end) => (Some(end), Some(&rest[n..end])),
                    None => (None, None),
                },
                None => (None, None),
            },
            5 => (Some(4), None),
            _ => (None, None),
        };
        match skip {
            Some(s) if s <= rest.len() => rest = &rest[s..],
            _ => break,
        }
        out.push((field, value));
    }
    out
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn required_fields_are_encoded_and_checked_nested_too() {
        let rule = |fields| Required { fields, nested: &[] };
        // A required field at its default value is still on the wire, as a Java peer needs.
        let body = DropTableRequest { table_path: PbTablePath::default(), ignore_if_not_exists: false }.encode_to_vec();
        assert_eq!(missing_required(&body, &rule(&[1, 2])), None);
        let body = ListDatabasesRequest { include_summary: None }.encode_to_vec();
        assert_eq!(missing_required(&body, &rule(&[1])), Some(vec![1]));
        let body = ApiVersionsRequest { client_software_name: "x".into(), client_software_version: "1".into() };
        let bytes = body.encode_to_vec();
        assert_eq!(missing_required(&bytes[..3], &rule(&[1, 2])), Some(vec![2]), "the second field is cut off");
        // A bucket of a produce request without its records: field 3 of a field-4 message.
        let mut bucket =
            PbProduceLogReqForBucket { partition_id: None, bucket_id: 0, records: Bytes::new() }.encode_to_vec();
        bucket.truncate(2); // only bucket_id (tag 2, value 0)
        let mut body = ProduceLogRequest { acks: -1, table_id: 1, timeout_ms: 1, buckets_req: vec![] }.encode_to_vec();
        body.extend([0x22, bucket.len() as u8]);
        body.extend(&bucket);
        const PRODUCE: Required =
            Required { fields: &[1, 2, 3], nested: &[(4, Required { fields: &[2, 3], nested: &[] })] };
        assert_eq!(missing_required(&body, &PRODUCE), Some(vec![4, 3]));
    }
}
