"""JWTAuthenticator: what it accepts, every attack it refuses, and the JWKS cooldown."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import roomcast.jwt
from roomcast import (
    AuthenticationError,
    ConnectionClosed,
    Handshake,
    HeartbeatPolicy,
    Hub,
    Principal,
)
from roomcast.jwt import MAX_TOKEN_LENGTH, JWTAuthenticator
from roomcast.testing import ManualClock, TestClient

SECRET = b"roomcast-tests-hmac-secret-32-by"  # exactly 32 bytes
HANDSHAKE = Handshake()
INVALID_UTF8_HEADER = base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".e30."


# ----------------------------------------------------------------------------- helpers


@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One RSA key per name, generated once per test session; ``weak`` has 1024 bits."""
    return rsa.generate_private_key(
        public_exponent=65537, key_size=1024 if name == "weak" else 2048
    )


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def hmac_token(header: Any, payload: Any, secret: bytes = SECRET, digest: Any = None) -> str:
    """A token signed by hand, so that headers and claims pyjwt would refuse to emit fit."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = hmac.new(secret, signing_input.encode("ascii"), digest or hashlib.sha256)
    return f"{signing_input}.{b64url(signature.digest())}"


def claims(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 600}
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def hs256(payload: dict[str, Any] | None = None, **headers: Any) -> str:
    return jwt.encode(claims() if payload is None else payload, SECRET, "HS256", headers or None)


def hs_authenticator(**options: Any) -> JWTAuthenticator:
    return JWTAuthenticator(SECRET, algorithms=["HS256"], **options)


def rs_authenticator(**options: Any) -> JWTAuthenticator:
    return JWTAuthenticator(public_pem(rsa_key("main")), algorithms=["RS256"], **options)


def refuse(authenticator: JWTAuthenticator, token: str | None) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        anyio.run(authenticator.authenticate, HANDSHAKE, token)
    return caught.value


def accept(authenticator: JWTAuthenticator, token: str) -> Principal:
    return anyio.run(authenticator.authenticate, HANDSHAKE, token)


def test_exports() -> None:
    assert roomcast.jwt.__all__ == ["JWTAuthenticator"]


# ----------------------------------------------------------------------------- configuration


def test_algorithms_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="at least one"):
        JWTAuthenticator(SECRET, algorithms=[])


def test_algorithms_must_be_a_collection_not_a_string() -> None:
    with pytest.raises(TypeError, match="single string"):
        JWTAuthenticator(SECRET, algorithms="HS256")


@pytest.mark.parametrize("name", ["none", "None", "NONE"])
def test_none_algorithm_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="'none'"):
        JWTAuthenticator(SECRET, algorithms=["HS256", name])


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'HS1024'"):
        JWTAuthenticator(SECRET, algorithms=["HS1024"])


def test_hmac_and_asymmetric_algorithms_do_not_mix() -> None:
    with pytest.raises(ValueError, match=r"mix HMAC \(HS256\) and asymmetric \(RS256\)"):
        JWTAuthenticator(SECRET, algorithms=["HS256", "RS256"])


@pytest.mark.parametrize("secret", [SECRET[:31], SECRET[:31].decode(), b"", "short"])
def test_hmac_secret_shorter_than_32_bytes_is_refused(secret: str | bytes) -> None:
    with pytest.raises(ValueError, match="need at least 32"):
        JWTAuthenticator(secret, algorithms=["HS256"])


def test_hmac_secret_length_is_counted_in_utf8_bytes() -> None:
    JWTAuthenticator("é" * 16, algorithms=["HS256"])  # 16 characters, 32 bytes


def test_hmac_secret_must_match_the_longest_hash() -> None:
    with pytest.raises(ValueError, match="need at least 64"):
        JWTAuthenticator(SECRET, algorithms=["HS256", "HS512"])


def test_public_key_pem_is_refused_as_hmac_secret() -> None:
    with pytest.raises(ValueError, match="unusable HMAC secret"):
        JWTAuthenticator(public_pem(rsa_key("main")), algorithms=["HS256"])


def test_key_object_is_refused_as_hmac_secret() -> None:
    with pytest.raises(TypeError, match="str or bytes"):
        JWTAuthenticator(rsa_key("main").public_key(), algorithms=["HS256"])


def test_shared_secret_is_refused_for_asymmetric_algorithms() -> None:
    with pytest.raises(ValueError, match="not a public key for RS256"):
        JWTAuthenticator(SECRET.decode(), algorithms=["RS256"])


def test_rsa_key_below_2048_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="1024 bits; RS256 needs at least 2048"):
        JWTAuthenticator(public_pem(rsa_key("weak")), algorithms=["RS256"])


def test_one_key_must_suit_every_algorithm() -> None:
    with pytest.raises(ValueError, match="not a public key for ES256"):
        JWTAuthenticator(public_pem(rsa_key("main")), algorithms=["RS256", "ES256"])


def test_key_and_jwks_url_are_exclusive() -> None:
    with pytest.raises(ValueError, match="exactly one of key and jwks_url"):
        JWTAuthenticator(
            public_pem(rsa_key("main")),
            algorithms=["RS256"],
            jwks_url="https://issuer.example/jwks.json",
        )


def test_key_or_jwks_url_is_required() -> None:
    with pytest.raises(ValueError, match="exactly one of key and jwks_url"):
        JWTAuthenticator(algorithms=["RS256"])


def test_jwks_url_is_for_asymmetric_algorithms_only() -> None:
    with pytest.raises(ValueError, match="asymmetric algorithms only"):
        JWTAuthenticator(algorithms=["HS256"], jwks_url="https://issuer.example/jwks.json")


def test_jwks_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="invalid jwks_url"):
        JWTAuthenticator(algorithms=["RS256"], jwks_url="file:///etc/passwd")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("leeway", -1.0),
        ("leeway", float("inf")),
        ("jwks_cooldown", -1.0),
        ("jwks_timeout", 0.0),
        ("user_claim", ""),
        ("leeway", "30"),
        ("jwks_cooldown", None),
        ("jwks_timeout", float("nan")),
    ],
)
def test_nonsensical_options_are_refused(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        hs_authenticator(**{option: value})


def test_require_must_be_a_collection_not_a_string() -> None:
    with pytest.raises(TypeError, match="require"):
        hs_authenticator(require="exp")


def test_empty_audience_collection_is_refused() -> None:
    with pytest.raises(ValueError, match="audience must not be empty"):
        hs_authenticator(audience=[])


# ----------------------------------------------------------------------------- accepted tokens


def test_valid_token_gives_user_claims_and_expiry() -> None:
    expires = int(time.time()) + 600
    principal = accept(hs_authenticator(), hs256(claims(exp=expires, role="admin")))
    assert principal.user_id == "alice"
    assert principal.claims == {"sub": "alice", "exp": expires, "role": "admin"}
    assert principal.expires_at == float(expires)


def test_user_id_comes_from_the_configured_claim() -> None:
    authenticator = hs_authenticator(user_claim="uid", require=["exp", "uid"])
    principal = accept(authenticator, hs256(claims(sub=None, uid="u-42")))
    assert principal.user_id == "u-42"


def test_token_without_exp_has_no_expiry_when_exp_is_not_required() -> None:
    principal = accept(hs_authenticator(require=["sub"]), hs256(claims(exp=None)))
    assert principal.expires_at is None


def test_rs256_token_verifies_with_the_public_key_pem() -> None:
    token = jwt.encode(claims(), rsa_key("main"), "RS256")
    assert accept(rs_authenticator(), token).user_id == "alice"


def test_private_key_object_is_reduced_to_its_public_key() -> None:
    authenticator = JWTAuthenticator(rsa_key("main"), algorithms=["RS256"])
    token = jwt.encode(claims(), rsa_key("main"), "RS256")
    assert accept(authenticator, token).user_id == "alice"


def test_matching_audience_and_issuer_are_accepted() -> None:
    authenticator = hs_authenticator(audience=["web", "mobile"], issuer="https://id.example")
    token = hs256(claims(aud="mobile", iss="https://id.example"))
    assert accept(authenticator, token).user_id == "alice"


def test_expired_token_within_leeway_is_accepted() -> None:
    token = hs256(claims(exp=int(time.time()) - 10))
    assert accept(hs_authenticator(leeway=60), token).user_id == "alice"


def test_expiry_includes_the_leeway() -> None:
    # The moment the token stops being accepted, which is when the hub closes
    # a live connection: one rule at the handshake and afterwards.
    expires = int(time.time()) + 600
    principal = accept(hs_authenticator(leeway=30), hs256(claims(exp=expires)))
    assert principal.expires_at == expires + 30
    assert principal.claims["exp"] == expires


# ----------------------------------------------------------------------------- refused tokens


def test_missing_token_asks_for_credentials() -> None:
    error = refuse(hs_authenticator(), None)
    assert str(error) == "missing token"
    assert (error.close_code, error.status) == (4001, 401)


def test_expired_token_closes_with_4002() -> None:
    error = refuse(hs_authenticator(leeway=5), hs256(claims(exp=int(time.time()) - 60)))
    assert str(error) == "token expired"
    assert (error.close_code, error.status) == (4002, 401)
    assert isinstance(error.__cause__, jwt.ExpiredSignatureError)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_unsigned_token_is_refused(alg: str) -> None:
    token = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims())}."
    error = refuse(hs_authenticator(), token)
    assert error.close_code == 4001


def test_hmac_token_signed_with_the_rsa_public_key_is_refused() -> None:
    # The classic confusion: a verifier that lets the token pick HS256 would
    # use the (public) PEM as the HMAC secret.
    pem = public_pem(rsa_key("main"))
    token = hmac_token({"alg": "HS256", "typ": "JWT"}, claims(), secret=pem)
    error = refuse(rs_authenticator(), token)
    assert error.close_code == 4001
    assert isinstance(error.__cause__, jwt.InvalidAlgorithmError)


def test_algorithm_outside_the_list_is_refused() -> None:
    token = jwt.encode(claims(), SECRET * 2, "HS512")
    error = refuse(hs_authenticator(), token)
    assert isinstance(error.__cause__, jwt.InvalidAlgorithmError)


def test_rs256_token_is_refused_by_an_hmac_authenticator() -> None:
    token = jwt.encode(claims(), rsa_key("main"), "RS256")
    assert refuse(hs_authenticator(), token).close_code == 4001


def test_token_signed_with_another_secret_is_refused() -> None:
    token = jwt.encode(claims(), b"another-secret-of-32-bytes-or-so", "HS256")
    assert isinstance(refuse(hs_authenticator(), token).__cause__, jwt.InvalidSignatureError)


def test_token_signed_with_another_rsa_key_is_refused() -> None:
    token = jwt.encode(claims(), rsa_key("other"), "RS256")
    assert refuse(rs_authenticator(), token).close_code == 4001


def test_tampered_payload_is_refused() -> None:
    header, _, signature = hs256().split(".")
    forged = f"{header}.{segment(claims(sub='admin'))}.{signature}"
    assert isinstance(refuse(hs_authenticator(), forged).__cause__, jwt.InvalidSignatureError)


def test_expired_beyond_leeway_is_refused_even_with_leeway() -> None:
    token = hs256(claims(exp=int(time.time()) - 120))
    assert refuse(hs_authenticator(leeway=60), token).close_code == 4002


def test_token_not_yet_valid_is_refused() -> None:
    token = hs256(claims(nbf=int(time.time()) + 600))
    error = refuse(hs_authenticator(), token)
    assert error.close_code == 4001
    assert isinstance(error.__cause__, jwt.ImmatureSignatureError)


def test_wrong_audience_is_refused() -> None:
    token = hs256(claims(aud="other-service"))
    assert refuse(hs_authenticator(audience="web"), token).close_code == 4001


def test_missing_audience_is_refused_when_one_is_configured() -> None:
    assert refuse(hs_authenticator(audience="web"), hs256()).close_code == 4001


def test_audience_is_refused_when_none_is_configured() -> None:
    assert refuse(hs_authenticator(), hs256(claims(aud="web"))).close_code == 4001


def test_wrong_issuer_is_refused() -> None:
    token = hs256(claims(iss="https://evil.example"))
    assert refuse(hs_authenticator(issuer="https://id.example"), token).close_code == 4001


def test_missing_issuer_is_refused_when_one_is_configured() -> None:
    assert refuse(hs_authenticator(issuer="https://id.example"), hs256()).close_code == 4001


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_missing_required_claim_is_refused(claim: str) -> None:
    error = refuse(hs_authenticator(), hs256(claims(**{claim: None})))
    assert isinstance(error.__cause__, jwt.MissingRequiredClaimError)


@pytest.mark.parametrize("sub", [42, ["alice"], {"id": "alice"}, True, ""])
def test_user_claim_must_be_a_non_empty_string(sub: Any) -> None:
    token = hmac_token({"alg": "HS256", "typ": "JWT"}, claims(sub=sub))
    assert refuse(hs_authenticator(), token).close_code == 4001


def test_custom_user_claim_must_be_a_string() -> None:
    authenticator = hs_authenticator(user_claim="uid", require=["exp"])
    assert refuse(authenticator, hs256(claims(uid=42))).close_code == 4001


@pytest.mark.parametrize("exp", ["9999999999", 10**400, 1e308 * 10])
def test_exp_must_be_a_finite_number(exp: Any) -> None:
    token = hmac_token({"alg": "HS256", "typ": "JWT"}, claims(exp=exp))
    assert refuse(hs_authenticator(), token).close_code == 4001


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "crit": ["exp"], "exp": 1},
        {"alg": "HS256", "crit": ["urn:example:unknown"]},
        {"alg": "HS256", "crit": []},
        {"alg": "HS256", "crit": "b64"},
        {"alg": "HS256", "crit": ["b64"], "b64": True},
    ],
)
def test_critical_header_extensions_are_refused(header: dict[str, Any]) -> None:
    assert refuse(hs_authenticator(), hmac_token(header, claims())).close_code == 4001


def test_detached_payload_is_refused() -> None:
    header = {"alg": "HS256", "crit": ["b64"], "b64": False}
    signing_input = f"{segment(header)}.{json.dumps(claims())}"
    signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    token = f"{segment(header)}..{b64url(signature)}"
    assert refuse(hs_authenticator(), token).close_code == 4001


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "...",
        "a.b.c",
        "a.b",
        "not a token",
        "Bearer " + "e30.e30.",
        "é.é.é",
        "\x00.\x00.\x00",
        "ey" * 40,
        f"{b64url(os.urandom(24))}.{b64url(os.urandom(48))}.{b64url(os.urandom(32))}",
        INVALID_UTF8_HEADER,
        f"{segment([1, 2])}.{segment({})}.",
        f"{segment('HS256')}.{segment({})}.",
        f"{segment({'alg': 'HS256', 'kid': 7})}.{segment(claims())}.",
        f"{segment({'alg': ['HS256']})}.{segment(claims())}.",
        f"{segment({'alg': 'HS256'})}.{b64url(b'[' * 3000)}.",
        f"{segment({'alg': 'HS256'})}.{segment([claims()])}.",
        hs256() + ".extra",
    ],
)
def test_garbage_is_refused(token: str) -> None:
    assert refuse(hs_authenticator(), token).close_code == 4001


def test_token_over_the_length_limit_is_refused_before_decoding() -> None:
    valid_but_long = hs256(claims(padding="x" * MAX_TOKEN_LENGTH))
    error = refuse(hs_authenticator(), valid_but_long)
    assert error.__cause__ is None  # refused before pyjwt saw it


def test_one_megabyte_token_is_refused() -> None:
    assert refuse(hs_authenticator(), "a" * 1_000_000).close_code == 4001


def test_errors_are_chained_to_the_pyjwt_cause() -> None:
    error = refuse(hs_authenticator(), "a.b.c")
    assert str(error) == "invalid token"
    assert isinstance(error.__cause__, jwt.DecodeError)


def test_logs_name_the_error_but_never_the_token(caplog: pytest.LogCaptureFixture) -> None:
    secretish = "SENSITIVE" + "A" * 20
    caplog.set_level(logging.DEBUG, logger="roomcast.jwt")
    refuse(hs_authenticator(), f"{secretish}.{secretish}.{secretish}")
    refuse(hs_authenticator(), hs256(claims(exp=int(time.time()) - 60, sub=secretish)))
    assert "DecodeError" in caplog.text
    assert "ExpiredSignatureError" in caplog.text
    assert "SENSITIVE" not in caplog.text


# ----------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400)])
    | st.floats()
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
header_names = st.sampled_from(["alg", "typ", "kid", "crit", "b64", "cty", "jku", "x5u"])
claim_names = st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "jti"])


def outcome(authenticator: JWTAuthenticator, token: str) -> Principal | AuthenticationError:
    try:
        return accept(authenticator, token)
    except AuthenticationError as exc:
        return exc


@settings(max_examples=200, deadline=None)
@given(token=st.text(max_size=300) | st.lists(st.text(max_size=60), max_size=4).map(".".join))
def test_arbitrary_text_only_ever_raises_authentication_error(token: str) -> None:
    assert isinstance(outcome(hs_authenticator(), token), AuthenticationError)


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(header_names | st.text(max_size=4), json_values, max_size=5),
    alg=st.sampled_from(["HS256", "HS512", "RS256", "none", None]),
)
def test_arbitrary_signed_headers_only_ever_raise_authentication_error(
    header: dict[str, Any], alg: str | None
) -> None:
    if alg is not None:
        header["alg"] = alg
    result = outcome(hs_authenticator(), hmac_token(header, claims()))
    if isinstance(result, Principal):
        assert header["alg"] == "HS256"
        assert "crit" not in header
        assert result.user_id == "alice"


@settings(max_examples=200, deadline=None)
@given(payload=st.dictionaries(claim_names | st.text(max_size=4), json_values, max_size=6))
def test_arbitrary_signed_claims_only_ever_raise_authentication_error(
    payload: dict[str, Any],
) -> None:
    result = outcome(hs_authenticator(), hmac_token({"alg": "HS256"}, payload))
    if isinstance(result, Principal):
        assert result.user_id == payload["sub"]
        assert isinstance(result.user_id, str)
        assert result.user_id


# ----------------------------------------------------------------------------- JWKS


class JWKSEndpoint:
    """A key set served over HTTP on 127.0.0.1, counting its requests.

    With ``drip`` set to ``"headers"`` or ``"body"``, that part of the answer
    is written one byte every :data:`DRIP_INTERVAL` seconds, as a slow or
    hostile key set endpoint would, until the client goes away or the test
    ends; ``dripping`` is set once a dripped answer has begun.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.delay = 0.0
        self.body = b'{"keys": []}'
        self.url = ""
        self.drip: Literal["headers", "body"] | None = None
        self.dripping = threading.Event()
        self.closed = threading.Event()

    def publish(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()


#: Seconds between two bytes of a dripped answer: each arrives well within any
#: per-read socket timeout, so only a deadline on the whole fetch ends it.
DRIP_INTERVAL = 0.1


@pytest.fixture
def jwks() -> Iterator[JWKSEndpoint]:
    endpoint = JWKSEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            endpoint.requests += 1
            time.sleep(endpoint.delay)
            body = endpoint.body
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            if endpoint.drip is None:
                self.wfile.write(head + body)
                return
            endpoint.dripping.set()
            if endpoint.drip == "body":
                self.wfile.write(head)
                self.drip_out(body)
            else:
                self.drip_out(head + body)

        def drip_out(self, data: bytes) -> None:
            for index in range(len(data)):
                if endpoint.closed.wait(DRIP_INTERVAL):
                    return
                try:
                    self.wfile.write(data[index : index + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    endpoint.url = f"http://127.0.0.1:{server.server_port}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.closed.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def rsa_jwk(name: str, kid: str, alg: str | None = "RS256") -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(rsa_key(name).public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig"})
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def rs256_with_kid(name: str, kid: str) -> str:
    return jwt.encode(claims(), rsa_key(name), "RS256", headers={"kid": kid})


def jwks_authenticator(
    endpoint: JWKSEndpoint, clock: ManualClock, **options: Any
) -> JWTAuthenticator:
    return JWTAuthenticator(
        algorithms=["RS256", "ES256"], jwks_url=endpoint.url, clock=clock, **options
    )


@pytest.mark.anyio
async def test_jwks_key_verifies_and_is_fetched_once(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("main", "k1"))
    authenticator = jwks_authenticator(jwks, ManualClock())
    for _ in range(3):
        principal = await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
        assert principal.user_id == "alice"
    assert jwks.requests == 1


@pytest.mark.anyio
async def test_jwks_serves_rsa_and_ec_keys_side_by_side(jwks: JWKSEndpoint) -> None:
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = ECAlgorithm.to_jwk(ec_private.public_key(), as_dict=True)
    ec_jwk.update({"kid": "ec", "alg": "ES256"})
    jwks.publish(rsa_jwk("main", "rsa"), ec_jwk)
    authenticator = jwks_authenticator(jwks, ManualClock())
    ec_token = jwt.encode(claims(sub="bob"), ec_private, "ES256", headers={"kid": "ec"})
    assert (await authenticator.authenticate(HANDSHAKE, ec_token)).user_id == "bob"
    rsa_token = rs256_with_kid("main", "rsa")
    assert (await authenticator.authenticate(HANDSHAKE, rsa_token)).user_id == "alice"


@pytest.mark.anyio
async def test_unknown_kid_within_cooldown_fails_fast(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("main", "k1"))
    authenticator = jwks_authenticator(jwks, ManualClock(), jwks_cooldown=300)
    await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
    for kid in ("invented-1", "invented-2", "invented-3"):
        with pytest.raises(AuthenticationError) as caught:
            await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", kid))
        assert caught.value.close_code == 4001
        assert isinstance(caught.value.__cause__, jwt.PyJWKClientError)
    assert jwks.requests == 1


@pytest.mark.anyio
async def test_unknown_kid_after_cooldown_refetches_once(jwks: JWKSEndpoint) -> None:
    clock = ManualClock()
    jwks.publish(rsa_jwk("main", "k1"))
    authenticator = jwks_authenticator(jwks, clock, jwks_cooldown=60)
    await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
    jwks.publish(rsa_jwk("main", "k1"), rsa_jwk("other", "k2"))  # the issuer rotates
    rotated = rs256_with_kid("other", "k2")
    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(HANDSHAKE, rotated)
    await clock.advance(61)
    assert (await authenticator.authenticate(HANDSHAKE, rotated)).user_id == "alice"
    assert (await authenticator.authenticate(HANDSHAKE, rotated)).user_id == "alice"
    assert jwks.requests == 2


@pytest.mark.anyio
async def test_concurrent_connections_share_one_fetch(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("main", "k1"))
    jwks.delay = 0.2
    authenticator = jwks_authenticator(jwks, ManualClock())
    token = rs256_with_kid("main", "k1")
    users: list[str | None] = []

    async def connect() -> None:
        users.append((await authenticator.authenticate(HANDSHAKE, token)).user_id)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            for _ in range(10):
                task_group.start_soon(connect)
    assert users == ["alice"] * 10
    assert jwks.requests == 1


@pytest.mark.anyio
async def test_concurrent_unknown_kids_cost_one_fetch(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("main", "k1"))
    jwks.delay = 0.1
    authenticator = jwks_authenticator(jwks, ManualClock())
    failures: list[int] = []

    async def connect(kid: str) -> None:
        try:
            await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", kid))
        except AuthenticationError as exc:
            failures.append(exc.close_code)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            for index in range(10):
                task_group.start_soon(connect, f"invented-{index}")
    assert failures == [4001] * 10
    assert jwks.requests == 1


@pytest.mark.anyio
async def test_withdrawn_key_stops_verifying_after_the_lifespan(jwks: JWKSEndpoint) -> None:
    clock = ManualClock()
    jwks.publish(rsa_jwk("main", "k1"))
    authenticator = jwks_authenticator(jwks, clock, jwks_cooldown=10)
    token = rs256_with_kid("main", "k1")
    await authenticator.authenticate(HANDSHAKE, token)
    jwks.publish(rsa_jwk("other", "k2"))  # k1 is compromised and withdrawn
    await clock.advance(roomcast.jwt.JWKS_LIFESPAN)
    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(HANDSHAKE, token)
    assert jwks.requests == 2


@pytest.mark.anyio
async def test_token_without_kid_is_refused_without_fetching(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("main", "k1"))
    authenticator = jwks_authenticator(jwks, ManualClock())
    token = jwt.encode(claims(), rsa_key("main"), "RS256")
    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(HANDSHAKE, token)
    assert jwks.requests == 0


@pytest.mark.anyio
async def test_jwks_token_with_unlisted_algorithm_is_refused(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("main", "k1", alg="PS256"))
    authenticator = jwks_authenticator(jwks, ManualClock())
    token = jwt.encode(claims(), rsa_key("main"), "PS256", headers={"kid": "k1"})
    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(HANDSHAKE, token)


@pytest.mark.anyio
async def test_jwks_hmac_key_cannot_verify_tokens(jwks: JWKSEndpoint) -> None:
    # A key set that (wrongly) publishes a shared secret must not let anyone
    # who read it mint tokens.
    jwks.publish({"kty": "oct", "kid": "k1", "k": b64url(SECRET), "alg": "HS256"})
    authenticator = jwks_authenticator(jwks, ManualClock())
    for alg in ("HS256", "RS256"):
        token = hmac_token({"alg": alg, "kid": "k1"}, claims())
        with pytest.raises(AuthenticationError):
            await authenticator.authenticate(HANDSHAKE, token)


@pytest.mark.anyio
async def test_jwks_key_bound_to_rs256_refuses_an_es256_token(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("main", "k1"))
    authenticator = jwks_authenticator(jwks, ManualClock())
    ec_private = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), ec_private, "ES256", headers={"kid": "k1"})
    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(HANDSHAKE, token)


