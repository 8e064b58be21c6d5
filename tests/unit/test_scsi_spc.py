"""Primary commands: INQUIRY + VPD, MODE SENSE, REQUEST SENSE, unit attentions and resets."""

from __future__ import annotations

import struct

import pytest

from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import vpd
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.modes import ModeSenseCdb, parse_mode_sense
from pyscsit.scsi.sense import SavingParametersNotSupported
from pyscsit.scsi.spc import parse_inquiry
from pyscsit.scsi.task import Nexus, ScsiCommand, ScsiResult, Status
from tests.support.scsi import sense_of

NX = Nexus("iqn.1994-05.com.example:init", 0x23D000000001, "iqn.2024-01.org.pyscsit:t1",
           tpgt=1, relative_port=3)
NX2 = Nexus("iqn.1994-05.com.example:other", 0x23D000000002, "iqn.2024-01.org.pyscsit:t1")


def make_lu(**kw: object) -> LogicalUnit:
    return LogicalUnit(MemoryBackend(1 << 20), LuIdentity.random(), **kw)  # type: ignore[arg-type]


async def run(lu: LogicalUnit, cdb: bytes, nexus: Nexus = NX) -> ScsiResult:
    return await lu.execute(ScsiCommand(cdb, nexus))


def inq(evpd: int, page: int, alloc: int) -> bytes:
    return struct.pack(">BBBHB", 0x12, evpd, page, alloc, 0)


TUR = bytes(6)


# --- INQUIRY ----------------------------------------------------------------------------------


async def test_standard_inquiry_fields() -> None:
    d = bytes((await run(make_lu(), inq(0, 0, 260))).data)
    assert len(d) == 96 and d[4] == len(d) - 5
    assert d[0] == 0 and d[2] == 0x06 and d[3] == 0x12  # SPC-4, HISUP, format 2
    assert d[7] & 0x02  # CMDQUE
    assert d[8:16] == b"PYSCSIT " and d[16:32] == b"VIRTUAL-DISK    " and d[32:36] == b"0001"
    descs = struct.unpack(">8H", d[58:74])
    assert {0x00A0, 0x0960, 0x0460, 0x04C0} <= set(descs)


async def test_inquiry_allocation_length_truncates() -> None:
    lu = make_lu()
    full = bytes((await run(lu, inq(0, 0, 255))).data)
    for n in (0, 1, 5, 36, 95, 96, 256):
        r = await run(lu, inq(0, 0, n))
        assert r.status == Status.GOOD and bytes(r.data) == full[:n]


async def test_inquiry_page_code_without_evpd_is_invalid_field() -> None:
    r = await run(make_lu(), inq(0, 1, 255))
    assert sense_of(r) == (5, 0x24, 0) and r.sense[16:18] == b"\x00\x02"


async def test_inquiry_cmddt_bit_rejected() -> None:
    r = await run(make_lu(), inq(2, 0, 255))
    assert sense_of(r) == (5, 0x24, 0) and r.sense[15] & 0x0F == 0x08 | 1


def test_parse_inquiry() -> None:
    assert parse_inquiry(inq(1, 0x83, 300)) == type(parse_inquiry(inq(1, 0x83, 300)))(
        True, 0x83, 300)


async def test_vpd_supported_pages_lists_every_page() -> None:
    d = bytes((await run(make_lu(), inq(1, 0, 255))).data)
    assert d[1] == 0 and list(d[4:]) == sorted(vpd.PAGES)
    assert d[3] == len(d) - 4


async def test_vpd_unknown_page_is_invalid_field() -> None:
    assert sense_of(await run(make_lu(), inq(1, 0x99, 255)))[:2] == (5, 0x24)


async def test_vpd_serial_matches_identity() -> None:
    lu = make_lu()
    d = bytes((await run(lu, inq(1, 0x80, 255))).data)
    assert d[4:].decode() == lu.identity.serial


def _designators(page: bytes) -> list[tuple[int, int, int, int, bytes]]:
    out, i = [], 4
    while i < len(page):
        b0, b1, _, n = page[i : i + 4]
        out.append((b0 >> 4, b0 & 0x0F, (b1 >> 4) & 3, b1 & 0x0F, page[i + 4 : i + 4 + n]))
        assert bool(b1 & 0x80) == ((b1 >> 4) & 3 != 0)  # PIV exactly on port/device ones
        i += 4 + n
    assert i == len(page)
    return out


