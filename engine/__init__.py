"""An event-hook trainer engine for Paddle: `Engine`, `Events`, `Hook`, `State`."""
from .engine import Engine
from .events import Events
from .hook import Hook
from .state import State

__all__ = ["Engine", "Events", "Hook", "State"]