@pytest.mark.anyio
async def test_jwks_rsa_key_below_2048_bits_is_ignored(jwks: JWKSEndpoint) -> None:
    jwks.publish(rsa_jwk("weak", "k1"))
    authenticator = jwks_authenticator(jwks, ManualClock())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt warns when signing with a weak key
        token = jwt.encode(claims(), rsa_key("weak"), "RS256", headers={"kid": "k1"})
    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(HANDSHAKE, token)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"keys": []}', b'{"keys": [{}]}'])
@pytest.mark.anyio
async def test_broken_key_set_refuses_and_starts_the_cooldown(
    jwks: JWKSEndpoint, body: bytes
) -> None:
    jwks.body = body
    authenticator = jwks_authenticator(jwks, ManualClock())
    for _ in range(2):
        with pytest.raises(AuthenticationError) as caught:
            await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
        assert caught.value.close_code == 4001
    assert jwks.requests == 1


#: A key set of one RSA key is about 500 bytes: dripped, it takes about 50 s.
SLOW_KEY_SET_BOUND = 5.0


@pytest.mark.anyio
@pytest.mark.parametrize("drip", ["headers", "body"])
async def test_jwks_timeout_bounds_the_whole_fetch_of_a_dripping_key_set(
    jwks: JWKSEndpoint, drip: Literal["headers", "body"]
) -> None:
    jwks.publish(rsa_jwk("main", "k1"))
    jwks.drip = drip
    authenticator = jwks_authenticator(jwks, ManualClock(), jwks_timeout=0.5)
    started = time.monotonic()
    with anyio.fail_after(SLOW_KEY_SET_BOUND):
        with pytest.raises(AuthenticationError) as caught:
            await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
    # A bound, not a benchmark: without a deadline on the whole fetch this
    # runs into the fail_after above.
    assert time.monotonic() - started < SLOW_KEY_SET_BOUND
    assert caught.value.close_code == 4001
    assert isinstance(caught.value.__cause__, jwt.PyJWKClientConnectionError)
    assert jwks.dripping.is_set()
    assert jwks.requests == 1


