"""TensorBoard curves, `Global.use_tensorboard` (ours): the curves hooks/scalar_log.py lists, as
event files under `{output_dir}/tensorboard` (rank 0), written by tensorboardX.
`tensorboard --logdir OUTPUT_DIR/tensorboard` shows them."""
from .order import Order
from .scalar_log import FileScalarLog, import_writer


class TensorBoard(FileScalarLog):
    priority = Order.TENSORBOARD
    pattern = "events.out.tfevents.*"

    def __init__(self, logdir: str):
        super().__init__(logdir)
        self._writer_class = import_writer("tensorboardX", "SummaryWriter", "Global.use_tensorboard", "tensorboardX",
                                           "tensorboard")

    def open(self, engine):
        return self._writer_class(logdir=self.logdir, flush_secs=30)

    def scalar(self, tag, value, step):
        self.writer.add_scalar(tag, value, global_step=step)
