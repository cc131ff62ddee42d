"""The `Distillation` section: the teacher found, built and checked at the door, and the
distillation loss around the run's own loss (deit/loss.py's DistillationLoss).

A teacher is an exported Paddle inference model (`Teacher.inference_model`: ours or
PaddleClas's `inference.pdmodel`/`.json` + `.pdiparams`, loaded with paddle.jit.load) or a
model named in the config with its weights (`Teacher.name`: one of ours, or a function of
paddle.vision.models, with `Teacher.pretrained_model`). Every way it can be wrong (a missing
file, another class count, a teacher that cannot run on the batch, a student without a
distillation head) is one line before training.
"""
import hashlib
import os

import paddle

from engine.serialization import load_restricted, non_float_arrays

from ..errors import CheckpointError, SetupError, paddle_message, unknown
from ..loss import DistillationLoss
from ..model import FACTORIES
from ..pretrained import in_model_dtypes, shape_problems
from ..teacher import Teacher
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

_IMAGENET = (list(IMAGENET_MEAN), list(IMAGENET_STD))


def teacher_configured(cfg) -> bool:
    teacher = cfg["Distillation"]["Teacher"]
    return bool(teacher["inference_model"] or teacher["name"])


def build_distillation(cfg, base_loss, student, autocast):
    """(the train loss, the Teacher or None, the teacher's identity for checkpoints or None).
    A distilled student always trains through DistillationLoss (type `none` without a teacher:
    its class head on the base loss, as the official code does)."""
    section = cfg["Distillation"]
    distilled = getattr(student, "distilled", False)
    if not teacher_configured(cfg):
        if not distilled:
            return base_loss, None, None
        return DistillationLoss(base_loss, None, "none"), None, None
    if not distilled:
        raise SetupError(f"Distillation.Teacher is set, but Model.name {cfg['Model']['name']} has no distillation "
                         f"token: use a distilled model (DeiT_tiny_distilled_patch16_224, ...), or unset "
                         f"Distillation.Teacher")
    for key in ("mean", "std"):
        values = section["Teacher"][key]
        if values is not None and len(values) != 3:
            raise SetupError(f"Distillation.Teacher.{key} takes one value per channel (3), got {values}")
    layer, files = _teacher_layer(section["Teacher"], cfg["Model"]["class_num"])
    teacher = Teacher(layer, *student_normalization(cfg), img_size=section["Teacher"]["img_size"],
                      mean=section["Teacher"]["mean"], std=section["Teacher"]["std"],
                      interpolation=section["Teacher"]["interpolation"], autocast=autocast)
    _check_teacher_runs(teacher, student.img_size, cfg["Model"]["class_num"], section["Teacher"])
    kind = section["type"]
    return DistillationLoss(base_loss, teacher, kind, section["alpha"], section["tau"]), teacher, identity(files)


def student_normalization(cfg):
    """The mean and std of DataLoader.Train's NormalizeImage (ImageNet's when it has none)."""
    for op in cfg["DataLoader"]["Train"]["dataset"]["transform_ops"]:
        (name, kwargs), = op.items()
        if name == "NormalizeImage":
            kwargs = kwargs or {}
            return (list(kwargs.get("mean") or _IMAGENET[0]), list(kwargs.get("std") or _IMAGENET[1]))
    return _IMAGENET


def _teacher_layer(section, class_num):
    """The teacher as a Paddle layer, and the files its weights came from."""
    prefix, name = section["inference_model"], section["name"]
    if prefix and name:
        raise SetupError("Distillation.Teacher: set inference_model (an exported model) or name with "
                         "pretrained_model, not both")
    if prefix:
        graph = [prefix + ext for ext in (".json", ".pdmodel") if os.path.isfile(prefix + ext)]
        params = prefix + ".pdiparams"
        if not graph or not os.path.isfile(params):
            raise SetupError(f"Distillation.Teacher.inference_model: {prefix}.json (or .pdmodel) and "
                             f"{params} must exist (an exported model's path prefix)")
        try:
            return paddle.jit.load(prefix), [graph[0], params]
        except Exception as exc:  # noqa: BLE001 - a file Paddle cannot load: one line
            raise SetupError(f"Distillation.Teacher.inference_model: {prefix} does not load as an exported "
                             f"Paddle model ({paddle_message(exc)})") from None
    weights = section["pretrained_model"]
    if not weights:
        raise SetupError(f"Distillation.Teacher.name {name}: set Distillation.Teacher.pretrained_model "
                         f"(its .pdparams); an untrained teacher teaches nothing")
    path = weights if weights.endswith(".pdparams") else weights + ".pdparams"
    if not os.path.isfile(path):
        raise CheckpointError(f"Distillation.Teacher.pretrained_model: {path} does not exist")
    classes = section["class_num"] or class_num
    layer = _named_model(name, classes)
    state = load_restricted(path, "Distillation.Teacher.pretrained_model")
    if not isinstance(state, dict) or not state or non_float_arrays(state):
        raise CheckpointError(f"Distillation.Teacher.pretrained_model: {path} is not a model state_dict")
    problems = shape_problems(state, layer.state_dict())
    if problems:
        raise CheckpointError(f"Distillation.Teacher.pretrained_model: {path} does not fit {name} with "
                              f"{classes} classes: " + "; ".join(problems))
    layer.set_state_dict(in_model_dtypes(state, layer.state_dict()))
    return layer, [path]


def _named_model(name, class_num):
    if name in FACTORIES:
        return FACTORIES[name](class_num=class_num)
    factory = getattr(paddle.vision.models, name, None)
    if not callable(factory) or name.startswith("_") or isinstance(factory, type):
        known = list(FACTORIES) + [n for n in dir(paddle.vision.models)
                                       if n[:1].islower() and callable(getattr(paddle.vision.models, n))]
        raise unknown("Distillation.Teacher.name (ours or paddle.vision.models')", name, known)
    try:
        return factory(pretrained=False, num_classes=class_num)
    except Exception as exc:  # noqa: BLE001 - the factory's own refusal
        raise SetupError(f"Distillation.Teacher.name {name}: paddle.vision.models.{name}(num_classes={class_num}) "
                         f"failed: {type(exc).__name__}: {exc}") from None


def _check_teacher_runs(teacher, student_size, class_num, section):
    probe = paddle.zeros([2, 3, student_size, student_size], dtype="float32")
    where = section["inference_model"] or section["name"]
    try:
        shape = teacher.probe(probe)
    except Exception as exc:  # noqa: BLE001 - the batch does not fit the teacher
        size = section["img_size"] or student_size
        raise SetupError(f"Distillation.Teacher {where} cannot run on a {size}x{size} batch "
                         f"({paddle_message(exc)}): set Distillation.Teacher.img_size to its input size") from None
    if len(shape) != 2 or shape[1] != class_num:
        raise SetupError(f"Distillation.Teacher {where} gives outputs of shape {shape}, the student has "
                         f"Model.class_num={class_num} classes: a teacher must score the same classes")


def identity(files) -> str:
    """The teacher as checkpoints record it: its files and their content's hash, so a resume
    with another teacher (or the same path holding other weights) is refused."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"{', '.join(os.path.abspath(p) for p in files)} sha256:{digest.hexdigest()[:16]}"
