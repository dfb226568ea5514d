//! Table metadata: paths, column types, schemas and the descriptor a table is created from.
//!
//! A descriptor travels as JSON (`table_json` in the RPC) and is stored the same way in the cluster's catalog.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Fluss's default for `table.datalake.freshness`.
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(180);

/// `database.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TablePath {
    pub database: String,
    pub table: String,
}

impl TablePath {
    pub fn new(database: impl Into<String>, table: impl Into<String>) -> Result<Self> {
        let path = TablePath { database: database.into(), table: table.into() };
        for part in [&path.database, &path.table] {
            let valid = !part.is_empty()
                && part.len() <= 200
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("invalid name {part:?}: use 1-200 characters of [A-Za-z0-9_-]"),
                ));
            }
        }
        Ok(path)
    }
}

impl FromStr for TablePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('.') {
            Some((db, table)) if !table.contains('.') => TablePath::new(db, table),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("table path {s:?} is not of the form database.table"),
            )),
        }
    }
}

impl fmt::Display for TablePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}

/// The column types a table may have: Fluss's scalar types, spelled as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Bool,
    /// TINYINT.
    Int8,
    /// SMALLINT.
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    String,
    /// CHAR(n): a string the writer pads or limits to `length` characters (stored as a string).
    Char {
        length: u32,
    },
    /// BYTES: variable-length bytes.
    Binary,
    /// BINARY(n): exactly `length` bytes.
    FixedBinary {
        length: u32,
    },
    Date,
    /// TIME(p): time of day, `precision` fractional digits (0 to 9).
    Time {
        precision: u8,
    },
    /// TIMESTAMP(p), without a time zone; `timestamp` alone is TIMESTAMP(6).
    Timestamp {
        precision: u8,
    },
    /// TIMESTAMP_LTZ(p): an instant, shown in the reader's time zone.
    TimestampLtz {
        precision: u8,
    },
}

/// The Arrow unit of a fractional-seconds precision (Fluss's rule: 0 s, 1–3 ms, 4–6 µs, 7–9 ns).
fn time_unit(precision: u8) -> TimeUnit {
    match precision {
        0 => TimeUnit::Second,
        1..=3 => TimeUnit::Millisecond,
        4..=6 => TimeUnit::Microsecond,
        _ => TimeUnit::Nanosecond,
    }
}

impl ColumnType {
    /// TIMESTAMP(6), what `timestamp` means.
    pub const TIMESTAMP: ColumnType = ColumnType::Timestamp { precision: 6 };

    pub fn to_arrow(self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int8 => DataType::Int8,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            ColumnType::String | ColumnType::Char { .. } => DataType::Utf8,
            ColumnType::Binary => DataType::Binary,
            ColumnType::FixedBinary { length } => DataType::FixedSizeBinary(length.min(i32::MAX as u32) as i32),
            ColumnType::Date => DataType::Date32,
            ColumnType::Time { precision } => match time_unit(precision) {
                unit @ (TimeUnit::Second | TimeUnit::Millisecond) => DataType::Time32(unit),
                unit => DataType::Time64(unit),
            },
            ColumnType::Timestamp { precision } => DataType::Timestamp(time_unit(precision), None),
            ColumnType::TimestampLtz { precision } => DataType::Timestamp(time_unit(precision), Some("UTC".into())),
        }
    }
}

