"""The training loop: a step function, a data iterable, and hooks around them."""
import base64
import pickle
import random
from typing import Any, Callable, Iterable, List, Optional

import numpy as np
import paddle

from .events import Events
from .hook import FunctionHook, Hook
from .state import State


class Engine:
    """Runs `step(engine, batch)` over `data` for `max_epochs`, firing events to hooks.

    `data` may define `set_epoch(epoch, start_batch=k)`: the engine calls it before each
    epoch so that a resumed run continues at batch k without loading the batches before it.
    `model` and `optimizer` are only held to checkpoint them; the step function uses its own
    references. The step fires AFTER_BACKWARD itself (`engine.fire("after_backward")`),
    and an eval hook fires EVAL_END.
    """

    def __init__(self, step: Callable[["Engine", Any], Any], data: Iterable, max_epochs: int = 1,
                 model: Optional[paddle.nn.Layer] = None, optimizer: Any = None, seed: int = 0):
        self.step, self.data, self.model, self.optimizer = step, data, model, optimizer
        self.state = State(max_epochs=max_epochs, seed=seed, iters_per_epoch=_len_or_none(data))
        self._hooks: List[Hook] = []
        self._dispatch = {event: [] for event in Events}

    # ---- registration -------------------------------------------------------------------
    def register(self, hook: Hook) -> Hook:
        if not isinstance(hook, Hook):
            raise TypeError(f"register() takes a Hook, got {type(hook).__name__}; "
                            f"use engine.on(event, fn) for plain functions")
        keys = {h.state_key() for h in self._hooks}
        if hook.state_key() in keys:
            raise ValueError(f"two hooks share the state key {hook.state_key()!r}: "
                             f"give one a distinct state_key() so both can be checkpointed")
        self._hooks.append(hook)
        for event in Events:
            if hook.handles(event):
                # sorted() is stable: equal priorities keep registration order
                self._dispatch[event] = sorted(self._dispatch[event] + [hook],
                                               key=lambda h: h.priority)
        return hook

    def on(self, event: Events, fn: Callable[["Engine"], None], every: int = 1,
           priority: int = 50) -> Hook:
        """Call `fn(engine)` on `event`; for iteration/epoch events only every `every`-th time."""
        return self.register(FunctionHook(event, fn, every=every, priority=priority))

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
        for hook in self._dispatch[event]:
            try:
                getattr(hook, event.value)(self)
            except BaseException as exc:
                _note(exc, f"raised by {hook!r} on {event.name}")
                raise

    def terminate(self) -> None:
        """Stop after the current iteration; EPOCH_END and COMPLETED still fire."""
        self.state.should_stop = True

    def run(self) -> State:
        state = self.state
        state.should_stop = False
        try:
            self.fire(Events.STARTED)
            while (state.epoch < state.max_epochs or self._mid_epoch()) and not state.should_stop:
                self._run_epoch()
            self.fire(Events.COMPLETED)
        except BaseException as exc:
            state.exception = exc
            self._fire_exception()
            raise
        return state

    def _mid_epoch(self) -> bool:
        """True after loading a checkpoint saved part-way through an epoch."""
        s = self.state
        return bool(s.iters_per_epoch) and 0 < s.epoch_iter < s.iters_per_epoch

    def _run_epoch(self) -> None:
        state = self.state
        if not self._mid_epoch():
            state.epoch += 1
            state.epoch_iter = 0
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(state.epoch, start_batch=state.epoch_iter)
        self.fire(Events.EPOCH_START)
        for state.batch in self.data:
            state.epoch_iter += 1
            state.iteration += 1
            self.fire(Events.ITER_START)
            state.output = self.step(self, state.batch)
            self.fire(Events.ITER_END)
            if state.should_stop:
                break
        state.batch = None
        self.fire(Events.EPOCH_END)

    def _fire_exception(self) -> None:
        """Every exception handler runs even if one of them fails; the first error wins."""
        for hook in self._dispatch[Events.EXCEPTION]:
            try:
                hook.exception(self)
            except Exception as inner:  # noqa: BLE001 - reported, original error re-raised
                _note(self.state.exception, f"while handling it, {hook!r}.exception raised {inner!r}")

    # ---- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Counters, model, optimizer, every stateful hook and every RNG: all a resume needs."""
        hooks = {}
        for hook in self._hooks:
            hook_state = hook.state_dict()
            if hook_state:
                hooks[hook.state_key()] = hook_state
        return {
            "counters": self.state.counters(),
            "model": self.model.state_dict() if self.model is not None else None,
            "optimizer": self._optimizer_state(to_structured=True),
            "hooks": hooks,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "paddle": _paddle_rng_get()},
        }

    def load_state_dict(self, ckpt: dict) -> None:
        counters = ckpt["counters"]
        self.state.epoch = counters["epoch"]
        self.state.iteration = counters["iteration"]
        self.state.epoch_iter = counters["epoch_iter"]
        if self.model is not None and ckpt.get("model") is not None:
            self.model.set_state_dict(ckpt["model"])
        if self.optimizer is not None and ckpt.get("optimizer") is not None:
            self.optimizer.set_state_dict(self._optimizer_state(ckpt["optimizer"], to_structured=False))
        saved_hooks = ckpt.get("hooks", {})
        for hook in self._hooks:
            if hook.state_key() in saved_hooks:
                hook.load_state_dict(saved_hooks[hook.state_key()])
        rng = ckpt.get("rng")
        if rng:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            _paddle_rng_set(rng["paddle"])


    def _optimizer_state(self, state=None, to_structured=True):
        """Paddle keys optimizer state by internal parameter names (`linear_3.w_0_moment1_0`),
        which depend on how many layers the process built before; checkpoints use the model's
        structured names (`blocks.0.attn.qkv.weight_moment1_0`) so they load anywhere."""
        if self.optimizer is None:
            return None
        if state is None:
            state = self.optimizer.state_dict()
        pairs = [(p.name, n) for n, p in self.model.named_parameters()] if self.model is not None else []
        src_dst = pairs if to_structured else [(n, i) for i, n in pairs]
        src_dst.sort(key=lambda pair: -len(pair[0]))
        lookup = dict(src_dst)

        def rename(key):
            if key in lookup:
                return lookup[key]
            for src, dst in src_dst:
                if key.startswith(src + "_"):
                    return dst + key[len(src):]
            return key

        return {rename(k): ({rename(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
                for k, v in state.items()}


def _len_or_none(data) -> Optional[int]:
    try:
        return len(data)
    except TypeError:
        return None


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(text)


def _paddle_rng_get() -> str:
    """Generator states of the current device (CPU or GPU): opaque objects, so pickled, and
    base64 text because paddle.save accepts no bytes."""
    return base64.b64encode(pickle.dumps(paddle.get_rng_state())).decode("ascii")


def _paddle_rng_set(text: str) -> None:
    paddle.set_rng_state(pickle.loads(base64.b64decode(text)))
