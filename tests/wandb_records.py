"""Reads an offline W&B run file (run-<id>.wandb) back into Python, for tests.

The file is a ':W&B' header (7 bytes) and then a leveldb-style log: 32 KiB blocks of records,
each a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last) and a chunk of a
serialized wandb Record protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(path: Path) -> list[dict[str, object]]:
    """The logged rows: {key: value} per wandb.log call."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def run_id(path: Path) -> str:
    return next(r.run.run_id for r in read_records(path) if r.WhichOneof("record_type") == "run")


def config_keys(path: Path) -> set[str]:
    keys = set()
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            keys |= {item.key for item in record.config.update}
    return keys
