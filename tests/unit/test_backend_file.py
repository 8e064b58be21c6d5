"""FileBackend on tmp_path: sparse creation, I/O, FUA, growth, hole punching, LBA status."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from pyscsit.backends.base import BackendError, Extent
from pyscsit.backends.file import FileBackend
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Nexus, ScsiCommand, Status

MiB = 1 << 20


def test_creates_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    b = FileBackend.open(path, 64 * MiB)
    try:
        st = path.stat()
        assert st.st_size == 64 * MiB
        assert st.st_blocks * 512 < MiB  # sparse: nothing allocated
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert b.size == 64 * MiB and b.locator == "file:" + str(path.resolve())
    finally:
        b.close()


def test_existing_file_used_as_is_and_missing_without_size(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"x" * 8192)
    b = FileBackend.open(path, 1 << 30)
    assert b.size == 8192
    b.close()
    with pytest.raises(BackendError, match="does not exist"):
        FileBackend.open(tmp_path / "missing.img")
    with pytest.raises(BackendError, match="directory"):
        FileBackend.open(tmp_path)


async def test_write_read_round_trip_and_fua(tmp_path: Path) -> None:
    b = FileBackend.open(tmp_path / "d.img", MiB)
    try:
        data = os.urandom(3 * 4096)
        await b.write(4096, memoryview(data), fua=True)
        assert bytes(await b.read(4096, len(data))) == data
        assert bytes(await b.read(0, 4096)) == bytes(4096)  # hole reads zeros
        await b.flush()
        os.posix_fadvise(b._fd, 0, 0, os.POSIX_FADV_DONTNEED)  # force the thread-pool path
        assert bytes(await b.read(4096, len(data))) == data
    finally:
        b.close()
    assert (tmp_path / "d.img").read_bytes()[4096 : 4096 + len(data)] == data


async def test_read_only_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    FileBackend.open(path, MiB).close()
    b = FileBackend.open(path, read_only=True)
    try:
        with pytest.raises(BackendError):
            await b.write(0, b"x" * 512)
        assert not b.supports_unmap
        lu = LogicalUnit(b, LuIdentity.random())
        assert lu.read_only
    finally:
        b.close()


async def test_growing_the_file_grows_the_lu(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    b = FileBackend.open(path, MiB)
    lu = LogicalUnit(b, LuIdentity.random())
    nx = Nexus("iqn.i", 1, "iqn.t")
    try:
        assert lu.num_blocks == MiB // 512
        os.truncate(path, 2 * MiB)
        r = await lu.execute(ScsiCommand(struct.pack(">BBIBHB", 0x28, 0, 3000, 0, 1, 0), nx))
        assert r.status == Status.GOOD  # beyond the old end, inside the new one
        r = await lu.execute(ScsiCommand(bytes((0x25,)) + bytes(9), nx))
        assert struct.unpack(">I", bytes(r.data)[:4])[0] == 2 * MiB // 512 - 1
    finally:
        b.close()


async def test_unmap_punches_holes_and_lba_status(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    b = FileBackend.open(path, 4 * MiB)
    try:
        assert b.supports_unmap
        await b.write(0, b"\xab" * (2 * MiB))
        await b.flush()
        allocated = path.stat().st_blocks
        await b.unmap(MiB // 2, MiB)
        assert path.stat().st_blocks < allocated
        assert path.stat().st_size == 4 * MiB  # KEEP_SIZE
        data = await b.read(0, 2 * MiB)
        assert data[MiB // 2 : MiB // 2 + MiB] == bytes(MiB)
        assert data[: MiB // 2] == b"\xab" * (MiB // 2)
        ext = await b.lba_status(0, 4 * MiB)
        assert ext == [
            Extent(0, MiB // 2, True),
            Extent(MiB // 2, MiB, False),
            Extent(MiB + MiB // 2, MiB // 2, True),
            Extent(2 * MiB, 2 * MiB, False),  # past the last data: ENXIO -> hole
        ]
        assert await b.lba_status(MiB, 4096) == [Extent(MiB, 4096, False)]
    finally:
        b.close()


async def test_lu_on_file_backend_end_to_end(tmp_path: Path) -> None:
    b = FileBackend.open(tmp_path / "d.img", MiB)
    lu = LogicalUnit(b, LuIdentity.random(), block_size=4096)
    nx = Nexus("iqn.i", 1, "iqn.t")
    try:
        payload = os.urandom(8192)
        w = struct.pack(">BBIBHB", 0x2A, 0x08, 10, 0, 2, 0)  # WRITE(10) FUA
        r = await lu.execute(ScsiCommand(w, nx, data_out=memoryview(payload)))
        assert r.status == Status.GOOD
        r = await lu.execute(ScsiCommand(struct.pack(">BBIBHB", 0x28, 0, 10, 0, 2, 0), nx))
        assert bytes(r.data) == payload
        r = await lu.execute(ScsiCommand(struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0), nx))
        assert r.status == Status.GOOD
    finally:
        b.close()
