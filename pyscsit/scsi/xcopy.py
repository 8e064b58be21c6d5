"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): VMware's XCOPY clone.

The copy manager is the LU that receives the command. Its parameter list names copy targets
(CSCD descriptors; we take the identification descriptor 0xE4 with an NAA designator, which is
what ESXi and libiscsi send) and segments (block device to block device, 0x02). A copy target
is this LU or another LU of the server, found through the server's ``LuDirectory``. Another
LU is reachable only by an initiator that has itself used it over an I_T nexus (ESXi scans
every LU it sees), so an initiator cannot read or write an LU that its ACLs do not give it
by knowing its NAA. Data moves in bounded chunks, each written through the destination's
range lock.

What is accepted here and what RECEIVE COPY RESULTS (OPERATING PARAMETERS) and VPD 0x8F
advertise come from the same constants below.
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyscsit.scsi.registry import OpInfo, alloc_len, param_len, register
from pyscsit.scsi.sense import (
    InvalidFieldInCdb,
    InvalidFieldInParameterList,
    ParameterListLengthError,
    Sense,
    SenseError,
    SenseKey,
)
from pyscsit.scsi.task import Direction, Nexus, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

OP_EXTENDED_COPY = 0x83
OP_RECEIVE_COPY_RESULTS = 0x84
SA_LID1 = 0x00
SA_COPY_STATUS = 0x00
SA_OPERATING_PARAMETERS = 0x03

CSCD_IDENTIFICATION = 0xE4  # identification descriptor CSCD descriptor (SPC-4 6.4.5.2)
SEG_BLOCK_TO_BLOCK = 0x02  # block device to block device (SPC-4 6.4.6.5)
SUPPORTED_DESCRIPTORS = (SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION)

HEADER_LEN = 16
CSCD_LEN = 32  # every CSCD descriptor type is 32 bytes long except these (SPC-4 6.4.5.1)
CSCD_LEN_LONG = {0xEA: 64, 0xEB: 64}  # IPv6, IP copy service
SEG_B2B_LEN = 0x18  # DESCRIPTOR LENGTH of a block -> block segment descriptor

# Limits: one place, read by the parser, RECEIVE COPY RESULTS and VPD 0x8F.
MAX_CSCD_DESCRIPTORS = 16
MAX_SEGMENT_DESCRIPTORS = 64
MAX_DESCRIPTOR_LIST_LENGTH = 4096
MAX_INLINE_DATA = 0
MAX_SEGMENT_BLOCKS = 0xFFFF  # the segment descriptor's NUMBER OF BLOCKS field is 16 bits
TOTAL_CONCURRENT_COPIES = 16  # per copy manager (LU); more wait their turn
COPY_CHUNK_BYTES = 1024 * 1024  # bounds the memory one copy holds at a time
MAX_HELD_RESULTS = 64  # per LU: COPY STATUS kept for this many recent list identifiers

DESIG_NAA = 3


# --- sense ---------------------------------------------------------------------------------


class CopyAborted(SenseError):
    """COPY ABORTED (Ah): the copy failed on a copy target. ASC/ASCQ per instance."""

    key = SenseKey.COPY_ABORTED

    def __init__(self, message: str = "", asc: int = 0x0D, ascq: int = 0x02) -> None:
        # default 0D/02 COPY TARGET DEVICE NOT REACHABLE
        super().__init__(message)
        self._asc, self._ascq = asc, ascq

    @property
    def sense(self) -> Sense:
        return Sense(self.key, self._asc, self._ascq, self.information, self.field)


# 5/26/xx with a field pointer at the descriptor, like INVALID FIELD IN PARAMETER LIST


class TooManyTargetDescriptors(InvalidFieldInParameterList):
    ascq = 0x06


class UnsupportedTargetDescriptorType(InvalidFieldInParameterList):
    ascq = 0x07


class TooManySegmentDescriptors(InvalidFieldInParameterList):
    ascq = 0x08


class UnsupportedSegmentDescriptorType(InvalidFieldInParameterList):
    ascq = 0x09


class OperationInProgress(SenseError):
    asc, ascq = 0x00, 0x16  # OPERATION IN PROGRESS: the list identifier is in use


