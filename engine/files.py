"""Files that are either complete or absent, and a directory that one process owns.

A write goes to a temporary name in the same directory, is flushed to the disk, and is renamed
over the target; the directory entry is flushed too. A kill (or a power cut) at any moment
leaves the old file or the new one, never half of one. A write that fails (disk full, quota,
read-only) removes its temporary file and raises WriteFailed naming the path, the space it
needed and the space that was free.
"""
import errno
import fcntl
import json
import os
import shutil
import socket
import time

from .errors import RunDirectoryError, WriteFailed

TMP_MARK = ".tmp-"


def tmp_name(path: str) -> str:
    return f"{path}{TMP_MARK}{os.getpid()}"


def atomic_write(path: str, write, size_hint: int = 0) -> None:
    """`write(f)` fills a binary file object; the result replaces `path` atomically."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path) or ".")
    except OSError as exc:
        raise write_failed(path, exc, size_hint) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), len(text))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_failed(path: str, exc: OSError, needed: int = 0) -> WriteFailed:
    """One line: which file, why, and (for a full disk) how much space it needs."""
    reason = exc.strerror or str(exc)
    space = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
            space = f" (needs about {megabytes(needed)}, {megabytes(free)} free there)" if needed else f" ({megabytes(free)} free there)"
        except OSError:
            pass
    failed = WriteFailed(f"cannot write {path}: {reason}{space}")
    failed.errno = exc.errno
    return failed


def megabytes(n: int) -> str:
    """Sizes in messages: "330.1 MB" (MiB, as df -m counts)."""
    return f"{n / 2**20:.1f} MB"


class DirectoryLock:
    """An exclusive `flock` on DIR/run.lock, held while the run lives.

    The kernel drops the lock when the process dies, even by kill -9, so a crashed run never
    blocks the next one. The file keeps the holder's pid, host and start time for the message
    a second run gets. The lock file is never deleted (deleting it would let two runs hold
    locks on two different files)."""

    NAME = "run.lock"

    def __init__(self, directory: str):
        self.directory, self.fd = directory, None

    def _close_in_child(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.NAME)

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirectoryError(f"Global.output_dir: cannot create {self.path}: {exc.strerror}; "
                                    f"choose a writable -o Global.output_dir=...") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirectoryError(f"Global.output_dir: cannot lock {self.path}: {exc.strerror}") from None
            raise RunDirectoryError(
                f"Global.output_dir {self.directory} is in use by another run ({holder}); wait for "
                f"it to finish or stop it, or choose another -o Global.output_dir=...") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise write_failed(self.path, exc, len(info)) from None
        self.fd = fd
        # Forked children (data-loader workers) would share the lock and keep it for a moment
        # after the trainer dies: they close their copy (the trainer's copy keeps the lock).
        os.register_at_fork(after_in_child=self._close_in_child)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
