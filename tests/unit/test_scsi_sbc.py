"""Block commands through LogicalUnit.execute on a MemoryBackend: what an initiator sees."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyscsit.backends.base import BackendError
from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.sbc import first_difference, parse_read_capacity, parse_rw, parse_sync_cache
from pyscsit.scsi.sense import InvalidFieldInCdb
from pyscsit.scsi.task import Direction, Status
from tests.support.scsi import field_ptr, read16, run, sense_of, write16

BLOCKS = 1024
BS = 512


def make_lu(blocks: int = BLOCKS, bs: int = BS, **kw: object) -> LogicalUnit:
    return LogicalUnit(MemoryBackend(blocks * bs), LuIdentity.random(), block_size=bs, **kw)  # type: ignore[arg-type]


def r10(lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x28, b1, lba, 0, n, 0)


def w10(lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, b1, lba, 0, n, 0)


def r12(lba: int, n: int) -> bytes:
    return struct.pack(">BBIIBB", 0xA8, 0, lba, n, 0, 0)


def w12(lba: int, n: int) -> bytes:
    return struct.pack(">BBIIBB", 0xAA, 0, lba, n, 0, 0)


def r6(lba: int, n: int) -> bytes:
    return bytes((0x08, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, n, 0))


def w6(lba: int, n: int) -> bytes:
    return bytes((0x0A, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF, n, 0))


# --- parse functions -------------------------------------------------------------------------


def test_parse_rw_all_sizes() -> None:
    assert parse_rw(r10(0x01020304, 9, 0x18))[:3] == (0x01020304, 9, 0x18)
    assert parse_rw(r10(0, 1, 0x18)).fua and parse_rw(r10(0, 1, 0x18)).dpo
    assert parse_rw(read16(2**40, 70000))[:2] == (2**40, 70000)
    assert parse_rw(r12(77, 5))[:2] == (77, 5)
    assert parse_rw(r6(0x1FFFFF, 3))[:2] == (0x1FFFFF, 3)
    assert parse_rw(r6(5, 0)).blocks == 256  # SBC-3: READ(6) length 0 is 256 blocks
    assert parse_rw(r10(0, 0)).blocks == 0  # READ(10) length 0 is no transfer
    assert parse_rw(r10(0, 1, 0x60)).protect == 3


def test_parse_sync_cache_and_read_capacity() -> None:
    assert parse_sync_cache(struct.pack(">BBIBHB", 0x35, 2, 10, 0, 5, 0)) == (10, 5, True)
    assert parse_sync_cache(struct.pack(">BBQIBB", 0x91, 0, 7, 3, 0, 0)) == (7, 3, False)
    with pytest.raises(InvalidFieldInCdb):
        parse_read_capacity(struct.pack(">BBIHBB", 0x25, 0, 1, 0, 0, 0))  # LBA without PMI
    assert parse_read_capacity(struct.pack(">BBIHBB", 0x25, 0, 1, 0, 1, 0)).pmi


@given(st.binary(min_size=1, max_size=3000), st.binary(min_size=1, max_size=3000))
def test_first_difference_matches_naive(a: bytes, b: bytes) -> None:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    naive = next((i for i in range(n) if a[i] != b[i]), -1)
    assert first_difference(a, b) == naive


# --- READ / WRITE ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rd", "wr"), [(r6, w6), (r10, w10), (r12, w12), (read16, write16)])
async def test_write_then_read_round_trip(rd, wr) -> None:  # type: ignore[no-untyped-def]
    lu = make_lu()
    payload = bytes(range(256)) * 4  # two blocks
    r = await run(lu, wr(10, 2), payload)
    assert r.status == Status.GOOD and r.transfer_length == 1024
    r = await run(lu, rd(10, 2))
    assert r.status == Status.GOOD and bytes(r.data) == payload and r.transfer_length == 1024


async def test_read_last_block_ok_one_beyond_fails() -> None:
    lu = make_lu()
    assert (await run(lu, r10(BLOCKS - 1, 1))).status == Status.GOOD
    r = await run(lu, r10(BLOCKS - 1, 2))
    assert sense_of(r) == (5, 0x21, 0)
    assert r.transfer_length == 2 * BS  # residuals follow the CDB even on failure
    assert sense_of(await run(lu, read16(2**64 - 1, 1))) == (5, 0x21, 0)
    assert sense_of(await run(lu, w10(BLOCKS, 1), bytes(BS))) == (5, 0x21, 0)


async def test_zero_length_transfers() -> None:
    lu = make_lu()
    r = await run(lu, r10(0, 0))
    assert r.status == Status.GOOD and len(r.data) == 0 and r.transfer_length == 0
    assert sense_of(await run(lu, r10(BLOCKS + 1, 0))) == (5, 0x21, 0)
    assert (await run(lu, write16(0, 0))).status == Status.GOOD
    # READ(6) length 0 means 256 blocks
    r = await run(lu, r6(0, 0))
    assert len(r.data) == 256 * BS


async def test_protect_fields_rejected_with_field_pointer() -> None:
    lu = make_lu()
    for cdb in (r10(0, 1, 0x20), write16(0, 1, 0xE0)):
        r = await run(lu, cdb, bytes(BS))
        assert sense_of(r) == (5, 0x24, 0)
        assert field_ptr(r) == (1, 7)


async def test_flags_dpo_fua_fua_nv_accepted() -> None:
    lu = make_lu()
    for b1 in (0x10, 0x08, 0x0A, 0x02, 0x1A):
        assert (await run(lu, r10(0, 1, b1))).status == Status.GOOD
        assert (await run(lu, w10(0, 1, b1), bytes(BS))).status == Status.GOOD


async def test_reserved_bit_reported_with_pointer() -> None:
    lu = make_lu()
    cdb = bytearray(w10(0, 1))
    cdb[1] |= 0x04  # reserved in WRITE(10)
    r = await run(lu, bytes(cdb), bytes(BS))
    assert sense_of(r) == (5, 0x24, 0) and field_ptr(r) == (1, 2)
    cdb = bytearray(r10(0, 1))
    cdb[9] = 0x04  # NACA
    r = await run(lu, bytes(cdb))
    assert sense_of(r) == (5, 0x24, 0) and field_ptr(r) == (9, 2)


async def test_transfer_above_block_limits_max_is_invalid_field() -> None:
    lu = make_lu(blocks=1 << 17)
    r = await run(lu, read16(0, lu.max_transfer_blocks + 1))
    assert sense_of(r) == (5, 0x24, 0) and field_ptr(r)[0] == 10


async def test_read_only_lu_refuses_writes() -> None:
    lu = make_lu(read_only=True)
    r = await run(lu, w10(0, 1), bytes(BS))
    assert sense_of(r) == (7, 0x27, 0)
    assert (await run(lu, r10(0, 1))).status == Status.GOOD


# --- short / long Data-Out (libiscsi iSCSIResiduals) ------------------------------------------


async def test_write_without_data_is_good_and_writes_nothing() -> None:
    lu = make_lu()
    await run(lu, w10(0, 1), b"a" * BS)
    r = await run(lu, w10(0, 1), None)  # EDTL 0
    assert r.status == Status.GOOD and r.transfer_length == BS
    assert bytes((await run(lu, r10(0, 1))).data) == b"a" * BS


async def test_write_edtl_below_tl_writes_only_what_arrived() -> None:
    lu = make_lu()
    await run(lu, w10(0, 2), b"a" * 2 * BS)
    r = await run(lu, w10(0, 2), b"b" * BS)  # TL 2 blocks, EDTL 1 block
    assert r.status == Status.GOOD and r.transfer_length == 2 * BS
    assert bytes((await run(lu, r10(0, 2))).data) == b"b" * BS + b"a" * BS
    r = await run(lu, w10(0, 1), b"c" * 200)  # partial block: nothing written
    assert r.status == Status.GOOD and r.transfer_length == BS
    assert bytes((await run(lu, r10(0, 1))).data) == b"b" * BS


async def test_write_edtl_above_tl_writes_only_tl() -> None:
    lu = make_lu()
    await run(lu, w10(0, 2), b"a" * 2 * BS)
    r = await run(lu, w10(0, 1), b"b" * 2 * BS)  # EDTL 2 blocks, TL 1 block
    assert r.status == Status.GOOD and r.transfer_length == BS
    assert bytes((await run(lu, r10(0, 2))).data) == b"b" * BS + b"a" * BS


# --- VERIFY ---------------------------------------------------------------------------------


def v10(lba: int, n: int, bytchk: int, b1: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x2F, b1 | (bytchk << 1), lba, 0, n, 0)


def v16(lba: int, n: int, bytchk: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8F, bytchk << 1, lba, n, 0, 0)


async def test_verify_bytchk0_range_only() -> None:
    lu = make_lu()
    r = await run(lu, v10(0, 8, 0))
    assert r.status == Status.GOOD and r.transfer_length == 0
    assert lu.inspect(v10(0, 8, 0)).direction == Direction.NONE
    assert sense_of(await run(lu, v16(BLOCKS - 1, 2, 0))) == (5, 0x21, 0)


async def test_verify_bytchk1_match_and_miscompare_offset() -> None:
    lu = make_lu()
    data = bytes(range(256)) * 8  # 4 blocks
    await run(lu, w10(4, 4), data)
    assert lu.inspect(v10(4, 4, 1)) .transfer_length == 4 * BS
    assert (await run(lu, v10(4, 4, 1), data)).status == Status.GOOD
    bad = bytearray(data)
    bad[1500] ^= 0x58
    r = await run(lu, v16(4, 4, 1), bytes(bad))
    assert sense_of(r) == (0x0E, 0x1D, 0x00)
    assert r.sense[0] & 0x80 and struct.unpack(">I", r.sense[3:7])[0] == 1500


async def test_verify_bytchk3_one_block_against_all() -> None:
    lu = make_lu()
    await run(lu, w10(0, 3), b"z" * 3 * BS)
    assert lu.inspect(v10(0, 3, 3)).transfer_length == BS
    assert (await run(lu, v10(0, 3, 3), b"z" * BS)).status == Status.GOOD
    r = await run(lu, v10(0, 3, 3), b"z" * (BS - 1) + b"y")
    assert sense_of(r)[0] == 0x0E


async def test_verify_invalid_bytchk_and_vrprotect() -> None:
    lu = make_lu()
    r = await run(lu, v10(0, 1, 2))
    assert sense_of(r) == (5, 0x24, 0) and field_ptr(r) == (1, 2)
    r = await run(lu, v10(0, 1, 0, 0x20))
    assert sense_of(r) == (5, 0x24, 0) and field_ptr(r) == (1, 7)


# --- SYNCHRONIZE CACHE, READ CAPACITY -------------------------------------------------------


async def test_synchronize_cache_range_checked() -> None:
    lu = make_lu()
    assert (await run(lu, struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0))).status == Status.GOOD
    r = await run(lu, struct.pack(">BBQIBB", 0x91, 0, BLOCKS - 1, 2, 0, 0))
    assert sense_of(r) == (5, 0x21, 0)


async def test_read_capacity10_and_16() -> None:
    lu = make_lu()
    r = await run(lu, bytes(10).replace(b"\0", b"\x25", 1))
    assert bytes(r.data) == struct.pack(">II", BLOCKS - 1, BS)
    rc16 = bytes((0x9E, 0x10)) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    r = await run(lu, rc16)
    d = bytes(r.data)
    assert len(d) == 32 and struct.unpack(">QI", d[:12]) == (BLOCKS - 1, BS)
    assert d[13] & 0x0F == 3  # 4096-byte physical blocks, 512-byte logical
    short = bytes((0x9E, 0x10)) + bytes(8) + struct.pack(">I", 12) + bytes(2)
    assert len((await run(lu, short)).data) == 12
    zero = bytes((0x9E, 0x10)) + bytes(14)
    r = await run(lu, zero)
    assert r.status == Status.GOOD and len(r.data) == 0


async def test_read_capacity10_saturates_for_huge_lu() -> None:
    class Huge(MemoryBackend):
        @property
        def size(self) -> int:
            return (1 << 33) * 512

    lu = LogicalUnit(Huge(4096), LuIdentity.random())
    r = await run(lu, bytes((0x25,)) + bytes(9))
    assert bytes(r.data)[:4] == b"\xff\xff\xff\xff"


async def test_unknown_service_action_points_at_it() -> None:
    lu = make_lu()
    r = await run(lu, bytes((0x9E, 0x1F)) + bytes(14))
    assert sense_of(r) == (5, 0x24, 0) and field_ptr(r) == (1, 4)


async def test_backend_failures_become_medium_errors() -> None:
    class Broken(MemoryBackend):
        async def read(self, offset: int, length: int) -> bytes:
            raise BackendError("boom")

        async def write(self, offset: int, data: memoryview | bytes, fua: bool = False) -> None:
            raise BackendError("boom")

    lu = LogicalUnit(Broken(1 << 20), LuIdentity.random())
    assert sense_of(await run(lu, r10(3, 1))) == (3, 0x11, 0)
    assert sense_of(await run(lu, w10(3, 1), bytes(BS))) == (3, 0x0C, 0)


async def test_unexpected_exception_is_internal_target_failure() -> None:
    class Buggy(MemoryBackend):
        async def read(self, offset: int, length: int) -> bytes:
            raise RuntimeError("bug")

    lu = LogicalUnit(Buggy(1 << 20), LuIdentity.random())
    assert sense_of(await run(lu, r10(0, 1))) == (4, 0x44, 0)


def test_inspect_reports_cdb_byte_counts() -> None:
    lu = make_lu(bs=4096)
    assert lu.inspect(r10(0, 3)) .transfer_length == 3 * 4096
    assert lu.inspect(r10(0, 3)).direction == Direction.READ
    assert lu.inspect(w6(0, 0)).transfer_length == 256 * 4096
    assert lu.inspect(write16(0, 2)).direction == Direction.WRITE
    assert lu.inspect(bytes((0xC5,)) + bytes(15)).known is False
