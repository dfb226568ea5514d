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
    /// No table at that path or with that id.
    TableNotExist,
    /// A table with that path exists already.
    TableAlreadyExist,
    /// The bucket (or partition) does not exist in the table.
    UnknownTableOrBucket,
    /// A request or a configuration value is malformed.
    InvalidArgument,
    /// Records whose schema is not the table's.
    SchemaMismatch,
    /// Records that are not a readable Arrow IPC stream.
    CorruptMessage,
    /// An offset outside `[log_start_offset, high_watermark]`.
    OffsetOutOfRange,
    /// The caller's coordinator epoch is not the coordinator's current one.
    InvalidCoordinator,
    /// The caller's tiering epoch was superseded: another job (or a later round) owns the table.
    FencedTieringEpoch,
    /// The table has no lake snapshot yet.
    LakeSnapshotNotExist,
    /// A KV snapshot asked for is not (or no longer) there.
    KvSnapshotNotExist,
    /// The request is valid but not supported (yet).
    Unsupported,
    /// Local storage failed (I/O, a corrupt file).
    Storage,
    /// The lake (catalog, files) failed.
    Lake,
    /// A commit may or may not have landed, and the lake could not be read to tell: its files must be kept.
    CommitOutcomeUnknown,
    /// A bug: a state that should be impossible.
    Internal,
}

impl ErrorKind {
    /// Fluss's numeric error code for this kind (`Errors.java`); kinds Fluss lacks use codes from 1000 on.
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::Network => 1,
            ErrorKind::CorruptMessage => 3,
            ErrorKind::TableNotExist => 7,
            ErrorKind::TableAlreadyExist => 6,
            ErrorKind::InvalidArgument => 20,
            ErrorKind::UnknownTableOrBucket => 21,
            ErrorKind::InvalidCoordinator => 23,
            ErrorKind::OffsetOutOfRange => 8,
            ErrorKind::SchemaMismatch => 1001,
            ErrorKind::FencedTieringEpoch => 50,
            ErrorKind::LakeSnapshotNotExist => 53,
            ErrorKind::Unsupported => 1002,
            ErrorKind::Storage => 1003,
            ErrorKind::Lake => 1004,
            ErrorKind::CommitOutcomeUnknown => 1005,
            ErrorKind::KvSnapshotNotExist => 41,
            ErrorKind::Internal => -1,
        }
    }

    /// The kind for a Fluss error code; unknown codes are `Internal`.
    pub fn from_code(code: i32) -> ErrorKind {
        const ALL: [ErrorKind; 17] = [
            ErrorKind::Network,
            ErrorKind::CorruptMessage,
            ErrorKind::TableNotExist,
            ErrorKind::TableAlreadyExist,
            ErrorKind::InvalidArgument,
            ErrorKind::UnknownTableOrBucket,
            ErrorKind::InvalidCoordinator,
            ErrorKind::OffsetOutOfRange,
            ErrorKind::SchemaMismatch,
            ErrorKind::FencedTieringEpoch,
            ErrorKind::LakeSnapshotNotExist,
            ErrorKind::KvSnapshotNotExist,
            ErrorKind::Unsupported,
            ErrorKind::Storage,
            ErrorKind::Lake,
            ErrorKind::CommitOutcomeUnknown,
            ErrorKind::Internal,
        ];
        ALL.into_iter().find(|k| k.code() == code).unwrap_or(ErrorKind::Internal)
    }

    /// Whether trying the same call again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Network | ErrorKind::Storage | ErrorKind::Lake)
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
