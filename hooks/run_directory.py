"""Global.output_dir: owned by one run at a time, and no previous run destroyed unasked.

What a training run writes there: `epoch_N.pdckpt` / `step_N.pdckpt` checkpoints, `latest.txt`
(the newest complete one), `best.pdparams`, `final.pdparams`, `metrics.jsonl`, `config.yaml`,
`train.log` (what rank 0 printed, every start appended) and `run.lock`. The run deletes only checkpoints it wrote itself, by name relative to the
directory; nothing it reads from a checkpoint can point outside it.
"""
import contextlib
import errno
import glob
import os
import re
import sys
import time
from typing import List, Optional

from engine.errors import CheckpointError, RunDirectoryError
from engine.files import TMP_MARK, DirectoryLock, atomic_write_text
from engine.serialization import require_regular_file

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
        self._log = None

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

    # ---- choosing where to start ------------------------------------------------------------
    def starting_point(self, checkpoint: Optional[str], same_run=lambda: False) -> Optional[str]:
        """The checkpoint to resume from (None: from the beginning), or a refusal that keeps
        an earlier run's files safe. `checkpoint`: Global.checkpoint (None, "auto" or a path).
        `same_run()`: whether the config.yaml here is this run's own (the same config), so that
        `auto` in a directory whose run wrote files but no checkpoint yet starts it over."""
        ways_out = ("continue it with -o Global.checkpoint=auto, or start over in another "
                    "-o Global.output_dir=...")
        self._refuse_a_foreign_config()
        if not checkpoint:
            found = self.previous_run()
            if found:
                raise RunDirectoryError(f"Global.output_dir {self.path} holds an earlier run "
                                        f"({_listing(found)}): {ways_out}")
            return None
        if checkpoint == "auto":
            latest = self.latest()
            if latest:
                return self.file(latest)
            weights = [n for n in WEIGHTS if os.path.isfile(self.file(n))] + self.checkpoints()
            if weights and not self.checkpoints() and same_run():
                print(f"Global.checkpoint=auto: the run in {self.path} wrote {_listing(weights)} but no "
                      f"checkpoint yet (it stopped before its first): starting it from the beginning")
                return None
            if weights:
                raise RunDirectoryError(f"Global.checkpoint=auto: {self.path} has no latest.txt but "
                                        f"holds {_listing(weights)} of an earlier run"
                                        f"{self.newest_hint()}")
            return None  # no checkpoint yet: the run starts again from its beginning
        if not os.path.exists(checkpoint):
            raise CheckpointError(f"Global.checkpoint: {checkpoint} does not exist")
        require_regular_file(checkpoint, "Global.checkpoint")
        if not self.owns(checkpoint):
            found = self.previous_run()
            if found:
                raise RunDirectoryError(
                    f"Global.output_dir {self.path} holds another run ({_listing(found)}) and "
                    f"Global.checkpoint comes from {os.path.dirname(os.path.abspath(checkpoint))}: "
                    f"resuming here would mix two runs; choose an empty -o Global.output_dir=...")
        return checkpoint

    def _refuse_a_foreign_config(self) -> None:
        """config.yaml here is rewritten at every start with the resolved config: one that this
        program did not write (no mark, and no run's files beside it) is the user's own."""
        path = self.file("config.yaml")
        if not os.path.isfile(path) or self.previous_run():
            return
        with open(path, "rb") as f:
            if f.read(len(CONFIG_MARK)) == CONFIG_MARK.encode():
                return
        raise RunDirectoryError(f"Global.output_dir {self.path} holds a config.yaml that no run wrote "
                                f"(yours?); each run writes its resolved config there: move yours, or "
                                f"choose another -o Global.output_dir=...")

    def write_config(self, text: str) -> None:
        atomic_write_text(self.file("config.yaml"), CONFIG_MARK + text)

    # ---- train.log ----------------------------------------------------------------------
    @contextlib.contextmanager
    def logging_output(self, command: str = ""):
        """Tee rank 0's stdout and stderr into train.log (appended, with a line per start).
        Escape sequences are dropped; a log that cannot be written never stops the run."""
        if not self.is_main:
            yield
            return
        self._log = open(self.file("train.log"), "a", encoding="utf-8")
        self.log_line(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {command}")
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            self._log.close()
            self._log = None

    def log_line(self, text: str) -> None:
        """Write a line to train.log only (for what the terminal shows as something else, a bar)."""
        self.append_to_log(text if text.endswith("\n") else text + "\n")

    def append_to_log(self, text: str) -> None:
        """Append to train.log, escape sequences dropped; a no-op when no log is open."""
        if self._log is not None and text:
            try:
                self._log.write(_ANSI.sub("", text))
                self._log.flush()
            except OSError:
                self._log = None  # a full disk: the run goes on, the checkpoint says the rest

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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class _Tee:
    """A text stream that writes to `stream` and to the run directory's train.log."""

    def __init__(self, stream, run_dir: RunDirectory):
        self.stream, self.run_dir = stream, run_dir

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.run_dir.append_to_log(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding...: the terminal's
        return getattr(self.stream, name)


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return []
        raise


def _listing(names: List[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
