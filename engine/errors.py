"""Errors the user can act on, raised by the engine and its hooks.

run.py prints the message alone and exits with code 2. deit/ has its own UserError for the
components (it imports nothing from engine/); both mean "your input, not our bug".
"""


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
