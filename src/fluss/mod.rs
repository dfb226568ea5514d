//! Apache Fluss's own wire protocol, as `../shared/fluss-wire-protocol.md` describes it (checked against pyfluss
//! 1.0.0): the frames on a TCP connection ([`frame`]), the api keys and versions, the RPC messages ([`messages`],
//! written from their field numbers) and the JSON forms of table descriptors ([`json`]). The log batches the
//! messages carry are the model's ([`crate::model::record`]): they are also what the cluster stores.
//!
//! Layering: `fluss` imports only `model` and the errors, so the cluster's Fluss door (`serve::fluss`) and, later, the
//! job's Fluss transport share it.

pub mod client;
pub mod frame;
pub mod json;
pub mod messages;
pub mod transport;

use messages::{NOTHING_REQUIRED, Required, TABLE_PATH};

/// The api keys this project serves, each at version 0 (the only one Fluss 0.9 defines for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum ApiKey {
    ApiVersions = 1000,
    CreateDatabase = 1001,
    DropDatabase = 1002,
    ListDatabases = 1003,
    DatabaseExists = 1004,
    CreateTable = 1005,
    DropTable = 1006,
    GetTableInfo = 1007,
    ListTables = 1008,
    ListPartitionInfos = 1009,
    TableExists = 1010,
    GetTableSchema = 1011,
    GetMetadata = 1012,
    ProduceLog = 1014,
    FetchLog = 1015,
    PutKv = 1016,
    Lookup = 1017,
    ListOffsets = 1021,
    GetLatestKvSnapshots = 1023,
    GetFileSystemSecurityToken = 1025,
    InitWriter = 1026,
    GetLakeSnapshot = 1032,
    GetDatabaseInfo = 1035,
    CreatePartition = 1036,
    /// The tiering RPCs (private: not in the clients' own api key lists).
    CommitLakeTableSnapshot = 1030,
    LakeTieringHeartbeat = 1042,
    PrepareLakeTableSnapshot = 1052,
    /// Fluss 1.0: a primary-key bucket's rows in batches, consistent with a log offset.
    ScanKv = 1061,
}

/// The nodes that serve an api key ([`ApiKey::served_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedBy {
    Coordinator,
    TabletServers,
    Both,
}

impl ApiKey {
    pub const ALL: [ApiKey; 28] = [
        ApiKey::ApiVersions,
        ApiKey::CreateDatabase,
        ApiKey::DropDatabase,
        ApiKey::ListDatabases,
        ApiKey::DatabaseExists,
        ApiKey::CreateTable,
        ApiKey::DropTable,
        ApiKey::GetTableInfo,
        ApiKey::ListTables,
        ApiKey::ListPartitionInfos,
        ApiKey::TableExists,
        ApiKey::GetTableSchema,
        ApiKey::GetMetadata,
        ApiKey::ProduceLog,
        ApiKey::FetchLog,
        ApiKey::PutKv,
        ApiKey::Lookup,
        ApiKey::ListOffsets,
        ApiKey::GetLatestKvSnapshots,
        ApiKey::GetFileSystemSecurityToken,
        ApiKey::InitWriter,
        ApiKey::GetLakeSnapshot,
        ApiKey::GetDatabaseInfo,
        ApiKey::CreatePartition,
        ApiKey::CommitLakeTableSnapshot,
        ApiKey::LakeTieringHeartbeat,
        ApiKey::PrepareLakeTableSnapshot,
        ApiKey::ScanKv,
    ];

