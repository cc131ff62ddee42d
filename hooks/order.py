"""Where each built-in hook runs at an event, and why there (detectron2's reason per hook), on
engine.Priority's scale. A hook of yours takes `Priority.NORMAL` unless it sets `priority`; the
`AFTER_*` and `BEFORE_*` levels name the places a user hook most often needs. To be saved
with each checkpoint, a hook's state must be settled before `CHECKPOINT` runs (the engine warns
otherwise). `--dry-run` prints the resulting order per event.
"""
from enum import IntEnum


class Order(IntEnum):
    # times the step before any other hook's work is counted in it; publishes the train report
    TRAIN_METER = 0
    # stops a diverged run before EMA, the checkpoint or a log sees the non-finite step
    NAN_GUARD = 1
    # sets the step's LR at ITER_START, before anything reads it
    LR_SCHEDULE = 10
    # yours: right after the LR is set (reads this step's LR, or changes it)
    AFTER_LR_SCHEDULE = 11
    # reads the loss scale at report steps, right after the train report it belongs to
    GRAD_SCALER = 15
    # averages the weights the step just produced, before evaluation may use them
    EMA = 20
    # evaluates the model (and the EMA model) the step and EMA left
    EVALUATE = 30
    # reads the evaluation just made; stops before the rows and the checkpoint record the step
    EARLY_STOPPING = 31
    # yours, by default (engine.Priority.NORMAL): after training-state hooks, before the ones
    # that record or show them; the data position and the step limit run here too
    NORMAL = 50
    # counts unreadable images at epoch end, for the logs below
    DATA_HEALTH = 80
    # writes the step's rows before the checkpoint records the log's length
    METRICS_LOG = 85
    # writes the same reports as curves; like the metrics log, a reader of the reports
    VISUALDL = 86
    TENSORBOARD = 87
    WANDB = 88
    # yours: the last place whose state a checkpoint of this step holds
    BEFORE_CHECKPOINT = 89
    # saves after every hook whose state or rows it records
    CHECKPOINT = 90
    # stops on SIGTERM/SIGINT once the step's scheduled checkpoint is written
    STOP_ON_SIGNAL = 91
    # yours: after the files of this step are complete (an uploader of checkpoints)
    AFTER_CHECKPOINT = 92
    # display only: shows what the others did, last
    PROGRESS = 95
