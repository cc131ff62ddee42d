"""The training data's position in global terms, in every checkpoint.

Takes any data with `position(batches_done) -> dict` and `resume_at(position)` (the training
Loader): a checkpoint records which part of the epoch's global sample sequence is consumed,
so a run resumed on another number of processes trains the rest of that epoch exactly once.
The engine's own position (epoch, step) is saved by the engine; this adds the samples.
"""
from engine import Hook, Priority


class DataPosition(Hook):
    priority = Priority.NORMAL

    def __init__(self, data):
        self.data, self.state = data, None

    def started(self, engine):
        self.state = engine.state

    def state_dict(self):
        if self.state is None or self.state.epoch == 0:
            return {}
        return {"position": self.data.position(self.state.epoch_iter)}

    def load_state_dict(self, state):
        if state.get("position"):
            self.data.resume_at(state["position"])