# --- finding copy targets -------------------------------------------------------------------


class LuDirectory:
    """The LUs an EXTENDED COPY may name, by NAA designator (config.build_model fills it)."""

    def __init__(self) -> None:
        self._by_naa: dict[bytes, LogicalUnit] = {}

    def add(self, lu: LogicalUnit) -> None:
        self._by_naa[lu.identity.naa] = lu
        lu.directory = self

    def find(self, naa: bytes) -> LogicalUnit | None:
        return self._by_naa.get(naa)

    def remove(self, lu: LogicalUnit) -> None:
        """A removed LU is no copy target any more (its backend is about to close)."""
        if self._by_naa.get(lu.identity.naa) is lu:
            del self._by_naa[lu.identity.naa]
        lu.directory = None


def resolve(lu: LogicalUnit, nexus: Nexus, designator: bytes) -> LogicalUnit | None:
    """The LU a CSCD designator names, if the requesting initiator may reach it."""
    if designator == lu.identity.naa:
        return lu
    other = lu.directory.find(designator) if lu.directory is not None else None
    if other is None:
        return None
    name = nexus.initiator_name
    if not any(nx.initiator_name == name for nx in other.known_nexuses()):
        return None  # never used by this initiator: its access was never checked
    return other


# --- the parameter list (SPC-4 6.4.3.2, LID1) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Cscd:
    offset: int  # of the descriptor in the parameter list, for field pointers
    designator_type: int
    designator: bytes
    block_length: int


@dataclass(frozen=True, slots=True)
class Segment:
    offset: int
    src: int  # CSCD indexes
    dst: int
    blocks: int
    src_lba: int
    dst_lba: int


@dataclass(frozen=True, slots=True)
class CopyList:
    list_id: int
    list_id_usage: int  # 00b hold results, 10b need not, 11b no list identifier
    cscds: tuple[Cscd, ...]
    segments: tuple[Segment, ...]

    @property
    def held(self) -> bool:
        return self.list_id_usage != 0b11


def _walk_cscds(buf: bytes, start: int, end: int) -> list[int]:
    offsets, off = [], start
    while off < end:
        offsets.append(off)
        off += CSCD_LEN_LONG.get(buf[off], CSCD_LEN)
    if off != end:
        raise InvalidFieldInParameterList(2, None, "CSCD descriptor list ends inside a descriptor")
    return offsets


def _walk_segments(buf: bytes, start: int, end: int) -> list[int]:
    offsets, off = [], start
    while off < end:
        if off + 4 > end:
            raise InvalidFieldInParameterList(8, None, "segment list ends inside a descriptor")
        offsets.append(off)
        off += 4 + int.from_bytes(buf[off + 2 : off + 4], "big")
    if off != end:
        raise InvalidFieldInParameterList(8, None, "segment list ends inside a descriptor")
    return offsets


def parse_copy_list(buf: bytes) -> CopyList:
    """Parse and check a LID1 parameter list (SPC-4 6.4.3.2) without touching any LU."""
    if len(buf) < HEADER_LEN:
        raise ParameterListLengthError("parameter list shorter than its header")
    list_id, flags = buf[0], buf[1]
    usage = (flags >> 3) & 0x03
    cscd_len = int.from_bytes(buf[2:4], "big")
    seg_len, inline_len = struct.unpack_from(">II", buf, 8)
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise ParameterListLengthError("descriptor lists above MAXIMUM DESCRIPTOR LIST LENGTH")
    if HEADER_LEN + cscd_len + seg_len + inline_len > len(buf):
        raise ParameterListLengthError("descriptor lists run past the parameter list")
    if usage == 0b01:
        raise InvalidFieldInParameterList(1, 4, "LIST ID USAGE 01b is reserved")
    if inline_len > MAX_INLINE_DATA:
        raise InvalidFieldInParameterList(12, None, "inline data is not supported")
    seg_start = HEADER_LEN + cscd_len
    cscd_offsets = _walk_cscds(buf, HEADER_LEN, seg_start)
    seg_offsets = _walk_segments(buf, seg_start, seg_start + seg_len)
    if len(cscd_offsets) > MAX_CSCD_DESCRIPTORS:
        raise TooManyTargetDescriptors(cscd_offsets[MAX_CSCD_DESCRIPTORS])
    if len(seg_offsets) > MAX_SEGMENT_DESCRIPTORS:
        raise TooManySegmentDescriptors(seg_offsets[MAX_SEGMENT_DESCRIPTORS])
    cscds = tuple(_parse_cscd(buf, off) for off in cscd_offsets)
    segments = tuple(_parse_segment(buf, off, len(cscds)) for off in seg_offsets)
    return CopyList(list_id, usage, cscds, segments)


