"""BlockBackend on real loop devices (losetup; we run as root): geometry from the device,
byte-exact I/O, discards that free the backing file's blocks, O_DIRECT, resize, read-only,
exclusive open, and block LUs built from a config.

This kernel has no ZFS or device-mapper, so loop devices are the real block devices here.
A missing losetup is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyscsit.backends.base import BackendError
from pyscsit.backends.block import BlockBackend
from pyscsit.config import ConfigError, build_model, parse_config
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Nexus, ScsiCommand, Status

MiB = 1 << 20

Loop = Callable[..., tuple[str, Path]]


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[Loop]:
    """Attach a sparse backing file to a free loop device; every one is detached after."""
    if shutil.which("losetup") is None:
        pytest.fail("losetup is not installed (Debian package util-linux / mount)")
    devices: list[str] = []

    def make(size: int = 64 * MiB, sector: int = 512, name: str = "backing.img") -> \
            tuple[str, Path]:
        img = tmp_path / name
        with open(img, "wb") as f:
            f.truncate(size)
        p = subprocess.run(["losetup", "-f", "--show", "-b", str(sector), str(img)],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            pytest.fail(f"losetup failed (tests need root and loop devices): {p.stderr}")
        devices.append(p.stdout.strip())
        return devices[-1], img

    yield make
    for dev in devices:
        subprocess.run(["losetup", "-d", dev], check=False)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_geometry_comes_from_the_device(make_loop: Loop) -> None:
    dev, _ = make_loop(64 * MiB)
    b = BlockBackend.open(dev)
    try:
        assert b.size == 64 * MiB
        assert b.logical_block_size == 512
        assert b.physical_block_size >= 512
        assert b.supports_unmap and b.unmap_reads_zeros  # loop: write-zeroes punches holes
        assert b.locator == f"block:{dev}"
    finally:
        b.close()
    dev4k, _ = make_loop(16 * MiB, sector=4096, name="4kn.img")
    b = BlockBackend.open(dev4k)
    try:
        assert b.logical_block_size == 4096 and b.physical_block_size == 4096
    finally:
        b.close()


async def test_io_is_byte_exact_and_lands_in_the_backing_file(make_loop: Loop) -> None:
    dev, img = make_loop(16 * MiB)
    b = BlockBackend.open(dev)
    try:
        data = os.urandom(3 * 4096 + 512)
        await b.write(MiB + 512, memoryview(data), fua=True)
        assert bytes(await b.read(MiB + 512, len(data))) == data
        assert bytes(await b.read(0, 4096)) == bytes(4096)
        await b.write(8 * MiB, data)
        await b.flush()
    finally:
        b.close()
    raw = img.read_bytes()
    assert raw[MiB + 512:MiB + 512 + len(data)] == data
    assert raw[8 * MiB:8 * MiB + len(data)] == data


async def test_unmap_frees_the_backing_files_blocks_and_reads_zeros(make_loop: Loop) -> None:
    dev, img = make_loop(32 * MiB)
    b = BlockBackend.open(dev)
    try:
        await b.write(0, os.urandom(8 * MiB), fua=True)
        before = allocated(img)
        assert before >= 8 * MiB
        extents = await b.lba_status(0, 16 * MiB)
        assert extents[0].mapped and extents[0].length >= 8 * MiB - 4096
        await b.unmap(MiB, 4 * MiB)
        assert allocated(img) <= before - 4 * MiB  # the discard reached the file
        assert bytes(await b.read(MiB, 4 * MiB)) == bytes(4 * MiB)
        # LBA status through the loop device's backing file: the hole is reported
        status = await b.lba_status(0, 8 * MiB)
        unmapped = [(e.offset, e.length) for e in status if not e.mapped]
        assert unmapped == [(MiB, 4 * MiB)]
        # WRITE SAME-style zeroing without deallocation keeps the blocks allocated
        await b.write_zeroes(6 * MiB, MiB, deallocate=False)
        assert bytes(await b.read(6 * MiB, MiB)) == bytes(MiB)
        await b.write_zeroes(6 * MiB, MiB, deallocate=True)
        assert allocated(img) <= before - 5 * MiB
    finally:
        b.close()


async def test_o_direct_round_trip_and_alignment(make_loop: Loop) -> None:
    dev, img = make_loop(16 * MiB, sector=4096)
    b = BlockBackend.open(dev, direct=True)
    try:
        data = os.urandom(64 * 1024)
        await b.write(4096, bytearray(data))  # not page-aligned: copied to an aligned buffer
        got = await b.read(4096, len(data))
        assert bytes(got) == data
        with pytest.raises(BackendError, match="not aligned to 4096"):
            await b.read(512, 4096)
    finally:
        b.close()
    with open(img, "rb") as f:  # noqa: ASYNC230 - a test's check, after the I/O
        f.seek(4096)
        assert f.read(len(data)) == data  # O_DIRECT: on the device, not only in a cache


async def test_resizing_the_device_changes_the_lu_capacity(make_loop: Loop) -> None:
    dev, img = make_loop(16 * MiB)
    b = BlockBackend.open(dev)
    lu = LogicalUnit(b, LuIdentity.random())
    try:
        assert lu.num_blocks == 16 * MiB // 512
        os.truncate(img, 48 * MiB)
        subprocess.run(["losetup", "-c", dev], check=True)  # noqa: ASYNC221
        assert b.size == 48 * MiB
        assert lu.refresh_capacity() == 48 * MiB // 512
        nx = Nexus("iqn.2026-11.i:x", 1, "iqn.t")
        # READ CAPACITY(16) shows the new size
        r = await lu.execute(ScsiCommand(bytes((0x9E, 0x10)) + bytes(8) + struct.pack(">I", 32)
                                         + bytes(2), nx))
        assert r.status == Status.GOOD
        assert struct.unpack(">Q", bytes(r.data)[:8])[0] == 48 * MiB // 512 - 1
    finally:
        b.close()


async def test_read_only_refuses_writes_and_exclusive_open(make_loop: Loop,
                                                           tmp_path: Path) -> None:
    dev, _ = make_loop(8 * MiB)
    b = BlockBackend.open(dev, read_only=True)
    try:
        with pytest.raises(BackendError, match="in use"):
            BlockBackend.open(dev)  # O_EXCL: one exporter at a time
        lu = LogicalUnit(b, LuIdentity.random())
        nx = Nexus("iqn.2026-11.i:x", 1, "iqn.t")
        write10 = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0)
        r = await lu.execute(ScsiCommand(write10, nx, data_out=memoryview(bytes(512)),
                                         expected_length=512))
        assert r.status == Status.CHECK_CONDITION
        assert r.sense is not None and r.sense[2] & 0x0F == 0x07  # DATA PROTECT
        with pytest.raises(BackendError, match="read-only"):
            await b.write(0, b"x" * 512)
    finally:
        b.close()
    with pytest.raises(BackendError, match="not a block device"):
        BlockBackend.open(tmp_path / "backing.img")
    with pytest.raises(BackendError, match="does not exist"):
        BlockBackend.open(tmp_path / "nope")


def test_config_builds_block_lus_and_checks_o_direct_block_size(make_loop: Loop,
                                                                tmp_path: Path) -> None:
    dev, _ = make_loop(8 * MiB, sector=4096)

    def config(**lun: object) -> dict[str, object]:
        return {"state_dir": str(tmp_path / "state"), "portals": ["127.0.0.1:0"],
                "targets": [{"iqn": "iqn.2026-11.org.test:t", "auth": "none",
                             "luns": {0: {"backend": "block", "path": dev, **lun}}}]}

    model = build_model(parse_config(config(block_size=4096, direct=True), source="c.yaml",
                                     base_dir=tmp_path))
    lu = model.targets["iqn.2026-11.org.test:t"].luns[0]
    try:
        assert lu.block_size == 4096 and lu.num_blocks == 2048 and lu.backend.direct
        identity = lu.identity
    finally:
        lu.backend.close()
    # the identity follows the device across restarts
    model = build_model(parse_config(config(read_only=True), source="c.yaml", base_dir=tmp_path))
    lu = model.targets["iqn.2026-11.org.test:t"].luns[0]
    try:
        assert lu.identity == identity and lu.read_only
    finally:
        lu.backend.close()
    with pytest.raises(ConfigError) as e:
        build_model(parse_config(config(direct=True), source="c.yaml", base_dir=tmp_path))
    assert str(e.value) == (f"c.yaml: targets[0].luns.0.path: {dev}: block_size 512 is smaller "
                            "than the device's 4096-byte sectors, which O_DIRECT needs (set "
                            "block_size, or direct: false)")
