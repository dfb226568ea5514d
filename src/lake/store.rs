//! The warehouse's store: where a lake lives (a local directory or an S3 prefix) as a value, [`Warehouse`], and the
//! one opendal operator, [`Store`], through which the lakes' file work goes: Iceberg's FileIO (through
//! [`LakeStorage`]) and our own bookkeeping (Paimon's markers and claims, the orphan sweep, table repair). Paimon's
//! data files, manifests and snapshots are the exception: paimon 0.4's filesystem catalog builds its own FileIO from
//! the warehouse and options (it takes no operator of ours), so we give it the same settings
//! ([`Store::paimon_options`]), but not invariant 2's check or this store's HTTP time-outs; the job's lake time-out
//! bounds its commits.
//!
//! Invariants:
//! 1. Exclusive creation ([`Store::create_exclusive`]) is the one atomic primitive the commit protocols need beyond
//!    the catalogs (Paimon's claims and markers): a name is created by one writer only. On local disk it is an
//!    exclusive open; on S3 a conditional put (`If-None-Match: *`). A store that cannot keep it is refused when it
//!    is opened ([`Store::open`] probes it), not found out at the first race.
//! 2. Every location the lakes write or delete is a URI under the warehouse root; one outside it is an error, never
//!    a write somewhere else. Reads may go outside (the cluster's offsets files, in Fluss's remote data directory,
//!    on the same disk or in the same bucket).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use opendal::{ErrorKind as StoreErrorKind, HttpTransporter, OperationContext, Operator};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// How long connecting to the object store may take, and how long a response may stall.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A whole S3 request, body included: bounds an upload the server stops reading (the read time-out does not).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a lake's warehouse lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Warehouse {
    /// A directory on this host's disk.
    Local(PathBuf),
    /// A prefix of an S3 (or S3-compatible) bucket.
    S3(S3Location),
}

/// An S3 bucket and prefix, and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Location {
    pub bucket: String,
    /// The key prefix of the warehouse, without leading or trailing `/` (empty: the bucket's root).
    pub prefix: String,
    pub settings: S3Settings,
}

/// How to reach an S3 store. Credentials left out come from the standard AWS chain (environment, profile).
/// Serializable because Iceberg's FileIO carries its storage as a value; its Debug never shows the secrets.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Settings {
    /// The endpoint URL (S3-compatible stores); AWS's own by default.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`), as most S3-compatible servers want, instead of virtual hosts.
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl S3Settings {
    /// The region, us-east-1 unless given.
    fn region_or_default(&self) -> String {
        self.region.clone().unwrap_or_else(|| "us-east-1".to_string())
    }
}

/// The path of a local location given as `file:///P`, `file:/P` or `P`.
pub(super) fn local_path(uri: &str) -> &str {
    uri.strip_prefix("file://").or_else(|| uri.strip_prefix("file:")).unwrap_or(uri)
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl From<&Path> for Warehouse {
    fn from(dir: &Path) -> Self {
        Warehouse::Local(dir.to_path_buf())
    }
}

impl From<&PathBuf> for Warehouse {
    fn from(dir: &PathBuf) -> Self {
        Warehouse::Local(dir.clone())
    }
}

impl From<PathBuf> for Warehouse {
    fn from(dir: PathBuf) -> Self {
        Warehouse::Local(dir)
    }
}

impl std::fmt::Display for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warehouse::Local(dir) => write!(f, "{}", dir.display()),
            Warehouse::S3(s3) if s3.prefix.is_empty() => write!(f, "s3://{}", s3.bucket),
            Warehouse::S3(s3) => write!(f, "s3://{}/{}", s3.bucket, s3.prefix),
        }
    }
}

impl Warehouse {
    /// `s3://BUCKET/PREFIX` (with `settings`), or a local directory (`file://DIR`, `file:DIR` or a plain path).
    pub fn parse(spec: &str, settings: S3Settings) -> Result<Self> {
        let invalid = |why: &str| Error::new(ErrorKind::InvalidArgument, format!("warehouse {spec:?}: {why}"));
        if spec.is_empty() {
            return Err(invalid("empty"));
        }
        if let Some(rest) = spec.strip_prefix("s3://").or_else(|| spec.strip_prefix("s3a://")) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket (s3://BUCKET/PREFIX)"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|part| part == "." || part == "..") {
                return Err(invalid("the prefix has . or .. in it"));
            }
            return Ok(Warehouse::S3(S3Location { bucket: bucket.to_string(), prefix: prefix.to_string(), settings }));
        }
        if spec.starts_with("s3:") || spec.starts_with("s3a:") {
            return Err(invalid("an S3 warehouse is s3://BUCKET/PREFIX"));
        }
        if spec.contains("://") && !spec.starts_with("file:") {
            return Err(invalid("unsupported scheme: a local directory, file://DIR or s3://BUCKET/PREFIX"));
        }
        Ok(Warehouse::Local(PathBuf::from(local_path(spec))))
    }

    /// The local directory, if the warehouse is on this host's disk.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Warehouse::Local(dir) => Some(dir),
            Warehouse::S3(_) => None,
        }
    }
}

