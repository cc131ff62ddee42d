"""Everything a hook may read about the run, in one place."""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from .reports import Reports


@dataclass
class EvalProgress:
    """The evaluation running now: its name ("eval", "eval_ema"), batches done and in all."""

    name: str
    done: int = 0
    total: Optional[int] = None


@dataclass(frozen=True)
class Resumed:
    """What a resume found, for hooks at RESUMED/STARTED and for the run's own lines: the
    checkpoint, the launch sizes then and now, the config keys that changed (key -> [then,
    now]), `record` (the row metrics.jsonl keeps when something changed, else None) and `text`
    (lines the run prints about it, e.g. an elastic resume's block)."""

    path: str
    world_size: Tuple[int, int]
    changes: Dict[str, list]
    record: Optional[Dict[str, Any]] = None
    text: str = ""

    @property
    def elastic(self) -> bool:
        return self.world_size[0] != self.world_size[1]


@dataclass
class State:
    """Counters are incremented *before* their START event, so at ITER_END
    `iteration` is the number of completed optimizer steps and `epoch_iter`
    the number of completed steps in the current (1-based) `epoch`."""

    max_epochs: int = 1
    iters_per_epoch: Optional[int] = None
    epoch: int = 0
    iteration: int = 0
    epoch_iter: int = 0
    epoch_ended: bool = True   # False from EPOCH_START until EPOCH_END fires
    batch: Any = None
    output: Any = None
    evaluation: Optional[EvalProgress] = None  # set from EVAL_START through EVAL_END
    resumed: Optional[Resumed] = None  # set at RESUMED when the run continues a checkpoint
    epoch_fraction: Optional[Callable[[int], float]] = field(default=None, repr=False)  # data.progress
    reports: Reports = field(init=False, repr=False)  # what hooks publish for each other
    should_stop: bool = False
    exception: Optional[BaseException] = None

    def __post_init__(self):
        self.reports = Reports(lambda: self.iteration)

    @property
    def max_iterations(self) -> Optional[int]:
        if self.iters_per_epoch is None:
            return None
        return self.max_epochs * self.iters_per_epoch

    def every(self, n: int, unit: str = "step") -> bool:
        """True when the step (or, for unit='epoch', the epoch) just completed is a multiple of n."""
        count = self.iteration if unit == "step" else self.epoch
        return n > 0 and count > 0 and count % n == 0

    def is_last_epoch(self) -> bool:
        return self.epoch >= self.max_epochs

    def epochs_done(self, steps: Optional[int] = None) -> float:
        """Epochs trained after `steps` steps of the current epoch (default: all so far), as a
        fraction: 1.5 is half-way through epoch 2, counted in samples when the data says how
        (so it survives a change of the number of processes), else in steps."""
        if steps is None and self.epoch_ended:
            return float(self.epoch)  # whole, whatever the data's plan now (an elastic resume)
        steps = self.epoch_iter if steps is None else steps
        if self.epoch_fraction is not None:
            fraction = self.epoch_fraction(steps)
        elif self.iters_per_epoch:
            fraction = steps / self.iters_per_epoch
        else:
            return float(self.epoch)
        return max(self.epoch - 1 + fraction, 0.0)

    def counters(self) -> Dict[str, Any]:
        """For records: the counters, and `epochs_done` (see above), an x axis that survives
        changes of the batch."""
        return {"epoch": self.epoch, "iteration": self.iteration, "epoch_iter": self.epoch_iter,
                "epochs_done": round(self.epochs_done(), 6)}

    def position(self) -> Dict[str, Any]:
        """Where the loop is: the counters, and whether this epoch's EPOCH_END has begun."""
        return {"epoch": self.epoch, "iteration": self.iteration, "epoch_iter": self.epoch_iter,
                "epoch_ended": self.epoch_ended}

    def set_position(self, position: Dict[str, Any]) -> None:
        self.epoch, self.iteration = int(position["epoch"]), int(position["iteration"])
        self.epoch_iter, self.epoch_ended = int(position["epoch_iter"]), bool(position["epoch_ended"])
