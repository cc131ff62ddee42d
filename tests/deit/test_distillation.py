"""DeiT's distillation: the distilled model against timm, the loss against the official
formula (computed with torch from facebookresearch/deit's losses.py), the teacher frozen and
seeing the student's batch through its own size and normalization."""
import json
import os

import numpy as np
import paddle
import pytest

from deit.loss import CELoss, DistillationLoss
from deit.model import FACTORIES, VisionTransformer
from deit.optim import build_adamw
from deit.precision import Precision
from deit.step import make_train_step
from deit.teacher import Teacher
from tests.deit.test_model import plsc_keys
from tests.fixtures.make_timm_fixtures import seeded_input, seeded_weights

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
TINY = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, class_num=10)


def test_distilled_tiny_gives_timms_logits_for_each_head_and_their_mean():
    f = np.load(os.path.join(FIXTURES, "timm_deit_tiny_distilled.npz"))
    weights = seeded_weights(json.loads(str(f["shapes"])), int(f["weight_seed"]))
    weights = {k: (v.T if v.ndim == 2 and k.endswith("weight") else v) for k, v in weights.items()}
    model = FACTORIES["DeiT_tiny_distilled_patch16_224"]()
    missing, unexpected = model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    assert not missing and not unexpected
    x = paddle.to_tensor(seeded_input((2, 3, 224, 224), int(f["input_seed"])))
    model.eval()
    np.testing.assert_allclose(model(x).numpy(), f["logits"], atol=1e-4)  # eval: the mean of the heads
    model.train()
    cls, dist = model(x)  # training: both heads, for the distillation loss
    np.testing.assert_allclose(cls.numpy(), f["cls_logits"], atol=1e-4)
    np.testing.assert_allclose(dist.numpy(), f["dist_logits"], atol=1e-4)


@pytest.mark.parametrize("name, dim, patches", [("DeiT_tiny_distilled_patch16_224", 192, 196),
                                                ("DeiT_base_distilled_patch16_384", 768, 576)])
def test_distilled_state_dict_is_paddleclas_keys_and_shapes(name, dim, patches):
    """PaddleClas's DistilledVisionTransformer: the ViT's keys, a pos_embed with two prefix
    slots, dist_token and head_dist."""
    expected = plsc_keys(dim, 12, patches)
    expected["pos_embed"] = [1, patches + 2, dim]
    expected.update({"dist_token": [1, 1, dim], "head_dist.weight": [dim, 1000], "head_dist.bias": [1000]})
    ours = {k: list(v.shape) for k, v in FACTORIES[name]().state_dict().items()}
    assert ours == expected


class FixedTeacher:
    """Stands in for a teacher: the fixture's teacher logits, whatever the images."""

    def __init__(self, logits):
        self.logits, self.seen = paddle.to_tensor(logits), []

    def __call__(self, images):
        self.seen.append(images)
        return self.logits


@pytest.mark.parametrize("case", ["soft_0.5_1.0", "soft_0.3_3.0", "hard_0.5_1.0", "none_0.5_1.0"])
@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_the_loss_equals_the_official_distillation_loss(case, targets):
    f = np.load(os.path.join(FIXTURES, "official_distillation_loss.npz"))
    expected = json.loads(str(f["cases"]))[f"{case}_{targets}"]
    kind, alpha, tau = case.split("_")
    if targets == "hard":  # timm's LabelSmoothingCrossEntropy(0.1) on labels, as with no Mixup
        base, target = CELoss(epsilon=float(f["smoothing"])), paddle.to_tensor(f["labels"])
    else:  # SoftTargetCrossEntropy on Mixup's targets
        base, target = CELoss(), paddle.to_tensor(f["soft_targets"])
    teacher = FixedTeacher(f["teacher"])
    loss = DistillationLoss(base, teacher, kind, float(alpha), float(tau))
    images = paddle.zeros([8, 3, 4, 4])
    value = float(loss((paddle.to_tensor(f["outputs"]), paddle.to_tensor(f["outputs_kd"])), target, images))
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len(teacher.seen) == (0 if kind == "none" else 1)  # `none` never runs the teacher


def test_soft_distillation_is_the_hand_derived_kl():
    """KL(q || p) at temperature t, summed, x t^2 / (batch x classes): by hand in numpy."""
    rng = np.random.default_rng(0)
    kd, teacher = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    t = 2.0

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p, log_q = log_softmax(kd / t), log_softmax(teacher / t)
    by_hand = (np.exp(log_q) * (log_q - log_p)).sum() * t * t / kd.size
    zero_base = lambda logits, target: paddle.zeros([])  # noqa: E731 - isolates the distillation term
    loss = DistillationLoss(zero_base, FixedTeacher(teacher.astype(np.float32)), "soft", alpha=1.0, tau=t)
    value = float(loss((paddle.zeros([4, 5]), paddle.to_tensor(kd.astype(np.float32))), None, None))
    assert value == pytest.approx(by_hand, rel=1e-5)


