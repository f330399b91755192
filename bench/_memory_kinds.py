"""Where roomcast's own memory per connection goes, by kind of object (for ``hub_fanout``).

tracemalloc's per-line attribution is blurred by the allocator's free lists (a
dict's table freed in one place is reused by a dict made in another), so this
walks the objects themselves instead: every live object the garbage collector
tracks that was allocated by code in ``src/roomcast``, and the untracked values
(strings, numbers, small dicts) held in their slots, each counted once with
``sys.getsizeof``. Containers are named after the slot that holds them
(``Room.members``, ``Client.rooms``), coroutines after their function,
everything else after its type. Taken before and after, the difference is what
the connections added.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
import types
from collections.abc import Iterator

__all__ = ["by_kind", "growth"]


def _slot_values(obj: object) -> Iterator[tuple[str, object]]:
    for cls in type(obj).__mro__:
        for name in cls.__dict__.get("__slots__", ()):
            try:
                yield name, getattr(obj, name)
            except AttributeError:
                continue


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = cls.__module__.removeprefix("roomcast.")
    return cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"


def _label(obj: object) -> str:
    if isinstance(obj, types.CoroutineType):
        return f"coroutine {obj.__qualname__}"
    return _type_name(obj)


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """``after - before`` per kind."""
    return {kind: size - before.get(kind, 0) for kind, size in after.items()}


def by_kind(own_dir: str) -> dict[str, int]:
    """Bytes of the live objects allocated by code under ``own_dir``, by kind.

    tracemalloc must be tracing (it knows where each object was allocated).
    """

    def own(obj: object) -> bool:
        trace = tracemalloc.get_object_traceback(obj)
        return trace is not None and trace[-1].filename.startswith(own_dir)

    tracked = [obj for obj in gc.get_objects() if own(obj)]
    names: dict[int, str] = {}
    held: list[object] = []
    for obj in tracked:
        owner = _type_name(obj)
        for slot, value in _slot_values(obj):
            if isinstance(value, (dict, tuple, list, set, str, float, int)):
                names.setdefault(id(value), f"{owner}.{slot.lstrip('_')}")
                if not gc.is_tracked(value):
                    held.append(value)
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    for obj in [*tracked, *held]:
        if id(obj) in seen or not own(obj):
            continue
        seen.add(id(obj))
        label = names.get(id(obj)) or _label(obj)
        sizes[label] = sizes.get(label, 0) + sys.getsizeof(obj)
    return sizes
