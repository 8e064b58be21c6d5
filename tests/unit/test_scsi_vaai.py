"""COMPARE AND WRITE (ATS) and the range lock that makes it atomic: what a VMFS host sees."""

from __future__ import annotations

import asyncio
import struct

import pytest

from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import registry, vpd
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.locks import RangeLock
from pyscsit.scsi.lu import MAX_TRANSFER_BYTES, LogicalUnit
from pyscsit.scsi.sense import InvalidFieldInCdb
from pyscsit.scsi.task import Nexus, ScsiResult, Status
from pyscsit.scsi.vaai import parse_compare_and_write
from tests.support.scsi import NX, field_ptr, read16, run, sense_of, write16

ESX1 = NX  # run()'s default nexus: the host most tests speak for
ESX2 = Nexus("iqn.1998-01.com.vmware:esx2", 0x23D000000002, "iqn.2024-01.org.pyscsit:t1")
BLOCKS = 1024
BS = 512


class SlowBackend(MemoryBackend):
    """A backend whose I/O takes time, like a thread-pool pread/pwrite: tasks interleave."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.fua_writes = 0
        self.reading = self.max_reading = 0

    async def read(self, offset: int, length: int) -> bytes:
        self.reading += 1
        self.max_reading = max(self.max_reading, self.reading)
        try:
            await asyncio.sleep(0.002)
            return await super().read(offset, length)
        finally:
            self.reading -= 1

    async def write(self, offset: int, data: memoryview | bytes, fua: bool = False) -> None:
        await asyncio.sleep(0.002)
        self.fua_writes += fua
        await super().write(offset, data, fua)


def make_lu(blocks: int = BLOCKS, bs: int = BS, **kw: object) -> LogicalUnit:
    backend = SlowBackend(blocks * bs)
    return LogicalUnit(backend, LuIdentity.random(), block_size=bs, **kw)  # type: ignore[arg-type]


def caw(lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, b1, lba, n, 0, 0)


async def read_blocks(lu: LogicalUnit, lba: int, n: int) -> bytes:
    r = await run(lu, read16(lba, n))
    assert r.status == Status.GOOD
    return bytes(r.data)


async def fill(lu: LogicalUnit, lba: int, n: int, byte: bytes) -> None:
    assert (await run(lu, write16(lba, n), byte * (n * BS))).status == Status.GOOD


# --- the CDB -----------------------------------------------------------------------------------


def test_parse_compare_and_write() -> None:
    req = parse_compare_and_write(caw(2**40 + 7, 3, 0x18))
    assert (req.lba, req.blocks, req.fua) == (2**40 + 7, 3, True)
    with pytest.raises(InvalidFieldInCdb):
        parse_compare_and_write(caw(0, 1, 0x20))  # WRPROTECT without protection information


def test_cdb_usage_advertises_dpo_and_fua() -> None:
    # libiscsi's CompareAndWrite.DpoFua: DPOFUA in MODE SENSE means the usage data has them
    op = registry.lookup(caw(0, 1))
    assert op is not None and op.usage[1] & 0x18 == 0x18 and op.cdb_len == 16


# --- compare, then write ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 255])
async def test_match_writes_the_new_data(n: int) -> None:
    lu = make_lu()
    await fill(lu, 10, n, b"A")
    r = await run(lu, caw(10, n), b"A" * (n * BS) + b"B" * (n * BS))
    assert r.status == Status.GOOD and r.transfer_length == 2 * n * BS
    assert await read_blocks(lu, 10, n) == b"B" * (n * BS)


async def test_miscompare_reports_the_offset_and_leaves_data_alone() -> None:
    lu = make_lu()
    await fill(lu, 0, 4, b"A")
    verify = bytearray(b"A" * (4 * BS))
    verify[4 * BS - 27] = ord("C")  # libiscsi's miscompare: byte 27 from the end
    r = await run(lu, caw(0, 4), bytes(verify) + b"B" * (4 * BS))
    assert sense_of(r) == (0x0E, 0x1D, 0x00)  # MISCOMPARE DURING VERIFY OPERATION
    assert r.sense[0] & 0x80, "VALID: INFORMATION holds the offset"
    assert struct.unpack_from(">I", r.sense, 3)[0] == 4 * BS - 27
    assert await read_blocks(lu, 0, 4) == b"A" * (4 * BS)


async def test_miscompare_in_descriptor_sense_too() -> None:
    lu = make_lu()
    lu.modes.d_sense = True
    r = await run(lu, caw(0, 1), b"x" + bytes(BS - 1) + bytes(BS))
    assert r.sense[0] == 0x72 and r.sense[1] == 0x0E and r.sense[2:4] == b"\x1d\x00"
    # information descriptor: type 0, VALID, offset 0
    assert r.sense[8:12] == b"\x00\x0a\x80\x00" and r.sense[12:20] == bytes(8)


async def test_unwritten_blocks_read_as_zeros_so_a_garbage_compare_fails() -> None:
    lu = make_lu()
    r = await run(lu, caw(1, 1), b"%" * BS + b"B" * BS)
    assert sense_of(r) == (0x0E, 0x1D, 0x00)
    assert await read_blocks(lu, 1, 1) == bytes(BS)


@pytest.mark.parametrize(("nlb", "data_blocks"), [(1, 4), (3, 4), (2, 3), (1, 1)])
async def test_data_out_must_be_twice_the_blocks(nlb: int, data_blocks: int) -> None:
    lu = make_lu()
    r = await run(lu, caw(0, nlb), bytes(data_blocks * BS))
    assert sense_of(r) == (5, 0x24, 0x00)
    assert field_ptr(r) == (13, None)  # NUMBER OF LOGICAL BLOCKS
    assert await read_blocks(lu, 0, 4) == bytes(4 * BS)


async def test_edtl_larger_than_the_data_that_arrived_is_refused() -> None:
    lu = make_lu()
    r = await run(lu, caw(0, 1), bytes(2 * BS), edtl=4 * BS)
    assert sense_of(r) == (5, 0x24, 0x00)


async def test_zero_blocks_is_good_and_touches_nothing() -> None:
    lu = make_lu()
    r = await run(lu, caw(5, 0))
    assert r.status == Status.GOOD and r.transfer_length == 0


async def test_last_block_ok_beyond_the_end_fails() -> None:
    lu = make_lu()
    ok = await run(lu, caw(BLOCKS - 1, 1), bytes(BS) + b"E" * BS)
    assert ok.status == Status.GOOD
    assert sense_of(await run(lu, caw(BLOCKS - 1, 2), bytes(4 * BS))) == (5, 0x21, 0x00)
    assert sense_of(await run(lu, caw(2**64 - 1, 1), bytes(2 * BS))) == (5, 0x21, 0x00)


async def test_maximum_is_255_and_data_out_must_match_it() -> None:
    bs = 65536  # 32 MiB maximum transfer = 512 blocks: the 1-byte NUMBER OF BLOCKS caps ATS
    lu = make_lu(blocks=600, bs=bs)
    assert lu.max_transfer_blocks == MAX_TRANSFER_BYTES // bs == 512
    page = vpd.vpd_page(lu, ESX1, 0xB0)
    assert page[5] == lu.max_compare_write_blocks == 255  # MAXIMUM COMPARE AND WRITE LENGTH
    r = await run(lu, caw(0, 255), bytes(2 * 256 * bs))
    assert sense_of(r) == (5, 0x24, 0x00) and field_ptr(r) == (13, None)
    assert (await run(lu, caw(0, 255), bytes(2 * 255 * bs))).status == Status.GOOD


async def test_default_maximum_is_255_blocks() -> None:
    assert vpd.vpd_page(make_lu(), ESX1, 0xB0)[5] == 255


async def test_wrprotect_points_at_the_field() -> None:
    r = await run(make_lu(), caw(0, 1, 0x40), bytes(2 * BS))
    assert sense_of(r) == (5, 0x24, 0x00) and field_ptr(r) == (1, 7)


async def test_fua_reaches_the_backend_and_dpo_is_accepted() -> None:
    lu = make_lu()
    backend = lu.backend
    assert isinstance(backend, SlowBackend)
    r = await run(lu, caw(0, 1, 0x18), bytes(BS) + b"F" * BS)
    assert r.status == Status.GOOD and backend.fua_writes == 1


async def test_read_only_lu_is_write_protected() -> None:
    lu = make_lu(read_only=True)
    assert sense_of(await run(lu, caw(0, 1), bytes(2 * BS))) == (7, 0x27, 0x00)


# --- atomicity across I_T nexuses --------------------------------------------------------------


async def test_two_hosts_racing_for_one_ats_lock_exactly_one_wins() -> None:
    """Two ESXi hosts try to take the same on-disk VMFS lock at once: one must lose."""
    for _ in range(20):
        lu = make_lu()
        await fill(lu, 7, 1, b"A")
        r1, r2 = await asyncio.gather(
            run(lu, caw(7, 1), b"A" * BS + b"1" * BS, ESX1),
            run(lu, caw(7, 1), b"A" * BS + b"2" * BS, ESX2),
        )
        statuses = sorted((r1.status, r2.status))
        assert statuses == [Status.GOOD, Status.CHECK_CONDITION]
        loser = r1 if r1.status != Status.GOOD else r2
        assert sense_of(loser) == (0x0E, 0x1D, 0x00)
        winner = b"1" if r1.status == Status.GOOD else b"2"
        assert await read_blocks(lu, 7, 1) == winner * BS


async def test_ats_and_a_plain_write_from_another_host_never_lose_the_write() -> None:
    """CAW then WRITE or WRITE then CAW (miscompare): either way the WRITE's data stays."""
    for delay in (0, 0.001, 0.003):
        lu = make_lu()
        await fill(lu, 3, 2, b"A")

        async def late_write(lu: LogicalUnit = lu, delay: float = delay) -> ScsiResult:
            await asyncio.sleep(delay)  # arrives while the CAW is between compare and write
            return await run(lu, write16(3, 2), b"W" * (2 * BS), ESX2)

        rc, rw = await asyncio.gather(
            run(lu, caw(3, 2), b"A" * (2 * BS) + b"B" * (2 * BS), ESX1), late_write())
        assert rw.status == Status.GOOD
        assert rc.status == Status.GOOD or sense_of(rc)[0] == 0x0E
        assert await read_blocks(lu, 3, 2) == b"W" * (2 * BS)


