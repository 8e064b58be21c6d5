"""Persistent reservation wire formats: CDBs, PERSISTENT RESERVE OUT parameter lists, iSCSI
TransportIDs and PERSISTENT RESERVE IN parameter data (SPC-4 6.15, 6.16, 7.6.4.6).

Pure functions over bytes; reservations.py holds the state and the rules.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from pyscsit.scsi.sense import (
    InvalidFieldInCdb,
    InvalidFieldInParameterList,
    ParameterListLengthError,
)

ISCSI_PROTOCOL_ID = 0x5  # SPC-4 7.6.1 table 362
LU_SCOPE = 0x0
BASIC_PARAM_LEN = 24  # SPC-4 6.16.3: PARAMETER LIST LENGTH without SPEC_I_PT


class PrinAction(IntEnum):
    READ_KEYS = 0x00
    READ_RESERVATION = 0x01
    REPORT_CAPABILITIES = 0x02
    READ_FULL_STATUS = 0x03


class ProutAction(IntEnum):
    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE = 0x06
    REGISTER_AND_MOVE = 0x07


class PrType(IntEnum):
    """SPC-4 6.15.3.4 table 186."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_RO = 0x5  # registrants only
    EXCLUSIVE_ACCESS_RO = 0x6
    WRITE_EXCLUSIVE_AR = 0x7  # all registrants
    EXCLUSIVE_ACCESS_AR = 0x8

    @property
    def all_registrants(self) -> bool:
        return self in (PrType.WRITE_EXCLUSIVE_AR, PrType.EXCLUSIVE_ACCESS_AR)

    @property
    def registrants_only(self) -> bool:
        return self in (PrType.WRITE_EXCLUSIVE_RO, PrType.EXCLUSIVE_ACCESS_RO)

    @property
    def write_exclusive(self) -> bool:
        return self in (PrType.WRITE_EXCLUSIVE, PrType.WRITE_EXCLUSIVE_RO,
                        PrType.WRITE_EXCLUSIVE_AR)


# REPORT CAPABILITIES PERSISTENT RESERVATION TYPE MASK (SPC-4 6.15.4 table 193)
TYPE_MASK = {
    PrType.WRITE_EXCLUSIVE_AR: 0x8000, PrType.EXCLUSIVE_ACCESS_RO: 0x4000,
    PrType.WRITE_EXCLUSIVE_RO: 0x2000, PrType.EXCLUSIVE_ACCESS: 0x0800,
    PrType.WRITE_EXCLUSIVE: 0x0200, PrType.EXCLUSIVE_ACCESS_AR: 0x0001,
}


# --- CDBs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrinCdb:
    action: int
    alloc_len: int


def parse_prin(cdb: bytes) -> PrinCdb:
    return PrinCdb(cdb[1] & 0x1F, struct.unpack_from(">H", cdb, 7)[0])


@dataclass(frozen=True, slots=True)
class ProutCdb:
    action: int
    scope: int
    type: int
    param_len: int

    def reservation_type(self) -> PrType:
        """SCOPE and TYPE of a RESERVE, RELEASE or preempting PREEMPT (SPC-4 6.16.2)."""
        if self.scope != LU_SCOPE:
            raise InvalidFieldInCdb(2, 7, "only LU_SCOPE reservations exist")
        try:
            return PrType(self.type)
        except ValueError:
            raise InvalidFieldInCdb(2, 3, f"reservation type {self.type:#x}") from None


def parse_prout(cdb: bytes) -> ProutCdb:
    return ProutCdb(cdb[1] & 0x1F, cdb[2] >> 4, cdb[2] & 0x0F, struct.unpack_from(">I", cdb, 5)[0])


# --- TransportIDs (SPC-4 7.6.4.6) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransportId:
    """An iSCSI initiator: format 00b names the device (every ISID), 01b one port."""

    name: str
    isid: int | None = None

    def encode(self) -> bytes:
        text = self.name if self.isid is None else f"{self.name},i,0x{self.isid:012x}"
        body = text.encode() + b"\0"
        body += bytes(-len(body) % 4)  # ADDITIONAL LENGTH is a multiple of 4
        if len(body) < 20:
            body = body.ljust(20, b"\0")  # at least 24 bytes in all
        fmt = 0x00 if self.isid is None else 0x40
        return bytes((fmt | ISCSI_PROTOCOL_ID, 0)) + struct.pack(">H", len(body)) + body