async def test_vpd_device_identification() -> None:
    lu = make_lu()
    d = bytes((await run(lu, inq(1, 0x83, 1024))).data)
    ds = _designators(d)
    by = {(assoc, dtype): (proto, cs, val) for proto, cs, assoc, dtype, val in ds}
    assert by[(0, 3)] == (0, 1, lu.identity.naa)  # NAA, binary, LU
    assert by[(0, 1)][2].startswith(b"PYSCSIT ")  # T10 vendor id
    assert by[(1, 4)] == (5, 1, b"\x00\x00\x00\x03")  # relative target port 3
    assert by[(1, 5)] == (5, 1, b"\x00\x00\x00\x01")  # target port group 1
    port = by[(1, 8)]
    assert port[:2] == (5, 3) and port[2].rstrip(b"\0") == b"iqn.2024-01.org.pyscsit:t1,t,0x0001"
    assert len(port[2]) % 4 == 0 and port[2].endswith(b"\0")
    assert by[(2, 8)][2].rstrip(b"\0") == b"iqn.2024-01.org.pyscsit:t1"


async def test_vpd_block_limits_and_characteristics() -> None:
    lu = make_lu()
    b0 = bytes((await run(lu, inq(1, 0xB0, 64))).data)
    assert b0[3] == 0x3C and len(b0) == 64
    assert struct.unpack(">H", b0[6:8])[0] == 8  # 4096 / 512
    assert struct.unpack(">I", b0[8:12])[0] == lu.max_transfer_blocks
    # UNMAP limits are advertised exactly when UNMAP is (LBPU in VPD 0xB2)
    unmap_limits = struct.unpack(">II", b0[20:28])
    expected = (lu.max_unmap_blocks, lu.max_unmap_descriptors) if lu.lbpu else (0, 0)
    assert unmap_limits == expected
    b1 = bytes((await run(lu, inq(1, 0xB1, 64))).data)
    assert struct.unpack(">H", b1[4:6])[0] == 1  # non-rotating
    b2 = bytes((await run(lu, inq(1, 0xB2, 64))).data)
    assert bool(b2[5] & 0x80) == lu.lbpu  # LBPU only with UNMAP


# --- MODE SENSE -------------------------------------------------------------------------------


def ms6(page: int, pc: int = 0, sub: int = 0, alloc: int = 255, dbd: bool = False) -> bytes:
    return bytes((0x1A, 0x08 if dbd else 0, (pc << 6) | page, sub, alloc, 0))


def ms10(page: int, alloc: int = 1024, llbaa: bool = False) -> bytes:
    return struct.pack(">BBBBBBBHB", 0x5A, 0x10 if llbaa else 0, page, 0, 0, 0, 0, alloc, 0)