@pytest.mark.anyio
async def test_cached_kid_login_completes_while_a_fetch_for_an_unknown_kid_stalls(
    jwks: JWKSEndpoint,
) -> None:
    jwks.publish(rsa_jwk("main", "k1"), rsa_jwk("other", "k2"))
    clock = ManualClock()
    authenticator = jwks_authenticator(jwks, clock, jwks_cooldown=0, jwks_timeout=30)
    await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
    jwks.drip = "body"
    stalled_result: list[object] = []

    async def stalled_login() -> None:
        try:
            await authenticator.authenticate(HANDSHAKE, rs256_with_kid("rotated", "k3"))
        except BaseException as exc:
            stalled_result.append(exc)
            raise

    with anyio.fail_after(SLOW_KEY_SET_BOUND):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stalled_login)
            await anyio.to_thread.run_sync(jwks.dripping.wait)
            # The fetch for k3 holds the fetch lock; k1 is in the current set.
            for _ in range(3):
                principal = await authenticator.authenticate(
                    HANDSHAKE, rs256_with_kid("main", "k1")
                )
                assert principal.user_id == "alice"
            assert stalled_result == []
            task_group.cancel_scope.cancel()
    assert jwks.requests == 2


@pytest.mark.anyio
async def test_key_set_larger_than_the_limit_is_refused(jwks: JWKSEndpoint) -> None:
    jwks.body = b'{"keys": [' + b" " * roomcast.jwt.MAX_JWKS_BYTES + b"]}"
    authenticator = jwks_authenticator(jwks, ManualClock())
    with pytest.raises(AuthenticationError) as caught:
        await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
    assert isinstance(caught.value.__cause__, jwt.PyJWKClientConnectionError)


