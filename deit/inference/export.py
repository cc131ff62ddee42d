"""Export a trained model as a Paddle inference model (`paddle.jit.save`)."""
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
def native_stderr_without(noise=PADDLE_NOISE):
    """Collect what the process writes to file descriptor 2 (Paddle's C++ logs as well as
    Python's), then pass on every line but those containing one of `noise`, also on an error."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(n in line for n in noise)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def export_inference(model, input_shape, path_prefix: str) -> str:
    """Trace `model` in eval mode for inputs of `input_shape` ([None, 3, H, W]: None is a free
    batch size) and write `{path_prefix}.json` + `.pdiparams` for paddle.jit.load / Paddle
    Inference. Returns the prefix."""
    model.eval()
    shape = [None if d in (None, -1, "None") else int(d) for d in input_shape]
    spec = paddle.static.InputSpec(shape=shape, dtype="float32", name="x")
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    with native_stderr_without():
        static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
        paddle.jit.save(static, path_prefix)
    return path_prefix
