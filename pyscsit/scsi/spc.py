"""Primary commands (SPC-4): parse CDB -> typed value -> execute, and their registry rows."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyscsit.scsi import modes, vpd
from pyscsit.scsi.registry import OpInfo, alloc_len, fixed, register
from pyscsit.scsi.sense import (
    NO_SENSE,
    InvalidFieldInCdb,
    Sense,
    encode_sense,
)
from pyscsit.scsi.task import Direction, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

# Version descriptors (SPC-4 table 142): SAM-5, iSCSI (no version claimed), SPC-4, SBC-3.
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)
STANDARD_INQUIRY_LEN = 96

_GOOD = ScsiResult()


def _truncate(data: bytes, alloc: int) -> ScsiResult:
    # SPC-4 4.2.5.6: return min(allocation length, available) bytes; not an error.
    return ScsiResult(data=data[:alloc])


# --- TEST UNIT READY (SPC-4 6.37) ----------------------------------------------------------


async def test_unit_ready(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return _GOOD


# --- INQUIRY (SPC-4 6.6) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InquiryCdb:
    evpd: bool
    page_code: int
    alloc_len: int


def parse_inquiry(cdb: bytes) -> InquiryCdb:
    evpd = bool(cdb[1] & 0x01)
    page = cdb[2]
    if not evpd and page != 0:
        raise InvalidFieldInCdb(2, 7, "PAGE CODE set with EVPD=0")
    return InquiryCdb(evpd, page, struct.unpack_from(">H", cdb, 3)[0])


def _ascii(text: str, width: int) -> bytes:
    return text.encode("ascii")[:width].ljust(width)


def standard_inquiry(
    peripheral: int, vendor: str, product: str, revision: str, *, hisup: bool = True
) -> bytes:
    """Standard INQUIRY data (SPC-4 6.6.2), 96 bytes."""
    data = bytearray(STANDARD_INQUIRY_LEN)
    data[0] = peripheral
    data[2] = 0x06  # VERSION: SPC-4
    data[3] = (0x10 if hisup else 0) | 0x02  # HISUP, RESPONSE DATA FORMAT 2
    data[4] = STANDARD_INQUIRY_LEN - 5
    data[7] = 0x02  # CMDQUE
    data[8:16] = _ascii(vendor, 8)
    data[16:32] = _ascii(product, 16)
    data[32:36] = _ascii(revision, 4)
    for i, vd in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", data, 58 + 2 * i, vd)
    return bytes(data)


# SPC-4 6.6.2: peripheral qualifier 011b, device type 1Fh: no LU at this LUN.
NO_LUN_INQUIRY = standard_inquiry(0x7F, "", "", "", hisup=False)


async def inquiry(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_inquiry(cmd.cdb)
    if req.evpd:
        data = vpd.vpd_page(lu, cmd.nexus, req.page_code)
    else:
        data = lu.standard_inquiry
    return _truncate(data, req.alloc_len)


# --- REQUEST SENSE (SPC-4 6.39) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSenseCdb:
    desc: bool
    alloc_len: int


def parse_request_sense(cdb: bytes) -> RequestSenseCdb:
    return RequestSenseCdb(bool(cdb[1] & 0x01), cdb[4])


def request_sense_data(req: RequestSenseCdb, sense: Sense | None) -> ScsiResult:
    """Parameter data for REQUEST SENSE; NO SENSE when nothing is pending. Status is GOOD."""
    return _truncate(encode_sense(sense or NO_SENSE, req.desc), req.alloc_len)


async def request_sense(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_request_sense(cmd.cdb)
    # SAM-5 5.14: a pending unit attention is reported (and cleared) as the sense data.
    ua = lu.take_unit_attention(cmd.nexus)
    return request_sense_data(req, ua.sense if ua is not None else None)


# --- MODE SENSE(6)/(10) (SPC-4 6.11, 6.12) -------------------------------------------------


async def mode_sense(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = modes.parse_mode_sense(cmd.cdb)
    data = modes.mode_sense_data(
        req,
        lu.modes,
        num_blocks=lu.num_blocks,
        block_size=lu.block_size,
        write_protected=lu.write_protected,
    )
    return _truncate(data, req.alloc_len)


# --- START STOP UNIT (SBC-3 5.25) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartStopCdb:
    immed: bool
    power_condition: int
    no_flush: bool
    loej: bool
    start: bool


def parse_start_stop(cdb: bytes) -> StartStopCdb:
    return StartStopCdb(
        immed=bool(cdb[1] & 0x01),
        power_condition=cdb[4] >> 4,
        no_flush=bool(cdb[4] & 0x04),
        loej=bool(cdb[4] & 0x02),
        start=bool(cdb[4] & 0x01),
    )


async def start_stop_unit(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_start_stop(cmd.cdb)
    # A virtual disk is always spinning and has no medium to eject: accept. Stopping flushes
    # the cache first unless NO_FLUSH (SBC-3 5.25).
    if not req.start and not req.no_flush and not lu.read_only:
        await lu.flush_or_sense()
    return _GOOD


# --- REPORT LUNS (SPC-4 6.33) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportLunsCdb:
    select_report: int
    alloc_len: int


def parse_report_luns(cdb: bytes) -> ReportLunsCdb:
    select = cdb[2]
    if select not in (0x00, 0x01, 0x02):
        raise InvalidFieldInCdb(2, None, f"SELECT REPORT {select:#04x} not supported")
    return ReportLunsCdb(select, struct.unpack_from(">I", cdb, 6)[0])


def lun_entry(lun: int) -> bytes:
    """An 8-byte single level LUN (SAM-5 4.6): peripheral below 256, flat space above."""
    if lun < 256:
        return bytes((0, lun)) + bytes(6)
    if lun < 0x4000:
        return bytes((0x40 | (lun >> 8), lun & 0xFF)) + bytes(6)
    raise ValueError(f"LUN {lun} cannot be addressed with single level addressing")


def report_luns_data(req: ReportLunsCdb, luns: Iterable[int]) -> ScsiResult:
    # SELECT REPORT 01h lists only well known LUs; we have none.
    listed = [] if req.select_report == 0x01 else sorted(luns)
    body = b"".join(lun_entry(n) for n in listed)
    return _truncate(struct.pack(">II", len(body), 0) + body, req.alloc_len)


async def report_luns(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    # Normally answered by dispatch, which knows the LUN map; alone, an LU reports itself.
    return report_luns_data(parse_report_luns(cmd.cdb), [cmd.lun])


# --- registry rows --------------------------------------------------------------------------

CTRL = 0xC7  # control byte: vendor bits, NACA and LINK are looked at (NACA/LINK rejected)

register(OpInfo(0x00, "TEST UNIT READY", 6, Direction.NONE, test_unit_ready,
                fixed(Direction.NONE, 0), bytes((0x00, 0, 0, 0, 0, CTRL))))
register(OpInfo(0x03, "REQUEST SENSE", 6, Direction.READ, request_sense, alloc_len(4, 1),
                bytes((0x03, 0x01, 0, 0, 0xFF, CTRL)), ua_exempt=True))
register(OpInfo(0x12, "INQUIRY", 6, Direction.READ, inquiry, alloc_len(3, 2),
                bytes((0x12, 0x01, 0xFF, 0xFF, 0xFF, CTRL)), ua_exempt=True))
register(OpInfo(0x1A, "MODE SENSE(6)", 6, Direction.READ, mode_sense, alloc_len(4, 1),
                bytes((0x1A, 0x08, 0xFF, 0xFF, 0xFF, CTRL))))
register(OpInfo(0x1B, "START STOP UNIT", 6, Direction.NONE, start_stop_unit,
                fixed(Direction.NONE, 0), bytes((0x1B, 0x01, 0, 0x0F, 0xF7, CTRL))))
register(OpInfo(0x5A, "MODE SENSE(10)", 10, Direction.READ, mode_sense, alloc_len(7, 2),
                bytes((0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, CTRL))))
register(OpInfo(0xA0, "REPORT LUNS", 12, Direction.READ, report_luns, alloc_len(6, 4),
                bytes((0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTRL)),
                ua_exempt=True, target_level=True))
