"""PLSC's TimmCosine learning rate as a pure function of the step: no state to checkpoint."""
import math


def timm_cosine(t: float, base_lr: float, eta_min: float, warmup_t: float, warmup_start_lr: float,
                t_initial: float) -> float:
    """timm CosineLRScheduler._get_lr(t) with warmup_prefix=False, one cycle, no noise."""
    if t < warmup_t:
        return warmup_start_lr + t * (base_lr - warmup_start_lr) / warmup_t
    if t >= t_initial:
        return eta_min
    return eta_min + 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * t / t_initial))


class TimmCosine:
    """lr(iteration) for 1-based optimizer steps.

    decay_unit 'epoch' reproduces the official DeiT main.py, which calls `scheduler.step(epoch)`
    at the END of each epoch: epochs 1 and 2 both run at warmup_start_lr and epoch e (1-based)
    runs at the value for t = e - 2. decay_unit 'step' is the per-step schedule without the lag.
    """

    def __init__(self, learning_rate, eta_min, warmup_epoch, warmup_start_lr, epochs,
                 iters_per_epoch, decay_unit="epoch", lr_scale: float = 1.0):
        if decay_unit not in ("epoch", "step"):
            raise ValueError(f"decay_unit must be 'epoch' or 'step', got {decay_unit!r}")
        self.base_lr = learning_rate * lr_scale
        self.eta_min, self.warmup_start_lr = eta_min, warmup_start_lr
        self.warmup_epoch, self.epochs, self.iters = warmup_epoch, epochs, iters_per_epoch
        self.decay_unit = decay_unit

    def __call__(self, iteration: int) -> float:
        return self.at((iteration - 1) / self.iters)

    def at(self, epochs_done: float) -> float:
        """The LR of the step taken after `epochs_done` epochs (a fraction): the same curve
        whatever the steps per epoch, so a run resumed on another number of processes goes on
        where it stopped. The step unit counts in this run's steps (t = epochs x iters)."""
        if self.decay_unit == "epoch":
            epoch = math.floor(epochs_done + 1e-9) + 1
            return timm_cosine(max(epoch - 2, 0), self.base_lr, self.eta_min, self.warmup_epoch,
                               self.warmup_start_lr, self.epochs)
        return timm_cosine(epochs_done * self.iters, self.base_lr, self.eta_min, self.warmup_epoch * self.iters,
                           self.warmup_start_lr, self.epochs * self.iters)
