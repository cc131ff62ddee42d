"""Image transforms with timm's semantics, each `op(img, rng) -> img` with an explicit RNG.

Ops take a PIL image until NormalizeImage turns it into a float32 HWC array. PLSC's op
names (as written in its configs) map onto these classes in `TRANSFORM_OPS`.
"""
import math

import numpy as np
from PIL import Image

from ..errors import SetupError, unknown

_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
           "lanczos": Image.LANCZOS}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _interp(name: str):
    if name not in _INTERP:
        raise unknown("interpolation", name, _INTERP)
    return _INTERP[name]


class Compose:
    def __init__(self, ops):
        self.ops = list(ops)

    def __call__(self, img, rng):
        for op in self.ops:
            img = op(img, rng)
        return img

    def __repr__(self):
        return "Compose(" + ", ".join(type(op).__name__ for op in self.ops) + ")"


class DecodeImage:
    """Decoding happens in the dataset (Pillow, RGB); kept so PLSC configs build unchanged."""

    def __init__(self, to_rgb=True, channel_first=False):
        if not to_rgb or channel_first:
            raise SetupError("DecodeImage: only to_rgb: True, channel_first: False is supported")

    def __call__(self, img, rng):
        return img


class RandCropImage:
    """timm/torchvision RandomResizedCrop: 10 tries at a random area and log-uniform aspect,
    else a center crop clamped to the ratio range; then crop, and resize the crop to `size`
    (resizing with a box would let the filter read pixels outside it)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                 interpolation="bicubic", backend="pil"):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio, self.interp = tuple(scale), tuple(ratio), _interp(interpolation)

    def get_params(self, width, height, rng):
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, rng):
        top, left, h, w = self.get_params(img.width, img.height, rng)
        return img.crop((left, top, left + w, top + h)).resize(self.size[::-1], self.interp)


class RandFlipImage:
    def __init__(self, flip_code=1, prob=0.5):
        if flip_code != 1:
            raise SetupError("RandFlipImage: only flip_code: 1 (horizontal) is supported")
        self.prob = prob

    def __call__(self, img, rng):
        return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < self.prob else img


class ResizeImage:
    """Resize the short side to `resize_short` (torchvision's rounding), or to a fixed `size`."""

    def __init__(self, resize_short=None, size=None, interpolation="bicubic", backend="pil"):
        if (resize_short is None) == (size is None):
            raise SetupError("ResizeImage: give exactly one of resize_short or size")
        self.resize_short, self.size, self.interp = resize_short, size, _interp(interpolation)

    def __call__(self, img, rng):
        if self.size is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
            return img.resize(size, self.interp)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize_short, int(self.resize_short * long / short)
        return img.resize((new_short, new_long) if w <= h else (new_long, new_short), self.interp)


class CenterCropImage:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img, rng):
        th, tw = self.size
        top = int(round((img.height - th) / 2.0))
        left = int(round((img.width - tw) / 2.0))
        return img.crop((left, top, left + tw, top + th))


class NormalizeImage:
    """PIL image -> float32 array, `(x * scale - mean) / std`: HWC as PLSC defines it, or CHW
    directly when a later ToCHWImage would transpose anyway (`build_transforms` decides; it
    saves a full copy and runs the pipeline at timm's speed)."""

    channels_first = False

    def __init__(self, scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, order=""):
        if order not in ("", "hwc"):
            raise SetupError("NormalizeImage: only order '' or 'hwc' is supported")
        scale = float(scale)  # PLSC's `1.0/255.0` is a number once the config is read
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.mul = (scale / std).astype(np.float32)    # one multiply-add per value, in place
        self.add = (-mean / std).astype(np.float32)

    def __call__(self, img, rng):
        if not self.channels_first:
            arr = np.array(img, dtype=np.float32)
            arr *= self.mul
            arr += self.add
            return arr
        pixels = np.asarray(img)
        out = np.empty((pixels.shape[2], pixels.shape[0], pixels.shape[1]), np.float32)
        for c in range(pixels.shape[2]):
            np.multiply(pixels[:, :, c], self.mul[c], out=out[c])
            out[c] += self.add[c]
        return out


