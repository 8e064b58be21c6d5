"""SCSI-2 RESERVE/RELEASE and SCSI-3 persistent reservations, per logical unit.

State lives in ``Reservations`` (one per LogicalUnit, ``lu.reservations``); lu.execute asks
``conflicts()`` before running a command while any reservation is held; the handlers below are
the registry rows for RESERVE(6)/(10), RELEASE(6)/(10), PERSISTENT RESERVE IN and OUT.

- Registrations belong to I_T nexuses (initiator port = iSCSI name + ISID, target port), or to
  every port of an initiator (TransportID format 00b via SPEC_I_PT), or to every target port
  (ALL_TG_PT). They survive I_T nexus loss and resets (SPC-4 5.9.4); a RESERVE(6)/(10)
  reservation does not (SPC-2 5.5.1, 7.21).
- With APTPL, registrations and the reservation are written atomically to the state directory
  (``pr-<NAA>.json``, keyed by the LU's identity, never its LUN) before the command completes,
  and loaded again at start (SPC-4 5.9.5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyscsit.files import write_atomic
from pyscsit.scsi import pr_codec as C
from pyscsit.scsi.pr_codec import MoveParams, ProutAction, ProutParams, PrType
from pyscsit.scsi.registry import OpInfo, PrConflict, alloc_len, fixed, param_len, register
from pyscsit.scsi.sense import (
    InternalTargetFailure,
    InvalidFieldInParameterList,
    SenseError,
)
from pyscsit.scsi.task import Direction, Nexus, ScsiCommand, ScsiResult, Status

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

log = logging.getLogger(__name__)

# SPC-4 annex: unit attentions a persistent reservation change establishes
UA_RESERVATIONS_PREEMPTED = (0x2A, 0x03)
UA_RESERVATIONS_RELEASED = (0x2A, 0x04)
UA_REGISTRATIONS_PREEMPTED = (0x2A, 0x05)

_FORMAT_VERSION = 1
_GOOD = ScsiResult()
_CONFLICT = ScsiResult(Status.RESERVATION_CONFLICT)


class InvalidReleaseOfPr(SenseError):
    asc, ascq = 0x26, 0x04  # INVALID RELEASE OF PERSISTENT RESERVATION


class _Conflict(Exception):
    """The command ends in RESERVATION CONFLICT (a status, not sense data)."""


def _fold(name: str) -> str:
    return name.lower()  # iSCSI names compare case-folded (RFC 3722 stringprep)


@dataclass(eq=False, slots=True)
class Registration:
    key: int
    initiator_name: str  # case-folded
    isid: int | None  # None: every initiator port of that name (TransportID format 00b)
    target_port: str  # Nexus.target_port of the port it was made through
    all_tg_pt: bool = False
    relative_port: int = 1

    def matches(self, nexus: Nexus) -> bool:
        return (self.initiator_name == _fold(nexus.initiator_name)
                and (self.isid is None or self.isid == nexus.isid)
                and (self.all_tg_pt or self.target_port == nexus.target_port))

    def same_port(self, name: str, isid: int | None, target_port: str) -> bool:
        """Would a registration for (name, isid) through ``target_port`` overlap this one?"""
        return (self.initiator_name == name
                and (self.isid is None or isid is None or self.isid == isid)
                and (self.all_tg_pt or self.target_port == target_port))

    def to_json(self) -> dict[str, object]:
        return {"key": f"{self.key:#018x}", "initiator": self.initiator_name, "isid": self.isid,
                "target_port": self.target_port, "all_tg_pt": self.all_tg_pt,
                "relative_port": self.relative_port}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Registration:
        isid = d["isid"]
        return cls(int(str(d["key"]), 16), str(d["initiator"]),
                   None if isid is None else int(str(isid)), str(d["target_port"]),
                   bool(d["all_tg_pt"]), int(str(d["relative_port"])))


class PrStore:
    """The APTPL file of one LU: ``<state_dir>/pr-<naa>.json``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, object] | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != _FORMAT_VERSION:
            raise ValueError("unknown format")
        return doc

    def save(self, doc: dict[str, object] | None) -> None:
        """Write (or, for None, remove) the state; returns once it is on stable storage."""
        if doc is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(doc, indent=2) + "\n")