def _parse_cscd(buf: bytes, off: int) -> Cscd:
    if buf[off] != CSCD_IDENTIFICATION:
        raise UnsupportedTargetDescriptorType(off, None, f"CSCD type {buf[off]:#04x}")
    # byte 1: LU ID TYPE and NUL are ignored (SPC-4 6.4.5.1: LU ID TYPE is obsolete to a
    # copy manager that finds LUs by designator); PERIPHERAL DEVICE TYPE must be a disk.
    if buf[off + 1] & 0x1F:
        raise InvalidFieldInParameterList(off + 1, 4, "only block devices are copy targets")
    dlen = buf[off + 7]
    if dlen > 20:
        raise InvalidFieldInParameterList(off + 7, None, "designator longer than 20 bytes")
    block_length = int.from_bytes(buf[off + 29 : off + 32], "big")
    return Cscd(off, buf[off + 5] & 0x0F, bytes(buf[off + 8 : off + 8 + dlen]), block_length)


def _parse_segment(buf: bytes, off: int, ncscd: int) -> Segment:
    if buf[off] != SEG_BLOCK_TO_BLOCK:
        raise UnsupportedSegmentDescriptorType(off, None, f"segment type {buf[off]:#04x}")
    if int.from_bytes(buf[off + 2 : off + 4], "big") != SEG_B2B_LEN:
        raise InvalidFieldInParameterList(off + 2, None, "block -> block descriptor length")
    src, dst = struct.unpack_from(">HH", buf, off + 4)
    blocks = int.from_bytes(buf[off + 10 : off + 12], "big")
    src_lba, dst_lba = struct.unpack_from(">QQ", buf, off + 12)
    for idx in (src, dst):
        if idx >= ncscd:
            # SPC-4 6.4.6.1: a descriptor index naming no CSCD descriptor
            raise CopyAborted(f"segment names CSCD descriptor {idx} of {ncscd}")
    return Segment(off, src, dst, blocks, src_lba, dst_lba)


# --- the copy manager ---------------------------------------------------------------------


@dataclass(slots=True)
class CopyStatus:
    """What COPY STATUS reports for one list identifier (SPC-4 6.18.3)."""

    state: int = 0x00  # 00h in progress, 01h completed without errors, 02h with errors
    segments: int = 0
    bytes_copied: int = 0


class CopyManager:
    """Per LU: held copy status per (I_T nexus, list identifier), and the copy slots."""

    def __init__(self) -> None:
        self.held: OrderedDict[tuple[Nexus, int], CopyStatus] = OrderedDict()
        self.slots = asyncio.Semaphore(TOTAL_CONCURRENT_COPIES)

    def start(self, key: tuple[Nexus, int]) -> CopyStatus:
        old = self.held.get(key)
        if old is not None and old.state == 0x00:
            raise OperationInProgress(f"list identifier {key[1]} is in use")
        status = self.held[key] = CopyStatus()
        self.held.move_to_end(key)
        while len(self.held) > MAX_HELD_RESULTS:
            oldest = next(iter(self.held))
            if self.held[oldest].state == 0x00:
                break  # never forget a copy still running
            del self.held[oldest]
        return status


_MANAGERS: weakref.WeakKeyDictionary[LogicalUnit, CopyManager] = weakref.WeakKeyDictionary()


def manager(lu: LogicalUnit) -> CopyManager:
    m = _MANAGERS.get(lu)
    if m is None:
        m = _MANAGERS[lu] = CopyManager()
    return m


