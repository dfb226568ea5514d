"""Drives the cluster's Fluss door with the official Python client (pyfluss), for the Rust tests.

usage: fluss_client.py ADDR COMMAND ARGS…   (ADDR is bootstrap.servers, HOST:PORT)

  create DB.TABLE BUCKETS [PARTITION_KEY]      create the database and a log table with every supported type
  write DB.TABLE FROM TO OUT.arrow [PARTITION] append rows FROM..TO (half one by one, half as an Arrow batch), flush,
                                               and write what was appended to OUT.arrow
  scan DB.TABLE ROWS OUT.arrow                 read every bucket (and partition) from the earliest offset until ROWS
                                               rows arrived; write them with __bucket, __offset, __partition
  offsets DB.TABLE                             {"earliest": {bucket: offset}, "latest": {...}} (non-partitioned)
  lake DB.TABLE                                {"snapshot_id": N, "buckets": {"P/B": offset}} or {"error": code}
  admin                                        exercises the admin calls and the errors a client sees; prints JSON

Primary-key tables (key (id, code), or (id) with KEY=id; the partition column joins the key when partitioned):
  pk-create DB.TABLE BUCKETS KEY [PARTITION_KEY [FORMAT]]  create a primary-key table of every supported type
                                               (FORMAT: its table.datalake.format, else the server's)
  upsert DB.TABLE FROM TO VERSION [PARTITION]  upsert keys FROM..TO with the values of VERSION (pk_row), flush
  delete DB.TABLE FROM TO [PARTITION]          delete keys FROM..TO, flush
  lookup DB.TABLE FROM TO [PARTITION]          {"versions": {id: VERSION | null | "mismatch …"}}: which pk_row each
                                               key's looked-up row equals, every column compared
  changelog DB.TABLE RECORDS                   the changelog from the earliest offset, until RECORDS records:
                                               {"records": [[partition, bucket, offset, change_type, id, version]]}

Every command prints one JSON line on stdout.
"""
import asyncio
import datetime
import decimal
import json
import os
import sys

import fluss
import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("ok", pa.bool_()),
        ("small", pa.int32()),
        ("ratio", pa.float32()),
        ("score", pa.float64()),
        ("amount", pa.decimal128(10, 2)),
        ("name", pa.string()),
        ("blob", pa.binary()),
        ("day", pa.date32()),
        ("ts", pa.timestamp("us")),
        ("tiny", pa.int8()),
        ("short", pa.int16()),
        ("key", pa.binary(6)),
        ("at", pa.time32("ms")),
        ("ms", pa.timestamp("ms")),
        ("ns", pa.timestamp("ns")),
        ("ltz", pa.timestamp("us", tz="UTC")),
        ("region", pa.string()),
    ]
)


def row(i: int, partition: str) -> dict:
    """Row i, a pure function of i (nulls included)."""
    return {
        "id": i,
        "ok": i % 2 == 0,
        "small": i * 3 - 50,
        "ratio": i / 4,
        "score": None if i % 11 == 0 else i * 1.5,
        "amount": decimal.Decimal(i * 100 + 7) / 100,
        "name": None if i % 7 == 0 else f"name-{i}",
        "blob": bytes([i % 256, 1, 2]),
        "day": datetime.date(2024, 1, 1) + datetime.timedelta(days=i % 400),
        "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, 678901) + datetime.timedelta(seconds=i),
        "tiny": i % 200 - 100,
        "short": None if i % 5 == 0 else i * 7 - 3000,
        "key": bytes([i % 256]) * 6,
        "at": datetime.time(i % 24, i % 60, i % 60, (i % 1000) * 1000),
        "ms": datetime.datetime(2024, 5, 6, 7, 8, 9, 123000) + datetime.timedelta(minutes=i),
        # Whole seconds: Iceberg keeps microseconds, Paimon nanoseconds; both hold these exactly.
        "ns": datetime.datetime(2024, 7, 8, 9, 10, 11) + datetime.timedelta(hours=i),
        "ltz": datetime.datetime(2025, 1, 1, 0, 0, 0, 5, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=i),
        "region": partition,
    }


PK_SCHEMA = pa.schema(
    [pa.field("id", pa.int64(), nullable=False), pa.field("code", pa.string(), nullable=False)]
    + [f for f in SCHEMA if f.name != "id"]
)


