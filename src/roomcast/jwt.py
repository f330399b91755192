"""JWTAuthenticator: identify connections by JSON Web Tokens, verified with pyjwt."""

from __future__ import annotations

import binascii
import contextlib
import http.client
import json
import logging
import socket
import threading
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import jwt
from jwt.algorithms import get_default_algorithms, has_crypto, requires_cryptography

from .auth import Principal
from .clock import Clock, SystemClock
from .config import (
    DEFAULT_JWKS_COOLDOWN,
    DEFAULT_JWKS_TIMEOUT,
    check_non_negative,
    check_positive,
)
from .exceptions import AuthenticationError
from .protocol import MAX_TOKEN_LENGTH as MAX_TOKEN_LENGTH
from .protocol import CloseCode
from .transport import Handshake

if TYPE_CHECKING:
    from typing import TypeAlias

    from jwt.algorithms import AllowedPrivateKeys, AllowedPublicKeys

    #: What ``key`` accepts: an HMAC secret, a PEM or SSH key, or a key object.
    VerificationKey: TypeAlias = str | bytes | AllowedPublicKeys | AllowedPrivateKeys

__all__ = ["JWTAuthenticator"]

logger = logging.getLogger("roomcast.jwt")


#: Age after which a fetched key set is no longer trusted without a refetch, so
#: that a key the issuer withdrew stops verifying tokens (at least the cooldown).
JWKS_LIFESPAN: Final = 300.0

#: Largest key set accepted, in bytes; a key set of a few keys is a few kilobytes.
MAX_JWKS_BYTES: Final = 1024 * 1024

_JWKS_HEADERS: Final = {"User-Agent": "roomcast", "Accept": "application/json"}

#: RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_KEY_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}

#: RFC 7518 §3.3 and §3.5: RSA keys of at least 2048 bits.
_MIN_RSA_BITS: Final = 2048

# Decoding attacker-controlled bytes can fail in the standard library as well
# as in pyjwt (bad base64, bad UTF-8, absurd numbers, deep JSON nesting).
_INVALID_TOKEN_ERRORS: Final = (
    jwt.PyJWTError,
    ValueError,
    TypeError,
    UnicodeError,
    binascii.Error,
    OverflowError,
    RecursionError,
)


