"""timm's RandAugment (`rand-m9-mstd0.5-inc1` and friends), driven by an explicit RNG.

Same op list and order, same magnitude noise and clipping, same level -> argument mappings
and the same Pillow calls as timm.data.auto_augment, so an image gets the same augmentation
for the same random draws. Randomness comes from a numpy Generator (seeded per sample by the
dataset) instead of Python's global `random`, which is what makes runs resumable.
"""
import re

from PIL import Image, ImageEnhance, ImageOps

from ..errors import SetupError

LEVEL_DENOM = 10.0

RAND_TRANSFORMS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                   "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateXRel", "TranslateYRel"]
RAND_INCREASING_TRANSFORMS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                              "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
                              "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                              "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


# ---- level (magnitude 0..10) -> op arguments; `negate` is the coin timm flips ----------------
def _signed(value, negate):
    return -value if negate else value


def _enhance(level, negate):
    return (level / LEVEL_DENOM) * 1.8 + 0.1,


def _enhance_increasing(level, negate):
    return max(0.1, 1.0 + _signed((level / LEVEL_DENOM) * 0.9, negate)),


def _posterize(level, negate):
    return int((level / LEVEL_DENOM) * 4),


def _solarize(level, negate):
    return min(256, int((level / LEVEL_DENOM) * 256)),


LEVEL_TO_ARG = {
    "AutoContrast": None, "Equalize": None, "Invert": None,
    "Rotate": lambda level, negate: (_signed((level / LEVEL_DENOM) * 30.0, negate),),
    "Posterize": _posterize,
    "PosterizeIncreasing": lambda level, negate: (4 - _posterize(level, negate)[0],),
    "Solarize": _solarize,
    "SolarizeIncreasing": lambda level, negate: (256 - _solarize(level, negate)[0],),
    "SolarizeAdd": lambda level, negate: (min(128, int((level / LEVEL_DENOM) * 110)),),
    "Color": _enhance, "ColorIncreasing": _enhance_increasing,
    "Contrast": _enhance, "ContrastIncreasing": _enhance_increasing,
    "Brightness": _enhance, "BrightnessIncreasing": _enhance_increasing,
    "Sharpness": _enhance, "SharpnessIncreasing": _enhance_increasing,
    "ShearX": lambda level, negate: (_signed((level / LEVEL_DENOM) * 0.3, negate),),
    "ShearY": lambda level, negate: (_signed((level / LEVEL_DENOM) * 0.3, negate),),
    "TranslateXRel": lambda level, negate: (_signed((level / LEVEL_DENOM) * 0.45, negate),),
    "TranslateYRel": lambda level, negate: (_signed((level / LEVEL_DENOM) * 0.45, negate),),
}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing",
          "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"}


# ---- the ops: the same Pillow calls as timm ---------------------------------------------
def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _posterize_bits(img, bits):
    """Keep `bits` high bits. 0 bits (PosterizeIncreasing at magnitude 10) is a black image, as
    Pillow < 13 made it; Pillow 13 refuses bits=0, and timm with it raises there."""
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


def _solarize_add(img, add, thresh=128):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * 3 if img.mode == "RGB" else lut)


def apply_op(name, img, args, fill, resample):
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(args[0], resample=resample, fillcolor=fill)
    if name.startswith("Posterize"):
        return _posterize_bits(img, args[0])
    if name.startswith("SolarizeAdd"):
        return _solarize_add(img, args[0])
    if name.startswith("Solarize"):
        return ImageOps.solarize(img, args[0])
    for prefix, enhancer in (("Color", ImageEnhance.Color), ("Contrast", ImageEnhance.Contrast),
                             ("Brightness", ImageEnhance.Brightness), ("Sharpness", ImageEnhance.Sharpness)):
        if name.startswith(prefix):
            return enhancer(img).enhance(args[0])
    if name == "ShearX":
        return _affine(img, (1, args[0], 0, 0, 1, 0), fill, resample)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, args[0], 1, 0), fill, resample)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, args[0] * img.size[0], 0, 1, 0), fill, resample)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, args[0] * img.size[1]), fill, resample)
    raise SetupError(f"unknown RandAugment op {name!r}")


class RandAugment:
    """`num_layers` ops drawn with replacement; each applied with probability `prob` at a
    magnitude ~ N(m, mstd) clipped to [0, mmax or 10] (mstd > 100: uniform in [0, m])."""

    def __init__(self, ops, magnitude=10.0, num_layers=2, prob=0.5, magnitude_std=0.0,
                 magnitude_max=None, fill=(128, 128, 128), resample=Image.BICUBIC):
        self.ops, self.magnitude, self.num_layers, self.prob = list(ops), magnitude, num_layers, prob
        self.magnitude_std, self.magnitude_max = magnitude_std, magnitude_max
        self.fill, self.resample = tuple(fill), resample

    @classmethod
    def from_config(cls, config_str: str, **kwargs) -> "RandAugment":
        """Parse timm's config string, e.g. `rand-m9-mstd0.5-inc1`."""
        parts = config_str.split("-")
        if parts[0] != "rand":
            raise SetupError(f"TimmAutoAugment config_str {config_str!r} must start with 'rand-'")
        params, increasing = {}, False
        for part in parts[1:]:
            key, val = re.split(r"(\d.*)", part)[:2] if re.search(r"\d", part) else (part, "")
            if key == "mstd":
                params["magnitude_std"] = float("inf") if float(val) > 100 else float(val)
            elif key == "mmax":
                params["magnitude_max"] = int(val)
            elif key == "inc":
                increasing = bool(int(val))
            elif key == "m":
                params["magnitude"] = int(val)
            elif key == "n":
                params["num_layers"] = int(val)
            elif key == "p":
                params["prob"] = float(val)
            else:
                raise SetupError(f"TimmAutoAugment config_str {config_str!r}: unknown section {part!r}")
        ops = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
        return cls(ops, **params, **kwargs)

    def _magnitude(self, rng) -> float:
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = rng.uniform(0, m)
        elif self.magnitude_std > 0:
            m = rng.normal(m, self.magnitude_std)
        return max(0.0, min(m, self.magnitude_max or LEVEL_DENOM))

    def __call__(self, img, rng):
        for index in rng.integers(0, len(self.ops), size=self.num_layers):
            name = self.ops[index]
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            magnitude = self._magnitude(rng)
            level_fn = LEVEL_TO_ARG[name]
            args = level_fn(magnitude, name in SIGNED and rng.random() > 0.5) if level_fn else ()
            img = apply_op(name, img, args, self.fill, self.resample)
        return img