/// A file the store listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its URI.
    pub uri: String,
    /// Its path below the listed directory.
    pub relative: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// The warehouse's operator, and the URI of its root.
#[derive(Clone)]
pub struct Store {
    warehouse: Warehouse,
    /// `file:///ABSOLUTE/DIR` or `s3://BUCKET/PREFIX`, without a trailing `/`.
    root: String,
    /// A local warehouse's root as given, when a symlink makes it differ from `root`: tables created through the
    /// link before roots were resolved record locations under it. Only this spelling: a table created through
    /// another link is refused as outside (safely).
    alias: Option<String>,
    op: Operator,
    /// The whole bucket (the warehouse's operator on local disk): for reads outside the warehouse (invariant 2).
    bucket: Operator,
    /// This host's whole disk, for reads of local files outside the warehouse.
    disk: Operator,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish_non_exhaustive()
    }
}

/// opendal's configuration of `s3`, rooted at `root`.
fn s3_config(s3: &S3Location, root: String) -> opendal_service_s3::S3Config {
    let mut cfg = opendal_service_s3::S3Config::default();
    cfg.bucket = s3.bucket.clone();
    cfg.root = Some(root);
    cfg.endpoint = s3.settings.endpoint.clone();
    cfg.region = Some(s3.settings.region_or_default());
    cfg.enable_virtual_host_style = !s3.settings.path_style;
    cfg.access_key_id = s3.settings.access_key_id.clone();
    cfg.secret_access_key = s3.settings.secret_access_key.clone();
    cfg.session_token = s3.settings.session_token.clone();
    cfg
}

fn store_err(context: impl Into<String>) -> impl FnOnce(opendal::Error) -> Error {
    let context = context.into();
    move |e| Error::new(ErrorKind::Lake, context).with_source(e)
}

impl Store {
    /// The store of `warehouse`, without a request to it (on local disk, opendal's builder creates the directory;
    /// [`Store::open`] probes).
    pub fn new(warehouse: &Warehouse) -> Result<Self> {
        let config = |e: opendal::Error| {
            Error::new(ErrorKind::InvalidArgument, format!("warehouse {warehouse}: bad store settings")).with_source(e)
        };
        let disk = Operator::new(opendal_service_fs::Fs::default().root("/")).map_err(config)?;
        let (root, alias, op, bucket) = match warehouse {
            Warehouse::Local(dir) => {
                let dir = std::path::absolute(dir)
                    .map_err(|e| Error::io(format!("resolving warehouse {}", dir.display()), e))?;
                let fs = |root: &str| Operator::new(opendal_service_fs::Fs::default().root(root)).map_err(config);
                // Created by the builder, then resolved: the files the catalogs record keep one root however the
                // warehouse is spelled (through a symlink or not).
                fs(&dir.to_string_lossy())?;
                let given = format!("file://{}", dir.to_string_lossy().trim_end_matches('/'));
                let dir = dir.canonicalize().unwrap_or(dir);
                let root = dir.to_string_lossy().trim_end_matches('/').to_string();
                let root_uri = format!("file://{root}");
                let alias = (given != root_uri).then_some(given);
                (root_uri, alias, fs(&format!("{root}/"))?, disk.clone())
            }
            Warehouse::S3(s3) => {
                let client = reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .map_err(|e| Error::new(ErrorKind::Internal, "building the S3 HTTP client").with_source(e))?;
                let s3_op = |root: String| -> Result<Operator> {
                    let transport =
                        HttpTransporter::new(opendal_http_transport_reqwest::ReqwestTransport::new(client.clone()));
                    let op = Operator::new(opendal::Configurator::into_builder(s3_config(s3, root))).map_err(config)?;
                    Ok(op.with_context(OperationContext::new().with_http_transport(transport)))
                };
                (warehouse.to_string(), None, s3_op(format!("/{}", s3.prefix))?, s3_op("/".to_string())?)
            }
        };
        Ok(Store { warehouse: warehouse.clone(), root, alias, op, bucket, disk })
    }

