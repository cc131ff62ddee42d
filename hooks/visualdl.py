"""VisualDL curves, PLSC's `Global.use_visualdl`: scalars under `{output_dir}/vdl` (rank 0).

train/loss, train/lr, train/img_per_s, the time shares (train/time_data, ...), train/mfu (and
train/loss_scale with float16 loss scaling, train/teacher_fraction when distilling) at each
report; {eval,eval_ema}/top1, top5 and loss (and a distilled model's top1_cls, top1_dist) at
each evaluation; the x axis is the optimizer step. `visualdl --logdir OUTPUT_DIR/vdl` shows them.
"""
from engine import Hook, dist

from engine.errors import UserError

from .order import Order
from . import kinds


class VisualDL(Hook):
    priority = Order.VISUALDL

    def __init__(self, logdir: str):
        try:
            from visualdl import LogWriter
        except ImportError as exc:
            raise UserError(f"Global.use_visualdl is true but visualdl cannot be imported ({exc}): "
                            f"pip install visualdl (or this package's [visualdl] extra), or set "
                            f"Global.use_visualdl: False") from None
        self.logdir, self._writer_class, self.writer = logdir, LogWriter, None

    def started(self, engine):
        if dist.is_main():
            self.writer = self._writer_class(logdir=self.logdir)

    def iter_end(self, engine):
        record = engine.state.reports.fresh(kinds.TRAIN, with_parts=True)
        if self.writer is None or record is None:
            return
        for key in ("loss", "lr", "img_per_s", "loss_scale", "mfu", "tflops_per_device", "teacher_fraction",
                    "time_data", "time_step", "time_hooks", "time_evaluation", "time_checkpoint", "time_other"):
            if record.get(key) is not None:
                self.writer.add_scalar(tag=f"train/{key}", step=record["iteration"], value=float(record[key]))

    def eval_end(self, engine):
        state = engine.state
        record = state.reports.latest(state.evaluation.name)
        if self.writer is not None:
            for key in ("top1", "top5", "loss", "top1_cls", "top1_dist"):  # the heads: a distilled model
                if key in record:
                    self.writer.add_scalar(tag=f"{record['event']}/{key}", step=record["iteration"],
                                           value=float(record[key]))

    def ended(self, engine):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