class JWTAuthenticator:
    """An [`Authenticator`][roomcast.Authenticator] for JSON Web Tokens (RFC 7519).

    Verifies the signature with a fixed key or with the issuer's JWKS, checks
    ``exp``, ``nbf``, ``iat``, ``aud`` and ``iss``, and returns a
    [`Principal`][roomcast.Principal] whose ``user_id`` is the ``user_claim`` claim,
    whose ``claims`` are the token's claims and whose ``expires_at`` is ``exp``
    plus ``leeway``: the moment the token stops being accepted, which is when a
    live connection that presented it is closed with 4002.

    Args:
        key: the verification key: for HMAC (``HS*``) the shared secret, at least
            as many bytes as the hash output (32 for ``HS256``); for asymmetric
            algorithms a PEM or SSH public key or a ``cryptography`` key object
            (RSA of at least 2048 bits; a private key is reduced to its public
            half). Exactly one of ``key`` and ``jwks_url`` is required.
        algorithms: the algorithms tokens may use. Never taken from the token:
            it must name HMAC algorithms only or asymmetric algorithms only.
        audience: the accepted ``aud`` value(s). When ``None``, a token that
            carries an ``aud`` claim is refused.
        issuer: the accepted ``iss`` value(s); ``None`` skips the check.
        leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``,
            at the handshake and on the live connection alike.
        require: claims every token must carry.
        user_claim: the claim that names the user; it must be a non-empty string
            of at most 256 characters, without lone surrogates.
        jwks_url: the ``http(s)`` URL of the issuer's JSON Web Key Set; tokens must
            then name their key with a ``kid`` header. The set is refetched when a
            token names an unknown ``kid`` and once it is `JWKS_LIFESPAN`
            seconds old (or ``jwks_cooldown``, if longer).
        jwks_cooldown: minimum seconds between two fetches of the key set, however
            many tokens name an unknown ``kid``; a failed fetch counts too.
        jwks_timeout: seconds a fetch of the key set may take in all:
            connecting, the response headers and the body together. Logins
            waiting for a fetch wait at most this long; logins whose ``kid`` is
            in the current key set never wait for a fetch.
        clock: monotonic time source for the JWKS cooldown and cache (tests pass
            [`ManualClock`][roomcast.testing.ManualClock]). Token times use wall-clock time.

    Raises:
        ValueError: the configuration is unsafe or inconsistent: no algorithms,
            ``none``, an unknown algorithm, HMAC mixed with asymmetric
            algorithms, a short HMAC secret, a key that does not suit the
            algorithms, both or neither of ``key`` and ``jwks_url``, ``jwks_url``
            with HMAC, or a negative leeway, cooldown or timeout.
        TypeError: ``algorithms``, ``require``, ``audience`` or ``issuer`` is a
            single string where a collection is expected, or ``key`` has the
            wrong type for the algorithms.
        ImportError: an asymmetric algorithm is configured but the
            ``cryptography`` package (``pip install 'pyjwt[crypto]'``) is missing.
    """

    def __init__(
        self,
        key: VerificationKey | None = None,
        *,
        algorithms: Sequence[str],
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 0,
        require: Sequence[str] = ("exp", "sub"),
        user_claim: str = "sub",
        jwks_url: str | None = None,
        jwks_cooldown: float = DEFAULT_JWKS_COOLDOWN,
        jwks_timeout: float = DEFAULT_JWKS_TIMEOUT,
        clock: Clock | None = None,
    ) -> None:
        self._algorithms = _check_algorithms(algorithms)
        hmac_algorithms = [name for name in self._algorithms if name in _HMAC_MIN_KEY_BYTES]
        if (key is None) == (jwks_url is None):
            raise ValueError("pass exactly one of key and jwks_url")
        leeway = check_non_negative("leeway", leeway)
        jwks_cooldown = check_non_negative("jwks_cooldown", jwks_cooldown)
        jwks_timeout = check_positive("jwks_timeout", jwks_timeout)
        if not isinstance(user_claim, str) or not user_claim:
            raise ValueError("user_claim must be a non-empty claim name")
        self._require = _names("require", require)
        self._audience = _accepted_values("audience", audience)
        self._issuer = _accepted_values("issuer", issuer)
        self._leeway = float(leeway)
        self._user_claim = user_claim

        self._key: Any = None
        self._jwks_url: str | None = None
        if jwks_url is not None:
            if hmac_algorithms:
                raise ValueError(
                    "jwks_url publishes public keys: use it with asymmetric algorithms only"
                )
            self._jwks_url = _check_jwks_url(jwks_url)
        elif hmac_algorithms:
            self._key = _hmac_key(key, hmac_algorithms)
        else:
            self._key = _public_key(key, self._algorithms)

        self._clock: Clock = clock or SystemClock()
        self._jwks_cooldown = float(jwks_cooldown)
        self._jwks_timeout = float(jwks_timeout)
        self._jwks_lifespan = max(JWKS_LIFESPAN, self._jwks_cooldown)
        self._jwks_keys: dict[str, jwt.PyJWK] = {}
        self._jwks_fetched_at: float | None = None
        self._jwks_attempted_at: float | None = None
        self._jwks_lock = anyio.Lock()

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        """Verify ``token`` and return who it names.

        Args:
            handshake: the opening handshake's facts (unused: the token says it all).
            token: the compact JWT, or ``None`` when the client sent none yet.

        Returns:
            The principal: ``user_id`` from ``user_claim``, every claim, and
            ``expires_at`` = ``exp`` + ``leeway`` when the token has an ``exp``.

        Raises:
            AuthenticationError: with close code 4001 when the token is missing
                or invalid (bad signature, algorithm, claims, ``kid`` or format),
                4002 when it has expired beyond the leeway.
        """
        if token is None:
            raise AuthenticationError("missing token")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationError("invalid token")
        try:
            header = jwt.get_unverified_header(token)
            # RFC 7515 §4.1.11: a critical extension we do not implement (and we
            # implement none, not even the detached payload of RFC 7797) means
            # the token must be refused.
            if "crit" in header:
                raise jwt.InvalidTokenError("unsupported critical header parameters")
            key = self._key if self._jwks_url is None else await self._jwks_key(header)
            payload = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": list(self._require),
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    # Weak keys from the key set fail the token instead of warning.
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            logger.debug("token refused: %s", type(exc).__name__)
            raise AuthenticationError(
                "token expired", close_code=CloseCode.TOKEN_EXPIRED, status=401
            ) from exc
        except _INVALID_TOKEN_ERRORS as exc:
            logger.debug("token refused: %s", type(exc).__name__)
            raise AuthenticationError("invalid token") from exc
        return self._principal(payload)

    def _principal(self, payload: Mapping[str, Any]) -> Principal:
        # The token verified, but its claims are still input: a user id or an
        # expiry the hub cannot carry is refused like a bad signature.
        try:
            return Principal.from_claims(payload, user_claim=self._user_claim, leeway=self._leeway)
        except AuthenticationError as exc:
            logger.debug("token refused: %s", type(exc).__name__)
            raise

    async def _jwks_key(self, header: Mapping[str, Any]) -> jwt.PyJWK:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise jwt.InvalidTokenError("a kid header is required with a key set")
        # A key in the current set is used at once: the lock below is only for
        # logins that need a fetch, so they never hold up those that do not.
        key = self._cached_key(kid)
        if key is not None:
            return key
        # One fetch at a time: connections arriving together wait for it (at
        # most jwks_timeout) and then read its result instead of fetching again.
        async with self._jwks_lock:
            key = self._cached_key(kid)
            if key is not None:
                return key
            now = self._clock.now()
            attempted = self._jwks_attempted_at
            if attempted is not None and now - attempted < self._jwks_cooldown:
                # Unknown kids are free for anyone to invent: without this,
                # each would cost a request to the issuer.
                raise jwt.PyJWKClientError("unknown kid and the key set was fetched recently")
            self._jwks_attempted_at = now
            await self._fetch_jwks(now)
        key = self._cached_key(kid)
        if key is None:
            raise jwt.PyJWKClientError("no signing key in the key set matches the kid")
        return key

    def _cached_key(self, kid: str) -> jwt.PyJWK | None:
        fetched = self._jwks_fetched_at
        if fetched is None or self._clock.now() - fetched >= self._jwks_lifespan:
            return None
        return self._jwks_keys.get(kid)

    async def _fetch_jwks(self, now: float) -> None:
        url = self._jwks_url
        if url is None:  # pragma: no cover - only called with a key set
            raise RuntimeError("no jwks_url configured")
        fetch = _KeySetFetch(url, self._jwks_timeout)
        try:
            # One deadline for the whole fetch (connect, headers and body): a
            # server that answers a byte at a time must not stall logins. The
            # blocking socket work runs in a worker thread, never on the loop.
            with anyio.fail_after(self._jwks_timeout):
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
        self._jwks_keys = {
            key.key_id: key
            for key in keys
            if key.key_id
            and key.algorithm_name in self._algorithms
            and not _weak_rsa(key.algorithm_name, key.key)
        }
        self._jwks_fetched_at = now
        logger.debug("key set fetched: %d usable keys", len(self._jwks_keys))


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


