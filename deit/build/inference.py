"""The model --eval and --predict run: eager, or exported and run by Paddle Inference
(`Infer.backend`), and the predictor's inputs from the `Infer` section."""
import atexit
import os
import shutil
import tempfile

from ..data.transforms import build_transforms
from ..errors import SetupError, paddle_message
from ..inference.export import export_inference
from ..inference.predict import check_save_path, list_images, read_class_names
from ..inference.runners import EagerModel, InferenceLayer, InferenceModel, OnnxModel
from .checks import check_pipeline
from .components import build_model
from .runtime import setup_runtime
from .weights import load_trained_weights


def build_predictor(cfg):
    """`--predict`: (model runner, weights, transform, image files, class names) from the
    `Infer` section. The runner is Paddle Inference on Infer.inference_model when set, else the
    eager model with trained weights; both map an (N, 3, H, W) float32 batch to logits."""
    infer, model_cfg = cfg["Infer"], cfg["Model"]
    if not infer["infer_imgs"]:
        raise SetupError("--predict needs images: set -o Infer.infer_imgs=PATH (an image, a folder of "
                         "images, or a .txt list of them)")
    if infer["save_path"]:
        check_save_path(infer["save_path"])
    files = list_images(infer["infer_imgs"])
    names = read_class_names(infer["PostProcess"]["class_id_map_file"], model_cfg["class_num"])
    ops, key = infer["transforms"], "Infer.transforms"
    if not ops:
        ops, key = cfg["DataLoader"]["Eval"]["dataset"]["transform_ops"], "DataLoader.Eval.dataset.transform_ops"
    transform = build_transforms(ops)
    setup_runtime(cfg)
    if infer["inference_model"]:
        runner = _inference_model(cfg, infer["inference_model"])
        img_size, weights = None, infer["inference_model"]  # the predictor names a wrong size
    else:
        model = build_model(model_cfg)
        weights = load_trained_weights(cfg, model, "--predict")
        runner = _inference_model(cfg, _export_to_temp(model)) if _deploy(cfg) else EagerModel(model)
        img_size = model.img_size
    check_pipeline(transform, ops, img_size, key)
    return runner, weights, transform, files, names


def model_for_inference(cfg, model):
    """The model `--eval` runs: the trained layer, or (Infer.backend auto on CPU, or
    paddle_inference) the same weights exported and run by Paddle Inference with oneDNN,
    faster on CPU (bench/eval_speed.py). Returns (model, backend name)."""
    if not _deploy(cfg):
        return model, "eager"
    runner = _inference_model(cfg, _export_to_temp(model))
    return InferenceLayer(runner), runner.name


def _deploy(cfg) -> bool:
    backend = cfg["Infer"]["backend"]
    return backend == "paddle_inference" or (backend == "auto" and cfg["Global"]["device"] == "cpu")


def _inference_model(cfg, prefix: str):
    """Paddle Inference on an exported PREFIX, or onnxruntime on a .onnx file."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if prefix.endswith(".onnx"):
        return OnnxModel(prefix, cfg["Global"]["device"], threads)
    return InferenceModel(prefix, cfg["Global"]["device"], threads)


def _export_to_temp(model) -> str:
    """Export `model` under a temporary directory (removed at exit); returns the prefix."""
    folder = tempfile.mkdtemp(prefix="deit_export_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    prefix = os.path.join(folder, "inference")
    try:
        export_inference(model, [None, 3, model.img_size, model.img_size], prefix)
    except Exception as exc:  # noqa: BLE001 - tracing failed: say so, with the way round it
        raise SetupError(f"exporting the model for Paddle Inference failed ({type(exc).__name__}: "
                         f"{paddle_message(exc)}): run with -o Infer.backend=eager") from None
    return prefix
