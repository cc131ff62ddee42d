"""Generic levels of the order hooks run in at each event: lower first, ties in registration
order (mmengine's `Priority`). The engine knows no particular hook: the built-in hooks' places
and the reason for each are in hooks/order.py, which uses numbers on this scale.
"""
from enum import IntEnum


class Priority(IntEnum):
    FIRST = 0       # before everything else at the event
    EARLY = 25      # before the default
    NORMAL = 50     # a hook that sets nothing
    LATE = 75       # after the default
    LAST = 100      # after everything else at the event
