"""Convert official DeiT / timm ViT weights to a Paddle `.pdparams` for our models.

    python -m deit.convert SRC DST.pdparams --model DeiT_tiny_patch16_224 [--class-num N]

SRC is a timm `.safetensors` file (read with numpy alone) or an official DeiT / timm `.pth`
checkpoint (needs torch, an optional extra). Key names are the same in timm and here; the only
layout change is that Linear weights are [out, in] in torch and [in, out] in Paddle, so 2-D
`*.weight` tensors are transposed and nothing else is (conv kernels, norms, tokens keep theirs).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

from .errors import CheckpointError

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict:
    """The safetensors format: u64 header length, JSON header, then raw little-endian data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (header of {n} "
                                  f"bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype == "BF16":
            raw = np.frombuffer(data[info["data_offsets"][0]:info["data_offsets"][1]], np.uint16)
            out[key] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
            continue
        if dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {dtype}")
        start, end = info["data_offsets"]
        if end > len(data):
            raise CheckpointError(f"{path}: truncated file (tensor {key} ends past the end of the file)")
        out[key] = np.frombuffer(data[start:end], _SAFETENSORS_DTYPES[dtype]).reshape(info["shape"]).copy()
    return out


def read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading .pth files needs torch, which is not installed "
                              f"(pip install torch), or convert timm's .safetensors instead") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({exc})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # official DeiT checkpoints: {"model": state_dict, ...}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items() if hasattr(v, "numpy")}


def read_weights(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist")
    return read_safetensors(path) if path.endswith(".safetensors") else read_torch(path)


def timm_to_paddle(weights: dict, source: str = "weights") -> dict:
    """timm's layout -> ours: 2-D `*.weight` tensors (Linear) transposed, all else as is.
    Distilled checkpoints (dist_token, head_dist) are refused: only DeiT's ViT is supported."""
    if "dist_token" in weights or any(k.startswith("head_dist") for k in weights):
        raise CheckpointError(f"{source} is a distilled DeiT checkpoint (dist_token/head_dist); "
                              f"only the non-distilled ViT models are supported")
    out = {}
    for key, value in weights.items():
        value = np.asarray(value)
        out[key] = value.T.copy() if value.ndim == 2 and key.endswith(".weight") else value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deit.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", help="timm .safetensors or official DeiT / timm .pth")
    p.add_argument("dst", help="output .pdparams")
    p.add_argument("--model", required=True, help="e.g. DeiT_base_patch16_224")
    p.add_argument("--class-num", type=int, default=1000)
    args = p.parse_args(argv)
    import paddle
    from .model import FACTORIES
    from .errors import unknown
    from .pretrained import fit_state_dict
    try:
        if args.model not in FACTORIES:
            raise unknown("model", args.model, FACTORIES)
        model = FACTORIES[args.model](class_num=args.class_num)
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        state = fit_state_dict(timm_to_paddle(read_weights(args.src), args.src), expected, args.src)
        tmp = args.dst + ".tmp"
        paddle.save({k: paddle.to_tensor(v.astype(np.float32)) for k, v in state.items()}, tmp)
        os.replace(tmp, args.dst)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {len(state)} tensors for {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