def pk_row(i: int, version: int, partition: str) -> dict:
    """Key i's row at VERSION: every value column changes with the version; name says which it is."""
    r = row(i + 1000 * version, partition)
    r.update({"id": i, "code": f"c{i % 3}", "name": f"v{version}-{i}"})
    return r


def key_of(i: int, key: list, partition: str) -> dict:
    return {k: v for k, v in pk_row(i, 0, partition).items() if k in key}


def path_of(name: str) -> fluss.TablePath:
    db, table = name.split(".")
    return fluss.TablePath(db, table)


async def connect(addr: str) -> fluss.FlussConnection:
    return await fluss.FlussConnection.create(fluss.Config({"bootstrap.servers": addr}))


async def create(conn, name: str, buckets: str, partition_key: str = None):
    admin = conn.get_admin()
    path = path_of(name)
    await admin.create_database(path.database_name, ignore_if_exists=True)
    props = {"table.datalake.enabled": "true", "table.datalake.freshness": "1s"}
    extra = {"partition_keys": [partition_key]} if partition_key else {}
    desc = fluss.TableDescriptor(fluss.Schema(SCHEMA), bucket_count=int(buckets), properties=props, **extra)
    await admin.create_table(path, desc, ignore_if_exists=False)
    info = await admin.get_table_info(path)
    return {"table_id": info.table_id, "schema_id": info.schema_id, "buckets": info.num_buckets,
            "properties": info.get_properties(), "partition_keys": info.get_partition_keys()}


async def subscribe_all(admin, path, info, scanner) -> dict:
    """Subscribes `scanner` to every bucket (of every partition) from the earliest offset; partition names by id."""
    if not info.is_partitioned():
        scanner.subscribe_buckets({b: fluss.EARLIEST_OFFSET for b in range(info.num_buckets)})
        return {}
    parts = await admin.list_partition_infos(path)
    scanner.subscribe_partition_buckets({(p.partition_id, b): fluss.EARLIEST_OFFSET
                                         for p in parts for b in range(info.num_buckets)})
    return {p.partition_id: p.partition_name for p in parts}


async def pk_create(conn, name: str, buckets: str, key: str, partition_key: str = "", lake_format: str = ""):
    admin = conn.get_admin()
    path = path_of(name)
    await admin.create_database(path.database_name, ignore_if_exists=True)
    props = {"table.datalake.enabled": "true", "table.datalake.freshness": "1s"}
    if lake_format:
        props["table.datalake.format"] = lake_format
    keys = ["id"] if key == "id" else ["id", "code"]
    extra = {"partition_keys": [partition_key]} if partition_key else {}
    if partition_key:
        keys.append(partition_key)
        schema = pa.schema([f.with_nullable(False) if f.name == partition_key else f for f in PK_SCHEMA])
    else:
        schema = PK_SCHEMA
    desc = fluss.TableDescriptor(fluss.Schema(schema, primary_keys=keys), bucket_count=int(buckets),
                                 properties=props, **extra)
    await admin.create_table(path, desc, ignore_if_exists=False)
    info = await admin.get_table_info(path)
    return {"table_id": info.table_id, "buckets": info.num_buckets, "properties": info.get_properties(),
            "primary_keys": info.get_primary_keys()}


async def kv_writer(conn, name: str, partition: str):
    path = path_of(name)
    if partition:
        await conn.get_admin().create_partition(path, {"region": partition}, ignore_if_exists=True)
    table = await conn.get_table(path)
    info = await conn.get_admin().get_table_info(path)
    return table.new_upsert().create_writer(), info.get_primary_keys()


async def upsert(conn, name: str, start: str, stop: str, version: str, partition: str = ""):
    writer, _ = await kv_writer(conn, name, partition)
    for i in range(int(start), int(stop)):
        writer.upsert(pk_row(i, int(version), partition))
    await writer.flush()
    return {"rows": int(stop) - int(start)}


async def delete(conn, name: str, start: str, stop: str, partition: str = ""):
    writer, key = await kv_writer(conn, name, partition)
    for i in range(int(start), int(stop)):
        writer.delete(key_of(i, key, partition))
    await writer.flush()
    return {"rows": int(stop) - int(start)}


