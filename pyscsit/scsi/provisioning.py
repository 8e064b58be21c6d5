"""Logical block provisioning and media sanitizing (SBC-3 4.7, 4.11; SBC-4 4.29):
UNMAP, WRITE SAME(10)/(16), GET LBA STATUS, SANITIZE and WRITE ATOMIC(16).

Each CDB (and parameter list) is parsed by a pure function into a small typed value; the
handlers check it against the LU and call the backend, which alone knows how to punch, zero
or report holes. What the LU advertises (READ CAPACITY(16) LBPME/LBPRZ, VPD 0xB0/0xB2) follows
from the rows registered here plus the backend's abilities; see LogicalUnit.__init__.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, NamedTuple

from pyscsit.backends.base import BackendError, Extent
from pyscsit.scsi.registry import OpInfo, alloc_len, block_count, register
from pyscsit.scsi.sense import (
    InvalidFieldInCdb,
    InvalidFieldInParameterList,
    InvalidOpcode,
    LbaOutOfRange,
    ParameterListLengthError,
    SanitizeFailed,
    SenseError,
    WriteError,
)
from pyscsit.scsi.task import Direction, ScsiCommand, ScsiResult

if TYPE_CHECKING:
    from pyscsit.scsi.locks import RangeHold
    from pyscsit.scsi.lu import LogicalUnit

log = logging.getLogger(__name__)

#: Block Limits VPD values (SBC-3 6.6.3) that the handlers here enforce.
WSNZ = False  # WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium"
MAX_WRITE_SAME_BLOCKS = 0  # 0: no limit reported; the range is bounded by the capacity
ANC_SUP = False  # anchored LBAs are not supported (SBC-3 4.7.3.3)

# --- UNMAP (SBC-3 5.28) ----------------------------------------------------------------------


class UnmapCdb(NamedTuple):
    anchor: bool
    param_len: int


class UnmapDescriptor(NamedTuple):
    lba: int
    blocks: int


def parse_unmap_cdb(cdb: bytes) -> UnmapCdb:
    return UnmapCdb(bool(cdb[1] & 0x01), struct.unpack_from(">H", cdb, 7)[0])


def parse_unmap_params(data: bytes | memoryview, param_len: int) -> list[UnmapDescriptor]:
    """The UNMAP parameter list (SBC-3 5.28.2) -> its block descriptors.

    ``data`` is what arrived; ``param_len`` what the CDB announced. A list shorter than its
    8-byte header is a PARAMETER LIST LENGTH ERROR. Descriptors are read as far as both the
    BLOCK DESCRIPTOR DATA LENGTH and the data received reach; an incomplete trailing
    descriptor is ignored (5.28.2).
    """
    have = min(len(data), param_len)
    if have < 8:
        raise ParameterListLengthError("UNMAP parameter list shorter than its header")
    mv = memoryview(data)
    bd_len = struct.unpack_from(">H", mv, 2)[0]
    usable = min(bd_len, have - 8)
    out: list[UnmapDescriptor] = []
    for off in range(8, 8 + usable - usable % 16, 16):
        lba, blocks = struct.unpack_from(">QI", mv, off)
        out.append(UnmapDescriptor(lba, blocks))
    return out


def check_unmap_descriptors(
    descs: list[UnmapDescriptor], num_blocks: int, max_descriptors: int, max_blocks: int
) -> None:
    """SBC-3 5.28.1: the Block Limits maxima, then every range inside the medium."""
    if len(descs) > max_descriptors:
        # byte 2: UNMAP BLOCK DESCRIPTOR DATA LENGTH
        raise InvalidFieldInParameterList(2, None, "more UNMAP descriptors than the maximum")
    total = 0
    for i, d in enumerate(descs):
        total += d.blocks
        if total > max_blocks:
            raise InvalidFieldInParameterList(8 + 16 * i + 8, None,
                                              "UNMAP LBA count above the maximum")
        # A descriptor of 0 blocks names no LBA, so it is never out of range (even at the
        # capacity; libiscsi's Unmap.ZeroBlocks sends one there).
        if d.lba + d.blocks > num_blocks:
            raise LbaOutOfRange(f"UNMAP {d.lba}+{d.blocks} beyond {num_blocks} blocks")


async def unmap(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_unmap_cdb(cmd.cdb)
    if not lu.lbpu:
        raise InvalidOpcode("UNMAP: this logical unit cannot unmap")
    if req.anchor and not ANC_SUP:
        raise InvalidFieldInCdb(1, 0, "ANCHOR set but anchored LBAs are not supported")
    if req.param_len == 0:
        return ScsiResult()  # SBC-3 5.28.1: nothing to do, not an error
    data = cmd.data_out if cmd.data_out is not None else memoryview(b"")
    descs = parse_unmap_params(data, req.param_len)
    lu.refresh_capacity()
    check_unmap_descriptors(descs, lu.num_blocks, lu.max_unmap_descriptors, lu.max_unmap_blocks)
    bs = lu.block_size
    for d in _coalesce(descs):
        async with _hold(lu, d.lba * bs, d.blocks * bs):
            await _zero_or_sense(lu, d.lba, d.blocks, deallocate=True)
    return ScsiResult()


def _coalesce(descs: list[UnmapDescriptor]) -> list[UnmapDescriptor]:
    """Sorted, merged, non-empty ranges: one backend call per run of adjacent descriptors."""
    out: list[UnmapDescriptor] = []
    for d in sorted(x for x in descs if x.blocks):
        if out and d.lba <= out[-1].lba + out[-1].blocks:
            last = out[-1]
            end = max(last.lba + last.blocks, d.lba + d.blocks)
            out[-1] = UnmapDescriptor(last.lba, end - last.lba)
        else:
            out.append(d)
    return out


# --- WRITE SAME(10)/(16) (SBC-3 5.42, 5.43; NDOB: SBC-4 5.50) ---------------------------------


class WriteSame(NamedTuple):
    lba: int
    blocks: int  # 0: to the end of the medium (WSNZ=0)
    wrprotect: int
    anchor: bool
    unmap: bool
    ndob: bool  # no Data-Out buffer: the block is all zeros (WRITE SAME(16) only)


def parse_write_same(cdb: bytes) -> WriteSame:
    b1 = cdb[1]
    if cdb[0] == 0x41:
        lba, blocks = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
        ndob = False
    else:
        lba, blocks = struct.unpack_from(">QI", cdb, 2)
        ndob = bool(b1 & 0x01)
    return WriteSame(lba, blocks, b1 >> 5, bool(b1 & 0x10), bool(b1 & 0x08), ndob)


def write_same_xfer(cdb: bytes, bs: int) -> tuple[Direction, int]:
    # One logical block of Data-Out, none with NDOB (SBC-4 5.50).
    if cdb[0] == 0x93 and cdb[1] & 0x01:
        return Direction.NONE, 0
    return Direction.WRITE, bs


def check_write_same(ws: WriteSame) -> None:
    """CDB field rules that need no medium (SBC-3 5.42/5.43, SBC-4 5.50)."""
    if ws.wrprotect:
        raise InvalidFieldInCdb(1, 7, "protection information is not supported")
    if ws.anchor and not ws.unmap:
        raise InvalidFieldInCdb(1, 4, "ANCHOR set without UNMAP")
    if ws.anchor and not ANC_SUP:
        raise InvalidFieldInCdb(1, 4, "anchored LBAs are not supported")
    if ws.blocks == 0 and WSNZ:
        raise InvalidFieldInCdb(7, None, "NUMBER OF LOGICAL BLOCKS 0 is not supported")
    if MAX_WRITE_SAME_BLOCKS and ws.blocks > MAX_WRITE_SAME_BLOCKS:
        raise InvalidFieldInCdb(7, None, "above the MAXIMUM WRITE SAME LENGTH")


async def write_same(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    ws = parse_write_same(cmd.cdb)
    sixteen = cmd.cdb[0] == 0x93
    check_write_same(ws)
    lu.refresh_capacity()
    if ws.lba >= lu.num_blocks:
        raise LbaOutOfRange(f"WRITE SAME at {ws.lba} beyond {lu.num_blocks} blocks")
    blocks = ws.blocks or lu.num_blocks - ws.lba
    lu.check_range(ws.lba, blocks)
    bs = lu.block_size
    if ws.ndob:
        block = bytes(bs)
    else:
        data = cmd.data_out
        # Exactly one logical block of Data-Out: a shorter or longer buffer is an error
        # (libiscsi WriteSame10.InvalidDataOutSize), not a residual.
        if cmd.expected_length != bs or data is None or len(data) != bs:
            raise InvalidFieldInCdb(7 if not sixteen else 10, None,
                                    "WRITE SAME needs exactly one logical block of data")
        block = bytes(data)
    async with _hold(lu, ws.lba * bs, blocks * bs):
        if ws.unmap and (lu.lbpws if sixteen else lu.lbpws10):
            # SBC-3 5.42/5.43: with UNMAP set the device server unmaps the range instead of
            # writing it (the Data-Out block is not used); unmapped blocks read back as zeros
            # (LBPRZ). libiscsi's UnmapUntilEnd sends a non-zero block and expects zeros.
            await _zero_or_sense(lu, ws.lba, blocks, deallocate=True)
        elif not any(block):
            await _zero_or_sense(lu, ws.lba, blocks, deallocate=False)  # stays mapped
        else:
            await _pattern_or_sense(lu, ws.lba, blocks, block)
    return ScsiResult(transfer_length=0 if ws.ndob else bs)


# --- GET LBA STATUS (SBC-3 5.20) ---------------------------------------------------------------

PROVISIONING_MAPPED = 0
PROVISIONING_DEALLOCATED = 1

_GLS_HEADER = 8
_GLS_DESC = 16
_MAX_DESC_BLOCKS = 0xFFFFFFFF  # NUMBER OF LOGICAL BLOCKS is 32 bits


class GetLbaStatus(NamedTuple):
    lba: int
    alloc_len: int


def parse_get_lba_status(cdb: bytes) -> GetLbaStatus:
    lba, alloc = struct.unpack_from(">QI", cdb, 2)
    return GetLbaStatus(lba, alloc)


def lba_status_descriptors(
    extents: list[Extent], block_size: int, start_lba: int, end_lba: int, limit: int
) -> list[tuple[int, int, int]]:
    """Backend byte extents -> (lba, blocks, provisioning status), at most ``limit``.

    Only whole blocks inside a hole are deallocated; a block partly holding data is mapped.
    The first descriptor starts at ``start_lba`` (SBC-3 5.20.2: it contains the starting LBA).
    """
    if not extents:
        return []
    bs = block_size
    covered = min(end_lba, -(-(extents[-1].offset + extents[-1].length) // bs))
    holes: list[tuple[int, int]] = []
    for e in extents:
        if e.mapped:
            continue
        a = max(start_lba, -(-e.offset // bs))
        b = min(covered, (e.offset + e.length) // bs)
        if b <= a:
            continue
        if holes and holes[-1][1] >= a:
            holes[-1] = (holes[-1][0], max(b, holes[-1][1]))
        else:
            holes.append((a, b))
    runs: list[tuple[int, int, int]] = []
    pos = start_lba
    for a, b in holes:
        if a > pos:
            runs.append((pos, a - pos, PROVISIONING_MAPPED))
        runs.append((a, b - a, PROVISIONING_DEALLOCATED))
        pos = b
    if pos < covered:
        runs.append((pos, covered - pos, PROVISIONING_MAPPED))
    # NUMBER OF LOGICAL BLOCKS is 32 bits: split longer runs, then cut to the limit
    out: list[tuple[int, int, int]] = []
    for lba, n, status in runs:
        while n > 0 and len(out) < limit:
            take = min(n, _MAX_DESC_BLOCKS)
            out.append((lba, take, status))
            lba, n = lba + take, n - take
    return out


def lba_status_data(descs: list[tuple[int, int, int]]) -> bytes:
    body = b"".join(struct.pack(">QIB3x", lba, n, status) for lba, n, status in descs)
    # PARAMETER DATA LENGTH counts the bytes after itself
    return struct.pack(">I4x", 4 + len(body)) + body


async def get_lba_status(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_get_lba_status(cmd.cdb)
    n = lu.refresh_capacity()
    if req.lba >= n:
        raise LbaOutOfRange(f"GET LBA STATUS at {req.lba} beyond {n} blocks")
    if req.alloc_len == 0:
        return ScsiResult()  # SPC-4 4.2.5.6: nothing to return, not an error
    limit = max(1, (req.alloc_len - _GLS_HEADER) // _GLS_DESC)
    bs = lu.block_size
    end = min(n, req.lba + limit * _MAX_DESC_BLOCKS)
    try:
        extents = await lu.backend.lba_status(req.lba * bs, (end - req.lba) * bs)
    except BackendError as exc:
        log.error("%s: lba status failed: %s", lu.backend.locator, exc)
        extents = [Extent(req.lba * bs, (end - req.lba) * bs, True)]
    descs = lba_status_descriptors(extents, bs, req.lba, end, limit)
    if not descs:
        descs = [(req.lba, 1, PROVISIONING_MAPPED)]
    return ScsiResult(data=lba_status_data(descs)[: req.alloc_len])


# --- SANITIZE (SBC-3 5.21) ---------------------------------------------------------------------

SA_OVERWRITE = 0x01
SA_BLOCK_ERASE = 0x02
SA_CRYPTO_ERASE = 0x03
SA_EXIT_FAILURE_MODE = 0x1F


class SanitizeCdb(NamedTuple):
    immed: bool
    ause: bool
    service_action: int
    param_len: int


class OverwriteParams(NamedTuple):
    invert: bool
    test: int
    passes: int  # OVERWRITE COUNT, 1-31
    pattern: bytes


def parse_sanitize(cdb: bytes) -> SanitizeCdb:
    b1 = cdb[1]
    return SanitizeCdb(bool(b1 & 0x80), bool(b1 & 0x20), b1 & 0x1F,
                       struct.unpack_from(">H", cdb, 7)[0])


def check_sanitize_cdb(req: SanitizeCdb, block_size: int) -> None:
    """SBC-3 5.21.1: the PARAMETER LIST LENGTH each service action allows."""
    if req.service_action == SA_OVERWRITE:
        # a 4-byte header and a pattern of 1..block size bytes
        if not 4 < req.param_len <= block_size + 4:
            raise InvalidFieldInCdb(7, None, "OVERWRITE parameter list length out of range")
    elif req.param_len:
        raise InvalidFieldInCdb(7, None, "parameter list length must be 0")


def parse_overwrite_params(data: bytes | memoryview, block_size: int) -> OverwriteParams:
    """SANITIZE OVERWRITE parameter list (SBC-3 5.21.2)."""
    if len(data) < 5:
        raise ParameterListLengthError("OVERWRITE parameter list too short")
    b0 = data[0]
    count = b0 & 0x1F
    if count == 0:
        raise InvalidFieldInParameterList(0, 4, "OVERWRITE COUNT 0")
    plen = struct.unpack_from(">H", data, 2)[0]
    if plen == 0 or plen > block_size:
        raise InvalidFieldInParameterList(2, None, "INITIALIZATION PATTERN LENGTH invalid")
    if 4 + plen > len(data):
        raise ParameterListLengthError("pattern longer than the parameter list")
    test = (b0 >> 5) & 0x03
    if test:
        raise InvalidFieldInParameterList(0, 6, "TEST must be 0")
    return OverwriteParams(bool(b0 & 0x80), test, count, bytes(data[4 : 4 + plen]))


def overwrite_block(pattern: bytes, block_size: int) -> bytes:
    """The pattern repeated to fill one logical block (SBC-3 5.21.2)."""
    reps = -(-block_size // len(pattern))
    return (pattern * reps)[:block_size]


#: Background sanitize operations, kept referenced until they finish.
_RUNNING: set[asyncio.Task[None]] = set()


async def sanitize(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_sanitize(cmd.cdb)
    check_sanitize_cdb(req, lu.block_size)
    if req.service_action == SA_EXIT_FAILURE_MODE:
        # SBC-3 4.11.?: leave the failure mode of an earlier failed sanitize, medium as it is
        lu.sanitize_failed = False
        return ScsiResult()
    params: OverwriteParams | None = None
    if req.service_action == SA_OVERWRITE:
        data = cmd.data_out if cmd.data_out is not None else memoryview(b"")
        params = parse_overwrite_params(data[: req.param_len], lu.block_size)
    job = asyncio.get_running_loop().create_task(_sanitize_medium(lu, req.service_action, params))
    lu.sanitize_in_progress = True
    _RUNNING.add(job)
    job.add_done_callback(_RUNNING.discard)
    if req.immed:
        return ScsiResult()  # SBC-3 5.21.1: GOOD now; progress via REQUEST SENSE
    # The operation outlives the command: an abort or a lost connection does not stop it
    # (SBC-3 4.11.2), so the handler waits on a shield.
    await asyncio.shield(job)
    if lu.sanitize_failed:
        raise SanitizeFailed("sanitize failed")
    return ScsiResult()


async def _sanitize_medium(lu: LogicalUnit, action: int, params: OverwriteParams | None) -> None:
    bs = lu.block_size
    try:
        n = lu.refresh_capacity()
        async with _hold(lu, 0, n * bs):
            if params is not None:
                block = overwrite_block(params.pattern, bs)
                inverted = bytes(b ^ 0xFF for b in block)
                for i in range(params.passes):
                    # INVERT (SBC-3 5.21.2): the pattern is inverted between passes; the last
                    # pass writes it as given.
                    use = inverted if params.invert and (params.passes - 1 - i) % 2 else block
                    # SBC-3 4.11: the overwrite alters the medium itself. Each chunk is made
                    # durable before the next, so what SANITIZE reports done (or, after a
                    # crash, failed part-way) is on disk, not in a cache.
                    await lu.backend.write_pattern(0, n * bs, use, fua=True)
            else:
                # BLOCK ERASE / CRYPTO ERASE, emulated: deallocate everything when the store
                # can (reads then return zeros), else write zeros over it.
                await lu.backend.write_zeroes(0, n * bs, deallocate=lu.lbpme)
            await lu.backend.flush()
        lu.sanitize_failed = False
    except (BackendError, SenseError) as exc:
        log.error("%s: sanitize failed: %s", lu.backend.locator, exc)
        lu.sanitize_failed = True
    except Exception:
        log.exception("%s: sanitize failed", lu.backend.locator)
        lu.sanitize_failed = True
    finally:
        lu.sanitize_in_progress = False


# --- WRITE ATOMIC(16) (SBC-4 5.48) ----------------------------------------------------------


class WriteAtomic(NamedTuple):
    lba: int
    blocks: int
    flags: int  # byte 1: WRPROTECT 7:5, DPO 0x10, FUA 0x08
    boundary: int

    @property
    def fua(self) -> bool:
        return bool(self.flags & 0x08)


def parse_write_atomic(cdb: bytes) -> WriteAtomic:
    b1, lba, boundary, blocks = struct.unpack_from(">xBQHH", cdb)
    return WriteAtomic(lba, blocks, b1, boundary)


def atomic_limits(lu: LogicalUnit) -> tuple[int, int, int]:
    """(MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT, ATOMIC TRANSFER LENGTH GRANULARITY)
    for Block Limits (SBC-4 6.6.4). The whole write is one backend write made under the LU's
    range lock, so any length up to the maximum transfer length is atomic to other commands;
    WRITE ATOMIC(16) carries a 16-bit TRANSFER LENGTH, which caps it too."""
    return min(lu.max_transfer_blocks, 0xFFFF), 0, 0


async def write_atomic(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = parse_write_atomic(cmd.cdb)
    if req.flags >> 5:
        raise InvalidFieldInCdb(1, 7, "protection information is not supported")
    if req.boundary:
        raise InvalidFieldInCdb(10, None, "atomic boundaries are not supported")
    lu.check_range(req.lba, req.blocks)
    max_len, align, gran = atomic_limits(lu)
    if req.blocks > max_len:
        raise InvalidFieldInCdb(12, None, "above the MAXIMUM ATOMIC TRANSFER LENGTH")
    if align > 1 and req.lba % align:
        raise InvalidFieldInCdb(2, None, "LBA not on the atomic alignment")
    if gran > 1 and req.blocks % gran:
        raise InvalidFieldInCdb(12, None, "not a multiple of the atomic granularity")
    bs = lu.block_size
    n = req.blocks * bs
    data = cmd.data_out
    if n and (data is None or len(data) < n):
        # All or nothing: a short Data-Out writes none of it.
        raise InvalidFieldInCdb(12, None, "Data-Out shorter than the transfer length")
    if n and data is not None:
        # one backend write under the range lock (write_or_sense takes it)
        await lu.write_or_sense(req.lba * bs, data[:n], req.fua)
    return ScsiResult(transfer_length=n)


# --- helpers -------------------------------------------------------------------------------


def _hold(lu: LogicalUnit, offset: int, length: int) -> RangeHold:
    """The LU's byte-range lock over what a command rewrites, so it is atomic against
    COMPARE AND WRITE and every other write (backend calls here bypass write_or_sense)."""
    return lu.range_lock.hold(offset, length)


async def _zero_or_sense(lu: LogicalUnit, lba: int, blocks: int, *, deallocate: bool) -> None:
    bs = lu.block_size
    try:
        await lu.backend.write_zeroes(lba * bs, blocks * bs, deallocate=deallocate)
    except BackendError as exc:
        log.error("%s: zero/unmap failed: %s", lu.backend.locator, exc)
        raise WriteError(str(exc), information=lba) from exc


async def _pattern_or_sense(lu: LogicalUnit, lba: int, blocks: int, block: bytes) -> None:
    bs = lu.block_size
    try:
        await lu.backend.write_pattern(lba * bs, blocks * bs, block)
    except BackendError as exc:
        log.error("%s: write same failed: %s", lu.backend.locator, exc)
        raise WriteError(str(exc), information=lba) from exc


# --- registry rows -------------------------------------------------------------------------

CTRL = 0xC7
_W = Direction.WRITE
_N = Direction.NONE
_L4 = (0xFF,) * 4
_L8 = (0xFF,) * 8


def _param_len_xfer(cdb: bytes, bs: int) -> tuple[Direction, int]:
    n = int.from_bytes(cdb[7:9], "big")
    return (_W, n) if n else (_N, 0)


register(OpInfo(0x42, "UNMAP", 10, _W, unmap, _param_len_xfer,
                bytes((0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, CTRL)), writes_medium=True))
# byte 1: WRPROTECT | ANCHOR | UNMAP (| NDOB for (16))
register(OpInfo(0x41, "WRITE SAME(10)", 10, _W, write_same, write_same_xfer,
                bytes((0x41, 0xF8, *_L4, 0x1F, 0xFF, 0xFF, CTRL)), exact_xfer=True,
                writes_medium=True))
register(OpInfo(0x93, "WRITE SAME(16)", 16, _W, write_same, write_same_xfer,
                bytes((0x93, 0xF9, *_L8, *_L4, 0x1F, CTRL)), exact_xfer=True,
                writes_medium=True))
register(OpInfo(0x9E, "GET LBA STATUS", 16, Direction.READ, get_lba_status, alloc_len(10, 4),
                bytes((0x9E, 0x1F, *_L8, *_L4, 0, CTRL)), service_action=0x12))
# byte 1: IMMED | AUSE | SERVICE ACTION
for _sa, _name in ((SA_OVERWRITE, "OVERWRITE"), (SA_BLOCK_ERASE, "BLOCK ERASE"),
                   (SA_CRYPTO_ERASE, "CRYPTO ERASE"),
                   (SA_EXIT_FAILURE_MODE, "EXIT FAILURE MODE")):
    register(OpInfo(0x48, f"SANITIZE {_name}", 10, _W, sanitize, _param_len_xfer,
                    bytes((0x48, 0xBF, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTRL)), service_action=_sa,
                    writes_medium=_sa != SA_EXIT_FAILURE_MODE))
register(OpInfo(0x9C, "WRITE ATOMIC(16)", 16, _W, write_atomic, block_count(_W, 12, 2),
                bytes((0x9C, 0xF8, *_L8, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, CTRL)),
                exact_xfer=True, writes_medium=True))
