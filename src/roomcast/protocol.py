"""Facts of wire protocol v1 that every layer shares: the close codes and the fixed frames (pure).

[`CloseCode`][roomcast.CloseCode] is the one table of close codes the server
sends, with what each means and what a client should do next; the protocol
reference's table of codes is checked against it.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "SENDABLE_CLOSE_CODES",
    "CLOSE_ABNORMAL",
    "CLOSE_NO_STATUS",
    "MAX_TOKEN_LENGTH",
    "PING_FRAME",
    "PONG_FRAME",
    "PROTOCOL",
    "CloseCode",
    "Reconnect",
]

#: The WebSocket subprotocol of wire protocol v1.
PROTOCOL: Final = "roomcast.v1"
#: Longest token in `auth` and `refresh`, or in a handshake's token source, in characters.
MAX_TOKEN_LENGTH: Final = 8192
#: The server's heartbeat ping, the same bytes every time.
PING_FRAME: Final = '{"type":"ping"}'
#: The answer to a client `ping` that carried no `ref`.
PONG_FRAME: Final = '{"type":"pong"}'

#: RFC 6455 section 7.4.1: the code a connection reports when its close frame had no
#: status code (a browser's plain `ws.close()`). It is never sent, so it is not a
#: [`CloseCode`][roomcast.CloseCode]; a closure with it ended normally.
CLOSE_NO_STATUS: Final = 1005
#: RFC 6455 section 7.4.1: the code a connection reports when it ended without a close
#: frame at all (the peer vanished). It is never sent, so it is not a
#: [`CloseCode`][roomcast.CloseCode].
CLOSE_ABNORMAL: Final = 1006

#: RFC 6455 section 5.5: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON_BYTES: Final = 123
#: RFC 6455 section 7.4: the codes below 3000 an endpoint may put in a close frame
#: (3000-4999 are for libraries and applications).
SENDABLE_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

#: What a client should do after a close code: `"never"` reconnect (the server
#: meant it, or the client is at fault), reconnect `"with_new_token"` only (its
#: credentials were refused or ran out), or reconnect `"after_delay"` (back off
#: with jitter and try again).
Reconnect = Literal["never", "with_new_token", "after_delay"]


class CloseCode(enum.IntEnum):
    """Every close code a roomcast server sends, with its meaning and reconnect advice.

    Each member is an `int`, so it can be passed wherever a close code is
    expected and compared with the code a client received:

    ```python
    from roomcast import CloseCode

    assert CloseCode(4009) is CloseCode.SLOW_CONSUMER
    assert CloseCode.SLOW_CONSUMER.reconnect == "after_delay"
    ```

    Attributes:
        meaning: one line saying when the server sends the code.
        reconnect: what a client should do next (see `Reconnect`).
    """

    meaning: str
    reconnect: Reconnect

    def __new__(cls, code: int, meaning: str, reconnect: Reconnect) -> CloseCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        member.reconnect = reconnect
        return member

    NORMAL = 1000, "normal closure", "never"
    GOING_AWAY = 1001, "going away: the server is shutting down", "after_delay"
    POLICY_VIOLATION = (
        1008,
        "policy violation, including repeated malformed frames",
        "with_new_token",
    )
    MESSAGE_TOO_BIG = 1009, "a frame was too big for the server's WebSocket layer", "never"
    INTERNAL_ERROR = 1011, "internal error, or no answer to heartbeats in time", "after_delay"
    TRY_AGAIN_LATER = (
        1013,
        "try again later: not ready, overloaded or a limit reached",
        "after_delay",
    )
    INVALID_TOKEN = 4001, "invalid token, or a request before authentication", "with_new_token"
    TOKEN_EXPIRED = 4002, "the token expired", "with_new_token"
    AUTH_TIMEOUT = 4008, "authentication timeout: no valid auth frame in time", "after_delay"
    SLOW_CONSUMER = 4009, "slow consumer: the client's outbound queue was full", "after_delay"
    RATE_LIMITED = 4029, "rate limit exceeded repeatedly", "after_delay"
