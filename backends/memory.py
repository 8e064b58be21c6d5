"""RAM backend, for tests and benchmarks. Contents are lost when the process exits."""

from __future__ import annotations

import itertools

from .base import Backend, BackendError, Extent

_ids = itertools.count(1)


class MemoryBackend(Backend):
    def __init__(self, size: int, *, read_only: bool = False) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self.read_only = read_only
        self.locator = f"memory:{next(_ids)}"

    @property
    def size(self) -> int:
        return len(self._buf)

    @property
    def supports_unmap(self) -> bool:
        return not self.read_only

    async def read(self, offset: int, length: int) -> bytes:
        # A copy: a later write must not change data that is still queued for Data-In.
        return self._view[offset : offset + length].tobytes()

    async def write(self, offset: int, data: memoryview | bytes, fua: bool = False) -> None:
        if self.read_only:
            raise BackendError("memory backend is read-only")
        self._view[offset : offset + len(data)] = data

    async def flush(self) -> None:
        return None

    async def unmap(self, offset: int, length: int) -> None:
        if self.read_only:
            raise BackendError("memory backend is read-only")
        self._view[offset : offset + length] = bytes(length)

    async def lba_status(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, True)]
