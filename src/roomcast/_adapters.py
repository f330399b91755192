"""What the adapters share: the record of a framework internal they rely on.

Each adapter lists, in its module-level ``_INTERNALS`` table, every attribute
of its framework's objects that is not part of the framework's documented
API and that it reads, writes or calls; `tests/adapters/test_internals.py`
checks each entry against the installed framework, and that an adapter
touches no private attribute its table leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Internal"]


@dataclass(frozen=True, slots=True)
class Internal:
    """One non-public attribute of a framework object that an adapter relies on.

    Attributes:
        owner: the dotted path of the class (or module) that has it.
        name: the attribute's name.
        kind: ``"callable"`` for a method, ``"attribute"`` for data (an
            instance attribute, a property or a slot).
        checked: the framework versions it was checked against, oldest first.
        why: what the adapter uses it for, and what it does when it is missing.
        since: for an internal the adapter can do without, the first framework
            version that has it; older versions lack it and the adapter falls
            back. ``None`` for one the adapter needs in every version it supports.
    """

    owner: str
    name: str
    kind: Literal["callable", "attribute"]
    checked: tuple[str, ...]
    why: str
    since: str | None = None

    @property
    def distribution(self) -> str:
        """The distribution that ships ``owner``: its top-level package's name."""
        return self.owner.split(".", 1)[0]
