"""The event loop's contract: order, counters, terminate, exceptions, every=N, priorities, state."""
import pytest

from engine import Engine, Events, Hook


class Recorder(Hook):
    """Records (event, epoch, iteration, epoch_iter) for every event it sees."""

    def __init__(self, log, key="rec", priority=50):
        self.log, self.key, self.priority = log, key, priority

    def state_key(self):
        return self.key

    def _rec(self, name, engine):
        s = engine.state
        self.log.append((name, s.epoch, s.iteration, s.epoch_iter))


for _event in Events:
    setattr(Recorder, _event.value,
            (lambda name: lambda self, engine: self._rec(name, engine))(_event.value))


def _step(engine, batch):
    engine.fire(Events.AFTER_BACKWARD)
    return {"loss": batch}


def test_event_order_and_counters():
    log = []
    engine = Engine(_step, [10, 20], max_epochs=2)
    engine.register(Recorder(log))
    engine.run()
    names = [e[0] for e in log]
    per_iter = ["iter_start", "after_backward", "iter_end"]
    assert names == (["started"] + (["epoch_start"] + per_iter * 2 + ["epoch_end"]) * 2 + ["completed", "ended"])
    # counters are incremented before START events: at ITER_END, iteration == completed steps
    assert [e[1:] for e in log if e[0] == "iter_end"] == [(1, 1, 1), (1, 2, 2), (2, 3, 1), (2, 4, 2)]
    assert [e[1:] for e in log if e[0] == "epoch_start"] == [(1, 0, 0), (2, 2, 0)]
    assert engine.state.output == {"loss": 20}


def test_terminate_ends_after_current_iteration_and_still_fires_epoch_end_and_completed():
    log = []
    engine = Engine(_step, [1, 2, 3], max_epochs=5)
    engine.register(Recorder(log))
    engine.on(Events.ITER_END, lambda e: e.terminate() if e.state.iteration == 2 else None)
    engine.run()
    names = [e[0] for e in log]
    assert names[-4:] == ["iter_end", "epoch_end", "completed", "ended"]
    assert names.count("iter_start") == 2
    assert engine.state.epoch == 1 and engine.state.iteration == 2


def test_exception_fires_every_handler_then_propagates_naming_the_hook():
    log = []

    class Boom(Hook):
        def iter_end(self, engine):
            raise RuntimeError("boom")

    class BadHandler(Hook):
        def exception(self, engine):
            raise ValueError("handler failed too")

    engine = Engine(_step, [1, 2], max_epochs=1)
    engine.register(Recorder(log))
    engine.register(BadHandler())
    engine.register(Boom())
    second = []
    engine.on(Events.EXCEPTION, lambda e: second.append(type(e.state.exception).__name__))
    with pytest.raises(RuntimeError, match="boom") as info:
        engine.run()
    names = [e[0] for e in log]
    assert "completed" not in names and names[-2:] == ["exception", "ended"]
    assert second == ["RuntimeError"]  # ran although BadHandler's handler raised before it
    notes = " ".join(getattr(info.value, "__notes__", []))
    if hasattr(info.value, "add_note"):
        assert "Boom" in notes and "ITER_END" in notes and "handler failed too" in notes


def test_every_n_counts_iterations_across_epochs():
    seen = []
    engine = Engine(_step, [0] * 3, max_epochs=3)
    engine.on(Events.ITER_END, lambda e: seen.append(e.state.iteration), every=4)
    epochs = []
    engine.on(Events.EPOCH_END, lambda e: epochs.append(e.state.epoch), every=2)
    engine.run()
    assert seen == [4, 8] and epochs == [2]


def test_priority_orders_handlers_and_ties_keep_registration_order():
    log = []
    engine = Engine(_step, [0], max_epochs=1)
    for key, prio in (("late", 90), ("first_50", 50), ("early", 0), ("second_50", 50)):
        engine.on(Events.STARTED, (lambda k: lambda e: log.append(k))(key), priority=prio)
        engine.register(Recorder([], key=key, priority=prio))
    engine.run()
    assert log == ["early", "first_50", "second_50", "late"]
    assert "STARTED" in engine.describe() and "early" not in engine.describe().split("STARTED")[0]


class Counting(Recorder):
    """A stateful hook: checkpointed under its key."""

    def state_dict(self):
        return {"n": len(self.log)}


