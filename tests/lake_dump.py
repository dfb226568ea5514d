"""Reads a lake table with a reader that is not ours (pyiceberg or pypaimon) and dumps it for the Rust tests.

usage: lake_dump.py WAREHOUSE DATABASE.TABLE OUT.arrow [--raw] [--allow-missing-markers] [--each-key KEYS.json]
                    [--catalog sqlite:PATH]

The format is the warehouse's: an Iceberg SQL catalog (--catalog, or WAREHOUSE/catalog.db) or a Paimon filesystem
catalog. WAREHOUSE is a local directory or s3://BUCKET/PREFIX; an S3 store is reached as the standard AWS variables
say (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), path-style.
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
import pyarrow.fs as pafs


def s3_settings():
    """The S3 store's settings from the AWS variables: (endpoint, access key, secret key, region)."""
    env = os.environ.get
    return env("AWS_ENDPOINT_URL"), env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"), env("AWS_REGION", "us-east-1")


class Store:
    """The warehouse's files through pyarrow's file systems: local, or S3 (paths as BUCKET/KEY)."""

    def __init__(self, warehouse: str):
        if warehouse.startswith("s3://"):
            endpoint, key, secret, region = s3_settings()
            self.fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key=key, secret_key=secret, region=region,
                                        force_virtual_addressing=False)
            self.base, self.uri = warehouse[len("s3://"):].rstrip("/"), warehouse.rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.base = os.path.abspath(warehouse)
            self.uri = f"file://{self.base}"

    def path(self, uri_or_path: str) -> str:
        """A file system path of a URI the lake names (file://…, s3://…) or of a local path."""
        for scheme in ("s3://", "file://", "file:"):
            if uri_or_path.startswith(scheme):
                return uri_or_path[len(scheme):]
        return uri_or_path

    def listdir(self, path: str):
        info = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return [i.base_name for i in info]

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_json(self, path: str):
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())


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


def read_iceberg(store: Store, catalog_uri: str, table_name: str):
    from pyiceberg.catalog.sql import SqlCatalog

    endpoint, key, secret, region = s3_settings()
    s3 = {"s3.endpoint": endpoint, "s3.access-key-id": key, "s3.secret-access-key": secret, "s3.region": region}
    s3 = {k: v for k, v in s3.items() if v} if store.uri.startswith("s3://") else {}
    # sqlite:PATH, as the job takes it, in SQLAlchemy's spelling.
    catalog = SqlCatalog("fluss", uri="sqlite:///" + catalog_uri[len("sqlite:"):], warehouse=store.uri, **s3)
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


def read_paimon(store: Store, table_name: str, raw: bool, allow_missing_markers: bool, each_key: str = None):
    from pypaimon import CatalogFactory

    options = {"warehouse": store.uri}
    if store.uri.startswith("s3://"):
        endpoint, key, secret, region = s3_settings()
        s3 = {"s3.endpoint": endpoint, "s3.access-key": key, "s3.secret-key": secret, "s3.region": region,
              "s3.path-style-access": "true"}
        options.update({k: v for k, v in s3.items() if v})
    catalog = CatalogFactory.create(options)
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
        tables = [pq.ParquetFile(store.fs.open_input_file(store.path(p))).read() for p in paths]
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
    location = f"{store.base}/{database}.db/{name}"
    snapshot_dir = f"{location}/snapshot"
    ids = sorted(
        int(f[len("snapshot-"):])
            for f in store.listdir(snapshot_dir)
            # A job killed while Paimon published a snapshot leaves its temporary file (snapshot-N.tmp-…).
            if f.startswith("snapshot-") and f[len("snapshot-"):].isdigit()
    )
    properties = {}
    for snapshot_id in reversed(ids):
        snapshot = store.read_json(f"{snapshot_dir}/snapshot-{snapshot_id}")
        if snapshot.get("commitUser") != "fluss-tiering":
            continue
        marker_path = f"{location}/fluss-offsets/{snapshot['commitIdentifier']}.json"
        if allow_missing_markers and not store.exists(marker_path):
            continue  # published by hand (a test's naive protocol): no marker to report
        marker = store.read_json(marker_path)
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
    catalog = sys.argv[sys.argv.index("--catalog") + 1] if "--catalog" in sys.argv else None
    store = Store(warehouse)
    if catalog is None and not warehouse.startswith("s3://") and os.path.exists(f"{store.base}/catalog.db"):
        catalog = f"sqlite:{store.base}/catalog.db"
    if catalog is not None:
        # Iceberg tables here are append-only: a scan is already every committed row as written.
        fmt, (data, summary) = "iceberg", read_iceberg(store, catalog, table_name)
    else:
        fmt, (data, summary) = "paimon", read_paimon(store, table_name, raw, allow_missing_markers, each_key)
    with pa.OSFile(out, "wb") as sink:
        with pa.ipc.new_file(sink, data.schema) as writer:
            writer.write_table(data)
    print(json.dumps({"format": fmt, "rows": data.num_rows, **summary}))


if __name__ == "__main__":
    main()
