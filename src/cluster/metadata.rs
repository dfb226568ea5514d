//! The cluster's table catalog: ids, paths, descriptors and partitions, persisted in `DATA_DIR/meta/tables.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cluster::persist::write_json;
use crate::error::{Error, ErrorKind, Result};
use crate::model::table::{Column, DatabaseInfo, TableDescriptor, TableInfo, TablePath};

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_table_id: i64,
    next_partition_id: i64,
    tables: BTreeMap<i64, TableInfo>,
    /// Databases created explicitly; a database that only holds tables (created through the gRPC door) exists too.
    #[serde(default)]
    databases: BTreeMap<String, DatabaseInfo>,
    /// The next idempotent writer id to hand out: ids are never reused, across restarts too.
    #[serde(default)]
    next_writer_id: i64,
}

/// The catalog. Every change is durable before it returns.
pub struct Metadata {
    file: PathBuf,
    state: State,
}

impl Metadata {
    pub fn open(file: PathBuf) -> Result<Self> {
        let state = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                // Most likely a data directory of an earlier version: a retry cannot help, a new directory can.
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{} cannot be read by this version of fluss-tiering ({e}); start the cluster on a new data \
                         directory",
                        file.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
        };
        Ok(Metadata { file, state })
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.state.tables.values()
    }

    pub fn by_id(&self, table_id: i64) -> Result<&TableInfo> {
        self.state
            .tables
            .get(&table_id)
            .ok_or_else(|| Error::new(ErrorKind::TableNotExist, format!("table with id {table_id} does not exist")))
    }

    pub fn by_path(&self, path: &TablePath) -> Result<&TableInfo> {
        self.state
            .tables
            .values()
            .find(|t| &t.path == path)
            .ok_or_else(|| Error::new(ErrorKind::TableNotExist, format!("table {path} does not exist")))
    }

    /// Every database: those created explicitly and those that hold tables.
    pub fn databases(&self) -> Vec<DatabaseInfo> {
        let mut all = self.state.databases.clone();
        for t in self.state.tables.values() {
            all.entry(t.path.database.clone()).or_insert_with(|| DatabaseInfo {
                name: t.path.database.clone(),
                comment: None,
                created_ms: t.created_ms,
                modified_ms: t.created_ms,
            });
        }
        all.into_values().collect()
    }

    pub fn database(&self, name: &str) -> Result<DatabaseInfo> {
        self.databases()
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Error::new(ErrorKind::DatabaseNotExist, format!("database {name} does not exist")))
    }

    pub fn create_database(&mut self, info: DatabaseInfo, ignore_if_exists: bool) -> Result<()> {
        TablePath::new(info.name.clone(), "t")
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("database name: {}", e.message())))?;
        if self.database(&info.name).is_ok() {
            return match ignore_if_exists {
                true => Ok(()),
                false => {
                    Err(Error::new(ErrorKind::DatabaseAlreadyExist, format!("database {} already exists", info.name)))
                }
            };
        }
        self.state.databases.insert(info.name.clone(), info);
        self.save()
    }

    /// Forgets a database, which must hold no tables by now; `false` when there was none.
    pub fn drop_database(&mut self, name: &str) -> Result<bool> {
        if self.state.tables.values().any(|t| t.path.database == name) {
            return Err(Error::new(ErrorKind::DatabaseNotEmpty, format!("database {name} still has tables")));
        }
        let existed = self.state.databases.remove(name).is_some();
        self.save()?;
        Ok(existed)
    }

    /// A new idempotent writer id, durable before it is handed out.
    pub fn new_writer_id(&mut self) -> Result<i64> {
        let id = self.state.next_writer_id;
        self.state.next_writer_id =
            id.checked_add(1).ok_or_else(|| Error::new(ErrorKind::Internal, "writer ids are exhausted"))?;
        self.save()?;
        Ok(id)
    }

    /// Creates a table; returns the existing one when it exists and `ignore_if_exists` is set.
    pub fn create(
        &mut self,
        path: TablePath,
        descriptor: TableDescriptor,
        ignore_if_exists: bool,
        now_ms: i64,
    ) -> Result<TableInfo> {
        descriptor.validate()?;
        if let Ok(existing) = self.by_path(&path) {
            if ignore_if_exists {
                return Ok(existing.clone());
            }
            return Err(Error::new(ErrorKind::TableAlreadyExist, format!("table {path} already exists")));
        }
        let table_id = self.state.next_table_id;
        let info = TableInfo {
            table_id,
            path,
            descriptor,
            created_ms: now_ms,
            modified_ms: now_ms,
            partitions: BTreeMap::new(),
        };
        self.state.next_table_id += 1;
        self.state.tables.insert(table_id, info.clone());
        self.save()?;
        Ok(info)
    }

    /// Adds a nullable column at the end of a table's schema; returns the new schema id (its column count).
    pub fn add_column(&mut self, path: &TablePath, column: Column, now_ms: i64) -> Result<i32> {
        let id = self.by_path(path)?.table_id;
        let table = self.state.tables.get_mut(&id).ok_or_else(|| Error::new(ErrorKind::Internal, "table vanished"))?;
        if column.name.is_empty() || column.name.starts_with("__") {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("invalid column name {:?}", column.name)));
        }
        if table.descriptor.column(&column.name).is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("table {path} already has a column {:?}", column.name),
            ));
        }
        table.descriptor.columns.push(column);
        table.modified_ms = now_ms;
        let schema_id = table.descriptor.columns.len() as i32;
        self.save()?;
        Ok(schema_id)
    }

    /// Drops a table; returns its id, or `None` when absent and `ignore_if_not_exists` is set.
    pub fn drop_table(&mut self, path: &TablePath, ignore_if_not_exists: bool) -> Result<Option<i64>> {
        let id = match self.by_path(path) {
            Ok(t) => t.table_id,
            Err(_) if ignore_if_not_exists => return Ok(None),
            Err(e) => return Err(e),
        };
        self.state.tables.remove(&id);
        self.save()?;
        Ok(Some(id))
    }

    /// The id of a partition, creating it when it does not exist yet.
    pub fn partition_id_or_create(&mut self, table_id: i64, name: &str, now_ms: i64) -> Result<i64> {
        self.create_partition(table_id, name, now_ms).map(|(id, _)| id)
    }

    /// Creates a partition unless it exists; returns its id and whether it is new.
    pub fn create_partition(&mut self, table_id: i64, name: &str, now_ms: i64) -> Result<(i64, bool)> {
        if name.is_empty() || name.len() > 200 || name.contains(['/', '\\', '\0']) {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("invalid partition name {name:?}")));
        }
        let next = self.state.next_partition_id;
        let table =
            self.state.tables.get_mut(&table_id).ok_or_else(|| {
                Error::new(ErrorKind::TableNotExist, format!("table with id {table_id} does not exist"))
            })?;
        if let Some(id) = table.partitions.get(name) {
            return Ok((*id, false));
        }
        table.partitions.insert(name.to_string(), next);
        table.modified_ms = now_ms;
        self.state.next_partition_id += 1;
        self.save()?;
        Ok((next, true))
    }

    fn save(&self) -> Result<()> {
        write_json(&self.file, &self.state)
    }
}