    pub fn from_i16(key: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as i16 == key)
    }

    /// The highest version served (the lowest is 0).
    pub fn max_version(self) -> i16 {
        0
    }

    /// Which nodes of a Java cluster serve the call: the coordinator (admin changes, tiering), the tablet servers
    /// (a bucket's data, writer ids), or both (Fluss's read-only admin gateway: metadata, table and lake info).
    pub fn served_by(self) -> ServedBy {
        use ApiKey::*;
        match self {
            CreateDatabase
            | DropDatabase
            | CreateTable
            | DropTable
            | CreatePartition
            | CommitLakeTableSnapshot
            | LakeTieringHeartbeat
            | PrepareLakeTableSnapshot => ServedBy::Coordinator,
            ProduceLog | FetchLog | PutKv | Lookup | ListOffsets | InitWriter | ScanKv => ServedBy::TabletServers,
            ApiVersions
            | ListDatabases
            | DatabaseExists
            | GetTableInfo
            | ListTables
            | ListPartitionInfos
            | TableExists
            | GetTableSchema
            | GetMetadata
            | GetLatestKvSnapshots
            | GetFileSystemSecurityToken
            | GetLakeSnapshot
            | GetDatabaseInfo => ServedBy::Both,
        }
    }

    /// The request's required fields (proto2), nested messages' too, checked before a request is handled.
    pub fn required_fields(self) -> &'static Required {
        const fn rule(fields: &'static [u32]) -> Required {
            Required { fields, nested: &[] }
        }
        const NAME: Required = rule(&[1]);
        const PATH: Required = Required { fields: &[1], nested: &[(1, TABLE_PATH)] };
        const PARTITION_SPEC: Required = Required { fields: &[], nested: &[(1, rule(&[1, 2]))] };
        const API_VERSIONS: Required = rule(&[1, 2]);
        const CREATE_DATABASE: Required = rule(&[1, 2]);
        const DROP_DATABASE: Required = rule(&[1, 2, 3]);
        const CREATE_TABLE: Required = Required { fields: &[1, 2, 3], nested: &[(1, TABLE_PATH)] };
        const DROP_TABLE: Required = Required { fields: &[1, 2], nested: &[(1, TABLE_PATH)] };
        const LIST_PARTITIONS: Required = Required { fields: &[1], nested: &[(1, TABLE_PATH), (2, PARTITION_SPEC)] };
        const CREATE_PARTITION: Required =
            Required { fields: &[1, 2, 3], nested: &[(1, TABLE_PATH), (2, PARTITION_SPEC)] };
        const METADATA: Required = Required { fields: &[], nested: &[(1, TABLE_PATH), (2, TABLE_PATH)] };
        const INIT_WRITER: Required = Required { fields: &[], nested: &[(1, TABLE_PATH)] };
        const PRODUCE: Required = Required { fields: &[1, 2, 3], nested: &[(4, rule(&[2, 3]))] };
        const FETCH: Required = Required {
            fields: &[1, 2],
            nested: &[(3, Required { fields: &[1, 2], nested: &[(4, rule(&[2, 3, 4]))] })],
        };
        const PUT_KV: Required = Required { fields: &[1, 2, 3], nested: &[(5, rule(&[2, 3]))] };
        const LOOKUP: Required = Required { fields: &[1], nested: &[(2, rule(&[2]))] };
        const LIST_OFFSETS: Required = rule(&[1, 2, 3]);
        const SCAN_KV: Required = Required { fields: &[], nested: &[(2, rule(&[1, 3]))] };
        const HEARTBEAT_ENTRY: Required = rule(&[1, 2, 3]);
        const HEARTBEAT: Required =
            Required { fields: &[], nested: &[(1, HEARTBEAT_ENTRY), (2, HEARTBEAT_ENTRY), (3, HEARTBEAT_ENTRY)] };
        const PREPARE: Required =
            Required { fields: &[], nested: &[(1, Required { fields: &[1, 2], nested: &[(3, rule(&[2]))] })] };
        const COMMIT: Required = Required {
            fields: &[],
            nested: &[(1, Required { fields: &[2], nested: &[(3, rule(&[2]))] }), (2, rule(&[1, 2, 3]))],
        };
        match self {
            ApiKey::ApiVersions => &API_VERSIONS,
            ApiKey::CreateDatabase => &CREATE_DATABASE,
            ApiKey::DropDatabase => &DROP_DATABASE,
            ApiKey::ListDatabases | ApiKey::GetFileSystemSecurityToken => &NOTHING_REQUIRED,
            ApiKey::DatabaseExists | ApiKey::GetDatabaseInfo | ApiKey::ListTables => &NAME,
            ApiKey::CreateTable => &CREATE_TABLE,
            ApiKey::DropTable => &DROP_TABLE,
            ApiKey::GetTableInfo
            | ApiKey::TableExists
            | ApiKey::GetTableSchema
            | ApiKey::GetLakeSnapshot
            | ApiKey::GetLatestKvSnapshots => &PATH,
            ApiKey::ListPartitionInfos => &LIST_PARTITIONS,
            ApiKey::CreatePartition => &CREATE_PARTITION,
            ApiKey::GetMetadata => &METADATA,
            ApiKey::InitWriter => &INIT_WRITER,
            ApiKey::ProduceLog => &PRODUCE,
            ApiKey::FetchLog => &FETCH,
            ApiKey::PutKv => &PUT_KV,
            ApiKey::Lookup => &LOOKUP,
            ApiKey::ListOffsets => &LIST_OFFSETS,
            ApiKey::ScanKv => &SCAN_KV,
            ApiKey::LakeTieringHeartbeat => &HEARTBEAT,
            ApiKey::PrepareLakeTableSnapshot => &PREPARE,
            ApiKey::CommitLakeTableSnapshot => &COMMIT,
        }
    }
}
