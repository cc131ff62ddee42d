"""train.log in the run directory: what rank 0 prints, as plain text, every start appended
after a `==== time pid: command` line. A log that cannot be written never stops the run."""
import contextlib
import os
import re
import sys
import time

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class TrainLog:
    def __init__(self, path: str, is_main: bool = True):
        self.path, self.is_main = path, is_main
        self._file = None

    @contextlib.contextmanager
    def copying_output(self, command: str = ""):
        """Tee rank 0's stdout and stderr into the log (escape sequences dropped) while open."""
        if not self.is_main:
            yield
            return
        self._file = open(self.path, "a", encoding="utf-8")
        self.line(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {command}")
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            self._file.close()
            self._file = None

    def line(self, text: str) -> None:
        """Write a line to the log only (for what the terminal shows as something else, a bar)."""
        self.append(text if text.endswith("\n") else text + "\n")

    def append(self, text: str) -> None:
        """Append to the log, escape sequences dropped; a no-op when it is not open."""
        if self._file is not None and text:
            try:
                self._file.write(_ANSI.sub("", text))
                self._file.flush()
            except OSError:
                self._file = None  # a full disk: the run goes on, the checkpoint says the rest


class _Tee:
    """A text stream that writes to `stream` and to the train log."""

    def __init__(self, stream, log: TrainLog):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.append(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding...: the terminal's
        return getattr(self.stream, name)