def nexus_lost(lu: LogicalUnit, nexus: Nexus) -> None:
    """Forget the finished copies of an I_T nexus that is gone (running ones finish)."""
    m = _MANAGERS.get(lu)
    if m is not None:
        for key in [k for k, st in m.held.items() if k[0] == nexus and st.state != 0x00]:
            del m.held[key]


@dataclass(frozen=True, slots=True)
class _Plan:
    src: LogicalUnit
    dst: LogicalUnit
    seg: Segment


def plan_copy(lu: LogicalUnit, nexus: Nexus, copy: CopyList) -> list[_Plan]:
    """Resolve every copy target and check every segment before any data moves."""
    targets: list[LogicalUnit] = []
    for c in copy.cscds:
        target = resolve(lu, nexus, c.designator) if c.designator_type == DESIG_NAA else None
        if target is None:
            raise CopyAborted("no LU this initiator uses has that designator")
        if c.block_length != target.block_size:
            raise InvalidFieldInParameterList(c.offset + 29, None, "DISK BLOCK LENGTH")
        targets.append(target)
    plans = []
    for seg in copy.segments:
        src, dst = targets[seg.src], targets[seg.dst]
        if src.block_size != dst.block_size:
            raise InvalidFieldInParameterList(seg.offset + 6, None, "block sizes differ")
        dst.check_writable()
        for target, lba in ((src, seg.src_lba), (dst, seg.dst_lba)):
            if lba + seg.blocks > target.refresh_capacity():
                raise CopyAborted(f"LBA {lba} + {seg.blocks} beyond the copy target")
        plans.append(_Plan(src, dst, seg))
    return plans