def same_row(a: dict, b: dict, schema: pa.Schema) -> bool:
    """Equal as Arrow values of the schema (so a naive and a UTC datetime of one instant are equal)."""
    return pa.Table.from_pylist([a], schema=schema).equals(pa.Table.from_pylist([b], schema=schema))


async def lookup(conn, name: str, start: str, stop: str, partition: str = ""):
    path = path_of(name)
    table = await conn.get_table(path)
    key = (await conn.get_admin().get_table_info(path)).get_primary_keys()
    lookuper = table.new_lookup().create_lookuper()
    versions = {}
    for i in range(int(start), int(stop)):
        got = await lookuper.lookup(key_of(i, key, partition))
        if got is None:
            versions[i] = None
            continue
        match = [v for v in range(5) if same_row(got, pk_row(i, v, partition), PK_SCHEMA)]
        versions[i] = match[0] if match else f"mismatch {got}"
    return {"versions": versions}


async def changelog(conn, name: str, want: str):
    path = path_of(name)
    table = await conn.get_table(path)
    admin = conn.get_admin()
    info = await admin.get_table_info(path)
    scanner = await table.new_scan().create_log_scanner()
    names = await subscribe_all(admin, path, info, scanner)
    records = []
    loop = asyncio.get_event_loop()
    deadline = loop.time() + 60
    while len(records) < int(want) and loop.time() < deadline:
        polled = await scanner.poll(500)
        for bucket in polled.buckets():
            for r in polled.records(bucket):
                version = int(r.row["name"].split("-")[0][1:])
                records.append([names.get(bucket.partition_id, ""), bucket.bucket_id, r.offset,
                                int(r.change_type), r.row["id"], version])
    return {"records": records}


async def write(conn, name: str, start: str, stop: str, out: str, partition: str = ""):
    path = path_of(name)
    if partition:
        await conn.get_admin().create_partition(path, {"region": partition}, ignore_if_exists=True)
    table = await conn.get_table(path)
    writer = table.new_append().create_writer()
    start, stop = int(start), int(stop)
    rows = [row(i, partition) for i in range(start, stop)]
    half = len(rows) // 2
    for r in rows[:half]:
        writer.append(r)
    await writer.flush()
    if rows[half:]:
        writer.write_arrow_batch(pa.RecordBatch.from_pylist(rows[half:], schema=SCHEMA))
    await writer.flush()
    written = pa.Table.from_pylist(rows, schema=SCHEMA)
    with pa.OSFile(out, "wb") as f, pa.ipc.new_file(f, SCHEMA) as w:
        w.write_table(written)
    return {"rows": len(rows)}


async def scan(conn, name: str, want: str, out: str):
    path = path_of(name)
    table = await conn.get_table(path)
    scanner = await table.new_scan().create_record_batch_log_scanner()
    admin = conn.get_admin()
    info = await admin.get_table_info(path)
    names = await subscribe_all(admin, path, info, scanner)
    tables = []
    rows = 0
    loop = asyncio.get_event_loop()
    deadline = loop.time() + 60
    while rows < int(want) and loop.time() < deadline:
        for rb in await scanner.poll_record_batch(500):
            batch = rb.batch
            n = batch.num_rows
            bucket = rb.bucket
            extra = {
                "__bucket": pa.array([bucket.bucket_id] * n, pa.int32()),
                "__offset": pa.array(range(rb.base_offset, rb.base_offset + n), pa.int64()),
                "__partition": pa.array([names.get(bucket.partition_id, "")] * n, pa.string()),
            }
            t = pa.Table.from_batches([batch])
            for k, v in extra.items():
                t = t.append_column(k, v)
            tables.append(t)
            rows += n
    scanned = pa.concat_tables(tables) if tables else pa.table({})
    with pa.OSFile(out, "wb") as f, pa.ipc.new_file(f, scanned.schema) as w:
        w.write_table(scanned)
    return {"rows": rows}


async def offsets(conn, name: str):
    admin = conn.get_admin()
    path = path_of(name)
    info = await admin.get_table_info(path)
    buckets = list(range(info.num_buckets))
    out = {}
    for spec, key in [(fluss.OffsetSpec.earliest(), "earliest"), (fluss.OffsetSpec.latest(), "latest")]:
        out[key] = {str(b): o for b, o in (await admin.list_offsets(path, buckets, spec)).items()}
    return out


