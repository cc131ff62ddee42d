"""The training data's position in global terms, in every checkpoint.

Takes any data with `position(batches_done) -> dict` and `resume_at(position)` (the training
Loader): a checkpoint records which part of the epoch's global sample sequence is consumed,
so a run resumed on another number of processes trains the rest of that epoch exactly once.
The engine's own position (epoch, step) is saved by the engine; this adds the samples.
"""
from engine import Hook

from engine.errors import CheckpointError

from .order import Order


class DataPosition(Hook):
    priority = Order.NORMAL

    def __init__(self, data):
        self.data, self.state, self.loaded = data, None, False

    def resumed(self, engine):
        """A checkpoint without a position (written before positions were kept) can continue
        mid-epoch only on its own number of processes: refuse before anything is trained."""
        state, resumed = engine.state, engine.state.resumed
        if resumed.elastic and not self.loaded and not state.epoch_ended and state.epoch_iter:
            raise CheckpointError(
                f"Global.checkpoint: {resumed.path} stopped inside epoch {state.epoch} and holds no data "
                f"position (it predates elastic resume): continue it on {resumed.world_size[0]} process(es), "
                f"or from a checkpoint taken at an epoch's end")

    def started(self, engine):
        self.state = engine.state

    def state_dict(self):
        if self.state is None or self.state.epoch == 0:
            return {}
        return {"position": self.data.position(self.state.epoch_iter)}

    def load_state_dict(self, state):
        if state.get("position"):
            self.data.resume_at(state["position"])
            self.loaded = True
