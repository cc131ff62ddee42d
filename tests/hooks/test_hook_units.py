"""TrainMeter, GradScaler's report part and Checkpoint on a bare Engine: what each puts in the
reports channel or on disk, read through public interfaces only."""
import os

import numpy as np
import paddle
import pytest

from engine import Engine, Events, Hook
from hooks.order import Order
from hooks.checkpoint import Checkpoint
from hooks.grad_scaler import GradScaler
from hooks.lr_schedule import LRSchedule
from hooks.checkpoint_state import CheckpointContents
from hooks.resume import Resumer
from hooks.run_directory import RunDirectory
from hooks.train_meter import TrainMeter

LOSSES = [4.0, 2.0, 3.0, 1.0, 5.0, 7.0, 6.0]  # one per step of a 7-step epoch


def _loss_step(engine, batch):
    return {"loss": paddle.to_tensor(LOSSES[batch]), "batch_size": 8}


class Collect(Hook):
    """Keeps every fresh record of `kind` (with its parts) it sees at ITER_END."""

    priority = Order.PROGRESS

    def __init__(self, kind):
        self.kind, self.seen = kind, []

    def iter_end(self, engine):
        record = engine.state.reports.fresh(self.kind, with_parts=True)
        if record is not None:
            self.seen.append(dict(record))


class FakeOptimizer:
    def set_lr(self, lr):
        self.lr = lr


def test_train_meter_reports_window_means_every_n_steps_and_at_the_epoch_end():
    engine = Engine(_loss_step, list(range(7)), max_epochs=2)
    collect = Collect("train")
    for hook in (TrainMeter(every=3, warmup=0), LRSchedule(FakeOptimizer(), lambda epochs_done: 10 * epochs_done), collect):
        engine.register(hook)
    engine.run()
    # windows: steps 1-3, 4-6 and 7 (the epoch's end), per epoch
    means = [np.mean(LOSSES[0:3]), np.mean(LOSSES[3:6]), LOSSES[6]] * 2
    assert [r["loss"] for r in collect.seen] == pytest.approx(means)
    assert [r["iteration"] for r in collect.seen] == [3, 6, 7, 10, 13, 14]
    # the LR of a step is set from the epochs done before it: step k of epoch e -> e - 1 + (k - 1) / 7
    assert [r["lr"] for r in collect.seen] == pytest.approx([10 * (e - 1 + (k - 1) / 7) for e, k in
                                                             ((1, 3), (1, 6), (1, 7), (2, 3), (2, 6), (2, 7))])
    assert [r["epochs_done"] for r in collect.seen] == pytest.approx([3 / 7, 6 / 7, 1, 1 + 3 / 7, 1 + 6 / 7, 2])
    assert collect.seen[-1]["eta_s"] == 0 and collect.seen[-1]["img_per_s"] > 0


def test_reports_are_read_only_once_put():
    engine = Engine(_loss_step, list(range(7)))
    engine.register(TrainMeter(every=7))

    class Tamper(Hook):
        def iter_end(self, engine):
            record = engine.state.reports.fresh("train")
            if record is not None:
                record["loss"] = 0.0

    engine.register(Tamper())
    with pytest.raises(TypeError):
        engine.run()


class StubScaler:
    """The scaler protocol GradScaler reads: a scale that halves at each step of `bad`."""

    def __init__(self, bad):
        self.bad, self.loss_scale, self.skipped_steps = bad, 1024.0, 0

    def step(self, iteration):
        if iteration in self.bad:
            self.loss_scale, self.skipped_steps = self.loss_scale / 2, self.skipped_steps + 1

    def state_dict(self):
        return {"loss_scale": self.loss_scale, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state):
        self.loss_scale, self.skipped_steps = state["loss_scale"], state["skipped_steps"]


