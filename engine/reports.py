"""The channel hooks tell each other things through (detectron2's EventStorage, slimmed).

A hook puts a record of its own kind ("train", "eval", "lr", ...); others read the latest one,
or ask for it only when it is fresh (put at this iteration). A record is read-only once put,
so a reader can keep it and no hook edits another's. A kind "A/B" adds fields to A's record
(the loss scaler's "train/loss_scale" joins the train report) without touching A's record:
`fresh("A", with_parts=True)` gives A's record with its fresh parts merged in.
"""
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, Tuple


class Reports:
    def __init__(self, iteration: Callable[[], int]):
        self._iteration = iteration   # the engine's clock: state.iteration
        self._latest: Dict[str, Tuple[int, Mapping[str, Any]]] = {}

    def put(self, kind: str, record: Mapping[str, Any]) -> Mapping[str, Any]:
        frozen = MappingProxyType(dict(record))
        self._latest[kind] = (self._iteration(), frozen)
        return frozen

    def latest(self, kind: str) -> Optional[Mapping[str, Any]]:
        entry = self._latest.get(kind)
        return entry[1] if entry else None

    def fresh(self, kind: str, with_parts: bool = False) -> Optional[Mapping[str, Any]]:
        """The record of `kind` if it was put at this iteration, else None."""
        now = self._iteration()
        entry = self._latest.get(kind)
        if entry is None or entry[0] != now:
            return None
        if not with_parts:
            return entry[1]
        merged = dict(entry[1])
        for name, (when, part) in self._latest.items():
            if when == now and name.startswith(kind + "/"):
                merged.update(part)
        return MappingProxyType(merged)
