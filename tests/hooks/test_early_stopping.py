"""EarlyStopping against Ignite's rule, and through a whole run: it stops, says why, writes
final.pdparams, and a kill -9 and resume in the middle of its count stop at the same epoch."""
import os
import signal

import numpy as np
import pytest

from engine import Engine
from engine.serialization import load_restricted
from hooks import kinds
from hooks.early_stopping import EarlyStopping
from tests.faults import hooks_option, metrics_rows, run_cli, write_hooks


class _Evaluation:
    name = kinds.EVAL


def _feed(hook, values, metric="top1", event=kinds.EVAL):
    """One evaluation per value, as Evaluate reports them; returns the 1-based evaluation at
    which the hook stopped the run, or None."""
    engine = Engine(lambda e, b: None, [0])
    engine.register(hook)
    for n, value in enumerate(values, start=1):
        engine.state.epoch = n
        engine.state.reports.put(event, {"event": event, **engine.state.counters(), metric: value})
        engine.state.evaluation = _Evaluation()
        hook.eval_end(engine)
        if engine.state.should_stop:
            return n
    return None


@pytest.mark.parametrize("values, patience, min_delta, mode, stops_at", [
    # an improvement must beat the best by more than min_delta (Ignite: score <= best + delta is none)
    ([0.5, 0.6, 0.6, 0.6], 2, 0.0, "max", 4),
    ([0.5, 0.6, 0.64, 0.645], 2, 0.05, "max", 4),  # +0.04, +0.045 over the best 0.6: not more than 0.05
    ([0.5, 0.6, 0.66, 0.72], 2, 0.05, "max", None),
    ([0.5, 0.4, 0.6, 0.5, 0.5], 2, 0.0, "max", 5),  # the count restarts at an improvement
    ([2.0, 1.5, 1.6, 1.5], 2, 0.0, "min", 4),     # a loss: lower is better, equal is not better
    ([2.0, 1.0, 0.5], 1, 0.0, "min", None),
])
def test_stops_as_ignites_rule_says(values, patience, min_delta, mode, stops_at):
    assert _feed(EarlyStopping(patience, min_delta, "top1", mode), values) == stops_at


@pytest.mark.parametrize("patience, trains_on", [(2, False), (3, True)])
def test_a_stopped_run_stays_stopped_unless_patience_was_raised(patience, trains_on):
    before = EarlyStopping(2)
    assert _feed(before, [0.5, 0.4, 0.4]) == 3
    again = EarlyStopping(patience)
    again.load_state_dict(before.state_dict())
    engine = Engine(lambda e, b: None, [0])
    again.started(engine)
    assert engine.state.should_stop is not trains_on and again.stopped is not trains_on
    if trains_on:  # and the count goes on from where it was
        assert _feed(again, [0.3]) == 1


def test_watches_only_its_evaluation():
    """eval_ema's evaluations do not count for a hook watching eval."""
    assert _feed(EarlyStopping(1), [0.5, 0.4, 0.3], event=kinds.EVAL_EMA) is None


def test_bad_arguments_are_refused():
    for kwargs, said in (({"patience": 0}, "patience"), ({"patience": 1, "min_delta": -1}, "min_delta"),
                         ({"patience": 1, "mode": "up"}, "mode")):
        with pytest.raises(ValueError, match=said):
            EarlyStopping(**kwargs)


# 120 images / batch 16 = 7 steps per epoch; nothing improves the eval loss by more than 10 after
# the first evaluation, so with patience 2 the run stops at epoch 3 of 6
STOPPING = ("Global.epochs=6", "Model.drop_path_rate=0.2", "EarlyStopping.patience=2",
            "EarlyStopping.metric=loss", "EarlyStopping.min_delta=10", "Global.save_interval=1",
            "Global.max_num_latest_checkpoint=-1")


def test_a_run_stops_says_why_and_resumes_its_count_exactly(tiny_config, tmp_path):
    write_hooks(tmp_path)
    reference = tmp_path / "reference"
    done = run_cli(tiny_config, reference, *STOPPING, hooks_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "early stopping at epoch 3: eval/loss has not moved below its best" in done.stdout
    rows = metrics_rows(reference)
    stop, = [r for r in rows if r["event"] == "early_stop"]
    assert (stop["epoch"], stop["best_epoch"], stop["metric"], stop["mode"]) == (3, 1, "loss", "min")
    assert [r["epoch"] for r in rows if r["event"] == "eval"] == [1, 2, 3]
    assert (reference / "final.pdparams").exists()
    again = run_cli(tiny_config, reference, *STOPPING, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert again.returncode == 0 and "early stopping ended this run at epoch 3" in again.stdout
    assert metrics_rows(reference) == rows  # the rerun trained nothing

    cut = tmp_path / "cut"  # killed after epoch 2's checkpoint, one evaluation into the count
    killed = run_cli(tiny_config, cut, *STOPPING, hooks_option("fault_hooks.KillAt: {step: 14, event: epoch_end}"),
                     hooks_dir=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(tiny_config, cut, *STOPPING, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "early stopping at epoch 3" in resumed.stdout
    assert [r for r in metrics_rows(cut) if r["event"] != "resume"] == rows
    a, b = load_restricted(str(reference / "final.pdparams"), "t"), load_restricted(str(cut / "final.pdparams"), "t")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides, said", [
    (("EarlyStopping.patience=2", "Global.eval_during_train=false"), "Global.eval_during_train is false"),
    (("EarlyStopping.patience=2", "EarlyStopping.evaluation=eval_ema"), "the EMA model is not evaluated"),
    (("EarlyStopping.patience=2", "EarlyStopping.metric=top1_dist"), "a distilled model's head"),
    (("EarlyStopping.patience=-1",), "EarlyStopping.patience"),
    (("EarlyStopping.metric=acc",), "EarlyStopping.metric"),
])
def test_bad_settings_are_one_line_before_training(tiny_config, tmp_path, overrides, said):
    result = run_cli(tiny_config, tmp_path / "out", *overrides, hooks_dir=tmp_path)
    assert result.returncode == 2 and said in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not os.path.exists(tmp_path / "out" / "metrics.jsonl")