def _check_jwks_url(url: str) -> str:
    # Only HTTP(S): urllib would also open file: and ftp: URLs.
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ValueError("invalid jwks_url: only http and https URLs are fetched")
    return url


def _check_algorithms(algorithms: Sequence[str]) -> tuple[str, ...]:
    names = _names("algorithms", algorithms)
    if not names:
        raise ValueError("algorithms must name at least one algorithm, e.g. ['HS256']")
    known = set(get_default_algorithms()) | set(requires_cryptography)
    for name in names:
        if name.lower() == "none":
            # RFC 8725 §3.2: an unsigned token proves nothing.
            raise ValueError("the 'none' algorithm is never accepted")
        if name not in known:
            raise ValueError(
                f"unknown algorithm {name!r}; known: {', '.join(sorted(known - {'none'}))}"
            )
        if name in requires_cryptography and not has_crypto:
            raise ImportError(f"{name} needs the cryptography package: pip install 'pyjwt[crypto]'")
    hmac = [name for name in names if name in _HMAC_MIN_KEY_BYTES]
    if hmac and len(hmac) != len(names):
        # RFC 8725 §3.1: with both kinds accepted, a token signed with HMAC
        # using the public key as the secret would verify.
        asymmetric = [name for name in names if name not in _HMAC_MIN_KEY_BYTES]
        raise ValueError(
            f"algorithms mix HMAC ({', '.join(hmac)}) and asymmetric "
            f"({', '.join(asymmetric)}) algorithms; configure one kind per authenticator"
        )
    return names


def _names(what: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a collection of names, not a single string")
    names = tuple(values)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} must contain strings, not {type(name).__name__}")
    return names


def _accepted_values(what: str, values: str | Iterable[str] | None) -> str | tuple[str, ...] | None:
    if values is None or isinstance(values, str):
        return values
    accepted = _names(what, values)
    if not accepted:
        raise ValueError(f"{what} must not be empty; pass None to skip the check")
    return accepted


def _hmac_key(key: object, algorithms: Sequence[str]) -> bytes:
    if isinstance(key, str):
        secret = key.encode("utf-8")
    elif isinstance(key, bytes):
        secret = key
    else:
        raise TypeError(f"an HMAC key must be str or bytes, not {type(key).__name__}")
    minimum = max(_HMAC_MIN_KEY_BYTES[name] for name in algorithms)
    if len(secret) < minimum:
        raise ValueError(
            f"the HMAC secret is {len(secret)} bytes; {', '.join(algorithms)} "
            f"need at least {minimum} random bytes"
        )
    try:
        # pyjwt refuses PEM, SSH and DER keys as HMAC secrets; say so now.
        jwt.get_algorithm_by_name(algorithms[0]).prepare_key(secret)
    except jwt.PyJWTError as exc:
        raise ValueError(f"unusable HMAC secret: {exc}") from exc
    return secret


def _public_key(key: object, algorithms: Sequence[str]) -> Any:
    prepared: Any = None
    for name in algorithms:
        algorithm = jwt.get_algorithm_by_name(name)
        try:
            prepared = algorithm.prepare_key(key)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ValueError(
                f"key is not a public key for {name}: pass a PEM or SSH public key "
                "or a key object, not a shared secret"
            ) from exc
        # A verifier needs only the public half, and pyjwt's RSA verification
        # calls a method private key objects lack.
        if hasattr(prepared, "private_bytes"):
            prepared = prepared.public_key()
        if _weak_rsa(name, prepared):
            raise ValueError(
                f"the RSA key has {prepared.key_size} bits; {name} needs at least {_MIN_RSA_BITS}"
            )
    return prepared


def _weak_rsa(algorithm: str, key: Any) -> bool:
    return algorithm[:2] in ("RS", "PS") and getattr(key, "key_size", _MIN_RSA_BITS) < _MIN_RSA_BITS
