"""LogicalUnit: a backend + identity + mode state + unit attentions, executing CDBs.

``execute`` never raises for a SCSI error: every failure becomes CHECK CONDITION with sense
data, and an unexpected exception becomes HARDWARE ERROR 4/44/00 INTERNAL TARGET FAILURE (and
is logged). Backend I/O failures (BackendError) map to MEDIUM ERROR: 3/11/00 UNRECOVERED READ
ERROR on reads, 3/0C/00 WRITE ERROR on writes and cache flushes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from pyscsit.backends.base import Backend, BackendError
from pyscsit.scsi import (  # each registers its opcode rows; some are imported for that only
    provisioning,  # noqa: F401 - UNMAP, WRITE SAME, SANITIZE ... rows
    registry,
    sbc,  # noqa: F401 - READ, WRITE, VERIFY, SYNCHRONIZE CACHE ... rows
    sbc_misc,  # noqa: F401 - WRITE AND VERIFY, ORWRITE, PRE-FETCH ... rows
    spc,
    vaai,  # noqa: F401 - COMPARE AND WRITE rows
    xcopy,  # EXTENDED COPY rows
)
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.locks import RangeLock
from pyscsit.scsi.modes import ModeState, SoftwareWriteProtected
from pyscsit.scsi.reservations import PrStore, Reservations  # and RESERVE / PR rows
from pyscsit.scsi.sense import (
    UA_HARD_RESET,
    UA_LUN_RESET,
    UA_POWER_ON,
    InternalTargetFailure,
    InvalidFieldInCdb,
    InvalidOpcode,
    LbaOutOfRange,
    SanitizeInProgress,
    SenseError,
    UnitAttention,
    UnrecoveredReadError,
    WriteError,
    WriteProtected,
)
from pyscsit.scsi.task import CdbInfo, Direction, Nexus, ScsiCommand, ScsiResult, Status

log = logging.getLogger(__name__)

#: Largest READ/WRITE we accept (Block Limits VPD MAXIMUM TRANSFER LENGTH), in bytes. It bounds
#: the memory one command can make us allocate.
MAX_TRANSFER_BYTES = 32 * 1024 * 1024  # libiscsi moves 65536-block (32 MiB) READ16s in WriteSame16.Unmap

_RESET_UA = {
    "lun": UA_LUN_RESET,  # SAM-5 6.3.3 LOGICAL UNIT RESET: 29/03
    "lun_reset": UA_LUN_RESET,
    "logical_unit_reset": UA_LUN_RESET,
    "warm": UA_HARD_RESET,  # RFC 7143 11.5.1 TARGET WARM RESET: a hard reset, 29/02
    "target_warm_reset": UA_HARD_RESET,
    "cold": UA_POWER_ON,  # TARGET COLD RESET: as a power on, 29/01
    "target_cold_reset": UA_POWER_ON,
}


def _printable(name: str, value: str, width: int) -> str:
    if len(value) > width or not all(0x20 <= ord(c) < 0x7F for c in value):
        raise ValueError(f"{name} must be at most {width} printable ASCII characters")
    return value


def check_cdb(op: registry.OpInfo, cdb: bytes) -> None:
    """Checks every CDB gets: length, reserved bits (SPC-4 4.4.2), NACA/LINK (SAM-5 5.2)."""
    n = op.cdb_len
    if len(cdb) < n:
        raise InvalidFieldInCdb(len(cdb), None, "CDB too short")
    if int.from_bytes(cdb[:n], "big") & op.reserved_mask:
        op.check_reserved(cdb)
    if cdb[n - 1] & 0x05:
        # The control byte's NACA (ACA) and LINK bits: neither is supported.
        raise InvalidFieldInCdb(n - 1, 2 if cdb[n - 1] & 0x04 else 0, "NACA/LINK not supported")


class LogicalUnit:
    def __init__(
        self,
        backend: Backend,
        identity: LuIdentity,
        *,
        block_size: int = 512,
        read_only: bool = False,
        vendor: str = "PYSCSIT",
        product: str = "VIRTUAL-DISK",
        revision: str = "0001",
        pr_state_path: str | os.PathLike[str] | None = None,
        physical_block_size: int | None = None,
    ) -> None:
        if block_size < 512 or block_size > 65536 or block_size & (block_size - 1):
            raise ValueError("block_size must be a power of two from 512 to 65536")
        self.backend = backend
        self.identity = identity
        self.block_size = block_size
        self.read_only = read_only or bool(getattr(backend, "read_only", False))
        self.vendor = _printable("vendor", vendor, 8)
        self.product = _printable("product", product, 16)
        self.revision = _printable("revision", revision, 4)
        self.modes = ModeState()
        self.peripheral_byte = 0x00  # qualifier 000b, direct access block device
        self.standard_inquiry = spc.standard_inquiry(0x00, vendor, product, revision)
        self.max_transfer_blocks = max(1, MAX_TRANSFER_BYTES // block_size)
        self.max_unmap_blocks = 0xFFFFFFFF
        self.max_unmap_descriptors = 256
        # COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS is one byte (SBC-3 5.2); VPD 0xB0 says so.
        self.max_compare_write_blocks = min(255, self.max_transfer_blocks)
        # Every write to the medium holds its byte range, so ATS is atomic (SBC-3 5.2).
        self.range_lock = RangeLock()
        # The LUs an EXTENDED COPY sent here may name as copy targets (config sets it).
        self.directory: xcopy.LuDirectory | None = None
        # READ CAPACITY(16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-3 5.16.2)
        phys = max(physical_block_size or backend.physical_block_size, block_size)
        self.physical_block_size = phys
        self.lbppbe = max(0, (phys // block_size).bit_length() - 1) if phys > block_size else 0
        # Logical block provisioning: claimed only for what the registry and backend both do.
        can_unmap = backend.supports_unmap and not self.read_only
        self.lbpu = can_unmap and registry.is_supported(0x42)  # UNMAP
        self.lbpws = can_unmap and registry.is_supported(0x93)  # WRITE SAME(16)
        self.lbpws10 = can_unmap and registry.is_supported(0x41)  # WRITE SAME(10)
        self.lbpme = self.lbpu or self.lbpws or self.lbpws10
        # SANITIZE (SBC-3 4.11): running in the background / the last one failed.
        self.sanitize_in_progress = False
        self.sanitize_failed = False
        self.num_blocks = 0
        if self.refresh_capacity() == 0:
            raise ValueError(f"{backend.locator or backend!r} is smaller than one block")
        # Unit attentions pending per I_T nexus, oldest first, and every nexus seen so far.
        self._ua: dict[Nexus, list[tuple[int, int]]] = {}
        self._nexuses: set[Nexus] = set()
        self._last_nexus: Nexus | None = None
        # Reservations; APTPL state lives at pr_state_path (loading it may raise ValueError).
        # abort_nexus: the server's way to abort an I_T nexus's tasks on this LU (PREEMPT AND
        # ABORT, SPC-4 5.9.11.5).
        self.abort_nexus: Callable[[Nexus], None] | None = None
        self.reservations = Reservations(
            self, PrStore(pr_state_path) if pr_state_path is not None else None)

    # --- capacity and state the handlers use -----------------------------------------------

    def refresh_capacity(self) -> int:
        """Re-read the backend size (a grown file grows the LU); returns the block count."""
        self.num_blocks = self.backend.size // self.block_size
        return self.num_blocks

    def check_range(self, lba: int, blocks: int) -> None:
        """SBC-3 4.5: LBA and LBA + blocks must lie inside the medium."""
        if lba + blocks > self.num_blocks or lba >= self.num_blocks:
            n = self.refresh_capacity()  # the file may have grown since we looked
            if lba + blocks > n or lba >= n:
                raise LbaOutOfRange(f"LBA {lba} + {blocks} beyond {n} blocks")

    @property
    def write_protected(self) -> bool:
        return self.read_only or self.modes.swp

    def check_writable(self) -> None:
        if self.read_only:
            raise WriteProtected("logical unit is write protected")
        if self.modes.swp:
            raise SoftwareWriteProtected("control mode page SWP is set")

    @property
    def descriptor_sense(self) -> bool:
        return self.modes.d_sense

    async def read_or_sense(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        try:
            return await self.backend.read(offset, length)
        except BackendError as exc:
            log.error("%s: read failed: %s", self.backend.locator, exc)
            raise UnrecoveredReadError(str(exc), information=offset // self.block_size) from exc

    async def write_or_sense(
        self, offset: int, data: memoryview | bytes, fua: bool, *, locked: bool = False
    ) -> None:
        """Write, holding the range lock for those bytes; ``locked``: the caller holds it."""
        if not locked:
            n = data.nbytes if isinstance(data, memoryview) else len(data)
            async with self.range_lock.hold(offset, n):
                await self.write_or_sense(offset, data, fua, locked=True)
            return
        # SBC-3 6.4.5: with the write cache disabled (WCE=0) every write is write-through.
        fua = fua or not self.modes.wce
        try:
            await self.backend.write(offset, data, fua)
        except BackendError as exc:
            log.error("%s: write failed: %s", self.backend.locator, exc)
            raise WriteError(str(exc), information=offset // self.block_size) from exc

    async def flush_or_sense(self) -> None:
        try:
            await self.backend.flush()
        except BackendError as exc:
            log.error("%s: flush failed: %s", self.backend.locator, exc)
            raise WriteError(str(exc)) from exc

    # --- the iSCSI layer's interface -------------------------------------------------------

    def inspect(self, cdb: bytes) -> CdbInfo:
        """Direction and byte count the CDB asks to move, before any data arrives."""
        op = registry.lookup(cdb)
        if op is None:
            return CdbInfo(Direction.NONE, 0, known=False)
        if len(cdb) < op.cdb_len:
            return CdbInfo(Direction.NONE, 0)  # execute() will reject it
        direction, nbytes = op.xfer(cdb, self.block_size)
        return CdbInfo(direction, nbytes)

    async def execute(self, cmd: ScsiCommand) -> ScsiResult:
        nexus = cmd.nexus
        if nexus is not self._last_nexus:
            self._nexuses.add(nexus)
            self._last_nexus = nexus
        cdb = cmd.cdb
        op = registry.lookup(cdb)
        if self._ua and (op is None or not op.ua_exempt):
            ua = self.take_unit_attention(nexus)
            if ua is not None:
                return self.check_condition(ua, self._xfer_for(op, cdb))
        if self.sanitize_in_progress and (op is None or not op.ua_exempt):
            # SBC-3 4.11.2: only INQUIRY, REPORT LUNS and REQUEST SENSE run meanwhile.
            return self.check_condition(SanitizeInProgress(), self._xfer_for(op, cdb))
        if op is None:
            return self.check_condition(InvalidOpcode(f"opcode {cdb[:1].hex()}"), None)
        if self.reservations.reserved and self.reservations.conflicts(nexus, op.conflict):
            # SPC-4 5.9.1 / SPC-2 5.5.1: the per-command rule is the registry's ``conflict``
            return ScsiResult(Status.RESERVATION_CONFLICT,
                              transfer_length=self._xfer_for(op, cdb))
        try:
            if op.generic_checks:
                check_cdb(op, cdb)
            if op.writes_medium and self.write_protected:
                # SBC-3 4.11: DATA PROTECT before touching anything; the one check for every
                # row with writes_medium, so handlers do not repeat it
                self.check_writable()
            return await op.handler(self, cmd)
        except SenseError as exc:
            return self.check_condition(exc, self._xfer_for(op, cdb))
        except Exception:
            log.exception("%s: %s failed", self.backend.locator, op.name)
            err = InternalTargetFailure("internal error")
            return self.check_condition(err, self._xfer_for(op, cdb))

    def _xfer_for(self, op: registry.OpInfo | None, cdb: bytes) -> int | None:
        if op is None or not op.exact_xfer or len(cdb) < op.cdb_len:
            return None
        return op.xfer(cdb, self.block_size)[1]

    def check_condition(self, err: SenseError, transfer_length: int | None) -> ScsiResult:
        return ScsiResult(
            status=Status.CHECK_CONDITION,
            sense=err.encode(self.descriptor_sense),
            transfer_length=transfer_length,
        )

    # --- unit attentions (SAM-5 5.14) ------------------------------------------------------

    def take_unit_attention(self, nexus: Nexus) -> UnitAttention | None:
        """Pop the oldest unit attention pending for ``nexus``."""
        pending = self._ua.get(nexus)
        if not pending:
            return None
        asc, ascq = pending.pop(0)
        if not pending:
            del self._ua[nexus]
        return UnitAttention(asc, ascq)

    def establish_unit_attention(self, code: tuple[int, int], nexuses: set[Nexus]) -> None:
        for nx in nexuses:
            queue = self._ua.setdefault(nx, [])
            if code[0] == 0x29:
                # A reset supersedes every older condition (SAM-5 5.14, 6.3).
                queue.clear()
            if code not in queue:
                queue.append(code)

    def reset(self, kind: str) -> None:
        """LOGICAL UNIT RESET / TARGET WARM RESET / TARGET COLD RESET (SAM-5 6.3).

        Establishes a unit attention for every I_T nexus that has used this LU, the requesting
        one included (libiscsi's MultipathIO.Reset checks every path sees it). Aborting the
        tasks in flight is the iSCSI layer's job (it owns the task table).
        """
        code = _RESET_UA.get(kind.lower())
        if code is None:
            raise ValueError(f"unknown reset kind {kind!r}")
        self.establish_unit_attention(code, self._nexuses)
        self.reservations.reset()  # RESERVE(6)/(10) goes; persistent reservations stay

    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus is gone (logout, connection loss): forget its state.

        SAM-5 would establish 29/07 I_T NEXUS LOSS OCCURRED for the initiator port's next
        nexus; initiators (and libiscsi's tests, which log in again with the same ISID) do not
        expect it, so a returning nexus starts clean.
        """
        self._nexuses.discard(nexus)
        self._ua.pop(nexus, None)
        if self._last_nexus == nexus:
            self._last_nexus = None
        self.reservations.nexus_lost(nexus)  # RESERVE(6)/(10) goes; registrations stay
        xcopy.nexus_lost(self, nexus)  # held EXTENDED COPY results go with their nexus

    def known_nexuses(self) -> frozenset[Nexus]:
        return frozenset(self._nexuses)

    def __repr__(self) -> str:
        return (f"LogicalUnit({self.backend.locator!r}, {self.num_blocks} x {self.block_size}"
                f"{', ro' if self.read_only else ''})")

