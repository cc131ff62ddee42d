"""What an export leaves behind besides its files: nothing of Paddle's harmless PIR `out`
warning in the output (and nothing else lost), and the exported layer still eager."""
import os
import subprocess
import sys

import pytest

from deit.inference.export import PADDLE_NOISE, native_stderr_without
from tests.conftest import ROOT

NOISE_LINE = f"W1204 12:00:00.000000 1 eager_utils.cc:3584] {PADDLE_NOISE[0]}!!!!!\n"


def test_the_filter_drops_only_the_noise_and_keeps_the_rest_also_on_an_error(capfd):
    with pytest.raises(RuntimeError):
        with native_stderr_without():
            os.write(2, f"native before\n{NOISE_LINE}native after\n".encode())
            print("python's own stderr", file=sys.stderr)
            raise RuntimeError("the export failed")
    err = capfd.readouterr().err  # (pytest's sys.stderr is not fd 2 here: the order may differ)
    assert "native before\nnative after\n" in err and "python's own stderr\n" in err
    assert PADDLE_NOISE[0] not in err


EXPORT = """
import deit.cpu.env
from deit.model import VisionTransformer
from deit.inference.export import export_inference
model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, class_num=3)
export_inference(model, [None, 3, 16, 16], {prefix!r})
"""


def test_an_export_in_a_fresh_process_prints_no_pir_warning(tmp_path):
    """Paddle prints the warning once per process: only a fresh one shows whether it is gone."""
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", EXPORT.format(prefix=str(tmp_path / "m"))],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.pdiparams").exists()
    assert "not support input out tensor" not in result.stderr + result.stdout


def test_the_exported_layer_stays_eager_and_trains_as_before(tmp_path):
    """paddle.jit.to_static(layer) replaces the layer's forward with a static function; left in
    place, a model exported mid-training went on as a static program (3.5x slower on CPU)."""
    import numpy as np
    import paddle
    from deit.inference.export import export_inference
    from deit.model import VisionTransformer

    def trained_step(export):
        paddle.seed(0)
        model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, class_num=3,
                                  drop_path_rate=0.2)
        if export:
            export_inference(model, [None, 3, 16, 16], str(tmp_path / "m"))
        assert "forward" not in model.__dict__
        model.train()
        paddle.seed(1)
        loss = model(paddle.ones([2, 3, 16, 16])).mean()
        loss.backward()
        return float(loss), model.head.weight.grad.numpy()

    (loss, grad), (loss_after_export, grad_after_export) = trained_step(False), trained_step(True)
    assert loss_after_export == loss
    np.testing.assert_array_equal(grad_after_export, grad)