async def lake(conn, name: str):
    try:
        snap = await conn.get_admin().get_latest_lake_snapshot(path_of(name))
    except fluss.FlussError as e:
        return {"error": e.error_code}
    buckets = {f"{b.partition_id if b.partition_id is not None else ''}/{b.bucket_id}": o
               for b, o in snap.table_buckets_offset.items()}
    return {"snapshot_id": snap.snapshot_id, "buckets": buckets}


async def code_of(call):
    try:
        await call
        return 0
    except fluss.FlussError as e:
        return e.error_code


async def admin_calls(conn):
    admin = conn.get_admin()
    out = {}
    await admin.create_database("adm", ignore_if_exists=False)
    out["duplicate_database"] = await code_of(admin.create_database("adm", ignore_if_exists=False))
    out["databases"] = sorted(await admin.list_databases())
    out["exists"] = [await admin.database_exists("adm"), await admin.database_exists("nope")]
    info = await admin.get_database_info("adm")
    out["database_info"] = str(info)
    plain = fluss.TableDescriptor(fluss.Schema(pa.schema([("id", pa.int64()), ("v", pa.string())])), bucket_count=2)
    await admin.create_table(fluss.TablePath("adm", "t1"), plain)
    out["duplicate_table"] = await code_of(admin.create_table(fluss.TablePath("adm", "t1"), plain))
    out["missing_database"] = await code_of(admin.create_table(fluss.TablePath("nodb", "t1"), plain))
    out["tables"] = await admin.list_tables("adm")
    out["table_exists"] = [await admin.table_exists(fluss.TablePath("adm", "t1")),
                           await admin.table_exists(fluss.TablePath("adm", "t2"))]
    out["unknown_table"] = await code_of(admin.get_table_info(fluss.TablePath("adm", "t2")))
    unsupported = fluss.TableDescriptor(fluss.Schema(pa.schema([("t", pa.list_(pa.int32()))])))
    out["unsupported_type"] = await code_of(admin.create_table(fluss.TablePath("adm", "t3"), unsupported))
    pk = fluss.TableDescriptor(fluss.Schema(pa.schema([pa.field("id", pa.int64(), nullable=False)]),
                                            primary_keys=["id"]))
    out["primary_key_table"] = await code_of(admin.create_table(fluss.TablePath("adm", "t4"), pk))
    composite_iceberg = fluss.TableDescriptor(
        fluss.Schema(pa.schema([pa.field("a", pa.int64(), nullable=False), pa.field("b", pa.int64(), nullable=False)]),
                     primary_keys=["a", "b"]), properties={"table.datalake.format": "iceberg"})
    out["iceberg_composite_key"] = await code_of(admin.create_table(fluss.TablePath("adm", "t5"), composite_iceberg))
    out["no_lake_snapshot"] = await code_of(admin.get_latest_lake_snapshot(fluss.TablePath("adm", "t1")))
    out["not_empty"] = await code_of(admin.drop_database("adm", ignore_if_not_exists=False, cascade=False))
    await admin.drop_table(fluss.TablePath("adm", "t1"))
    await admin.drop_table(fluss.TablePath("adm", "t4"))
    out["tables_after_drop"] = await admin.list_tables("adm")
    await admin.drop_database("adm", ignore_if_not_exists=False, cascade=False)
    out["database_after_drop"] = await admin.database_exists("adm")
    return out


COMMANDS = {"create": create, "write": write, "scan": scan, "offsets": offsets, "lake": lake, "pk-create": pk_create,
            "upsert": upsert, "delete": delete, "lookup": lookup, "changelog": changelog}


async def main(argv):
    addr, command, args = argv[1], argv[2], argv[3:]
    conn = await connect(addr)
    try:
        if command == "admin":
            result = await admin_calls(conn)
        elif command in COMMANDS:
            result = await COMMANDS[command](conn, *args)
        else:
            raise SystemExit(f"unknown command {command}")
    finally:
        await conn.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
    sys.stdout.flush()
    # pyfluss's background tasks (its security-token refresh) can abort the interpreter's teardown; the work is done.
    os._exit(0)
