"""Sans-IO codec for every RFC 7143 PDU type (§11), both directions.

No sockets, no asyncio. ``decode_bhs`` turns a 48-byte Basic Header Segment into a typed PDU;
``encode`` turns a PDU back into wire buffers (header, optional header digest, data, padding,
optional data digest) ready for ``writelines``; ``PduReader`` (framing.py, re-exported here)
frames a byte stream into PDUs, checking digests. Every decode failure raises ``PduError``
carrying the Reject reason code.
"""

from __future__ import annotations

import struct
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

from pyscsit.digest import crc32c

BHS_LEN = 48
RESERVED_TAG = 0xFFFFFFFF

Buffer = bytes | bytearray | memoryview


class Opcode(IntEnum):
    # initiator opcodes (§11.1.1)
    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    SCSI_DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    # target opcodes
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    SCSI_DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


class RejectReason(IntEnum):
    """§11.17.1."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OP_REJECT = 0x0A
    DEPRECATED = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class PduError(Exception):
    """A PDU that cannot be decoded. ``reason`` is the Reject reason (§11.17.1);
    ``fatal`` means framing is lost and the connection must close (§7.8)."""

    def __init__(self, message: str, reason: RejectReason = RejectReason.PROTOCOL_ERROR,
                 *, fatal: bool = False, header: bytes = b"") -> None:
        super().__init__(message)
        self.reason = reason
        self.fatal = fatal
        self.header = header


_I = 0x40
_F = 0x80

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_Q = struct.Struct(">Q")


@dataclass(slots=True)
class Pdu:
    """Fields common to every PDU; subclasses add their own (names follow RFC 7143)."""

    OPCODE: ClassVar[Opcode]

    immediate: bool = False
    final: bool = True
    itt: int = 0
    lun: int = 0  # the 8-byte LUN field as an integer (see scsi.dispatch for addressing)
    ahs: bytes = b""
    data: Buffer = b""

    # -- per-type layout: every PDU type (PDU_TYPES) defines both ---------------------------
    # encode_bhs / decode_bhs handle the common fields (opcode, I, F, lengths, ITT) around them.
    # Checked by mypy; no abc.ABC, whose metaclass would slow isinstance on the data path.
    @abstractmethod
    def _pack_specific(self, h: bytearray) -> None:
        """Write this type's own fields into the BHS ``h``."""

    @classmethod
    @abstractmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        """This type's own fields of the BHS ``h``, as constructor keywords."""


def _u32(b: Buffer, o: int) -> int:
    return int(_U32.unpack_from(b, o)[0])


# ---------------------------------------------------------------------------------------------
# Initiator -> target
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class NopOut(Pdu):
    OPCODE = Opcode.NOP_OUT
    ttt: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 24, self.cmd_sn)
        _U32.pack_into(h, 28, self.exp_stat_sn)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"lun": _Q.unpack_from(h, 8)[0], "ttt": _u32(h, 20), "cmd_sn": _u32(h, 24),
                "exp_stat_sn": _u32(h, 28)}


@dataclass(slots=True)
class ScsiCommandPdu(Pdu):
    OPCODE = Opcode.SCSI_COMMAND
    read: bool = False
    write: bool = False
    attr: int = 1  # task attribute: 0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA
    expected_length: int = 0  # Expected Data Transfer Length
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    cdb: bytes = bytes(16)
    # Bidirectional Expected Read-Data Length AHS (type 2), when present
    bidi_read_length: int | None = None

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= (0x40 if self.read else 0) | (0x20 if self.write else 0) | (self.attr & 7)
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.expected_length)
        _U32.pack_into(h, 24, self.cmd_sn)
        _U32.pack_into(h, 28, self.exp_stat_sn)
        h[32:48] = self.cdb[:16].ljust(16, b"\0")

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"read": bool(h[1] & 0x40), "write": bool(h[1] & 0x20), "attr": h[1] & 7,
                "lun": _Q.unpack_from(h, 8)[0], "expected_length": _u32(h, 20),
                "cmd_sn": _u32(h, 24), "exp_stat_sn": _u32(h, 28), "cdb": bytes(h[32:48])}


