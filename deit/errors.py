"""Errors the user can act on: run.py prints their message alone and exits with code 2."""
import difflib


class UserError(Exception):
    """Base of every error caused by input (config, data, weights) rather than by a bug."""


class SetupError(UserError):
    """A config value that names something we cannot build (unknown op, model, loss...)."""


class DataError(UserError):
    """Missing or malformed dataset files: the message names the file (and line)."""


class CheckpointError(UserError):
    """A checkpoint or weights file that cannot be used: the message says why and what to do."""


def unknown(kind: str, name: str, known) -> SetupError:
    """`unknown transform op 'RandFlip' (did you mean 'RandFlipImage'?); known: ...`"""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SetupError(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(known))}")


def paddle_message(exc: Exception, limit: int = 300) -> str:
    """The one informative line of a Paddle C++ error, which starts with 'In user code:' and
    ends with hints: the first line that names an error, else the first non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line.split(":", 1)[0]]
    return ((named or lines or [type(exc).__name__])[0])[:limit]
