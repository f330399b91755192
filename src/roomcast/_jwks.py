"""A JWT issuer's key set (JWKS): fetched over HTTP(S) within a deadline, bounded, cached."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import urllib.request
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import jwt

from .clock import Clock

__all__ = [
    "JWKS_LIFESPAN",
    "MAX_JWKS_BYTES",
    "MIN_RSA_BITS",
    "KeySet",
    "check_jwks_url",
    "weak_rsa",
]

# The same logger as the authenticator: a fetch is part of verifying a login.
logger = logging.getLogger("roomcast.jwt")


#: Age after which a fetched key set is no longer trusted without a refetch, so
#: that a key the issuer withdrew stops verifying tokens (at least the cooldown).
JWKS_LIFESPAN: Final = 300.0

#: Largest key set accepted, in bytes; a key set of a few keys is a few kilobytes.
MAX_JWKS_BYTES: Final = 1024 * 1024

_JWKS_HEADERS: Final = {"User-Agent": "roomcast", "Accept": "application/json"}


class KeySet:
    """The signing keys at one JWKS URL, fetched when needed and cached.

    A key in the current set is returned at once. An unknown ``kid``, or a set
    older than its lifespan, triggers one fetch (at most one per ``cooldown``,
    however many tokens name unknown kids); logins arriving meanwhile wait for
    that fetch instead of starting their own.
    """

    def __init__(
        self,
        url: str,
        algorithms: Sequence[str],
        *,
        cooldown: float,
        timeout: float,
        clock: Clock,
    ) -> None:
        self._url = url
        self._algorithms = tuple(algorithms)
        self._cooldown = cooldown
        self._timeout = timeout
        self._lifespan = max(JWKS_LIFESPAN, cooldown)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = anyio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``, fetching the set if it is unknown or stale.

        Raises:
            jwt.PyJWKClientError: no usable key is named ``kid``, the set was
                fetched too recently to fetch again, or the fetch failed
                (`jwt.PyJWKClientConnectionError`).
        """
        # A key in the current set is used at once: the lock below is only for
        # logins that need a fetch, so they never hold up those that do not.
        key = self._cached(kid)
        if key is not None:
            return key
        # One fetch at a time: connections arriving together wait for it (at
        # most the timeout) and then read its result instead of fetching again.
        async with self._lock:
            key = self._cached(kid)
            if key is not None:
                return key
            now = self._clock.now()
            attempted = self._attempted_at
            if attempted is not None and now - attempted < self._cooldown:
                # Unknown kids are free for anyone to invent: without this,
                # each would cost a request to the issuer.
                raise jwt.PyJWKClientError("unknown kid and the key set was fetched recently")
            self._attempted_at = now
            await self._fetch(now)
        key = self._cached(kid)
        if key is None:
            raise jwt.PyJWKClientError("no signing key in the key set matches the kid")
        return key

    def _cached(self, kid: str) -> jwt.PyJWK | None:
        fetched = self._fetched_at
        if fetched is None or self._clock.now() - fetched >= self._lifespan:
            return None
        return self._keys.get(kid)

    async def _fetch(self, now: float) -> None:
        fetch = _KeySetFetch(self._url, self._timeout)
        try:
            # One deadline for the whole fetch (connect, headers and body): a
            # server that answers a byte at a time must not stall logins. The
            # blocking socket work runs in a worker thread, never on the loop.
            with anyio.fail_after(self._timeout):
                body = await anyio.to_thread.run_sync(fetch.run, abandon_on_cancel=True)
            keys = _signing_keys(body)
        except (OSError, ValueError, RecursionError, http.client.HTTPException) as exc:
            # TimeoutError is an OSError; so are urllib's errors and TLS errors.
            logger.debug("key set fetch failed: %s", type(exc).__name__)
            raise jwt.PyJWKClientConnectionError("the key set could not be fetched") from exc
        except jwt.PyJWTError as exc:
            logger.debug("key set fetch failed: %s", type(exc).__name__)
            raise
        finally:
            # Whatever ended the wait, the worker thread stops reading now.
            fetch.abort()
        # pyjwt verifies with the algorithm a JWK is bound to (older releases
        # without comparing it to the token's ``alg``), so a key of another kind,
        # such as a shared secret published by mistake, must not be reachable.
        self._keys = {
            key.key_id: key
            for key in keys
            if key.key_id
            and key.algorithm_name in self._algorithms
            and not weak_rsa(key.algorithm_name, key.key)
        }
        self._fetched_at = now
        logger.debug("key set fetched: %d usable keys", len(self._keys))


