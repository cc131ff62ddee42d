"""VisualDL curves, PLSC's `Global.use_visualdl`: scalars under `{output_dir}/vdl` (rank 0), the
curves hooks/scalar_log.py lists. `visualdl --logdir OUTPUT_DIR/vdl` shows them."""
from engine.errors import UserError

from .order import Order
from .scalar_log import FileScalarLog


class VisualDL(FileScalarLog):
    priority = Order.VISUALDL
    pattern = "vdlrecords.*.log"

    def __init__(self, logdir: str):
        try:
            from visualdl import LogWriter
        except ImportError as exc:
            raise UserError(f"Global.use_visualdl is true but visualdl cannot be imported ({exc}): "
                            f"pip install visualdl (or this package's [visualdl] extra), or set "
                            f"Global.use_visualdl: False") from None
        super().__init__(logdir)
        self._writer_class = LogWriter

    def open(self, engine):
        return self._writer_class(logdir=self.logdir)

    def scalar(self, tag, value, step):
        self.writer.add_scalar(tag=tag, step=step, value=value)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()
