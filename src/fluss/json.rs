//! Fluss's JSON forms (`TableDescriptorJsonSerde`, `SchemaJsonSerde`, `DataTypeJsonSerde`): a table descriptor as
//! CreateTable carries it and GetTableInfo / MetaData return it, translated to and from the model's descriptor.
//!
//! Keys are written in Java's order. The types the model has map one to one (INTEGER ↔ int32, TIMESTAMP(6) ↔
//! timestamp, BYTES ↔ binary, …); any other type, or a table shape the model cannot hold (several partition keys,
//! bucket keys on a log table, custom properties), is refused with an error that names it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::table::{Column, ColumnType, TableDescriptor};

#[derive(Debug, Serialize, Deserialize)]
struct TableJson {
    version: i32,
    schema: SchemaJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    partition_key: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bucket_key: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bucket_count: Option<i64>,
    properties: BTreeMap<String, String>,
    custom_properties: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SchemaJson {
    version: i32,
    columns: Vec<ColumnJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_key: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto_increment_column: Option<Vec<String>>,
    #[serde(default)]
    highest_field_id: i32,
}

#[derive(Debug, Serialize, Deserialize)]
struct ColumnJson {
    name: String,
    data_type: DataTypeJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agg_function: Option<serde_json::Value>,
    #[serde(default)]
    id: i32,
}

#[derive(Debug, Serialize, Deserialize)]
struct DataTypeJson {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nullable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    precision: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale: Option<u32>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidTable, message)
}

/// What the server adds to a descriptor at CreateTable, as a Java coordinator configured for a lake does.
#[derive(Debug, Clone)]
pub struct CreateDefaults {
    /// `default.bucket.number`.
    pub buckets: u32,
}

/// Parses a CreateTable `table_json` into the model's descriptor, with the server's defaults applied.
pub fn parse_table(json: &[u8], defaults: &CreateDefaults) -> Result<TableDescriptor> {
    let t: TableJson = serde_json::from_slice(json)
        .map_err(|e| Error::new(ErrorKind::InvalidTable, format!("table_json is not a Fluss table descriptor: {e}")))?;
    if t.comment.is_some() || !t.custom_properties.is_empty() {
        return Err(invalid("table comments and custom properties are not supported by this cluster yet"));
    }
    let primary_key = t.schema.primary_key.clone().unwrap_or_default();
    if t.schema.auto_increment_column.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(invalid("auto-increment columns are not supported"));
    }
    let partition_key = partition_key(&t)?;
    if let Some(c) = t.schema.columns.iter().find(|c| c.agg_function.is_some()) {
        return Err(invalid(format!("column {}: aggregation functions are not supported", c.name)));
    }
    let columns = columns(&t)?;
    let buckets = match t.bucket_count {
        None => defaults.buckets,
        Some(n) => u32::try_from(n).map_err(|_| invalid(format!("bucket count {n} is not valid")))?,
    };
    if t.properties.contains_key("table.statistics.columns") {
        // With it, Fluss 1.0 writers send batches of magic 1 (with statistics), which this cluster does not read.
        return Err(invalid("table.statistics.columns is not supported: this cluster reads log batches of magic 0"));
    }
    let mut properties = t.properties;
    properties.entry("table.replication.factor".into()).or_insert_with(|| "1".into());
    // Fluss tiers a table only when asked to; the model's default is the opposite, so the choice is written down.
    properties.entry("table.datalake.enabled".into()).or_insert_with(|| "false".into());
    let descriptor = TableDescriptor { columns, buckets, partition_key, primary_key, properties };
    // The bucket key a Fluss client sends for a primary-key table is the default one (its key less the partition
    // key); other bucket keys are not served yet.
    let default_bucket_key: Vec<String> = descriptor.physical_primary_key().cloned().collect();
    match t.bucket_key.as_deref() {
        None | Some([]) => {}
        Some(key) if descriptor.has_primary_key() && key == default_bucket_key.as_slice() => {}
        Some(_) if !descriptor.has_primary_key() => {
            return Err(invalid("bucket keys on log tables are not supported by this cluster yet"));
        }
        Some(key) => {
            return Err(invalid(format!(
                "bucket key {key:?}: only the default bucket key of a primary-key table ({default_bucket_key:?}) is \
                 supported"
            )));
        }
    }
    descriptor.validate().map_err(|e| invalid(e.message().to_string()))?;
    Ok(descriptor)
}

