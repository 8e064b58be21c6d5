"""The boundary between the iSCSI layer and the SCSI layer.

The iSCSI layer (session.py) turns SCSI Command PDUs plus their Data-Out into a ScsiCommand,
awaits LogicalUnit.execute(), and turns the ScsiResult into Data-In / SCSI Response PDUs,
computing residuals from ``expected_length`` (EDTL) and ``ScsiResult.transfer_length``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class Status(IntEnum):
    """SAM-5 status codes."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class Direction(IntEnum):
    NONE = 0
    READ = 1  # data-in: target -> initiator
    WRITE = 2  # data-out: initiator -> target


@dataclass(frozen=True, slots=True)
class Nexus:
    """An I_T nexus: who is asking (SAM-5 4.7). Used for reservations and unit attentions."""

    initiator_name: str
    isid: int  # 48-bit ISID; the initiator port is name + ",i,0x" + ISID
    target_name: str
    tpgt: int = 1
    relative_port: int = 1

    @property
    def initiator_port(self) -> str:
        return f"{self.initiator_name},i,0x{self.isid:012x}"

    @property
    def target_port(self) -> str:
        return f"{self.target_name},t,0x{self.tpgt:04x}"


@dataclass(slots=True)
class ScsiCommand:
    cdb: bytes
    nexus: Nexus
    lun: int = 0
    # The whole Data-Out buffer, gathered by the iSCSI layer (length <= expected_length).
    data_out: memoryview | None = None
    # EDTL from the SCSI Command PDU: what the initiator expects to move.
    expected_length: int = 0
    # SAM task attribute (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA)
    task_attr: int = 1
    tag: int = 0  # the ITT; lets TMF / reservations identify the task


@dataclass(slots=True)
class ScsiResult:
    status: Status = Status.GOOD
    # Data-In payload (READ direction). May be longer than expected_length: the iSCSI layer
    # truncates and reports the overflow residual.
    data: bytes | bytearray | memoryview = b""
    # Encoded sense data (fixed or descriptor format), without the 2-byte SenseLength prefix.
    sense: bytes = b""
    # Bytes the CDB asks to move in its direction (READ or WRITE), used for residuals.
    # None: the length of ``data`` for reads, 0 for commands without data.
    transfer_length: int | None = None


@dataclass(slots=True)
class CdbInfo:
    """What the iSCSI layer needs to know about a CDB before it has the data."""

    direction: Direction
    transfer_length: int  # bytes, from the CDB
    known: bool = True  # False: opcode not supported (execute() will answer 5/20/00)
    extra: dict[str, object] = field(default_factory=dict)
