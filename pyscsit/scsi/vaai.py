"""COMPARE AND WRITE (SBC-3 5.2): VMware's ATS, the lock VMFS takes instead of a reservation.

The Data-Out buffer holds NUMBER OF LOGICAL BLOCKS blocks of verify data followed by as many
blocks of write data. Under the LU's range lock the blocks are read and compared; only if
every byte matches is the write data written. Every other write path holds the same lock
(LogicalUnit.write_or_sense), so no write from any session lands between the compare and the
write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from pyscsit.scsi.registry import OpInfo, register
from pyscsit.scsi.sbc import first_difference
from pyscsit.scsi.sense import InvalidFieldInCdb, Miscompare
from pyscsit.scsi.task import Direction, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

OP_COMPARE_AND_WRITE = 0x89
NLB_BYTE = 13  # NUMBER OF LOGICAL BLOCKS, for field pointers


class CompareAndWrite(NamedTuple):
    lba: int
    blocks: int
    flags: int  # byte 1: DPO 0x10, FUA 0x08, FUA_NV 0x02

    @property
    def fua(self) -> bool:
        return bool(self.flags & 0x08)


def parse_compare_and_write(cdb: bytes) -> CompareAndWrite:
    flags = cdb[1]
    if flags & 0xE0:
        # WRPROTECT: no protection information on our LUs (SBC-3 4.22.2)
        raise InvalidFieldInCdb(1, 7, "protection information is not supported")
    return CompareAndWrite(int.from_bytes(cdb[2:10], "big"), cdb[NLB_BYTE], flags)


def caw_xfer(cdb: bytes, bs: int) -> tuple[Direction, int]:
    # verify data + write data (SBC-3 5.2)
    return Direction.WRITE, 2 * cdb[NLB_BYTE] * bs


async def compare_and_write(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_compare_and_write(cmd.cdb)
    if req.blocks > lu.max_compare_write_blocks:
        # SBC-3 5.2: more than the Block Limits MAXIMUM COMPARE AND WRITE LENGTH
        raise InvalidFieldInCdb(NLB_BYTE, None, "above the maximum compare and write length")
    bs = lu.block_size
    n = req.blocks * bs
    data = cmd.data_out
    have = 0 if data is None else data.nbytes
    if cmd.expected_length != 2 * n or have != 2 * n:
        # The Data-Out buffer must be exactly verify + write data; anything else means the
        # initiator and the CDB disagree about which bytes are which.
        raise InvalidFieldInCdb(NLB_BYTE, None, f"Data-Out of {have} bytes for {req.blocks} blocks")
    lu.check_range(req.lba, req.blocks)
    if n == 0 or data is None:
        return ScsiResult(transfer_length=0)  # SBC-3 5.2: zero blocks is not an error
    offset = req.lba * bs
    verify, new = data[:n], data[n : 2 * n]
    async with lu.range_lock.hold(offset, n):
        medium = await lu.read_or_sense(offset, n)
        diff = first_difference(medium, verify)
        if diff >= 0:
            # SBC-3 5.2: INFORMATION = offset of the first differing byte in the Data-Out
            raise Miscompare("compare and write miscompare", information=diff)
        # DPO is a cache retention hint with nothing to retain; FUA reaches the backend.
        await lu.write_or_sense(offset, new, req.fua, locked=True)
    return ScsiResult(transfer_length=2 * n)


CTRL = 0xC7
# byte 1: WRPROTECT | DPO | FUA | FUA_NV; byte 14: GROUP NUMBER
register(OpInfo(OP_COMPARE_AND_WRITE, "COMPARE AND WRITE", 16, Direction.WRITE,
                compare_and_write, caw_xfer,
                bytes((OP_COMPARE_AND_WRITE, 0xFA, *(0xFF,) * 8, 0, 0, 0, 0xFF, 0x1F, CTRL)),
                exact_xfer=True, writes_medium=True))
