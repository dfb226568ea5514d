//! A minimal Prometheus endpoint: `GET /metrics` answers with the OpenMetrics text a render function produces (through
//! the `prometheus-client` library's encoder, [`encode`]). One small server for the tiering job and the cluster alike;
//! anything else gets 404.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::error::{Error, ErrorKind, Result};

/// Renders the current metrics in the OpenMetrics text format.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and serves `render` on the current tokio runtime until it stops. Returns the bound address.
pub async fn serve(addr: SocketAddr, render: Render) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::new(ErrorKind::InvalidArgument, format!("cannot serve metrics on {addr}")).with_source(e)
    })?;
    let bound = listener.local_addr().map_err(|e| Error::new(ErrorKind::Network, "metrics address").with_source(e))?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let render = Arc::clone(&render);
            tokio::spawn(async move {
                let mut request = Vec::with_capacity(512);
                let mut buf = [0u8; 512];
                // Read the request head (bounded); the path is all that matters.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = if request.starts_with(b"GET /metrics ") {
                    let body = render();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(bound)
}

/// The OpenMetrics text of `registry`, ending with `# EOF`.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        // Writing to a String cannot fail; a metric that cannot encode itself is a bug, said in the log.
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}
