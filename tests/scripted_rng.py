"""A numpy-Generator stand-in that replays the uniform draws a timm fixture was made with."""
import math


class ScriptedRNG:
    def __init__(self, values, beta=None):
        self.values, self.beta_value = list(values), beta

    def random(self):
        return self.values.pop(0)

    def uniform(self, a=0.0, b=1.0):
        return a + (b - a) * self.values.pop(0)

    def integers(self, lo, hi=None, size=None):
        if hi is None:
            lo, hi = 0, lo
        assert size is None
        return lo + int(math.floor(self.values.pop(0) * (hi - lo)))

    def beta(self, a, b):
        return self.beta_value
