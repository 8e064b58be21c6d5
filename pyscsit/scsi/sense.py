"""Sense data: the SenseError hierarchy and the one encoder (SPC-4 4.5).

Every SCSI failure is a ``SenseError`` subclass that carries its sense key / ASC / ASCQ as class
attributes (h2's ``error_code`` habit); an instance adds the INFORMATION field and the
sense-key-specific field pointer. ``encode_sense`` turns one into fixed (0x70) or descriptor
(0x72) format bytes; the control mode page's D_SENSE bit picks the format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar


class SenseKey(IntEnum):
    """SPC-4 4.5.6, table 27."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE


@dataclass(frozen=True, slots=True)
class FieldPointer:
    """Sense-key-specific field pointer (SPC-4 4.5.2.4.2).

    ``in_cdb`` is the C/D bit: True when the bad field is in the CDB, False when it is in the
    parameter list (Data-Out). ``bit`` None leaves BPV clear (the whole byte is pointed at).
    """

    byte: int
    bit: int | None = None
    in_cdb: bool = True

    def encode(self) -> bytes:
        b0 = 0x80  # SKSV
        if self.in_cdb:
            b0 |= 0x40
        if self.bit is not None:
            b0 |= 0x08 | (self.bit & 0x07)
        return bytes((b0, (self.byte >> 8) & 0xFF, self.byte & 0xFF))


@dataclass(frozen=True, slots=True)
class Sense:
    """A decoded view of one sense condition, format independent."""

    key: int
    asc: int
    ascq: int
    information: int | None = None
    field: FieldPointer | None = None


def encode_sense(sense: Sense, descriptor: bool = False) -> bytes:
    """Encode current-error sense data: fixed format (SPC-4 4.5.3) or descriptor (4.5.2)."""
    if descriptor:
        out = bytearray((0x72, sense.key & 0x0F, sense.asc, sense.ascq, 0, 0, 0, 0))
        if sense.information is not None:
            # Information descriptor (4.5.2.2): type 0, length 0x0A, VALID set.
            out += b"\x00\x0a\x80\x00" + struct.pack(">Q", sense.information & (2**64 - 1))
        if sense.field is not None:
            # Sense key specific descriptor (4.5.2.4): type 2, length 6.
            out += b"\x02\x06\x00\x00" + sense.field.encode() + b"\x00"
        out[7] = len(out) - 8
        return bytes(out)
    out = bytearray(18)
    out[0] = 0x70
    if sense.information is not None and 0 <= sense.information <= 0xFFFFFFFF:
        out[0] |= 0x80  # VALID: the INFORMATION field holds a value
        struct.pack_into(">I", out, 3, sense.information)
    out[2] = sense.key & 0x0F
    out[7] = 10  # additional sense length: bytes 8..17
    out[12] = sense.asc
    out[13] = sense.ascq
    if sense.field is not None:
        out[15:18] = sense.field.encode()
    return bytes(out)


class SenseError(Exception):
    """A command ends in CHECK CONDITION with this sense. Never escapes LogicalUnit.execute."""

    key: ClassVar[int] = SenseKey.ILLEGAL_REQUEST
    asc: ClassVar[int] = 0
    ascq: ClassVar[int] = 0

    def __init__(
        self,
        message: str = "",
        *,
        information: int | None = None,
        field: FieldPointer | None = None,
    ) -> None:
        super().__init__(message or type(self).__name__)
        self.information = information
        self.field = field

    @property
    def sense(self) -> Sense:
        return Sense(self.key, self.asc, self.ascq, self.information, self.field)

    def encode(self, descriptor: bool = False) -> bytes:
        return encode_sense(self.sense, descriptor)


# --- ILLEGAL REQUEST (5h) ------------------------------------------------------------------


class InvalidOpcode(SenseError):
    asc, ascq = 0x20, 0x00  # INVALID COMMAND OPERATION CODE


class LbaOutOfRange(SenseError):
    asc, ascq = 0x21, 0x00  # LOGICAL BLOCK ADDRESS OUT OF RANGE


