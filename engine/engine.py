"""The training loop: a step function, a data iterable, and hooks around them."""
import warnings
from typing import Any, Callable, Iterable, List, Optional

from .clock import Clock
from .events import Events
from .hook import FunctionHook, Hook
from .priority import Priority
from .state import Resumed, State


class Engine:
    """Runs `step(engine, batch)` over `data` for `max_epochs`, firing events to hooks.

    `data` may define `set_epoch(epoch, start_batch=k)`: the engine calls it before each
    epoch so that a resumed run continues at batch k without loading the batches before it;
    its length is read again after it (an epoch resumed on another number of processes has
    another number of steps). `progress(k)`, if defined, is the fraction of the epoch done
    after k steps (by samples), which `state.epochs_done()` reports.
    `model` (a paddle.nn.Layer) and `optimizer` are held for hooks that need them (the engine
    itself imports no Paddle); the step function uses its own references. The step fires
    AFTER_BACKWARD itself (`engine.fire("after_backward")`), an eval hook fires EVAL_START,
    EVAL_ITER_END and EVAL_END, and whoever resumes fires RESUMED (`resumed_from`).
    """

    def __init__(self, step: Callable[["Engine", Any], Any], data: Iterable, max_epochs: int = 1,
                 model: Any = None, optimizer: Any = None):
        self.step, self.data, self.model, self.optimizer = step, data, model, optimizer
        self.state = State(max_epochs=max_epochs, iters_per_epoch=_len_or_none(data))
        self.clock = Clock()  # the loop's time by part: "data", "step", and the hooks' categories
        self._hooks: List[Hook] = []
        self._dispatch = {event: [] for event in Events}

    # ---- registration -------------------------------------------------------------------
    def register(self, hook: Hook) -> Hook:
        """Add `hook`. Hooks that keep state (override `state_dict`) need distinct `state_key()`s,
        as each is saved under its key; stateless ones may be registered any number of times. A
        stateful hook that runs at or after a hook that writes checkpoints (`writes_checkpoints =
        True`) gets a warning: each checkpoint would hold its state from before the step's work."""
        if not isinstance(hook, Hook):
            raise TypeError(f"register() takes a Hook, got {type(hook).__name__}; "
                            f"use engine.on(event, fn) for plain functions")
        if hook.keeps_state():
            keys = {h.state_key() for h in self._hooks if h.keeps_state()}
            if hook.state_key() in keys:
                raise ValueError(f"two hooks share the state key {hook.state_key()!r}: "
                                 f"give one a distinct state_key() so both can be checkpointed")
        self._warn_of_stale_state(hook)
        self._hooks.append(hook)
        for event in Events:
            if hook.handles(event):
                # sorted() is stable: equal priorities keep registration order
                self._dispatch[event] = sorted(self._dispatch[event] + [hook],
                                               key=lambda h: h.priority)
        return hook

    def _warn_of_stale_state(self, new: Hook) -> None:
        writers = [h for h in self._hooks + [new] if getattr(h, "writes_checkpoints", False)]
        stateful = [h for h in self._hooks + [new] if h.keeps_state() and not getattr(h, "writes_checkpoints", False)]
        for hook in stateful:
            late = [w for w in writers if hook.priority >= w.priority]
            if late and new in (hook, late[0]):
                warnings.warn(f"{hook!r} keeps state but runs at or after {late[0]!r}, which writes "
                              f"checkpoints: a checkpoint holds its state from before that step's work; "
                              f"give it a lower priority", stacklevel=3)

    def on(self, event: Events, fn: Optional[Callable[["Engine"], None]] = None, every: int = 1,
           once: Optional[int] = None, priority: int = Priority.NORMAL):
        """Call `fn(engine)` on `event`: every `every`-th time (iteration and epoch events, counted
        as the state counts them, so a resumed run keeps the rhythm), or only the `once`-th time.
        Returns a handle whose `remove()` unregisters it. Without `fn`, a decorator (Ignite's
        `@trainer.on(...)`) that registers the function and returns it unchanged."""
        if fn is None:
            def decorate(function):
                self.on(event, function, every=every, once=once, priority=priority)
                return function
            return decorate
        handle = self.register(FunctionHook(event, fn, every=every, once=once, priority=priority))
        handle.engine = self
        return handle

    def remove(self, hook: Hook) -> None:
        """Unregister `hook` (a no-op if it is not registered)."""
        if hook in self._hooks:
            self._hooks.remove(hook)
            for event in Events:
                self._dispatch[event] = [h for h in self._dispatch[event] if h is not hook]

    @property
    def hooks(self) -> List[Hook]:
        return list(self._hooks)

    def describe(self) -> str:
        """Every handler per event, in firing order."""
        lines = []
        for event in Events:
            names = ", ".join(repr(h) for h in self._dispatch[event]) or "-"
            lines.append(f"{event.name:<15} {names}")
        return "\n".join(lines)

    # ---- running ------------------------------------------------------------------------
    def fire(self, event: Events) -> None:
        """Call every handler of `event` (an Events member or its value, e.g. "after_backward")."""
        event = Events(event)
        clock = self.clock
        for hook in self._dispatch[event]:
            clock.start()
            try:
                getattr(hook, event.value)(self)
            except BaseException as exc:
                _note(exc, f"raised by {hook!r} on {event.name}")
                raise
            finally:
                clock.stop(hook.time_category)

    def terminate(self) -> None:
        """Stop after the current iteration; EPOCH_END and COMPLETED still fire."""
        self.state.should_stop = True

    def run(self) -> State:
        state = self.state
        state.should_stop, state.exception = False, None
        try:
            self.fire(Events.STARTED)
            while (state.epoch < state.max_epochs or not state.epoch_ended) and not state.should_stop:
                self._run_epoch()
            self.fire(Events.COMPLETED)
        except BaseException as exc:
            state.exception = exc
            self._fire_exception()
            raise
        finally:
            self._fire_ended()
        return state

    def _run_epoch(self) -> None:
        state = self.state
        if state.epoch_ended:  # else: resumed inside this epoch (perhaps after its last step)
            state.epoch += 1
            state.epoch_iter = 0
            state.epoch_ended = False
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(state.epoch, start_batch=state.epoch_iter)
            state.iters_per_epoch = _len_or_none(self.data)
        state.epoch_fraction = getattr(self.data, "progress", None)
        self.fire(Events.EPOCH_START)
        batches, clock = iter(self.data), self.clock
        while True:
            clock.start()
            try:
                state.batch = next(batches)
            except StopIteration:
                break
            finally:
                clock.stop("data")
            state.epoch_iter += 1
            state.iteration += 1
            self.fire(Events.ITER_START)
            clock.start()
            try:
                state.output = self.step(self, state.batch)
            finally:
                clock.stop("step")
            self.fire(Events.ITER_END)
            if state.should_stop:
                break
        state.batch = None
        state.epoch_ended = True  # a checkpoint written at EPOCH_END resumes in the next epoch
        self.fire(Events.EPOCH_END)

    def _fire_exception(self) -> None:
        """Every exception handler runs even if one of them fails; the first error wins."""
        self._fire_all(Events.EXCEPTION)

    def _fire_ended(self) -> None:
        """Every ENDED handler runs even if one fails. During an error the first error wins;
        after a clean run a failing handler's error is raised once all have run."""
        first = self._fire_all(Events.ENDED)
        if first is not None and self.state.exception is None:
            raise first

    def _fire_all(self, event: Events):
        first = None
        for hook in self._dispatch[event]:
            try:
                getattr(hook, event.value)(self)
            except Exception as inner:  # noqa: BLE001 - reported; the others still run
                if self.state.exception is not None:
                    _note(self.state.exception, f"while handling it, {hook!r}.{event.value} raised {inner!r}")
                elif first is None:
                    _note(inner, f"raised by {hook!r} on {event.name}")
                    first = inner
        return first

    # ---- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The loop's position and every stateful hook's state (Ignite's symmetry: the model,
        optimizer and RNG belong to whoever saves the checkpoint, see hooks/checkpoint.py)."""
        hooks = {}
        for hook in self._hooks:
            hook_state = hook.state_dict()
            if hook_state:
                hooks[hook.state_key()] = hook_state
        return {"position": self.state.position(), "hooks": hooks}

    def load_state_dict(self, saved: dict) -> None:
        """The loop's position and each registered hook's state (a hook absent from `saved`
        keeps its own). Whoever resumes then puts the model and optimizer back and calls
        `resumed_from`, so that hooks see everything restored at RESUMED."""
        self.state.set_position(saved["position"])
        for hook in self._hooks:
            if hook.state_key() in saved["hooks"]:
                hook.load_state_dict(saved["hooks"][hook.state_key()])

    def resumed_from(self, resumed: Resumed) -> None:
        """Record what the resume found in `state.resumed` and fire RESUMED (before STARTED)."""
        self.state.resumed = resumed
        self.fire(Events.RESUMED)


def _len_or_none(data) -> Optional[int]:
    try:
        return len(data)
    except TypeError:
        return None


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(text)
