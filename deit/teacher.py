"""The teacher of DeiT's distillation: any Paddle classifier, frozen, seeing the student's batch.

Frozen means eval mode, no gradient and no optimizer state; the teacher is held by the loss,
not by the student, so it is never in the student's state_dict, its optimizer or a checkpoint.
It sees the student's augmented, normalized batch (the official recipe: the same Mixup/CutMix
image), resized to its own input size and renormalized to its own mean and std when those
differ. A teacher that ends in a softmax (PaddleClas exports add one by default) gives
probabilities; they are turned back into logits (log p), which softmax maps to the same
distribution, so soft distillation sees what the teacher meant.
"""
import contextlib
import time

import numpy as np
import paddle
import paddle.nn.functional as F


class Teacher:
    """`layer(images) -> logits` (or probabilities) for the teacher's input; `seconds` is the
    time spent in its forward so far (host time: on a GPU the launches, not the kernels)."""

    def __init__(self, layer, student_mean, student_std, img_size=None, mean=None, std=None,
                 interpolation="bicubic", autocast=contextlib.nullcontext):
        self.layer, self.img_size, self.interpolation, self.autocast = layer, img_size, interpolation, autocast
        layer.eval()
        for p in layer.parameters():
            p.stop_gradient = True
        self.renormalize = None
        if mean is not None or std is not None:
            mean = student_mean if mean is None else mean
            std = student_std if std is None else std
            if list(mean) != list(student_mean) or list(std) != list(student_std):
                s_mean, s_std, t_mean, t_std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1)
                                                for v in (student_mean, student_std, mean, std))
                # x_t = (x_s * std_s + mean_s - mean_t) / std_t = x_s * a + b
                self.renormalize = (paddle.to_tensor(s_std / t_std), paddle.to_tensor((s_mean - t_mean) / t_std))
        self.probabilities = False  # set by `probe` when the teacher's rows are distributions
        self.seconds = 0.0

    def inputs(self, images):
        """The student's batch as this teacher takes it."""
        x = images.astype("float32")
        if self.img_size is not None and list(x.shape[-2:]) != [self.img_size, self.img_size]:
            x = F.interpolate(x, size=[self.img_size, self.img_size], mode=self.interpolation, align_corners=False)
        if self.renormalize is not None:
            x = x * self.renormalize[0] + self.renormalize[1]
        return x

    def __call__(self, images):
        start = time.perf_counter()
        with self.autocast():
            out = self._outputs(images)
        if self.probabilities:
            out = paddle.log(paddle.clip(out, min=1e-12))
        self.seconds += time.perf_counter() - start
        return out

    def _outputs(self, images):
        with paddle.no_grad():
            return _logits_of(self.layer(self.inputs(images))).astype("float32")

    def probe(self, images) -> list:
        """Run once on `images` (the student's input shape) before training: the output's shape,
        and whether its rows are probabilities (then turned into logits from here on)."""
        out = self._outputs(images).numpy()
        self.probabilities = bool(out.ndim == 2 and (out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
        return list(out.shape)


def _logits_of(out):
    """A distilled teacher in eval mode already averages its heads; a list output takes its first."""
    return out[0] if isinstance(out, (list, tuple)) else out
