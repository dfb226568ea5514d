"""Commits to an Iceberg lake table as Fluss's own tiering service (the Flink job) does, for the Rust tests.

usage: fluss_commit.py WAREHOUSE DATABASE.TABLE SCAN.arrow REMOTE_DIR TABLE_ID

Appends, in one snapshot, the rows of SCAN.arrow (a pyfluss scan with __bucket and __offset) at or above the offsets
the table's latest snapshot names, with the system columns, and writes the offsets the snapshot reaches as Fluss's
coordinator writes an offsets file ({"version":1,"table_id":…,"bucket_offsets":[…]}, under
REMOTE_DIR/lake/DB/TABLE-ID/metadata/). The snapshot's summary carries what Fluss's Iceberg committer puts there and
nothing of ours: `commit-user = __fluss_lake_tiering` and `fluss-offsets` = the file's path. Prints one JSON line:
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


def main(warehouse: str, name: str, scan_path: str, remote_dir: str, table_id: str):
    catalog = SqlCatalog("fluss", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}")
    table = catalog.load_table(name)
    summary = table.current_snapshot().summary.additional_properties
    with table.io.new_input(summary["fluss-offsets"]).open() as f:
        tiered = json.loads(f.read().decode())["bucket_offsets"]

    scanned = pa.ipc.open_file(scan_path).read_all()
    buckets = scanned["__bucket"].to_pylist()
    offsets = scanned["__offset"].to_pylist()
    keep = pa.array([o >= tiered[b] for b, o in zip(buckets, offsets)])
    rows = scanned.filter(keep)
    ends = list(tiered)
    for b, o in zip(rows["__bucket"].to_pylist(), rows["__offset"].to_pylist()):
        ends[b] = max(ends[b], o + 1)

    schema = table.schema().as_arrow()
    now = pa.array([int(time.time() * 1_000_000)] * rows.num_rows, pa.timestamp("us", tz="UTC"))
    columns = [rows[f.name].cast(f.type) if f.name in rows.column_names else now.cast(f.type) for f in schema]
    data = pa.Table.from_arrays(columns, schema=schema)

    database, table_name = name.split(".")
    directory = os.path.join(remote_dir, "lake", database, f"{table_name}-{table_id}", "metadata")
    os.makedirs(directory, exist_ok=True)
    offsets_file = os.path.join(directory, f"{uuid.uuid4()}.offsets")
    with open(offsets_file, "w") as f:
        json.dump({"version": 1, "table_id": int(table_id), "bucket_offsets": ends}, f)

    table.append(data, snapshot_properties={"commit-user": "__fluss_lake_tiering", "fluss-offsets": offsets_file})
    snapshot = table.current_snapshot()
    print(json.dumps({"snapshot_id": snapshot.snapshot_id, "rows": rows.num_rows, "offsets_file": offsets_file,
                      "bucket_offsets": ends}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