def test_the_teacher_sees_the_batch_at_its_size_and_normalization():
    seen = []

    class Record(paddle.nn.Layer):
        def forward(self, x):
            seen.append(x.numpy())
            return paddle.zeros([x.shape[0], 10])
    s_mean, s_std, t_mean, t_std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pixels = np.random.default_rng(1).random((2, 3, 8, 8)).astype(np.float32)
    student = ((pixels - np.reshape(s_mean, (1, 3, 1, 1))) / np.reshape(s_std, (1, 3, 1, 1))).astype(np.float32)
    Teacher(Record(), s_mean, s_std, mean=t_mean, std=t_std)(paddle.to_tensor(student))
    expected = (pixels - np.reshape(t_mean, (1, 3, 1, 1))) / np.reshape(t_std, (1, 3, 1, 1))
    np.testing.assert_allclose(seen[0], expected, atol=1e-5)
    Teacher(Record(), s_mean, s_std, img_size=16, interpolation="nearest")(paddle.to_tensor(student))
    np.testing.assert_allclose(seen[1], student.repeat(2, axis=2).repeat(2, axis=3), atol=1e-6)
    Teacher(Record(), s_mean, s_std, mean=s_mean, std=s_std)(paddle.to_tensor(student))  # the same: untouched
    np.testing.assert_array_equal(seen[2], student)


def test_a_teacher_ending_in_softmax_gives_logits_of_the_same_distribution():
    class Softmaxed(paddle.nn.Layer):
        def forward(self, x):
            return paddle.nn.functional.softmax(x.mean(axis=[2, 3]) * 3, axis=-1)
    teacher = Teacher(Softmaxed(), [0.5] * 3, [0.5] * 3)
    images = paddle.to_tensor(np.random.default_rng(2).standard_normal((4, 3, 2, 2)).astype(np.float32))
    assert teacher.probe(images) == [4, 3] and teacher.probabilities
    expected = paddle.nn.functional.softmax(images.mean(axis=[2, 3]) * 3, axis=-1).numpy()
    np.testing.assert_allclose(paddle.nn.functional.softmax(teacher(images), axis=-1).numpy(), expected, atol=1e-5)


def test_a_training_step_trains_the_student_and_leaves_the_teacher_frozen():
    paddle.seed(0)
    student = VisionTransformer(**TINY, distilled=True)
    teacher_layer = VisionTransformer(**TINY)
    teacher_layer.train()  # a teacher handed over in training mode is put in eval mode
    before = {k: v.numpy().copy() for k, v in teacher_layer.state_dict().items()}
    teacher = Teacher(teacher_layer, [0.5] * 3, [0.5] * 3)
    assert not teacher_layer.training and all(p.stop_gradient for p in teacher_layer.parameters())
    optimizer = build_adamw(student, 1e-2, weight_decay=0.0)
    step = make_train_step(student, DistillationLoss(CELoss(), teacher, "hard"), optimizer, Precision())
    images = paddle.to_tensor(np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32))
    labels = paddle.to_tensor(np.array([0, 1, 2, 3]))
    dist_head = student.head_dist.weight.numpy().copy()
    step((images, labels))
    assert not np.array_equal(student.head_dist.weight.numpy(), dist_head)  # the distillation head learns
    for k, v in teacher_layer.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    assert all(p.grad is None for p in teacher_layer.parameters())
    teacher_ids = {id(p) for p in teacher_layer.parameters()}
    assert not teacher_ids & {id(p) for p in optimizer._parameter_list}
    assert teacher.seconds > 0


def test_none_trains_the_class_head_alone():
    """The official `none`: base loss on the class head; the distillation head gets no gradient."""
    student = VisionTransformer(**TINY, distilled=True)
    optimizer = build_adamw(student, 1e-2, weight_decay=0.0)
    step = make_train_step(student, DistillationLoss(CELoss(), None, "none"), optimizer, Precision())
    images = paddle.to_tensor(np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32))
    head, dist_head = student.head.weight.numpy().copy(), student.head_dist.weight.numpy().copy()
    step((images, paddle.to_tensor(np.array([1, 2]))))
    assert not np.array_equal(student.head.weight.numpy(), head)
    np.testing.assert_array_equal(student.head_dist.weight.numpy(), dist_head)
