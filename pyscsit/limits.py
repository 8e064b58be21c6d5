"""Resource limits a hostile or broken initiator runs into, sans-IO.

``Limits`` holds the numbers (config key ``limits:``). ``Admission`` decides, for a new TCP
connection, whether it may stay and which not-yet-logged-in connections make room for it:
a connection that has not finished login is always the first to go (the oldest idle one),
so a flood of idle connections, even from the same address, never locks out a real initiator;
only connections in full feature phase make the caps refuse a newcomer. ``StallWatch``
finds tasks whose Data-Out has stopped coming. ``Throttle`` keeps a warning that a flood
triggers to one line per interval. Time is passed in; nothing here touches a socket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 1024  # TCP connections, in total
    max_connections_per_address: int = 64  # from one source address
    max_pending_logins: int = 64  # connections that have not finished login
    max_sessions_per_initiator: int = 64  # sessions one initiator name may hold
    r2t_timeout: float = 30.0  # seconds a task may wait for Data-Out without any arriving
    max_buffered_bytes: int = 64 << 20  # Data-Out buffers + read data in flight, per connection
    max_text_bytes: int = 65536  # login text (all Login Request data segments) per login


class Admission(Generic[K]):
    """Who may hold a connection. ``K`` is the server's per-connection object.

    ``admit`` counts the newcomer and returns the connections to drop to make room: for each
    cap the newcomer would exceed (per address, total, pending logins), a pending connection:
    one that never sent a byte before one that did, then the one idle longest; from the
    newcomer's address for the per-address cap. When no pending
    connection can go, the newcomer is refused (``admit`` returns None) and nothing changes.
    """

    def __init__(self, limits: Limits, idle_key: Callable[[K], tuple[bool, float]]) -> None:
        self.limits = limits
        self._idle_key = idle_key  # smaller: dropped first (has it sent anything, last input)
        self._address: dict[K, str] = {}
        self._pending: dict[K, None] = {}  # insertion order: oldest first
        self._per_address: Counter[str] = Counter()

    @property
    def connections(self) -> int:
        return len(self._address)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def count(self, address: str) -> int:
        return self._per_address[address]

    def admit(self, conn: K, address: str) -> list[K] | None:
        lim = self.limits
        here = self._per_address[address] + 1
        total = len(self._address) + 1
        pending = len(self._pending) + 1
        pool = dict(self._pending)
        victims: list[K] = []
        while True:  # each pass empties one slot of ``pool`` or ends: bounded by its size
            if here > lim.max_connections_per_address:
                victim = self._idlest(pool, address)
            elif total > lim.max_connections or pending > lim.max_pending_logins:
                victim = self._idlest(pool, None)
            else:
                break
            if victim is None:
                return None
            del pool[victim]
            victims.append(victim)
            total, pending = total - 1, pending - 1
            if self._address[victim] == address:
                here -= 1
        for v in victims:
            self.release(v)
        self._address[conn] = address
        self._pending[conn] = None
        self._per_address[address] += 1
        return victims

    def _idlest(self, pool: dict[K, None], address: str | None) -> K | None:
        found = [k for k in pool if address is None or self._address[k] == address]
        # min() keeps the first of equals: dict order is arrival order, oldest first
        return min(found, key=self._idle_key) if found else None

    def logged_in(self, conn: K) -> None:
        """Login finished: the connection no longer makes way for newcomers."""
        self._pending.pop(conn, None)

    def release(self, conn: K) -> None:
        address = self._address.pop(conn, None)
        if address is None:
            return
        self._pending.pop(conn, None)
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]


class StallWatch:
    """Tasks waiting for Data-Out (RFC 7143 §11.8 R2T, §3.2.4.2 unsolicited data) that have
    received nothing for ``timeout`` seconds.

    ``check`` is given every waiting task as (ITT, bytes received so far) and returns the
    ITTs of those whose count has not moved for ``timeout``; a task missing from one call is
    forgotten. ``reset`` restarts every clock (while the server itself is not reading, the
    peer cannot be blamed for silence).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._seen: dict[int, tuple[int, float]] = {}

    def check(self, waiting: Iterable[tuple[int, int]], now: float) -> list[int]:
        seen: dict[int, tuple[int, float]] = {}
        stalled: list[int] = []
        for itt, received in waiting:
            last = self._seen.get(itt)
            if last is None or last[0] != received:
                seen[itt] = (received, now)
            else:
                seen[itt] = last
                if now - last[1] >= self.timeout:
                    stalled.append(itt)
        self._seen = seen
        return stalled

    def reset(self) -> None:
        self._seen.clear()

    def __bool__(self) -> bool:
        return bool(self._seen)


class Throttle:
    """At most one message per ``interval`` seconds per key; counts what it held back."""

    MAX_KEYS = 1024

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet. Otherwise the number of messages suppressed since the last one."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self.MAX_KEYS:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0
