"""Sparse-file backend (LIO's fileio / tgt's bs_rdwr).

Reads try ``preadv(..., RWF_NOWAIT)`` on the event loop first: a page-cache hit costs well under
a microsecond and needs no thread hop. A miss (EAGAIN) or short read finishes on a small thread
pool, as do large and FUA writes, fdatasync, hole punching and SEEK_DATA scans. Small buffered
writes are done on the loop (RWF_NOWAIT where the filesystem has it, else timed: see write()).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import time

from .base import BackendError, Extent
from .posix import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FdBackend,
    fallocate,
    scan_extents,
)

log = logging.getLogger(__name__)

_MAX_EXTENTS = 4096  # per lba_status call

_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_RWF_DSYNC: int = getattr(os, "RWF_DSYNC", 0)

# Small buffered writes without RWF_NOWAIT: inline up to this size, unless one was slow
# (see FileBackend.write; measured in benchmarks/README.md)
INLINE_WRITE_MAX = 64 * 1024
SLOW_WRITE = 0.002  # seconds
POOL_AFTER_SLOW = 1.0  # seconds


class FileBackend(FdBackend):
    pool_name = "pyscsit-file"
    _pool_until = 0.0  # monotonic time until which small writes go to the pool (write())

    def __init__(self, fd: int, path: str, *, read_only: bool = False) -> None:
        super().__init__(fd, path, read_only=read_only, locator="file:" + path)
        self._nowait = _RWF_NOWAIT
        self._nowait_write = _RWF_NOWAIT
        self._zero_range = True

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], size: int | None = None, *, read_only: bool = False
    ) -> FileBackend:
        """Open ``path``; create it sparse at ``size`` bytes if it does not exist.

        An existing file is used as it is (its size wins over ``size``).
        """
        apath = os.path.abspath(os.fspath(path))
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(apath, flags)
        except FileNotFoundError:
            if size is None:
                raise BackendError(
                    f"{apath}: file does not exist; give a size to create it"
                ) from None
            if size <= 0:
                raise BackendError(f"{apath}: size must be positive, not {size}") from None
            try:
                fd = os.open(apath, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.ftruncate(fd, size)  # sparse: no blocks allocated
                if read_only:
                    os.close(fd)
                    fd = os.open(apath, flags)
            except OSError as exc:
                raise BackendError(f"{apath}: cannot create: {exc.strerror}") from exc
            log.info("created sparse file %s (%d bytes)", apath, size)
        except OSError as exc:
            raise BackendError(f"{apath}: cannot open: {exc.strerror}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BackendError(f"{apath}: not a regular file (use the block backend)")
        if size is not None and st.st_size != size:
            log.warning("%s exists with %d bytes; using it as it is (asked %d)",
                        apath, st.st_size, size)
        return cls(fd, apath, read_only=read_only)

    # --- properties -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return os.fstat(self._fd).st_size

    @property
    def supports_unmap(self) -> bool:
        return fallocate is not None and not self.read_only

    @property
    def unmap_reads_zeros(self) -> bool:
        return True  # a punched hole reads back as zeros

    # --- I/O ------------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        if length == 0:
            return buf
        done = 0
        if self._nowait:
            try:
                done = os.preadv(self._fd, [buf], offset, self._nowait)
            except BlockingIOError:
                done = 0
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise BackendError(f"{self.path}: read: {exc.strerror}") from exc
                self._nowait = 0  # filesystem without RWF_NOWAIT support
            if done == length:
                return buf
        await self._in_pool(self._read_rest, buf, offset, done)
        return buf

    def _read_rest(self, buf: bytearray, offset: int, done: int) -> None:
        view = memoryview(buf)
        length = len(buf)
        try:
            while done < length:
                n = os.preadv(self._fd, [view[done:]], offset + done)
                if n == 0:
                    break  # past end of file (it shrank): the rest reads as zeros
                done += n
        except OSError as exc:
            raise BackendError(f"{self.path}: read at {offset}: {exc.strerror}") from exc

    async def write(self, offset: int, data: memoryview | bytes, fua: bool = False) -> None:
        if self.read_only or len(data) == 0:
            await self._write_nothing(fua)
            return
        done = 0
        if self._nowait_write and not fua:
            # Buffered write that would not block (no page-cache throttling, no allocation
            # wait): done inline, like the RWF_NOWAIT read. EAGAIN -> the thread pool.
            try:
                done = os.pwritev(self._fd, [data], offset, self._nowait_write)
            except BlockingIOError:
                done = 0
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise BackendError(f"{self.path}: write: {exc.strerror}") from exc
                self._nowait_write = 0
            if done == len(data):
                return
            if done:
                data, offset = memoryview(data)[done:], offset + done
        elif not fua and len(data) <= INLINE_WRITE_MAX:
            # No RWF_NOWAIT for buffered writes (ext4 on 6.18 says EOPNOTSUPP): a small
            # buffered write is a page-cache copy, ~5 us per 4 KiB against ~28 us for the
            # thread-pool hop, so it is done here unless the kernel has lately been making
            # writers wait (dirty-page throttling, balance_dirty_pages): a write slower than
            # SLOW_WRITE sends small writes to the pool for POOL_AFTER_SLOW seconds.
            now = time.monotonic()
            if now >= self._pool_until:
                self._write_blocking(data, offset, False)
                took = time.monotonic() - now
                if took > SLOW_WRITE:
                    self._pool_until = now + took + POOL_AFTER_SLOW
                    log.debug("%s: a %d-byte write took %.1f ms: small writes go to the "
                              "thread pool for %g s", self.path, len(data), took * 1e3,
                              POOL_AFTER_SLOW)
                return
        await self._in_pool(self._write_blocking, data, offset, fua)

    def _write_blocking(self, data: memoryview | bytes, offset: int, fua: bool) -> None:
        view = memoryview(data)
        done = 0
        length = len(view)
        # RWF_DSYNC makes this one write durable (a per-write FUA) without a second syscall.
        flags = _RWF_DSYNC if fua else 0
        try:
            while done < length:
                done += os.pwritev(self._fd, [view[done:]], offset + done, flags)
            if fua and not flags:
                os.fdatasync(self._fd)
        except OSError as exc:
            raise BackendError(f"{self.path}: write at {offset}: {exc.strerror}") from exc

    def _unmap_blocking(self, offset: int, length: int) -> None:
        """Punch a hole: the range is deallocated and reads back as zeros."""
        assert fallocate is not None
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if fallocate(self._fd, mode, offset, length) != 0:
            err = ctypes.get_errno()
            raise BackendError(f"{self.path}: punch hole: {os.strerror(err)}")

    async def write_zeroes(self, offset: int, length: int, *, deallocate: bool = False) -> None:
        self._check_writable()
        if not length:
            return
        if deallocate and self.supports_unmap:
            await self._in_pool(self._unmap_blocking, offset, length)
            return
        # ZERO_RANGE keeps the range allocated (unwritten extents) without writing it.
        if fallocate is not None and self._zero_range:
            ok = await self._in_pool(self._zero, offset, length)
            if ok:
                return
        await super().write_zeroes(offset, length)

    def _zero(self, offset: int, length: int) -> bool:
        assert fallocate is not None
        mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
        if fallocate(self._fd, mode, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            self._zero_range = False  # filesystem without ZERO_RANGE: write zeros instead
            return False
        raise BackendError(f"{self.path}: zero range: {os.strerror(err)}")

    async def lba_status(self, offset: int, length: int) -> list[Extent]:
        return await self._in_pool(self._scan, offset, length)

    def _scan(self, offset: int, length: int) -> list[Extent]:
        try:
            return scan_extents(self._fd, offset, length, limit=_MAX_EXTENTS)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [Extent(offset, length, True)]  # no SEEK_DATA: report all mapped
            raise BackendError(f"{self.path}: lba status: {exc.strerror}") from exc

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"FileBackend({self.path!r}, {mode})"
