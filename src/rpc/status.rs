//! Errors across the gRPC door: a status carries the kind's Fluss error code in its `fluss-error-code` metadata, so the
//! client rebuilds the same kind; a status without it (a transport failure) gets the nearest kind.

use crate::error::{Error, ErrorKind};

const CODE_HEADER: &str = "fluss-error-code";

fn grpc_code(kind: ErrorKind) -> tonic::Code {
    use tonic::Code;
    match kind {
        ErrorKind::Network | ErrorKind::NotLeaderOrFollower | ErrorKind::LeaderNotAvailable => Code::Unavailable,
        ErrorKind::RequestTimeOut => Code::DeadlineExceeded,
        ErrorKind::TableNotExist
        | ErrorKind::DatabaseNotExist
        | ErrorKind::SchemaNotExist
        | ErrorKind::PartitionNotExists
        | ErrorKind::UnknownTableOrBucket
        | ErrorKind::UnknownWriterId
        | ErrorKind::LakeSnapshotNotExist
        | ErrorKind::UnknownScannerId
        | ErrorKind::KvSnapshotNotExist => Code::NotFound,
        ErrorKind::TableAlreadyExist | ErrorKind::DatabaseAlreadyExist | ErrorKind::PartitionAlreadyExists => {
            Code::AlreadyExists
        }
        ErrorKind::InvalidArgument
        | ErrorKind::InvalidConfig
        | ErrorKind::InvalidTable
        | ErrorKind::SchemaMismatch
        | ErrorKind::CorruptMessage
        | ErrorKind::CorruptRecord
        | ErrorKind::PartitionSpecInvalid
        | ErrorKind::NonPrimaryKeyTable
        | ErrorKind::InvalidTargetColumn
        | ErrorKind::InvalidScanRequest
        | ErrorKind::TableNotPartitioned => Code::InvalidArgument,
        ErrorKind::OffsetOutOfRange => Code::OutOfRange,
        ErrorKind::InvalidCoordinator
        | ErrorKind::FencedTieringEpoch
        | ErrorKind::DatabaseNotEmpty
        | ErrorKind::OutOfOrderSequence => Code::FailedPrecondition,
        ErrorKind::Unsupported | ErrorKind::UnsupportedVersion => Code::Unimplemented,
        ErrorKind::TooManyScanners => Code::ResourceExhausted,
        ErrorKind::Storage | ErrorKind::Lake | ErrorKind::CommitOutcomeUnknown | ErrorKind::Internal => Code::Internal,
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let mut status = tonic::Status::new(grpc_code(err.kind()), err.to_string());
        if let Ok(value) = err.kind().code().to_string().parse() {
            status.metadata_mut().insert(CODE_HEADER, value);
        }
        status
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let coded = status
            .metadata()
            .get(CODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(ErrorKind::from_code);
        let kind = coded.unwrap_or(match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorKind::Network,
            tonic::Code::NotFound => ErrorKind::TableNotExist,
            tonic::Code::InvalidArgument => ErrorKind::InvalidArgument,
            tonic::Code::Unimplemented => ErrorKind::Unsupported,
            _ => ErrorKind::Internal,
        });
        Error::new(kind, status.message().to_string())
    }
}
