"""Thin provisioning, SANITIZE and WRITE ATOMIC through LogicalUnit.execute: what an initiator
sees (data read back, sense codes, VPD limits) on memory and sparse-file backends."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from pyscsit.backends.base import Extent
from pyscsit.backends.file import FileBackend
from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import provisioning as pv
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.sense import InvalidFieldInParameterList, ParameterListLengthError
from pyscsit.scsi.task import ScsiResult, Status
from tests.support.scsi import run, sense_of

BS = 512
BLOCKS = 4096  # 2 MiB
MiB = 1 << 20


def mem_lu(blocks: int = BLOCKS) -> LogicalUnit:
    return LogicalUnit(MemoryBackend(blocks * BS), LuIdentity.random(), block_size=BS)


@pytest.fixture
def file_lu(tmp_path: Path) -> LogicalUnit:
    lu = LogicalUnit(FileBackend.open(tmp_path / "d.img", BLOCKS * BS), LuIdentity.random(),
                     block_size=BS)
    yield lu
    lu.backend.close()


def good(r: ScsiResult) -> ScsiResult:
    assert r.status == Status.GOOD, r.sense.hex()
    return r


def w10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, n, 0)


def r10(lba: int, n: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, n, 0)


def unmap_cdb(plen: int, anchor: bool = False) -> bytes:
    return struct.pack(">BB4xBHB", 0x42, 1 if anchor else 0, 0, plen, 0)


def unmap_list(*descs: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in descs)
    return struct.pack(">HH4x", 6 + len(body), len(body)) + body


def ws10(lba: int, n: int, unmap: bool = False, anchor: bool = False, b1: int = 0) -> bytes:
    b1 |= (0x08 if unmap else 0) | (0x10 if anchor else 0)
    return struct.pack(">BBIBHB", 0x41, b1, lba, 0, n, 0)


def ws16(lba: int, n: int, unmap: bool = False, ndob: bool = False) -> bytes:
    b1 = (0x08 if unmap else 0) | (0x01 if ndob else 0)
    return struct.pack(">BBQIBB", 0x93, b1, lba, n, 0, 0)


def gls(lba: int, alloc: int = 4096) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba, alloc, 0, 0)


def gls_descs(r: ScsiResult) -> list[tuple[int, int, int]]:
    data = bytes(r.data)
    n = (struct.unpack_from(">I", data)[0] - 4) // 16
    return [struct.unpack_from(">QIB", data, 8 + 16 * i) for i in range(n)]


def sanitize_cdb(sa: int, plen: int = 0, immed: bool = False) -> bytes:
    return struct.pack(">BB5xHB", 0x48, sa | (0x80 if immed else 0), plen, 0)


def overwrite_params(pattern: bytes, count: int = 1, invert: bool = False) -> bytes:
    return bytes((count | (0x80 if invert else 0), 0)) + struct.pack(">H", len(pattern)) + pattern


def wa16(lba: int, n: int, b1: int = 0, boundary: int = 0) -> bytes:
    return struct.pack(">BBQHHBB", 0x9C, b1, lba, boundary, n, 0, 0)


def inquiry_vpd(page: int) -> bytes:
    return struct.pack(">BBBHB", 0x12, 1, page, 255, 0)


# --- what the LU advertises ----------------------------------------------------------------


async def test_thin_file_lu_advertises_unmap_and_zeroed_reads(file_lu: LogicalUnit) -> None:
    rc = good(await run(file_lu, struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))).data
    assert rc[14] & 0xC0 == 0xC0  # LBPME and LBPRZ
    lbp = good(await run(file_lu, inquiry_vpd(0xB2))).data
    assert lbp[5] & 0xE4 == 0xE4  # LBPU, LBPWS, LBPWS10, LBPRZ
    assert not lbp[5] & 0x02  # ANC_SUP: no anchored LBAs
    assert lbp[6] & 0x07 == 2  # thin provisioned


async def test_block_limits_agree_with_what_the_commands_accept(file_lu: LogicalUnit) -> None:
    bl = bytes(good(await run(file_lu, inquiry_vpd(0xB0))).data)
    assert bl[3] == 0x3C
    assert not bl[4] & 0x01  # WSNZ clear: WRITE SAME of 0 blocks runs to the end
    max_unmap, max_desc = struct.unpack_from(">II", bl, 20)
    assert (max_unmap, max_desc) == (file_lu.max_unmap_blocks, file_lu.max_unmap_descriptors)
    assert struct.unpack_from(">Q", bl, 36)[0] == pv.MAX_WRITE_SAME_BLOCKS
    max_atomic, align, gran = struct.unpack_from(">III", bl, 44)
    assert 0 < max_atomic <= struct.unpack_from(">I", bl, 8)[0]
    assert (align, gran) == (0, 0)  # any LBA, any length up to the maximum
    # the largest advertised atomic write is accepted, one more block is not
    n = max_atomic
    big = mem_lu(2 * n)
    good(await run(big, wa16(0, n), bytes(n * BS)))
    if n < 0xFFFF:
        assert sense_of(await run(big, wa16(0, n + 1), bytes((n + 1) * BS)))[:2] == (5, 0x24)
    else:
        assert n == 0xFFFF  # the 16-bit TRANSFER LENGTH of WRITE ATOMIC(16) is the limit


async def test_block_device_characteristics_say_reads_work_after_erase() -> None:
    bdc = good(await run(mem_lu(), inquiry_vpd(0xB1))).data
    assert bdc[7] >> 6 == 1 and (bdc[7] >> 4) & 3 == 1  # WABEREQ, WACEREQ = 01b


# --- UNMAP ---------------------------------------------------------------------------------


async def test_unmap_deallocates_and_reads_zero(file_lu: LogicalUnit) -> None:
    good(await run(file_lu, w10(0, 64), b"a" * 64 * BS))
    plist = unmap_list((0, 16), (32, 8))
    good(await run(file_lu, unmap_cdb(len(plist)), plist))
    data = bytes(good(await run(file_lu, r10(0, 64))).data)
    assert data[: 16 * BS] == bytes(16 * BS)
    assert data[16 * BS : 32 * BS] == b"a" * 16 * BS
    assert data[32 * BS : 40 * BS] == bytes(8 * BS)
    assert data[40 * BS :] == b"a" * 24 * BS
    descs = gls_descs(good(await run(file_lu, gls(0))))
    assert descs[0] == (0, 16, pv.PROVISIONING_DEALLOCATED)
    assert descs[1] == (16, 16, pv.PROVISIONING_MAPPED)
    assert descs[2] == (32, 8, pv.PROVISIONING_DEALLOCATED)


async def test_unmap_zero_length_and_zero_descriptors_are_not_errors() -> None:
    lu = mem_lu()
    good(await run(lu, unmap_cdb(0)))
    empty = unmap_list()
    good(await run(lu, unmap_cdb(len(empty)), empty))
    at_end = unmap_list((BLOCKS, 0))  # 0 blocks at the capacity names no LBA
    good(await run(lu, unmap_cdb(len(at_end)), at_end))


async def test_unmap_errors() -> None:
    lu = mem_lu()
    beyond = unmap_list((BLOCKS - 1, 2))
    assert sense_of(await run(lu, unmap_cdb(len(beyond)), beyond)) == (5, 0x21, 0)
    anchored = unmap_list((0, 1))
    assert sense_of(await run(lu, unmap_cdb(len(anchored), anchor=True), anchored)) == \
        (5, 0x24, 0)
    assert sense_of(await run(lu, unmap_cdb(4), b"\0" * 4)) == (5, 0x1A, 0)
    many = unmap_list(*((i, 1) for i in range(lu.max_unmap_descriptors + 1)))
    assert sense_of(await run(lu, unmap_cdb(len(many)), many)) == (5, 0x26, 0)


async def test_unmap_on_read_only_lu_is_write_protected() -> None:
    lu = LogicalUnit(MemoryBackend(BLOCKS * BS, read_only=True), LuIdentity.random())
    plist = unmap_list((0, 1))
    assert sense_of(await run(lu, unmap_cdb(len(plist)), plist))[:2] == (7, 0x27)


def test_unmap_parameter_list_ignores_a_partial_descriptor() -> None:
    plist = unmap_list((5, 2), (9, 3))
    assert pv.parse_unmap_params(plist[:-4], len(plist)) == [pv.UnmapDescriptor(5, 2)]
    with pytest.raises(ParameterListLengthError):
        pv.parse_unmap_params(b"\0" * 7, 7)
    with pytest.raises(InvalidFieldInParameterList):
        pv.check_unmap_descriptors([pv.UnmapDescriptor(0, 10)] * 2, 100, 8, 15)


# --- WRITE SAME ----------------------------------------------------------------------------


@pytest.mark.parametrize("cdb", [ws10, ws16])
async def test_write_same_repeats_the_block(cdb: object) -> None:
    lu = mem_lu()
    block = bytes(range(256)) * 2
    good(await run(lu, cdb(10, 300), block))  # type: ignore[operator]
    data = bytes(good(await run(lu, r10(9, 302))).data)
    assert data[:BS] == bytes(BS) and data[-BS:] == bytes(BS)
    assert data[BS:-BS] == block * 300


async def test_write_same_unmap_of_zeros_deallocates(file_lu: LogicalUnit) -> None:
    good(await run(file_lu, w10(0, 128), b"\xff" * 128 * BS))
    good(await run(file_lu, ws16(0, 64, unmap=True), bytes(BS)))
    assert bytes(good(await run(file_lu, r10(0, 64))).data) == bytes(64 * BS)
    assert gls_descs(good(await run(file_lu, gls(0))))[0] == (0, 64, 1)


async def test_write_same_zeros_without_unmap_stay_mapped(file_lu: LogicalUnit) -> None:
    good(await run(file_lu, ws10(0, 64), bytes(BS)))
    assert bytes(good(await run(file_lu, r10(0, 64))).data) == bytes(64 * BS)
    assert gls_descs(good(await run(file_lu, gls(0))))[0][2] == pv.PROVISIONING_MAPPED


async def test_write_same_unmap_deallocates_whatever_the_block(file_lu: LogicalUnit) -> None:
    good(await run(file_lu, w10(0, 16), b"x" * 16 * BS))
    good(await run(file_lu, ws10(8, 8, unmap=True), b"x" * BS))
    assert bytes(good(await run(file_lu, r10(8, 8))).data) == bytes(8 * BS)
    assert gls_descs(good(await run(file_lu, gls(8))))[0] == (8, BLOCKS - 8, 1)


async def test_write_same_unmap_on_a_store_that_cannot_unmap_writes() -> None:
    lu = mem_lu()
    lu.lbpws = lu.lbpws10 = False
    good(await run(lu, ws10(8, 8, unmap=True), b"x" * BS))
    assert bytes(good(await run(lu, r10(8, 8))).data) == b"x" * 8 * BS


async def test_write_same_zero_blocks_runs_to_the_end() -> None:
    lu = mem_lu()
    good(await run(lu, ws16(BLOCKS - 3, 0), b"z" * BS))
    assert bytes(good(await run(lu, r10(BLOCKS - 4, 4))).data) == bytes(BS) + b"z" * 3 * BS


async def test_write_same_ndob_writes_zeros_without_data() -> None:
    lu = mem_lu()
    good(await run(lu, w10(0, 4), b"q" * 4 * BS))
    r = good(await run(lu, ws16(0, 4, ndob=True)))
    assert r.transfer_length == 0
    assert bytes(good(await run(lu, r10(0, 4))).data) == bytes(4 * BS)


async def test_write_same_errors() -> None:
    lu = mem_lu()
    z = bytes(BS)
    assert sense_of(await run(lu, ws10(BLOCKS, 1), z)) == (5, 0x21, 0)
    assert sense_of(await run(lu, ws10(BLOCKS - 1, 2), z)) == (5, 0x21, 0)
    assert sense_of(await run(lu, ws10(BLOCKS + 1, 0), z)) == (5, 0x21, 0)
    assert sense_of(await run(lu, ws16(2**64 - 1, 1), z)) == (5, 0x21, 0)
    assert sense_of(await run(lu, ws10(0, 1, anchor=True), z)) == (5, 0x24, 0)
    assert sense_of(await run(lu, ws10(0, 1, unmap=True, anchor=True), z)) == (5, 0x24, 0)
    assert sense_of(await run(lu, ws10(0, 1, b1=0x20), z)) == (5, 0x24, 0)  # WRPROTECT
    # Data-Out must be exactly one block
    assert sense_of(await run(lu, ws10(0, 1, unmap=True), z[: BS // 2]))[:2] == (5, 0x24)
    assert sense_of(await run(lu, ws10(0, 1, unmap=True), z, edtl=2 * BS))[:2] == (5, 0x24)


# --- GET LBA STATUS ------------------------------------------------------------------------


async def test_get_lba_status_beyond_the_end_is_out_of_range() -> None:
    lu = mem_lu()
    for lba in (BLOCKS, BLOCKS + 1, 2**63, 2**64 - 1):
        assert sense_of(await run(lu, gls(lba, 24))) == (5, 0x21, 0)


async def test_get_lba_status_last_block_and_truncation(file_lu: LogicalUnit) -> None:
    descs = gls_descs(good(await run(file_lu, gls(BLOCKS - 1, 24))))
    assert descs == [(BLOCKS - 1, 1, pv.PROVISIONING_DEALLOCATED)]
    r = good(await run(file_lu, gls(0, 4)))
    assert len(r.data) == 4  # allocation length truncates, not an error
    assert good(await run(file_lu, gls(0, 0))).data == b""


def test_lba_status_descriptors_round_partial_holes_to_mapped() -> None:
    ext = [Extent(0, 700, True), Extent(700, 2000, False), Extent(2700, 1396, True)]
    # the hole covers whole blocks 2..4 (1024..2560); blocks 0, 1 and 5.. hold data
    assert pv.lba_status_descriptors(ext, 512, 0, 8, 10) == [
        (0, 2, 0), (2, 3, 1), (5, 3, 0)]
    assert pv.lba_status_descriptors(ext, 512, 3, 8, 1) == [(3, 2, 1)]


# --- SANITIZE ------------------------------------------------------------------------------


async def test_sanitize_overwrite_writes_the_pattern_everywhere() -> None:
    lu = mem_lu()
    plist = overwrite_params(b"\xaa\x55\x01\x02")
    good(await run(lu, sanitize_cdb(pv.SA_OVERWRITE, len(plist)), plist))
    data = bytes(good(await run(lu, r10(BLOCKS - 8, 8))).data)
    assert data == b"\xaa\x55\x01\x02" * (8 * BS // 4)


async def test_sanitize_overwrite_invert_ends_with_the_pattern() -> None:
    lu = mem_lu(64)
    plist = overwrite_params(b"\x0f" * BS, count=2, invert=True)
    good(await run(lu, sanitize_cdb(pv.SA_OVERWRITE, len(plist)), plist))
    assert bytes(good(await run(lu, r10(0, 1))).data) == b"\x0f" * BS


@pytest.mark.parametrize("sa", [pv.SA_BLOCK_ERASE, pv.SA_CRYPTO_ERASE])
async def test_sanitize_erase_deallocates_the_whole_lu(file_lu: LogicalUnit, sa: int) -> None:
    good(await run(file_lu, w10(0, 16), b"a" * 16 * BS))
    good(await run(file_lu, w10(BLOCKS - 16, 16), b"a" * 16 * BS))
    good(await run(file_lu, sanitize_cdb(sa)))
    assert bytes(good(await run(file_lu, r10(BLOCKS - 16, 16))).data) == bytes(16 * BS)
    assert gls_descs(good(await run(file_lu, gls(0, 256)))) == [(0, BLOCKS, 1)]


async def test_sanitize_parameter_checks() -> None:
    lu = mem_lu()
    for plen in (0, 1, 4, BS + 5):
        assert sense_of(await run(lu, sanitize_cdb(pv.SA_OVERWRITE, plen), bytes(plen))) == \
            (5, 0x24, 0)
    for bad in (overwrite_params(b"\x01", count=0), b"\x01\x00\x00\x00\x01",
                b"\x01\x00" + struct.pack(">H", BS + 1) + bytes(BS)):
        code = sense_of(await run(lu, sanitize_cdb(pv.SA_OVERWRITE, len(bad)), bad))
        assert code[:2] in ((5, 0x26), (5, 0x1A))
    for sa in (pv.SA_BLOCK_ERASE, pv.SA_CRYPTO_ERASE, pv.SA_EXIT_FAILURE_MODE):
        assert sense_of(await run(lu, sanitize_cdb(sa, 8), bytes(8))) == (5, 0x24, 0)
    for sa in (0, 4, 0x1E):
        assert sense_of(await run(lu, sanitize_cdb(sa))) == (5, 0x24, 0)
    good(await run(lu, sanitize_cdb(pv.SA_EXIT_FAILURE_MODE)))


async def test_sanitize_immed_blocks_other_commands_until_done() -> None:
    lu = mem_lu()
    plist = overwrite_params(b"\x11")
    good(await run(lu, sanitize_cdb(pv.SA_OVERWRITE, len(plist), immed=True), plist))
    assert lu.sanitize_in_progress
    assert sense_of(await run(lu, r10(0, 1))) == (2, 0x04, 0x1B)
    good(await run(lu, struct.pack(">BBBHB", 0x12, 0, 0, 96, 0)))  # INQUIRY still works
    for _ in range(200):
        if not lu.sanitize_in_progress:
            break
        await asyncio.sleep(0.01)
    assert bytes(good(await run(lu, r10(0, 1))).data) == b"\x11" * BS


# --- WRITE ATOMIC(16) ----------------------------------------------------------------------


async def test_write_atomic_writes_and_checks() -> None:
    lu = mem_lu()
    good(await run(lu, wa16(BLOCKS - 2, 2, b1=0x08), b"w" * 2 * BS))  # FUA
    assert bytes(good(await run(lu, r10(BLOCKS - 2, 2))).data) == b"w" * 2 * BS
    good(await run(lu, wa16(0, 0)))
    assert sense_of(await run(lu, wa16(BLOCKS - 1, 2), bytes(2 * BS))) == (5, 0x21, 0)
    assert sense_of(await run(lu, wa16(2**63, 0))) == (5, 0x21, 0)
    assert sense_of(await run(lu, wa16(0, 1, b1=0x20), bytes(BS)))[:2] == (5, 0x24)
    assert sense_of(await run(lu, wa16(0, 1, boundary=1), bytes(BS)))[:2] == (5, 0x24)
    # a short Data-Out writes nothing at all
    assert sense_of(await run(lu, wa16(0, 2), b"s" * BS))[:2] == (5, 0x24)
    assert bytes(good(await run(lu, r10(0, 1))).data) == bytes(BS)
