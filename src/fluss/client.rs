//! A connection to a Fluss server: the ApiVersions handshake, then one request at a time, each under a time-out.
//! What the `bench` of the doors and the tests use; the job's Fluss transport will pipeline on the same frames.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind, Result};
use crate::fluss::ApiKey;
use crate::fluss::frame::{self, MAX_FRAME_BYTES, RequestHeader};
use crate::fluss::messages::{ApiVersionsRequest, ApiVersionsResponse, ErrorResponse};

pub struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    next_id: i32,
    timeout: Duration,
    /// The api keys the server listed, with their highest version.
    versions: Vec<(i16, i16)>,
    /// A call failed half-way (a time-out, a broken stream): the stream's position in its frames is lost.
    broken: bool,
}

impl Connection {
    /// Connects and negotiates versions; every later call must finish within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::new(ErrorKind::RequestTimeOut, format!("connecting to {addr} timed out")))?
            .map_err(|e| Error::new(ErrorKind::Network, format!("connecting to {addr}")).with_source(e))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection { stream, addr, next_id: 0, timeout, versions: Vec::new(), broken: false };
        let hello = ApiVersionsRequest {
            client_software_name: "fluss-tiering".into(),
            client_software_version: env!("CARGO_PKG_VERSION").into(),
        };
        let listed: ApiVersionsResponse = conn.send(ApiKey::ApiVersions, &hello).await?;
        conn.versions = listed
            .api_versions
            .iter()
            .filter_map(|v| Some((i16::try_from(v.api_key).ok()?, i16::try_from(v.max_version).ok()?)))
            .collect();
        Ok(conn)
    }

    /// Sends one request and waits for its answer; an ERROR_RESPONSE becomes the error of its code.
    pub async fn call<T: Message + Default>(&mut self, key: ApiKey, request: &impl Message) -> Result<T> {
        if !self.versions.iter().any(|(k, _)| *k == key as i16) {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!("the server at {} does not serve {key:?}", self.addr),
            ));
        }
        self.send(key, request).await
    }

    async fn send<T: Message + Default>(&mut self, key: ApiKey, request: &impl Message) -> Result<T> {
        self.next_id = self.next_id.wrapping_add(1) & i32::MAX;
        let header = RequestHeader { api_key: key as i16, api_version: 0, request_id: self.next_id };
        if self.broken {
            return Err(Error::new(
                ErrorKind::Network,
                format!("the connection to {} broke in an earlier call: connect again", self.addr),
            ));
        }
        let bytes = frame::request(header, request)?;
        // Until the answer is read whole, the stream may be mid-frame: a failure leaves the connection unusable.
        self.broken = true;
        let (addr, timeout) = (self.addr, self.timeout);
        let exchange = async {
            self.stream.write_all(&bytes).await?;
            let len = self.stream.read_i32().await?;
            let len = usize::try_from(len)
                .ok()
                .filter(|l| (5..=MAX_FRAME_BYTES).contains(l))
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame length {len}")))?;
            let mut body = BytesMut::zeroed(len);
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(body.freeze())
        };
        let mut answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::new(ErrorKind::RequestTimeOut, format!("{key:?} to {addr} took over {timeout:?}")))?
            .map_err(|e| Error::new(ErrorKind::Network, format!("{key:?} to {addr}")).with_source(e))?;
        let (kind, id) = (answer.get_u8(), answer.get_i32());
        self.broken = id != header.request_id;
        if id != header.request_id {
            return Err(Error::new(
                ErrorKind::CorruptMessage,
                format!("{addr} answered request {id} where {} was asked", header.request_id),
            ));
        }
        let corrupt = |e| Error::new(ErrorKind::CorruptMessage, format!("{key:?} answer from {addr}")).with_source(e);
        match kind {
            0 => T::decode(answer).map_err(corrupt),
            1 => {
                let err = ErrorResponse::decode(answer).map_err(corrupt)?;
                Err(Error::from_code(err.error_code, err.error_message))
            }
            other => Err(Error::new(ErrorKind::CorruptMessage, format!("{addr} sent response type {other}"))),
        }
    }
}
