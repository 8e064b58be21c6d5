"""Target-level routing: a LUN map plus a CDB -> the right LogicalUnit, or the answers SPC-4
requires for a LUN with no logical unit behind it; REPORT LUNS; the 8-byte LUN field."""

from __future__ import annotations

from collections.abc import Mapping

from pyscsit.scsi import registry, spc
from pyscsit.scsi.lu import LogicalUnit, check_cdb
from pyscsit.scsi.sense import Sense, SenseError, SenseKey, encode_sense
from pyscsit.scsi.task import CdbInfo, Direction, ScsiCommand, ScsiResult, Status

OP_REQUEST_SENSE = 0x03
OP_INQUIRY = 0x12
OP_REPORT_LUNS = 0xA0

#: lun_from_wire's answer for an address we do not support; no LU ever has this number.
UNSUPPORTED_LUN = -1

_LUN_NOT_SUPPORTED = Sense(SenseKey.ILLEGAL_REQUEST, 0x25, 0x00)


def lun_to_wire(lun: int) -> int:
    """LUN number -> the 64-bit LUN field (SAM-5 4.6.4 single level): peripheral device
    addressing (00b, bus 0) below 256, flat space addressing (01b) up to 16383."""
    if 0 <= lun < 256:
        return lun << 48
    if 256 <= lun < 0x4000:
        return (0x4000 | lun) << 48
    raise ValueError(f"LUN {lun} cannot be addressed with single level addressing")


def lun_from_wire(lun_field: int) -> int:
    """The 64-bit LUN field -> LUN number; UNSUPPORTED_LUN (-1) for addressing we do not
    support (multi-level, logical unit / extended addressing, a nonzero bus), so that such a
    command is answered as "no such LU" (5/25/00) rather than reaching LUN 0."""
    first = (lun_field >> 48) & 0xFFFF
    if lun_field & 0xFFFF_FFFF_FFFF:  # second to fourth levels must be zero
        return UNSUPPORTED_LUN
    method = first >> 14
    if method == 0b00:  # peripheral device addressing: bus identifier must be 0
        return first & 0xFF if not first & 0x3F00 else UNSUPPORTED_LUN
    if method == 0b01:  # flat space addressing
        return first & 0x3FFF
    return UNSUPPORTED_LUN


def inspect(luns: Mapping[int, LogicalUnit], lun: int, cdb: bytes) -> CdbInfo:
    lu = luns.get(lun)
    if lu is not None:
        return lu.inspect(cdb)
    op = registry.lookup(cdb)
    if op is None:
        return CdbInfo(Direction.NONE, 0, known=False)
    if op.opcode in (OP_INQUIRY, OP_REPORT_LUNS, OP_REQUEST_SENSE) and len(cdb) >= op.cdb_len:
        direction, nbytes = op.xfer(cdb, 512)
        return CdbInfo(direction, nbytes)
    # Anything else to a missing LU fails at once without data: solicit nothing.
    return CdbInfo(op.direction, 0, extra={"no_lu": True})


async def execute(luns: Mapping[int, LogicalUnit], cmd: ScsiCommand) -> ScsiResult:
    lu = luns.get(cmd.lun)
    if cmd.cdb and cmd.cdb[0] == OP_REPORT_LUNS:
        return _report_luns(luns, lu, cmd)
    if lu is not None:
        return await lu.execute(cmd)
    return _no_lu(cmd)


def _report_luns(
    luns: Mapping[int, LogicalUnit], lu: LogicalUnit | None, cmd: ScsiCommand
) -> ScsiResult:
    """SPC-4 6.33: answered for any LUN, including one with no LU behind it; never reports
    or clears a unit attention (SAM-5 5.14)."""
    cdb = cmd.cdb
    try:
        op = registry.lookup(cdb)
        assert op is not None
        check_cdb(op, cdb)
        req = spc.parse_report_luns(cdb)
    except SenseError as exc:
        desc = lu.descriptor_sense if lu is not None else False
        return ScsiResult(Status.CHECK_CONDITION, sense=exc.encode(desc))
    return spc.report_luns_data(req, luns.keys())


def _no_lu(cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    op = cdb[0] if cdb else -1
    if op == OP_INQUIRY and len(cdb) >= 6:
        if cdb[1] & 0x01 or cdb[2]:
            # VPD pages of a LU that does not exist: there is nothing to describe.
            return ScsiResult(Status.CHECK_CONDITION, sense=encode_sense(_LUN_NOT_SUPPORTED))
        alloc = int.from_bytes(cdb[3:5], "big")
        # SPC-4 6.6.2: peripheral qualifier 011b / device type 1Fh
        return ScsiResult(data=spc.NO_LUN_INQUIRY[:alloc])
    if op == OP_REQUEST_SENSE and len(cdb) >= 6:
        # SPC-4 6.39: REQUEST SENSE to a missing LU returns GOOD with 5/25/00 as the data.
        req = spc.parse_request_sense(cdb)
        return spc.request_sense_data(req, _LUN_NOT_SUPPORTED)
    return ScsiResult(Status.CHECK_CONDITION, sense=encode_sense(_LUN_NOT_SUPPORTED))