    /// The store of `warehouse`, its root created (local disk) and its exclusive creation checked (invariant 1).
    pub async fn open(warehouse: &Warehouse) -> Result<Self> {
        let store = Store::new(warehouse)?;
        match warehouse {
            Warehouse::Local(_) => {
                store.op.create_dir("/").await.map_err(store_err(format!("creating warehouse {warehouse}")))?
            }
            Warehouse::S3(_) => store.probe_exclusive_creation().await?,
        }
        Ok(store)
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The URI of the warehouse's root (`file:///DIR` or `s3://BUCKET/PREFIX`), as the catalogs are given it.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The properties that give Paimon's FileIO the same store.
    pub fn paimon_options(&self) -> Vec<(String, String)> {
        let Warehouse::S3(s3) = &self.warehouse else { return Vec::new() };
        let s = &s3.settings;
        let mut out = vec![
            ("s3.path-style-access".to_string(), s.path_style.to_string()),
            ("s3.region".to_string(), s.region_or_default()),
        ];
        let given = [
            ("s3.endpoint", &s.endpoint),
            ("s3.access-key", &s.access_key_id),
            ("s3.secret-key", &s.secret_access_key),
            ("s3.session.token", &s.session_token),
        ];
        out.extend(given.into_iter().filter_map(|(k, v)| Some((k.to_string(), v.clone()?))));
        out
    }

    /// The operator's path of `uri` (invariant 2). Local URIs may come as `file:///P`, `file:/P` or `/P`.
    fn key(&self, uri: &str) -> Result<String> {
        let outside = || {
            Error::new(
                ErrorKind::Lake,
                format!("{uri} is not inside the warehouse {}: refusing to touch it", self.root),
            )
        };
        let normalized = match &self.warehouse {
            Warehouse::Local(_) => format!("file://{}", local_path(uri)),
            Warehouse::S3(_) => match uri.strip_prefix("s3a://") {
                Some(rest) => format!("s3://{rest}"),
                None => uri.to_string(),
            },
        };
        let rest = normalized
            .strip_prefix(&self.root)
            .or_else(|| normalized.strip_prefix(self.alias.as_deref()?))
            .ok_or_else(outside)?;
        if !(rest.is_empty() || rest.starts_with('/')) || rest.split('/').any(|part| part == ".." || part == ".") {
            return Err(outside());
        }
        Ok(rest.trim_start_matches('/').to_string())
    }

    /// The operator and path to read `uri` with: the warehouse's, or, outside it, the whole disk's or bucket's
    /// (invariant 2).
    fn readable(&self, uri: &str) -> Result<(&Operator, String)> {
        if let Ok(key) = self.key(uri) {
            return Ok((&self.op, key));
        }
        let local = local_path(uri);
        let elsewhere = match &self.warehouse {
            _ if local.starts_with('/') => Some((&self.disk, local.to_string())),
            Warehouse::S3(s3) => {
                let rest = uri.strip_prefix("s3://").or_else(|| uri.strip_prefix("s3a://"));
                let key = rest.and_then(|r| r.strip_prefix(s3.bucket.as_str())?.strip_prefix('/'));
                key.map(|key| (&self.bucket, key.to_string()))
            }
            Warehouse::Local(_) => None,
        };
        match elsewhere {
            Some((op, path)) if !path.split('/').any(|part| part == "..") => Ok((op, path)),
            _ => Err(Error::new(
                ErrorKind::Lake,
                format!("{uri} is neither on this disk nor in this bucket ({}): cannot read it", self.root),
            )),
        }
    }

    /// The URI of a location given relative to the warehouse root.
    pub fn uri(&self, relative: &str) -> String {
        format!("{}/{}", self.root, relative.trim_start_matches('/'))
    }

    /// The files below the directory `dir` (recursively), with their sizes and modification times; none if it
    /// does not exist.
    pub async fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let key = self.key(dir)?;
        let key = if key.is_empty() { String::new() } else { format!("{}/", key.trim_end_matches('/')) };
        let entries = match self.op.list_with(&key).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == StoreErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(store_err(format!("listing {dir}"))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let meta = entry.metadata();
            if !meta.is_file() {
                continue;
            }
            let Some(relative) = entry.path().strip_prefix(&key) else { continue };
            out.push(Listed {
                uri: self.uri(entry.path()),
                relative: relative.to_string(),
                size: meta.content_length(),
                modified: meta.last_modified().map(SystemTime::from),
            });
        }
        Ok(out)
    }

