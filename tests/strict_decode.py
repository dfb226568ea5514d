"""Decodes Fluss requests with Google's protobuf runtime (a strict proto2 decoder that is not ours), for the Rust tests.

usage: strict_decode.py DESCRIPTOR_SET REQUESTS.jsonl

DESCRIPTOR_SET is proto/fluss_wire.proto compiled by build.rs (Fluss's messages with their `required` labels).
REQUESTS.jsonl holds one request per line: {"api_key": K, "body": HEX}. Each body is parsed as its api key's request
message, and the runtime's required-field check (FindInitializationErrors: what Java's parseFrom enforces) must find
no required field missing in it or in a nested message. A field the descriptor does not know (a wrong field number)
counts as an error too, and so does a body that the runtime encodes back to other bytes (another field order, or
repeated numbers packed where proto2 writes them one by one). As controls, an empty GetTableInfoRequest (its required
table_path missing) and one with an extra field 99 must be refused. Prints one JSON line:
{"decoded": {api_key: count}, "errors": [...], "control": "refused" | "accepted",
 "unknown_control": "refused" | "accepted"}.
"""

import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

REQUESTS = {
    1000: "ApiVersionsRequest",
    1003: "ListDatabasesRequest",
    1007: "GetTableInfoRequest",
    1008: "ListTablesRequest",
    1009: "ListPartitionInfosRequest",
    1012: "MetadataRequest",
    1015: "FetchLogRequest",
    1021: "ListOffsetsRequest",
    1030: "CommitLakeTableSnapshotRequest",
    1032: "GetLakeSnapshotRequest",
    1042: "LakeTieringHeartbeatRequest",
    1052: "PrepareLakeTableSnapshotRequest",
    1061: "ScanKvRequest",
}


def unknown_fields(message, path):
    """Paths of fields the descriptor does not know, in the message and every nested one."""
    out = [f"{path}: field {f.field_number}" for f in UnknownFieldSet(message)]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        values = value if field.label == field.LABEL_REPEATED else [value]
        for i, v in enumerate(values):
            out.extend(unknown_fields(v, f"{path}.{field.name}[{i}]"))
    return out


def main(descriptor_set: str, requests: str):
    with open(descriptor_set, "rb") as f:
        files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    classes = {k: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"fluss.{n}")) for k, n in REQUESTS.items()}

    decoded, errors = {}, []
    with open(requests) as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            request = json.loads(line)
            key = request["api_key"]
            if key not in classes:
                errors.append(f"request {n}: api key {key} is not one the job should send")
                continue
            message = classes[key]()
            body = bytes.fromhex(request["body"])
            try:
                message.ParseFromString(body)
            except DecodeError as e:
                errors.append(f"request {n} ({REQUESTS[key]}): {e}")
                continue
            missing = message.FindInitializationErrors()
            errors.extend(f"request {n} ({REQUESTS[key]}): required {m} missing" for m in missing)
            errors.extend(f"request {n}: unknown {u}" for u in unknown_fields(message, REQUESTS[key]))
            again = message.SerializeToString()
            if again != body:
                errors.append(f"request {n} ({REQUESTS[key]}): encodes back as {again.hex()}, sent as {body.hex()}")
            decoded[str(key)] = decoded.get(str(key), 0) + 1

    control_message = classes[1007]()
    control_message.ParseFromString(b"")
    control = "accepted" if not control_message.FindInitializationErrors() else "refused"
    complete = classes[1007]()
    complete.table_path.database_name, complete.table_path.table_name = "db", "t"
    extra = classes[1007]()
    extra.ParseFromString(complete.SerializeToString() + bytes([0x98, 0x06, 0x01]))  # field 99, varint 1
    unknown_control = "refused" if unknown_fields(extra, "GetTableInfoRequest") else "accepted"
    print(json.dumps({"decoded": decoded, "errors": errors, "control": control, "unknown_control": unknown_control}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
