"""Room-based WebSocket pub/sub on anyio.

Adapters live in submodules imported on demand: ``roomcast.websockets``
(extra ``websockets``), ``roomcast.starlette`` for Starlette and FastAPI (extra
``starlette``) and ``roomcast.aiohttp`` (extra ``aiohttp``); the test kit is
``roomcast.testing``; the Python client is ``roomcast.client`` (extra ``client``).
"""

from .admission import Admission as Admission
from .auth import ANONYMOUS as ANONYMOUS
from .auth import Action as Action
from .auth import AnonymousAuthenticator as AnonymousAuthenticator
from .auth import Authenticator as Authenticator
from .auth import Authorizer as Authorizer
from .auth import DefaultAuthorizer as DefaultAuthorizer
from .auth import NamespaceAuthorizer as NamespaceAuthorizer
from .auth import Principal as Principal
from .auth import TokenSources as TokenSources
from .backends import Backend as Backend
from .backends import MemoryBackend as MemoryBackend
from .backends import Publication as Publication
from .clock import Clock as Clock
from .clock import SystemClock as SystemClock
from .exceptions import AuthenticationError as AuthenticationError
from .exceptions import BackendError as BackendError
from .exceptions import ConnectionClosed as ConnectionClosed
from .exceptions import ConnectionClosedError as ConnectionClosedError
from .exceptions import ConnectionClosedOK as ConnectionClosedOK
from .exceptions import HubNotRunning as HubNotRunning
from .exceptions import LocalProtocolError as LocalProtocolError
from .exceptions import PermissionDenied as PermissionDenied
from .exceptions import ProtocolError as ProtocolError
from .exceptions import RateLimited as RateLimited
from .exceptions import RemoteProtocolError as RemoteProtocolError
from .exceptions import RequestTimeout as RequestTimeout
from .exceptions import RoomcastError as RoomcastError
from .exceptions import ServerError as ServerError
from .heartbeat import Heartbeat as Heartbeat
from .heartbeat import HeartbeatPolicy as HeartbeatPolicy
from .hub import Hub as Hub
from .hub import HubStatistics as HubStatistics
from .limits import ConnectionLimits as ConnectionLimits
from .membership import Room as Room
from .options import History as History
from .options import RateLimit as RateLimit
from .options import RoomOptions as RoomOptions
from .options import SlowConsumerPolicy as SlowConsumerPolicy
from .peer import Client as Client
from .peer import ClientId as ClientId
from .protocol import PROTOCOL as PROTOCOL
from .protocol import CloseCode as CloseCode
from .ratelimit import KeyedRateLimiter as KeyedRateLimiter
from .ratelimit import RateLimiter as RateLimiter
from .transport import EagerTransport as EagerTransport
from .transport import Handshake as Handshake
from .transport import PingableTransport as PingableTransport
from .transport import Transport as Transport
from .transport import TryPingTransport as TryPingTransport
from .wire import StreamPosition as StreamPosition

__version__ = "0.1.0.dev0"

__all__ = [
    "ANONYMOUS",
    "PROTOCOL",
    "Action",
    "Admission",
    "AnonymousAuthenticator",
    "AuthenticationError",
    "Authenticator",
    "Authorizer",
    "Backend",
    "BackendError",
    "Client",
    "ClientId",
    "Clock",
    "CloseCode",
    "ConnectionLimits",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DefaultAuthorizer",
    "EagerTransport",
    "Handshake",
    "Heartbeat",
    "HeartbeatPolicy",
    "History",
    "Hub",
    "HubNotRunning",
    "HubStatistics",
    "KeyedRateLimiter",
    "LocalProtocolError",
    "MemoryBackend",
    "NamespaceAuthorizer",
    "PermissionDenied",
    "PingableTransport",
    "Principal",
    "ProtocolError",
    "Publication",
    "RateLimit",
    "RateLimited",
    "RateLimiter",
    "RemoteProtocolError",
    "RequestTimeout",
    "Room",
    "RoomOptions",
    "RoomcastError",
    "ServerError",
    "SlowConsumerPolicy",
    "StreamPosition",
    "SystemClock",
    "TokenSources",
    "Transport",
    "TryPingTransport",
    "__version__",
]
