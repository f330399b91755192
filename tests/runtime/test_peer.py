"""The delivery rule shared by a room's fan-out and a single client: deliver_all()."""

from __future__ import annotations

import anyio
import pytest

from roomcast import ConnectionClosed, Handshake, Principal
from roomcast.config import DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_BYTES
from roomcast.peer import Client, ClientId, QueueLimits, deliver_all
from roomcast.protocol import CLOSE_ABNORMAL

pytestmark = pytest.mark.anyio

LIMITS = QueueLimits(max_frames=2)


class SinkTransport:
    """Takes every frame at once, until ``broken``: then its send raises, as a reset socket's."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.broken = False

    @property
    def handshake(self) -> Handshake:
        return Handshake()

    async def receive(self) -> str | bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    def try_send(self, frame: str) -> bool:
        if self.broken:
            raise ConnectionClosed.from_code(1006)
        self.sent.append(frame)
        return True

    async def send(self, frames: list[str]) -> None:
        self.sent.extend(frames)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def make_client(name: str, limits: QueueLimits = LIMITS) -> tuple[Client, SinkTransport]:
    transport = SinkTransport()
    return Client(ClientId(f"n.{name}"), transport, Principal(None), limits=limits), transport


async def test_deliver_all_writes_in_place_to_every_client() -> None:
    (a, a_sent), (b, b_sent) = make_client("a"), make_client("b")
    assert deliver_all((a, b), "f", "room:r") == 0
    assert a_sent.sent == b_sent.sent == ["f"]


async def test_a_transport_closed_mid_loop_closes_its_client_and_the_rest_get_the_frame() -> None:
    (a, a_sent), (b, b_sent), (c, c_sent) = make_client("a"), make_client("b"), make_client("c")
    b_sent.broken = True
    assert deliver_all((a, b, c), "f", "room:r") == 1
    assert a_sent.sent == c_sent.sent == ["f"]
    assert b.close_code == CLOSE_ABNORMAL
    assert not b.direct
    # Closed: later frames are dropped without touching the transport.
    assert deliver_all((a, b, c), "g", "room:r") == 1
    assert a_sent.sent == c_sent.sent == ["f", "g"]


async def test_client_deliver_follows_the_same_rule() -> None:
    client, transport = make_client("a")
    assert client.deliver("f")
    transport.broken = True
    assert not client.deliver("g")
    assert client.close_code == CLOSE_ABNORMAL
    assert not client.deliver("h")
    assert transport.sent == ["f"]


async def test_one_queue_limits_object_is_shared_by_every_client() -> None:
    limits = QueueLimits(max_frames=3, max_bytes=100, policy="drop_oldest", drain_timeout=1.0)
    (a, _), (b, _) = make_client("a", limits), make_client("b", limits)
    assert a.limits is b.limits is limits
    assert not hasattr(a, "__dict__")  # slotted: one reference for all four limits


def test_queue_limits_default_to_the_configured_defaults() -> None:
    limits = QueueLimits()
    assert (limits.max_frames, limits.max_bytes, limits.policy, limits.drain_timeout) == (
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_QUEUE_BYTES,
        "disconnect",
        DEFAULT_DRAIN_TIMEOUT,
    )