class InvalidFieldInCdb(SenseError):
    asc, ascq = 0x24, 0x00  # INVALID FIELD IN CDB

    def __init__(self, byte: int, bit: int | None = None, message: str = "") -> None:
        super().__init__(message, field=FieldPointer(byte, bit, in_cdb=True))


class InvalidFieldInParameterList(SenseError):
    asc, ascq = 0x26, 0x00  # INVALID FIELD IN PARAMETER LIST

    def __init__(self, byte: int, bit: int | None = None, message: str = "") -> None:
        super().__init__(message, field=FieldPointer(byte, bit, in_cdb=False))


class ParameterListLengthError(SenseError):
    asc, ascq = 0x1A, 0x00  # PARAMETER LIST LENGTH ERROR


class LunNotSupported(SenseError):
    asc, ascq = 0x25, 0x00  # LOGICAL UNIT NOT SUPPORTED


class SavingParametersNotSupported(SenseError):
    asc, ascq = 0x39, 0x00  # SAVING PARAMETERS NOT SUPPORTED


# --- other keys ----------------------------------------------------------------------------


class WriteProtected(SenseError):
    key = SenseKey.DATA_PROTECT
    asc, ascq = 0x27, 0x00  # WRITE PROTECTED


class Miscompare(SenseError):
    key = SenseKey.MISCOMPARE
    asc, ascq = 0x1D, 0x00  # MISCOMPARE DURING VERIFY OPERATION


class UnrecoveredReadError(SenseError):
    key = SenseKey.MEDIUM_ERROR
    asc, ascq = 0x11, 0x00  # UNRECOVERED READ ERROR


class WriteError(SenseError):
    key = SenseKey.MEDIUM_ERROR
    asc, ascq = 0x0C, 0x00  # WRITE ERROR


class SanitizeInProgress(SenseError):
    key = SenseKey.NOT_READY
    asc, ascq = 0x04, 0x1B  # LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS


class SanitizeFailed(SenseError):
    key = SenseKey.MEDIUM_ERROR
    asc, ascq = 0x31, 0x03  # SANITIZE COMMAND FAILED


class InternalTargetFailure(SenseError):
    key = SenseKey.HARDWARE_ERROR
    asc, ascq = 0x44, 0x00  # INTERNAL TARGET FAILURE


# --- unit attention (6h) -------------------------------------------------------------------


class UnitAttention(SenseError):
    """A pending unit attention; the ASC/ASCQ vary per event, so they are per instance."""

    key = SenseKey.UNIT_ATTENTION

    def __init__(self, asc: int, ascq: int) -> None:
        super().__init__(f"unit attention {asc:02x}/{ascq:02x}")
        self._asc, self._ascq = asc, ascq

    @property
    def sense(self) -> Sense:
        return Sense(self.key, self._asc, self._ascq)


# SAM-5 6.3 / SPC-4 annex: the unit attention codes for reset events.
UA_POWER_ON_RESET = (0x29, 0x00)  # POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
UA_POWER_ON = (0x29, 0x01)  # POWER ON OCCURRED
UA_HARD_RESET = (0x29, 0x02)  # SCSI BUS RESET OCCURRED (hard reset)
UA_LUN_RESET = (0x29, 0x03)  # BUS DEVICE RESET FUNCTION OCCURRED
UA_NEXUS_LOSS = (0x29, 0x07)  # I_T NEXUS LOSS OCCURRED
UA_CAPACITY_CHANGED = (0x2A, 0x09)  # CAPACITY DATA HAS CHANGED

NO_SENSE = Sense(SenseKey.NO_SENSE, 0, 0)


# --- ABORTED COMMAND (Bh): transport failures the iSCSI layer reports (RFC 7143 §11.4.7.2) ---


class DataPhaseError(SenseError):
    key = SenseKey.ABORTED_COMMAND
    asc, ascq = 0x4B, 0x00  # DATA PHASE ERROR


class DataOffsetError(SenseError):
    key = SenseKey.ABORTED_COMMAND
    asc, ascq = 0x4B, 0x05  # DATA OFFSET ERROR


class ProtocolServiceCrcError(SenseError):
    key = SenseKey.ABORTED_COMMAND
    asc, ascq = 0x47, 0x05  # PROTOCOL SERVICE CRC ERROR (a Data-Out data digest error)
