"""TensorBoard curves, `Global.use_tensorboard` (ours): the curves hooks/scalar_log.py lists, as
event files under `{output_dir}/tensorboard` (rank 0), written by tensorboardX.
`tensorboard --logdir OUTPUT_DIR/tensorboard` shows them."""
from engine.errors import UserError

from .order import Order
from .scalar_log import FileScalarLog


class TensorBoard(FileScalarLog):
    priority = Order.TENSORBOARD
    pattern = "events.out.tfevents.*"

    def __init__(self, logdir: str):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as exc:
            raise UserError(f"Global.use_tensorboard is true but tensorboardX cannot be imported ({exc}): "
                            f"pip install tensorboardX (or this package's [tensorboard] extra), or set "
                            f"Global.use_tensorboard: False") from None
        super().__init__(logdir)
        self._writer_class = SummaryWriter

    def open(self, engine):
        return self._writer_class(logdir=self.logdir, flush_secs=30)

    def scalar(self, tag, value, step):
        self.writer.add_scalar(tag, value, global_step=step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()
