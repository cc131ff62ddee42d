"""The Hook protocol: override the methods for the events you care about."""
from .events import Events
from .priority import Priority


class Hook:
    """Base class for hooks. Every handler takes the engine and returns nothing.

    Only the methods a subclass overrides are called (the engine builds its
    dispatch lists once, at register time), so an unused event costs nothing.
    Handlers on ITER_START/ITER_END run every step and should take negligible
    time: no host-device sync unless the hook is about to report.
    Lower `priority` runs first; ties keep registration order (engine/priority.py has the
    table of the default hooks and why each runs where it does).
    """

    priority = Priority.NORMAL

    def started(self, engine): pass
    def epoch_start(self, engine): pass
    def iter_start(self, engine): pass
    def after_backward(self, engine): pass
    def iter_end(self, engine): pass
    def epoch_end(self, engine): pass
    def eval_start(self, engine): pass
    def eval_iter_end(self, engine): pass
    def eval_end(self, engine): pass
    def completed(self, engine): pass
    def exception(self, engine):
        """Called on any error; the error is in `engine.state.exception` and is re-raised after."""

    def ended(self, engine):
        """Always called last, after COMPLETED or EXCEPTION (a `finally`): close files, stop
        displays, restore signal handlers here, once."""

    def state_key(self) -> str:
        """Key of this hook's entry in a checkpoint; unique per engine."""
        return type(self).__name__

    def state_dict(self) -> dict:
        """What this hook needs to continue exactly after a resume (plain data or tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def handles(self, event: Events) -> bool:
        """True when this hook overrides the handler of `event`."""
        return getattr(type(self), event.value) is not getattr(Hook, event.value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(priority={shown_priority(self.priority)})"


class FunctionHook(Hook):
    """Adapts a plain `fn(engine)` registered with `Engine.on(event, fn, every=n)`."""

    def __init__(self, event: Events, fn, every: int = 1, priority: int = Priority.NORMAL):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.event, self.fn, self.every, self.priority = Events(event), fn, every, priority
        setattr(self, self.event.value, self._call)

    def _call(self, engine):
        state = engine.state
        count = {Events.ITER_START: state.iteration, Events.ITER_END: state.iteration,
                 Events.AFTER_BACKWARD: state.iteration, Events.EPOCH_START: state.epoch,
                 Events.EPOCH_END: state.epoch}.get(self.event)
        if count is None or count % self.every == 0:
            self.fn(engine)

    def handles(self, event: Events) -> bool:
        return event == self.event

    def state_key(self) -> str:
        return f"{self.event.value}:{getattr(self.fn, '__qualname__', repr(self.fn))}:{id(self)}"

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"{name}(every={self.every}, priority={shown_priority(self.priority)})"


def shown_priority(priority) -> str:
    """`90 CHECKPOINT` for a named level, else the number."""
    try:
        return f"{int(priority)} {Priority(priority).name}"
    except ValueError:
        return str(int(priority))
