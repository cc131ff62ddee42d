"""W&B's offline run file (`run-ID.wandb`) read back for tests: wandb 0.2x+ writes it from its Go
core and ships no Python reader. The framing is LevelDB's log format (32 KiB blocks, each record
a 7-byte header: CRC-32C, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte ':W&B' header;
the payloads are parsed with wandb's own protobuf classes."""
import glob
import json
import os
import struct

BLOCK, HEADER = 32768, 7


def records(path):
    from wandb.proto import wandb_internal_pb2
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        payload, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == 0:  # zeros to the block's end
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def offline_runs(folder):
    """[(run id, {tag: [(step, value)]})] of every offline run under folder/wandb, oldest first;
    the id is the folder's (offline-run-TIME-ID), checked against the run record where there is one."""
    runs = []
    for run_dir in sorted(glob.glob(os.path.join(str(folder), "wandb", "offline-run-*"))):
        path, = glob.glob(os.path.join(run_dir, "run-*.wandb"))
        run_id, curves = run_dir.rsplit("-", 1)[-1], {}
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == run_id, (record.run.run_id, run_dir)
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                step = items.pop("_step")
                for tag, value in items.items():
                    if not tag.startswith("_"):
                        curves.setdefault(tag, []).append((step, value))
        runs.append((run_id, curves))
    return runs
