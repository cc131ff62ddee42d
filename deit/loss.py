"""Cross entropy with label smoothing, also for soft (Mixup/CutMix) targets."""
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


LOSSES = {"CELoss": CELoss}