/// Reads a descriptor a server answered (GetTableInfo): as it is, primary keys included, no defaults added; only
/// what the model cannot hold at all (a type, several partition keys) is an error.
pub fn read_table(json: &[u8]) -> Result<TableDescriptor> {
    let t: TableJson = serde_json::from_slice(json).map_err(|e| {
        Error::new(ErrorKind::CorruptMessage, format!("table_json is not a Fluss table descriptor: {e}"))
    })?;
    let partition_key = partition_key(&t)?;
    let columns = columns(&t)?;
    let buckets = t.bucket_count.unwrap_or(1);
    let buckets = u32::try_from(buckets).map_err(|_| invalid(format!("bucket count {buckets} is not valid")))?;
    Ok(TableDescriptor {
        columns,
        buckets,
        partition_key,
        primary_key: t.schema.primary_key.unwrap_or_default(),
        properties: t.properties,
    })
}

/// The one partition key the model holds (several are refused).
fn partition_key(t: &TableJson) -> Result<Option<String>> {
    match t.partition_key.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        more => Err(invalid(format!("tables partitioned by several columns ({more:?}) are not supported"))),
    }
}

/// The columns in the model's types (a type the model lacks is refused).
fn columns(t: &TableJson) -> Result<Vec<Column>> {
    t.schema
        .columns
        .iter()
        .map(|c| Ok(Column { name: c.name.clone(), data_type: column_type(&c.name, &c.data_type)? }))
        .collect()
}

fn column_type(name: &str, t: &DataTypeJson) -> Result<ColumnType> {
    let unsupported = || {
        invalid(format!(
            "column {name}: type {} is not supported by this cluster (supported: BOOLEAN, TINYINT, SMALLINT, \
             INTEGER, BIGINT, FLOAT, DOUBLE, DECIMAL, CHAR, STRING, BINARY, BYTES, DATE, TIME, TIMESTAMP, \
             TIMESTAMP_LTZ)",
            describe(t)
        ))
    };
    let needs = |what: &str| invalid(format!("column {name}: type {} needs a {what}", describe(t)));
    let precision = || -> Result<u8> {
        let p = t.precision.ok_or_else(|| needs("precision"))?;
        u8::try_from(p)
            .ok()
            .filter(|p| *p <= 9)
            .ok_or_else(|| invalid(format!("column {name}: {} has a precision outside 0 to 9", describe(t))))
    };
    Ok(match t.type_name.as_str() {
        "BOOLEAN" => ColumnType::Bool,
        "TINYINT" => ColumnType::Int8,
        "SMALLINT" => ColumnType::Int16,
        "INTEGER" => ColumnType::Int32,
        "BIGINT" => ColumnType::Int64,
        "FLOAT" => ColumnType::Float32,
        "DOUBLE" => ColumnType::Float64,
        "STRING" => ColumnType::String,
        "BYTES" => ColumnType::Binary,
        "DATE" => ColumnType::Date,
        "CHAR" => ColumnType::Char { length: t.length.filter(|l| *l > 0).ok_or_else(|| needs("length"))? },
        "BINARY" => ColumnType::FixedBinary { length: t.length.filter(|l| *l > 0).ok_or_else(|| needs("length"))? },
        "TIME_WITHOUT_TIME_ZONE" => ColumnType::Time { precision: precision()? },
        "TIMESTAMP_WITHOUT_TIME_ZONE" => ColumnType::Timestamp { precision: precision()? },
        "TIMESTAMP_WITH_LOCAL_TIME_ZONE" => ColumnType::TimestampLtz { precision: precision()? },
        "DECIMAL" => {
            let precision = t.precision.and_then(|p| u8::try_from(p).ok()).filter(|p| (1..=38).contains(p));
            let scale = t.scale.unwrap_or(0);
            match precision {
                Some(p) if scale <= u32::from(p) => ColumnType::Decimal { precision: p, scale: scale as i8 },
                _ => return Err(invalid(format!("column {name}: {} is not a valid decimal", describe(t)))),
            }
        }
        _ => return Err(unsupported()),
    })
}