def decode_transport_id(buf: bytes, offset: int) -> tuple[TransportId, int]:
    """Decode the TransportID at ``offset`` of a parameter list; returns it and its length.
    Errors point into the parameter list (5/26/00)."""
    if len(buf) - offset < 4:
        raise InvalidFieldInParameterList(offset, None, "truncated TransportID")
    b0 = buf[offset]
    if b0 & 0x0F != ISCSI_PROTOCOL_ID:
        raise InvalidFieldInParameterList(offset, 3, "not an iSCSI TransportID")
    fmt = b0 >> 6
    if fmt > 1 or b0 & 0x30:
        raise InvalidFieldInParameterList(offset, 7, "unknown TransportID format")
    add_len = struct.unpack_from(">H", buf, offset + 2)[0]
    end = offset + 4 + add_len
    if add_len % 4 or add_len < 4 or end > len(buf):
        raise InvalidFieldInParameterList(offset + 2, None, "bad TransportID length")
    text_bytes = buf[offset + 4: end].split(b"\0", 1)[0]
    try:
        text = text_bytes.decode()
    except UnicodeDecodeError:
        raise InvalidFieldInParameterList(offset + 4, None, "iSCSI name is not UTF-8") from None
    isid: int | None = None
    if fmt == 1:
        name, sep, rest = text.partition(",i,0x")
        if not sep:
            name, sep, rest = text.partition(",I,0X")
        try:
            isid = int(rest, 16) if sep and len(rest) == 12 else -1
        except ValueError:
            isid = -1
        if isid < 0:
            raise InvalidFieldInParameterList(offset + 4, None, "bad ISID in TransportID")
        text = name
    if not text or any(c in text for c in ", \t"):
        raise InvalidFieldInParameterList(offset + 4, None, "bad iSCSI name in TransportID")
    return TransportId(text, isid), end - offset


# --- PERSISTENT RESERVE OUT parameter lists (SPC-4 6.16.3, 6.16.4) -------------------------------


@dataclass(frozen=True, slots=True)
class ProutParams:
    key: int  # RESERVATION KEY
    sa_key: int  # SERVICE ACTION RESERVATION KEY
    spec_i_pt: bool = False
    all_tg_pt: bool = False
    aptpl: bool = False
    transport_ids: tuple[TransportId, ...] = ()


@dataclass(frozen=True, slots=True)
class MoveParams:
    key: int
    sa_key: int
    unreg: bool
    aptpl: bool
    relative_port: int
    transport_id: TransportId


def parse_prout_params(action: int, param_len: int, data: bytes) -> ProutParams | MoveParams:
    if len(data) < param_len:
        raise ParameterListLengthError(f"{len(data)} of {param_len} parameter bytes arrived")
    data = data[:param_len]
    if action == ProutAction.REGISTER_AND_MOVE:
        return _parse_move(data)
    if param_len < BASIC_PARAM_LEN:
        raise ParameterListLengthError(f"PARAMETER LIST LENGTH {param_len}, want 24")
    key, sa_key = struct.unpack_from(">QQ", data, 0)
    flags = data[20]
    if flags & 0xF2:
        raise InvalidFieldInParameterList(20, (flags & 0xF2).bit_length() - 1, "reserved bit")
    spec_i_pt, all_tg_pt, aptpl = bool(flags & 0x08), bool(flags & 0x04), bool(flags & 0x01)
    if not spec_i_pt:
        if param_len != BASIC_PARAM_LEN:
            raise ParameterListLengthError(f"PARAMETER LIST LENGTH {param_len}, want 24")
        return ProutParams(key, sa_key, False, all_tg_pt, aptpl)
    if action != ProutAction.REGISTER:
        # SPC-4 6.16.3: SPEC_I_PT is valid only with REGISTER
        raise InvalidFieldInParameterList(20, 3, "SPEC_I_PT with another service action")
    if param_len < BASIC_PARAM_LEN + 4:
        raise ParameterListLengthError("SPEC_I_PT without TRANSPORTID PARAMETER DATA LENGTH")
    tid_len = struct.unpack_from(">I", data, 24)[0]
    if 28 + tid_len > param_len:
        raise ParameterListLengthError(f"TransportIDs overrun the {param_len} byte list")
    tids: list[TransportId] = []
    off, end = 28, 28 + tid_len
    window = data[:end]
    while off < end:
        tid, n = decode_transport_id(window, off)
        tids.append(tid)
        off += n
    return ProutParams(key, sa_key, True, all_tg_pt, aptpl, tuple(tids))


