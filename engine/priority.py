"""The order hooks run in at each event: lower first, ties in registration order.

The one table of the order (mmengine's `Priority`, with detectron2's reason per hook). A hook
of yours takes `NORMAL` unless it sets `priority`; to be saved with each checkpoint, its state
must be settled before `CHECKPOINT` runs. `--dry-run` prints the resulting order per event.
"""
from enum import IntEnum


class Priority(IntEnum):
    # times the step before any other hook's work is counted in it; publishes the train report
    TRAIN_METER = 0
    # stops a diverged run before EMA, the checkpoint or a log sees the non-finite step
    NAN_GUARD = 1
    # sets the step's LR at ITER_START, before anything reads it
    LR_SCHEDULE = 10
    # reads the loss scale at report steps, right after the train report it belongs to
    GRAD_SCALER = 15
    # averages the weights the step just produced, before evaluation may use them
    EMA = 20
    # evaluates the model (and the EMA model) the step and EMA left
    EVALUATE = 30
    # your hooks: after training-state hooks, before the ones that record or show them
    NORMAL = 50
    # counts unreadable images at epoch end, for the logs below
    DATA_HEALTH = 80
    # writes the step's rows before the checkpoint records the log's length
    METRICS_LOG = 85
    # writes the same reports as curves; like the metrics log, a reader of the reports
    VISUALDL = 86
    # saves after every hook whose state or rows it records
    CHECKPOINT = 90
    # display only: shows what the others did, last
    PROGRESS = 95
