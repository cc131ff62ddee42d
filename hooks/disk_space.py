"""Before training: an output_dir whose disk cannot hold one checkpoint is refused, one that
cannot hold the checkpoints kept is warned about."""
import shutil
from typing import Optional

from engine.errors import WriteFailed
from engine.files import megabytes
from engine.serialization import nbytes, to_plain


def check_space(run_dir, model, engine, keep: Optional[int]) -> None:
    """The optimizer's moments do not exist before the first step, so a checkpoint is estimated
    as the weights three times (weights and AdamW's two moments) plus the hooks' states."""
    if not run_dir.is_main:
        return
    weights = nbytes(to_plain(model.state_dict()))
    checkpoint = 3 * weights + nbytes(to_plain(engine.state_dict()))
    best_and_final = 2 * weights
    free = shutil.disk_usage(run_dir.path).free
    if free < checkpoint + best_and_final:
        raise WriteFailed(f"Global.output_dir {run_dir.path} has {megabytes(free)} free and one "
                          f"checkpoint with the weights files needs about "
                          f"{megabytes(checkpoint + best_and_final)}: make room or choose another "
                          f"-o Global.output_dir=...")
    if keep is not None and free < keep * checkpoint + best_and_final:
        print(f"warning: {run_dir.path} has {megabytes(free)} free; keeping {keep} "
              f"checkpoints of about {megabytes(checkpoint)} each may not fit")
