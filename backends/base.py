"""The Backend interface every backing store implements (LIO's backstore / tgt's bs_*)."""

from __future__ import annotations

import abc
from dataclasses import dataclass


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

    async def lba_status(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, True)]

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
