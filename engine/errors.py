"""Errors the user can act on: run.py prints the message alone and exits with code 2.

The one hierarchy of "your input, not our bug", for the engine, the hooks and the DeiT
components alike (deit/errors.py adds the components' kinds). This module and its suggester
import nothing of the loop, which is why deit/ may import it and nothing else of engine/.
"""
import difflib


class UserError(Exception):
    """Base of every engine-side error caused by input, files or the machine, not by a bug."""


class CheckpointError(UserError):
    """A checkpoint or weights file that cannot be used: the message says why and what to do."""


class RunDirectoryError(UserError):
    """Global.output_dir cannot be used for this run: in use, holds another run, not writable."""


class WriteFailed(UserError):
    """A file of the run could not be written (disk full, read-only, ...); the previous
    complete version of it is still in place."""


class TrainingDiverged(UserError):
    """A non-finite loss in full precision: the run stops before anything is saved."""


def did_you_mean(name, known) -> str:
    """` (did you mean 'epochs'?)` for the closest of `known`, or "" when none is close."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