fn describe(t: &DataTypeJson) -> String {
    match (t.length, t.precision, t.scale) {
        (Some(l), _, _) => format!("{}({l})", t.type_name),
        (None, Some(p), Some(s)) => format!("{}({p},{s})", t.type_name),
        (None, Some(p), None) => format!("{}({p})", t.type_name),
        _ => t.type_name.clone(),
    }
}

fn type_json(t: ColumnType, nullable: bool) -> DataTypeJson {
    let plain = |name: &str| DataTypeJson {
        type_name: name.into(),
        nullable: (!nullable).then_some(false),
        length: None,
        precision: None,
        scale: None,
    };
    match t {
        ColumnType::Bool => plain("BOOLEAN"),
        ColumnType::Int8 => plain("TINYINT"),
        ColumnType::Int16 => plain("SMALLINT"),
        ColumnType::Int32 => plain("INTEGER"),
        ColumnType::Int64 => plain("BIGINT"),
        ColumnType::Float32 => plain("FLOAT"),
        ColumnType::Float64 => plain("DOUBLE"),
        ColumnType::String => plain("STRING"),
        ColumnType::Binary => plain("BYTES"),
        ColumnType::Date => plain("DATE"),
        ColumnType::Char { length } => DataTypeJson { length: Some(length), ..plain("CHAR") },
        ColumnType::FixedBinary { length } => DataTypeJson { length: Some(length), ..plain("BINARY") },
        ColumnType::Time { precision } => {
            DataTypeJson { precision: Some(u32::from(precision)), ..plain("TIME_WITHOUT_TIME_ZONE") }
        }
        ColumnType::Timestamp { precision } => {
            DataTypeJson { precision: Some(u32::from(precision)), ..plain("TIMESTAMP_WITHOUT_TIME_ZONE") }
        }
        ColumnType::TimestampLtz { precision } => {
            DataTypeJson { precision: Some(u32::from(precision)), ..plain("TIMESTAMP_WITH_LOCAL_TIME_ZONE") }
        }
        ColumnType::Decimal { precision, scale } => {
            DataTypeJson { precision: Some(u32::from(precision)), scale: Some(scale.max(0) as u32), ..plain("DECIMAL") }
        }
    }
}

fn schema_json(d: &TableDescriptor, columns: &[Column]) -> SchemaJson {
    let columns: Vec<ColumnJson> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| ColumnJson {
            name: c.name.clone(),
            data_type: type_json(c.data_type, !d.primary_key.contains(&c.name)),
            comment: None,
            agg_function: None,
            id: i as i32,
        })
        .collect();
    SchemaJson {
        version: 1,
        highest_field_id: columns.len() as i32 - 1,
        columns,
        primary_key: d.has_primary_key().then(|| d.primary_key.clone()),
        auto_increment_column: None,
    }
}

fn to_vec(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::new(ErrorKind::Internal, "writing Fluss JSON").with_source(e))
}

