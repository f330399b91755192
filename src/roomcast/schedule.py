"""Schedule: the hub's background loop — heartbeat pings and timeouts, token warnings and expiry."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import partial
from typing import Final

import anyio

from .clock import Clock
from .expiry import ExpirySchedule
from .heartbeat import Heartbeat
from .peer import Client, ClientId
from .protocol import PING_FRAME, CloseCode
from .settings import Settings
from .wire import encode_frame

__all__ = ["Schedule"]

#: Longest the loop sleeps, so new clients are picked up promptly.
_MAX_SLEEP: Final = 1.0
#: Shortest wait for the next heartbeat deadline: pings and timeouts due within it are
#: carried out together, up to this late, so that many connections cost a few wakes a
#: second rather than one per deadline.
_HEARTBEAT_SLACK: Final = 0.05


class Schedule:
    """What is due for each connection, and the loop that carries it out on the hub's clock.

    The pure [`Heartbeat`][roomcast.Heartbeat] and
    [`ExpirySchedule`][roomcast.expiry.ExpirySchedule] decide what is due; the
    loop ([`run()`][roomcast.schedule.Schedule.run], in the hub's task group)
    pings clients, closes those that stopped answering (1011), warns clients
    whose token is about to expire (``token.expiring``) and closes them once it
    has (4002). It sleeps until the next deadline, at most one second; a
    heartbeat deadline less than 50 ms away (``_HEARTBEAT_SLACK``) waits for
    the end of that slack, so that pings due close together go out in one wake.

    Attributes:
        heartbeat_timeouts: clients closed for not answering heartbeats.
        token_expirations: clients closed with 4002 because their token expired.
    """

    def __init__(self, settings: Settings, clients: Mapping[ClientId, Client], clock: Clock):
        """Create an empty schedule for the clients of ``clients`` (the hub's map, by id)."""
        self._clients = clients
        self._clock = clock
        self._heartbeat: Heartbeat[ClientId] = Heartbeat(settings.heartbeat)
        self._expiries: ExpirySchedule[ClientId] = ExpirySchedule(
            settings.token_expiry_warning, settings.token_expiry_grace
        )
        # The loop's sleep, so that an earlier deadline can cut it short.
        self._sleep: anyio.CancelScope | None = None
        self._sleep_until = math.inf
        self.heartbeat_timeouts = 0
        self.token_expirations = 0

    def add(self, client_id: ClientId, now: float) -> None:
        """Start the heartbeat of a new connection."""
        self._heartbeat.add(client_id, now)

    def seen(self, client_id: ClientId, now: float) -> None:
        """The peer sent something: it is alive."""
        self._heartbeat.seen(client_id, now)

    def remove(self, client_id: ClientId) -> None:
        """Forget a connection: no more pings, warnings or expiry."""
        self._heartbeat.remove(client_id)
        self._expiries.remove(client_id)

    def token(self, client: Client) -> None:
        """Schedule the ``token.expiring`` notice and the 4002 close for the client's token.

        Called after the ack and after each refresh; a token that never expires
        ends the schedule of the previous one.
        """
        expires_at = client.principal.expires_at
        # Token times are wall-clock; the schedule runs on the hub's clock.
        now = self._clock.now()
        at = None if expires_at is None else now + expires_at - time.time()
        self._expiries.schedule(client.id, at, now)
        # A token that expires within the loop's current sleep must not wait
        # for its end: wake the loop to sleep until the new deadline instead.
        first = self._expiries.next_deadline()
        if self._sleep is not None and first is not None and first < self._sleep_until:
            self._sleep.cancel()

    async def run(self) -> None:
        """Carry out what is due, then sleep until the next deadline; forever."""
        clock = self._clock
        heartbeat = self._heartbeat
        clients = self._clients
        while True:
            now = clock.now()
            actions = heartbeat.poll(now)
            for client_id in actions.ping:
                client = clients.get(client_id)
                if client is None:
                    continue
                # Protocol pings where the transport has them (browsers answer
                # on their own); the application ping frame otherwise.
                if client.pingable:
                    client.request_ping(partial(self._on_pong, client_id))
                else:
                    client.deliver(PING_FRAME)
            for client_id in actions.dead:
                client = clients.get(client_id)
                if client is not None and not client.closing:
                    self.heartbeat_timeouts += 1
                    client.close(CloseCode.INTERNAL_ERROR, "heartbeat timeout", flush=False)
            self._run_expiries(now)
            deadline = heartbeat.next_deadline()
            if deadline is not None:
                deadline = max(deadline, now + _HEARTBEAT_SLACK)
            first = self._expiries.next_deadline()
            if first is not None:
                deadline = first if deadline is None else min(deadline, first)
            limit = now + _MAX_SLEEP
            self._sleep_until = limit if deadline is None else min(deadline, limit)
            with anyio.CancelScope() as self._sleep:
                await clock.sleep_until(self._sleep_until)
            self._sleep = None

    def _run_expiries(self, now: float) -> None:
        for due in self._expiries.poll(now):
            client = self._clients.get(due.key)
            if client is None or client.closing:
                continue
            if due.action == "warn":
                payload = {"expiresInMs": due.expires_in_ms}
                client.deliver(encode_frame("token.expiring", payload=payload))
            else:
                self.token_expirations += 1
                client.close(CloseCode.TOKEN_EXPIRED, "token expired")

    def _on_pong(self, client_id: ClientId) -> None:
        if client_id in self._clients:
            self._heartbeat.seen(client_id, self._clock.now())
