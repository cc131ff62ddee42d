"""Export a trained model as a Paddle inference model (`paddle.jit.save`)."""
import os

import paddle


def export_inference(model, input_shape, path_prefix: str) -> str:
    """Trace `model` in eval mode for inputs of `input_shape` ([None, 3, H, W]: None is a free
    batch size) and write `{path_prefix}.json` + `.pdiparams` for paddle.jit.load / Paddle
    Inference. Returns the prefix."""
    model.eval()
    shape = [None if d in (None, -1, "None") else int(d) for d in input_shape]
    spec = paddle.static.InputSpec(shape=shape, dtype="float32", name="x")
    static = paddle.jit.to_static(model, input_spec=[spec], full_graph=True)
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    paddle.jit.save(static, path_prefix)
    return path_prefix
