"""The Backend interface every backing store implements (LIO's backstore / tgt's bs_*)."""

from __future__ import annotations

import abc
from dataclasses import dataclass

_PATTERN_CHUNK = 1 << 20  # bytes per write when repeating a pattern


class BackendError(Exception):
    """An I/O failure the SCSI layer turns into MEDIUM ERROR / HARDWARE ERROR sense."""


@dataclass(frozen=True, slots=True)
class Extent:
    offset: int
    length: int
    mapped: bool


class Backend(abc.ABC):
    """Byte-addressed storage. Offsets and lengths are in bytes and already range-checked."""

    #: a stable name for this store (e.g. "file:/srv/a.img"), used to key LU identity
    locator: str = ""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Current size in bytes (may change: growing a file grows the LU)."""

    @property
    def physical_block_size(self) -> int:
        return 4096

    @property
    def supports_unmap(self) -> bool:
        return False

    @property
    def unmap_reads_zeros(self) -> bool:
        return True

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """Return exactly ``length`` bytes (holes read as zeros)."""

    @abc.abstractmethod
    async def write(self, offset: int, data: memoryview | bytes, fua: bool = False) -> None:
        """Write all of ``data``; with ``fua`` it is durable before returning."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make every completed write durable (SYNCHRONIZE CACHE)."""

    async def unmap(self, offset: int, length: int) -> None:
        raise BackendError("unmap not supported")

    async def write_zeroes(self, offset: int, length: int, *, deallocate: bool = False) -> None:
        """Make the range read back as zeros (WRITE SAME with a zero block, SANITIZE).

        With ``deallocate`` the range may be unmapped instead of written, when unmapped
        blocks read back as zeros; without it the range stays mapped. Stores with a cheaper
        way (fallocate ZERO_RANGE, BLKZEROOUT) override this.
        """
        if deallocate and self.supports_unmap and self.unmap_reads_zeros:
            await self.unmap(offset, length)
            return
        await self.write_pattern(offset, length, bytes(4096))

    async def write_pattern(self, offset: int, length: int, pattern: bytes, *,
                            fua: bool = False) -> None:
        """Write ``pattern`` over and over across the range; ``length`` is a multiple of
        ``len(pattern)``. Written a chunk at a time, so memory stays bounded; with ``fua``
        each chunk is durable before the next is written."""
        reps = max(1, _PATTERN_CHUNK // len(pattern))
        chunk = memoryview(pattern * reps)
        end = offset + length
        while offset < end:
            n = min(len(chunk), end - offset)
            await self.write(offset, chunk[:n], fua)
            offset += n

    async def lba_status(self, offset: int, length: int) -> list[Extent]:
        """Mapped/deallocated runs from ``offset``, in order, at least one. A backend may stop
        early (bounded work on a fragmented store): the runs then end before offset+length."""
        return [Extent(offset, length, True)]

    def close(self) -> None:
        """Release what the store holds (descriptors, threads); a no-op by default."""
