"""Sparse-file backend (LIO's fileio / tgt's bs_rdwr).

Reads try ``preadv(..., RWF_NOWAIT)`` on the event loop first: a page-cache hit costs well under
a microsecond and needs no thread hop. A miss (EAGAIN) or short read finishes on a small thread
pool, as do writes, fdatasync, hole punching and SEEK_DATA scans, so the loop never blocks.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor

from .base import Backend, BackendError, Extent

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_MAX_EXTENTS = 4096  # per lba_status call
_WORKERS = 4

_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_RWF_DSYNC: int = getattr(os, "RWF_DSYNC", 0)


def _load_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


class FileBackend(Backend):
    def __init__(self, fd: int, path: str, *, read_only: bool = False) -> None:
        self._fd = fd
        self.path = path
        self.read_only = read_only
        self.locator = "file:" + path
        self._pool: ThreadPoolExecutor | None = None
        self._nowait = _RWF_NOWAIT
        self._nowait_write = _RWF_NOWAIT
        self._zero_range = True
        self._closed = False

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
        return _fallocate is not None and not self.read_only

    @property
    def unmap_reads_zeros(self) -> bool:
        return True  # a punched hole reads back as zeros

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="pyscsit-file")
        return self._pool

    async def _run(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), fn, *args)  # type: ignore[arg-type]

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
        await self._run(self._read_rest, buf, offset, done)
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
        if self.read_only:
            raise BackendError(f"{self.path}: read-only")
        if len(data) == 0:
            if fua:
                await self.flush()
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
        await self._run(self._write_blocking, data, offset, fua)

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

    async def flush(self) -> None:
        if self.read_only:
            return
        await self._run(self._flush_blocking)

    def _flush_blocking(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise BackendError(f"{self.path}: fdatasync: {exc.strerror}") from exc

    async def unmap(self, offset: int, length: int) -> None:
        if not self.supports_unmap:
            raise BackendError(f"{self.path}: unmap not supported")
        if length:
            await self._run(self._punch, offset, length)

    def _punch(self, offset: int, length: int) -> None:
        assert _fallocate is not None
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if _fallocate(self._fd, mode, offset, length) != 0:
            err = ctypes.get_errno()
            raise BackendError(f"{self.path}: punch hole: {os.strerror(err)}")

    async def write_zeroes(self, offset: int, length: int, *, deallocate: bool = False) -> None:
        if self.read_only:
            raise BackendError(f"{self.path}: read-only")
        if not length:
            return
        if deallocate and self.supports_unmap:
            await self._run(self._punch, offset, length)
            return
        # ZERO_RANGE keeps the range allocated (unwritten extents) without writing it.
        if _fallocate is not None and self._zero_range:
            ok = await self._run(self._zero, offset, length)
            if ok:
                return
        await super().write_zeroes(offset, length)

    def _zero(self, offset: int, length: int) -> bool:
        assert _fallocate is not None
        mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
        if _fallocate(self._fd, mode, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            self._zero_range = False  # filesystem without ZERO_RANGE: write zeros instead
            return False
        raise BackendError(f"{self.path}: zero range: {os.strerror(err)}")

    async def lba_status(self, offset: int, length: int) -> list[Extent]:
        result = await self._run(self._scan, offset, length)
        assert isinstance(result, list)
        return result

    def _scan(self, offset: int, length: int) -> list[Extent]:
        """Mapped/unmapped runs of [offset, offset+length) via SEEK_DATA / SEEK_HOLE; at most
        _MAX_EXTENTS of them, so a badly fragmented file costs bounded work."""
        end = offset + length
        out: list[Extent] = []
        pos = offset
        try:
            while pos < end and len(out) < _MAX_EXTENTS:
                try:
                    data = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                    data = end  # ENXIO: no data at or after pos, all hole
                if data > pos:
                    stop = min(data, end)
                    out.append(Extent(pos, stop - pos, False))
                    pos = stop
                    continue
                hole = os.lseek(self._fd, pos, os.SEEK_HOLE)
                stop = min(hole, end)
                if stop <= pos:  # defensive: never loop forever
                    stop = end
                out.append(Extent(pos, stop - pos, True))
                pos = stop
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [Extent(offset, length, True)]  # no SEEK_DATA: report all mapped
            raise BackendError(f"{self.path}: lba status: {exc.strerror}") from exc
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        os.close(self._fd)

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"FileBackend({self.path!r}, {mode})"