def _parse_move(data: bytes) -> MoveParams:
    if len(data) < BASIC_PARAM_LEN:
        raise ParameterListLengthError("REGISTER AND MOVE list shorter than 24 bytes")
    key, sa_key = struct.unpack_from(">QQ", data, 0)
    flags = data[17]
    if flags & 0xFC:
        raise InvalidFieldInParameterList(17, (flags & 0xFC).bit_length() - 1, "reserved bit")
    rel_port = struct.unpack_from(">H", data, 18)[0]
    tid_len = struct.unpack_from(">I", data, 20)[0]
    if 24 + tid_len > len(data):
        raise ParameterListLengthError("TransportID overruns the parameter list")
    if tid_len < 24:
        raise InvalidFieldInParameterList(20, None, "TRANSPORTID PARAMETER DATA LENGTH")
    tid, _ = decode_transport_id(data[: 24 + tid_len], 24)
    return MoveParams(key, sa_key, bool(flags & 0x02), bool(flags & 0x01), rel_port, tid)


def encode_prout_params(p: ProutParams) -> bytes:
    """The parameter list an initiator sends (tests and tools use it)."""
    flags = (0x08 if p.spec_i_pt else 0) | (0x04 if p.all_tg_pt else 0) | (1 if p.aptpl else 0)
    out = struct.pack(">QQIBBH", p.key, p.sa_key, 0, flags, 0, 0)
    if p.spec_i_pt:
        tids = b"".join(t.encode() for t in p.transport_ids)
        out += struct.pack(">I", len(tids)) + tids
    return out


def encode_move_params(p: MoveParams) -> bytes:
    tid = p.transport_id.encode()
    flags = (0x02 if p.unreg else 0) | (0x01 if p.aptpl else 0)
    return struct.pack(">QQBBHI", p.key, p.sa_key, 0, flags, p.relative_port, len(tid)) + tid


# --- PERSISTENT RESERVE IN parameter data (SPC-4 6.15) ------------------------------------------


def read_keys_data(generation: int, keys: Iterable[int]) -> bytes:
    body = b"".join(struct.pack(">Q", k) for k in keys)
    return struct.pack(">II", generation, len(body)) + body


def read_reservation_data(generation: int, reservation: tuple[int, PrType] | None) -> bytes:
    if reservation is None:
        return struct.pack(">II", generation, 0)
    key, pr_type = reservation
    body = struct.pack(">QIBBH", key, 0, 0, (LU_SCOPE << 4) | pr_type, 0)
    return struct.pack(">II", generation, len(body)) + body


def report_capabilities_data(aptpl_active: bool) -> bytes:
    """CRH: RESERVE/RELEASE follow SPC-4 5.9.3; SIP_C, ATP_C, PTPL_C: SPEC_I_PT, ALL_TG_PT and
    APTPL are supported; TMV with every type; ALLOW COMMANDS 001b: TEST UNIT READY passes
    every reservation."""
    b2 = 0x10 | 0x08 | 0x04 | 0x01
    b3 = 0x80 | (0x1 << 4) | (0x01 if aptpl_active else 0)
    mask = 0
    for m in TYPE_MASK.values():
        mask |= m
    return struct.pack(">HBBHH", 8, b2, b3, mask, 0)


@dataclass(frozen=True, slots=True)
class FullStatus:
    key: int
    all_tg_pt: bool
    holder: bool
    pr_type: PrType | None
    relative_port: int
    transport_id: TransportId


def read_full_status_data(generation: int, entries: Iterable[FullStatus]) -> bytes:
    body = bytearray()
    for e in entries:
        tid = e.transport_id.encode()
        flags = (0x02 if e.all_tg_pt else 0) | (0x01 if e.holder else 0)
        scope_type = (LU_SCOPE << 4) | e.pr_type if e.holder and e.pr_type is not None else 0
        body += struct.pack(">QIBBIHI", e.key, 0, flags, scope_type, 0, e.relative_port,
                            len(tid))
        body += tid
    return struct.pack(">II", generation, len(body)) + bytes(body)
