"""Export a trained model as a Paddle inference model (`paddle.jit.save`), and that model as
ONNX (paddle2onnx)."""
import contextlib
import os
import sys
import tempfile

import paddle

# Paddle's own noise while it traces a model, harmless, removed from the output: `paddle.add`
# under PIR always calls `_C_ops.add(x, y, out=out)` with out=None (paddle/tensor/math.py), and
# the C++ argument parser warns "Paddle static graph(PIR) not support input out tensor for
# now!!!!!" (eager_utils.cc) at any `out` keyword in static mode, once per process. Our graph
# writes into no output tensor: the `+` of the position embedding is simply the first add traced.
PADDLE_NOISE = ("Paddle static graph(PIR) not support input out tensor for now",)


@contextlib.contextmanager
def native_output_captured(fd: int):
    """What the process writes to file descriptor `fd` during the block (C++ logs as well as
    Python's), collected in a temporary file; yields a function that returns it as text."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    saved, text = os.dup(fd), []
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            yield lambda: "".join(text)
        finally:
            stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            captured.seek(0)
            text.append(captured.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def native_stderr_without(noise=PADDLE_NOISE):
    """Pass on what the block writes to file descriptor 2, every line but those containing one
    of `noise`, also on an error."""
    try:
        with native_output_captured(2) as written:
            yield
    finally:
        kept = [line for line in written().splitlines(keepends=True) if not any(n in line for n in noise)]
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def export_inference(model, input_shape, path_prefix: str) -> str:
    """Trace `model` in eval mode for inputs of `input_shape` ([None, 3, H, W]: None is a free
    batch size) and write `{path_prefix}.json` + `.pdiparams` for paddle.jit.load / Paddle
    Inference. Returns the prefix.

    `paddle.jit.to_static(layer)` puts a static function in place of the layer's `forward`;
    it is taken away again, so the layer stays eager (a training model exported for an
    evaluation otherwise trained on as a static program: 3.5x slower steps on CPU)."""
    model.eval()
    shape = [None if d in (None, -1, "None") else int(d) for d in input_shape]
    spec = paddle.static.InputSpec(shape=shape, dtype="float32", name="x")
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    own_forward = model.__dict__.get("forward")
    try:
        with native_stderr_without():
            static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
            paddle.jit.save(static, path_prefix)
    finally:
        if own_forward is None:
            model.__dict__.pop("forward", None)
        else:
            model.forward = own_forward
    return path_prefix


ONNX_EXTRA = 'pip install paddle2onnx onnxruntime (this package\'s [onnx] extra)'


def import_paddle2onnx():
    """paddle2onnx, or an ImportError saying what to install."""
    try:
        import paddle2onnx
    except ImportError as exc:
        raise ImportError(f"Export.export_type onnx needs paddle2onnx ({exc}): {ONNX_EXTRA}") from None
    return paddle2onnx


def export_onnx(paddle_prefix: str, onnx_path: str, opset: int) -> str:
    """Convert the exported Paddle model at `paddle_prefix` (.json + .pdiparams) to `onnx_path`
    with paddle2onnx, the converter PaddleClas documents; the batch dimension stays free. The
    file is written under a private name and renamed, so a failed conversion leaves none.

    paddle2onnx's default optimizer (polygraphy) installs onnx_graphsurgeon with pip at run time
    when it is missing; onnxoptimizer, one of paddle2onnx's own dependencies, installs nothing
    (onnxruntime optimizes the graph again when it loads it)."""
    paddle2onnx = import_paddle2onnx()
    partial = f"{onnx_path}.{os.getpid()}.tmp"
    try:
        # its progress lines (and a note that onnxoptimizer skipped a pass it does not know) are
        # shown only when the conversion fails, where they say why
        with native_output_captured(1) as out, native_output_captured(2) as err:
            try:
                paddle2onnx.export(paddle_prefix + ".json", paddle_prefix + ".pdiparams", save_file=partial,
                                   opset_version=opset, auto_upgrade_opset=False, enable_onnx_checker=True,
                                   optimize_tool="onnxoptimizer")
                failure = None if os.path.isfile(partial) else "it wrote no file"
            except Exception as exc:  # noqa: BLE001 - reported below with the converter's own lines
                failure = f"{type(exc).__name__}: {exc}"
        if failure is not None:
            said = [l.strip() for l in (out() + err()).splitlines() if l.strip()][-3:]
            raise RuntimeError(f"paddle2onnx could not convert it at opset {opset} ({failure}; "
                               f"it said: {' | '.join(said) or 'nothing'})")
        os.replace(partial, onnx_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return onnx_path
