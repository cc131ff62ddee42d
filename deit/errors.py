"""The components' kinds of user error, under the one UserError of engine/errors.py (which
run.py catches), and the two ways they word a message."""
from engine.errors import CheckpointError, UserError, did_you_mean  # noqa: F401 - CheckpointError: the components' too


class SetupError(UserError):
    """A config value that names something we cannot build (unknown op, model, loss...)."""


class DataError(UserError):
    """Missing or malformed dataset files: the message names the file (and line)."""


def unknown(kind: str, name: str, known) -> SetupError:
    """`unknown transform op 'RandFlip' (did you mean 'RandFlipImage'?); known: ...`"""
    return SetupError(f"unknown {kind} {name!r}{did_you_mean(name, known)}; known: {', '.join(sorted(known))}")


def paddle_message(exc: Exception, limit: int = 300) -> str:
    """The one informative line of a Paddle C++ error, which starts with 'In user code:' and
    ends with hints: the first line that names an error, else the first non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line.split(":", 1)[0]]
    return ((named or lines or [type(exc).__name__])[0])[:limit]
