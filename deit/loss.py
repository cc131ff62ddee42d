"""Cross entropy with label smoothing, also for soft (Mixup/CutMix) targets; DeiT's
distillation loss around it."""
import paddle
import paddle.nn.functional as F


class CELoss:
    """Hard int labels: label-smoothed CE with `epsilon` (timm LabelSmoothingCrossEntropy).
    Soft float targets [N, C]: timm SoftTargetCrossEntropy (the targets carry the smoothing)."""

    def __init__(self, epsilon: float = 0.0, weight: float = 1.0):
        self.epsilon, self.weight = float(epsilon), float(weight)

    def __call__(self, logits, target):
        logp = F.log_softmax(logits.astype("float32"), axis=-1)
        if target.ndim == 2 and target.dtype != paddle.int64:
            loss = -(target * logp).sum(axis=-1)
        else:
            nll = -paddle.take_along_axis(logp, target.reshape([-1, 1]), axis=-1).squeeze(-1)
            loss = (1.0 - self.epsilon) * nll - self.epsilon * logp.mean(axis=-1)
        return self.weight * loss.mean()



class DistillationLoss:
    """facebookresearch/deit's DistillationLoss (losses.py): `(1 - alpha) * base + alpha * kd`.

    `base` (label smoothing or Mixup's soft targets, as configured) scores the class head; the
    distillation head is scored against the teacher's view of the same images:
    - `soft`: KL(teacher || student) at temperature `tau`, summed, times tau^2, divided by the
      number of logits (batch x classes), as the official code does;
    - `hard`: cross-entropy against the teacher's argmax (no smoothing);
    - `none`: the base loss of the class head alone (the distillation head is not trained).
    The train step passes the inputs (`needs_inputs`) for the teacher to see."""

    needs_inputs = True

    def __init__(self, base, teacher, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0):
        if kind not in ("none", "soft", "hard"):
            raise ValueError(f"distillation type must be none, soft or hard, got {kind!r}")
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, float(alpha), float(tau)

    def __call__(self, outputs, target, inputs):
        outputs_kd = None
        if isinstance(outputs, (tuple, list)):
            outputs, outputs_kd = outputs
        base = self.base(outputs, target)
        if self.kind == "none":
            return base
        if outputs_kd is None:
            raise ValueError("distillation needs the model's two heads (a distilled model in training mode)")
        teacher = self.teacher(inputs)
        kd = outputs_kd.astype("float32")
        if self.kind == "soft":
            t = self.tau
            log_p = F.log_softmax(kd / t, axis=1)
            log_q = F.log_softmax(teacher / t, axis=1)
            distillation = (paddle.exp(log_q) * (log_q - log_p)).sum() * (t * t) / (kd.shape[0] * kd.shape[1])
        else:
            distillation = F.cross_entropy(kd, teacher.argmax(axis=1))
        return base * (1 - self.alpha) + distillation * self.alpha


LOSSES = {"CELoss": CELoss}  # the Loss section's names; DistillationLoss is built from Distillation
