"""An event-hook trainer engine for Paddle: `Engine`, `Events`, `Hook`, `State`."""
from .engine import Engine
from .events import Events
from .hook import Hook
from .priority import Priority
from .state import EvalProgress, Resumed, State

__all__ = ["Engine", "EvalProgress", "Events", "Hook", "Priority", "Resumed", "State"]