def test_grad_scaler_adds_a_part_to_the_train_report_and_warns_when_most_steps_were_skipped(capsys):
    scaler = StubScaler(bad={4, 5, 6})
    engine = Engine(lambda e, b: (scaler.step(e.state.iteration), _loss_step(e, b))[1], list(range(7)))
    collect = Collect("train")
    for hook in (TrainMeter(every=3, warmup=0), GradScaler(scaler), collect):
        engine.register(hook)
    engine.run()
    assert [(r["loss_scale"], r["skipped_steps"], r["skipped_in_window"]) for r in collect.seen] == [
        (1024.0, 0, 0), (128.0, 3, 3), (128.0, 3, 0)]
    assert ["warning" in r for r in collect.seen] == [False, True, False]
    assert "skipped 3 of the last 3 steps" in capsys.readouterr().out
    assert GradScaler(StubScaler(set())).state_dict()["window_start"] == 0


def _tiny():
    paddle.seed(0)
    model = paddle.nn.Linear(3, 2)
    return model, paddle.optimizer.AdamW(1e-2, parameters=model.parameters())


def _train_step(model, optimizer):
    def step(engine, batch):
        loss = model(paddle.full([4, 3], float(batch))).mean()
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return {"loss": loss.detach(), "batch_size": 4}
    return step


class FakeEval(Hook):
    """Puts an "eval" report whose `is_best` follows `bests`, and fires EVAL_END, per epoch."""

    priority = Order.EVALUATE

    def __init__(self, bests):
        self.bests = list(bests)

    def epoch_end(self, engine):
        from engine import EvalProgress
        state = engine.state
        state.evaluation = EvalProgress("eval", 1, 1)
        state.reports.put("eval", {"top1": 0.5, "is_best": self.bests[state.epoch - 1]})
        engine.fire(Events.EVAL_END)
        state.evaluation = None


def _checkpointed(tmp_path, bests=(True, False, False), keep=2, epochs=3):
    model, optimizer = _tiny()
    engine = Engine(_train_step(model, optimizer), [1, 2], max_epochs=epochs, model=model, optimizer=optimizer)
    run_dir = RunDirectory(str(tmp_path))
    contents = CheckpointContents(model, optimizer)
    checkpoint = Checkpoint(run_dir, contents, interval=1, unit="epoch", keep=keep)
    engine.register(FakeEval(bests))
    engine.register(checkpoint)
    engine.resumer = Resumer(run_dir, contents)
    return engine, checkpoint, run_dir, model


def test_checkpoint_keeps_the_last_n_writes_latest_best_and_final(tmp_path):
    engine, checkpoint, run_dir, model = _checkpointed(tmp_path)
    best_weights = {}
    engine.on(Events.EPOCH_END, lambda e: best_weights.setdefault(e.state.epoch, model.weight.numpy().copy()),
              priority=Order.EVALUATE - 1)
    with run_dir:
        engine.run()
    names = sorted(os.listdir(tmp_path))
    assert names == ["best.pdparams", "epoch_2.pdckpt", "epoch_3.pdckpt", "final.pdparams", "latest.txt", "run.lock"]
    assert (tmp_path / "latest.txt").read_text().strip() == "epoch_3.pdckpt"
    np.testing.assert_array_equal(paddle.load(str(tmp_path / "best.pdparams"))["weight"], best_weights[1])
    np.testing.assert_array_equal(paddle.load(str(tmp_path / "final.pdparams"))["weight"], model.weight.numpy())


def test_checkpoint_resume_restores_the_model_optimizer_and_position(tmp_path):
    first, _, run_dir, model = _checkpointed(tmp_path, epochs=2)
    with run_dir:
        first.run()
    trained = model.weight.numpy().copy()
    again, checkpoint, run_dir, model = _checkpointed(tmp_path, epochs=3)
    seen_at_resumed = []
    again.on(Events.RESUMED, lambda e: seen_at_resumed.append((e.state.resumed.path, model.weight.numpy().copy(),
                                                               e.state.position())))
    with run_dir:
        resumed = again.resumer.resume(again, "auto")
        assert resumed.path == str(tmp_path / "epoch_2.pdckpt") and resumed.world_size == (1, 1)
        assert resumed.changes == {} and resumed.record is None  # nothing changed: no metrics row
        np.testing.assert_array_equal(model.weight.numpy(), trained)
        assert again.state.position() == {"epoch": 2, "iteration": 4, "epoch_iter": 2, "epoch_ended": True}
        # RESUMED fired once, after the weights and the position were back
        (path, weights, position), = seen_at_resumed
        assert path == resumed.path and position == again.state.position()
        np.testing.assert_array_equal(weights, trained)
        steps = []
        again.on(Events.ITER_END, lambda e: steps.append(e.state.iteration))
        again.run()
    assert steps == [5, 6]  # only the third epoch is left


