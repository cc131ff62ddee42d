"""Checkpoints as plain data, and a loader that never runs code.

`dump` writes a pickle of plain containers, numbers, strings and numpy arrays (tensors are
converted first), so `paddle.load` still reads our files. `load_restricted` reads any such
file, and Paddle's own `.pdparams` (PLSC's included), through an unpickler that admits only
arrays, dtypes and plain containers, as `torch.load(weights_only=True)` does: a crafted file
that names any other callable is refused before anything runs.
"""
import os
import pickle

import numpy as np

from .errors import CheckpointError
from .files import atomic_write

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("_codecs", "encode"),  # protocol-2 pickles spell bytes as _codecs.encode(text, "latin1")
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    # protocol 5 (Python 3.14's default) rebuilds arrays from their bytes with this
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}
MAX_DEPTH = 200  # nesting of a state dict: a few levels; a deeper pickle is crafted
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
_PADDLE_SLICES = "UnpackBigParamInfor@@"  # typos: disable-line (Paddle's spelling)


class UnsafeFile(pickle.UnpicklingError):
    pass


class _Incomplete(Exception):
    pass


def _bytearray_of_data(*args):
    """bytearray from bytes only: bytearray(2_400_000_000) is a 32-byte pickle allocating 2.4 GB."""
    if args and not isinstance(args[0], (bytes, bytearray, str)):
        raise UnsafeFile("it asks for an empty buffer of a given size, which no weights file holds")
    return bytearray(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("builtins", "bytearray"):
            return _bytearray_of_data
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeFile(f"it refers to {module}.{name}, which a weights or checkpoint file never "
                         f"needs (only arrays and plain containers are loaded)")


def to_plain(obj):
    """Tensors -> numpy arrays (on the CPU), recursively through dicts, lists and tuples."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if hasattr(obj, "numpy") and hasattr(obj, "place"):  # a paddle Tensor, without importing paddle
        return np.array(obj.cpu()) if hasattr(obj, "cpu") else obj.numpy()
    return obj


def nbytes(obj) -> int:
    """Approximate size on disk of a plain-data tree (its arrays dominate)."""
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    return len(obj) if isinstance(obj, (str, bytes)) else 4  # a pickled small number


def dump(obj, path: str) -> None:
    """Write `obj` (tensors converted to arrays) atomically; raises WriteFailed on a full disk."""
    plain = to_plain(obj)
    atomic_write(path, lambda f: pickle.dump(plain, f, protocol=4), nbytes(plain))


def require_regular_file(path: str, what: str) -> None:
    if os.path.isdir(path):
        raise CheckpointError(f"{what}: {path} is a directory, not a weights or checkpoint file")
    if os.path.exists(path) and not os.path.isfile(path):
        raise CheckpointError(f"{what}: {path} is not a regular file (a FIFO or device?): it is not read")


def load_restricted(path: str, what: str):
    """The object in `path` with tensors as numpy arrays, or CheckpointError naming `what`
    (e.g. "Global.checkpoint") when it is unreadable or asks for anything but data. Only a
    regular file is opened: a FIFO would block the run forever, a directory says so."""
    require_regular_file(path, what)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
        _check_depth(obj, path, what)
        return _from_paddle_layout(obj)
    except CheckpointError:
        raise
    except _Incomplete as exc:
        raise CheckpointError(f"{what}: {path} {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{what}: {path} is nested more deeply than any weights or checkpoint file: "
                              f"refused") from None
    except UnsafeFile as exc:
        raise CheckpointError(f"{what}: {path} was refused: {exc}; it may have been crafted to run "
                              f"code. Nothing from it was executed") from None
    except OSError as exc:
        raise CheckpointError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated or not a pickle: the same user error
        raise CheckpointError(f"{what}: {path} is corrupt or not a weights/checkpoint file "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _check_depth(obj, path: str, what: str) -> None:
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{what}: {path} is nested {MAX_DEPTH}+ levels deep, more than any weights "
                                  f"or checkpoint file: refused")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in value)


def _from_paddle_layout(obj):
    """Undo what paddle.save does to a state_dict: its name table, arrays over 1 GiB split
    into slices, and tensors inside nested objects stored as (name, array) pairs."""
    if isinstance(obj, dict):
        obj = dict(obj)
        obj.pop(_PADDLE_NAME_TABLE, None)
        slices = obj.pop(_PADDLE_SLICES, None)
        if isinstance(slices, dict):
            for key, info in slices.items():
                parts = info.get("slices") if isinstance(info, dict) else None
                if not isinstance(parts, (list, tuple)) or not all(p in obj for p in parts):
                    raise _Incomplete(f"splits {key!r} into slices it does not hold ({parts!r:.120}): "
                                      f"it is incomplete")
                obj[key] = np.concatenate([obj.pop(part) for part in parts]).reshape(info["OriginShape"])
        return {k: _from_paddle_layout(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_paddle_layout(v) for v in obj)
    return obj


def non_float_arrays(state: dict, limit: int = 4) -> list:
    """"key (dtype)" for entries of a weights dict that are not float arrays (float16/32/64, or
    uint16, Paddle's bfloat16 bits): int8, complex, object, structured or string data is no
    model weight, and Paddle's set_state_dict would fail on it with a bare AssertionError."""
    bad = [f"{k} ({getattr(v, 'dtype', type(v).__name__)})" for k, v in state.items()
           if not isinstance(v, np.ndarray) or not (v.dtype.kind == "f" or v.dtype == np.uint16)]
    return bad[:limit] + ([f"... {len(bad) - limit} more"] if len(bad) > limit else [])
