"""Exponential moving average of the weights (timm's ModelEma, as in the official DeiT).

After every optimizer step: ema = decay * ema + (1 - decay) * weights, over the whole
state_dict, in fp32 whatever the training dtype. `weights()` says what is averaged (default
the model's state_dict); under O2 it is the fp32 master weights, not their float16 roundings,
whose steps are mostly below float16's resolution. PLSC's `thres_steps` warm-up uses
min(decay, (1 + n) / (10 + n)) for the n-th update. The shadow lives in a second model of the
same architecture, so an Evaluate hook can evaluate it like any model; it starts as a copy of
the weights when the hook is made (after any pretrained weights are loaded).

`fused(shadows, sources) -> update(weight)`, when given, does the whole update in one call
(the wiring passes the compiled CPU kernel's for fp32 CPU training): a Paddle `lerp_` per tensor
cost 4% of the demo's step, nearly all of it dispatch. It is used once every source has the
shadow's dtype; until then, and without it, each tensor is updated with `lerp_`.
"""
import paddle

from engine import Hook

from .order import Order


class EMA(Hook):
    priority = Order.EMA

    def __init__(self, model, ema_model, decay: float = 0.99996, warmup: bool = False, weights=None,
                 fused=None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model, self.ema_model, self.decay, self.warmup = model, ema_model, decay, warmup
        self.weights = weights or model.state_dict
        self.updates = 0
        self.ema_model.eval()
        for p in self.ema_model.parameters():
            p.stop_gradient = True
        self.fused, self._pairs, self._update = fused, None, None
        with paddle.no_grad():  # the shadow starts at the weights as they are now (a resume replaces it)
            for shadow, value in self._paired():
                shadow.set_value(value.astype(shadow.dtype))

    def _paired(self):
        """(shadow, source) pairs; kept once every source has the shadow's dtype (O2 masters
        appear at the first optimizer step, until then sources are cast)."""
        if self._pairs is not None:
            return self._pairs
        ema = self.ema_model.state_dict()
        pairs = [(ema[name], value) for name, value in self.weights().items()]
        if all(shadow.dtype == value.dtype for shadow, value in pairs):
            self._pairs = pairs
            if self.fused is not None:
                self._update = self.fused([shadow for shadow, _ in pairs], [value for _, value in pairs])
        return pairs

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    def iter_end(self, engine):
        weight = 1.0 - self.current_decay()
        pairs = self._paired()
        with paddle.no_grad():
            if self._update is not None:
                self._update(weight)
            else:
                for shadow, value in pairs:
                    shadow.lerp_(value if value.dtype == shadow.dtype else value.astype(shadow.dtype), weight)
        self.updates += 1

    def state_dict(self):
        return {"updates": self.updates, "weights": self.ema_model.state_dict()}

    def load_state_dict(self, state):
        self.updates = state["updates"]
        self.ema_model.set_state_dict(state["weights"])
