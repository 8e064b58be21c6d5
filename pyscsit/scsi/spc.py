"""Primary commands (SPC-4): parse CDB -> typed value -> execute, and their registry rows."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyscsit.scsi import modes, registry, vpd
from pyscsit.scsi.registry import OpInfo, alloc_len, fixed, param_len, register
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

OP_MAINTENANCE_IN = 0xA3
SA_RTPG, SA_RSOC, SA_RSTMF = 0x0A, 0x0C, 0x0D


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
    peripheral: int,
    vendor: str,
    product: str,
    revision: str,
    *,
    hisup: bool = True,
    tpgs: int | None = None,
    tpc: bool | None = None,
) -> bytes:
    """Standard INQUIRY data (SPC-4 6.6.2), 96 bytes.

    ``tpgs`` (TPGS field) and ``tpc`` (3PC bit) default to what the opcode table serves:
    implicit ALUA (01b) when REPORT TARGET PORT GROUPS is registered, 3PC when EXTENDED COPY
    is.
    """
    if tpgs is None:
        tpgs = 0b01 if registry.is_supported(OP_MAINTENANCE_IN, SA_RTPG) else 0
    if tpc is None:
        tpc = registry.is_supported(0x83)  # EXTENDED COPY
    data = bytearray(STANDARD_INQUIRY_LEN)
    data[0] = peripheral
    data[2] = 0x06  # VERSION: SPC-4
    data[3] = (0x10 if hisup else 0) | 0x02  # HISUP, RESPONSE DATA FORMAT 2
    data[4] = STANDARD_INQUIRY_LEN - 5
    data[5] = ((tpgs & 0x03) << 4) | (0x08 if tpc else 0)  # TPGS, 3PC
    data[7] = 0x02  # CMDQUE
    data[8:16] = _ascii(vendor, 8)
    data[16:32] = _ascii(product, 16)
    data[32:36] = _ascii(revision, 4)
    for i, vd in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", data, 58 + 2 * i, vd)
    return bytes(data)


# SPC-4 6.6.2: peripheral qualifier 011b, device type 1Fh: no LU at this LUN.
NO_LUN_INQUIRY = standard_inquiry(0x7F, "", "", "", hisup=False, tpgs=0, tpc=False)


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


# SBC-3 table 60: START_VALID, ACTIVE, IDLE, STANDBY, (5h obsolete), LU_CONTROL,
# FORCE_IDLE_0, FORCE_STANDBY_0; every other POWER CONDITION value is reserved.
_POWER_CONDITIONS = frozenset((0x0, 0x1, 0x2, 0x3, 0x5, 0x7, 0xA, 0xB))


def parse_start_stop(cdb: bytes) -> StartStopCdb:
    if cdb[4] >> 4 not in _POWER_CONDITIONS:
        raise InvalidFieldInCdb(4, 7, f"POWER CONDITION {cdb[4] >> 4:#x} is reserved")
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
    # the cache first unless NO_FLUSH; START and LOEJ only count with POWER CONDITION 0h
    # (SBC-3 5.25).
    if req.power_condition == 0 and not req.start and not req.no_flush and not lu.read_only:
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


# --- MODE SELECT(6)/(10) (SPC-4 6.9, 6.10) -------------------------------------------------


async def mode_select(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = modes.parse_mode_select(cmd.cdb)
    done = ScsiResult(transfer_length=req.param_len)
    if req.param_len == 0:
        return done  # SPC-4 6.9: an empty parameter list is not an error
    data = cmd.data_out if cmd.data_out is not None else memoryview(b"")
    pages = modes.parse_mode_parameters(
        data[: req.param_len], req.ten, lu.modes,
        num_blocks=lu.num_blocks, block_size=lu.block_size,
    )
    if modes.apply_mode_parameters(lu.modes, pages):
        # SPC-4 7.5.1: MODE PARAMETERS CHANGED for every other I_T nexus (shared parameters).
        others = set(lu.known_nexuses())
        others.discard(cmd.nexus)
        lu.establish_unit_attention(modes.UA_MODE_PARAMETERS_CHANGED, others)
    return done


# --- REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), from the opcode table -----------------

SUPPORT_NOT_AVAILABLE, SUPPORT_NONE, SUPPORT_STANDARD = 0b000, 0b001, 0b011
_TIMEOUTS_LEN = 0x0A  # command timeouts descriptor: DESCRIPTOR LENGTH (SPC-4 6.35.4)


@dataclass(frozen=True, slots=True)
class RsocCdb:
    rctd: bool
    options: int  # REPORTING OPTIONS: 0 all, 1 opcode, 2 opcode + SA, 3 opcode (+ SA)
    opcode: int
    service_action: int
    alloc_len: int


def parse_rsoc(cdb: bytes) -> RsocCdb:
    options = cdb[2] & 0x07
    if options > 3:
        raise InvalidFieldInCdb(2, 2, f"REPORTING OPTIONS {options} not supported")
    sa, alloc = struct.unpack_from(">HI", cdb, 4)
    return RsocCdb(bool(cdb[2] & 0x80), options, cdb[3], sa, alloc)


def timeouts_descriptor(op: OpInfo) -> bytes:
    return struct.pack(">HBBII", _TIMEOUTS_LEN, 0, 0, op.nominal_timeout,
                       op.recommended_timeout)


def cdb_usage_data(op: OpInfo) -> bytes:
    """SPC-4 6.35.3: byte 0 is the opcode; a service action field holds the service action
    being described; every other bit is 1 where the device server looks at it."""
    usage = bytearray(op.usage)
    if op.service_action is not None:
        usage[1] = (usage[1] & 0xE0) | op.service_action
    return bytes(usage)


def rsoc_all_commands(rctd: bool) -> bytes:
    """All_commands parameter data: one command descriptor per table row (SPC-4 6.35.2)."""
    body = bytearray()
    for op in registry.all_ops():
        sa = op.service_action
        flags = (0x02 if rctd else 0) | (0x01 if sa is not None else 0)  # CTDP, SERVACTV
        body += struct.pack(">BxHxBH", op.opcode, sa or 0, flags, op.cdb_len)
        if rctd:
            body += timeouts_descriptor(op)
    return struct.pack(">I", len(body)) + body


def rsoc_one_command(req: RsocCdb) -> bytes:
    """One_command parameter data (SPC-4 6.35.3); an unsupported command is SUPPORT 001b."""
    has_sa = registry.has_service_actions(req.opcode)
    op: OpInfo | None
    if req.options == 1:
        if has_sa:
            raise InvalidFieldInCdb(2, 2, "operation code has service actions")
        op = registry.find(req.opcode)
    elif req.options == 2:
        if not has_sa and registry.find(req.opcode) is not None:
            raise InvalidFieldInCdb(2, 2, "operation code has no service actions")
        op = registry.find(req.opcode, req.service_action)
    elif has_sa:
        op = registry.find(req.opcode, req.service_action)
    else:  # 3: an opcode without service actions supports only service action 0
        op = registry.find(req.opcode) if req.service_action == 0 else None
    if op is None:
        return bytes((0, SUPPORT_NONE, 0, 0))
    usage = cdb_usage_data(op)
    head = bytes((0, (0x80 if req.rctd else 0) | SUPPORT_STANDARD))  # CTDP, SUPPORT
    out = head + struct.pack(">H", len(usage)) + usage
    return out + timeouts_descriptor(op) if req.rctd else out


async def report_supported_opcodes(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_rsoc(cmd.cdb)
    data = rsoc_all_commands(req.rctd) if req.options == 0 else rsoc_one_command(req)
    return _truncate(data, req.alloc_len)


# --- REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36) ------------------------------

# What the iSCSI layer's task management answers with FUNCTION COMPLETE (session.py
# Connection._tmf): ABORT TASK, ABORT TASK SET, CLEAR ACA (trivially: NACA=1 is refused, so no
# ACA ever exists), CLEAR TASK SET, LOGICAL UNIT RESET, TARGET WARM/COLD RESET. QUERY TASK,
# QUERY TASK SET, QUERY ASYNCHRONOUS EVENT and I_T NEXUS RESET answer "not supported".
TMF_ATS = 0x80  # ABORT TASK SET
TMF_ATSS = 0x40  # ABORT TASK
TMF_CACAS = 0x20  # CLEAR ACA
TMF_CTSS = 0x10  # CLEAR TASK SET
TMF_LURS = 0x08  # LOGICAL UNIT RESET
TMF_TRS = 0x02  # TARGET RESET (iSCSI TARGET WARM RESET / TARGET COLD RESET)
SUPPORTED_TMF = TMF_ATS | TMF_ATSS | TMF_CACAS | TMF_CTSS | TMF_LURS | TMF_TRS


@dataclass(frozen=True, slots=True)
class RstmfCdb:
    repd: bool  # extended format: the timeouts fields (we report none)
    alloc_len: int


def parse_rstmf(cdb: bytes) -> RstmfCdb:
    return RstmfCdb(bool(cdb[2] & 0x80), struct.unpack_from(">I", cdb, 6)[0])


def rstmf_data(req: RstmfCdb) -> bytes:
    if not req.repd:
        return bytes((SUPPORTED_TMF, 0, 0, 0))
    # REPD=1: 16 bytes, ADDITIONAL DATA LENGTH 0Ch; TMFTMOV=0: no timeouts are reported.
    return bytes((SUPPORTED_TMF, 0, 0, 0x0C)) + bytes(12)


async def report_supported_tmf(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_rstmf(cmd.cdb)
    return _truncate(rstmf_data(req), req.alloc_len)


# --- REPORT TARGET PORT GROUPS (SPC-4 6.37): implicit ALUA, one group ----------------------

AAS_ACTIVE_OPTIMIZED = 0x0
AO_SUP = 0x01


@dataclass(frozen=True, slots=True)
class RtpgCdb:
    extended: bool  # PARAMETER DATA FORMAT 001b: extended header
    alloc_len: int


def parse_rtpg(cdb: bytes) -> RtpgCdb:
    fmt = cdb[1] >> 5
    if fmt > 1:
        raise InvalidFieldInCdb(1, 7, f"PARAMETER DATA FORMAT {fmt} not supported")
    return RtpgCdb(fmt == 1, struct.unpack_from(">I", cdb, 6)[0])


def rtpg_data(req: RtpgCdb, relative_ports: Iterable[int]) -> bytes:
    """One target port group holding every target port, always active/optimized; the
    group number and port numbers are the ones VPD 0x83 reports (types 5 and 4)."""
    ports = sorted(set(relative_ports))
    desc = struct.pack(">BBHxxxB", AAS_ACTIVE_OPTIMIZED, AO_SUP, vpd.TARGET_PORT_GROUP,
                       len(ports))
    desc += b"".join(struct.pack(">xxH", p & 0xFFFF) for p in ports)
    if req.extended:
        # FORMAT TYPE 001b, IMPLICIT TRANSITION TIME 0 (no transitions ever happen)
        return struct.pack(">IBBxx", 4 + len(desc), 0x10, 0) + desc
    return struct.pack(">I", len(desc)) + desc


async def report_target_port_groups(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_rtpg(cmd.cdb)
    ports = {cmd.nexus.relative_port} | {n.relative_port for n in lu.known_nexuses()}
    return _truncate(rtpg_data(req, ports), req.alloc_len)


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
register(OpInfo(0x15, "MODE SELECT(6)", 6, Direction.WRITE, mode_select, param_len(4, 1),
                bytes((0x15, 0x11, 0, 0, 0xFF, CTRL))))
register(OpInfo(0x55, "MODE SELECT(10)", 10, Direction.WRITE, mode_select, param_len(7, 2),
                bytes((0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTRL))))
# MAINTENANCE IN (A3h): byte 1 bits 4:0 are the service action; ALLOCATION LENGTH bytes 6-9.
_A3_ALLOC = (0xFF, 0xFF, 0xFF, 0xFF, 0, CTRL)
register(OpInfo(OP_MAINTENANCE_IN, "REPORT TARGET PORT GROUPS", 12, Direction.READ,
                report_target_port_groups, alloc_len(6, 4),
                bytes((0xA3, 0xFF, 0, 0, 0, 0, *_A3_ALLOC)), service_action=SA_RTPG))
register(OpInfo(OP_MAINTENANCE_IN, "REPORT SUPPORTED OPERATION CODES", 12, Direction.READ,
                report_supported_opcodes, alloc_len(6, 4),
                bytes((0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, *_A3_ALLOC)), service_action=SA_RSOC))
register(OpInfo(OP_MAINTENANCE_IN, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", 12,
                Direction.READ, report_supported_tmf, alloc_len(6, 4),
                bytes((0xA3, 0x1F, 0x80, 0, 0, 0, *_A3_ALLOC)), service_action=SA_RSTMF))