async def test_without_the_lock_the_race_is_real(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the backend above does interleave, so the two tests prove the lock works."""

    class NoLock(RangeLock):
        def hold(self, offset: int, length: int):  # type: ignore[no-untyped-def,override]
            return _NullHold()

    class _NullHold:
        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *exc: object) -> None:
            return None

    lu = make_lu()
    lu.range_lock = NoLock()
    await fill(lu, 7, 1, b"A")
    r1, r2 = await asyncio.gather(
        run(lu, caw(7, 1), b"A" * BS + b"1" * BS, ESX1),
        run(lu, caw(7, 1), b"A" * BS + b"2" * BS, ESX2),
    )
    assert r1.status == r2.status == Status.GOOD  # both hosts would think they own the lock


async def test_non_overlapping_ats_do_not_wait_for_each_other() -> None:
    lu = make_lu()
    backend = lu.backend
    assert isinstance(backend, SlowBackend)
    await fill(lu, 0, 8, b"A")
    results = await asyncio.gather(*(
        run(lu, caw(i, 1), b"A" * BS + b"Z" * BS, ESX1 if i % 2 else ESX2) for i in range(8)))
    assert all(r.status == Status.GOOD for r in results)
    assert backend.max_reading == 8  # all eight compares were in flight at once


# --- the range lock itself -----------------------------------------------------------------------


async def test_range_lock_overlapping_holders_take_turns_in_arrival_order() -> None:
    lock = RangeLock()
    order: list[str] = []

    async def holder(name: str, off: int, length: int) -> None:
        async with lock.hold(off, length):
            order.append(f"{name}+")
            await asyncio.sleep(0.001)
            order.append(f"{name}-")

    await asyncio.gather(holder("a", 0, 10), holder("b", 5, 10), holder("c", 100, 1),
                         holder("d", 9, 1))
    assert order.index("a-") < order.index("b+") and order.index("a-") < order.index("d+")
    assert order.index("b-") < order.index("d+")  # d overlaps b, which arrived first
    assert order.index("c+") < order.index("a-")  # c overlaps nothing: it did not wait
    assert len(lock) == 0


async def test_range_lock_cancelled_waiter_does_not_block_the_next() -> None:
    lock = RangeLock()
    first = lock.hold(0, 10)
    await first.__aenter__()
    waiter = asyncio.create_task(lock.hold(0, 10).__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await first.__aexit__(None, None, None)
    async with lock.hold(0, 10):  # would hang if the cancelled waiter were still queued
        assert lock.busy(0, 1)
    assert not lock.busy(0, 10) and len(lock) == 0


async def test_range_lock_empty_range_never_waits() -> None:
    lock = RangeLock()
    async with lock.hold(0, 100), lock.hold(50, 0):
        assert lock.busy(50, 1)