class Reservations:
    def __init__(self, lu: LogicalUnit, store: PrStore | None = None) -> None:
        self.lu = lu
        self.store = store
        self.scsi2: Nexus | None = None  # RESERVE(6)/(10) holder
        self.generation = 0
        self.registrations: list[Registration] = []
        self.pr_type: PrType | None = None
        # The reservation holder; for all-registrants types every registrant holds it, and
        # this is only the one that reserved (None once it unregisters).
        self.holder: Registration | None = None
        self.aptpl = False
        self.lock = asyncio.Lock()
        if store is not None:
            self._restore(store)

    # --- the gate lu.execute calls ----------------------------------------------------------

    @property
    def reserved(self) -> bool:
        return self.scsi2 is not None or self.pr_type is not None

    def conflicts(self, nexus: Nexus, rule: PrConflict) -> bool:
        """Whether a command with ``rule`` from ``nexus`` meets RESERVATION CONFLICT."""
        if self.scsi2 is not None:
            # SPC-2 5.5.1: another initiator port's RESERVE blocks all but a few commands
            return self.scsi2 != nexus and rule != PrConflict.ALLOWED
        t = self.pr_type
        if t is None or rule <= PrConflict.PR_ALLOWED:
            return False
        reg = self.registration_for(nexus)
        if reg is not None and (reg is self.holder or not (t is PrType.WRITE_EXCLUSIVE
                                                           or t is PrType.EXCLUSIVE_ACCESS)):
            return False  # the holder, or a registrant under an RO / AR type
        # SPC-4 5.9.1 tables: Write Exclusive types still let anyone read
        return rule == PrConflict.WRITE or not t.write_exclusive

    def registration_for(self, nexus: Nexus) -> Registration | None:
        wildcard = None
        for r in self.registrations:
            if r.matches(nexus):
                if r.isid is not None:
                    return r
                wildcard = r
        return wildcard

    def is_holder(self, nexus: Nexus) -> bool:
        if self.pr_type is None:
            return False
        reg = self.registration_for(nexus)
        return reg is not None and (self.pr_type.all_registrants or reg is self.holder)

    # --- events from the LU and the iSCSI layer -------------------------------------------

    def reset(self) -> None:
        """LOGICAL UNIT RESET, target reset: RESERVE(6)/(10) is released (SPC-2 5.5.1);
        persistent reservations are not (SPC-4 5.9.4)."""
        self.scsi2 = None

    def nexus_lost(self, nexus: Nexus) -> None:
        if self.scsi2 == nexus:
            self.scsi2 = None

    # --- helpers --------------------------------------------------------------------------

    def _nexuses(self, regs: Iterable[Registration], exclude: Nexus | None) -> set[Nexus]:
        regs = list(regs)
        return {n for n in self.lu.known_nexuses()
                if n != exclude and any(r.matches(n) for r in regs)}

    def _ua(self, code: tuple[int, int], regs: Iterable[Registration],
            exclude: Nexus | None) -> None:
        targets = self._nexuses(regs, exclude)
        if targets:
            self.lu.establish_unit_attention(code, targets)

    def _bump(self) -> None:
        self.generation = (self.generation + 1) & 0xFFFFFFFF

    def _release(self) -> None:
        self.pr_type = None
        self.holder = None

    def _remove(self, regs: Iterable[Registration], by: Nexus) -> None:
        """Drop registrations; a holder going takes its reservation along (SPC-4 5.9.11.2),
        and an all-registrants reservation goes with the last registrant."""
        gone = set(map(id, regs))
        self.registrations = [r for r in self.registrations if id(r) not in gone]
        t = self.pr_type
        if t is None:
            return
        if t.all_registrants:
            if not self.registrations:
                self._release()
            elif self.holder is not None and id(self.holder) in gone:
                self.holder = None
        elif self.holder is not None and id(self.holder) in gone:
            self._release()
            if t.registrants_only:
                # SPC-4 5.9.11.3: the others learn that their reservation went away
                self._ua(UA_RESERVATIONS_RELEASED, self.registrations, by)

    def _require(self, nexus: Nexus, key: int) -> Registration:
        """SPC-4 5.9.7 et seq.: an unregistered I_T nexus, or a RESERVATION KEY that is not
        its registered key, conflicts."""
        reg = self.registration_for(nexus)
        if reg is None or reg.key != key:
            raise _Conflict
        return reg

    # --- persistence (SPC-4 5.9.5) ---------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        regs = self.registrations
        holder = next((i for i, r in enumerate(regs) if r is self.holder), None)
        return {
            "version": _FORMAT_VERSION,
            "generation": self.generation,
            "aptpl": self.aptpl,
            "registrations": [r.to_json() for r in regs],
            "reservation": None if self.pr_type is None else {
                "type": int(self.pr_type), "scope": C.LU_SCOPE, "holder": holder},
        }

    def _apply(self, doc: dict[str, object]) -> None:
        regs_raw = doc.get("registrations", [])
        assert isinstance(regs_raw, list)
        self.registrations = [Registration.from_json(d) for d in regs_raw]
        self.generation = int(str(doc.get("generation", 0))) & 0xFFFFFFFF
        self.aptpl = bool(doc.get("aptpl", False))
        res = doc.get("reservation")
        self._release()
        if isinstance(res, dict):
            self.pr_type = PrType(int(res["type"]))
            h = res.get("holder")
            self.holder = None if h is None else self.registrations[int(h)]
            if self.holder is None and not self.pr_type.all_registrants:
                raise ValueError("reservation without a holder")

    def _restore(self, store: PrStore) -> None:
        try:
            doc = store.load()
            if doc is not None and doc.get("aptpl"):
                self._apply(doc)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AssertionError) as exc:
            # Refuse to start rather than silently drop a cluster's reservations.
            raise ValueError(f"{store.path}: unreadable persistent reservations: {exc}") from exc
        if self.registrations:
            log.info("%s: restored %d registration(s)%s", store.path, len(self.registrations),
                     f", {self.pr_type.name} reservation" if self.pr_type else "")

    async def _persist(self, before: dict[str, object], was_aptpl: bool) -> None:
        """Write the state before the command completes when APTPL is (or was) in force; on
        failure put the old state back and fail the command."""
        if self.store is None or not (self.aptpl or was_aptpl):
            return
        doc = self.snapshot() if self.aptpl else None
        try:
            await asyncio.to_thread(self.store.save, doc)
        except OSError as exc:
            log.error("%s: cannot save persistent reservations: %s", self.store.path, exc)
            self._apply(before)
            raise InternalTargetFailure("cannot save persistent reservations") from exc

    # --- PERSISTENT RESERVE OUT (SPC-4 6.16, 5.9.6 - 5.9.11) ----------------------------

    async def prout(self, cmd: ScsiCommand) -> ScsiResult:
        cdb = C.parse_prout(cmd.cdb)
        data = bytes(cmd.data_out) if cmd.data_out is not None else b""
        params = C.parse_prout_params(cdb.action, cdb.param_len, data)
        async with self.lock:
            before, was_aptpl = self.snapshot(), self.aptpl
            try:
                aborted = self._prout(cmd.nexus, cdb, params)
            except _Conflict:
                self._apply(before)
                return _CONFLICT
            except SenseError:
                self._apply(before)
                raise
            await self._persist(before, was_aptpl)
        abort = self.lu.abort_nexus
        if aborted and abort is not None:
            for nx in aborted:
                abort(nx)
        return _GOOD

    def _prout(self, nexus: Nexus, cdb: C.ProutCdb, p: ProutParams | MoveParams) -> set[Nexus]:
        """Apply one service action; returns the I_T nexuses whose tasks are to be aborted."""
        a = cdb.action
        if isinstance(p, MoveParams):
            self._register_and_move(nexus, cdb, p)
        elif a in (ProutAction.REGISTER, ProutAction.REGISTER_AND_IGNORE):
            self._register(nexus, p, ignore=a == ProutAction.REGISTER_AND_IGNORE)
        elif a == ProutAction.RESERVE:
            self._reserve(nexus, cdb, p)
        elif a == ProutAction.RELEASE:
            self._release_sa(nexus, cdb, p)
        elif a == ProutAction.CLEAR:
            self._require(nexus, p.key)
            # SPC-4 5.9.11.6: everyone else registered learns their reservation is gone
            self._ua(UA_RESERVATIONS_PREEMPTED, self.registrations, nexus)
            self.registrations = []
            self._release()
            self._bump()
        else:
            return self._preempt(nexus, cdb, p, abort=a == ProutAction.PREEMPT_AND_ABORT)
        return set()

    def _register(self, nexus: Nexus, p: ProutParams, *, ignore: bool) -> None:
        """SPC-4 5.9.7, table 50 (REGISTER) and 51 (REGISTER AND IGNORE EXISTING KEY)."""
        reg = self.registration_for(nexus)
        if reg is None:
            if not ignore and p.key != 0:
                raise _Conflict
            if p.sa_key != 0:
                self._add(nexus, p)
        else:
            if not ignore and p.key != reg.key:
                raise _Conflict
            if p.spec_i_pt:
                raise InvalidFieldInParameterList(20, 3, "SPEC_I_PT from a registered nexus")
            if p.sa_key == 0:
                self._remove([reg], nexus)
            else:
                reg.key = p.sa_key
        self.aptpl = p.aptpl
        self._bump()

    def _add(self, nexus: Nexus, p: ProutParams) -> None:
        port = nexus.target_port
        me = _fold(nexus.initiator_name)
        new = [Registration(p.sa_key, me, nexus.isid, port, p.all_tg_pt, nexus.relative_port)]
        for i, tid in enumerate(p.transport_ids):
            name = _fold(tid.name)
            if name == me and tid.isid == nexus.isid:
                continue  # the sender names itself
            if any(r.same_port(name, tid.isid, port) for r in self.registrations + new):
                # SPC-4 6.16.3: a TransportID naming an I_T nexus already registered
                raise InvalidFieldInParameterList(28, None, f"TransportID {i} is registered")
            new.append(Registration(p.sa_key, name, tid.isid, port, p.all_tg_pt,
                                    nexus.relative_port))
        self.registrations.extend(new)

    def _reserve(self, nexus: Nexus, cdb: C.ProutCdb, p: ProutParams) -> None:
        """SPC-4 5.9.9."""
        reg = self._require(nexus, p.key)
        t = cdb.reservation_type()
        if self.pr_type is not None:
            if self.pr_type == t and (t.all_registrants or self.holder is reg):
                return  # the holder asking again for what it has
            raise _Conflict
        self.pr_type, self.holder = t, reg

    def _release_sa(self, nexus: Nexus, cdb: C.ProutCdb, p: ProutParams) -> None:
        """SPC-4 5.9.11.2."""
        reg = self._require(nexus, p.key)
        t = self.pr_type
        if t is None or not (t.all_registrants or self.holder is reg):
            return  # nothing to release, or not the holder: GOOD, nothing changes
        if cdb.scope != C.LU_SCOPE or cdb.type != t:
            raise InvalidReleaseOfPr("RELEASE names another scope or type")
        self._release()
        if t.registrants_only or t.all_registrants:
            self._ua(UA_RESERVATIONS_RELEASED, self.registrations, nexus)

    def _preempt(self, nexus: Nexus, cdb: C.ProutCdb, p: ProutParams,
                 *, abort: bool) -> set[Nexus]:
        """SPC-4 5.9.11.4 (PREEMPT) and 5.9.11.5 (PREEMPT AND ABORT)."""
        me = self._require(nexus, p.key)
        t = self.pr_type
        old_type = t
        if t is not None and t.all_registrants and p.sa_key == 0:
            # 5.9.11.4.4: take the all-registrants reservation, unregistering everyone else
            new_type = cdb.reservation_type()
            victims = [r for r in self.registrations if r is not me]
            self.pr_type, self.holder = new_type, me
        elif t is not None and not t.all_registrants and self.holder is not None \
                and self.holder.key == p.sa_key:
            # 5.9.11.4.3: preempt the holder; its key's registrations go, and we hold it
            new_type = cdb.reservation_type()
            victims = [r for r in self.registrations if r.key == p.sa_key and r is not me]
            self.pr_type, self.holder = new_type, me
        else:
            # 5.9.11.4.2 / .4: only registrations go; the reservation (if any) stays
            if p.sa_key == 0:
                raise InvalidFieldInParameterList(8, None, "SERVICE ACTION RESERVATION KEY 0")
            victims = [r for r in self.registrations if r.key == p.sa_key]
            if not victims:
                raise _Conflict
        hit = self._nexuses(victims, None)
        self._ua(UA_REGISTRATIONS_PREEMPTED, victims, nexus)
        self._remove(victims, nexus)
        if old_type is not None and self.pr_type is not None and self.pr_type != old_type:
            self._ua(UA_RESERVATIONS_RELEASED, self.registrations, nexus)
        self._bump()
        hit.discard(nexus)
        return hit if abort else set()

    def _register_and_move(self, nexus: Nexus, cdb: C.ProutCdb, p: MoveParams) -> None:
        """SPC-4 5.9.8."""
        me = self._require(nexus, p.key)
        t = self.pr_type
        if t is None or t.all_registrants or self.holder is not me:
            raise _Conflict
        if p.sa_key == 0:
            raise InvalidFieldInParameterList(8, None, "SERVICE ACTION RESERVATION KEY 0")
        tid = p.transport_id
        if tid.isid is None:
            raise InvalidFieldInParameterList(24, 7, "REGISTER AND MOVE needs an initiator port")
        name = _fold(tid.name)
        if name == _fold(nexus.initiator_name) and tid.isid == nexus.isid:
            raise InvalidFieldInParameterList(24, None, "moving to the sending I_T nexus")
        if p.relative_port != nexus.relative_port:
            raise InvalidFieldInParameterList(18, None, "no such relative target port")
        port = nexus.target_port
        dest = next((r for r in self.registrations
                     if r.initiator_name == name and r.isid == tid.isid
                     and (r.all_tg_pt or r.target_port == port)), None)
        if dest is None:
            dest = Registration(p.sa_key, name, tid.isid, port, False, p.relative_port)
            self.registrations.append(dest)
        self.holder = dest
        if p.unreg:
            self.registrations = [r for r in self.registrations if r is not me]
        self.aptpl = p.aptpl
        self._bump()

    # --- PERSISTENT RESERVE IN (SPC-4 6.15) ------------------------------------------------

    def prin_data(self, action: int) -> bytes:
        gen = self.generation
        if action == C.PrinAction.READ_KEYS:
            return C.read_keys_data(gen, (r.key for r in self.registrations))
        if action == C.PrinAction.READ_RESERVATION:
            t = self.pr_type
            if t is None:
                return C.read_reservation_data(gen, None)
            # SPC-4 6.15.3.2: an all-registrants reservation reports key 0
            key = 0 if t.all_registrants or self.holder is None else self.holder.key
            return C.read_reservation_data(gen, (key, t))
        if action == C.PrinAction.REPORT_CAPABILITIES:
            return C.report_capabilities_data(self.aptpl)
        t = self.pr_type
        entries = []
        for r in self.registrations:
            holder = t is not None and (t.all_registrants or r is self.holder)
            entries.append(C.FullStatus(r.key, r.all_tg_pt, holder, t, r.relative_port,
                                        C.TransportId(r.initiator_name, r.isid)))
        return C.read_full_status_data(gen, entries)


