"""TensorBoard curves, `Global.use_tensorboard` (ours): the curves hooks/scalar_log.py lists, as
event files under `{output_dir}/tensorboard` (rank 0), written by tensorboardX.
`tensorboard --logdir OUTPUT_DIR/tensorboard` shows them.

tensorboardX's SummaryWriter hands events to a thread through a queue, and its flush() does not
wait for that queue: a checkpoint could record a file length that missed its own step's points,
and a resume cut them off. So the events go through tensorboardX's EventsWriter, the same
format written in the calling thread, where a flush is a flush."""
import os
import time

from .order import Order
from .scalar_log import FileScalarLog, import_writer


class TensorBoard(FileScalarLog):
    priority = Order.TENSORBOARD
    pattern = "events.out.tfevents.*"

    def __init__(self, logdir: str):
        super().__init__(logdir)
        import_writer("tensorboardX", "SummaryWriter", "Global.use_tensorboard", "tensorboardX", "tensorboard")
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
        self._writer_class, self._event, self._summary = EventsWriter, Event, scalar

    def open(self, engine):
        return self._writer_class(os.path.join(self.logdir, "events"))

    def scalar(self, tag, value, step):
        self.writer.write_event(self._event(wall_time=time.time(), step=step, summary=self._summary(tag, value)))