class _KeySetFetch:
    """One GET of a key set, run in a worker thread, that the event loop can abort.

    urllib does the request (so proxies configured in the environment apply,
    as they did through pyjwt's client); the socket of each connection it
    opens is kept, so that ``abort`` can shut it down and end a read that a
    dripping server would otherwise keep alive. Every socket operation also
    has the whole deadline as its timeout.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._aborted = False

    def run(self) -> bytes:
        """Fetch the body (in a worker thread).

        Raises:
            OSError: the connection failed, timed out or was aborted, or the
                server answered with a status other than 2xx (redirects
                included, as with pyjwt's own client).
            ValueError: the body is larger than ``MAX_JWKS_BYTES``.
            http.client.HTTPException: the server's answer is not valid HTTP.
        """
        handlers = [_NoRedirects(), _KeptHTTPHandler(self), _KeptHTTPSHandler(self)]
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(self._url, headers=_JWKS_HEADERS)
        with opener.open(request, timeout=self._timeout) as response:
            body: bytes = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
        return body

    def keep(self, sock: socket.socket) -> None:
        """Remember the socket of a connection urllib opened; close it if aborted."""
        with self._lock:
            aborted = self._aborted
            if not aborted:
                self._sockets.append(sock)
        if aborted:
            _shut_down(sock)
            raise OSError("key set fetch aborted")

    def abort(self) -> None:
        """Make a blocked ``run`` fail now; idempotent."""
        with self._lock:
            self._aborted = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    # The plain socket's shutdown, also under TLS: it wakes a read blocked in
    # the worker thread without touching the TLS object. urllib may already
    # have closed the socket object; its file descriptor lives on until the
    # response is done with it, so this still reaches the connection.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _KeptConnections:
    """Hands urllib a connection class whose sockets the fetch keeps."""

    def __init__(self, fetch: _KeySetFetch) -> None:
        self._fetch = fetch

    def _kept(self, http_class: Any) -> Any:
        fetch = self._fetch

        class KeptConnection(http_class):  # type: ignore[misc]
            def connect(self) -> None:
                super().connect()
                fetch.keep(self.sock)

        return KeptConnection


class _KeptHTTPHandler(_KeptConnections, urllib.request.HTTPHandler):
    def __init__(self, fetch: _KeySetFetch) -> None:
        _KeptConnections.__init__(self, fetch)
        urllib.request.HTTPHandler.__init__(self)

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._kept(http_class), req, **kwargs)


class _KeptHTTPSHandler(_KeptConnections, urllib.request.HTTPSHandler):
    def __init__(self, fetch: _KeySetFetch) -> None:
        _KeptConnections.__init__(self, fetch)
        urllib.request.HTTPSHandler.__init__(self)

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._kept(http_class), req, **kwargs)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error, as with pyjwt's own client."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _signing_keys(body: bytes) -> list[jwt.PyJWK]:
    """The signing keys of a key set document (RFC 7517 section 5)."""
    document = json.loads(body)
    if not isinstance(document, dict):
        raise jwt.PyJWKClientError("the key set is not a JSON object")
    keys = [
        key
        for key in jwt.PyJWKSet.from_dict(document).keys
        if key.public_key_use in ("sig", None) and key.key_id
    ]
    if not keys:
        raise jwt.PyJWKClientError("the key set has no signing keys")
    return keys


def check_jwks_url(url: str) -> str:
    """Return ``url`` if it is an ``http`` or ``https`` URL.

    Raises:
        ValueError: it has another scheme.
    """
    # Only HTTP(S): urllib would also open file: and ftp: URLs.
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ValueError("invalid jwks_url: only http and https URLs are fetched")
    return url


#: RFC 7518 §3.3 and §3.5: RSA keys of at least 2048 bits.
MIN_RSA_BITS: Final = 2048


def weak_rsa(algorithm: str, key: Any) -> bool:
    """Whether ``key`` is an RSA key too short for ``algorithm`` (RFC 7518 §3.3, §3.5)."""
    return algorithm[:2] in ("RS", "PS") and getattr(key, "key_size", MIN_RSA_BITS) < MIN_RSA_BITS
