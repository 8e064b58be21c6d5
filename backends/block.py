"""Block-device backend (LIO's iblock / tgt's bs_rdwr on a device node): zvols, LVM volumes,
loop devices, disks, multipath devices.

Geometry comes from the device (BLKGETSIZE64, BLKSSZGET, BLKPBSZGET), read on every call so
that a grown device grows the LU. UNMAP prefers ``fallocate(PUNCH_HOLE)`` on the device node:
the kernel turns it into a write-zeroes request that may deallocate (a loop device punches its
backing file, a thin volume drops its chunks) and guarantees zeros afterwards, so LBPRZ holds.
Devices without write-zeroes get BLKDISCARD, and read-zeros is claimed only where the device
says discards zero (BLKDISCARDZEROES) or the caller knows it (zvols).

``direct=True`` opens the device with O_DIRECT: buffers are page-aligned anonymous mmaps and
every offset and length must be a multiple of the device's logical block size (the LU's block
size must be at least that; config.py checks). FUA is RWF_DSYNC, SYNCHRONIZE CACHE fdatasync.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct

from .base import BackendError, Extent
from .posix import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FdBackend,
    fallocate,
    libc_function,
    scan_extents,
)

log = logging.getLogger(__name__)

# <linux/fs.h>: _IO(0x12, n) and _IOR(0x12, 114, size_t)
BLKROGET = 0x125E
BLKSSZGET = 0x1268
BLKDISCARD = 0x1277
BLKDISCARDZEROES = 0x127C
BLKPBSZGET = 0x127B
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272
_RWF_DSYNC: int = getattr(os, "RWF_DSYNC", 0)

SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4

_sync_file_range = libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64,
                                                     ctypes.c_int64, ctypes.c_uint])


def _ioctl_uint(fd: int, request: int, fmt: str = "I") -> int:
    buf = bytearray(struct.calcsize(fmt))
    fcntl.ioctl(fd, request, buf)
    return int(struct.unpack(fmt, buf)[0])


def _sysfs_queue(rdev: int, name: str) -> int:
    """A number from /sys/dev/block/MAJ:MIN/queue/NAME (0 when absent: a partition's queue
    lives in its parent, which the ``..`` fallback finds)."""
    base = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    for folder in (f"{base}/queue", f"{base}/../queue"):
        try:
            with open(f"{folder}/{name}", encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
    return 0


def _loop_backing(rdev: int) -> tuple[str, int] | None:
    """(backing file, offset) when the device is a loop device: it can say which blocks are
    allocated, through its file's SEEK_DATA / SEEK_HOLE."""
    base = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/loop"
    try:
        with open(f"{base}/backing_file", encoding="utf-8") as f:
            backing = f.read().rstrip("\n")
        with open(f"{base}/offset", encoding="ascii") as f:
            offset = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if backing.endswith(" (deleted)") or not os.path.isfile(backing):
        return None
    return backing, offset


