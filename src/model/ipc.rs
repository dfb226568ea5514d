//! Records on the wire and on disk are Arrow IPC streams: a schema message, then record batches.

use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};

/// Encodes batches (all of one schema) as one IPC stream.
pub fn encode(batches: &[RecordBatch]) -> Result<Bytes> {
    let first = batches.first().ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "no batches to encode"))?;
    let fail = |e| Error::new(ErrorKind::Internal, "encoding Arrow IPC").with_source(e);
    let mut writer = StreamWriter::try_new(Vec::new(), &first.schema()).map_err(fail)?;
    for batch in batches {
        writer.write(batch).map_err(fail)?;
    }
    writer.finish().map_err(fail)?;
    Ok(Bytes::from(writer.into_inner().map_err(fail)?))
}

/// Decodes one IPC stream.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let fail = |e| Error::new(ErrorKind::CorruptMessage, "records are not a valid Arrow IPC stream").with_source(e);
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(fail)?;
    reader.collect::<std::result::Result<Vec<_>, _>>().map_err(fail)
}
