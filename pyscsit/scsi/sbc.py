"""Block commands (SBC-3): READ/WRITE, VERIFY, SYNCHRONIZE CACHE, READ CAPACITY.

The READ/WRITE path is the hot one: one struct unpack into a NamedTuple (cheaper to build than
a frozen dataclass), a range check against the LU's cached capacity, one backend call, and the
backend's buffer is returned as the Data-In payload without a copy.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from pyscsit.scsi.registry import OpInfo, block_count, fixed, register
from pyscsit.scsi.sense import InvalidFieldInCdb, Miscompare
from pyscsit.scsi.task import Direction, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit


class Rw(NamedTuple):
    """A parsed READ/WRITE/VERIFY CDB (and sbc_misc's WRITE AND VERIFY, ORWRITE, PRE-FETCH).
    ``protect`` is RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT."""

    lba: int
    blocks: int
    flags: int  # byte 1: DPO 0x10, FUA 0x08 (BYTCHK bits 2:1 for (WRITE AND) VERIFY)
    protect: int
    tl_byte: int  # where TRANSFER LENGTH starts, for field pointers

    @property
    def fua(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def dpo(self) -> bool:
        return bool(self.flags & 0x10)

    @property
    def bytchk(self) -> int:
        return (self.flags >> 1) & 0x03


_S10 = struct.Struct(">xBIxH")  # flags, LBA, transfer length
_S12 = struct.Struct(">xBII")
_S16 = struct.Struct(">xBQI")


def parse_rw(cdb: bytes) -> Rw:
    """READ/WRITE/VERIFY (6), (10), (12), (16): SBC-3 5.8-5.15, 5.29-5.33, 5.32-5.34."""
    size = _CDB_SIZE[cdb[0]]
    if size == 10:
        flags, lba, blocks = _S10.unpack_from(cdb)
        return Rw(lba, blocks, flags, flags >> 5, 7)
    if size == 16:
        flags, lba, blocks = _S16.unpack_from(cdb)
        return Rw(lba, blocks, flags, flags >> 5, 10)
    if size == 12:
        flags, lba, blocks = _S12.unpack_from(cdb)
        return Rw(lba, blocks, flags, flags >> 5, 6)
    # (6): 21-bit LBA, TRANSFER LENGTH 0 means 256 blocks (SBC-3 5.14, 5.39); no flags.
    lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    return Rw(lba, cdb[4] or 256, 0, 0, 4)


_CDB_SIZE: dict[int, int] = {
    0x08: 6, 0x0A: 6,  # READ(6), WRITE(6)
    0x28: 10, 0x2A: 10, 0x2F: 10,  # READ(10), WRITE(10), VERIFY(10)
    0xA8: 12, 0xAA: 12, 0xAF: 12,  # READ(12), WRITE(12), VERIFY(12)
    0x88: 16, 0x8A: 16, 0x8F: 16,  # READ(16), WRITE(16), VERIFY(16)
}


def check_transfer(lu: LogicalUnit, req: Rw) -> None:
    """The checks every command that moves blocks makes: no protection information, the
    range on the medium, the transfer length within the Block Limits VPD maximum."""
    if req.protect:
        # No protection information (INQUIRY PROTECT=0): *PROTECT must be 0 (SBC-3 4.22.2).
        raise InvalidFieldInCdb(1, 7, "protection information is not supported")
    lu.check_range(req.lba, req.blocks)
    if req.blocks > lu.max_transfer_blocks:
        # SBC-3 6.6.3: more than the Block Limits MAXIMUM TRANSFER LENGTH
        raise InvalidFieldInCdb(req.tl_byte, None, "transfer length above the maximum")


async def read(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    rw = parse_rw(cmd.cdb)
    check_transfer(lu, rw)
    bs = lu.block_size
    n = rw.blocks * bs
    if n == 0:
        return ScsiResult(transfer_length=0)  # SBC-3 5.11: not an error
    data = await lu.read_or_sense(rw.lba * bs, n)
    return ScsiResult(data=data, transfer_length=n)


async def write(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    rw = parse_rw(cmd.cdb)
    check_transfer(lu, rw)
    bs = lu.block_size
    n = rw.blocks * bs
    data = cmd.data_out
    have = 0 if data is None else len(data)
    # Only whole blocks that actually arrived are written: Data-Out shorter than the CDB asks
    # (EDTL < transfer length) writes what came and reports GOOD; the iSCSI layer reports the
    # overflow residual from transfer_length (libiscsi's iSCSIResiduals expect exactly this).
    todo = n if have >= n else have - have % bs
    if todo and data is not None:
        await lu.write_or_sense(rw.lba * bs, data if todo == have else data[:todo], rw.fua)
    return ScsiResult(transfer_length=n)


def verify_xfer(cdb: bytes, bs: int) -> tuple[Direction, int]:
    size = _CDB_SIZE[cdb[0]]
    if size == 10:
        blocks = int.from_bytes(cdb[7:9], "big")
    else:
        off = 6 if size == 12 else 10
        blocks = int.from_bytes(cdb[off : off + 4], "big")
    bytchk = (cdb[1] >> 1) & 0x03
    if bytchk == 1:
        return Direction.WRITE, blocks * bs
    if bytchk == 3 and blocks:
        return Direction.WRITE, bs  # one block, compared with each block in the range
    return Direction.NONE, 0


def first_difference(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
    """Index of the first differing byte of two equal-length buffers, or -1."""
    ma, mb = memoryview(a).cast("B"), memoryview(b).cast("B")
    step = 4096
    for start in range(0, len(ma), step):
        if ma[start : start + step] != mb[start : start + step]:
            for i in range(start, min(start + step, len(ma))):
                if ma[i] != mb[i]:
                    return i
    return -1


async def verify(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    rw = parse_rw(cmd.cdb)
    bytchk = rw.bytchk
    if bytchk == 2:
        raise InvalidFieldInCdb(1, 2, "BYTCHK 10b is reserved")
    check_transfer(lu, rw)
    _, xfer = verify_xfer(cmd.cdb, lu.block_size)
    if bytchk == 0 or rw.blocks == 0:
        # Medium verification only: the backend has no media errors to find beyond what a
        # read would report, and reading the whole range would be costly; SBC-3 5.29.
        return ScsiResult(transfer_length=xfer)
    bs = lu.block_size
    data = cmd.data_out if cmd.data_out is not None else memoryview(b"")
    medium = memoryview(await lu.read_or_sense(rw.lba * bs, rw.blocks * bs))
    if bytchk == 1:
        n = min(len(data), len(medium))
        n -= n % bs
        diff = first_difference(medium[:n], data[:n])
    else:  # 3: one block of Data-Out against every block
        diff = -1
        if len(data) >= bs:
            pattern = data[:bs]
            for i in range(rw.blocks):
                d = first_difference(medium[i * bs : (i + 1) * bs], pattern)
                if d >= 0:
                    diff = i * bs + d
                    break
    if diff >= 0:
        # SBC-3 5.29: INFORMATION = offset of the first miscompared byte in the Data-Out.
        raise Miscompare("verify miscompare", information=diff if bytchk == 1 else diff % bs)
    return ScsiResult(transfer_length=xfer)


# --- SYNCHRONIZE CACHE(10)/(16) (SBC-3 5.22, 5.23) ----------------------------------------


class SyncCache(NamedTuple):
    lba: int
    blocks: int  # 0: from lba to the end of the medium
    immed: bool


def parse_sync_cache(cdb: bytes) -> SyncCache:
    if cdb[0] == 0x35:
        flags, lba, blocks = _S10.unpack_from(cdb)
    else:
        flags, lba, blocks = _S16.unpack_from(cdb)
    return SyncCache(lba, blocks, bool(flags & 0x02))


async def synchronize_cache(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_sync_cache(cmd.cdb)
    lu.check_range(req.lba, req.blocks)
    # IMMED is honoured by flushing anyway: a flush of the whole file is one fdatasync.
    await lu.flush_or_sense()
    return ScsiResult()


# --- READ CAPACITY(10)/(16) (SBC-3 5.16, 5.17) --------------------------------------------


class ReadCapacity(NamedTuple):
    lba: int
    pmi: bool
    alloc_len: int  # 8 for READ CAPACITY(10)


def parse_read_capacity(cdb: bytes) -> ReadCapacity:
    if cdb[0] == 0x25:
        lba = struct.unpack_from(">I", cdb, 2)[0]
        pmi, alloc, lba_byte = bool(cdb[8] & 1), 8, 2
    else:
        lba, alloc = struct.unpack_from(">QI", cdb, 2)
        pmi, lba_byte = bool(cdb[14] & 1), 2
    if not pmi and lba:
        # SBC-3 5.16: LOGICAL BLOCK ADDRESS must be zero when PMI is zero.
        raise InvalidFieldInCdb(lba_byte, 7, "LBA set with PMI=0")
    return ReadCapacity(lba, pmi, alloc)


async def read_capacity10(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    parse_read_capacity(cmd.cdb)
    last = lu.refresh_capacity() - 1
    # 0xFFFFFFFF tells the initiator to use READ CAPACITY(16).
    return ScsiResult(data=struct.pack(">II", min(last, 0xFFFFFFFF), lu.block_size))


async def read_capacity16(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_read_capacity(cmd.cdb)
    last = lu.refresh_capacity() - 1
    lbp = (0x80 if lu.lbpme else 0) | (0x40 if lu.lbpme and lu.backend.unmap_reads_zeros else 0)
    data = bytearray(32)
    struct.pack_into(">QIBBBB", data, 0, last, lu.block_size, 0, lu.lbppbe & 0x0F, lbp, 0)
    return ScsiResult(data=bytes(data[: req.alloc_len]))


# --- registry rows --------------------------------------------------------------------------

CTRL = 0xC7
_R = Direction.READ
_W = Direction.WRITE
_L4 = (0xFF,) * 4
_L8 = (0xFF,) * 8

for _op, _name, _fn, _dir, _flags in (
    (0x08, "READ", read, _R, 0), (0x0A, "WRITE", write, _W, 0),
):
    register(OpInfo(_op, f"{_name}(6)", 6, _dir, _fn, block_count(_dir, 4, 1, 256),
                    bytes((_op, 0x1F, 0xFF, 0xFF, 0xFF, CTRL)), exact_xfer=True,
                    writes_medium=_dir is _W))

# byte 1 masks: READ RDPROTECT|DPO|FUA|RARC|FUA_NV, WRITE WRPROTECT|DPO|FUA|FUA_NV
for _op, _name, _fn, _dir, _b1 in (
    (0x28, "READ(10)", read, _R, 0xFE), (0x2A, "WRITE(10)", write, _W, 0xFA),
):
    register(OpInfo(_op, _name, 10, _dir, _fn, block_count(_dir, 7, 2),
                    bytes((_op, _b1, *_L4, 0x3F, 0xFF, 0xFF, CTRL)), exact_xfer=True,
                    writes_medium=_dir is _W))
for _op, _name, _fn, _dir, _b1 in (
    (0xA8, "READ(12)", read, _R, 0xFE), (0xAA, "WRITE(12)", write, _W, 0xFA),
):
    register(OpInfo(_op, _name, 12, _dir, _fn, block_count(_dir, 6, 4),
                    bytes((_op, _b1, *_L4, *_L4, 0x3F, CTRL)), exact_xfer=True,
                    writes_medium=_dir is _W))
for _op, _name, _fn, _dir, _b1 in (
    (0x88, "READ(16)", read, _R, 0xFF), (0x8A, "WRITE(16)", write, _W, 0xFB),
):
    register(OpInfo(_op, _name, 16, _dir, _fn, block_count(_dir, 10, 4),
                    bytes((_op, _b1, *_L8, *_L4, 0x3F, CTRL)), exact_xfer=True,
                    writes_medium=_dir is _W))

# VERIFY: VRPROTECT|DPO|BYTCHK
register(OpInfo(0x2F, "VERIFY(10)", 10, _W, verify, verify_xfer,
                bytes((0x2F, 0xF6, *_L4, 0x3F, 0xFF, 0xFF, CTRL)), exact_xfer=True))
register(OpInfo(0xAF, "VERIFY(12)", 12, _W, verify, verify_xfer,
                bytes((0xAF, 0xF6, *_L4, *_L4, 0x3F, CTRL)), exact_xfer=True))
register(OpInfo(0x8F, "VERIFY(16)", 16, _W, verify, verify_xfer,
                bytes((0x8F, 0xF6, *_L8, *_L4, 0x3F, CTRL)), exact_xfer=True))

_N = Direction.NONE
register(OpInfo(0x35, "SYNCHRONIZE CACHE(10)", 10, _N, synchronize_cache, fixed(_N, 0),
                bytes((0x35, 0x06, *_L4, 0x3F, 0xFF, 0xFF, CTRL))))
register(OpInfo(0x91, "SYNCHRONIZE CACHE(16)", 16, _N, synchronize_cache, fixed(_N, 0),
                bytes((0x91, 0x06, *_L8, *_L4, 0x3F, CTRL))))

register(OpInfo(0x25, "READ CAPACITY(10)", 10, _R, read_capacity10, fixed(_R, 8),
                bytes((0x25, 0, *_L4, 0, 0, 0x01, CTRL))))
register(OpInfo(0x9E, "READ CAPACITY(16)", 16, _R, read_capacity16,
                lambda cdb, bs: (Direction.READ, int.from_bytes(cdb[10:14], "big")),
                bytes((0x9E, 0x1F, *_L8, *_L4, 0x01, CTRL)), service_action=0x10))
