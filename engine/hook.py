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
    generic levels, hooks/order.py the built-in hooks' places and why each runs where it does).
    """

    priority = Priority.NORMAL
    # where engine.clock counts this hook's handlers: "hooks", or a part a breakdown names
    # ("evaluation", "checkpoint"; "step" for a hook whose read waits for the device's steps)
    time_category = "hooks"

    def resumed(self, engine):
        """After a resume has put back the loop, every hook's state, the model, the optimizer and
        the RNG, before STARTED (mmengine's after_load_checkpoint): `engine.state.resumed` says
        from which checkpoint and what changed. Not called on a fresh start."""

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
        """Called on resume with what `state_dict` returned, hook by hook in registration order,
        before the model and optimizer are back; RESUMED follows once everything is."""

    def keeps_state(self) -> bool:
        """True when this hook's class overrides `state_dict`: it is checkpointed."""
        return type(self).state_dict is not Hook.state_dict

    def handles(self, event: Events) -> bool:
        """True when this hook overrides the handler of `event`."""
        return getattr(type(self), event.value) is not getattr(Hook, event.value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(priority={shown_priority(self.priority)})"


_COUNTED = {Events.ITER_START: "iteration", Events.ITER_END: "iteration", Events.AFTER_BACKWARD: "iteration",
            Events.EPOCH_START: "epoch", Events.EPOCH_END: "epoch"}


class FunctionHook(Hook):
    """Adapts a plain `fn(engine)` registered with `Engine.on(event, fn, every=n | once=n)`.
    `every` counts iterations or epochs as the state does; other events (STARTED, EVAL_*,
    COMPLETED...) have no such count, so `every` is refused there. `once=n` calls it at the
    n-th firing only (counted by this handle)."""

    def __init__(self, event: Events, fn, every: int = 1, once=None, priority: int = Priority.NORMAL):
        event = Events(event)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if every != 1 and event not in _COUNTED:
            raise ValueError(f"every={every} needs an iteration or epoch event; {event.name} has no count "
                             f"(use once=N for the N-th firing)")
        if once is not None and (every != 1 or isinstance(once, bool) or not isinstance(once, int) or once < 1):
            raise ValueError(f"once takes an integer >= 1 and no every, got once={once!r}, every={every}")
        self.event, self.fn, self.every, self.once, self.priority = event, fn, every, once, priority
        self.fired, self.engine = 0, None
        setattr(self, self.event.value, self._call)

    def _call(self, engine):
        self.fired += 1
        if self.once is not None:
            if self.fired == self.once:
                self.fn(engine)
            return
        counter = _COUNTED.get(self.event)
        if counter is None or getattr(engine.state, counter) % self.every == 0:
            self.fn(engine)

    def remove(self) -> None:
        """Unregister this handler (Ignite's RemovableEventHandle)."""
        if self.engine is not None:
            self.engine.remove(self)

    def handles(self, event: Events) -> bool:
        return event == self.event

    def state_key(self) -> str:
        return f"{self.event.value}:{getattr(self.fn, '__qualname__', repr(self.fn))}:{id(self)}"

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        when = f"once={self.once}" if self.once is not None else f"every={self.every}"
        return f"{name}({when}, priority={shown_priority(self.priority)})"


def shown_priority(priority) -> str:
    """`90 CHECKPOINT` for a named level (any IntEnum: engine.Priority, hooks.order.Order), else
    the number."""
    name = getattr(priority, "name", None)
    return f"{int(priority)} {name}" if name else str(int(priority))
