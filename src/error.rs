//! One error type for the library, with a kind that says what went wrong and whether a retry can help.
//!
//! Kinds map one to one onto Fluss's error codes (`Errors.java`), so a kind survives any wire that carries the code
//! (the gRPC mapping is in `rpc::status`).

use std::fmt;

/// What went wrong, in the protocol's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The network or the remote service failed; the call may be retried.
    Network,
    /// The request's api key or version is not served.
    UnsupportedVersion,
    /// A request that cannot be read: a malformed frame or message, a required field missing.
    CorruptMessage,
    /// Records whose crc or framing is wrong: nothing of them is stored.
    CorruptRecord,
    DatabaseNotExist,
    DatabaseNotEmpty,
    DatabaseAlreadyExist,
    /// No table at that path or with that id.
    TableNotExist,
    /// A table with that path exists already.
    TableAlreadyExist,
    /// Records or a request name a schema id the table never had.
    SchemaNotExist,
    /// A table definition the cluster cannot serve (a type, a key, an option).
    InvalidTable,
    /// An offset outside `[log_start_offset, high_watermark]`.
    OffsetOutOfRange,
    /// The bucket (or partition) does not exist in the table.
    UnknownTableOrBucket,
    /// The tablet server asked does not lead the bucket (any more): ask MetaData for its leader and try there.
    NotLeaderOrFollower,
    /// The bucket has no leader right now: ask MetaData again shortly.
    LeaderNotAvailable,
    /// The caller's coordinator epoch is not the coordinator's current one.
    InvalidCoordinator,
    /// A request took longer than its time-out.
    RequestTimeOut,
    /// Local storage failed (I/O, a corrupt file).
    Storage,
    /// An idempotent writer's batch does not follow its previous one.
    OutOfOrderSequence,
    /// An idempotent writer the cluster does not know.
    UnknownWriterId,
    PartitionNotExists,
    TableNotPartitioned,
    /// A configuration value is malformed.
    InvalidConfig,
    /// A KV snapshot asked for is not (or no longer) there.
    KvSnapshotNotExist,
    PartitionAlreadyExists,
    PartitionSpecInvalid,
    /// The caller's tiering epoch was superseded: another job (or a later round) owns the table.
    FencedTieringEpoch,
    /// The table has no lake snapshot yet.
    LakeSnapshotNotExist,
    /// A key-value call (PutKv, Lookup) on a table without a primary key.
    NonPrimaryKeyTable,
    /// A write names target columns it may not (partial updates are not served).
    InvalidTargetColumn,
    /// A ScanKv call names a session that is not open (ended, closed, expired or never opened).
    UnknownScannerId,
    /// A ScanKv call that breaks the protocol (both or neither of a scan and a session, a call out of sequence).
    InvalidScanRequest,
    /// Too many ScanKv sessions are open.
    TooManyScanners,
    /// A request or a value is malformed (Fluss has no code of its own for this).
    InvalidArgument,
    /// Records whose schema is not the table's.
    SchemaMismatch,
    /// The request is valid but not supported (yet).
    Unsupported,
    /// The lake (catalog, files) failed.
    Lake,
    /// A commit may or may not have landed, and the lake could not be read to tell: its files must be kept.
    CommitOutcomeUnknown,
    /// A bug: a state that should be impossible.
    Internal,
}

impl ErrorKind {
    const ALL: [ErrorKind; 39] = [
        ErrorKind::Network,
        ErrorKind::UnsupportedVersion,
        ErrorKind::CorruptMessage,
        ErrorKind::CorruptRecord,
        ErrorKind::DatabaseNotExist,
        ErrorKind::DatabaseNotEmpty,
        ErrorKind::DatabaseAlreadyExist,
        ErrorKind::TableNotExist,
        ErrorKind::TableAlreadyExist,
        ErrorKind::SchemaNotExist,
        ErrorKind::InvalidTable,
        ErrorKind::OffsetOutOfRange,
        ErrorKind::UnknownTableOrBucket,
        ErrorKind::NotLeaderOrFollower,
        ErrorKind::LeaderNotAvailable,
        ErrorKind::InvalidCoordinator,
        ErrorKind::RequestTimeOut,
        ErrorKind::Storage,
        ErrorKind::OutOfOrderSequence,
        ErrorKind::UnknownWriterId,
        ErrorKind::PartitionNotExists,
        ErrorKind::TableNotPartitioned,
        ErrorKind::InvalidConfig,
        ErrorKind::KvSnapshotNotExist,
        ErrorKind::PartitionAlreadyExists,
        ErrorKind::PartitionSpecInvalid,
        ErrorKind::FencedTieringEpoch,
        ErrorKind::LakeSnapshotNotExist,
        ErrorKind::NonPrimaryKeyTable,
        ErrorKind::InvalidTargetColumn,
        ErrorKind::UnknownScannerId,
        ErrorKind::InvalidScanRequest,
        ErrorKind::TooManyScanners,
        ErrorKind::InvalidArgument,
        ErrorKind::SchemaMismatch,
        ErrorKind::Unsupported,
        ErrorKind::Lake,
        ErrorKind::CommitOutcomeUnknown,
        ErrorKind::Internal,
    ];

