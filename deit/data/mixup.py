"""Mixup / CutMix in timm's "batch" mode, with label smoothing, on Paddle tensors.

One lambda per batch; the partner of sample i is sample n-1-i (the batch reversed); CutMix's
lambda is corrected to the clipped box's actual area. Randomness comes from a numpy Generator
the loader seeds by (seed, epoch, batch index), so a resumed run mixes exactly the same way.
"""
import numpy as np
import paddle


def rand_bbox(shape, lam, cy, cx):
    """timm's rand_bbox for a given centre: a box of side sqrt(1 - lam) of the image, clipped."""
    ratio = np.sqrt(1 - lam)
    img_h, img_w = shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + (cut_h + 1) // 2, 0, img_h)
    xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + (cut_w + 1) // 2, 0, img_w)
    return int(yl), int(yh), int(xl), int(xh)


def corrected_lam(shape, box):
    yl, yh, xl, xh = box
    return 1.0 - (yh - yl) * (xh - xl) / float(shape[-2] * shape[-1])


def mixup_target(labels, num_classes: int, lam: float, smoothing: float):
    """Smoothed one-hot of each label, mixed with that of its partner (the reversed batch)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = paddle.nn.functional.one_hot(labels.astype("int64").reshape([-1]), num_classes) * (on - off) + off
    return y1 * lam + y1.flip([0]) * (1.0 - lam)


class Mixup:
    """timm.data.Mixup(mode='batch', correct_lam=True) semantics.

    With probability `prob` a batch is mixed; then CutMix with probability `switch_prob`
    (lambda ~ Beta(cutmix_alpha)), else Mixup (lambda ~ Beta(mixup_alpha))."""

    def __init__(self, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                 label_smoothing=0.1, num_classes=1000):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing, self.num_classes = label_smoothing, num_classes

    def params(self, rng):
        """(lam, use_cutmix) for one batch, drawn as timm's _params_per_batch draws them."""
        if not rng.random() < self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.random() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def __call__(self, images, labels, rng):
        lam, use_cutmix = self.params(rng)
        if lam != 1.0:
            if use_cutmix:
                h, w = images.shape[-2:]
                box = rand_bbox(images.shape, lam, int(rng.integers(0, h)), int(rng.integers(0, w)))
                lam = corrected_lam(images.shape, box)
                yl, yh, xl, xh = box
                images = images.clone()
                images[:, :, yl:yh, xl:xh] = images.flip([0])[:, :, yl:yh, xl:xh]
            else:
                images = images * lam + images.flip([0]) * (1.0 - lam)
        return images, mixup_target(labels, self.num_classes, lam, self.label_smoothing)


def from_plsc(op: dict, num_classes: int) -> Mixup:
    """PLSC's `TransformOpSampler: {Mixup: {alpha, prob, epsilon}, Cutmix: {...}}`: PLSC picks
    one of the two by their probs; in timm's terms prob = sum, switch_prob = cutmix share."""
    mix, cut = op.get("Mixup", {}) or {}, op.get("Cutmix", {}) or {}
    p_mix, p_cut = float(mix.get("prob", 0.0)), float(cut.get("prob", 0.0))
    total = p_mix + p_cut
    if total <= 0:
        raise ValueError("TransformOpSampler needs Mixup or Cutmix with prob > 0")
    return Mixup(mixup_alpha=float(mix.get("alpha", 0.0)) if p_mix else 0.0,
                 cutmix_alpha=float(cut.get("alpha", 0.0)) if p_cut else 0.0,
                 prob=min(1.0, total), switch_prob=p_cut / total,
                 label_smoothing=float(mix.get("epsilon", cut.get("epsilon", 0.0))),
                 num_classes=int(mix.get("class_num", cut.get("class_num", num_classes))))
