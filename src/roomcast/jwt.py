"""JWTAuthenticator: identify connections by JSON Web Tokens, verified with pyjwt."""

from __future__ import annotations

import binascii
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import jwt
from jwt.algorithms import get_default_algorithms, has_crypto, requires_cryptography

from ._jwks import JWKS_LIFESPAN as JWKS_LIFESPAN
from ._jwks import MAX_JWKS_BYTES as MAX_JWKS_BYTES
from ._jwks import MIN_RSA_BITS, KeySet, check_jwks_url, weak_rsa
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

#: RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_KEY_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}

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
            with HMAC, a leeway or cooldown that is not a finite number of at
            least 0, or a timeout that is not a positive finite number.
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
        self._key_set: KeySet | None = None
        if jwks_url is not None:
            if hmac_algorithms:
                raise ValueError(
                    "jwks_url publishes public keys: use it with asymmetric algorithms only"
                )
            self._key_set = KeySet(
                check_jwks_url(jwks_url),
                self._algorithms,
                cooldown=jwks_cooldown,
                timeout=jwks_timeout,
                clock=clock or SystemClock(),
            )
        elif hmac_algorithms:
            self._key = _hmac_key(key, hmac_algorithms)
        else:
            self._key = _public_key(key, self._algorithms)

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
            key = self._key if self._key_set is None else await self._jwks_key(header)
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
        if self._key_set is None:  # pragma: no cover - only called with a key set
            raise RuntimeError("no jwks_url configured")
        return await self._key_set.key(kid)


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
        if weak_rsa(name, prepared):
            raise ValueError(
                f"the RSA key has {prepared.key_size} bits; {name} needs at least {MIN_RSA_BITS}"
            )
    return prepared
