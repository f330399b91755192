"""The public surface, pinned: what each public module exports, that it exists, and its docs.

Changing what a module exports is a decision: it changes this file too, and the
CHANGELOG. Every name in an ``__all__`` must exist; every name ``roomcast`` re-exports
must be the very object of the module it comes from; every exported class and function
has a docstring, and every other exported value a ``#:`` comment (or a docstring) where
it is assigned.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import types
from pathlib import Path
from types import ModuleType

import pytest

import roomcast

SOURCE = Path(roomcast.__file__).resolve().parent

#: Each public module and the exact names of its ``__all__``.
EXPECTED_ALL: dict[str, set[str]] = {
    "roomcast": {
        "__version__",
        "Action",
        "Admission",
        "ANONYMOUS",
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
        "ConnectionClosed",
        "ConnectionClosedError",
        "ConnectionClosedOK",
        "ConnectionLimits",
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
        "PROTOCOL",
        "ProtocolError",
        "Publication",
        "RateLimit",
        "RateLimited",
        "RateLimiter",
        "RemoteProtocolError",
        "RequestTimeout",
        "Room",
        "RoomcastError",
        "RoomOptions",
        "ServerError",
        "SlowConsumerPolicy",
        "StreamPosition",
        "SystemClock",
        "TokenSources",
        "Transport",
        "TryPingTransport",
    },
    "roomcast.hub": {"Admission", "Hub", "HubStatistics"},
    "roomcast.auth": {
        "Action",
        "ANONYMOUS",
        "AnonymousAuthenticator",
        "Authenticator",
        "Authorizer",
        "AuthorizerFunction",
        "bearer_token",
        "check_principal",
        "DefaultAuthorizer",
        "MAX_EXPIRES_AT",
        "MAX_USER_ID_LENGTH",
        "NamespaceAuthorizer",
        "NamespaceRule",
        "Principal",
        "SUBPROTOCOL_BEARER_PREFIX",
        "TokenSources",
    },
    "roomcast.jwt": {"JWTAuthenticator"},
    "roomcast.clock": {"Clock", "SystemClock"},
    "roomcast.config": {
        "DEFAULT_AUTH_FAILURES_PER_MINUTE",
        "DEFAULT_AUTH_TIMEOUT",
        "DEFAULT_BAD_REQUEST_LIMIT",
        "DEFAULT_BURST",
        "DEFAULT_CLOSE_TIMEOUT",
        "DEFAULT_DRAIN_TIMEOUT",
        "DEFAULT_FLUSH_DELAY",
        "DEFAULT_HEARTBEAT_INTERVAL",
        "DEFAULT_HEARTBEAT_JITTER",
        "DEFAULT_HEARTBEAT_TIMEOUT",
        "DEFAULT_JWKS_COOLDOWN",
        "DEFAULT_JWKS_TIMEOUT",
        "DEFAULT_MAX_CONNECTIONS_PER_IP",
        "DEFAULT_MAX_CONNECTIONS_PER_USER",
        "DEFAULT_MAX_KEYS",
        "DEFAULT_MAX_MESSAGE_SIZE",
        "DEFAULT_MAX_QUEUE",
        "DEFAULT_MAX_QUEUE_BYTES",
        "DEFAULT_MAX_RECONNECT_DELAY",
        "DEFAULT_MAX_ROOMS_PER_CONNECTION",
        "DEFAULT_MAX_TRACKED_IPS",
        "DEFAULT_PERIOD",
        "DEFAULT_POSITION_CHECK",
        "DEFAULT_POSITION_TTL",
        "DEFAULT_PRESENCE_LEASE",
        "DEFAULT_PROBE_INTERVAL",
        "DEFAULT_PROBE_TIMEOUT",
        "DEFAULT_PUBLISH_TIMEOUT",
        "DEFAULT_RECONNECT_DELAY",
        "DEFAULT_RATE",
        "DEFAULT_STRIKES",
        "DEFAULT_TOKEN_EXPIRY_WARNING",
        "MAX_FLUSH_DELAY",
        "check_finite",
        "check_flush_delay",
        "check_fraction",
        "check_non_negative",
        "check_positive",
        "check_positive_int",
    },
    "roomcast.protocol": {
        "CLOSE_ABNORMAL",
        "CLOSE_NO_STATUS",
        "MAX_CLOSE_REASON_BYTES",
        "MAX_TOKEN_LENGTH",
        "SENDABLE_CLOSE_CODES",
        "PING_FRAME",
        "PONG_FRAME",
        "PROTOCOL",
        "CloseCode",
        "Reconnect",
    },
    "roomcast.wire": {
        "Auth",
        "HistoryRequest",
        "MAX_HISTORY_LIMIT",
        "decode",
        "DEFAULT_LIMITS",
        "dumps",
        "encode_ack",
        "encode_error",
        "encode_event",
        "encode_frame",
        "encode_gap",
        "encode_history_reply",
        "encode_reply",
        "encode_room_reset",
        "json_encoder",
        "MAX_DEPTH",
        "MAX_MESSAGE_SIZE",
        "MAX_REF_LENGTH",
        "MAX_ROOM_NAME_LENGTH",
        "MAX_ROOMS_PER_REQUEST",
        "MAX_TOKEN_LENGTH",
        "MAX_TYPE_LENGTH",
        "namespace_of",
        "Ping",
        "PING_FRAME",
        "Pong",
        "PONG_FRAME",
        "Presence",
        "PROTOCOL",
        "Publish",
        "Ref",
        "Refresh",
        "Request",
        "StreamPosition",
        "Subscribe",
        "Unsubscribe",
        "validate_event_type",
        "validate_room",
        "WireLimits",
    },
    "roomcast.transport": {
        "close_frame",
        "DEFAULT_CLOSE_TIMEOUT",
        "EagerTransport",
        "Handshake",
        "MAX_CLOSE_REASON_BYTES",
        "PingableTransport",
        "Transport",
        "TryPingTransport",
    },
    "roomcast.testing": {
        "ClientEnd",
        "ManualClock",
        "memory_transport_pair",
        "MemoryTransport",
        "TestClient",
    },
    "roomcast.options": {
        "DEFAULT_MAX_QUEUE",
        "History",
        "RateLimit",
        "RoomOptions",
        "SlowConsumerPolicy",
    },
    "roomcast.ratelimit": {
        "DEFAULT_BURST",
        "DEFAULT_MAX_KEYS",
        "DEFAULT_PERIOD",
        "DEFAULT_RATE",
        "KeyedRateLimiter",
        "RateLimiter",
    },
    "roomcast.heartbeat": {
        "DEFAULT_INTERVAL",
        "DEFAULT_JITTER",
        "DEFAULT_POLICY",
        "DEFAULT_TIMEOUT",
        "Heartbeat",
        "HeartbeatActions",
        "HeartbeatPolicy",
    },
    "roomcast.exceptions": {
        "AuthenticationError",
        "BackendError",
        "ConnectionClosed",
        "ConnectionClosedError",
        "ConnectionClosedOK",
        "HubNotRunning",
        "LocalProtocolError",
        "PermissionDenied",
        "ProtocolError",
        "RateLimited",
        "RemoteProtocolError",
        "RequestTimeout",
        "RoomcastError",
        "ServerError",
    },
    "roomcast.limits": {
        "ConnectionLimits",
        "ConnectionTracker",
        "DEFAULT_AUTH_FAILURES_PER_MINUTE",
        "DEFAULT_MAX_CONNECTIONS_PER_IP",
        "DEFAULT_MAX_CONNECTIONS_PER_USER",
        "DEFAULT_MAX_QUEUE_BYTES",
        "DEFAULT_MAX_TRACKED_IPS",
    },
    "roomcast.backends": {
        "Backend",
        "BackendStatus",
        "ChannelKind",
        "Delivery",
        "HistoryResult",
        "MemoryBackend",
        "PresenceEntry",
        "Publication",
        "Resync",
    },
    "roomcast.backends.base": {
        "Backend",
        "BackendStatus",
        "ChannelKind",
        "Delivery",
        "HistoryResult",
        "PresenceEntry",
        "Publication",
        "Resync",
    },
    "roomcast.backends.memory": {"MemoryBackend"},
    "roomcast.backends.redis": {"RedisBackend"},
    "roomcast.websockets": {
        "Handler",
        "client_script",
        "handler",
        "RedactingLogger",
        "select_subprotocol",
        "serve",
        "WebSocketsTransport",
    },
    "roomcast.starlette": {"client_script", "endpoint", "lifespan", "StarletteTransport"},
    "roomcast.aiohttp": {
        "AiohttpTransport",
        "RedactRequestErrors",
        "cleanup_ctx",
        "client_script",
        "handler",
    },
    "roomcast.client": {
        "Backoff",
        "Connection",
        "connect",
        "DEFAULT_BUFFER_SIZE",
        "DEFAULT_MAX_DELAY",
        "DEFAULT_MIN_DELAY",
        "DEFAULT_OPEN_TIMEOUT",
        "DEFAULT_REQUEST_TIMEOUT",
        "ErrorListener",
        "Event",
        "Gap",
        "HistoryPage",
        "Member",
        "PresenceChange",
        "Received",
        "Recovery",
        "State",
        "StateChange",
        "StateListener",
        "Subscription",
        "TokenProvider",
    },
}

#: Where each name ``roomcast`` re-exports is defined.
HOMES: dict[str, set[str]] = {
    "roomcast.admission": {"Admission"},
    "roomcast.auth": {
        "Action",
        "ANONYMOUS",
        "AnonymousAuthenticator",
        "Authenticator",
        "Authorizer",
        "DefaultAuthorizer",
        "NamespaceAuthorizer",
        "Principal",
        "TokenSources",
    },
    "roomcast.backends.base": {"Backend", "Publication"},
    "roomcast.backends.memory": {"MemoryBackend"},
    "roomcast.peer": {"Client"},
    "roomcast.clock": {"Clock", "SystemClock"},
    "roomcast.exceptions": EXPECTED_ALL["roomcast.exceptions"],
    "roomcast.heartbeat": {"Heartbeat", "HeartbeatPolicy"},
    "roomcast.hub": {"Hub", "HubStatistics"},
    "roomcast.limits": {"ConnectionLimits"},
    "roomcast.membership": {"ClientId", "Room"},
    "roomcast.options": {"History", "RateLimit", "RoomOptions", "SlowConsumerPolicy"},
    "roomcast.ratelimit": {"KeyedRateLimiter", "RateLimiter"},
    "roomcast.transport": {
        "EagerTransport",
        "Handshake",
        "PingableTransport",
        "Transport",
        "TryPingTransport",
    },
    "roomcast.protocol": {"CloseCode", "PROTOCOL"},
    "roomcast.wire": {"StreamPosition"},
}

#: The modules that are not public: the runtime's parts and the private helpers. Their
#: names may change between releases; what users import from them is re-exported by
#: `roomcast` (see HOMES) and pinned there. A new module is either here or public.
INTERNAL = {
    "roomcast._adapters",
    "roomcast._aiohttp_wire",
    "roomcast._asyncio",
    "roomcast._client_script",
    "roomcast._frames",
    "roomcast._jwks",
    "roomcast._names",
    "roomcast._reader",
    "roomcast._requests",
    "roomcast._writes",
    "roomcast.admission",
    "roomcast.backends._redis_codec",
    "roomcast.backends._redis_pipeline",
    "roomcast.backends._redis_presence",
    "roomcast.backends._redis_scripts",
    "roomcast.backends._redis_supervise",
    "roomcast.client._backoff",
    "roomcast.client._connection",
    "roomcast.client._events",
    "roomcast.client._requests",
    "roomcast.client._router",
    "roomcast.client._rules",
    "roomcast.client._session",
    "roomcast.client._socket",
    "roomcast.client._state",
    "roomcast.client._stream",
    "roomcast.client._subscription",
    "roomcast.client._tokens",
    "roomcast.connection",
    "roomcast.expiry",
    "roomcast.membership",
    "roomcast.peer",
    "roomcast.rooms",
    "roomcast.schedule",
    "roomcast.session",
    "roomcast.settings",
}

#: Each adapter exports its own mount functions under the same names.
ADAPTERS = {"roomcast.websockets", "roomcast.starlette", "roomcast.aiohttp"}
PUBLIC = sorted(EXPECTED_ALL)
#: (module, name) for every name of every public module's ``__all__``, dunders aside.
EXPORTS = sorted(
    (module, name) for module, names in EXPECTED_ALL.items() for name in names if name[:2] != "__"
)
REEXPORTS = sorted((home, name) for home, names in HOMES.items() for name in names)


def load(name: str) -> ModuleType:
    return importlib.import_module(name)


def exported(module: str) -> list[str]:
    names: list[str] = list(load(module).__all__)
    return names


def is_code(value: object) -> bool:
    """A class or a function: documented by its docstring."""
    if isinstance(value, types.GenericAlias):
        return False  # Callable[...]: Python 3.10's inspect.isclass() takes it for a class
    return inspect.isclass(value) or inspect.isroutine(value)


@pytest.mark.parametrize("module", PUBLIC)
def test_all_lists_exactly_the_expected_names(module: str) -> None:
    names = exported(module)
    assert len(names) == len(set(names)), f"{module}.__all__ lists a name twice"
    assert set(names) == EXPECTED_ALL[module]


@pytest.mark.parametrize("module", PUBLIC)
def test_every_exported_name_exists(module: str) -> None:
    missing = [name for name in exported(module) if not hasattr(load(module), name)]
    assert not missing, f"{module}.__all__ names what it lacks: {missing}"


def test_every_top_level_name_has_one_home() -> None:
    homed = [name for names in HOMES.values() for name in names]
    assert len(homed) == len(set(homed))
    assert set(homed) == EXPECTED_ALL["roomcast"] - {"__version__"}


@pytest.mark.parametrize(("home", "name"), REEXPORTS, ids=[f"{h}.{n}" for h, n in REEXPORTS])
def test_top_level_names_are_the_objects_of_their_home_module(home: str, name: str) -> None:
    assert name in exported(home)
    assert getattr(roomcast, name) is getattr(load(home), name)


def test_a_name_exported_by_two_modules_is_one_object() -> None:
    seen: dict[str, tuple[str, object]] = {}
    for module, name in EXPORTS:
        if module in ADAPTERS:
            continue  # each adapter has its own handler, on purpose
        value = getattr(load(module), name)
        first = seen.setdefault(name, (module, value))
        assert first[1] is value, f"{first[0]}.{name} is not {module}.{name}"


def test_version_is_a_string() -> None:
    assert isinstance(roomcast.__version__, str)
    assert roomcast.__version__


@pytest.mark.parametrize(("module", "name"), EXPORTS, ids=[f"{m}.{n}" for m, n in EXPORTS])
def test_every_public_name_is_documented(module: str, name: str) -> None:
    value = getattr(load(module), name)
    if is_code(value):
        doc = vars(value).get("__doc__") if inspect.isclass(value) else value.__doc__
        assert isinstance(doc, str), f"{module}.{name} has no docstring"
        assert doc.strip(), f"{module}.{name} has an empty docstring"
        # A dataclass without a docstring gets its signature as one.
        assert not doc.startswith(f"{value.__name__}("), f"{module}.{name} has no docstring"
    else:
        homes = [where for where, names in documented_values().items() if name in names]
        assigned = [where for where in homes if getattr(load(where), name, None) is value]
        assert assigned, f"{module}.{name} has no #: comment or docstring where it is assigned"


@functools.cache
def documented_values() -> dict[str, set[str]]:
    """Module-level names assigned with a ``#:`` comment above them or a docstring below."""
    found: dict[str, set[str]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        lines = path.read_text(encoding="utf-8").splitlines()
        body = ast.parse("\n".join(lines)).body
        for index, node in enumerate(body):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            above = node.lineno >= 2 and lines[node.lineno - 2].lstrip().startswith("#:")
            after = body[index + 1] if index + 1 < len(body) else None
            below = (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            )
            if above or below:
                names = {target.id for target in targets if isinstance(target, ast.Name)}
                found.setdefault(module, set()).update(names)
    return found


def test_values_without_a_comment_are_found() -> None:
    documented = documented_values()
    assert "MAX_DEPTH" in documented["roomcast.wire"]
    assert "_RESERVED_TYPES" in documented["roomcast._names"]
    assert "_RESERVED_PREFIXES" not in documented["roomcast._names"]


def test_roomcast_client_is_the_python_client() -> None:
    # The server-side state of a connection lives in roomcast.peer; roomcast.client
    # is the Python client library, which roomcast itself does not import.
    client = importlib.import_module("roomcast.client")
    assert callable(client.connect)
    assert client.Connection.__module__ == "roomcast.client._connection"
    assert "client" not in roomcast.__all__
    assert not hasattr(roomcast, "connect")


def test_every_module_is_public_or_internal() -> None:
    found = set()
    for path in SOURCE.rglob("*.py"):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.add(".".join(parts))
    assert not set(EXPECTED_ALL) & INTERNAL
    assert found == set(EXPECTED_ALL) | INTERNAL
