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
from enum import IntEnum
from typing import TYPE_CHECKING

from pyscsit.scsi.sense import InvalidFieldInCdb
from pyscsit.scsi.task import Direction, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

Handler = Callable[["LogicalUnit", ScsiCommand], Awaitable[ScsiResult]]
# (cdb, block_size) -> (direction, bytes the CDB asks to transfer). Must not raise on any CDB
# at least cdb_len long.
XferFn = Callable[[bytes, int], tuple[Direction, int]]


class PrConflict(IntEnum):
    """What a command meets while another I_T nexus holds a reservation: SPC-4 5.9.1 table
    "SPC commands that are allowed in the presence of various reservations", SBC-3 4.17
    table 13, and SPC-2 5.5.1 for a RESERVE(6)/(10) reservation."""

    ALLOWED = 0  # allowed under every persistent reservation and under RESERVE(6)/(10)
    PR_ALLOWED = 1  # allowed under every persistent reservation; conflicts with RESERVE
    READ = 2  # Write Exclusive types: allowed; Exclusive Access: registrants of RO/AR only
    WRITE = 3  # conflicts, except for registrants under RO/AR types


_A, _P, _R = PrConflict.ALLOWED, PrConflict.PR_ALLOWED, PrConflict.READ
#: The rule of rows that do not name one, by (opcode, service action); (opcode, None) covers
#: every service action of that opcode. Anything not listed here is WRITE (conflicts).
PR_DEFAULTS: dict[tuple[int, int | None], PrConflict] = {
    (0x03, None): _A, (0x12, None): _A, (0xA0, None): _A,  # REQUEST SENSE, INQUIRY, REPORT LUNS
    (0x4D, None): _A, (0xAB, 0x01): _A,  # LOG SENSE, READ MEDIA SERIAL NUMBER
    (0x17, None): _A, (0x57, None): _A,  # RELEASE(6)/(10): a no-op for a non-holder
    (0x00, None): _P, (0x25, None): _P, (0x9E, 0x10): _P,  # TEST UNIT READY, READ CAPACITY
    (0x5E, None): _P, (0x5F, None): _P,  # PERSISTENT RESERVE IN/OUT judge for themselves
    (0xA3, 0x05): _P, (0xA3, 0x0A): _P,  # REPORT IDENTIFYING INFORMATION, TARGET PORT GROUPS
    (0xA3, 0x0C): _P, (0xA3, 0x0D): _P,  # REPORT SUPPORTED OPERATION CODES / TMFs
    # READ, VERIFY, MODE SENSE, PRE-FETCH, READ DEFECT DATA, READ BUFFER, RECEIVE DIAGNOSTIC
    # RESULTS, READ ATTRIBUTE, RECEIVE COPY RESULTS, GET LBA STATUS
    **{(op, None): _R for op in (0x08, 0x28, 0xA8, 0x88, 0x2F, 0xAF, 0x8F, 0x1A, 0x5A, 0x34,
                                 0x90, 0x37, 0xB7, 0x3C, 0x1C, 0x8C, 0x84)},
    (0x9E, 0x12): _R,
}


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
    # Command timeouts descriptor (SPC-4 6.35.4), seconds, reported when RCTD=1: the time the
    # command normally takes (0: not specified) and the timeout a host should allow.
    nominal_timeout: int = 0
    recommended_timeout: int = 30
    reserved_mask: int = field(init=False, default=0)
    # Reservation conflict rule: PR_DEFAULTS for the opcode (and service action), else WRITE.
    conflict: PrConflict = field(init=False, default=PrConflict.WRITE)

    def __post_init__(self) -> None:
        if len(self.usage) != self.cdb_len:
            raise ValueError(f"{self.name}: usage data must be {self.cdb_len} bytes")
        inverse = bytes((~b) & 0xFF for b in self.usage)
        object.__setattr__(self, "reserved_mask", int.from_bytes(inverse, "big"))
        rule = PR_DEFAULTS.get((self.opcode, self.service_action),
                               PR_DEFAULTS.get((self.opcode, None), PrConflict.WRITE))
        object.__setattr__(self, "conflict", rule)

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


def param_len(offset: int, size: int) -> XferFn:
    """Data-out commands whose CDB holds a PARAMETER LIST LENGTH field (big endian)."""
    end = offset + size
    return lambda cdb, bs: (Direction.WRITE, int.from_bytes(cdb[offset:end], "big"))


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


def find(opcode: int, service_action: int | None = None) -> OpInfo | None:
    """The entry for an opcode (and service action, for opcodes that have them), or None."""
    e = _TABLE[opcode]
    if isinstance(e, _SaGroup):
        return None if service_action is None else e.actions.get(service_action)
    return e if service_action is None else None


def has_service_actions(opcode: int) -> bool:
    return isinstance(_TABLE[opcode], _SaGroup)


def is_supported(opcode: int, service_action: int | None = None) -> bool:
    e = _TABLE[opcode]
    if isinstance(e, _SaGroup):
        return service_action is not None and service_action in e.actions
    return e is not None and service_action is None
