"""The Progress hook: eval progress for long evaluations, and prints during a live bar in the log."""
import io
import time
from functools import partial

import paddle
import pytest

from deit.evaluate import Evaluation
from engine import Engine, Events
from hooks import progress as progress_module
from hooks.evaluate import Evaluate
from hooks.progress import Progress


class Terminal(io.StringIO):
    """What rich takes for a terminal, so it draws live bars."""

    def isatty(self):
        return True


class SlowBatches:
    """An eval loader of 3 batches that takes 0.15 s each (so a live bar redraws) and prints
    a line during the second one, as a hook or a library would."""

    def __len__(self):
        return 3

    def __iter__(self):
        for i in range(3):
            time.sleep(0.15)
            if i == 1:
                print("a line printed during evaluation")
            yield paddle.ones([2, 4]), paddle.to_tensor([0, 1])


def _engine(evaluate_unit="epoch"):
    engine = Engine(lambda engine, batch: {"loss": 1.0}, [0, 1, 2, 3], max_epochs=2)
    evaluation = Evaluation(SlowBatches(), topk=(1,))
    engine.register(Evaluate(partial(evaluation, paddle.nn.Linear(4, 3)), unit=evaluate_unit,
                             interval=2 if evaluate_unit == "step" else 1, batches=evaluation.batches))
    engine.on(Events.ITER_END, lambda e: print(f"a line printed at step {e.state.iteration}"), every=3)
    return engine


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_a_long_evaluation_shows_a_bar_and_prints_under_the_bar_reach_the_log(unit, monkeypatch):
    """Epoch evaluations get a bar of their own; step evaluations run mid-epoch, while the
    epoch's bar is live, and share it (rich allows one live display)."""
    monkeypatch.setattr(progress_module, "EVAL_BAR_AFTER_S", 0.0)
    terminal, logged = Terminal(), []
    engine = _engine(unit)
    engine.register(Progress("rich", stream=terminal, log=logged.append))
    engine.run()
    shown, log = terminal.getvalue(), "".join(logged)
    assert "eval 1/2" in shown and "epoch 2/2" in shown
    for line in ("a line printed during evaluation\n", "a line printed at step 3\n"):
        assert line in log and line.strip() in shown
    assert log.count("a line printed during evaluation\n") == (4 if unit == "step" else 2)
    assert "top1" in log and "\x1b" not in log  # the eval lines, as text; no bar frames


def test_a_short_evaluation_shows_no_bar(monkeypatch):
    terminal = Terminal()
    engine = _engine()
    engine.register(Progress("rich", stream=terminal, log=[].append))
    engine.run()
    assert "eval 1/2" not in terminal.getvalue() and "epoch 1/2" in terminal.getvalue()


def test_plain_mode_prints_a_progress_line_during_a_long_evaluation(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "EVAL_LINE_EVERY_S", 0.1)
    engine = _engine()
    engine.register(Progress("plain"))
    engine.run()
    out = capsys.readouterr().out
    assert "eval epoch 1: batch 1/3" in out and "eval epoch 2: batch 3/3" in out