    /// Fluss's numeric error code for this kind (`Errors.java`); kinds Fluss lacks use codes from 1000 on.
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::Internal => -1,
            ErrorKind::Network => 1,
            ErrorKind::UnsupportedVersion => 2,
            ErrorKind::CorruptMessage => 3,
            ErrorKind::DatabaseNotExist => 4,
            ErrorKind::DatabaseNotEmpty => 5,
            ErrorKind::DatabaseAlreadyExist => 6,
            ErrorKind::TableNotExist => 7,
            ErrorKind::TableAlreadyExist => 8,
            ErrorKind::SchemaNotExist => 9,
            ErrorKind::NotLeaderOrFollower => 12,
            ErrorKind::CorruptRecord => 14,
            ErrorKind::InvalidTable => 15,
            ErrorKind::OffsetOutOfRange => 19,
            ErrorKind::NonPrimaryKeyTable => 20,
            ErrorKind::UnknownTableOrBucket => 21,
            ErrorKind::InvalidCoordinator => 23,
            ErrorKind::RequestTimeOut => 25,
            ErrorKind::Storage => 26,
            ErrorKind::OutOfOrderSequence => 31,
            ErrorKind::UnknownWriterId => 33,
            ErrorKind::InvalidTargetColumn => 35,
            ErrorKind::PartitionNotExists => 36,
            ErrorKind::TableNotPartitioned => 37,
            ErrorKind::InvalidConfig => 39,
            ErrorKind::KvSnapshotNotExist => 41,
            ErrorKind::PartitionAlreadyExists => 42,
            ErrorKind::PartitionSpecInvalid => 43,
            ErrorKind::LeaderNotAvailable => 44,
            ErrorKind::FencedTieringEpoch => 50,
            ErrorKind::LakeSnapshotNotExist => 53,
            ErrorKind::UnknownScannerId => 67,
            ErrorKind::InvalidScanRequest => 68,
            ErrorKind::TooManyScanners => 69,
            ErrorKind::InvalidArgument => 1000,
            ErrorKind::SchemaMismatch => 1001,
            ErrorKind::Unsupported => 1002,
            ErrorKind::Lake => 1004,
            ErrorKind::CommitOutcomeUnknown => 1005,
        }
    }

    /// The kind for a Fluss error code; unknown codes are `Internal`.
    pub fn from_code(code: i32) -> ErrorKind {
        Self::ALL.into_iter().find(|k| k.code() == code).unwrap_or(ErrorKind::Internal)
    }

    /// Whether trying the same call again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Network
                | ErrorKind::RequestTimeOut
                | ErrorKind::Storage
                | ErrorKind::Lake
                | ErrorKind::NotLeaderOrFollower
                | ErrorKind::LeaderNotAvailable
        )
    }
}

/// An error with its kind, a message for people, and the underlying cause if there is one.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A storage error with its I/O cause.
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Storage, context).with_source(err)
    }

    /// The same error for another waiter on one call (many asks answered by one request): its kind and its whole
    /// text, the cause included.
    pub fn shared(&self) -> Self {
        Error::new(self.kind, self.to_string())
    }

    /// Rebuilds an error from a per-table error of a response.
    pub fn from_code(code: i32, message: Option<String>) -> Self {
        Error::new(ErrorKind::from_code(code), message.unwrap_or_else(|| format!("error code {code}")))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), kind, "{kind:?}");
        }
    }
}