async def _copy_segment(p: _Plan, status: CopyStatus) -> None:
    seg, bs = p.seg, p.src.block_size
    chunk = max(1, COPY_CHUNK_BYTES // bs)
    starts = list(range(0, seg.blocks, chunk))
    if p.src is p.dst and seg.src_lba < seg.dst_lba < seg.src_lba + seg.blocks:
        starts.reverse()  # overlapping, destination above the source: copy from the end
    for start in starts:
        count = min(chunk, seg.blocks - start)
        try:
            data = await p.src.read_or_sense((seg.src_lba + start) * bs, count * bs)
            await p.dst.write_or_sense((seg.dst_lba + start) * bs, memoryview(data), False)
        except SenseError as exc:
            # SPC-4 6.4.4: a failure on a copy target ends the copy with COPY ABORTED
            sense = exc.sense
            raise CopyAborted(str(exc), sense.asc, sense.ascq) from exc
        status.bytes_copied += count * bs


async def extended_copy(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    param_len = int.from_bytes(cmd.cdb[10:14], "big")
    if param_len == 0:
        return ScsiResult()  # SPC-4 6.4.1: not an error
    data = cmd.data_out
    buf = bytes(data[:param_len]) if data is not None else b""
    copy = parse_copy_list(buf)
    plans = plan_copy(lu, cmd.nexus, copy)
    m = manager(lu)
    status = m.start((cmd.nexus, copy.list_id)) if copy.held else CopyStatus()
    try:
        async with m.slots:
            for p in plans:
                await _copy_segment(p, status)
                status.segments += 1
    except BaseException:
        status.state = 0x02
        raise
    status.state = 0x01
    return ScsiResult()


# --- RECEIVE COPY RESULTS (SPC-4 6.18) ----------------------------------------------------


def copy_status_data(status: CopyStatus) -> bytes:
    """COPY STATUS parameter data (SPC-4 6.18.3), 12 bytes."""
    count, units = status.bytes_copied, 0x00  # bytes
    if count > 0xFFFFFFFF:
        count, units = count >> 10, 0x01  # kibibytes
    return struct.pack(">IBHBI", 8, status.state & 0x7F, min(status.segments, 0xFFFF), units,
                       count)


def operating_parameters_data(lu: LogicalUnit) -> bytes:
    """OPERATING PARAMETERS parameter data (SPC-4 6.18.4)."""
    codes = bytes(SUPPORTED_DESCRIPTORS)
    body = bytearray(44)
    body[4] = 0x01  # SNLID: LIST ID USAGE 11b (no list identifier) is supported
    struct.pack_into(">HHIIIII", body, 8, MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS,
                     MAX_DESCRIPTOR_LIST_LENGTH, max_segment_bytes(lu), MAX_INLINE_DATA,
                     0,  # HELD DATA LIMIT: no data is held for RECEIVE DATA
                     0)  # MAXIMUM STREAM DEVICE TRANSFER SIZE
    struct.pack_into(">HBBBB", body, 34, TOTAL_CONCURRENT_COPIES, TOTAL_CONCURRENT_COPIES,
                     lu.block_size.bit_length() - 1, 0, 0)  # granularities (log2)
    body[43] = len(codes)
    out = body + codes
    struct.pack_into(">I", out, 0, len(out) - 4)
    return bytes(out)


def max_segment_bytes(lu: LogicalUnit) -> int:
    return MAX_SEGMENT_BLOCKS * lu.block_size


async def receive_copy_results(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    sa, list_id = cdb[1] & 0x1F, cdb[2]
    alloc = int.from_bytes(cdb[10:14], "big")
    if sa == SA_OPERATING_PARAMETERS:
        data = operating_parameters_data(lu)
    else:
        status = manager(lu).held.get((cmd.nexus, list_id))
        if status is None:
            # SPC-4 6.18.3: no held results for this list identifier from this I_T nexus
            raise InvalidFieldInCdb(2, None, f"no copy with list identifier {list_id}")
        data = copy_status_data(status)
    return ScsiResult(data=data[:alloc])


# --- VPD 0x8F third-party copy (SPC-4 7.8.17) ------------------------------------------------


def _tpc_descriptor(dtype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)  # descriptors are padded to a multiple of four bytes
    return struct.pack(">HH", dtype, len(body)) + body


def third_party_copy_descriptors(lu: LogicalUnit) -> bytes:
    """The body of VPD page 0x8F: what EXTENDED COPY (LID1) here accepts."""
    commands = bytes((OP_EXTENDED_COPY, 1, SA_LID1,
                      OP_RECEIVE_COPY_RESULTS, 2, SA_COPY_STATUS, SA_OPERATING_PARAMETERS))
    parameter_data = struct.pack(">4xHHII12x", MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS,
                                 MAX_DESCRIPTOR_LIST_LENGTH, MAX_INLINE_DATA)
    general = struct.pack(">IIIBB18x", TOTAL_CONCURRENT_COPIES, TOTAL_CONCURRENT_COPIES,
                          max_segment_bytes(lu), lu.block_size.bit_length() - 1, 0)
    return b"".join((
        _tpc_descriptor(0x0001, bytes((len(commands),)) + commands),  # supported commands
        _tpc_descriptor(0x0004, parameter_data),  # parameter data
        _tpc_descriptor(0x0008, bytes((len(SUPPORTED_DESCRIPTORS),))
                        + bytes(SUPPORTED_DESCRIPTORS)),  # supported descriptors
        _tpc_descriptor(0x000C, struct.pack(">H", 0)),  # supported CSCD IDs: indexes only
        _tpc_descriptor(0x8001, general),  # general copy operations
    ))


# --- registry rows ---------------------------------------------------------------------------

CTRL = 0xC7
_L4 = (0xFF,) * 4
register(OpInfo(OP_EXTENDED_COPY, "EXTENDED COPY(LID1)", 16, Direction.WRITE, extended_copy,
                param_len(10, 4),
                bytes((OP_EXTENDED_COPY, 0x1F, *(0,) * 8, *_L4, 0, CTRL)),
                service_action=SA_LID1, writes_medium=True))
for _sa, _name in ((SA_COPY_STATUS, "COPY STATUS"),
                   (SA_OPERATING_PARAMETERS, "OPERATING PARAMETERS")):
    register(OpInfo(OP_RECEIVE_COPY_RESULTS, f"RECEIVE COPY RESULTS({_name})", 16,
                    Direction.READ, receive_copy_results, alloc_len(10, 4),
                    bytes((OP_RECEIVE_COPY_RESULTS, 0x1F, 0xFF, *(0,) * 7, *_L4, 0, CTRL)),
                    service_action=_sa))
