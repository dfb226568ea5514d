"""Commits to a lake table as Fluss's own tiering service (the Flink job) does, for the Rust tests.

usage: fluss_commit.py WAREHOUSE DATABASE.TABLE SCAN.arrow REMOTE_DIR TABLE_ID [iceberg|paimon]

Appends, in one snapshot, the rows of SCAN.arrow (a pyfluss scan with __bucket and __offset) at or above the offsets
the table's latest snapshot names, with the system columns, and writes the offsets the snapshot reaches as Fluss's
coordinator writes an offsets file ({"version":1,"table_id":…,"bucket_offsets":[…]}, under
REMOTE_DIR/lake/DB/TABLE-ID/metadata/). The snapshot carries what Fluss's committers put there and nothing of ours:
Iceberg, a summary with `commit-user = __fluss_lake_tiering` and `fluss-offsets` = the file's path; Paimon (through
pypaimon), commit user `__fluss_lake_tiering`, the batch identifier (Long.MAX_VALUE) and the property `fluss-offsets`.
Prints one JSON line:
{"snapshot_id": ID, "rows": N, "offsets_file": PATH, "bucket_offsets": [...]}.
"""

import json
import os
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog


FLUSS_USER = "__fluss_lake_tiering"


def paimon_offsets_file(location: str) -> str:
    """The offsets file of the newest tiering snapshot: ours names it in our marker, Fluss's in its properties."""
    snapshot_dir = os.path.join(location, "snapshot")
    ids = sorted(int(f[len("snapshot-"):]) for f in os.listdir(snapshot_dir)
                 if f.startswith("snapshot-") and f[len("snapshot-"):].isdigit())
    for snapshot_id in reversed(ids):
        with open(os.path.join(snapshot_dir, f"snapshot-{snapshot_id}")) as f:
            snapshot = json.load(f)
        if snapshot["commitUser"] == "fluss-tiering":
            with open(os.path.join(location, "fluss-offsets", f"{snapshot['commitIdentifier']}.json")) as f:
                return json.load(f)["offsets_file"]
        if snapshot["commitUser"] == FLUSS_USER:
            return snapshot["properties"]["fluss-offsets"]
    raise SystemExit("no tiering snapshot")


def main(warehouse: str, name: str, scan_path: str, remote_dir: str, table_id: str, fmt: str = "iceberg"):
    database, table_name = name.split(".")
    if fmt == "paimon":
        from pypaimon import CatalogFactory
        from pypaimon.schema.data_types import PyarrowFieldParser
        table = CatalogFactory.create({"warehouse": f"file://{warehouse}"}).get_table(name)
        tiered_file = paimon_offsets_file(os.path.join(warehouse, f"{database}.db", table_name))
        schema = PyarrowFieldParser.from_paimon_schema(table.table_schema.fields)
    else:
        catalog = SqlCatalog("fluss", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}")
        table = catalog.load_table(name)
        tiered_file = table.current_snapshot().summary.additional_properties["fluss-offsets"]
        schema = table.schema().as_arrow()
    with open(tiered_file) as f:
        tiered = json.loads(f.read())["bucket_offsets"]

    scanned = pa.ipc.open_file(scan_path).read_all()
    buckets = scanned["__bucket"].to_pylist()
    offsets = scanned["__offset"].to_pylist()
    keep = pa.array([o >= tiered[b] for b, o in zip(buckets, offsets)])
    rows = scanned.filter(keep)
    ends = list(tiered)
    for b, o in zip(rows["__bucket"].to_pylist(), rows["__offset"].to_pylist()):
        ends[b] = max(ends[b], o + 1)

    # Whole milliseconds: Fluss's own layout keeps `__timestamp` in milliseconds (TIMESTAMP_LTZ(3)).
    now = pa.array([int(time.time() * 1000) * 1000] * rows.num_rows, pa.timestamp("us", tz="UTC"))
    columns = [rows[f.name].cast(f.type) if f.name in rows.column_names else now.cast(f.type) for f in schema]
    data = pa.Table.from_arrays(columns, schema=schema)

    directory = os.path.join(remote_dir, "lake", database, f"{table_name}-{table_id}", "metadata")
    os.makedirs(directory, exist_ok=True)
    offsets_file = os.path.join(directory, f"{uuid.uuid4()}.offsets")
    with open(offsets_file, "w") as f:
        json.dump({"version": 1, "table_id": int(table_id), "bucket_offsets": ends}, f)

    if fmt == "paimon":
        builder = table.new_batch_write_builder()._with_commit_user(FLUSS_USER)
        write = builder.new_write()
        write.write_arrow(data)
        commit = builder.new_commit()
        commit.commit(write.prepare_commit(), snapshot_properties={"fluss-offsets": offsets_file})
        write.close()
        commit.close()
        snapshot_id = table.snapshot_manager().get_latest_snapshot().id
    else:
        table.append(data, snapshot_properties={"commit-user": FLUSS_USER, "fluss-offsets": offsets_file})
        snapshot_id = table.current_snapshot().snapshot_id
    print(json.dumps({"snapshot_id": snapshot_id, "rows": rows.num_rows, "offsets_file": offsets_file,
                      "bucket_offsets": ends}))


if __name__ == "__main__":
    main(*sys.argv[1:7])
