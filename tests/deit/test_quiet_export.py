"""An export prints nothing of Paddle's harmless PIR `out` warning, and nothing else is lost."""
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
