//! Serving a cluster over TCP: the standalone server and the embedded one are the same code.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::cluster::{Cluster, ClusterConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::rpc::MAX_MESSAGE_BYTES;
use crate::rpc::proto::coordinator_service_server::CoordinatorServiceServer;
use crate::rpc::proto::tablet_service_server::TabletServiceServer;
use crate::serve::fluss::FlussDoor;
use crate::serve::grpc::ClusterService;

/// How often the coordinator promotes due tables and expires silent jobs.
const TICK: Duration = Duration::from_millis(100);
/// How long a stopping server waits for clients to close their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `cluster` over gRPC on `listener`, and over Fluss's protocol on `fluss` when given, until `shutdown`
/// resolves.
pub async fn serve(
    cluster: Arc<Cluster>,
    listener: TcpListener,
    fluss: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let (stop_doors, doors_stopping) = tokio::sync::watch::channel(());
    let fluss_door = fluss.map(|listener| {
        let mut stopping = doors_stopping.clone();
        tokio::spawn(FlussDoor::new(Arc::clone(&cluster)).serve(listener, async move {
            let _ = stopping.changed().await;
        }))
    });
    let ticker = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                if let Err(e) = cluster.coordinator().tick(Instant::now()) {
                    tracing::error!(error = %e, "coordinator tick failed");
                }
            }
        })
    };
    let service = ClusterService::new(cluster);
    // Small answers (a produce's acknowledgement) must not wait for Nagle's algorithm: without TCP_NODELAY each
    // acknowledgement sat about 20 ms on this machine (found by `bench --doors`).
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    let (stopping_tx, stopping) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(
            CoordinatorServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            TabletServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            let _ = stop_doors.send(());
            let _ = stopping_tx.send(());
        });
    // A graceful stop waits for clients to close their connections; a client that hangs (or is stopped) would hold
    // the server forever, so the wait is bounded.
    let grace = async {
        if stopping.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = server => result.map_err(|e| Error::new(ErrorKind::Network, "gRPC server failed").with_source(e)),
        _ = grace => {
            tracing::warn!("clients did not close their connections within {SHUTDOWN_GRACE:?}; closing them");
            Ok(())
        }
    };
    ticker.abort();
    if let Some(door) = fluss_door {
        let _ = stop_doors.send(());
        match door.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the Fluss door failed"),
            Err(e) => tracing::warn!(error = %e, "the Fluss door's task failed"),
            Ok(Ok(())) => {}
        }
    }
    result
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| Error::new(ErrorKind::Network, format!("binding {addr}")).with_source(e))
}

/// A cluster served in this process, on a loopback port of its own; it stops when dropped or shut down.
pub struct EmbeddedCluster {
    cluster: Arc<Cluster>,
    addr: SocketAddr,
    fluss_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl EmbeddedCluster {
    /// Opens the cluster in `config.data_dir` and serves it on `127.0.0.1:0` from the current tokio runtime.
    pub async fn start(config: ClusterConfig) -> Result<Self> {
        Self::start_at(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`EmbeddedCluster::start`], on a given address (a restart on the address clients already know).
    pub async fn start_at(config: ClusterConfig, addr: SocketAddr) -> Result<Self> {
        Self::start_with(config, addr, None).await
    }

    /// Like [`EmbeddedCluster::start_at`], with Fluss's protocol also served on `fluss` (port 0: any free one).
    pub async fn start_with(config: ClusterConfig, addr: SocketAddr, fluss: Option<SocketAddr>) -> Result<Self> {
        let cluster = tokio::task::spawn_blocking(move || Cluster::open(config))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("opening the cluster panicked: {e}")))??;
        let listener = bind(addr).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(ErrorKind::Network, "reading the bound address").with_source(e))?;
        let fluss = match fluss {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        let fluss_addr = match &fluss {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| Error::new(ErrorKind::Network, "reading the bound address").with_source(e))?,
            ),
            None => None,
        };
        let (stop, stopped) = oneshot::channel();
        let cluster = Arc::new(cluster);
        let task = tokio::spawn(serve(Arc::clone(&cluster), listener, fluss, async {
            let _ = stopped.await;
        }));
        Ok(EmbeddedCluster { cluster, addr, fluss_addr, stop: Some(stop), task: Some(task) })
    }

    /// The cluster itself (for what is not served: its metrics).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The `http://127.0.0.1:PORT` URL clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it serves Fluss's protocol on, when it does (pyfluss's `bootstrap.servers`).
    pub fn fluss_addr(&self) -> Option<SocketAddr> {
        self.fluss_addr
    }

    /// Stops serving and waits until the server has let go of the cluster's files.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => {
                task.await.map_err(|e| Error::new(ErrorKind::Internal, format!("server task failed: {e}")))?
            }
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