@pytest.mark.anyio
async def test_unreachable_key_set_refuses() -> None:
    authenticator = JWTAuthenticator(
        algorithms=["RS256"],
        jwks_url="http://127.0.0.1:9/jwks.json",  # discard port: nothing listens
        jwks_timeout=2,
    )
    with pytest.raises(AuthenticationError) as caught:
        await authenticator.authenticate(HANDSHAKE, rs256_with_kid("main", "k1"))
    assert isinstance(caught.value.__cause__, jwt.PyJWKClientError)


# ----------------------------------------------------------------------------- with a hub


@pytest.mark.anyio
async def test_hub_accepts_a_first_message_auth_frame() -> None:
    expires = int(time.time()) + 600
    async with Hub(authenticator=hs_authenticator()) as hub:
        async with TestClient(hub, auth_token=hs256(claims(exp=expires))) as client:
            assert client.ack["payload"]["userId"] == "alice"
            assert client.ack["payload"]["expiresAt"] == expires * 1000


@pytest.mark.anyio
async def test_hub_keeps_a_token_accepted_within_the_leeway_until_exp_plus_leeway() -> None:
    clock = ManualClock()
    expired = time.time() - 2  # two seconds ago: accepted with a leeway of 5
    quiet = HeartbeatPolicy(interval=3600, timeout=7200)
    async with Hub(authenticator=hs_authenticator(leeway=5), clock=clock, heartbeat=quiet) as hub:
        async with TestClient(hub, auth_token=hs256(claims(exp=expired))) as client:
            assert client.ack["payload"]["expiresAt"] == int((expired + 5) * 1000)
            # Within the warning period from the start: warned halfway through the
            # 3 seconds it has left, counting down to exp + leeway.
            assert client.drain() == []
            await clock.advance(1.5)
            warning = await client.receive()
            assert warning["type"] == "token.expiring"
            assert 500 < warning["payload"]["expiresInMs"] <= 1_500
            assert (await client.request({"action": "ping"}))["type"] == "pong"
            assert hub.stats().token_expirations == 0
            # Wall-clock time passes too: leave slack for a slow machine.
            await clock.advance(2)
            assert await client.wait_closed() == 4002
        assert hub.stats().token_expirations == 1


