"""Reads a lake table with a reader that is not ours (pyiceberg or pypaimon) and dumps it for the Rust tests.

usage: lake_dump.py WAREHOUSE DATABASE.TABLE OUT.arrow [--raw] [--allow-missing-markers] [--each-key KEYS.json]

The format is the warehouse's: an Iceberg SQL catalog (WAREHOUSE/catalog.db) or a Paimon filesystem catalog.
Writes every row of the table's current snapshot to OUT.arrow (Arrow IPC file) and prints one JSON line:
{"format": F, "rows": N, "snapshots": N, "current_snapshot_id": ID, "properties": {...tiering marker...},
 "files": [data file paths the current snapshot references]}

For Iceberg, the marker's offsets are read from the offsets file its `fluss-offsets` property names (shown as
`fluss-offsets-file`). For Paimon, a primary-key table is read merged (its latest row per key), and the tiering marker is the offsets file
the latest tiering snapshot names by its commit identifier. With --raw, every row of every data file the current
snapshot references is dumped as it sits in its file (its system columns, partition and primary key), unmerged: a change committed twice shows twice there, where a
merged read would hide it. With --each-key (Paimon), the table is read once per key of KEYS.json (a list of
{column: value}), filtered on it, so that pypaimon prunes buckets by its own hash of the key; the dump holds every row
found, and the JSON line adds "per_key": for each key, [rows found, buckets the read planned].
"""
import json
import os
import sys

import pyarrow as pa


def bucket_offsets(content):
    """The offsets of an offsets file as a list of {partition_id?, bucket, offset}: a cluster's file is Fluss's JSON
    (an array per partition, indexed by bucket, -1 unknown); files of earlier versions hold that list already."""
    if isinstance(content, list):
        return content
    out = []
    rows = [(None, content["bucket_offsets"])] if "bucket_offsets" in content else [
        (p["partition_id"], p["bucket_offsets"]) for p in content.get("partition_offsets", [])]
    for partition_id, offsets in rows:
        for bucket, offset in enumerate(offsets):
            if offset >= 0:
                entry = {"bucket": bucket, "offset": offset}
                if partition_id is not None:
                    entry["partition_id"] = partition_id
                out.append(entry)
    return out


def read_iceberg(warehouse: str, table_name: str):
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("fluss", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}")
    table = catalog.load_table(table_name)
    current = table.current_snapshot()
    properties = dict(current.summary.additional_properties) if current else {}
    offsets = properties.get("fluss-offsets")
    if offsets is not None and not offsets.lstrip().startswith("["):
        # The snapshot names the file that holds its offsets.
        properties["fluss-offsets-file"] = offsets
        with table.io.new_input(offsets).open() as f:
            properties["fluss-offsets"] = json.dumps(bucket_offsets(json.loads(f.read().decode())))
    return table.scan().to_arrow(), {
        "files": [task.file.file_path for task in table.scan().plan_files()],
        "snapshots": len(table.snapshots()),
        "current_snapshot_id": current.snapshot_id if current else None,
        "properties": properties,
    }


def read_each_key(table, keys_file: str):
    with open(keys_file) as f:
        keys = json.load(f)
    found, per_key = [], []
    for key in keys:
        read_builder = table.new_read_builder()
        pb = read_builder.new_predicate_builder()
        read_builder = read_builder.with_filter(pb.and_predicates([pb.equal(c, v) for c, v in key.items()]))
        splits = read_builder.new_scan().plan().splits()
        rows = read_builder.new_read().to_arrow(splits)
        per_key.append([rows.num_rows, len({s.bucket for s in splits})])
        found.append(rows)
    return pa.concat_tables(found), per_key