class TmfFunction(IntEnum):
    """§11.5.1."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(IntEnum):
    """§11.6.1."""

    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


@dataclass(slots=True)
class TaskMgmtRequest(Pdu):
    OPCODE = Opcode.TASK_MGMT_REQUEST
    function: int = 0
    referenced_task_tag: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    ref_cmd_sn: int = 0
    exp_data_sn: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= self.function & 0x7F
        _Q.pack_into(h, 8, self.lun)
        struct.pack_into(">IIIII", h, 20, self.referenced_task_tag, self.cmd_sn,
                         self.exp_stat_sn, self.ref_cmd_sn, self.exp_data_sn)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        rtt, cmd_sn, esn, ref, eds = struct.unpack_from(">IIIII", h, 20)
        return {"function": h[1] & 0x7F, "lun": _Q.unpack_from(h, 8)[0],
                "referenced_task_tag": rtt, "cmd_sn": cmd_sn, "exp_stat_sn": esn,
                "ref_cmd_sn": ref, "exp_data_sn": eds}


@dataclass(slots=True)
class LoginRequest(Pdu):
    OPCODE = Opcode.LOGIN_REQUEST
    immediate: bool = True
    final: bool = False  # the T (transit) bit
    cont: bool = False  # the C (continue) bit
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_min: int = 0
    isid: int = 0  # 48 bits
    tsih: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    @property
    def transit(self) -> bool:
        return self.final

    def _pack_specific(self, h: bytearray) -> None:
        h[1] = ((_F if self.final else 0) | (0x40 if self.cont else 0)
                | ((self.csg & 3) << 2) | (self.nsg & 3))
        h[2], h[3] = self.version_max, self.version_min
        h[8:14] = self.isid.to_bytes(6, "big")
        _U16.pack_into(h, 14, self.tsih)
        _U16.pack_into(h, 20, self.cid)
        _U32.pack_into(h, 24, self.cmd_sn)
        _U32.pack_into(h, 28, self.exp_stat_sn)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"final": bool(h[1] & _F), "cont": bool(h[1] & 0x40), "csg": (h[1] >> 2) & 3,
                "nsg": h[1] & 3, "version_max": h[2], "version_min": h[3],
                "isid": int.from_bytes(h[8:14], "big"), "tsih": _U16.unpack_from(h, 14)[0],
                "cid": _U16.unpack_from(h, 20)[0], "cmd_sn": _u32(h, 24),
                "exp_stat_sn": _u32(h, 28)}


@dataclass(slots=True)
class TextRequest(Pdu):
    OPCODE = Opcode.TEXT_REQUEST
    cont: bool = False
    ttt: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= 0x40 if self.cont else 0
        _Q.pack_into(h, 8, self.lun)
        struct.pack_into(">III", h, 20, self.ttt, self.cmd_sn, self.exp_stat_sn)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        ttt, cmd_sn, esn = struct.unpack_from(">III", h, 20)
        return {"cont": bool(h[1] & 0x40), "lun": _Q.unpack_from(h, 8)[0], "ttt": ttt,
                "cmd_sn": cmd_sn, "exp_stat_sn": esn}


@dataclass(slots=True)
class DataOut(Pdu):
    OPCODE = Opcode.SCSI_DATA_OUT
    ttt: int = RESERVED_TAG
    exp_stat_sn: int = 0
    data_sn: int = 0
    buffer_offset: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 28, self.exp_stat_sn)
        _U32.pack_into(h, 36, self.data_sn)
        _U32.pack_into(h, 40, self.buffer_offset)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"lun": _Q.unpack_from(h, 8)[0], "ttt": _u32(h, 20), "exp_stat_sn": _u32(h, 28),
                "data_sn": _u32(h, 36), "buffer_offset": _u32(h, 40)}


class LogoutReason(IntEnum):
    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_CONNECTION_FOR_RECOVERY = 2


@dataclass(slots=True)
class LogoutRequest(Pdu):
    OPCODE = Opcode.LOGOUT_REQUEST
    reason: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= self.reason & 0x7F
        _U16.pack_into(h, 20, self.cid)
        _U32.pack_into(h, 24, self.cmd_sn)
        _U32.pack_into(h, 28, self.exp_stat_sn)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"reason": h[1] & 0x7F, "cid": _U16.unpack_from(h, 20)[0],
                "cmd_sn": _u32(h, 24), "exp_stat_sn": _u32(h, 28)}


@dataclass(slots=True)
class SnackRequest(Pdu):
    OPCODE = Opcode.SNACK_REQUEST
    type: int = 0
    ttt: int = RESERVED_TAG  # or SNACK Tag
    exp_stat_sn: int = 0
    beg_run: int = 0
    run_length: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= self.type & 0x0F
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        _U32.pack_into(h, 28, self.exp_stat_sn)
        _U32.pack_into(h, 40, self.beg_run)
        _U32.pack_into(h, 44, self.run_length)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"type": h[1] & 0x0F, "lun": _Q.unpack_from(h, 8)[0], "ttt": _u32(h, 20),
                "exp_stat_sn": _u32(h, 28), "beg_run": _u32(h, 40),
                "run_length": _u32(h, 44)}


# ---------------------------------------------------------------------------------------------
# Target -> initiator. StatSN / ExpCmdSN / MaxCmdSN are filled in by the session when sent.
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _TargetPdu(Pdu):
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0

    def _pack_sns(self, h: bytearray) -> None:
        struct.pack_into(">III", h, 24, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn)

    @staticmethod
    def _unpack_sns(h: Buffer) -> dict[str, object]:
        s, e, m = struct.unpack_from(">III", h, 24)
        return {"stat_sn": s, "exp_cmd_sn": e, "max_cmd_sn": m}


@dataclass(slots=True)
class NopIn(_TargetPdu):
    OPCODE = Opcode.NOP_IN
    ttt: int = RESERVED_TAG

    def _pack_specific(self, h: bytearray) -> None:
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        self._pack_sns(h)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"lun": _Q.unpack_from(h, 8)[0], "ttt": _u32(h, 20), **cls._unpack_sns(h)}


@dataclass(slots=True)
class ScsiResponse(_TargetPdu):
    OPCODE = Opcode.SCSI_RESPONSE
    response: int = 0  # 0 = command completed at target
    status: int = 0
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    overflow: bool = False
    underflow: bool = False
    snack_tag: int = 0
    exp_data_sn: int = 0
    bidi_read_residual: int = 0
    residual: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= ((0x10 if self.bidi_overflow else 0) | (0x08 if self.bidi_underflow else 0)
                 | (0x04 if self.overflow else 0) | (0x02 if self.underflow else 0))
        h[2], h[3] = self.response, self.status
        _U32.pack_into(h, 20, self.snack_tag)
        self._pack_sns(h)
        struct.pack_into(">III", h, 36, self.exp_data_sn, self.bidi_read_residual,
                         self.residual)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        eds, brr, rc = struct.unpack_from(">III", h, 36)
        return {"bidi_overflow": bool(h[1] & 0x10), "bidi_underflow": bool(h[1] & 0x08),
                "overflow": bool(h[1] & 0x04), "underflow": bool(h[1] & 0x02),
                "response": h[2], "status": h[3], "snack_tag": _u32(h, 20),
                **cls._unpack_sns(h), "exp_data_sn": eds, "bidi_read_residual": brr,
                "residual": rc}


@dataclass(slots=True)
class TaskMgmtResponse(_TargetPdu):
    OPCODE = Opcode.TASK_MGMT_RESPONSE
    response: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[2] = self.response
        self._pack_sns(h)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"response": h[2], **cls._unpack_sns(h)}


@dataclass(slots=True)
class LoginResponse(_TargetPdu):
    OPCODE = Opcode.LOGIN_RESPONSE
    final: bool = False  # the T bit
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_active: int = 0
    isid: int = 0
    tsih: int = 0
    status_class: int = 0
    status_detail: int = 0

    @property
    def transit(self) -> bool:
        return self.final

    def _pack_specific(self, h: bytearray) -> None:
        h[1] = ((_F if self.final else 0) | (0x40 if self.cont else 0)
                | ((self.csg & 3) << 2) | (self.nsg & 3))
        h[2], h[3] = self.version_max, self.version_active
        h[8:14] = self.isid.to_bytes(6, "big")
        _U16.pack_into(h, 14, self.tsih)
        self._pack_sns(h)
        h[36], h[37] = self.status_class, self.status_detail

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"final": bool(h[1] & _F), "cont": bool(h[1] & 0x40), "csg": (h[1] >> 2) & 3,
                "nsg": h[1] & 3, "version_max": h[2], "version_active": h[3],
                "isid": int.from_bytes(h[8:14], "big"), "tsih": _U16.unpack_from(h, 14)[0],
                **cls._unpack_sns(h), "status_class": h[36], "status_detail": h[37]}


@dataclass(slots=True)
class TextResponse(_TargetPdu):
    OPCODE = Opcode.TEXT_RESPONSE
    cont: bool = False
    ttt: int = RESERVED_TAG

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= 0x40 if self.cont else 0
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        self._pack_sns(h)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"cont": bool(h[1] & 0x40), "lun": _Q.unpack_from(h, 8)[0],
                "ttt": _u32(h, 20), **cls._unpack_sns(h)}


@dataclass(slots=True)
class DataIn(_TargetPdu):
    OPCODE = Opcode.SCSI_DATA_IN
    final: bool = False
    ack: bool = False
    overflow: bool = False
    underflow: bool = False
    has_status: bool = False  # the S bit
    status: int = 0
    ttt: int = RESERVED_TAG
    data_sn: int = 0
    buffer_offset: int = 0
    residual: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[1] |= ((0x40 if self.ack else 0) | (0x04 if self.overflow else 0)
                 | (0x02 if self.underflow else 0) | (0x01 if self.has_status else 0))
        h[3] = self.status if self.has_status else 0
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        self._pack_sns(h)
        struct.pack_into(">III", h, 36, self.data_sn, self.buffer_offset, self.residual)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        ds, bo, rc = struct.unpack_from(">III", h, 36)
        return {"ack": bool(h[1] & 0x40), "overflow": bool(h[1] & 0x04),
                "underflow": bool(h[1] & 0x02), "has_status": bool(h[1] & 0x01),
                "status": h[3], "lun": _Q.unpack_from(h, 8)[0], "ttt": _u32(h, 20),
                **cls._unpack_sns(h), "data_sn": ds, "buffer_offset": bo, "residual": rc}


@dataclass(slots=True)
class LogoutResponse(_TargetPdu):
    OPCODE = Opcode.LOGOUT_RESPONSE
    response: int = 0
    time2wait: int = 0
    time2retain: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        h[2] = self.response
        self._pack_sns(h)
        struct.pack_into(">HH", h, 40, self.time2wait, self.time2retain)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        w, r = struct.unpack_from(">HH", h, 40)
        return {"response": h[2], **cls._unpack_sns(h), "time2wait": w, "time2retain": r}


@dataclass(slots=True)
class R2T(_TargetPdu):
    OPCODE = Opcode.R2T
    ttt: int = 0
    r2t_sn: int = 0
    buffer_offset: int = 0
    desired_length: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        _Q.pack_into(h, 8, self.lun)
        _U32.pack_into(h, 20, self.ttt)
        self._pack_sns(h)
        struct.pack_into(">III", h, 36, self.r2t_sn, self.buffer_offset, self.desired_length)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        sn, bo, dl = struct.unpack_from(">III", h, 36)
        return {"lun": _Q.unpack_from(h, 8)[0], "ttt": _u32(h, 20), **cls._unpack_sns(h),
                "r2t_sn": sn, "buffer_offset": bo, "desired_length": dl}


@dataclass(slots=True)
class AsyncMessage(_TargetPdu):
    OPCODE = Opcode.ASYNC_MESSAGE
    itt: int = RESERVED_TAG
    async_event: int = 0
    async_vcode: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0

    def _pack_specific(self, h: bytearray) -> None:
        _Q.pack_into(h, 8, self.lun)
        self._pack_sns(h)
        struct.pack_into(">BBHHH", h, 36, self.async_event, self.async_vcode, self.parameter1,
                         self.parameter2, self.parameter3)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        ev, vc, p1, p2, p3 = struct.unpack_from(">BBHHH", h, 36)
        return {"lun": _Q.unpack_from(h, 8)[0], **cls._unpack_sns(h), "async_event": ev,
                "async_vcode": vc, "parameter1": p1, "parameter2": p2, "parameter3": p3}


@dataclass(slots=True)
class Reject(_TargetPdu):
    OPCODE = Opcode.REJECT
    itt: int = RESERVED_TAG
    reason: int = 0
    data_sn: int = 0  # DataSN/R2TSN

    def _pack_specific(self, h: bytearray) -> None:
        h[2] = self.reason
        self._pack_sns(h)
        _U32.pack_into(h, 36, self.data_sn)

    @classmethod
    def _unpack_specific(cls, h: Buffer) -> dict[str, object]:
        return {"reason": h[2], **cls._unpack_sns(h), "data_sn": _u32(h, 36)}


PDU_TYPES: dict[int, type[Pdu]] = {
    cls.OPCODE: cls
    for cls in (NopOut, ScsiCommandPdu, TaskMgmtRequest, LoginRequest, TextRequest, DataOut,
                LogoutRequest, SnackRequest, NopIn, ScsiResponse, TaskMgmtResponse,
                LoginResponse, TextResponse, DataIn, LogoutResponse, R2T, AsyncMessage, Reject)
}

# Target PDUs never carry the I bit; these carry F in byte 1 bit 7 with no other meaning.
_TARGET_OPCODES = frozenset(op for op in PDU_TYPES if op & 0x20)


# ---------------------------------------------------------------------------------------------
# Header segment encode/decode
# ---------------------------------------------------------------------------------------------

def _data_len(data: Buffer) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def encode_bhs(pdu: Pdu) -> bytearray:
    """The 48-byte BHS of ``pdu`` followed by its AHS (no digests, no data)."""
    h = bytearray(BHS_LEN)
    op = pdu.OPCODE
    h[0] = op | (_I if pdu.immediate and op not in _TARGET_OPCODES else 0)
    h[1] = _F if pdu.final else 0
    pdu._pack_specific(h)
    ahs = pdu.ahs
    if isinstance(pdu, ScsiCommandPdu):
        ahs = bytes(ahs) + _command_ahs(pdu)
    if len(ahs) % 4:
        raise ValueError("AHS length must be a multiple of 4")
    h[4] = len(ahs) // 4
    dlen = _data_len(pdu.data)
    if dlen >= 1 << 24:
        raise ValueError("data segment too long")
    h[5:8] = dlen.to_bytes(3, "big")
    _U32.pack_into(h, 16, pdu.itt)
    if ahs:
        h += ahs
    return h


def _command_ahs(pdu: ScsiCommandPdu) -> bytes:
    out = b""
    if len(pdu.cdb) > 16:
        # Extended CDB AHS (§11.3.5): AHSLength counts the CDB bytes after the first 16 + 1
        ext = pdu.cdb[16:]
        body = b"\0" + ext  # reserved byte, then the extension
        pad = -(3 + len(body)) % 4
        out += _U16.pack(len(ext) + 1) + b"\x01" + body + bytes(pad)
    if pdu.bidi_read_length is not None:
        out += _U16.pack(5) + b"\x02\x00" + _U32.pack(pdu.bidi_read_length)
    return out


# The PDUs of the data path, packed with one struct call each (same bytes as encode_bhs):
# byte 0-3, TotalAHSLength and DataSegmentLength as one word, then eight 32-bit fields
_BHS_WORDS = struct.Struct(">BBBBIQIIIIIIII")


def _bhs_data_in(p: DataIn, dlen: int) -> bytes:
    flags = ((_F if p.final else 0) | (0x40 if p.ack else 0) | (0x04 if p.overflow else 0)
             | (0x02 if p.underflow else 0) | (0x01 if p.has_status else 0))
    return _BHS_WORDS.pack(Opcode.SCSI_DATA_IN, flags, 0, p.status if p.has_status else 0,
                           dlen, p.lun, p.itt, p.ttt, p.stat_sn, p.exp_cmd_sn,
                           p.max_cmd_sn, p.data_sn, p.buffer_offset, p.residual)


def _bhs_scsi_response(p: ScsiResponse, dlen: int) -> bytes:
    flags = ((_F if p.final else 0) | (0x10 if p.bidi_overflow else 0)
             | (0x08 if p.bidi_underflow else 0) | (0x04 if p.overflow else 0)
             | (0x02 if p.underflow else 0))
    return _BHS_WORDS.pack(Opcode.SCSI_RESPONSE, flags, p.response, p.status,
                           dlen, 0, p.itt, p.snack_tag, p.stat_sn, p.exp_cmd_sn,
                           p.max_cmd_sn, p.exp_data_sn, p.bidi_read_residual, p.residual)


def _bhs_r2t(p: R2T, dlen: int) -> bytes:
    return _BHS_WORDS.pack(Opcode.R2T, _F if p.final else 0, 0, 0, dlen, p.lun,
                           p.itt, p.ttt, p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn, p.r2t_sn,
                           p.buffer_offset, p.desired_length)


# (the PDU, its data segment length) -> its BHS
_FAST_BHS: dict[type[Pdu], Callable[[Any, int], bytes]] = {
    DataIn: _bhs_data_in, ScsiResponse: _bhs_scsi_response, R2T: _bhs_r2t}


def encode(pdu: Pdu, header_digest: bool = False, data_digest: bool = False) -> list[Buffer]:
    """Wire buffers for ``pdu``: header (+digest), data (+padding, +digest)."""
    data = pdu.data
    dlen = _data_len(data)
    fast = _FAST_BHS.get(type(pdu))
    h: bytes | bytearray
    if fast is not None and not pdu.ahs and dlen < 1 << 24:
        h = fast(pdu, dlen)
    else:
        h = encode_bhs(pdu)
    if header_digest:
        h += _U32LE.pack(crc32c(h, 0))
    out: list[Buffer] = [h]
    if dlen:
        out.append(data)
        pad = -dlen % 4
        if pad:
            out.append(_PADS[pad])
        if data_digest:
            crc = crc32c(data, 0)
            if pad:
                crc = crc32c(_PADS[pad], crc)
            out.append(_U32LE.pack(crc))
    return out


def encode_bytes(pdu: Pdu, header_digest: bool = False, data_digest: bool = False) -> bytes:
    return b"".join(bytes(b) for b in encode(pdu, header_digest, data_digest))


_U32LE = struct.Struct("<I")
_PADS = {1: b"\0", 2: b"\0\0", 3: b"\0\0\0"}


def decode_bhs(bhs: Buffer, ahs: Buffer = b"") -> Pdu:
    """Decode a 48-byte BHS (and its AHS) into a typed PDU without its data segment."""
    if len(bhs) < BHS_LEN:
        raise PduError("short BHS", fatal=True)
    op = bhs[0] & 0x3F
    cls = PDU_TYPES.get(op)
    if cls is None:
        raise PduError(f"unknown opcode 0x{op:02x}", RejectReason.COMMAND_NOT_SUPPORTED,
                       header=bytes(bhs[:BHS_LEN]))
    fields = cls._unpack_specific(bhs)
    fields.setdefault("final", bool(bhs[1] & _F))
    fields["immediate"] = bool(bhs[0] & _I)
    fields["itt"] = _u32(bhs, 16)
    fields["ahs"] = bytes(ahs)
    pdu = cls(**fields)  # type: ignore[arg-type]
    if isinstance(pdu, ScsiCommandPdu) and ahs:
        _parse_command_ahs(pdu, ahs, bhs)
    return pdu


# SCSI Command and Data-Out decoded with one struct call each, positional construction
# (same values as decode_bhs; field order is the dataclasses' own)
_CMD_BHS = struct.Struct(">BB6xQIIII16s")
_DATA_OUT_BHS = struct.Struct(">BB6xQII4xI4xII4x")


def decode_at(buf: Buffer, pos: int, ahs_len: int) -> Pdu:
    """decode_bhs for the header at ``buf[pos:]``, with fast paths for the PDUs that carry
    the data path (SCSI Command without AHS, Data-Out)."""
    op = buf[pos] & 0x3F
    if op == Opcode.SCSI_COMMAND and not ahs_len:
        b0, b1, lun, itt, edtl, cmd_sn, esn, cdb = _CMD_BHS.unpack_from(buf, pos)
        return ScsiCommandPdu(bool(b0 & _I), bool(b1 & _F), itt, lun, b"", b"",
                              bool(b1 & 0x40), bool(b1 & 0x20), b1 & 7, edtl, cmd_sn, esn, cdb)
    if op == Opcode.SCSI_DATA_OUT:
        b0, b1, lun, itt, ttt, esn, data_sn, offset = _DATA_OUT_BHS.unpack_from(buf, pos)
        return DataOut(bool(b0 & _I), bool(b1 & _F), itt, lun, bytes(buf[pos + BHS_LEN:
                       pos + BHS_LEN + ahs_len]), b"", ttt, esn, data_sn, offset)
    return decode_bhs(bytes(buf[pos: pos + BHS_LEN]),
                      bytes(buf[pos + BHS_LEN: pos + BHS_LEN + ahs_len]))


def _parse_command_ahs(pdu: ScsiCommandPdu, ahs: Buffer, bhs: Buffer) -> None:
    pos = 0
    while pos + 4 <= len(ahs):
        length = _U16.unpack_from(ahs, pos)[0]
        kind = ahs[pos + 2]
        body = bytes(ahs[pos + 3: pos + 3 + length])
        if len(body) != length:
            raise PduError("truncated AHS", RejectReason.INVALID_PDU_FIELD,
                           header=bytes(bhs[:BHS_LEN]))
        if kind == 1 and length >= 1:
            pdu.cdb = pdu.cdb + body[1:]
        elif kind == 2 and length == 5:
            pdu.bidi_read_length = _u32(body, 1)
        pos += 3 + length
        pos += -pos % 4
    pdu.ahs = b""  # folded into cdb / bidi_read_length; encode() rebuilds it


def data_segment_length(bhs: Buffer) -> int:
    return int.from_bytes(bhs[5:8], "big")


def ahs_length(bhs: Buffer) -> int:
    return bhs[4] * 4


# Framing lives in its own module; ``from pyscsit.pdu import PduReader`` keeps working.
from pyscsit.framing import PduReader as PduReader  # noqa: PLC0414 - explicit re-export