    /// The bytes of `uri`; `None` if it does not exist.
    pub async fn read(&self, uri: &str) -> Result<Option<Bytes>> {
        let (op, key) = self.readable(uri)?;
        match op.read(&key).await {
            Ok(buffer) => Ok(Some(buffer.to_bytes())),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err(format!("reading {uri}"))(e)),
        }
    }

    /// Creates `uri` with `body` unless the name exists (invariant 1): `true` if this call created it. On local disk
    /// the name appears before its bytes: a reader that finds it empty or torn is looking at a creation under way.
    pub async fn create_exclusive(&self, uri: &str, body: Vec<u8>) -> Result<bool> {
        match self.op.write_with(&self.key(uri)?, body).if_not_exists(true).await {
            Ok(_) => Ok(true),
            // A temporary conflict (S3's 409: another conditional put of the name in flight) says nothing about
            // who will have created it.
            Err(e) if e.kind() == StoreErrorKind::ConditionNotMatch && !e.is_temporary() => Ok(false),
            Err(e) => Err(store_err(format!("creating {uri}"))(e)),
        }
    }

    /// Deletes the file `uri`; one that is not there is not an error.
    pub async fn delete(&self, uri: &str) -> Result<()> {
        match self.op.delete(&self.key(uri)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_err(format!("deleting {uri}"))(e)),
        }
    }

    /// Deletes the directory `dir` and everything below it; never the whole warehouse.
    pub async fn delete_all(&self, dir: &str) -> Result<()> {
        let key = self.key(dir)?;
        if key.trim_matches('/').is_empty() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("refusing to delete the whole warehouse {}", self.root),
            ));
        }
        let key = format!("{}/", key.trim_end_matches('/'));
        match self.op.delete_with(&key).recursive(true).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_err(format!("deleting {dir}"))(e)),
        }
    }

    /// Checks invariant 1 on this store: a second exclusive creation of one name must fail. A store that lacks
    /// conditional puts, or accepts the second one (an S3 that ignores `If-None-Match`), is refused.
    async fn probe_exclusive_creation(&self) -> Result<()> {
        let refuse = |why: String| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "warehouse {}: {why}. Tiering commits need a store that creates a name only once (a conditional \
                     put, If-None-Match: *) to keep each round's commit exclusive; this store does not, so the job \
                     refuses to run on it",
                    self.root
                ),
            )
        };
        if !self.op.info().capability().write_with_if_not_exists {
            return Err(refuse("the store offers no conditional put".to_string()));
        }
        let probe = self.uri(&format!(".fluss-tiering/probe-{}", uuid::Uuid::new_v4().simple()));
        let first = self.create_exclusive(&probe, b"first".to_vec()).await;
        let second = self.create_exclusive(&probe, b"second".to_vec()).await;
        let cleanup = self.delete(&probe).await;
        match (first, second) {
            (Ok(true), Ok(false)) => cleanup,
            (Ok(true), Ok(true)) => Err(refuse("it accepted a second conditional put of one name".to_string())),
            (Err(e), _) | (_, Err(e)) => Err(Error::new(
                ErrorKind::Lake,
                format!("warehouse {}: checking its conditional puts failed", self.root),
            )
            .with_source(e)),
            (Ok(false), _) => Err(refuse("a new name was reported as existing".to_string())),
        }
    }
}

fn iceberg_err(context: String) -> impl FnOnce(opendal::Error) -> iceberg::Error {
    move |e| {
        let kind = if e.kind() == StoreErrorKind::NotFound {
            iceberg::ErrorKind::DataInvalid
        } else {
            iceberg::ErrorKind::Unexpected
        };
        iceberg::Error::new(kind, context).with_source(e)
    }
}

fn into_iceberg(e: Error) -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string())
}

/// Iceberg's storage over the warehouse's store: every file Iceberg writes, reads and deletes goes through it.
/// Serializable as its warehouse (Iceberg may ship a storage across processes); the operator is rebuilt from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LakeStorage {
    warehouse: Warehouse,
    #[serde(skip)]
    store: OnceLock<Store>,
}

impl LakeStorage {
    pub fn new(store: Store) -> Self {
        let warehouse = store.warehouse.clone();
        LakeStorage { warehouse, store: OnceLock::from(store) }
    }

