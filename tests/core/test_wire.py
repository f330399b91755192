"""Wire protocol v1: decoding client frames strictly and encoding server frames."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast.exceptions import LocalProtocolError, RemoteProtocolError
from roomcast.wire import (
    DEFAULT_LIMITS,
    MAX_DEPTH,
    MAX_HISTORY_LIMIT,
    MAX_MESSAGE_SIZE,
    MAX_REF_LENGTH,
    MAX_ROOM_NAME_LENGTH,
    MAX_ROOMS_PER_REQUEST,
    MAX_TOKEN_LENGTH,
    MAX_TYPE_LENGTH,
    PING_FRAME,
    PONG_FRAME,
    PROTOCOL,
    Auth,
    HistoryRequest,
    Ping,
    Pong,
    Presence,
    Publish,
    Refresh,
    Request,
    StreamPosition,
    Subscribe,
    Unsubscribe,
    WireLimits,
    decode,
    dumps,
    encode_ack,
    encode_error,
    encode_event,
    encode_frame,
    encode_gap,
    encode_reply,
    namespace_of,
    validate_event_type,
    validate_room,
)

REQUEST_TYPES = (
    Auth,
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    HistoryRequest,
    Refresh,
    Ping,
    Pong,
)
MAX_SAFE_INTEGER = 2**53 - 1

# Every test here runs twice: server frames encoded by orjson, then by the standard library.
pytestmark = pytest.mark.usefixtures("json_encoder")


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def rejected(data: str | bytes, limits: WireLimits | None = None) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, limits or DEFAULT_LIMITS)
    assert info.value.code == "bad_request"
    return info.value


# --------------------------------------------------------------------------- accepted


def test_decode_auth() -> None:
    assert decode(frame(action="auth", token="t0k", ref="a1")) == Auth("t0k", "a1")


def test_decode_subscribe_without_since() -> None:
    request = decode(frame(action="subscribe", rooms=["team:t1", "issue:i42"], ref=7))
    assert request == Subscribe(("team:t1", "issue:i42"), {}, 7)


def test_decode_subscribe_with_since() -> None:
    request = decode(
        frame(
            action="subscribe",
            rooms=["team:t1", "issue:i42"],
            since={"team:t1": {"offset": 12, "epoch": "e1"}},
        )
    )
    assert request == Subscribe(
        ("team:t1", "issue:i42"), {"team:t1": StreamPosition(12, "e1")}, None
    )


def test_decode_subscribe_with_history() -> None:
    request = decode(
        frame(
            action="subscribe",
            rooms=["team:t1", "issue:i42", "user:u1"],
            since={"issue:i42": {"offset": 3, "epoch": "e1"}},
            history={"team:t1": 50},
            ref=2,
        )
    )
    assert request == Subscribe(
        ("team:t1", "issue:i42", "user:u1"),
        {"issue:i42": StreamPosition(3, "e1")},
        2,
        {"team:t1": 50},
    )


def test_decode_subscribe_with_null_history_has_none() -> None:
    request = decode(frame(action="subscribe", rooms=["r"], history=None))
    assert request == Subscribe(("r",), {}, None, {})


def test_decode_history_last_n() -> None:
    request = decode(frame(action="history", room="team:t1", limit=50, ref=2))
    assert request == HistoryRequest("team:t1", 50, None, 2)


def test_decode_history_after_a_position() -> None:
    request = decode(
        frame(
            action="history",
            room="team:t1",
            limit=MAX_HISTORY_LIMIT,
            since={"offset": 41, "epoch": "kq3v9x"},
            ref="h",
        )
    )
    assert request == HistoryRequest(
        "team:t1", MAX_HISTORY_LIMIT, StreamPosition(41, "kq3v9x"), "h"
    )


def test_decode_history_without_limit_or_since() -> None:
    assert decode(frame(action="history", room="r", limit=None, since=None)) == HistoryRequest("r")


def test_decode_subscribe_drops_repeated_rooms_keeping_order() -> None:
    request = decode(frame(action="subscribe", rooms=["b", "a", "b"]))
    assert isinstance(request, Subscribe)
    assert request.rooms == ("b", "a")


def test_decode_unsubscribe() -> None:
    assert decode(frame(action="unsubscribe", rooms=["team:t1"], ref="u")) == Unsubscribe(
        ("team:t1",), "u"
    )


def test_decode_publish() -> None:
    request = decode(
        frame(action="publish", room="team:t1", type="typing", payload={"on": True}, ref=1)
    )
    assert request == Publish("team:t1", "typing", {"on": True}, False, 1)


def test_decode_publish_ephemeral() -> None:
    request = decode(
        frame(action="publish", room="team:t1", type="typing", payload=None, ephemeral=True)
    )
    assert request == Publish("team:t1", "typing", None, True, None)


def test_decode_publish_without_payload_has_null_payload() -> None:
    request = decode(frame(action="publish", room="r", type="t"))
    assert isinstance(request, Publish)
    assert request.payload is None


def test_decode_presence() -> None:
    assert decode(frame(action="presence", room="team:t1", ref="p")) == Presence("team:t1", "p")


def test_decode_refresh() -> None:
    assert decode(frame(action="refresh", token="new", ref=3)) == Refresh("new", 3)


def test_decode_ping() -> None:
    assert decode(frame(action="ping", ref="x")) == Ping("x")


def test_decode_pong() -> None:
    assert decode(frame(action="pong")) == Pong(None)


def test_decode_accepts_surrounding_whitespace() -> None:
    assert decode(' \n\t{"action":"ping"}\r\n ') == Ping()


def test_decode_accepts_a_surrogate_pair_escape() -> None:
    request = decode('{"action":"auth","token":"\\ud83d\\ude00"}')
    assert request == Auth("\N{GRINNING FACE}")


def test_decode_accepts_nesting_at_the_depth_limit() -> None:
    payload: Any = 1
    for _ in range(MAX_DEPTH - 1):  # the frame itself is one level
        payload = [payload]
    request = decode(frame(action="publish", room="r", type="t", payload=payload))
    assert isinstance(request, Publish)


def test_decode_accepts_a_frame_of_exactly_the_size_limit_in_utf8_bytes() -> None:
    text = _sized_publish(MAX_MESSAGE_SIZE)
    assert len(text.encode("utf-8")) == MAX_MESSAGE_SIZE
    assert isinstance(decode(text), Publish)


# --------------------------------------------------------------------------- rejected


def _sized_publish(size: int) -> str:
    """A publish frame of exactly ``size`` bytes of UTF-8, mostly two-byte characters."""
    head, tail = '{"action":"publish","room":"r","type":"t","payload":"', '"}'
    room = size - len(head) - len(tail)
    return head + "é" * (room // 2) + "a" * (room % 2) + tail


def test_reject_frame_over_the_size_limit_in_utf8_bytes() -> None:
    text = _sized_publish(MAX_MESSAGE_SIZE + 1)
    assert len(text) <= MAX_MESSAGE_SIZE  # only its UTF-8 form is too big
    rejected(text)


def test_reject_frame_over_a_custom_size_limit() -> None:
    rejected(frame(action="ping", ref="0123456789"), WireLimits(max_message_size=16))


def test_reject_binary_frame() -> None:
    rejected(b'{"action":"ping"}')


@pytest.mark.parametrize("text", ["", "   ", "{", '{"action":"ping"', "ping", "{'a': 1}", "{}{}"])
def test_reject_invalid_json(text: str) -> None:
    rejected(text)


@pytest.mark.parametrize("text", ["[]", '"ping"', "1", "null", "true", '[{"action":"ping"}]'])
def test_reject_non_object(text: str) -> None:
    rejected(text)


def test_reject_missing_action() -> None:
    rejected(frame(ref="r1"))


@pytest.mark.parametrize("action", ["nope", "PING", "", None, 1, ["ping"], {"a": 1}])
def test_reject_unknown_action(action: Any) -> None:
    rejected(frame(action=action))


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "ping", "extra": 1},
        {"action": "auth", "token": "t", "rooms": ["r"]},
        {"action": "publish", "room": "r", "type": "t", "Payload": 1},
        {"action": "history", "room": "r", "rooms": ["r"]},
        {"action": "history", "room": "r", "offset": 1},
        {"action": "subscribe", "rooms": ["r"], "limit": 5},
    ],
)
def test_reject_unknown_field(fields: dict[str, Any]) -> None:
    rejected(json.dumps(fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "auth"},
        {"action": "refresh"},
        {"action": "subscribe"},
        {"action": "unsubscribe"},
        {"action": "publish", "room": "r"},
        {"action": "publish", "type": "t"},
        {"action": "presence"},
        {"action": "history"},
        {"action": "history", "limit": 5},
    ],
)
def test_reject_missing_required_field(fields: dict[str, Any]) -> None:
    rejected(json.dumps(fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "auth", "token": 1},
        {"action": "auth", "token": ""},
        {"action": "auth", "token": None},
        {"action": "auth", "token": "x" * (MAX_TOKEN_LENGTH + 1)},
        {"action": "refresh", "token": ["t"]},
        {"action": "subscribe", "rooms": "team:t1"},
        {"action": "subscribe", "rooms": []},
        {"action": "subscribe", "rooms": {"team:t1": True}},
        {"action": "subscribe", "rooms": ["r"] * (MAX_ROOMS_PER_REQUEST + 1)},
        {"action": "subscribe", "rooms": ["r"], "since": ["r"]},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": 5}},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": 1}}},
        {
            "action": "subscribe",
            "rooms": ["r"],
            "since": {"r": {"offset": 1, "epoch": "e", "x": 0}},
        },
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": "1", "epoch": "e"}}},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": 1.0, "epoch": "e"}}},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": True, "epoch": "e"}}},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": -1, "epoch": "e"}}},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": 1, "epoch": 1}}},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": 1, "epoch": ""}}},
        {"action": "subscribe", "rooms": ["r"], "since": {"r": {"offset": 1, "epoch": "e" * 65}}},
        {"action": "subscribe", "rooms": ["r"], "history": ["r"]},
        {"action": "subscribe", "rooms": ["r"], "history": 50},
        {"action": "subscribe", "rooms": ["r"], "history": {"r": "50"}},
        {"action": "subscribe", "rooms": ["r"], "history": {"r": 50.0}},
        {"action": "subscribe", "rooms": ["r"], "history": {"r": True}},
        {"action": "subscribe", "rooms": ["r"], "history": {"r": None}},
        {"action": "subscribe", "rooms": ["r"], "history": {"r": 0}},
        {"action": "subscribe", "rooms": ["r"], "history": {"r": -1}},
        {"action": "subscribe", "rooms": ["r"], "history": {"r": MAX_HISTORY_LIMIT + 1}},
        {"action": "history", "room": ["r"]},
        {"action": "history", "room": ""},
        {"action": "history", "room": "r", "limit": 0},
        {"action": "history", "room": "r", "limit": -5},
        {"action": "history", "room": "r", "limit": MAX_HISTORY_LIMIT + 1},
        {"action": "history", "room": "r", "limit": True},
        {"action": "history", "room": "r", "limit": 1.0},
        {"action": "history", "room": "r", "limit": "10"},
        {"action": "history", "room": "r", "since": 5},
        {"action": "history", "room": "r", "since": {"offset": 1}},
        {"action": "history", "room": "r", "since": {"offset": 1, "epoch": "e", "x": 1}},
        {"action": "history", "room": "r", "since": {"offset": False, "epoch": "e"}},
        {"action": "history", "room": "r", "since": {"offset": -1, "epoch": "e"}},
        {"action": "history", "room": "r", "since": {"offset": 1, "epoch": ""}},
        {"action": "history", "room": "r", "since": {"offset": 1, "epoch": "e" * 65}},
        {"action": "history", "room": "r", "since": {"r": {"offset": 1, "epoch": "e"}}},
        {"action": "unsubscribe", "rooms": "r"},
        {"action": "publish", "room": "r", "type": "t", "ephemeral": "yes"},
        {"action": "publish", "room": "r", "type": "t", "ephemeral": 1},
        {"action": "publish", "room": "r", "type": 5},
        {"action": "presence", "room": ["r"]},
        {"action": "ping", "ref": 1.5},
        {"action": "ping", "ref": ["r"]},
        {"action": "ping", "ref": {"r": 1}},
        {"action": "ping", "ref": "r" * (MAX_REF_LENGTH + 1)},
    ],
)
def test_reject_wrong_field_type_or_value(fields: dict[str, Any]) -> None:
    rejected(json.dumps(fields))


@pytest.mark.parametrize("ref", [True, False])
def test_reject_bool_as_ref(ref: bool) -> None:
    rejected(frame(action="ping", ref=ref))


@pytest.mark.parametrize(
    "text",
    [
        '{"action":"auth","token":"\ud800"}',
        '{"action":"ping","\udc00":1}',
    ],
)
def test_reject_raw_lone_surrogate(text: str) -> None:
    rejected(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"action":"auth","token":"\\ud800"}',
        '{"action":"auth","token":"a\\udfffb"}',
        '{"action":"auth","token":"\\ude00\\ud83d"}',
        '{"action":"ping","\\ud800":1}',
        '{"action":"publish","room":"r","type":"t","payload":{"k":["\\udbff"]}}',
        '{"action":"publish","room":"r","type":"t","payload":{"\\udbff":0}}',
    ],
)
def test_reject_escaped_lone_surrogate(text: str) -> None:
    rejected(text)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_reject_non_finite_constants(constant: str) -> None:
    rejected(f'{{"action":"publish","room":"r","type":"t","payload":{constant}}}')


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e999"])
def test_reject_float_that_overflows_to_infinity(number: str) -> None:
    rejected(f'{{"action":"publish","room":"r","type":"t","payload":{number}}}')


def test_reject_integer_with_thousands_of_digits() -> None:
    rejected('{"action":"publish","room":"r","type":"t","payload":%s}' % ("9" * 5000))


def test_reject_ref_beyond_the_safe_integer_range() -> None:
    rejected(frame(action="ping", ref=MAX_SAFE_INTEGER + 1))


def test_reject_since_offset_beyond_the_safe_integer_range() -> None:
    since = {"r": {"offset": MAX_SAFE_INTEGER + 1, "epoch": "e"}}
    rejected(frame(action="subscribe", rooms=["r"], since=since))


def test_reject_duplicate_keys() -> None:
    rejected('{"action":"ping","action":"pong"}')


def test_reject_duplicate_keys_in_payload() -> None:
    rejected('{"action":"publish","room":"r","type":"t","payload":{"a":1,"a":2}}')


def test_reject_nesting_deeper_than_the_limit() -> None:
    payload: Any = 1
    for _ in range(MAX_DEPTH):
        payload = [payload]
    rejected(frame(action="publish", room="r", type="t", payload=payload))


def test_reject_nesting_deeper_than_a_custom_limit() -> None:
    rejected(frame(action="publish", room="r", type="t", payload=[[]]), WireLimits(max_depth=2))


def test_reject_nesting_that_would_exhaust_the_parser_stack() -> None:
    rejected("[" * 50_000 + "]" * 50_000)


@pytest.mark.parametrize(
    "room",
    [
        "",
        "r" * (MAX_ROOM_NAME_LENGTH + 1),
        "team t1",
        "team#1",
        "é",
        "a\nb",
        "a\x00",
        1,
        None,
        ["r"],
    ],
)
def test_reject_room_outside_the_grammar(room: Any) -> None:
    rejected(frame(action="presence", room=room))
    rejected(frame(action="subscribe", rooms=["ok", room]))


def test_accept_room_at_the_length_limit_with_every_allowed_character() -> None:
    room = ("AZaz09_-.:@=/" * 20)[:MAX_ROOM_NAME_LENGTH]
    assert decode(frame(action="presence", room=room)) == Presence(room)


@pytest.mark.parametrize(
    "type_",
    [
        "reply",
        "error",
        "ping",
        "pong",
        "gap",
        "connection.ack",
        "presence.join",
        "token.expiring",
        "roomcast.internal",
    ],
)
def test_reject_reserved_event_type(type_: str) -> None:
    rejected(frame(action="publish", room="r", type=type_))


@pytest.mark.parametrize("type_", ["", "1abc", "a b", "x" * (MAX_TYPE_LENGTH + 1), "a/b"])
def test_reject_malformed_event_type(type_: str) -> None:
    rejected(frame(action="publish", room="r", type=type_))


def test_reject_since_for_a_room_not_in_rooms() -> None:
    since = {"other": {"offset": 1, "epoch": "e"}}
    rejected(frame(action="subscribe", rooms=["r"], since=since))


def test_reject_history_for_a_room_not_in_rooms() -> None:
    error = rejected(frame(action="subscribe", rooms=["r"], history={"other": 5}, ref=4))
    assert error.message == "'history' names a room that is not in 'rooms'"
    assert error.ref == 4


def test_reject_a_room_in_both_since_and_history() -> None:
    since = {"r": {"offset": 1, "epoch": "e"}}
    error = rejected(frame(action="subscribe", rooms=["r"], since=since, history={"r": 5}))
    assert "both 'since' and 'history'" in error.message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"history": {"r": True}}, "'history' values must be an integer"),
        ({"history": {"r": 0}}, f"'history' values must be between 1 and {MAX_HISTORY_LIMIT}"),
        ({"history": [5]}, "'history' must be an object of room -> number of messages"),
    ],
)
def test_subscribe_history_errors_name_the_problem(fields: dict[str, Any], message: str) -> None:
    assert rejected(frame(action="subscribe", rooms=["r"], **fields)).message == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit": False}, "'limit' must be an integer"),
        ({"limit": 10_001}, f"'limit' must be between 1 and {MAX_HISTORY_LIMIT}"),
        ({"since": [1, "e"]}, "'since' must be an object with exactly 'offset' and 'epoch'"),
        ({"since": {"offset": "1", "epoch": "e"}}, "'since' offset must be an integer"),
        ({"rooms": ["r"]}, "unknown field 'rooms' for action 'history'"),
    ],
)
def test_history_errors_name_the_problem(fields: dict[str, Any], message: str) -> None:
    error = rejected(frame(action="history", room="r", ref="x", **fields))
    assert error.message == message
    assert error.ref == "x"


# --------------------------------------------------------------------------- error refs


def test_error_echoes_ref_when_the_request_is_invalid() -> None:
    assert rejected(frame(action="ping", ref="r1", extra=1)).ref == "r1"


def test_error_echoes_integer_ref() -> None:
    assert rejected(frame(action="nope", ref=42)).ref == 42


def test_error_echoes_ref_when_nesting_is_too_deep() -> None:
    payload: Any = 1
    for _ in range(MAX_DEPTH):
        payload = [payload]
    error = rejected(frame(action="publish", room="r", type="t", payload=payload, ref="deep"))
    assert error.ref == "deep"


def test_error_echoes_ref_when_a_value_holds_a_lone_surrogate() -> None:
    error = rejected('{"action":"auth","token":"\\ud800","ref":"s"}')
    assert error.ref == "s"


def test_error_has_no_ref_when_the_ref_itself_holds_a_lone_surrogate() -> None:
    assert rejected('{"action":"ping","ref":"\\ud800"}').ref is None


def test_error_has_no_ref_when_the_json_is_invalid() -> None:
    assert rejected('{"action":"ping","ref":"r1"').ref is None


def test_error_has_no_ref_when_the_ref_is_invalid() -> None:
    assert rejected(frame(action="ping", ref=True)).ref is None


# --------------------------------------------------------------------------- names


def test_validate_room_returns_a_valid_name() -> None:
    assert validate_room("team:t1") == "team:t1"


@pytest.mark.parametrize("room", ["", "a b", 3, "x" * (MAX_ROOM_NAME_LENGTH + 1)])
def test_validate_room_raises_local_protocol_error(room: object) -> None:
    with pytest.raises(LocalProtocolError):
        validate_room(room)


def test_validate_event_type_refuses_reserved_types() -> None:
    with pytest.raises(LocalProtocolError):
        validate_event_type("presence.join")
    assert validate_event_type("issue.created") == "issue.created"


@pytest.mark.parametrize(
    ("room", "namespace"), [("team:t1", "team"), ("a:b:c", "a"), ("lobby", ""), (":x", "")]
)
def test_namespace_is_the_part_before_the_first_colon(room: str, namespace: str) -> None:
    assert namespace_of(room) == namespace


# --------------------------------------------------------------------------- encoding


def test_ping_and_pong_frames_are_valid_json() -> None:
    assert json.loads(PING_FRAME) == {"type": "ping"}
    assert json.loads(PONG_FRAME) == {"type": "pong"}


def test_encode_ack() -> None:
    text = encode_ack(client_id="c1", user_id="u1", heartbeat_ms=30000, expires_at=None)
    assert json.loads(text) == {
        "type": "connection.ack",
        "payload": {
            "clientId": "c1",
            "userId": "u1",
            "heartbeatMs": 30000,
            "expiresAt": None,
            "protocol": PROTOCOL,
        },
    }


def test_encode_reply() -> None:
    assert json.loads(encode_reply("r1", {"granted": ["a"]})) == {
        "type": "reply",
        "ref": "r1",
        "ok": True,
        "payload": {"granted": ["a"]},
    }


def test_encode_error_as_reply_with_extra_fields() -> None:
    text = encode_error("rate_limited", "slow down", ref=5, retryAfterMs=1500)
    assert json.loads(text) == {
        "type": "reply",
        "ref": 5,
        "ok": False,
        "error": {"code": "rate_limited", "message": "slow down", "retryAfterMs": 1500},
    }


def test_encode_error_standalone() -> None:
    text = encode_error("internal", "oops", reply=False)
    assert json.loads(text) == {
        "type": "error",
        "ref": None,
        "payload": {"code": "internal", "message": "oops"},
    }


def test_encode_gap() -> None:
    assert json.loads(encode_gap(3, ["a", "b"])) == {
        "type": "gap",
        "payload": {"dropped": 3, "rooms": ["a", "b"]},
    }


def test_encode_frame_keeps_none_fields() -> None:
    assert json.loads(encode_frame("token.expiring", payload=None)) == {
        "type": "token.expiring",
        "payload": None,
    }


def test_encode_event_splices_the_payload() -> None:
    payload = {"id": "i1", "title": 'Crash \u2028 on "save"', "n": [1, 2.5, None]}
    text = encode_event(
        type_="issue.created",
        room="team:t1",
        message_id="m1",
        payload_json=dumps(payload),
        timestamp=1700000000000,
        user_id=None,
    )
    assert json.loads(text) == {
        "type": "issue.created",
        "room": "team:t1",
        "id": "m1",
        "payload": payload,
        "timestamp": 1700000000000,
        "userId": None,
    }


def test_encode_event_with_history_position() -> None:
    text = encode_event(
        type_="comment.added",
        room="issue:i42",
        message_id="m2",
        payload_json="[]",
        timestamp=1,
        user_id="u1",
        offset=17,
        epoch="ep",
    )
    decoded = json.loads(text)
    assert (decoded["payload"], decoded["offset"], decoded["epoch"]) == ([], 17, "ep")


_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    type_=_texts,
    room=st.none() | _texts,
    message_id=_texts,
    timestamp=st.integers(0, 2**53),
    user_id=st.none() | _texts,
    position=st.none() | st.tuples(st.integers(0, 2**53), st.none() | _texts),
)
def test_an_event_frame_is_the_compact_json_of_its_fields(
    type_: str,
    room: str | None,
    message_id: str,
    timestamp: int,
    user_id: str | None,
    position: tuple[int, str | None] | None,
) -> None:
    # The fan-out splices frames by hand: byte for byte what json.dumps makes.
    fields: dict[str, Any] = {
        "type": type_,
        "room": room,
        "id": message_id,
        "payload": {"n": 1},
        "timestamp": timestamp,
        "userId": user_id,
    }
    offset, epoch = position if position is not None else (None, None)
    if offset is not None:
        fields.update(offset=offset, epoch=epoch)
    text = encode_event(
        type_=type_,
        room=room,
        message_id=message_id,
        payload_json='{"n":1}',
        timestamp=timestamp,
        user_id=user_id,
        offset=offset,
        epoch=epoch,
    )
    assert text == json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def test_encode_event_refuses_a_lone_surrogate_in_a_field() -> None:
    with pytest.raises(LocalProtocolError):
        encode_event(
            type_="t",
            room="r",
            message_id="m",
            payload_json="{}",
            timestamp=1,
            user_id="\udc80",
        )


def test_dumps_is_compact_and_keeps_non_ascii() -> None:
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_dumps_refuses_non_finite_numbers(value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        dumps(value)


@pytest.mark.parametrize("value", [object(), {1j}, b"bytes", {"k": object()}])
def test_dumps_refuses_non_serializable_values(value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        dumps(value)


@pytest.mark.parametrize("value", ["\ud800", {"k": "a\udfff"}, {"\udc00": 1}])
def test_dumps_refuses_lone_surrogates(value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        dumps(value)


def test_local_protocol_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="JSON"):
        dumps(object())


# --------------------------------------------------------------------------- properties

# Text that may contain lone surrogates, which st.text() leaves out by default.
any_text = st.text(st.one_of(st.characters(), st.characters(codec=None, categories=["Cs"])))
field_names = st.sampled_from(
    ["action", "ref", "token", "rooms", "since", "room", "type", "payload", "ephemeral",
     "offset", "epoch", "history", "limit"]
)  # fmt: skip
actions = st.sampled_from(
    ["auth", "subscribe", "unsubscribe", "publish", "presence", "history", "refresh", "ping",
     "pong"]
)  # fmt: skip
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: json.dumps writes them as bare words
    any_text,
    actions,
)
json_ish = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(field_names, any_text), children, max_size=4),
    ),
    max_leaves=20,
)
frame_ish = st.dictionaries(st.one_of(field_names, any_text), json_ish, max_size=6) | json_ish


def decode_totally(data: str | bytes) -> Request | None:
    try:
        request = decode(data)
    except RemoteProtocolError:
        return None
    assert isinstance(request, REQUEST_TYPES)
    return request


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_decode_is_total_on_arbitrary_text(data: str) -> None:
    decode_totally(data)


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_decode_refuses_every_binary_frame(data: bytes) -> None:
    assert decode_totally(data) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_ish)
def test_decode_is_total_on_arbitrary_json(value: Any) -> None:
    decode_totally(json.dumps(value, ensure_ascii=False))
    decode_totally(json.dumps(value, ensure_ascii=True))


rooms = st.from_regex(rf"[A-Za-z0-9_\-.:@=/]{{1,{MAX_ROOM_NAME_LENGTH}}}", fullmatch=True)
refs = st.one_of(
    st.none(),
    st.text(max_size=MAX_REF_LENGTH),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
)
tokens = st.text(min_size=1, max_size=200)
event_types = st.from_regex(rf"[A-Za-z][A-Za-z0-9_\-.:]{{0,{MAX_TYPE_LENGTH - 1}}}", fullmatch=True)
event_types = event_types.filter(
    lambda t: (
        t not in {"reply", "error", "ping", "pong", "gap"}
        and not t.startswith(("connection.", "presence.", "token.", "roomcast."))
    )
)
payloads = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
positions = st.builds(
    StreamPosition, st.integers(0, MAX_SAFE_INTEGER), st.text(min_size=1, max_size=64)
)

counts = st.integers(1, MAX_HISTORY_LIMIT)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[dict[str, Any], Request]:
    action = draw(actions)
    ref = draw(refs)
    fields: dict[str, Any] = {"action": action}
    expected: Request
    if action in ("auth", "refresh"):
        token = draw(tokens)
        fields["token"] = token
        expected = Auth(token, ref) if action == "auth" else Refresh(token, ref)
    elif action in ("subscribe", "unsubscribe"):
        names = draw(st.lists(rooms, min_size=1, max_size=MAX_ROOMS_PER_REQUEST))
        fields["rooms"] = names
        unique = tuple(dict.fromkeys(names))
        if action == "unsubscribe":
            expected = Unsubscribe(unique, ref)
        else:
            since = draw(st.dictionaries(st.sampled_from(unique), positions))
            if bool(since) or draw(st.booleans()):
                fields["since"] = {
                    room: {"offset": p.offset, "epoch": p.epoch} for room, p in since.items()
                }
            history = draw(
                st.dictionaries(
                    st.sampled_from(unique).filter(lambda room: room not in since), counts
                )
            )
            if bool(history) or draw(st.booleans()):
                fields["history"] = history
            expected = Subscribe(unique, since, ref, history)
    elif action == "publish":
        room, type_, payload = draw(rooms), draw(event_types), draw(payloads)
        fields.update(room=room, type=type_)
        if payload is not None or draw(st.booleans()):
            fields["payload"] = payload
        ephemeral = draw(st.booleans())
        if ephemeral or draw(st.booleans()):
            fields["ephemeral"] = ephemeral
        expected = Publish(room, type_, payload, ephemeral, ref)
    elif action == "presence":
        room = draw(rooms)
        fields["room"] = room
        expected = Presence(room, ref)
    elif action == "history":
        room, limit, position = draw(rooms), draw(st.none() | counts), draw(st.none() | positions)
        fields["room"] = room
        if limit is not None or draw(st.booleans()):
            fields["limit"] = limit
        if position is not None:
            fields["since"] = {"offset": position.offset, "epoch": position.epoch}
        elif draw(st.booleans()):
            fields["since"] = None
        expected = HistoryRequest(room, limit, position, ref)
    elif action == "ping":
        expected = Ping(ref)
    else:
        expected = Pong(ref)
    if ref is not None or draw(st.booleans()):
        fields["ref"] = ref
    return fields, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_requests(), st.booleans())
def test_valid_requests_round_trip(case: tuple[dict[str, Any], Request], ascii_: bool) -> None:
    fields, expected = case
    assert decode(json.dumps(fields, ensure_ascii=ascii_)) == expected


@settings(max_examples=200, deadline=None)
@given(payloads)
def test_dumps_round_trips_through_json(value: Any) -> None:
    assert json.loads(dumps(value)) == value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(rooms, min_size=1, max_size=8, unique=True),
    st.dictionaries(rooms, st.integers(-(2**40), 2**40) | st.booleans() | st.none(), max_size=6),
)
def test_subscribe_history_is_accepted_exactly_when_valid(
    names: list[str], history: dict[str, Any]
) -> None:
    """Every entry counts: a room of the request and a count in range, or the frame is refused."""
    valid = all(
        room in names
        and isinstance(count, int)
        and not isinstance(count, bool)
        and 1 <= count <= MAX_HISTORY_LIMIT
        for room, count in history.items()
    )
    data = frame(action="subscribe", rooms=names, history=history)
    if valid:
        request = decode(data)
        assert isinstance(request, Subscribe)
        assert request.history == history
    else:
        rejected(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**60), 2**60) | st.booleans() | st.floats(allow_nan=False) | st.text())
def test_history_limit_is_accepted_exactly_when_valid(limit: Any) -> None:
    data = frame(action="history", room="team:t1", limit=limit)
    if isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= MAX_HISTORY_LIMIT:
        assert decode(data) == HistoryRequest("team:t1", limit)
    else:
        rejected(data)
