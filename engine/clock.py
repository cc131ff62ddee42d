"""Where the loop's wall time goes, counted as it runs: the wait for the next batch, the step
function, and each hook's handlers under the hook's `time_category`. Nested work (a handler
that fires events, as an evaluation does; AFTER_BACKWARD inside the step) is counted once, in
the innermost part. Two clock reads per part: negligible beside a step (bench/engine_overhead.py).
"""
import time
from collections import defaultdict
from typing import Dict


class Clock:
    def __init__(self):
        self.seconds: Dict[str, float] = defaultdict(float)  # cumulative, since the run started
        self._open = []  # [start, time of the parts nested in it]

    def start(self) -> None:
        self._open.append([time.perf_counter(), 0.0])

    def stop(self, category: str) -> None:
        start, nested = self._open.pop()
        total = time.perf_counter() - start
        self.seconds[category] += total - nested
        if self._open:
            self._open[-1][1] += total

    def snapshot(self) -> Dict[str, float]:
        return dict(self.seconds)
