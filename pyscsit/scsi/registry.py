"""The one opcode table: dispatch, inspect(), VPD and REPORT SUPPORTED OPERATION CODES read it.

spc.py and sbc.py ``register()`` an ``OpInfo`` per command (or per service action). Each entry
knows its CDB length, data direction, how many bytes the CDB asks to move (for the iSCSI layer,
before the data arrives), its handler and its CDB usage data (SPC-4 6.35.3): the bits the
device server looks at. Any other bit set in a CDB is a reserved bit -> 5/24/00 with a field
pointer at the lowest offending byte's highest bit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyscsit.scsi.sense import InvalidFieldInCdb
from pyscsit.scsi.task import Direction, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

Handler = Callable[["LogicalUnit", ScsiCommand], Awaitable[ScsiResult]]
# (cdb, block_size) -> (direction, bytes the CDB asks to transfer). Must not raise on any CDB
# at least cdb_len long.
XferFn = Callable[[bytes, int], tuple[Direction, int]]


@dataclass(frozen=True, slots=True)
class OpInfo:
    opcode: int
    name: str
    cdb_len: int
    direction: Direction
    handler: Handler
    xfer: XferFn
    usage: bytes  # CDB usage data, cdb_len bytes; byte 0 is the opcode
    service_action: int | None = None
    # SAM-5 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a UA
    # (REQUEST SENSE reports it as its parameter data instead).
    ua_exempt: bool = False
    # Block I/O: the CDB's byte count (not the data actually moved) is the transfer length in
    # every result, CHECK CONDITION included, so the iSCSI residual follows the CDB.
    exact_xfer: bool = False
    writes_medium: bool = False
    # Answered by dispatch (needs the whole LUN map), e.g. REPORT LUNS.
    target_level: bool = False
    # False only for the placeholder of an unknown service action (no CDB layout to check).
    generic_checks: bool = True
    reserved_mask: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if len(self.usage) != self.cdb_len:
            raise ValueError(f"{self.name}: usage data must be {self.cdb_len} bytes")
        inverse = bytes((~b) & 0xFF for b in self.usage)
        object.__setattr__(self, "reserved_mask", int.from_bytes(inverse, "big"))

    def check_reserved(self, cdb: bytes) -> None:
        """Raise 5/24/00 pointing at the first reserved bit set (SPC-4 4.4.2)."""
        n = self.cdb_len
        if not (int.from_bytes(cdb[:n], "big") & self.reserved_mask):
            return
        for i in range(n):
            bad = cdb[i] & ~self.usage[i] & 0xFF
            if bad:
                raise InvalidFieldInCdb(i, bad.bit_length() - 1, f"{self.name}: reserved bit")


def fixed(direction: Direction, nbytes: int) -> XferFn:
    return lambda cdb, bs: (direction, nbytes)


def alloc_len(offset: int, size: int) -> XferFn:
    """Data-in commands whose CDB holds an ALLOCATION LENGTH field (big endian)."""
    end = offset + size
    return lambda cdb, bs: (Direction.READ, int.from_bytes(cdb[offset:end], "big"))


def block_count(direction: Direction, offset: int, size: int, zero_means: int = 0) -> XferFn:
    """Block I/O: TRANSFER LENGTH in logical blocks (READ(6)'s 0 means 256, SBC-3 5.14)."""
    end = offset + size

    def xfer(cdb: bytes, bs: int) -> tuple[Direction, int]:
        n = int.from_bytes(cdb[offset:end], "big") or zero_means
        return direction, n * bs

    return xfer


@dataclass(slots=True)
class _SaGroup:
    """Opcodes whose command is chosen by the SERVICE ACTION field (byte 1, bits 4:0)."""

    opcode: int
    actions: dict[int, OpInfo]
    unknown: OpInfo


_TABLE: list[OpInfo | _SaGroup | None] = [None] * 256


async def _bad_service_action(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    # SPC-4 4.4.2 / 6.35: an unsupported service action of a supported opcode.
    raise InvalidFieldInCdb(1, 4, "unsupported service action")


def register(op: OpInfo) -> OpInfo:
    if op.service_action is None:
        if _TABLE[op.opcode] is not None:
            raise ValueError(f"opcode {op.opcode:#04x} registered twice")
        _TABLE[op.opcode] = op
        return op
    group = _TABLE[op.opcode]
    if group is None:
        unknown = OpInfo(
            op.opcode, f"{op.opcode:#04x}/?", 2, Direction.NONE, _bad_service_action,
            fixed(Direction.NONE, 0), b"\xff\xff", generic_checks=False,
        )
        group = _TABLE[op.opcode] = _SaGroup(op.opcode, {}, unknown)
    if not isinstance(group, _SaGroup) or op.service_action in group.actions:
        raise ValueError(f"{op.name}: opcode/service action registered twice")
    group.actions[op.service_action] = op
    return op


def lookup(cdb: bytes) -> OpInfo | None:
    """The table entry for a CDB; None for an unsupported opcode (5/20/00)."""
    if not cdb:
        return None
    e = _TABLE[cdb[0]]
    if e is None or type(e) is OpInfo:
        return e
    assert isinstance(e, _SaGroup)
    if len(cdb) < 2:
        return e.unknown
    return e.actions.get(cdb[1] & 0x1F, e.unknown)


def all_ops() -> list[OpInfo]:
    """Every supported command, sorted by (opcode, service action)."""
    out: list[OpInfo] = []
    for e in _TABLE:
        if isinstance(e, OpInfo):
            out.append(e)
        elif isinstance(e, _SaGroup):
            out.extend(e.actions[sa] for sa in sorted(e.actions))
    return out


def is_supported(opcode: int, service_action: int | None = None) -> bool:
    e = _TABLE[opcode]
    if isinstance(e, _SaGroup):
        return service_action is not None and service_action in e.actions
    return e is not None and service_action is None