def _pages(data: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset < len(data):
        code, n = data[offset] & 0x3F, data[offset + 1]
        out[code] = data[offset : offset + 2 + n]
        offset += 2 + n
    return out


async def test_mode_sense6_all_pages_with_block_descriptor() -> None:
    lu = make_lu()
    d = bytes((await run(lu, ms6(0x3F))).data)
    assert d[0] == len(d) - 1 and d[3] == 8
    assert d[2] & 0x10 and not d[2] & 0x80  # DPOFUA, not write protected
    assert struct.unpack(">I", d[4:8])[0] == lu.num_blocks and d[9:12] == b"\x00\x02\x00"
    pages = _pages(d, 12)
    assert set(pages) == {0x01, 0x08, 0x0A}
    assert pages[0x08][2] & 0x04  # WCE
    assert pages[0x0A][2] & 0x04 == 0  # D_SENSE clear: fixed format sense


async def test_mode_sense_dbd_single_page_and_truncation() -> None:
    lu = make_lu()
    d = bytes((await run(lu, ms6(0x0A, dbd=True))).data)
    assert d[3] == 0 and _pages(d, 4).keys() == {0x0A}
    r = await run(lu, ms6(0x3F, alloc=4))
    assert len(r.data) == 4 and r.status == Status.GOOD
    assert (await run(lu, ms6(0x3F, sub=0xFF))).status == Status.GOOD


async def test_mode_sense_changeable_only_wce_d_sense_swp() -> None:
    d = bytes((await run(make_lu(), ms6(0x3F, pc=1, dbd=True))).data)
    changeable = {code: [(i, b) for i, b in enumerate(p) if i >= 2 and b]
                  for code, p in _pages(d, 4).items()}
    assert changeable == {0x01: [], 0x08: [(2, 0x04)], 0x0A: [(2, 0x04), (4, 0x08)]}


async def test_mode_sense_errors() -> None:
    lu = make_lu()
    r = await run(lu, ms6(0x3F, pc=3))
    assert sense_of(r) == (5, 0x39, 0)
    r = await run(lu, ms6(0x19))
    assert sense_of(r) == (5, 0x24, 0) and r.sense[15] == 0xCD and r.sense[17] == 2
    assert sense_of(await run(lu, ms6(0x08, sub=0x01))) == (5, 0x24, 0)


async def test_mode_sense10_long_lba_and_write_protect() -> None:
    lu = make_lu(read_only=True)
    d = bytes((await run(lu, ms10(0x08, llbaa=True))).data)
    assert struct.unpack(">H", d[:2])[0] == len(d) - 2
    assert d[3] & 0x80 and d[4] & 0x01 and struct.unpack(">H", d[6:8])[0] == 16
    assert struct.unpack(">QII", d[8:24]) == (lu.num_blocks, 0, 512)


def test_parse_mode_sense() -> None:
    assert parse_mode_sense(ms10(0x3F, alloc=300)) == ModeSenseCdb(True, False, False, 0, 0x3F,
                                                                   0, 300)
    with pytest.raises(SavingParametersNotSupported):
        parse_mode_sense(ms6(0x08, pc=3))


# --- REQUEST SENSE, unit attention, resets ----------------------------------------------------


async def test_request_sense_no_sense_in_both_formats() -> None:
    lu = make_lu()
    d = bytes((await run(lu, bytes((0x03, 0, 0, 0, 252, 0)))).data)
    assert d[0] == 0x70 and d[2] == 0 and d[12:14] == b"\0\0" and len(d) == 18
    d = bytes((await run(lu, bytes((0x03, 1, 0, 0, 252, 0)))).data)
    assert d[:4] == b"\x72\x00\x00\x00" and len(d) == 8


async def test_new_nexus_gets_no_power_on_unit_attention() -> None:
    assert (await run(make_lu(), TUR)).status == Status.GOOD


async def test_lun_reset_unit_attention_for_every_nexus_once() -> None:
    lu = make_lu()
    await run(lu, TUR, NX)
    await run(lu, TUR, NX2)
    lu.reset("lun")
    # INQUIRY neither reports nor clears it (SAM-5 5.14)
    assert (await run(lu, inq(0, 0, 36), NX)).status == Status.GOOD
    assert sense_of(await run(lu, TUR, NX)) == (6, 0x29, 0x03)
    assert (await run(lu, TUR, NX)).status == Status.GOOD
    # REQUEST SENSE reports it as data, GOOD status, and clears it
    r = await run(lu, bytes((0x03, 0, 0, 0, 18, 0)), NX2)
    assert r.status == Status.GOOD and bytes(r.data)[2] == 6 and bytes(r.data)[12:14] == b"\x29\x03"
    assert (await run(lu, TUR, NX2)).status == Status.GOOD


async def test_unit_attention_beats_invalid_opcode_and_uses_cdb_length() -> None:
    lu = make_lu()
    await run(lu, TUR)
    lu.reset("cold")
    assert sense_of(await run(lu, bytes((0xC5,)) + bytes(15))) == (6, 0x29, 0x01)
    assert sense_of(await run(lu, bytes((0xC5,)) + bytes(15))) == (5, 0x20, 0)
    lu.reset("target_warm_reset")
    r = await run(lu, struct.pack(">BBIBHB", 0x28, 0, 0, 0, 2, 0))
    assert sense_of(r) == (6, 0x29, 0x02) and r.transfer_length == 1024


async def test_nexus_lost_drops_pending_unit_attention() -> None:
    lu = make_lu()
    await run(lu, TUR)
    lu.reset("lun")
    lu.nexus_lost(NX)
    assert (await run(lu, TUR)).status == Status.GOOD
    with pytest.raises(ValueError):
        lu.reset("bogus")


async def test_start_stop_unit_and_tur() -> None:
    lu = make_lu()
    assert (await run(lu, bytes((0x1B, 0, 0, 0, 0, 0)))).status == Status.GOOD
    assert (await run(lu, bytes((0x1B, 1, 0, 0, 1, 0)))).status == Status.GOOD
    r = await run(lu, bytes((0x00, 1, 0, 0, 0, 0)))  # reserved bit in TUR
    assert sense_of(r) == (5, 0x24, 0)


async def test_unsupported_opcode() -> None:
    r = await run(make_lu(), bytes((0xC5,)) + bytes(15))
    assert sense_of(r) == (5, 0x20, 0)
    assert make_lu().inspect(bytes((0xC5,)) + bytes(15)).known is False
