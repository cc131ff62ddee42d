"""A numpy-only safetensors writer for tests (the format: u64 header size, JSON header, data)."""
import json
import struct

import numpy as np

_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def write_safetensors(path, tensors: dict) -> None:
    header, chunks, offset = {}, [], 0
    for key, value in tensors.items():
        data = np.ascontiguousarray(value).tobytes()
        header[key] = {"dtype": _CODES[np.asarray(value).dtype], "shape": list(np.shape(value)),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))
