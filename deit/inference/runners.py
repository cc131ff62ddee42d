"""The two ways to run a trained model, with the same inputs and outputs: the eager layer with
its weights, or an exported inference model through Paddle Inference (the deployment path).
Each maps an (N, 3, H, W) float32 batch to logits; `--eval` and `--predict` share them."""
import os

import numpy as np

from ..errors import SetupError, paddle_message


class EagerModel:
    """The trained model as Paddle runs it in training: `images (N,3,H,W) -> logits`."""

    name = "eager"

    def __init__(self, model):
        import paddle
        self._paddle = paddle
        self.model = model
        model.eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._paddle.no_grad():
            return self.model(self._paddle.to_tensor(images)).astype("float32").numpy()


GPU_MEMORY_POOL_MB = 256  # Paddle Inference's initial GPU memory pool; it grows as needed


def gpu_id() -> int:
    """The GPU this process was given: a launch sets FLAGS_selected_gpus per rank (each rank
    on GPU 0 would put the whole launch on one device); 0 for a plain run."""
    selected = os.environ.get("FLAGS_selected_gpus", "").split(",")[0].strip()
    return int(selected) if selected.isdigit() else 0


class InferenceModel:
    """An exported model (`PREFIX.json` + `PREFIX.pdiparams`) run by Paddle Inference. On CPU
    with oneDNN: faster than timm's and our eager forward (bench/eval_speed.py measures it)."""

    name = "paddle.inference"

    def __init__(self, prefix: str, device: str = "cpu", threads: int = 0, onednn: bool = True):
        from paddle import inference
        model_file = next((prefix + ext for ext in (".json", ".pdmodel") if os.path.isfile(prefix + ext)), None)
        if model_file is None or not os.path.isfile(prefix + ".pdiparams"):
            raise SetupError(f"Infer.inference_model: no exported model at {prefix} (.json or .pdmodel "
                             f"with .pdiparams): export one with --export")
        config = inference.Config(model_file, prefix + ".pdiparams")
        if device == "gpu":
            config.enable_use_gpu(GPU_MEMORY_POOL_MB, gpu_id())
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
            if onednn:
                config.enable_onednn()
                self.name = "paddle.inference, oneDNN"
            else:
                config.disable_onednn()
        config.disable_glog_info()
        try:
            self.predictor = inference.create_predictor(config)
        except Exception as exc:  # noqa: BLE001 - a file Paddle cannot read: one line
            raise SetupError(f"Infer.inference_model: Paddle Inference cannot load {model_file}: "
                             f"{paddle_message(exc)}") from None
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        self.prefix = prefix

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.input.reshape(list(images.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(images, dtype=np.float32))
        try:
            self.predictor.run()
        except Exception as exc:  # noqa: BLE001 - most often images of another size than exported
            raise SetupError(f"the exported model {self.prefix} fails on a batch of shape {list(images.shape)} "
                             f"(export size and Infer.transforms must agree): "
                             f"{paddle_message(exc)}") from None
        return self.output.copy_to_cpu().astype(np.float32)


class OnnxModel:
    """An ONNX file (`--export -o Export.export_type=onnx`) run by onnxruntime, on the CPU, or
    on the GPU where onnxruntime has CUDA."""

    name = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: int = 0):
        try:
            import onnxruntime
        except ImportError as exc:
            raise SetupError(f"Infer.inference_model {path} is ONNX, and onnxruntime cannot be imported ({exc}): "
                             f"pip install onnxruntime (this package's [onnx] extra)") from None
        if not os.path.isfile(path):
            raise SetupError(f"Infer.inference_model: no ONNX model at {path}: export one with --export "
                             f"-o Export.export_type=onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3  # errors only: its notes on graph rewrites are not the user's concern
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in onnxruntime.get_available_providers()]
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - not ONNX, or a graph it cannot run: one line
            raise SetupError(f"Infer.inference_model: onnxruntime cannot load {path}: {exc}") from None
        self.input, self.path = self.session.get_inputs()[0].name, path
        self.name = f"onnxruntime, {self.session.get_providers()[0]}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run(None, {self.input: np.ascontiguousarray(images, dtype=np.float32)})
        except Exception as exc:  # noqa: BLE001 - most often images of another size than exported
            raise SetupError(f"the ONNX model {self.path} fails on a batch of shape {list(images.shape)} "
                             f"(export size and Infer.transforms must agree): {exc}") from None
        return out[0].astype(np.float32)


class InferenceLayer:
    """An InferenceModel where evaluation expects a Paddle layer: tensors in and out, and the
    train/eval switches (no-ops: an exported model is always in eval mode)."""

    training = False

    def __init__(self, runner: InferenceModel):
        import paddle
        self._paddle, self.runner = paddle, runner

    def eval(self):
        return self

    def train(self):
        return self

    def __call__(self, images):
        return self._paddle.to_tensor(self.runner(images.numpy()))
