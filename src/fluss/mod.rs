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
    ListOffsets = 1021,
    GetFileSystemSecurityToken = 1025,
    InitWriter = 1026,
    GetLakeSnapshot = 1032,
    GetDatabaseInfo = 1035,
    CreatePartition = 1036,
}

impl ApiKey {
    pub const ALL: [ApiKey; 21] = [
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
        ApiKey::ListOffsets,
        ApiKey::GetFileSystemSecurityToken,
        ApiKey::InitWriter,
        ApiKey::GetLakeSnapshot,
        ApiKey::GetDatabaseInfo,
        ApiKey::CreatePartition,
    ];

    pub fn from_i16(key: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as i16 == key)
    }

    /// The highest version served (the lowest is 0).
    pub fn max_version(self) -> i16 {
        0
    }

    /// The request's top-level required fields (proto2), checked before a request is handled.
    pub fn required_fields(self) -> &'static [u32] {
        match self {
            ApiKey::ApiVersions => &[1, 2],
            ApiKey::CreateDatabase => &[1, 2],
            ApiKey::DropDatabase => &[1, 2, 3],
            ApiKey::ListDatabases | ApiKey::GetFileSystemSecurityToken | ApiKey::InitWriter => &[],
            ApiKey::GetMetadata => &[],
            ApiKey::DatabaseExists | ApiKey::GetDatabaseInfo | ApiKey::ListTables => &[1],
            ApiKey::CreateTable => &[1, 2, 3],
            ApiKey::DropTable => &[1, 2],
            ApiKey::GetTableInfo | ApiKey::TableExists | ApiKey::GetTableSchema | ApiKey::GetLakeSnapshot => &[1],
            ApiKey::ListPartitionInfos => &[1],
            ApiKey::CreatePartition => &[1, 2, 3],
            ApiKey::ProduceLog => &[1, 2, 3],
            ApiKey::FetchLog => &[1, 2],
            ApiKey::ListOffsets => &[1, 2, 3],
        }
    }
}
