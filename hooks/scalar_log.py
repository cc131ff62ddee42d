"""What the curve loggers (VisualDL, TensorBoard, Weights & Biases) share: which reports become
which curves and only rank 0 writing; and for the two that write files of their own, a resume
that continues the curves without a duplicate point.

At each train report: train/loss, lr, img_per_s, the time shares (train/time_data, ...), mfu,
tflops_per_device (and train/loss_scale with float16 loss scaling, train/teacher_fraction when
distilling). At each evaluation: {eval,eval_ema}/top1, top5, loss (and a distilled model's
top1_cls, top1_dist). The x axis is the optimizer step.

Resume (FileScalarLog): VisualDL's and TensorBoard's formats are files of whole records,
appended to. A checkpoint flushes the writer and records its file and length; a resume cuts that
file back to that length and removes the log files the interrupted run opened after it, so the
points logged between the checkpoint and the interruption (which the resumed run logs again)
appear once, as metrics.jsonl's rows do.
"""
import glob
import importlib
import os

from engine import Hook, dist
from engine.errors import UserError

from . import kinds

TRAIN_KEYS = ("loss", "lr", "img_per_s", "loss_scale", "mfu", "tflops_per_device", "teacher_fraction",
              "time_data", "time_step", "time_hooks", "time_evaluation", "time_checkpoint", "time_other")
EVAL_KEYS = ("top1", "top5", "loss", "top1_cls", "top1_dist")


def import_writer(module: str, name: str, key: str, package: str, extra: str):
    """`module.name`, the writer a curve logger needs, or one line naming what to install."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise UserError(f"{key} is true but {module} cannot be imported ({exc}): pip install {package} (or this "
                        f"package's [{extra}] extra), or set {key}: False") from None


class ScalarLog(Hook):
    """A writer of curves. Subclasses: `open(engine)` (returns the writer), `scalar(tag, value,
    step)`, `close()`."""

    writer = None

    def open(self, engine):
        raise NotImplementedError

    def scalar(self, tag: str, value: float, step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def started(self, engine):
        if dist.is_main():
            self.writer = self.open(engine)

    def log_train(self, record) -> None:
        for key in TRAIN_KEYS:
            if record.get(key) is not None:
                self.scalar(f"train/{key}", float(record[key]), record["iteration"])

    def log_eval(self, record) -> None:
        for key in EVAL_KEYS:
            if key in record:
                self.scalar(f"{record['event']}/{key}", float(record[key]), record["iteration"])

    def iter_end(self, engine):
        record = engine.state.reports.fresh(kinds.TRAIN, with_parts=True)
        if self.writer is not None and record is not None:
            self.log_train(record)

    def eval_end(self, engine):
        state = engine.state
        if self.writer is not None:
            self.log_eval(state.reports.latest(state.evaluation.name))

    def ended(self, engine):
        if self.writer is not None:
            self.close()
            self.writer = None


class FileScalarLog(ScalarLog):
    """A ScalarLog writing files named `pattern` into `logdir`, cut back on resume, through a
    writer with `flush()` and `close()` (VisualDL's LogWriter, tensorboardX's SummaryWriter)."""
    pattern = "*"

    def __init__(self, logdir: str):
        self.logdir, self._before, self._cut = logdir, set(), None

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    # ---- files -------------------------------------------------------------------------------
    def _files(self):
        return set(glob.glob(os.path.join(self.logdir, self.pattern)))

    def _own_file(self):
        """The file this run's writer writes (created at open or at its first record)."""
        mine = sorted(self._files() - self._before, key=os.path.getmtime)
        return mine[-1] if mine else None

    def _cut_back(self, cut) -> None:
        """Undo what an interrupted run logged after its checkpoint: its file back to the
        checkpoint's length, files opened after that one removed."""
        path = os.path.join(self.logdir, cut["file"])
        if not os.path.isfile(path):
            return  # another run directory's checkpoint, or files removed by hand: nothing to undo
        with open(path, "r+b") as f:
            f.truncate(min(cut["bytes"], os.path.getsize(path)))
        for later in self._files():  # both formats name their files by the time they were opened
            if os.path.basename(later) > cut["file"]:
                os.remove(later)

    # ---- events --------------------------------------------------------------------------------
    def started(self, engine):
        if not dist.is_main():
            return
        os.makedirs(self.logdir, exist_ok=True)
        if self._cut is not None:
            self._cut_back(self._cut)
        self._before = self._files()
        self.writer = self.open(engine)

    def state_dict(self):
        if self.writer is None:
            return {}
        self.flush()
        path = self._own_file()
        return {"file": os.path.basename(path), "bytes": os.path.getsize(path)} if path else {}

    def load_state_dict(self, state):
        self._cut = state if state.get("file") else None