    fn store(&self) -> iceberg::Result<&Store> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = Store::new(&self.warehouse).map_err(into_iceberg)?;
        Ok(self.store.get_or_init(|| store))
    }

    /// Where Iceberg writes `path`: inside the warehouse only.
    fn writable(&self, path: &str) -> iceberg::Result<(&Operator, String)> {
        let store = self.store()?;
        Ok((&store.op, store.key(path).map_err(into_iceberg)?))
    }

    /// Where Iceberg reads `path` (the cluster's offsets files may be outside the warehouse).
    fn readable(&self, path: &str) -> iceberg::Result<(&Operator, String)> {
        self.store()?.readable(path).map_err(into_iceberg)
    }
}

#[async_trait::async_trait]
#[typetag::serde]
impl iceberg::io::Storage for LakeStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (op, key) = self.readable(path)?;
        op.exists(&key).await.map_err(iceberg_err(format!("looking for {path}")))
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<iceberg::io::FileMetadata> {
        let (op, key) = self.readable(path)?;
        let meta = op.stat(&key).await.map_err(iceberg_err(format!("reading the size of {path}")))?;
        Ok(iceberg::io::FileMetadata { size: meta.content_length() })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let (op, key) = self.readable(path)?;
        Ok(op.read(&key).await.map_err(iceberg_err(format!("reading {path}")))?.to_bytes())
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn iceberg::io::FileRead>> {
        let (op, key) = self.readable(path)?;
        let reader = op.reader(&key).await.map_err(iceberg_err(format!("opening {path}")))?;
        Ok(Box::new(StoreRead { reader, path: path.to_string() }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let (op, key) = self.writable(path)?;
        op.write(&key, bs).await.map_err(iceberg_err(format!("writing {path}")))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn iceberg::io::FileWrite>> {
        let (op, key) = self.writable(path)?;
        let writer = op.writer(&key).await.map_err(iceberg_err(format!("creating {path}")))?;
        Ok(Box::new(StoreWrite { writer, path: path.to_string() }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        self.store()?.delete(path).await.map_err(into_iceberg)
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        self.store()?.delete_all(path).await.map_err(into_iceberg)
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        let store = self.store()?;
        paths.map(Ok).try_for_each(|path| async move { store.delete(&path).await.map_err(into_iceberg) }).await
    }

    fn new_input(&self, path: &str) -> iceberg::Result<iceberg::io::InputFile> {
        Ok(iceberg::io::InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<iceberg::io::OutputFile> {
        Ok(iceberg::io::OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Hands Iceberg's catalog the warehouse's storage, whatever configuration it asks with.
#[derive(Debug, Serialize, Deserialize)]
pub struct LakeStorageFactory(pub LakeStorage);

#[typetag::serde]
impl iceberg::io::StorageFactory for LakeStorageFactory {
    fn build(&self, _config: &iceberg::io::StorageConfig) -> iceberg::Result<Arc<dyn iceberg::io::Storage>> {
        Ok(Arc::new(self.0.clone()))
    }
}

struct StoreRead {
    reader: opendal::Reader,
    path: String,
}

#[async_trait::async_trait]
impl iceberg::io::FileRead for StoreRead {
    async fn read(&self, range: std::ops::Range<u64>) -> iceberg::Result<Bytes> {
        let buffer = self.reader.read(range).await.map_err(iceberg_err(format!("reading {}", self.path)))?;
        Ok(buffer.to_bytes())
    }
}

struct StoreWrite {
    writer: opendal::Writer,
    path: String,
}

#[async_trait::async_trait]
impl iceberg::io::FileWrite for StoreWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.writer.write(bs).await.map_err(iceberg_err(format!("writing {}", self.path)))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        self.writer.close().await.map_err(iceberg_err(format!("closing {}", self.path)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warehouses_parse_from_paths_and_uris() {
        let s3 = |bucket: &str, prefix: &str| {
            Warehouse::S3(S3Location { bucket: bucket.into(), prefix: prefix.into(), settings: S3Settings::default() })
        };
        let parse = |spec| Warehouse::parse(spec, S3Settings::default());
        assert_eq!(parse("/tmp/w").ok(), Some(Warehouse::Local("/tmp/w".into())));
        assert_eq!(parse("file:///tmp/w").ok(), Some(Warehouse::Local("/tmp/w".into())));
        assert_eq!(parse("file:/tmp/w").ok(), Some(Warehouse::Local("/tmp/w".into())));
        assert_eq!(parse("s3://b/lake/w/").ok(), Some(s3("b", "lake/w")));
        assert_eq!(parse("s3a://b").ok(), Some(s3("b", "")));
        for bad in ["", "s3://", "s3:///p", "gs://b/p", "s3://b/a/../c", "s3:b/p", "s3a:/b"] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        }
        assert_eq!(s3("b", "p").to_string(), "s3://b/p");
    }

    #[test]
    fn a_local_warehouse_has_one_root_however_it_is_spelled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = Store::new(&Warehouse::Local(dir.path().join("w"))).expect("store");
        std::os::unix::fs::symlink(dir.path().join("w"), dir.path().join("link")).expect("symlink");
        let linked = Store::new(&Warehouse::Local(dir.path().join("link"))).expect("store");
        assert_eq!(linked.root(), real.root());
        assert_eq!(linked.key(&format!("{}/db/t", real.root())).ok().as_deref(), Some("db/t"));
        // A table created through the link before roots were resolved recorded its location under the link.
        let under_link = format!("file://{}/db/t", dir.path().join("link").display());
        assert_eq!(linked.key(&under_link).ok().as_deref(), Some("db/t"));
    }

    #[test]
    fn the_store_touches_nothing_outside_its_warehouse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(&Warehouse::Local(dir.path().join("w"))).expect("store");
        let root = store.root().to_string();
        assert_eq!(store.key(&format!("{root}/db/t/x.json")).ok().as_deref(), Some("db/t/x.json"));
        let plain = format!("{}/db/x", dir.path().join("w").display());
        assert_eq!(store.key(&plain).ok().as_deref(), Some("db/x"));
        for outside in [
            format!("{root}2/x"),
            format!("{root}/../x"),
            format!("{root}/."),
            "s3://b/x".to_string(),
            "/etc/passwd".into(),
        ] {
            assert!(store.key(&outside).is_err(), "{outside}");
        }
        let s3 = Warehouse::parse("s3://b/p", S3Settings::default()).expect("s3");
        let store = Store::new(&s3).expect("store");
        assert_eq!(store.key("s3://b/p/db/t").ok().as_deref(), Some("db/t"));
        assert_eq!(store.key("s3a://b/p/db/t").ok().as_deref(), Some("db/t"));
        assert!(store.key("s3://b/pq/db").is_err());
        // Reads may leave the warehouse, not the bucket: the cluster's offsets files.
        assert_eq!(store.readable("s3://b/remote/x.offsets").ok().map(|(_, k)| k).as_deref(), Some("remote/x.offsets"));
        assert_eq!(store.readable("/r/x.offsets").ok().map(|(_, k)| k).as_deref(), Some("/r/x.offsets"));
        assert!(store.readable("s3://c/x").is_err());
    }

    #[test]
    fn reads_outside_a_local_warehouse_stay_on_this_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = dir.path().join("w");
        let store = Store::new(&Warehouse::Local(w.clone())).expect("store");
        assert_eq!(store.readable("file:///r/x.offsets").ok().map(|(_, k)| k).as_deref(), Some("/r/x.offsets"));
        let inside = format!("{}/db/t", w.display());
        assert_eq!(store.readable(&inside).ok().map(|(_, k)| k).as_deref(), Some("db/t"));
        assert!(store.readable("s3://b/x").is_err() && store.readable("/r/../x").is_err());
    }

    #[tokio::test]
    async fn exclusive_creation_lists_reads_and_deletes_on_local_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Warehouse::Local(dir.path().join("w"))).await.expect("open");
        let file = store.uri("t/claims/1.0.json");
        assert!(store.create_exclusive(&file, b"one".to_vec()).await.expect("create"));
        assert!(!store.create_exclusive(&file, b"two".to_vec()).await.expect("create again"));
        assert_eq!(store.read(&file).await.expect("read").as_deref(), Some(&b"one"[..]));
        let listed = store.list(&store.uri("t")).await.expect("list");
        assert_eq!(listed.iter().map(|l| l.relative.as_str()).collect::<Vec<_>>(), ["claims/1.0.json"]);
        assert_eq!(listed[0].size, 3);
        assert!(listed[0].modified.is_some());
        assert!(store.list(&store.uri("none")).await.expect("list a missing dir").is_empty());
        store.delete(&file).await.expect("delete");
        store.delete(&file).await.expect("delete a missing file");
        assert_eq!(store.read(&file).await.expect("read"), None);
        store.create_exclusive(&store.uri("t/a/b.json"), b"x".to_vec()).await.expect("create");
        store.delete_all(&store.uri("t")).await.expect("delete all");
        assert!(store.list(&store.uri("t")).await.expect("list").is_empty());
    }
}
