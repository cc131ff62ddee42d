"""VisualDL curves, PLSC's `Global.use_visualdl`: scalars under `{output_dir}/vdl` (rank 0), the
curves hooks/scalar_log.py lists. `visualdl --logdir OUTPUT_DIR/vdl` shows them."""
from .order import Order
from .scalar_log import FileScalarLog, import_writer


class VisualDL(FileScalarLog):
    priority = Order.VISUALDL
    pattern = "vdlrecords.*.log"

    def __init__(self, logdir: str):
        super().__init__(logdir)
        self._writer_class = import_writer("visualdl", "LogWriter", "Global.use_visualdl", "visualdl", "visualdl")

    def open(self, engine):
        return self._writer_class(logdir=self.logdir)

    def scalar(self, tag, value, step):
        self.writer.add_scalar(tag=tag, step=step, value=value)
