//! Frames on a Fluss connection. Every frame is a big-endian i32 length, then that many bytes:
//!
//! ```text
//! request   | api_key i16 | api_version i16 | request_id i32 | protobuf request |
//! response  | 0 u8 | request_id i32 | protobuf response |          (SUCCESS_RESPONSE)
//!           | 1 u8 | request_id i32 | ErrorResponse{code, message} | (ERROR_RESPONSE)
//! ```
//!
//! The client speaks first (ApiVersions), pipelines requests and matches responses by id, in any order. A server
//! never sends SERVER_FAILURE (type 2): fluss-rs would read a request id that is not there; it closes instead.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, ErrorKind, Result};
use crate::fluss::messages::ErrorResponse;

/// Netty's `netty.server.max-request-size` default: larger frames are refused.
pub const MAX_FRAME_BYTES: usize = 100 << 20;
const REQUEST_HEADER: usize = 8;

/// A request's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub request_id: i32,
}

/// What the next frame on a connection is.
#[derive(Debug)]
pub enum Incoming {
    Request(RequestHeader, Bytes),
    /// A frame longer than the limit: its header was read and the rest skipped, so the connection stays usable.
    Oversize(RequestHeader, usize),
    /// The peer closed the connection between frames.
    Closed,
}

fn network(what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Network, what.to_string()).with_source(e)
}

/// Reads the next request frame. A frame too short to hold a request header is an error: the stream cannot be
/// trusted after it, and the connection is closed.
pub async fn read_request(reader: &mut (impl AsyncRead + Unpin), max_frame: usize) -> Result<Incoming> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Incoming::Closed),
        Err(e) => return Err(network("reading a frame", e)),
    }
    let len = i32::from_be_bytes(len);
    let len = usize::try_from(len).ok().filter(|&l| l >= REQUEST_HEADER).ok_or_else(|| {
        Error::new(ErrorKind::CorruptMessage, format!("frame length {len} cannot hold a request header"))
    })?;
    let mut header = [0u8; REQUEST_HEADER];
    reader.read_exact(&mut header).await.map_err(|e| network("reading a request header", e))?;
    let header = RequestHeader {
        api_key: i16::from_be_bytes([header[0], header[1]]),
        api_version: i16::from_be_bytes([header[2], header[3]]),
        request_id: i32::from_be_bytes([header[4], header[5], header[6], header[7]]),
    };
    let body_len = len - REQUEST_HEADER;
    if len > max_frame {
        let skipped = tokio::io::copy(&mut reader.take(body_len as u64), &mut tokio::io::sink())
            .await
            .map_err(|e| network("skipping an oversize frame", e))?;
        if skipped as usize != body_len {
            return Ok(Incoming::Closed);
        }
        return Ok(Incoming::Oversize(header, len));
    }
    // Read as it arrives, not allocated up front from the length a peer claims.
    let mut body = Vec::with_capacity(body_len.min(64 << 10));
    reader.take(body_len as u64).read_to_end(&mut body).await.map_err(|e| network("reading a request body", e))?;
    if body.len() != body_len {
        return Ok(Incoming::Closed);
    }
    Ok(Incoming::Request(header, Bytes::from(body)))
}

/// A request frame (for clients and tests); refused when it would exceed the frame limit.
pub fn request(header: RequestHeader, body: &impl Message) -> Result<Bytes> {
    let body_len = body.encoded_len();
    let len = frame_len(REQUEST_HEADER, body_len)?;
    let mut out = BytesMut::with_capacity(4 + REQUEST_HEADER + body_len);
    out.put_i32(len);
    out.put_i16(header.api_key);
    out.put_i16(header.api_version);
    out.put_i32(header.request_id);
    body.encode(&mut out).expect("a BytesMut grows");
    Ok(out.freeze())
}

fn frame_len(header: usize, body: usize) -> Result<i32> {
    header.checked_add(body).filter(|&n| n <= MAX_FRAME_BYTES).and_then(|n| i32::try_from(n).ok()).ok_or_else(|| {
        Error::new(ErrorKind::InvalidArgument, format!("a message of {body} bytes does not fit a frame"))
    })
}

/// A SUCCESS_RESPONSE frame around an encoded response; refused when it would exceed the frame limit.
pub fn success_encoded(request_id: i32, body: &[u8]) -> Result<Bytes> {
    let len = frame_len(5, body.len())?;
    let mut out = BytesMut::with_capacity(9 + body.len());
    out.put_i32(len);
    out.put_u8(0);
    out.put_i32(request_id);
    out.put_slice(body);
    Ok(out.freeze())
}

/// An ERROR_RESPONSE frame carrying `err`'s Fluss code and message.
pub fn error(request_id: i32, err: &Error) -> Bytes {
    let body = ErrorResponse { error_code: err.kind().code(), error_message: Some(err.to_string()) };
    response(1, request_id, &body)
}

fn response(kind: u8, request_id: i32, body: &impl Message) -> Bytes {
    let body_len = body.encoded_len();
    let mut out = BytesMut::with_capacity(9 + body_len);
    // An error message is short; were one ever too long for a frame, its length saturates and the peer refuses it.
    out.put_i32(i32::try_from(5 + body_len).unwrap_or(i32::MAX));
    out.put_u8(kind);
    out.put_i32(request_id);
    body.encode(&mut out).expect("a BytesMut grows");
    out.freeze()
}