impl ColumnType {
    /// The column type whose Arrow type is `arrow` (what a Parquet or CSV file's columns become); `None` for Arrow
    /// types no Fluss column has.
    pub fn from_arrow(arrow: &DataType) -> Option<ColumnType> {
        let precision = |unit: &TimeUnit| match unit {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 3,
            TimeUnit::Microsecond => 6,
            TimeUnit::Nanosecond => 9,
        };
        Some(match arrow {
            DataType::Boolean => ColumnType::Bool,
            DataType::Int8 => ColumnType::Int8,
            DataType::Int16 => ColumnType::Int16,
            DataType::Int32 => ColumnType::Int32,
            DataType::Int64 => ColumnType::Int64,
            DataType::Float32 => ColumnType::Float32,
            DataType::Float64 => ColumnType::Float64,
            DataType::Decimal128(precision, scale) if *scale >= 0 => {
                ColumnType::Decimal { precision: *precision, scale: *scale }
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::String,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ColumnType::Binary,
            DataType::FixedSizeBinary(n) => ColumnType::FixedBinary { length: u32::try_from(*n).ok()? },
            DataType::Date32 => ColumnType::Date,
            DataType::Time32(unit) | DataType::Time64(unit) => ColumnType::Time { precision: precision(unit) },
            DataType::Timestamp(unit, None) => ColumnType::Timestamp { precision: precision(unit) },
            DataType::Timestamp(unit, Some(_)) => ColumnType::TimestampLtz { precision: precision(unit) },
            _ => return None,
        })
    }
}

const TYPE_NAMES: &str = "bool, int8, int16, int32, int64, float32, float64, decimal(P,S), string, char(N), binary, \
                          binary(N), date, time[(P)], timestamp[(P)] or timestamp_ltz[(P)]";

impl FromStr for ColumnType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let plain = match s.as_str() {
            "bool" | "boolean" => Some(ColumnType::Bool),
            "int8" | "tinyint" => Some(ColumnType::Int8),
            "int16" | "smallint" => Some(ColumnType::Int16),
            "int32" | "int" => Some(ColumnType::Int32),
            "int64" | "bigint" => Some(ColumnType::Int64),
            "float32" | "float" => Some(ColumnType::Float32),
            "float64" | "double" => Some(ColumnType::Float64),
            "string" => Some(ColumnType::String),
            "binary" | "bytes" => Some(ColumnType::Binary),
            "date" => Some(ColumnType::Date),
            "time" => Some(ColumnType::Time { precision: 0 }),
            "timestamp" => Some(ColumnType::TIMESTAMP),
            "timestamp_ltz" => Some(ColumnType::TimestampLtz { precision: 6 }),
            _ => None,
        };
        if let Some(t) = plain {
            return Ok(t);
        }
        let bad =
            || Error::new(ErrorKind::InvalidArgument, format!("unknown column type {s:?}: expected {TYPE_NAMES}"));
        let (name, args) = s.strip_suffix(')').and_then(|r| r.split_once('(')).ok_or_else(bad)?;
        let number = |v: &str| v.trim().parse::<u32>().map_err(|_| bad());
        let precision = |v: &str| {
            let p = number(v)?;
            u8::try_from(p)
                .ok()
                .filter(|p| *p <= 9)
                .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, format!("{s}: the precision must be 0 to 9")))
        };
        let length = |v: &str| {
            let n = number(v)?;
            if n == 0 {
                return Err(Error::new(ErrorKind::InvalidArgument, format!("{s}: the length must be at least 1")));
            }
            Ok(n)
        };
        match name.trim() {
            "char" => Ok(ColumnType::Char { length: length(args)? }),
            "binary" => Ok(ColumnType::FixedBinary { length: length(args)? }),
            "time" => Ok(ColumnType::Time { precision: precision(args)? }),
            "timestamp" => Ok(ColumnType::Timestamp { precision: precision(args)? }),
            "timestamp_ltz" => Ok(ColumnType::TimestampLtz { precision: precision(args)? }),
            "decimal" => {
                let (p, sc) = args.split_once(',').ok_or_else(bad)?;
                let precision: u8 = p.trim().parse().map_err(|_| bad())?;
                let scale: i8 = sc.trim().parse().map_err(|_| bad())?;
                if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!("decimal({precision},{scale}): precision must be 1..=38 and 0 <= scale <= precision"),
                    ));
                }
                Ok(ColumnType::Decimal { precision, scale })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Bool => write!(f, "bool"),
            ColumnType::Int8 => write!(f, "int8"),
            ColumnType::Int16 => write!(f, "int16"),
            ColumnType::Int32 => write!(f, "int32"),
            ColumnType::Int64 => write!(f, "int64"),
            ColumnType::Float32 => write!(f, "float32"),
            ColumnType::Float64 => write!(f, "float64"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::String => write!(f, "string"),
            ColumnType::Char { length } => write!(f, "char({length})"),
            ColumnType::Binary => write!(f, "binary"),
            ColumnType::FixedBinary { length } => write!(f, "binary({length})"),
            ColumnType::Date => write!(f, "date"),
            ColumnType::Time { precision } => write!(f, "time({precision})"),
            ColumnType::Timestamp { precision: 6 } => write!(f, "timestamp"),
            ColumnType::Timestamp { precision } => write!(f, "timestamp({precision})"),
            ColumnType::TimestampLtz { precision } => write!(f, "timestamp_ltz({precision})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: ColumnType,
}

/// Parses `"id:int64,name:string,amount:decimal(10,2)"`.
pub fn parse_schema(spec: &str) -> Result<Vec<Column>> {
    let mut columns: Vec<Column> = Vec::new();
    let mut rest = spec.trim();
    while !rest.is_empty() {
        // Commas inside `decimal(P,S)` do not separate columns.
        let mut depth = 0usize;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                c == ',' && depth == 0
            })
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let item = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("").trim();
        let (name, ty) = item.split_once(':').ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, format!("column {item:?} is not of the form name:type"))
        })?;
        let name = name.trim();
        if name.is_empty() || name.starts_with("__") {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("invalid column name {name:?}: names must be non-empty and must not start with '__'"),
            ));
        }
        if columns.iter().any(|c| c.name == name) {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("duplicate column {name:?}")));
        }
        columns.push(Column { name: name.to_string(), data_type: ty.parse()? });
    }
    if columns.is_empty() {
        return Err(Error::new(ErrorKind::InvalidArgument, "a schema needs at least one column"));
    }
    Ok(columns)
}

