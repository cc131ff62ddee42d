"""Reads of device values on the host, counted per training step: a GPU step that reads one
waits there for the device, and the launch queue runs dry. Between reports a step must read
nothing in fp32 (O0) and O2 bfloat16; O2 float16 reads exactly one, Paddle's own: its optimizer
decides on the host whether to apply a step the loss scaler flagged (`if found_inf:` in
paddle/optimizer/optimizer.py; its AdamW kernels read a skip flag on the host too).

Counted as tests/host_reads.py counts them. Reads inside C++ kernels are not visible here: the one that matters, update_loss_scaling_'s stop_update, is a host bool by construction."""
import json

import numpy as np
import paddle
import pytest

import run
from deit.evaluate import evaluate_sums
from deit.model import VisionTransformer
from tests.host_reads import counting

COUNTER = '''
import json
from engine import Hook
from tests.host_reads import HostReads

class CountHostReads(Hook):
    """Counts host reads for the run; writes the reads of every step (from the end of the
    previous step to the end of this one, all hooks included) to `out`."""
    priority = 1000
    def __init__(self, out):
        self.out, self.reads, self.per_step = out, HostReads(), []
    def started(self, engine):
        self.reads.install()
    def iter_end(self, engine):
        reported = engine.state.reports.fresh("train") is not None
        self.per_step.append([engine.state.iteration, self.reads.count, reported])
        self.reads.count = 0
    def ended(self, engine):
        self.reads.remove()
        with open(self.out, "w") as f:
            json.dump(self.per_step, f)
'''

PRECISIONS = {  # name: (overrides, host reads expected per step between reports)
    "O0": ((), 0),
    "O2 bfloat16": (("FP16.level=O2", "FP16.dtype=bfloat16", "FP16.cast_on_cpu=true"), 0),
    "O2 float16": (("FP16.level=O2", "FP16.dtype=float16", "FP16.cast_on_cpu=true"), 1),
}


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_steps_between_reports_read_nothing_from_the_device_but_paddles_skip_decision(
        precision, tiny_config, tmp_path, monkeypatch):
    overrides, expected = PRECISIONS[precision]
    (tmp_path / "count_reads.py").write_text(COUNTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "reads.json"
    # 120 images / 4 = 30 steps in one epoch; a report at steps 25 and 30; EMA on; no evaluation
    args = ["-c", tiny_config, "-o", "Global.epochs=1", "-o", "DataLoader.Train.sampler.batch_size=4",
            "-o", "Global.print_batch_step=25", "-o", "Global.eval_during_train=false",
            "-o", "EMA.decay=0.99", "-o", f"Hooks=[{{count_reads.CountHostReads: {{out: '{out}'}}}}]"]
    for o in overrides:
        args += ["-o", o]
    assert run.main(args) == 0
    steps = json.loads(out.read_text())
    assert len(steps) == 30
    quiet = [(iteration, reads) for iteration, reads, reported in steps[1:] if not reported]
    assert len(quiet) >= 20
    assert {reads for _, reads in quiet} == {expected}, quiet
    assert any(reads > 0 for _, reads, reported in steps if reported)  # the counter does see reads


def test_an_evaluation_reads_its_sums_once_not_per_batch():
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, class_num=5)
    rng = np.random.default_rng(0)
    batches = [(paddle.to_tensor(rng.standard_normal((4, 3, 16, 16)).astype("float32")),
                paddle.to_tensor(rng.integers(0, 5, 4))) for _ in range(6)]
    loss = paddle.nn.CrossEntropyLoss()
    with counting() as reads:
        sums = evaluate_sums(model, batches, loss, topk=(1, 5))
    assert reads.count == 1
    with paddle.no_grad():  # the same sums, batch by batch in numpy
        logits = [model(x).numpy() for x, _ in batches]
    labels = [y.numpy() for _, y in batches]
    top1 = sum(int((l.argmax(-1) == y).sum()) for l, y in zip(logits, labels))
    assert sums["count"] == 24 and sums["correct@1"] == top1 and sums["correct@5"] == 24
    expected_loss = sum(float(loss(paddle.to_tensor(l), paddle.to_tensor(y))) * 4 for l, y in zip(logits, labels))
    assert abs(sums["loss_sum"] - expected_loss) < 1e-4
