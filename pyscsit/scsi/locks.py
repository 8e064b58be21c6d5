"""A per-LU lock on byte ranges of the medium.

COMPARE AND WRITE (SBC-3 5.2) must read, compare and write its blocks as one atomic operation
with respect to every other command that writes them, from any I_T nexus. Commands run as
concurrent asyncio tasks, so every write path holds the range it writes while its backend
I/O is in flight; ATS holds its range across the read, the compare and the write.

Waiting is first come, first served among overlapping holders: a new holder waits for every
earlier holder or waiter whose range overlaps its own, and for nothing else. Because a holder
only ever waits for entries that registered before it, there is no deadlock as long as a
task holds one range of one LU at a time. The uncontended path allocates no future.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class RangeHold:
    """One holder of ``[start, end)``; an async context manager from ``RangeLock.hold``."""

    __slots__ = ("_lock", "_released", "end", "start")

    def __init__(self, lock: RangeLock, start: int, end: int) -> None:
        self._lock = lock
        self.start = start
        self.end = end
        self._released: asyncio.Future[None] | None = None

    def overlaps(self, start: int, end: int) -> bool:
        # empty ranges overlap nothing
        return self.start < end and start < self.end and start < end and self.start < self.end

    def _released_future(self) -> asyncio.Future[None]:
        if self._released is None:
            self._released = asyncio.get_running_loop().create_future()
        return self._released

    async def __aenter__(self) -> Self:
        lock = self._lock
        blockers = [
            e._released_future() for e in lock._entries if e.overlaps(self.start, self.end)
        ]
        lock._entries.append(self)
        if blockers:
            try:
                for fut in blockers:
                    if not fut.done():
                        # shield: a cancelled waiter must not cancel the holder's future
                        await asyncio.shield(fut)
            except BaseException:
                self._release()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        self._lock._entries.remove(self)
        if self._released is not None and not self._released.done():
            self._released.set_result(None)


class RangeLock:
    """Byte-range lock of one logical unit."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[RangeHold] = []  # holders and waiters, oldest first

    def hold(self, offset: int, length: int) -> RangeHold:
        """``async with lock.hold(offset, length):`` - exclusive use of those bytes.

        A zero-length range holds nothing and never waits.
        """
        return RangeHold(self, offset, offset + max(0, length))

    def busy(self, offset: int, length: int) -> bool:
        """True when some holder or waiter overlaps the range (for tests and diagnostics)."""
        end = offset + length
        return any(e.overlaps(offset, end) for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)
