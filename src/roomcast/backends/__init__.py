"""Backends: how publications travel between nodes, and where history and presence live."""

from .base import Backend as Backend
from .base import BackendStatus as BackendStatus
from .base import ChannelKind as ChannelKind
from .base import Delivery as Delivery
from .base import HistoryResult as HistoryResult
from .base import PresenceEntry as PresenceEntry
from .base import Publication as Publication
from .base import Resync as Resync
from .memory import MemoryBackend as MemoryBackend

__all__ = [
    "Backend",
    "BackendStatus",
    "ChannelKind",
    "Delivery",
    "HistoryResult",
    "MemoryBackend",
    "PresenceEntry",
    "Publication",
    "Resync",
]