def read_paimon(warehouse: str, table_name: str, raw: bool, allow_missing_markers: bool, each_key: str = None):
    from pypaimon import CatalogFactory

    catalog = CatalogFactory.create({"warehouse": f"file://{warehouse}"})
    table = catalog.get_table(table_name)
    read_builder = table.new_read_builder()
    splits = read_builder.new_scan().plan().splits()
    per_key = None
    if each_key:
        data, per_key = read_each_key(table, each_key)
    elif raw:
        import pyarrow.parquet as pq

        paths = [p for split in splits for p in split.file_paths]
        # One file at a time: a dataset read would add partition columns from the path (region=…).
        tables = [pq.ParquetFile(p[len("file://"):] if p.startswith("file://") else p).read() for p in paths]
        keys = [c for c in table.partition_keys if c]
        types = {"__bucket": pa.int32(), "__offset": pa.int64(), **{k: pa.string() for k in keys}}
        columns = list(types)
        # The primary key too, to tell the rows of a snapshot (offset -1) apart.
        key_columns = [k for k in (getattr(table, "primary_keys", None) or []) if k not in types]
        # Files may store a partition column dictionary-encoded: every part is cast to one plain schema.
        parts = [pa.table({**{c: t.column(c).cast(types[c]) for c in columns}, **{k: t.column(k) for k in key_columns}})
                 for t in tables]
        data = pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.int64()) for c in columns})
    else:
        data = read_builder.new_read().to_arrow(splits)
    database, name = table_name.split(".", 1)
    location = os.path.join(warehouse, f"{database}.db", name)
    snapshot_dir = os.path.join(location, "snapshot")
    ids = sorted(
        int(f[len("snapshot-"):])
            for f in os.listdir(snapshot_dir)
            # A job killed while Paimon published a snapshot leaves its temporary file (snapshot-N.tmp-…).
            if f.startswith("snapshot-") and f[len("snapshot-"):].isdigit()
    ) if os.path.isdir(snapshot_dir) else []
    properties = {}
    for snapshot_id in reversed(ids):
        with open(os.path.join(snapshot_dir, f"snapshot-{snapshot_id}")) as f:
            snapshot = json.load(f)
        if snapshot.get("commitUser") != "fluss-tiering":
            continue
        marker_path = os.path.join(location, "fluss-offsets", f"{snapshot['commitIdentifier']}.json")
        if allow_missing_markers and not os.path.exists(marker_path):
            continue  # published by hand (a test's naive protocol): no marker to report
        with open(marker_path) as f:
            marker = json.load(f)
        properties = {
            "fluss-offsets": json.dumps(marker["offsets"]),
            "fluss-tiering-epoch": str(marker["tiering_epoch"]),
            "fluss-round-id": marker["round_id"],
            "fluss-table-id": str(marker["table_id"]),
        }
        if marker.get("offsets_file"):
            properties["fluss-offsets-file"] = marker["offsets_file"]
        break
    extra = {} if per_key is None else {"per_key": per_key}
    return data, {
        **extra,
        "files": [p for split in splits for p in split.file_paths],
        "snapshots": len(ids),
        "current_snapshot_id": ids[-1] if ids else None,
        "properties": properties,
    }


def main() -> None:
    warehouse, table_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
    raw = "--raw" in sys.argv[4:]
    allow_missing_markers = "--allow-missing-markers" in sys.argv[4:]
    each_key = sys.argv[sys.argv.index("--each-key") + 1] if "--each-key" in sys.argv else None
    warehouse = os.path.abspath(warehouse)
    if os.path.exists(os.path.join(warehouse, "catalog.db")):
        # Iceberg tables here are append-only: a scan is already every committed row as written.
        fmt, (data, summary) = "iceberg", read_iceberg(warehouse, table_name)
    else:
        fmt, (data, summary) = "paimon", read_paimon(warehouse, table_name, raw, allow_missing_markers, each_key)
    with pa.OSFile(out, "wb") as sink:
        with pa.ipc.new_file(sink, data.schema) as writer:
            writer.write_table(data)
    print(json.dumps({"format": fmt, "rows": data.num_rows, **summary}))


if __name__ == "__main__":
    main()