/// The columns of `batch` for `fields`, taken by name: a field the batch lacks (a column added after the batch was
/// stored) reads as null.
pub fn align_columns(
    fields: &[arrow::datatypes::FieldRef],
    batch: &arrow::array::RecordBatch,
) -> Vec<arrow::array::ArrayRef> {
    fields
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => Arc::clone(c),
            None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect()
}

/// The Arrow schema of `columns`, every field nullable (as the table's columns are).
pub fn arrow_schema_of(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(columns.iter().map(|c| Field::new(&c.name, c.data_type.to_arrow(), true)).collect::<Vec<_>>()))
}

/// Everything needed to create a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDescriptor {
    pub columns: Vec<Column>,
    pub buckets: u32,
    #[serde(default)]
    pub partition_key: Option<String>,
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Fluss table options, e.g. `table.datalake.enabled`, `table.datalake.freshness`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The option that turns tiering on for a table.
pub const DATALAKE_ENABLED: &str = "table.datalake.enabled";
/// How stale the lake copy may become (also the longest a tiering round may run).
pub const DATALAKE_FRESHNESS: &str = "table.datalake.freshness";

impl TableDescriptor {
    /// Checks what a create-table request can get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.columns.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "a table needs at least one column"));
        }
        if !(1..=1024).contains(&self.buckets) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("bucket count {} is not in 1..=1024", self.buckets),
            ));
        }
        if let Some(key) = &self.partition_key {
            let column = self.column(key).ok_or_else(|| {
                Error::new(ErrorKind::InvalidArgument, format!("partition key {key:?} is not a column"))
            })?;
            if !matches!(
                column.data_type,
                ColumnType::String | ColumnType::Int32 | ColumnType::Int64 | ColumnType::Date
            ) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("partition key {key:?} has type {}; use string, int32, int64 or date", column.data_type),
                ));
            }
        }
        for key in &self.primary_key {
            if self.column(key).is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("primary key column {key:?} is not a column"),
                ));
            }
        }
        if let Some(key) = &self.partition_key
            && self.has_primary_key()
            && !self.primary_key.contains(key)
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("the primary key of a partitioned table must include the partition key {key:?}"),
            ));
        }
        self.freshness()?;
        self.datalake_enabled()?;
        self.log_compression()?;
        Ok(())
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn is_partitioned(&self) -> bool {
        self.partition_key.is_some()
    }

    pub fn has_primary_key(&self) -> bool {
        !self.primary_key.is_empty()
    }

    /// The primary key less the partition column: what a key's bytes hold, and Fluss's default bucket key.
    pub fn physical_primary_key(&self) -> impl Iterator<Item = &String> {
        self.primary_key.iter().filter(|k| self.partition_key.as_ref() != Some(*k))
    }

    /// The Arrow schema of the table's records (all columns nullable).
    pub fn arrow_schema(&self) -> SchemaRef {
        arrow_schema_of(&self.columns)
    }

    /// The id of the current schema: the column count (columns are only ever added, at the end, so schema `n` is
    /// the first `n` columns).
    pub fn schema_id(&self) -> i16 {
        i16::try_from(self.columns.len()).unwrap_or(i16::MAX)
    }

    /// The Arrow schema of records written under `schema_id`.
    pub fn arrow_schema_of(&self, schema_id: i16) -> Result<SchemaRef> {
        let n =
            usize::try_from(schema_id).ok().filter(|&n| (1..=self.columns.len()).contains(&n)).ok_or_else(|| {
                Error::new(
                    ErrorKind::SchemaNotExist,
                    format!("schema id {schema_id} does not exist (the current one is {})", self.schema_id()),
                )
            })?;
        let schema = self.arrow_schema();
        Ok(match n == schema.fields().len() {
            true => schema,
            false => Arc::new(Schema::new(schema.fields()[..n].to_vec())),
        })
    }

    /// How log batches are compressed: `table.log.arrow.compression.type`, ZSTD unless set.
    pub fn log_compression(&self) -> Result<crate::model::record::Compression> {
        crate::model::record::Compression::from_property(
            self.properties.get("table.log.arrow.compression.type").map(String::as_str),
        )
    }

    /// `table.datalake.freshness`, 3 minutes unless set.
    pub fn freshness(&self) -> Result<Duration> {
        match self.properties.get(DATALAKE_FRESHNESS) {
            None => Ok(DEFAULT_FRESHNESS),
            Some(v) => parse_duration(v),
        }
    }

    /// `table.datalake.enabled`, true unless set to false: this cluster exists to be tiered.
    pub fn datalake_enabled(&self) -> Result<bool> {
        match self.properties.get(DATALAKE_ENABLED).map(|s| s.as_str()) {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{DATALAKE_ENABLED} must be true or false, not {other:?}"),
            )),
        }
    }
}

