"""Membership: clients by id and user, rooms and their members, joins, "room now empty"."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from roomcast import RoomOptions
from roomcast.membership import ClientId, Membership, Room

OPTIONS = RoomOptions()


class FakeClient:
    """The least a member is: ids and the rooms it is in."""

    def __init__(self, client_id: str, user_id: str | None = None) -> None:
        self.id = ClientId(client_id)
        self.user_id = user_id
        self.rooms: dict[str, Room[Any]] = {}


def joined(membership: Membership[FakeClient], client: FakeClient, name: str) -> Room[FakeClient]:
    room, _ = membership.start_join(client, name, OPTIONS)
    membership.join(client, room)
    assert not membership.end_join(client, room)
    return room


def test_clients_are_found_by_id_and_by_user() -> None:
    membership: Membership[FakeClient] = Membership()
    a1, a2, anonymous = FakeClient("a1", "alice"), FakeClient("a2", "alice"), FakeClient("x")
    for client in (a1, a2, anonymous):
        membership.add(client)
    assert membership.clients == {"a1": a1, "a2": a2, "x": anonymous}
    assert membership.users == {"alice": {"a1": a1, "a2": a2}}


def test_removing_the_last_client_of_a_user_says_so() -> None:
    membership: Membership[FakeClient] = Membership()
    a1, a2, anonymous = FakeClient("a1", "alice"), FakeClient("a2", "alice"), FakeClient("x")
    for client in (a1, a2, anonymous):
        membership.add(client)
    assert membership.remove(a1) is None
    assert membership.remove(anonymous) is None
    assert membership.remove(a2) == "alice"
    assert (membership.clients, membership.users) == ({}, {})


def test_a_room_opens_with_its_first_join_and_closes_with_its_last_leave() -> None:
    membership: Membership[FakeClient] = Membership()
    a, b = FakeClient("a"), FakeClient("b")
    room = joined(membership, a, "team:t1")
    assert joined(membership, b, "team:t1") is room
    assert list(room.members) == ["a", "b"]
    assert a.rooms == {"team:t1": room}
    assert membership.leave(a, "team:t1")
    assert not membership.leave(a, "team:t1")
    assert membership.rooms == {"team:t1": room}
    assert membership.leave(b, "team:t1")
    assert membership.rooms == {}


def test_frames_are_held_for_a_joining_client_until_its_join_ends() -> None:
    membership: Membership[FakeClient] = Membership()
    client = FakeClient("a")
    room, held = membership.start_join(client, "team:t1", OPTIONS)
    assert room.joining == {"a": held}
    assert not room.empty
    assert room.members == {}
    membership.join(client, room)
    assert not membership.end_join(client, room)
    assert room.joining is None


def test_a_join_that_fails_closes_the_room_it_opened() -> None:
    membership: Membership[FakeClient] = Membership()
    client = FakeClient("a")
    room, _ = membership.start_join(client, "team:t1", OPTIONS)
    assert membership.end_join(client, room)
    assert membership.rooms == {}
    assert client.rooms == {}


def test_a_join_that_fails_keeps_a_room_with_members() -> None:
    membership: Membership[FakeClient] = Membership()
    member, joining = FakeClient("a"), FakeClient("b")
    room = joined(membership, member, "team:t1")
    membership.start_join(joining, "team:t1", OPTIONS)
    assert not membership.end_join(joining, room)
    assert membership.rooms == {"team:t1": room}


def test_a_closing_client_stops_receiving_but_still_lists_its_rooms() -> None:
    membership: Membership[FakeClient] = Membership()
    closing, other = FakeClient("a"), FakeClient("b")
    room = joined(membership, closing, "team:t1")
    joined(membership, other, "team:t1")
    membership.stop_delivery(closing)
    assert list(room.members) == ["b"]
    assert closing.rooms == {"team:t1": room}
    assert membership.leave(closing, "team:t1")


def test_an_emptied_room_replaced_by_a_new_one_is_not_closed_twice() -> None:
    membership: Membership[FakeClient] = Membership()
    a, b = FakeClient("a"), FakeClient("b")
    old = joined(membership, a, "team:t1")
    membership.stop_delivery(a)  # empty now, but still listed in a.rooms
    del membership.rooms["team:t1"]
    new = joined(membership, b, "team:t1")
    assert membership.leave(a, "team:t1")
    assert membership.rooms == {"team:t1": new}
    assert old is not new


class MembershipModel(RuleBasedStateMachine):
    """Any sequence of joins and leaves: rooms exist exactly while they have members."""

    def __init__(self) -> None:
        super().__init__()
        self.membership: Membership[FakeClient] = Membership()
        self.clients = [FakeClient(f"c{i}", f"u{i % 2}") for i in range(3)]
        for client in self.clients:
            self.membership.add(client)
        self.expected: dict[str, set[str]] = {}

    @rule(client=st.integers(0, 2), name=st.sampled_from(["r:a", "r:b", "r:c"]))
    def join(self, client: int, name: str) -> None:
        who = self.clients[client]
        if name in who.rooms:
            return
        joined(self.membership, who, name)
        self.expected.setdefault(name, set()).add(who.id)

    @rule(client=st.integers(0, 2), name=st.sampled_from(["r:a", "r:b", "r:c"]))
    def leave(self, client: int, name: str) -> None:
        who = self.clients[client]
        was_in = who.id in self.expected.get(name, set())
        assert self.membership.leave(who, name) == was_in
        if was_in:
            self.expected[name].discard(who.id)
            if not self.expected[name]:
                del self.expected[name]

    @invariant()
    def rooms_match(self) -> None:
        rooms = self.membership.rooms
        assert {name: set(room.members) for name, room in rooms.items()} == self.expected
        for client in self.clients:
            assert set(client.rooms) == {n for n, ids in self.expected.items() if client.id in ids}


MembershipModel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
TestMembershipModel = MembershipModel.TestCase
