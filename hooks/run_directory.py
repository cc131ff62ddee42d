"""Global.output_dir: its files, and the lock that gives it to one run at a time.

What a training run writes there: `epoch_N.pdckpt` / `step_N.pdckpt` checkpoints, `latest.txt`
(the newest complete one), `best.pdparams`, `final.pdparams`, `metrics.jsonl`, `config.yaml`,
`train.log` (hooks/train_log.py) and `run.lock`. The run deletes only checkpoints it wrote
itself, by name relative to the directory; nothing it reads from a checkpoint can point outside
it. Which checkpoint a run starts from, and which earlier runs it refuses to touch, is
hooks/resume.py's.
"""
import errno
import glob
import os
import re
from typing import List, Optional

from engine.errors import CheckpointError, RunDirectoryError
from engine.files import TMP_MARK, DirectoryLock, atomic_write_text

CHECKPOINT = re.compile(r"^(epoch|step)_[0-9]+\.pdckpt$")
OUTPUTS = ("latest.txt", "final.pdparams", "best.pdparams", "metrics.jsonl")
WEIGHTS = ("final.pdparams", "best.pdparams")
LOGS = ("metrics.jsonl", "config.yaml")
CONFIG_MARK = "# the resolved config of the run in this directory, written by run.py at each start\n"


class RunDirectory:
    """`open()` before anything is written (rank 0 takes the lock), `close()` at the end."""

    def __init__(self, path: str, is_main: bool = True):
        self.path, self.is_main = path, is_main
        self._lock = DirectoryLock(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ---- ownership ----------------------------------------------------------------------
    def open(self) -> None:
        if not self.is_main:
            return
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirectoryError(f"Global.output_dir {self.path} is a file, not a directory; "
                                    f"choose another -o Global.output_dir=...")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(f"Global.output_dir: cannot create {self.path}: {exc.strerror}; "
                                    f"choose a writable -o Global.output_dir=...") from None
        self._lock.acquire()
        for stale in self._stale_temporaries():
            os.remove(stale)  # left by a run killed mid-write (we hold the lock: no one else writes)

    def close(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def _stale_temporaries(self) -> List[str]:
        """Only temporaries of files a run writes here: `NAME.tmp-PID`."""
        found = []
        for path in glob.glob(os.path.join(glob.escape(self.path), f"*{TMP_MARK}*")):
            name = os.path.basename(path).split(TMP_MARK)[0]
            if (CHECKPOINT.match(name) or name in OUTPUTS or name in LOGS) and \
                    os.path.basename(path)[len(name) + len(TMP_MARK):].isdigit():
                found.append(path)
        return found

    # ---- what is here -------------------------------------------------------------------
    def checkpoints(self) -> List[str]:
        """Checkpoint names in this directory, oldest first (by modification time)."""
        names = [n for n in _listdir(self.path) if CHECKPOINT.match(n)]
        return sorted(names, key=lambda n: os.path.getmtime(self.file(n)))

    def previous_run(self) -> List[str]:
        """The files of an earlier run found here (empty for a new or unused directory). An
        empty metrics.jsonl (a run that failed before its first report) holds nothing to lose."""
        present = set(_listdir(self.path))
        found = [n for n in OUTPUTS if n in present]
        if "metrics.jsonl" in found and os.path.getsize(self.file("metrics.jsonl")) == 0:
            found.remove("metrics.jsonl")
        return found + self.checkpoints()

    def latest(self) -> Optional[str]:
        """The checkpoint named by latest.txt (None if there is no latest.txt)."""
        path = self.file("latest.txt")
        if os.path.lexists(path) and not os.path.isfile(path):  # a FIFO would block the resume forever
            raise CheckpointError(f"Global.checkpoint=auto: {path} is not a regular file; remove it"
                                  f"{self.newest_hint()}")
        try:
            with open(path, encoding="utf-8") as f:
                name = f.read(4096).strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"Global.checkpoint=auto: cannot read {path} ({exc})") from None
        if not CHECKPOINT.match(name):
            raise CheckpointError(f"Global.checkpoint=auto: {path} should name a checkpoint in "
                                  f"{self.path} but holds {name[:60]!r}{self.newest_hint()}")
        if not os.path.isfile(self.file(name)):
            raise CheckpointError(f"Global.checkpoint=auto: {path} names {name}, which is missing"
                                  f"{self.newest_hint()}")
        return name

    def newest_hint(self, exclude: str = None) -> str:
        """"; to resume from the newest one there, pass -o Global.checkpoint=PATH" (or what
        to do when there is none), for messages about a checkpoint that cannot be used."""
        others = [n for n in self.checkpoints() if n != exclude]
        if not others:
            return "; no other checkpoint is there: start over in another -o Global.output_dir=..."
        return f"; to resume from the newest one there, pass -o Global.checkpoint={self.file(others[-1])}"

    def owns(self, path: str) -> bool:
        """True when `path` is a file directly in this directory."""
        folder = os.path.dirname(os.path.abspath(path))
        return os.path.isdir(self.path) and os.path.samefile(folder, self.path)

    def write_config(self, text: str) -> None:
        atomic_write_text(self.file("config.yaml"), CONFIG_MARK + text)

    # ---- writing ------------------------------------------------------------------------
    def set_latest(self, name: str) -> None:
        atomic_write_text(self.file("latest.txt"), name + "\n")

    def remove_checkpoint(self, name: str) -> None:
        """Delete a checkpoint this run wrote; anything but a checkpoint name is refused."""
        if not CHECKPOINT.match(name):
            raise ValueError(f"refusing to delete {name!r}: not a checkpoint name")
        try:
            os.remove(self.file(name))
        except FileNotFoundError:
            pass


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return []
        raise


def listing(names: List[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