/// Parses durations such as `500ms`, `30s`, `3min`, `3m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad =
        || Error::new(ErrorKind::InvalidArgument, format!("invalid duration {s:?}: use e.g. 500ms, 30s, 3min, 1h"));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(Error::new(ErrorKind::InvalidArgument, format!("duration {s:?} must be positive")));
    }
    Ok(d)
}

/// A database as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    pub name: String,
    #[serde(default)]
    pub comment: Option<String>,
    pub created_ms: i64,
    pub modified_ms: i64,
}

/// A table as the cluster knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableInfo {
    pub table_id: i64,
    pub path: TablePath,
    pub descriptor: TableDescriptor,
    pub created_ms: i64,
    pub modified_ms: i64,
    /// Partition name → partition id, for partitioned tables.
    #[serde(default)]
    pub partitions: BTreeMap<String, i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schema_with_decimal() {
        let cols = parse_schema("id:int64, amount:decimal(10,2),name:string").expect("valid");
        assert_eq!(cols.len(), 3);
        assert_eq!(cols[1].data_type, ColumnType::Decimal { precision: 10, scale: 2 });
        assert!(parse_schema("id:int64,id:string").is_err());
        assert!(parse_schema("id:uint8").is_err());
        assert!(parse_schema("__offset:int64").is_err());
        assert!(parse_schema("amount:decimal(50,2)").is_err());
    }

    #[test]
    fn every_type_parses_prints_and_maps_to_arrow() {
        let spec = "a:int8,b:int16,c:char(3),d:binary(4),e:time(3),f:timestamp(9),g:timestamp_ltz(3),h:timestamp,\
                    i:time";
        let cols = parse_schema(spec).expect("valid");
        let printed: Vec<String> = cols.iter().map(|c| format!("{}:{}", c.name, c.data_type)).collect();
        assert_eq!(parse_schema(&printed.join(",")).expect("printed types parse"), cols);
        let arrow: Vec<DataType> = cols.iter().map(|c| c.data_type.to_arrow()).collect();
        assert_eq!(
            arrow,
            vec![
                DataType::Int8,
                DataType::Int16,
                DataType::Utf8,
                DataType::FixedSizeBinary(4),
                DataType::Time32(TimeUnit::Millisecond),
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                DataType::Timestamp(TimeUnit::Microsecond, None),
                DataType::Time32(TimeUnit::Second),
            ]
        );
        assert!(parse_schema("t:time(10)").is_err());
        assert!(parse_schema("c:char(0)").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("3min").ok(), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("250ms").ok(), Some(Duration::from_millis(250)));
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn table_paths() {
        assert!("db.t".parse::<TablePath>().is_ok());
        assert!("db".parse::<TablePath>().is_err());
        assert!("a.b.c".parse::<TablePath>().is_err());
        assert!("d b.t".parse::<TablePath>().is_err());
    }
}
