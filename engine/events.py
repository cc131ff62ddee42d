"""The events an Engine fires, in the order a successful epoch meets them."""
from enum import Enum


class Events(str, Enum):
    """Each value is also the name of the Hook method that handles the event."""

    RESUMED = "resumed"      # after a checkpoint is loaded, before STARTED: state.resumed says what
    STARTED = "started"
    EPOCH_START = "epoch_start"
    ITER_START = "iter_start"
    AFTER_BACKWARD = "after_backward"
    ITER_END = "iter_end"
    EPOCH_END = "epoch_end"
    EVAL_START = "eval_start"      # fired by an evaluation hook: state.evaluation says which
    EVAL_ITER_END = "eval_iter_end"  # after each of its batches (for progress displays)
    EVAL_END = "eval_end"
    COMPLETED = "completed"
    EXCEPTION = "exception"
    ENDED = "ended"          # always last, after COMPLETED or EXCEPTION: release what you hold
