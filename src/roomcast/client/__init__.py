"""The Python client of roomcast: connect, subscribe, iterate; reconnects on its own.

Needs the `client` extra (it brings the `websockets` client) and runs on
asyncio and on trio:

```python
import roomcast.client

async with roomcast.client.connect("ws://127.0.0.1:8000/ws", token=token) as conn:
    sub = await conn.subscribe("team:t1", history=50)
    async for event in sub:
        ...
```

See the [Python client guide](../howto/python-client.md).
"""

from ._backoff import DEFAULT_MAX_DELAY as DEFAULT_MAX_DELAY
from ._backoff import DEFAULT_MIN_DELAY as DEFAULT_MIN_DELAY
from ._backoff import Backoff as Backoff
from ._connection import DEFAULT_BUFFER_SIZE as DEFAULT_BUFFER_SIZE
from ._connection import DEFAULT_OPEN_TIMEOUT as DEFAULT_OPEN_TIMEOUT
from ._connection import DEFAULT_REQUEST_TIMEOUT as DEFAULT_REQUEST_TIMEOUT
from ._connection import Connection as Connection
from ._connection import TokenProvider as TokenProvider
from ._connection import connect as connect
from ._events import Event as Event
from ._events import Gap as Gap
from ._events import HistoryPage as HistoryPage
from ._events import Member as Member
from ._events import PresenceChange as PresenceChange
from ._events import Received as Received
from ._events import Recovery as Recovery
from ._events import State as State
from ._events import StateChange as StateChange
from ._state import ErrorListener as ErrorListener
from ._state import StateListener as StateListener
from ._subscription import Subscription as Subscription

__all__ = [
    "DEFAULT_MAX_DELAY",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MIN_DELAY",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "Backoff",
    "Connection",
    "ErrorListener",
    "Event",
    "Gap",
    "HistoryPage",
    "Member",
    "PresenceChange",
    "Received",
    "Recovery",
    "State",
    "StateChange",
    "StateListener",
    "Subscription",
    "TokenProvider",
    "connect",
]