# --- handlers and registry rows --------------------------------------------------------------


async def reserve(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """RESERVE(6)/(10), SPC-2 7.21 without third-party or extents; lu.execute already turned
    away other nexuses while one holds it."""
    rs = lu.reservations
    if rs.registrations:
        # SPC-4 5.9.3 (CRH=1): with persistent registrations, only the PR holder succeeds
        return _GOOD if rs.is_holder(cmd.nexus) else _CONFLICT
    rs.scsi2 = cmd.nexus
    return _GOOD


async def release(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    """RELEASE(6)/(10): releases the sender's own reservation; a no-op for anyone else, and
    with persistent registrations (SPC-4 5.9.3)."""
    rs = lu.reservations
    if not rs.registrations and rs.scsi2 == cmd.nexus:
        rs.scsi2 = None
    return _GOOD


async def persistent_reserve_in(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    req = C.parse_prin(cmd.cdb)
    data = lu.reservations.prin_data(req.action)
    # SPC-4 4.2.5.6: truncated to ALLOCATION LENGTH; ADDITIONAL LENGTH still tells it all
    return ScsiResult(data=data[: req.alloc_len])


async def persistent_reserve_out(lu: LogicalUnit, cmd: ScsiCommand) -> ScsiResult:
    return await lu.reservations.prout(cmd)


CTRL = 0xC7
_W, _N = Direction.WRITE, Direction.NONE


def _reserve10_xfer(cdb: bytes, bs: int) -> tuple[Direction, int]:
    # PARAMETER LIST LENGTH only means something for third-party (LongID) reservations, which
    # we do not support; a nonzero value is accepted and the data ignored.
    n = struct.unpack_from(">H", cdb, 7)[0]
    return (_W, n) if n else (_N, 0)


register(OpInfo(0x16, "RESERVE(6)", 6, _N, reserve, fixed(_N, 0),
                bytes((0x16, 0, 0, 0, 0, CTRL))))
register(OpInfo(0x17, "RELEASE(6)", 6, _N, release, fixed(_N, 0),
                bytes((0x17, 0, 0, 0, 0, CTRL))))
# byte 1 (3RDPTY, LONGID) and byte 2 (third party device ID) stay reserved: no third party
register(OpInfo(0x56, "RESERVE(10)", 10, _N, reserve, _reserve10_xfer,
                bytes((0x56, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTRL))))
register(OpInfo(0x57, "RELEASE(10)", 10, _N, release, _reserve10_xfer,
                bytes((0x57, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTRL))))

for _in in C.PrinAction:
    register(OpInfo(0x5E, f"PERSISTENT RESERVE IN/{_in.name}", 10, Direction.READ,
                    persistent_reserve_in, alloc_len(7, 2),
                    bytes((0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTRL)),
                    service_action=_in))
for _out in ProutAction:
    register(OpInfo(0x5F, f"PERSISTENT RESERVE OUT/{_out.name}", 10, _W,
                    persistent_reserve_out, param_len(5, 4),
                    bytes((0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTRL)),
                    service_action=_out))