/// The descriptor as a Java server returns it (GetTableInfo, MetaData).
pub fn table_json(d: &TableDescriptor) -> Result<Vec<u8>> {
    let bucket_key = match d.has_primary_key() {
        true => d.physical_primary_key().cloned().collect(),
        false => Vec::new(),
    };
    to_vec(&TableJson {
        version: 1,
        schema: schema_json(d, &d.columns),
        comment: None,
        partition_key: d.partition_key.iter().cloned().collect(),
        bucket_key: Some(bucket_key),
        bucket_count: Some(i64::from(d.buckets)),
        properties: d.properties.clone(),
        custom_properties: BTreeMap::new(),
    })
}

/// The schema of `schema_id` (the first `schema_id` columns) as GetTableSchema returns it.
pub fn schema_json_of(d: &TableDescriptor, schema_id: i16) -> Result<Vec<u8>> {
    let n = d.arrow_schema_of(schema_id)?.fields().len();
    to_vec(&schema_json(d, &d.columns[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYFLUSS_CREATE: &str = r#"{"bucket_count":4,"bucket_key":[],"custom_properties":{},"partition_key":[],
        "properties":{"table.datalake.enabled":"true","table.datalake.freshness":"30s"},
        "schema":{"columns":[{"data_type":{"type":"BIGINT"},"id":0,"name":"id"},
                             {"data_type":{"type":"STRING"},"id":1,"name":"name"},
                             {"data_type":{"precision":6,"type":"TIMESTAMP_WITHOUT_TIME_ZONE"},"id":2,"name":"ts"}],
                  "highest_field_id":2,"version":1},
        "version":1}"#;

    fn defaults() -> CreateDefaults {
        CreateDefaults { buckets: 1 }
    }

    #[test]
    fn reads_what_pyfluss_sends_and_answers_as_java_does() {
        let d = parse_table(PYFLUSS_CREATE.as_bytes(), &defaults()).expect("parse");
        assert_eq!(d.buckets, 4);
        assert_eq!(
            d.columns.iter().map(|c| c.data_type).collect::<Vec<_>>(),
            vec![ColumnType::Int64, ColumnType::String, ColumnType::TIMESTAMP]
        );
        let out = String::from_utf8(table_json(&d).expect("json")).expect("utf-8");
        assert!(
            out.starts_with(
                r#"{"version":1,"schema":{"version":1,"columns":[{"name":"id","data_type":{"type":"BIGINT"},"id":0}"#
            ),
            "{out}"
        );
        assert!(out.contains(r#""partition_key":[],"bucket_key":[],"bucket_count":4,"properties":{"#), "{out}");
        assert!(out.contains(r#""data_type":{"type":"TIMESTAMP_WITHOUT_TIME_ZONE","precision":6}"#), "{out}");
        assert!(out.ends_with(r#""custom_properties":{}}"#), "{out}");
        // What we answer parses back to the same table.
        assert_eq!(parse_table(out.as_bytes(), &defaults()).expect("reparse"), d);
    }

    #[test]
    fn refuses_what_it_cannot_hold_by_name() {
        let with = |from: &str, to: &str| PYFLUSS_CREATE.replace(from, to);
        let cases = [
            (with(r#"{"type":"STRING"}"#, r#"{"type":"ARRAY","element_type":{"type":"INTEGER"}}"#), "type ARRAY"),
            (with(r#"{"type":"STRING"}"#, r#"{"type":"TIME_WITHOUT_TIME_ZONE"}"#), "needs a precision"),
            (with(r#""partition_key":[]"#, r#""partition_key":["id","name"]"#), "several columns"),
            (
                with(r#""highest_field_id":2"#, r#""highest_field_id":2,"primary_key":["id"]"#)
                    .replace(r#""bucket_key":[]"#, r#""bucket_key":["name"]"#),
                "only the default bucket key",
            ),
            (with(r#""bucket_key":[]"#, r#""bucket_key":["name"]"#), "bucket keys on log tables"),
            ("{}".to_string(), "not a Fluss table descriptor"),
        ];
        for (json, needle) in cases {
            let err = parse_table(json.as_bytes(), &defaults()).expect_err(needle);
            assert_eq!(err.kind(), ErrorKind::InvalidTable);
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }
}
