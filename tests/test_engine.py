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
    assert names == (["started"] + (["epoch_start"] + per_iter * 2 + ["epoch_end"]) * 2 + ["completed"])
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
    assert names[-3:] == ["iter_end", "epoch_end", "completed"]
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
    assert "completed" not in names and names[-1] == "exception"
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
        engine.register(Recorder(log, key=key, priority=prio))
    engine.run()
    started = [h.key for h in engine._dispatch[Events.STARTED]]
    assert started == ["early", "first_50", "second_50", "late"]
    assert "STARTED" in engine.describe() and "early" not in engine.describe().split("STARTED")[0]


def test_duplicate_state_keys_are_an_error():
    engine = Engine(_step, [0])
    engine.register(Recorder([], key="same"))
    with pytest.raises(ValueError, match="same"):
        engine.register(Recorder([], key="same"))


def test_only_overridden_methods_are_dispatched():
    class OnlyIterEnd(Hook):
        def iter_end(self, engine):
            pass

    engine = Engine(_step, [0])
    hook = engine.register(OnlyIterEnd())
    assert [event for event in Events if hook in engine._dispatch[event]] == [Events.ITER_END]


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


def test_state_round_trip_resumes_mid_epoch_at_the_right_batch():
    import numpy as np
    seen_full, seen_resumed = [], []
    full = Engine(lambda e, b: seen_full.append((e.state.epoch, b)), EpochData([1, 2, 3]), max_epochs=2)
    full.register(Counter())
    full.run()

    first = Engine(lambda e, b: seen_resumed.append((e.state.epoch, b)), EpochData([1, 2, 3]), max_epochs=2)
    first.register(Counter())
    first.on(Events.ITER_END, lambda e: e.terminate() if e.state.iteration == 4 else None)
    first.run()
    np.random.seed(123)
    saved = first.state_dict()
    expected_draw = np.random.rand()

    second = Engine(lambda e, b: seen_resumed.append((e.state.epoch, b)), EpochData([1, 2, 3]), max_epochs=2)
    counter = second.register(Counter())
    np.random.seed(0)
    second.load_state_dict(saved)
    assert counter.count == 4 and second.state.iteration == 4 and second.state.epoch_iter == 1
    assert np.random.rand() == expected_draw  # RNG state restored
    second.run()
    assert seen_resumed == seen_full
    assert counter.count == 6 and second.state.iteration == 6