def test_duplicate_state_keys_of_stateful_hooks_are_an_error_stateless_ones_may_repeat():
    engine = Engine(_step, [0])
    engine.register(Counting([], key="same"))
    with pytest.raises(ValueError, match="same"):
        engine.register(Counting([], key="same"))
    logs = [[], []]
    for log in logs:  # two instances of a stateless hook, as a user registers a logger twice
        engine.register(Recorder(log, key="stateless"))
    engine.run()
    assert logs[0] == logs[1] and logs[0]


def test_on_as_a_decorator_with_every_and_once_and_handles_that_remove():
    engine = Engine(_step, [0] * 3, max_epochs=2)
    seen = {"every": [], "once": [], "removed": []}

    @engine.on(Events.ITER_END, every=2)
    def every_second(e):
        seen["every"].append(e.state.iteration)

    @engine.on(Events.ITER_END, once=4)
    def fourth(e):
        seen["once"].append(e.state.iteration)

    handle = engine.on(Events.ITER_END, lambda e: seen["removed"].append(e.state.iteration))
    engine.on(Events.ITER_END, lambda e: handle.remove() if e.state.iteration == 2 else None, priority=100)
    every_second(engine)  # the decorator returns the function itself
    engine.run()
    assert seen["every"] == [0, 2, 4, 6] and seen["once"] == [4] and seen["removed"] == [1, 2]
    assert "fourth(once=4" in engine.describe()


def test_every_on_an_event_without_a_count_is_refused():
    engine = Engine(_step, [0])
    for event in (Events.STARTED, Events.EVAL_END, Events.COMPLETED):
        with pytest.raises(ValueError, match=f"{event.name} has no count"):
            engine.on(event, lambda e: None, every=2)
    with pytest.raises(ValueError, match="once takes an integer"):
        engine.on(Events.ITER_END, lambda e: None, once=0)


class Saver(Hook):
    """Stands in for the checkpoint: the engine knows it by `writes_checkpoints`, not by name."""

    writes_checkpoints = True

    def __init__(self, priority):
        self.priority = priority

    def iter_end(self, engine):
        pass


def test_a_stateful_hook_at_or_after_the_checkpoint_is_warned_about_in_either_registration_order():
    import warnings
    engine = Engine(_step, [0])
    engine.register(Saver(90))
    for late in (90, 91):
        with pytest.warns(UserWarning, match="keeps state but runs at or after Saver"):
            engine.register(Counting([], key=f"late {late}", priority=late))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.register(Counting([], key="early", priority=89))
        engine.register(Recorder([], key="stateless late", priority=95))
    first = Engine(_step, [0])
    first.register(Counting([], key="registered first", priority=95))
    with pytest.warns(UserWarning, match="Counting.*keeps state but runs at or after Saver"):
        first.register(Saver(90))
    with warnings.catch_warnings():  # no checkpoint writer: nothing to lag behind
        warnings.simplefilter("error")
        Engine(_step, [0]).register(Counting([], key="alone", priority=95))


def test_the_built_in_order_puts_the_checkpoint_after_every_stateful_built_in_hook():
    """hooks/order.py: each stateful built-in hook runs before CHECKPOINT, the user's named
    places sit where their names say, and the engine's scale holds the built-in one."""
    from engine import Priority
    from hooks.order import Order
    for stateful in (Order.TRAIN_METER, Order.NAN_GUARD, Order.EMA, Order.EVALUATE, Order.NORMAL,
                     Order.METRICS_LOG, Order.BEFORE_CHECKPOINT):
        assert stateful < Order.CHECKPOINT
    assert Order.LR_SCHEDULE < Order.AFTER_LR_SCHEDULE < Order.GRAD_SCALER
    assert Order.CHECKPOINT < Order.STOP_ON_SIGNAL < Order.AFTER_CHECKPOINT < Order.PROGRESS
    assert Order.NORMAL == Priority.NORMAL
    assert Priority.FIRST <= min(Order) and max(Order) <= Priority.LAST


def test_only_overridden_methods_are_dispatched():
    class OnlyIterEnd(Hook):
        def iter_end(self, engine):
            pass

    engine = Engine(_step, [0])
    engine.register(OnlyIterEnd())
    listed = [line.split()[0] for line in engine.describe().splitlines() if "OnlyIterEnd" in line]
    assert listed == ["ITER_END"]


class Counter(Hook):
    def __init__(self):
        self.count = 0

    def iter_end(self, engine):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class EpochData:
    """A data source that honours set_epoch(start_batch) like the real sampler."""

    def __init__(self, items):
        self.items, self.start = items, 0

    def set_epoch(self, epoch, start_batch=0):
        self.start = start_batch

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items[self.start:])


