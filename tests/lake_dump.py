"""Reads a lake table with pyiceberg (a reader that is not ours) and dumps it for the Rust tests.

usage: lake_dump.py WAREHOUSE DATABASE.TABLE OUT.arrow

Writes every row of the table's current snapshot to OUT.arrow (Arrow IPC file) and prints one JSON line:
{"rows": N, "snapshots": N, "current_snapshot_id": ID, "properties": {...current snapshot summary...}}
"""
import json
import os
import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog


def main() -> None:
    warehouse, table_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
    warehouse = os.path.abspath(warehouse)
    catalog = SqlCatalog(
        "fluss",
        uri=f"sqlite:///{warehouse}/catalog.db",
        warehouse=f"file://{warehouse}",
    )
    table = catalog.load_table(table_name)
    data = table.scan().to_arrow()
    with pa.OSFile(out, "wb") as sink:
        with pa.ipc.new_file(sink, data.schema) as writer:
            writer.write_table(data)
    current = table.current_snapshot()
    print(
        json.dumps(
            {
                "rows": data.num_rows,
                "snapshots": len(table.snapshots()),
                "current_snapshot_id": current.snapshot_id if current else None,
                "properties": dict(current.summary.additional_properties) if current else {},
            }
        )
    )


if __name__ == "__main__":
    main()