class BlockBackend(FdBackend):
    pool_name = "pyscsit-block"

    def __init__(self, fd: int, path: str, *, read_only: bool = False, direct: bool = False,
                 locator: str | None = None, discard_zeroes: bool | None = None) -> None:
        super().__init__(fd, path, read_only=read_only, locator=locator or "block:" + path)
        self.direct = direct
        st = os.fstat(fd)
        self._rdev = st.st_rdev
        self.logical_block_size = _ioctl_uint(fd, BLKSSZGET, "i")
        self._physical = _ioctl_uint(fd, BLKPBSZGET)
        self._write_zeroes = _sysfs_queue(self._rdev, "write_zeroes_max_bytes") > 0
        self._discard = _sysfs_queue(self._rdev, "discard_max_bytes") > 0
        if discard_zeroes is None:
            try:
                discard_zeroes = bool(_ioctl_uint(fd, BLKDISCARDZEROES))
            except OSError:
                discard_zeroes = False
        self._discard_zeroes = discard_zeroes
        # What LBPRZ promises is fixed at open: a later fallback must keep the promise.
        self._zeros = self._write_zeroes or discard_zeroes
        self._loop = _loop_backing(self._rdev)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False,
             direct: bool = False, locator: str | None = None,
             discard_zeroes: bool | None = None) -> BlockBackend:
        """Open a block device exclusively (O_EXCL: a mounted device is refused, as is one
        another exporter holds)."""
        apath = os.path.abspath(os.fspath(path))
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC | os.O_EXCL
        if direct:
            flags |= os.O_DIRECT
        try:
            fd = os.open(apath, flags)
        except FileNotFoundError:
            raise BackendError(f"{apath}: device does not exist") from None
        except OSError as exc:
            why = "device is in use (mounted, or held by another program)" \
                if exc.errno == errno.EBUSY else exc.strerror
            if exc.errno == errno.EINVAL and direct:
                why = "O_DIRECT is not supported here (set direct: false)"
            raise BackendError(f"{apath}: cannot open: {why}") from None
        try:
            if not stat.S_ISBLK(os.fstat(fd).st_mode):
                raise BackendError(f"{apath}: not a block device (use the file backend)")
            if not read_only and _ioctl_uint(fd, BLKROGET, "i"):
                raise BackendError(f"{apath}: the device is read-only (set read_only: true)")
            return cls(fd, apath, read_only=read_only, direct=direct, locator=locator,
                       discard_zeroes=discard_zeroes)
        except OSError as exc:
            os.close(fd)
            raise BackendError(f"{apath}: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise

    # --- geometry ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return _ioctl_uint(self._fd, BLKGETSIZE64, "Q")

    @property
    def physical_block_size(self) -> int:
        return max(self._physical, self.logical_block_size)

    @property
    def supports_unmap(self) -> bool:
        return not self.read_only and (self._discard or self._write_zeroes)

    @property
    def unmap_reads_zeros(self) -> bool:
        return self._zeros

    # --- I/O -------------------------------------------------------------------------------------

    def _check_aligned(self, offset: int, length: int) -> None:
        if self.direct and (offset | length) % self.logical_block_size:
            raise BackendError(f"{self.path}: O_DIRECT I/O at {offset}+{length} is not aligned "
                               f"to {self.logical_block_size} bytes")

    async def read(self, offset: int, length: int) -> bytearray | memoryview:
        if length == 0:
            return bytearray()
        self._check_aligned(offset, length)
        return await self._in_pool(self._read_blocking, offset, length)

    def _read_blocking(self, offset: int, length: int) -> bytearray | memoryview:
        # O_DIRECT wants a page-aligned buffer: an anonymous mmap is one.
        buf: bytearray | memoryview = memoryview(mmap.mmap(-1, length)) if self.direct \
            else bytearray(length)
        view = memoryview(buf)
        done = 0
        try:
            while done < length:
                n = os.preadv(self._fd, [view[done:]], offset + done)
                if n == 0:  # the device shrank under us
                    raise BackendError(f"{self.path}: read at {offset + done}: end of device")
                done += n
        except OSError as exc:
            raise BackendError(f"{self.path}: read at {offset}: {exc.strerror}") from exc
        return buf

    async def write(self, offset: int, data: memoryview | bytes, fua: bool = False) -> None:
        if self.read_only or len(data) == 0:
            await self._write_nothing(fua)
            return
        self._check_aligned(offset, len(data))
        await self._in_pool(self._write_blocking, offset, data, fua)

    def _write_blocking(self, offset: int, data: memoryview | bytes, fua: bool) -> None:
        view = memoryview(data)
        if self.direct:
            aligned = mmap.mmap(-1, len(view))
            aligned.write(view)
            view = memoryview(aligned)
        flags = _RWF_DSYNC if fua else 0  # a per-write FUA, one syscall
        done = 0
        try:
            while done < len(view):
                done += os.pwritev(self._fd, [view[done:]], offset + done, flags)
            if fua and not flags:
                os.fdatasync(self._fd)
        except OSError as exc:
            raise BackendError(f"{self.path}: write at {offset}: {exc.strerror}") from exc

    def _unmap_blocking(self, offset: int, length: int) -> None:
        try:
            if self._write_zeroes and fallocate is not None:
                mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                if fallocate(self._fd, mode, offset, length) == 0:
                    return
                err = ctypes.get_errno()
                if err not in (errno.EOPNOTSUPP, errno.ENODEV):
                    raise OSError(err, os.strerror(err))
                self._write_zeroes = False  # the device says it cannot: discard from now on
            # Where discard does not zero but zeros were promised, zero explicitly.
            zero = self._zeros and not self._discard_zeroes
            if not zero and not self._discard:
                raise BackendError(f"{self.path}: the device supports neither discard nor "
                                   "write-zeroes")
            fcntl.ioctl(self._fd, BLKZEROOUT if zero else BLKDISCARD,
                        struct.pack("QQ", offset, length))
        except OSError as exc:
            raise BackendError(f"{self.path}: unmap at {offset}+{length}: {exc.strerror}") \
                from exc

    async def write_zeroes(self, offset: int, length: int, *, deallocate: bool = False) -> None:
        self._check_writable()
        if not length:
            return
        if deallocate and self.supports_unmap and self._zeros:
            await self.unmap(offset, length)
            return
        self._check_aligned(offset, length)
        await self._in_pool(self._zeroout, offset, length)

    def _zeroout(self, offset: int, length: int) -> None:
        # BLKZEROOUT keeps the range allocated (the kernel asks the device not to unmap);
        # it offloads to WRITE ZEROES where the device has it and writes zero pages otherwise.
        try:
            fcntl.ioctl(self._fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        except OSError as exc:
            raise BackendError(f"{self.path}: zero out at {offset}+{length}: {exc.strerror}") \
                from exc

    async def lba_status(self, offset: int, length: int) -> list[Extent]:
        if self._loop is None:
            return [Extent(offset, length, True)]  # the device cannot say: all mapped
        return await self._in_pool(self._loop_status, offset, length)

    def _loop_status(self, offset: int, length: int) -> list[Extent]:
        assert self._loop is not None
        backing, shift = self._loop
        # Buffered writes may still sit in the device's page cache, not yet in the file:
        # write that range through first, or fresh data would be reported as a hole.
        if not self.direct and not self.read_only:
            how = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
            if _sync_file_range is None or _sync_file_range(self._fd, offset, length, how):
                os.fdatasync(self._fd)
        try:
            fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return [Extent(offset, length, True)]
        try:
            file_size = os.fstat(fd).st_size
            end = min(offset + length + shift, file_size)
            extents = scan_extents(fd, offset + shift, max(0, end - offset - shift), shift)
            covered = sum(e.length for e in extents)
            if covered < length:  # past the backing file's end: nothing is stored there
                extents.append(Extent(offset + covered, length - covered, False))
            return extents
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [Extent(offset, length, True)]
            raise BackendError(f"{self.path}: lba status: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"BlockBackend({self.path!r}, {mode}{', direct' if self.direct else ''})"
