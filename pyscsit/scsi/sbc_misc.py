"""The rest of the block commands a disk answers (SBC-3): WRITE AND VERIFY(10/12/16),
ORWRITE(16), PRE-FETCH(10/16), READ DEFECT DATA(10/12), PREVENT ALLOW MEDIUM REMOVAL.

Each command: parse the CDB into an ``sbc.Rw`` (a pure function), check it against the LU,
then execute. Every write goes through ``LogicalUnit.write_or_sense`` so the write cache
setting (WCE) and the range lock apply to it as to WRITE.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyscsit.scsi.registry import OpInfo, alloc_len, block_count, fixed, register
from pyscsit.scsi.sbc import Rw, check_transfer, first_difference
from pyscsit.scsi.sense import InvalidFieldInCdb, Miscompare
from pyscsit.scsi.task import Direction, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

OP_WRITE_AND_VERIFY10, OP_WRITE_AND_VERIFY12, OP_WRITE_AND_VERIFY16 = 0x2E, 0xAE, 0x8E
OP_ORWRITE16 = 0x8B
OP_PRE_FETCH10, OP_PRE_FETCH16 = 0x34, 0x90
OP_READ_DEFECT_DATA10, OP_READ_DEFECT_DATA12 = 0x37, 0xB7
OP_PREVENT_ALLOW = 0x1E

_CDB_SIZE = {
    OP_WRITE_AND_VERIFY10: 10, OP_PRE_FETCH10: 10,
    OP_WRITE_AND_VERIFY12: 12,
    OP_WRITE_AND_VERIFY16: 16, OP_ORWRITE16: 16, OP_PRE_FETCH16: 16,
}


def parse_block_cdb(cdb: bytes) -> Rw:
    """LBA + length CDB of the (10), (12) or (16) layout, laid out as READ/WRITE's are."""
    size = _CDB_SIZE[cdb[0]]
    flags = cdb[1]
    if size == 10:
        lba, blocks = struct.unpack_from(">IxH", cdb, 2)
        return Rw(lba, blocks, flags, flags >> 5, 7)
    if size == 12:
        lba, blocks = struct.unpack_from(">II", cdb, 2)
        return Rw(lba, blocks, flags, flags >> 5, 6)
    lba, blocks = struct.unpack_from(">QI", cdb, 2)
    return Rw(lba, blocks, flags, flags >> 5, 10)


def _checked_write(lu: LogicalUnit, cmd: ScsiCommand, req: Rw) -> tuple[int, memoryview]:
    """Check a write against the LU; returns the transfer length in bytes and the Data-Out
    that arrived, cut to whole blocks and at most that length (as WRITE does)."""
    check_transfer(lu, req)
    n = req.blocks * lu.block_size
    data = cmd.data_out if cmd.data_out is not None else memoryview(b"")
    have = min(len(data), n)
    return n, data[: have - have % lu.block_size]


# --- WRITE AND VERIFY(10/12/16) (SBC-3 5.40-5.42) ------------------------------------------