class RandomErasing:
    """timm RandomErasing, mode 'pixel', one box: with probability EPSILON, up to `attempt`
    tries at an area fraction in [sl, sh] and log-uniform aspect in [r1, 1/r1]; the box is
    filled with N(0, 1) noise per pixel and channel. Runs on the normalized array, in place,
    HWC (PLSC's order) or CHW (when `build_transforms` fused the transpose into Normalize)."""

    channels_first = False

    def __init__(self, EPSILON=0.25, sl=0.02, sh=1.0 / 3.0, r1=0.3, attempt=10,
                 use_log_aspect=True, mode="pixel"):
        if mode != "pixel" or not use_log_aspect:
            raise SetupError("RandomErasing: only mode: pixel with use_log_aspect: True is supported")
        self.prob, self.sl, self.sh = float(EPSILON), float(sl), float(sh)
        self.log_aspect = (math.log(r1), math.log(1.0 / r1))
        self.attempts = attempt

    def __call__(self, arr, rng):
        if rng.random() >= self.prob:
            return arr
        if self.channels_first:
            chans, height, width = arr.shape
        else:
            height, width, chans = arr.shape
        area = height * width
        for _ in range(self.attempts):
            target_area = rng.uniform(self.sl, self.sh) * area
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                if self.channels_first:
                    arr[:, top:top + h, left:left + w] = rng.standard_normal((chans, h, w), dtype=np.float32)
                else:
                    arr[top:top + h, left:left + w] = rng.standard_normal((h, w, chans), dtype=np.float32)
                break
        return arr


class TimmAutoAugment:
    """PLSC's name for timm's RandAugment on the PIL image. The fill colour is the mean pixel;
    the relative translate ops move by up to 0.45 x the image size (timm's translate_const)."""

    def __init__(self, config_str="rand-m9-mstd0.5-inc1", interpolation="bicubic", img_size=224,
                 mean=IMAGENET_MEAN):
        from .rand_augment import RandAugment
        fill = tuple(min(255, round(255 * x)) for x in mean)
        self.rand_augment = RandAugment.from_config(config_str, fill=fill, resample=_interp(interpolation))

    def __call__(self, img, rng):
        return self.rand_augment(img, rng)


class ToCHWImage:
    already_chw = False  # set by build_transforms when NormalizeImage wrote CHW itself

    def __call__(self, arr, rng):
        if self.already_chw:
            return arr
        return np.ascontiguousarray(np.asarray(arr, np.float32).transpose(2, 0, 1))


TRANSFORM_OPS = {cls.__name__: cls for cls in (
    DecodeImage, RandCropImage, RandFlipImage, ResizeImage, CenterCropImage, NormalizeImage,
    RandomErasing, TimmAutoAugment, ToCHWImage)}


def build_transforms(ops) -> Compose:
    """`ops` as in the config: a list of `{OpName: {kwargs}}`."""
    built = []
    for entry in ops:
        (name, kwargs), = entry.items()
        if name not in TRANSFORM_OPS:
            raise unknown("transform op", name, TRANSFORM_OPS)
        try:
            built.append(TRANSFORM_OPS[name](**(kwargs or {})))
        except TypeError as exc:
            raise SetupError(f"transform op {name}: {exc}") from None
    _fuse_channels_first(built)
    return Compose(built)


def _fuse_channels_first(ops) -> None:
    """NormalizeImage ... ToCHWImage with only RandomErasing between: write CHW at normalize
    time (same values, one pass fewer over the image)."""
    for i, op in enumerate(ops):
        if not isinstance(op, NormalizeImage):
            continue
        j = i + 1
        while j < len(ops) and isinstance(ops[j], RandomErasing):
            j += 1
        if j < len(ops) and isinstance(ops[j], ToCHWImage):
            for fused in ops[i:j]:
                fused.channels_first = True
            ops[j].already_chw = True