class _DeviceLoss:
    """A loss whose value, like a GPU tensor's, is ready only after the device catches up:
    reading it waits `delay` seconds (the steps that ran ahead of the host)."""

    def __init__(self, value, delay):
        self.value, self.delay = value, delay

    def __add__(self, other):
        return _DeviceLoss(self.value + other.value, self.delay + other.delay)

    def __float__(self):
        import time
        time.sleep(self.delay)
        return float(self.value)


def test_train_meter_times_a_window_after_the_read_that_waits_for_its_steps():
    """The wait to read the window's loss is the device finishing the window's steps: it is in
    the step time, so img/s is not overstated on a GPU. (A lower bound only: sleep guarantees it.)"""
    def step(engine, batch):
        return {"loss": _DeviceLoss(1.0, 0.05), "batch_size": 8}

    engine = Engine(step, list(range(4)), max_epochs=1)
    collect = Collect("train")
    for hook in (TrainMeter(every=4, warmup=0), collect):
        engine.register(hook)
    engine.run()
    (record,) = collect.seen
    assert record["loss"] == pytest.approx(1.0)
    assert record["step_time"] >= 4 * 0.05 / 4  # the 0.2 s read, spread over the window's 4 steps
    assert record["img_per_s"] <= 32 / 0.2


@pytest.mark.parametrize("code, fix", [(28, "make room"), (13, "writable"), (30, "writable")])  # ENOSPC, EACCES, EROFS
def test_a_checkpoint_that_cannot_be_written_says_what_to_fix(tmp_path, monkeypatch, code, fix):
    """A read-only output directory said "make room"; the advice follows the error."""
    import hooks.checkpoint as checkpoint_module
    from engine.errors import WriteFailed
    from engine.files import write_failed
    engine, checkpoint, run_dir, model = _checkpointed(tmp_path, epochs=3)
    real = checkpoint_module.dump

    def dump(obj, path):
        if path.endswith("epoch_2.pdckpt"):
            raise write_failed(path, OSError(code, os.strerror(code)))
        return real(obj, path)

    monkeypatch.setattr(checkpoint_module, "dump", dump)
    with run_dir, pytest.raises(WriteFailed) as raised:
        engine.run()
    message = str(raised.value)
    assert os.strerror(code) in message and "latest.txt still names epoch_1.pdckpt" in message
    assert (fix == "make room") == ("make room" in message)
    assert (fix == "writable") == (f"make {tmp_path} writable" in message)


def test_skipped_images_reach_metrics_jsonl_as_a_data_health_row(tmp_path):
    """DataHealth's count was put and never read; MetricsLog now writes it once any was skipped."""
    import json
    from hooks.data_health import DataHealth
    from hooks.metrics_log import MetricsLog

    class Dataset:
        bad_count = 0

    dataset = Dataset()
    engine = Engine(_loss_step, list(range(7)), max_epochs=2)
    engine.on(Events.EPOCH_START, lambda e: setattr(dataset, "bad_count", 3 * (e.state.epoch - 1)))
    for hook in (TrainMeter(every=7), DataHealth(dataset), MetricsLog(str(tmp_path / "m.jsonl"))):
        engine.register(hook)
    engine.run()
    rows = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    health = [r for r in rows if r["event"] == "data_health"]
    assert [(r["epoch"], r["skipped_files"]) for r in health] == [(2, 3)]  # none in epoch 1: no row