@pytest.mark.anyio
async def test_refresh_reply_reports_the_expiry_with_the_leeway() -> None:
    expires = time.time() + 600
    async with (
        Hub(authenticator=hs_authenticator(leeway=5)) as hub,
        TestClient(hub, auth_token=hs256()) as client,
    ):
        reply = await client.request({"action": "refresh", "token": hs256(claims(exp=expires))})
        assert reply["payload"]["expiresAt"] == int((expires + 5) * 1000)


@pytest.mark.anyio
async def test_hub_accepts_an_authorization_header() -> None:
    handshake = Handshake(headers=(("authorization", f"Bearer {hs256()}"),))
    async with Hub(authenticator=hs_authenticator()) as hub:
        assert (await hub.admit(handshake)).accepted
        async with TestClient(hub, handshake=handshake) as client:
            assert client.ack["payload"]["userId"] == "alice"


@pytest.mark.anyio
async def test_hub_refuses_a_bad_authorization_header_with_401() -> None:
    handshake = Handshake(headers=(("authorization", f"Bearer {hs256()}x"),))
    async with Hub(authenticator=hs_authenticator()) as hub:
        admission = await hub.admit(handshake)
    assert (admission.status, admission.close_code) == (401, 4001)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "code"),
    [("not-a-token", 4001), (hs256(claims(exp=int(time.time()) - 60)), 4002)],
)
async def test_hub_closes_on_a_refused_auth_frame(token: str, code: int) -> None:
    async with Hub(authenticator=hs_authenticator()) as hub:
        with pytest.raises(ConnectionClosed) as closed:
            async with TestClient(hub, auth_token=token):
                pass
    assert closed.value.code == code