async def write_and_verify(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_block_cdb(cmd.cdb)
    if req.bytchk > 1:
        raise InvalidFieldInCdb(1, 2, f"BYTCHK {req.bytchk:02b}b is reserved")
    n, data = _checked_write(lu, cmd, req)
    if len(data):
        offset = req.lba * lu.block_size
        # The verify is of the medium, so the write goes through to it (FUA); the range stays
        # held until the compare so no other write can slip in between.
        async with lu.range_lock.hold(offset, len(data)):
            await lu.write_or_sense(offset, data, True, locked=True)
            if req.bytchk:
                medium = await lu.read_or_sense(offset, len(data))
                diff = first_difference(medium, data)
                if diff >= 0:
                    raise Miscompare("write and verify miscompare", information=diff)
    return ScsiResult(transfer_length=n)


# --- ORWRITE(16) (SBC-3 5.8) ---------------------------------------------------------------


async def orwrite(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_block_cdb(cmd.cdb)
    n, data = _checked_write(lu, cmd, req)
    if len(data):
        offset = req.lba * lu.block_size
        # BMOP 000b: medium := medium OR data, atomic against every other write of the range.
        async with lu.range_lock.hold(offset, len(data)):
            old = await lu.read_or_sense(offset, len(data))
            merged = (int.from_bytes(old, "big") | int.from_bytes(data, "big")).to_bytes(
                len(data), "big")
            await lu.write_or_sense(offset, merged, req.fua, locked=True)
    return ScsiResult(transfer_length=n)


# --- PRE-FETCH(10/16) (SBC-3 5.9, 5.10) ----------------------------------------------------


async def pre_fetch(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_block_cdb(cmd.cdb)
    lu.check_range(req.lba, req.blocks)
    # SBC-3 5.9: CONDITION MET promises the blocks will be in the cache; the cache is the
    # host's page cache, which we cannot reserve, so the answer is GOOD ("the cache may not
    # hold them all"), IMMED or not. libiscsi's Prefetch tests expect exactly GOOD.
    return ScsiResult()


# --- READ DEFECT DATA(10/12) (SBC-3 5.18, 5.19) --------------------------------------------

# Defect list formats (SBC-3 table 73 + SBC-4): 000b short block .. 110b vendor specific.
_RESERVED_DEFECT_FORMAT = 0b111


@dataclass(frozen=True, slots=True)
class DefectCdb:
    twelve: bool
    req_plist: bool
    req_glist: bool
    list_format: int
    alloc_len: int


def parse_read_defect_data(cdb: bytes) -> DefectCdb:
    twelve = cdb[0] == OP_READ_DEFECT_DATA12
    flags_byte = 1 if twelve else 2
    b = cdb[flags_byte]
    if b & 0x07 == _RESERVED_DEFECT_FORMAT:
        raise InvalidFieldInCdb(flags_byte, 2, "reserved DEFECT LIST FORMAT")
    alloc = struct.unpack_from(">I", cdb, 6)[0] if twelve else struct.unpack_from(">H", cdb, 7)[0]
    return DefectCdb(twelve, bool(b & 0x10), bool(b & 0x08), b & 0x07, alloc)


def defect_data(req: DefectCdb) -> bytes:
    """A virtual disk has no defects: each list asked for is returned, empty, in the format
    asked for (PLISTV/GLISTV say which lists the (empty) data holds)."""
    b1 = (0x10 if req.req_plist else 0) | (0x08 if req.req_glist else 0) | req.list_format
    if req.twelve:
        return struct.pack(">xBxxI", b1, 0)  # DEFECT LIST LENGTH 0
    return struct.pack(">xBH", b1, 0)


async def read_defect_data(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_read_defect_data(cmd.cdb)
    return ScsiResult(data=defect_data(req)[: req.alloc_len])


# --- PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.11) ---------------------------------------------


async def prevent_allow(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    prevent = cmd.cdb[4] & 0x03
    if prevent & 0x02:
        raise InvalidFieldInCdb(4, 1, "PREVENT 1xb is obsolete")
    # RMB=0: the medium cannot be removed, so preventing or allowing removal changes nothing;
    # Linux and Windows send it anyway (e.g. on open), and it must succeed.
    return ScsiResult()


# --- registry rows --------------------------------------------------------------------------

CTRL = 0xC7
_W = Direction.WRITE
_N = Direction.NONE
_L4 = (0xFF,) * 4
_L8 = (0xFF,) * 8
_WAV = 0xF6  # byte 1: WRPROTECT, DPO, BYTCHK (bits 2:1)

register(OpInfo(OP_WRITE_AND_VERIFY10, "WRITE AND VERIFY(10)", 10, _W, write_and_verify,
                block_count(_W, 7, 2), bytes((0x2E, _WAV, *_L4, 0x1F, 0xFF, 0xFF, CTRL)),
                exact_xfer=True, writes_medium=True))
register(OpInfo(OP_WRITE_AND_VERIFY12, "WRITE AND VERIFY(12)", 12, _W, write_and_verify,
                block_count(_W, 6, 4), bytes((0xAE, _WAV, *_L4, *_L4, 0x1F, CTRL)),
                exact_xfer=True, writes_medium=True))
register(OpInfo(OP_WRITE_AND_VERIFY16, "WRITE AND VERIFY(16)", 16, _W, write_and_verify,
                block_count(_W, 10, 4), bytes((0x8E, _WAV, *_L8, *_L4, 0x1F, CTRL)),
                exact_xfer=True, writes_medium=True))
# ORPROTECT, DPO, FUA, FUA_NV
register(OpInfo(OP_ORWRITE16, "ORWRITE(16)", 16, _W, orwrite, block_count(_W, 10, 4),
                bytes((0x8B, 0xFA, *_L8, *_L4, 0x1F, CTRL)), exact_xfer=True,
                writes_medium=True))
register(OpInfo(OP_PRE_FETCH10, "PRE-FETCH(10)", 10, _N, pre_fetch, fixed(_N, 0),
                bytes((0x34, 0x02, *_L4, 0x1F, 0xFF, 0xFF, CTRL))))
register(OpInfo(OP_PRE_FETCH16, "PRE-FETCH(16)", 16, _N, pre_fetch, fixed(_N, 0),
                bytes((0x90, 0x02, *_L8, *_L4, 0x1F, CTRL))))
register(OpInfo(OP_READ_DEFECT_DATA10, "READ DEFECT DATA(10)", 10, Direction.READ,
                read_defect_data, alloc_len(7, 2),
                bytes((0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, CTRL))))
register(OpInfo(OP_READ_DEFECT_DATA12, "READ DEFECT DATA(12)", 12, Direction.READ,
                read_defect_data, alloc_len(6, 4),
                bytes((0xB7, 0x1F, *_L4, *_L4, 0, CTRL))))
register(OpInfo(OP_PREVENT_ALLOW, "PREVENT ALLOW MEDIUM REMOVAL", 6, _N, prevent_allow,
                fixed(_N, 0), bytes((0x1E, 0, 0, 0, 0x03, CTRL))))
