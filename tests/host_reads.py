"""Counting reads of device values on the host: every Python-level conversion of a Tensor to a
host value (numpy, item, bool, float, int, index, tolist, __array__), outermost call only."""
import contextlib

import paddle

CONVERSIONS = ("numpy", "item", "__bool__", "__float__", "__int__", "__index__", "tolist", "__array__")


class HostReads:
    def __init__(self):
        self.count, self._depth, self._saved = 0, 0, {}

    def _wrap(self, original):
        def counted(tensor, *args, **kwargs):
            if self._depth == 0:
                self.count += 1
            self._depth += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._depth -= 1
        return counted

    def install(self):
        for name in CONVERSIONS:
            self._saved[name] = getattr(paddle.Tensor, name)
            setattr(paddle.Tensor, name, self._wrap(self._saved[name]))

    def remove(self):
        for name, original in self._saved.items():
            setattr(paddle.Tensor, name, original)
        self._saved = {}


@contextlib.contextmanager
def counting():
    reads = HostReads()
    reads.install()
    try:
        yield reads
    finally:
        reads.remove()