class Cut(Exception):
    pass


def _cut_at(iteration, event=Events.ITER_END):
    """An engine over 3 batches x 2 epochs whose state is saved (as the Checkpoint hook does)
    at `event` of `iteration`, after which the process "dies"."""
    log, saved = [], {}
    engine = Engine(_step, EpochData([1, 2, 3]), max_epochs=2)
    engine.register(Recorder(log))
    engine.register(Counter())

    def save_and_die(e):
        if e.state.iteration == iteration:
            saved.update(e.state_dict())
            raise Cut

    engine.on(event, save_and_die, priority=90)
    with pytest.raises(Cut):
        engine.run()
    return log, saved


def _resume(saved):
    log = []
    engine = Engine(_step, EpochData([1, 2, 3]), max_epochs=2)
    engine.register(Recorder(log))
    counter = engine.register(Counter())
    engine.load_state_dict(saved)
    engine.run()
    return log, counter


def _uninterrupted():
    log = []
    engine = Engine(_step, EpochData([1, 2, 3]), max_epochs=2)
    engine.register(Recorder(log))
    engine.run()
    return log


def _work(log):
    """The events that do work: iteration ends and epoch ends, with their counters."""
    return [e for e in log if e[0] in ("iter_end", "epoch_end")]


@pytest.mark.parametrize("cut", [1, 4, 3, 6], ids=["epoch1-first", "epoch2-first", "epoch1-last", "epoch2-last"])
def test_a_cut_at_iter_end_resumes_with_exactly_the_remaining_work(cut):
    """Every step and every EPOCH_END happens exactly once across the two parts, including a
    cut at an epoch's last step, after which EPOCH_END of that epoch is still owed."""
    before, saved = _cut_at(cut)
    after, counter = _resume(saved)
    done_before = [e for e in _work(before) if e[0] == "iter_end" or e[2] < cut]
    assert done_before + _work(after) == _work(_uninterrupted())
    assert counter.count == 6  # hook state came back with the position
    assert saved["position"]["epoch_ended"] is False


@pytest.mark.parametrize("cut", [3, 6])
def test_a_cut_during_epoch_end_resumes_in_the_next_epoch(cut):
    before, saved = _cut_at(cut, Events.EPOCH_END)
    assert saved["position"]["epoch_ended"] is True
    after, _ = _resume(saved)
    assert _work(before) + _work(after) == _work(_uninterrupted())


def test_terminate_ends_the_epoch_and_epoch_end_fires_once():
    log = []
    engine = Engine(_step, EpochData([1, 2, 3]), max_epochs=3)
    engine.register(Recorder(log))
    engine.on(Events.ITER_END, lambda e: e.terminate() if e.state.iteration == 4 else None)
    engine.run()
    assert [e[:2] for e in log if e[0] == "epoch_end"] == [("epoch_end", 1), ("epoch_end", 2)]
    assert engine.state.position() == {"epoch": 2, "iteration": 4, "epoch_iter": 1, "epoch_ended": True}


class Closer(Hook):
    def __init__(self, log, fail=False):
        self.log, self.fail = log, fail

    def state_key(self):
        return f"Closer:{id(self)}"

    def ended(self, engine):
        self.log.append("ended")
        if self.fail:
            raise OSError("could not close")


def test_ended_fires_once_last_after_success_and_after_an_error():
    log = []
    engine = Engine(_step, [1, 2], max_epochs=1)
    engine.register(Closer(log))
    engine.register(Recorder(log))
    engine.run()
    assert [e if isinstance(e, str) else e[0] for e in log][-3:] == ["completed", "ended", "ended"]

    log.clear()
    failing = Engine(_step, [1, 2], max_epochs=1)
    failing.register(Closer(log))
    failing.on(Events.ITER_END, lambda e: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        failing.run()
    assert log == ["ended"]


def test_a_failing_ended_handler_neither_masks_the_error_nor_stops_the_others():
    log = []
    engine = Engine(_step, [1], max_epochs=1)
    engine.register(Closer(log, fail=True))
    engine.register(Closer(log))
    engine.on(Events.ITER_END, lambda e: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom") as info:
        engine.run()
    assert log == ["ended", "ended"]
    assert any("could not close" in note for note in getattr(info.value, "__notes__", []))
    clean = Engine(_step, [1], max_epochs=1)
    log.clear()
    clean.register(Closer(log, fail=True))
    clean.register(Closer(log))
    with pytest.raises(OSError, match="could not close"):
        clean.run()
    assert log == ["ended", "ended"]
