"""Convert official DeiT / timm ViT weights to a Paddle `.pdparams` for our models.

    python -m deit.convert SRC DST.pdparams --model DeiT_tiny_patch16_224 [--class-num N]

SRC is a timm `.safetensors` file (read with the `safetensors` library) or an official DeiT / timm `.pth`
checkpoint (needs torch, an optional extra). Key names are the same in timm and here; the only
layout change is that Linear weights are [out, in] in torch and [in, out] in Paddle, so 2-D
`*.weight` tensors are transposed and nothing else is (conv kernels, norms, tokens keep theirs).
"""
import argparse
import contextlib
import os
import sys

import numpy as np

from .errors import CheckpointError

def read_safetensors(path: str) -> dict:
    """timm's .safetensors through the `safetensors` library (Paddle installs it). numpy has
    no bfloat16, so BF16 files are read through the library's Paddle backend, as float32."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        try:
            return load_file(path)
        except TypeError:  # "data type 'bfloat16' not understood"
            from safetensors import safe_open
            with stride_kernels(), safe_open(path, framework="paddle") as f:
                return {k: f.get_tensor(k).astype("float32").numpy() for k in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: not a safetensors file, or truncated ({exc})") from None


@contextlib.contextmanager
def stride_kernels():
    """The library's Paddle backend reinterprets bytes with `paddle.view`, which has only a
    strided kernel; a CPU training process turns those off (deit/build/runtime.py)."""
    import paddle
    before = paddle.get_flags("FLAGS_use_stride_kernel")["FLAGS_use_stride_kernel"]
    paddle.set_flags({"FLAGS_use_stride_kernel": True})
    try:
        yield
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": before})


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
        state = fit_state_dict(timm_to_paddle(read_weights(args.src), args.src), model.state_dict(), args.src)
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
