"""What the file and block backends share: libc calls found through ctypes, SEEK_DATA /
SEEK_HOLE scans, and the plumbing of a backend that owns one descriptor and a small thread pool
for its blocking calls (so the event loop never blocks)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from .base import Backend, BackendError, Extent

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
WORKERS = 4  # threads per backend

_T = TypeVar("_T")


def libc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """``name`` from the C library, returning int, with errno kept for ``ctypes.get_errno``;
    None where the library has no such function."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


fallocate = libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                        ctypes.c_int64])


def scan_extents(fd: int, start: int, length: int, shift: int = 0,
                 limit: int | None = None) -> list[Extent]:
    """Mapped/unmapped runs of ``fd``'s bytes [start, start+length), via SEEK_DATA/SEEK_HOLE;
    at most ``limit`` of them, so a badly fragmented file costs bounded work.

    Extents are reported ``shift`` bytes lower (a loop device's offset into its file).
    OSError (EINVAL, EOPNOTSUPP: no SEEK_DATA here) is the caller's to handle.
    """
    end = start + length
    out: list[Extent] = []
    pos = start
    while pos < end and (limit is None or len(out) < limit):
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data = end  # ENXIO: no data at or after pos, all hole
        if data > pos:
            stop = min(data, end)
            out.append(Extent(pos - shift, stop - pos, False))
        else:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            stop = min(hole, end) if hole > pos else end  # defensive: never loop forever
            out.append(Extent(pos - shift, stop - pos, True))
        pos = stop
    return out


class FdBackend(Backend):
    """A backend that owns one descriptor: its thread pool, flush, unmap and close.

    Subclasses say how to deallocate a range (``_unmap_blocking``) and when they can
    (``supports_unmap``).
    """

    #: thread names in the pool, for profiles and ``ps -L``
    pool_name: ClassVar[str] = "pyscsit-fd"

    def __init__(self, fd: int, path: str, *, read_only: bool, locator: str) -> None:
        self._fd = fd
        self.path = path
        self.read_only = read_only
        self.locator = locator
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix=self.pool_name)
        return self._pool

    async def _in_pool(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on the backend's threads: blocking calls never run on the loop."""
        if self._closed:
            raise BackendError(f"{self.path}: closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor(), fn, *args)

    def _check_writable(self) -> None:
        if self.read_only:
            raise BackendError(f"{self.path}: read-only")

    async def _write_nothing(self, fua: bool) -> None:
        """What write() does when it writes no bytes (called for a read-only store or empty
        data only, so the hot path pays one test): refuse, or flush for an empty FUA write."""
        self._check_writable()
        if fua:
            await self.flush()

    async def flush(self) -> None:
        if not self.read_only:
            await self._in_pool(self._flush_blocking)

    def _flush_blocking(self) -> None:
        try:
            os.fdatasync(self._fd)  # on a block device: a cache flush to the medium
        except OSError as exc:
            raise BackendError(f"{self.path}: fdatasync: {exc.strerror}") from exc

    async def unmap(self, offset: int, length: int) -> None:
        if not self.supports_unmap:
            raise BackendError(f"{self.path}: unmap not supported")
        if length:
            await self._in_pool(self._unmap_blocking, offset, length)

    def _unmap_blocking(self, offset: int, length: int) -> None:
        raise BackendError(f"{self.path}: unmap not supported")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        os.close(self._fd)
