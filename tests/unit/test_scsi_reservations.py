"""RESERVE/RELEASE and persistent reservations: every service action, the conflict table per
reservation type, unit attentions, the generation counter and APTPL on disk."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import registry
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.pr_codec import (
    MoveParams,
    ProutParams,
    PrType,
    TransportId,
    decode_transport_id,
    encode_move_params,
    encode_prout_params,
)
from pyscsit.scsi.registry import PrConflict
from pyscsit.scsi.sense import InvalidFieldInParameterList
from pyscsit.scsi.task import Nexus, ScsiCommand, ScsiResult, Status
from tests.support.scsi import sense_of

TGT = "iqn.2026-11.org.pyscsit:t"
A = Nexus("iqn.1991-05.com.microsoft:node-a", 0x400001370000, TGT)
A2 = Nexus("iqn.1991-05.com.microsoft:node-a", 0x400001370001, TGT)  # A's second port
B = Nexus("iqn.1991-05.com.microsoft:node-b", 0x400001370000, TGT)
C = Nexus("iqn.1991-05.com.microsoft:node-c", 0x400001370000, TGT)
OBS = Nexus("iqn.2026-11.org.example:observer", 7, TGT)  # never registered: never gets UAs
KA, KB, KC = 0xA1A1, 0xB2B2, 0xC3C3

REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, RAIEK, MOVE = range(8)
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS,
                                      PrType.WRITE_EXCLUSIVE_RO, PrType.EXCLUSIVE_ACCESS_RO,
                                      PrType.WRITE_EXCLUSIVE_AR, PrType.EXCLUSIVE_ACCESS_AR)

TUR = bytes(6)
INQUIRY = bytes((0x12, 0, 0, 0, 96, 0))
READ10 = struct.pack(">BBIBHB", 0x28, 0, 1, 0, 1, 0)
WRITE10 = struct.pack(">BBIBHB", 0x2A, 0, 1, 0, 1, 0)
RESERVE6 = bytes((0x16, 0, 0, 0, 0, 0))
RELEASE6 = bytes((0x17, 0, 0, 0, 0, 0))


def make_lu(tmp_path: Path | None = None) -> LogicalUnit:
    path = str(tmp_path / "pr.json") if tmp_path is not None else None
    return LogicalUnit(MemoryBackend(1 << 20), LuIdentity.random(), pr_state_path=path)


async def run(lu: LogicalUnit, cdb: bytes, nexus: Nexus, data: bytes = b"") -> ScsiResult:
    return await lu.execute(ScsiCommand(cdb, nexus, data_out=memoryview(data),
                                        expected_length=len(data)))


def prout_cdb(sa: int, pr_type: int = 0, length: int = 24, scope: int = 0) -> bytes:
    return struct.pack(">BBBHIB", 0x5F, sa, (scope << 4) | pr_type, 0, length, 0)


async def prout(lu: LogicalUnit, nexus: Nexus, sa: int, key: int = 0, sa_key: int = 0,
                pr_type: int = 0, *, aptpl: bool = False, all_tg_pt: bool = False,
                tids: tuple[TransportId, ...] = ()) -> ScsiResult:
    data = encode_prout_params(ProutParams(key, sa_key, bool(tids), all_tg_pt, aptpl, tids))
    return await run(lu, prout_cdb(sa, pr_type, len(data)), nexus, data)


async def prin(lu: LogicalUnit, nexus: Nexus, sa: int, alloc: int = 4096) -> bytes:
    r = await run(lu, struct.pack(">BB5xHB", 0x5E, sa, alloc, 0), nexus)
    assert r.status == Status.GOOD, r.sense.hex()
    return bytes(r.data)


async def keys(lu: LogicalUnit, nexus: Nexus = OBS) -> tuple[int, list[int]]:
    d = await prin(lu, nexus, 0)
    gen, n = struct.unpack_from(">II", d)
    return gen, [struct.unpack_from(">Q", d, 8 + 8 * i)[0] for i in range(n // 8)]


async def reservation(lu: LogicalUnit) -> tuple[int, int] | None:
    d = await prin(lu, OBS, 1)
    if struct.unpack_from(">I", d, 4)[0] == 0:
        return None
    return struct.unpack_from(">Q", d, 8)[0], d[21] & 0x0F


async def good(r: ScsiResult) -> None:
    assert r.status == Status.GOOD, (r.status, r.sense.hex())


async def clear_uas(lu: LogicalUnit, *nexuses: Nexus) -> None:
    for nx in nexuses:
        while (await run(lu, TUR, nx)).status == Status.CHECK_CONDITION:
            pass


async def registered(lu: LogicalUnit, *pairs: tuple[Nexus, int]) -> None:
    for nx, key in pairs:
        await run(lu, TUR, nx)  # the LU knows the nexus (unit attentions reach it)
        await good(await prout(lu, nx, RAIEK, sa_key=key))


# --- PERSISTENT RESERVE IN ------------------------------------------------------------------


async def test_read_keys_lists_every_registration_and_counts_generations() -> None:
    lu = make_lu()
    assert await keys(lu) == (0, [])
    await registered(lu, (A, KA), (B, KB))
    assert await keys(lu) == (2, [KA, KB])


async def test_read_keys_truncates_to_allocation_length_but_reports_full_length() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    d = await prin(lu, A, 0, alloc=8)
    assert len(d) == 8 and struct.unpack_from(">I", d, 4)[0] == 16
    assert len(await prin(lu, A, 0, alloc=12)) == 12


@pytest.mark.parametrize("sa", [4, 5, 0x10, 0x1F])
async def test_prin_unknown_service_action_is_invalid_field_in_cdb(sa: int) -> None:
    r = await run(make_lu(), struct.pack(">BB5xHB", 0x5E, sa, 100, 0), A)
    assert sense_of(r) == (5, 0x24, 0)


async def test_report_capabilities_advertises_what_is_implemented() -> None:
    lu = make_lu()
    d = await prin(lu, A, 2)
    length, b2, b3, mask = struct.unpack_from(">HBBH", d)
    assert length == 8 and len(d) == 8
    assert b2 & 0x10 and b2 & 0x08 and b2 & 0x04 and b2 & 0x01  # CRH SIP_C ATP_C PTPL_C
    assert b3 & 0x80 and not b3 & 0x01  # TMV; APTPL not active
    assert (b3 >> 4) & 7 <= 5
    assert mask == 0x8000 | 0x4000 | 0x2000 | 0x0800 | 0x0200 | 0x0001
    await good(await prout(lu, A, REGISTER, sa_key=KA, aptpl=True))
    assert (await prin(lu, A, 2))[3] & 0x01  # PTPL_A now


async def test_read_reservation_shows_holder_key_or_zero_for_all_registrants() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    assert await reservation(lu) is None
    await good(await prout(lu, A, RESERVE, KA, pr_type=EA_RO))
    assert await reservation(lu) == (KA, EA_RO)
    await good(await prout(lu, A, RELEASE, KA, pr_type=EA_RO))
    await clear_uas(lu, B)  # 2A/04: the registrants-only reservation went away
    await good(await prout(lu, B, RESERVE, KB, pr_type=WE_AR))
    assert await reservation(lu) == (0, WE_AR)


async def test_read_full_status_names_each_port_with_a_transport_id() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    d = await prin(lu, A, 3)
    gen, length = struct.unpack_from(">II", d)
    assert gen == 2 and length == len(d) - 8
    off, seen = 8, {}
    while off < len(d):
        key, _, flags, scope_type, _, rel, tid_len = struct.unpack_from(">QIBBIHI", d, off)
        tid, n = decode_transport_id(d, off + 24)
        assert n == tid_len and d[off + 24] == 0x45  # format 01b, iSCSI
        seen[tid] = (key, flags & 1, scope_type, rel)
        off += 24 + tid_len
    assert seen == {TransportId(A.initiator_name, A.isid): (KA, 1, WE, 1),
                    TransportId(B.initiator_name, B.isid): (KB, 0, 0, 1)}


# --- REGISTER / REGISTER AND IGNORE EXISTING KEY --------------------------------------------


async def test_register_key_rules() -> None:
    lu = make_lu()
    # unregistered: a nonzero RESERVATION KEY conflicts (SPC-4 5.9.7)
    assert (await prout(lu, A, REGISTER, key=1, sa_key=KA)).status == Status.RESERVATION_CONFLICT
    await good(await prout(lu, A, REGISTER, key=0, sa_key=KA))
    # registered: the old key must be presented to change it
    assert (await prout(lu, A, REGISTER, key=9, sa_key=5)).status == Status.RESERVATION_CONFLICT
    await good(await prout(lu, A, REGISTER, key=KA, sa_key=KB))
    assert (await keys(lu))[1] == [KB]
    # REGISTER AND IGNORE EXISTING KEY does not look at it
    await good(await prout(lu, A, RAIEK, key=12345, sa_key=KC))
    assert (await keys(lu))[1] == [KC]
    # SARK 0 unregisters
    await good(await prout(lu, A, REGISTER, key=KC, sa_key=0))
    assert (await keys(lu))[1] == []


async def test_unregistered_zero_key_register_is_a_noop() -> None:
    lu = make_lu()
    await good(await prout(lu, A, REGISTER, key=0, sa_key=0))
    assert (await keys(lu))[1] == []


async def test_failed_prout_leaves_generation_alone() -> None:
    lu = make_lu()
    await registered(lu, (A, KA))
    gen = (await keys(lu))[0]
    await prout(lu, B, REGISTER, key=7, sa_key=KB)  # conflict
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))  # RESERVE does not count
    assert (await keys(lu))[0] == gen


async def test_registrations_are_per_initiator_port() -> None:
    lu = make_lu()
    await registered(lu, (A, KA))
    # the same initiator name with another ISID is another I_T nexus: not registered
    r = await prout(lu, A2, RESERVE, KA, pr_type=WE)
    assert r.status == Status.RESERVATION_CONFLICT


async def test_all_tg_pt_registers_through_every_target_port() -> None:
    lu = make_lu()
    other_port = Nexus(A.initiator_name, A.isid, TGT, tpgt=2, relative_port=2)
    await good(await prout(lu, A, REGISTER, sa_key=KA, all_tg_pt=True))
    await good(await prout(lu, other_port, RESERVE, KA, pr_type=WE))
    d = await prin(lu, A, 3)
    assert d[8 + 12] & 0x02  # ALL_TG_PT in the full status


async def test_spec_i_pt_registers_the_named_initiators_too() -> None:
    lu = make_lu()
    tids = (TransportId(B.initiator_name, B.isid), TransportId(C.initiator_name))
    await good(await prout(lu, A, REGISTER, sa_key=KA, tids=tids))
    assert (await keys(lu))[1] == [KA, KA, KA]
    # B's port and every port of C (format 00b) can now act with the key
    await good(await prout(lu, B, RESERVE, KA, pr_type=WE))
    c2 = Nexus(C.initiator_name, 0x999, TGT)
    await good(await prout(lu, c2, REGISTER, key=KA, sa_key=KC))
    assert (await keys(lu))[1] == [KA, KA, KC]


async def test_spec_i_pt_rejects_an_already_registered_port() -> None:
    lu = make_lu()
    await registered(lu, (B, KB))
    r = await prout(lu, A, REGISTER, sa_key=KA, tids=(TransportId(B.initiator_name, B.isid),))
    assert sense_of(r) == (5, 0x26, 0)
    assert (await keys(lu))[1] == [KB]


# --- parameter list rules -------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 8, 23, 25, 32])
async def test_parameter_list_length_must_be_24(length: int) -> None:
    lu = make_lu()
    data = encode_prout_params(ProutParams(0, KA)).ljust(length, b"\0")[:length]
    r = await run(lu, prout_cdb(REGISTER, 0, length), A, data)
    assert sense_of(r) == (5, 0x1A, 0)


async def test_spec_i_pt_with_reserve_is_invalid_field_in_parameter_list() -> None:
    lu = make_lu()
    await registered(lu, (A, KA))
    data = encode_prout_params(ProutParams(KA, 0, True, False, False,
                                           (TransportId(B.initiator_name),)))
    r = await run(lu, prout_cdb(RESERVE, WE, len(data)), A, data)
    assert sense_of(r) == (5, 0x26, 0)


async def test_spec_i_pt_transport_ids_must_fit_the_list() -> None:
    lu = make_lu()
    data = encode_prout_params(ProutParams(0, KA, True, False, False,
                                           (TransportId(B.initiator_name),)))
    short = data[:-4]
    r = await run(lu, prout_cdb(REGISTER, 0, len(short)), A, short)
    assert sense_of(r) == (5, 0x1A, 0)


def test_transport_id_round_trip_and_rejects() -> None:
    for tid in (TransportId("iqn.x:a"), TransportId("iqn.x:a", 0x23D000000001),
                TransportId("iqn.2026-11.org.example:" + "n" * 200, 1)):
        raw = tid.encode()
        assert len(raw) % 4 == 0 and len(raw) >= 24
        assert decode_transport_id(raw, 0) == (tid, len(raw))
    fc = bytes((0x06, 0)) + struct.pack(">H", 20) + bytes(20)  # protocol 6: SAS
    with pytest.raises(InvalidFieldInParameterList):
        decode_transport_id(fc, 0)
    bad_isid = bytes((0x45, 0)) + struct.pack(">H", 20) + b"iqn.x:a,i,0xZZ".ljust(20, b"\0")
    with pytest.raises(InvalidFieldInParameterList):
        decode_transport_id(bad_isid, 0)


# --- RESERVE / RELEASE and the conflict table -----------------------------------------------

# (type, registered non-holder read, write, unregistered read, write): SPC-4 5.9.1, SBC-3 4.17
ACCESS = [
    (WE, True, False, True, False),
    (EA, False, False, False, False),
    (WE_RO, True, True, True, False),
    (EA_RO, True, True, False, False),
    (WE_AR, True, True, True, False),
    (EA_AR, True, True, False, False),
]


@pytest.mark.parametrize(("pr_type", "reg_read", "reg_write", "unreg_read", "unreg_write"),
                         ACCESS, ids=[t.name for t, *_ in ACCESS])
async def test_access_per_reservation_type(pr_type: PrType, reg_read: bool, reg_write: bool,
                                           unreg_read: bool, unreg_write: bool) -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=pr_type))

    async def ok(cdb: bytes, nx: Nexus) -> bool:
        data = bytes(512) if cdb[0] == 0x2A else b""
        r = await run(lu, cdb, nx, data)
        assert r.status in (Status.GOOD, Status.RESERVATION_CONFLICT)
        return r.status == Status.GOOD

    assert await ok(READ10, A) and await ok(WRITE10, A)  # the holder
    assert (await ok(READ10, B), await ok(WRITE10, B)) == (reg_read, reg_write)
    assert (await ok(READ10, C), await ok(WRITE10, C)) == (unreg_read, unreg_write)
    # always allowed: INQUIRY, TEST UNIT READY, PERSISTENT RESERVE IN
    for nx in (B, C):
        assert await ok(INQUIRY, nx) and await ok(TUR, nx)
        await prin(lu, nx, 1)


async def test_reserve_conflicts_for_another_holder_and_type() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))  # again: same holder, same type
    assert (await prout(lu, A, RESERVE, KA, pr_type=EA)).status == Status.RESERVATION_CONFLICT
    assert (await prout(lu, B, RESERVE, KB, pr_type=WE)).status == Status.RESERVATION_CONFLICT
    # the wrong key conflicts even for the holder
    assert (await prout(lu, A, RESERVE, KB, pr_type=WE)).status == Status.RESERVATION_CONFLICT


@pytest.mark.parametrize(("scope", "pr_type"), [(1, WE), (0, 0), (0, 2), (0, 9)])
async def test_reserve_rejects_bad_scope_or_type(scope: int, pr_type: int) -> None:
    lu = make_lu()
    await registered(lu, (A, KA))
    data = encode_prout_params(ProutParams(KA, 0))
    r = await run(lu, prout_cdb(RESERVE, pr_type, 24, scope), A, data)
    assert sense_of(r) == (5, 0x24, 0)


async def test_release_rules_and_reservations_released_ua() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE_RO))
    # a registered non-holder's RELEASE does nothing
    await good(await prout(lu, B, RELEASE, KB, pr_type=WE_RO))
    assert await reservation(lu) == (KA, WE_RO)
    # the holder naming another type: INVALID RELEASE OF PERSISTENT RESERVATION
    assert sense_of(await prout(lu, A, RELEASE, KA, pr_type=WE)) == (5, 0x26, 0x04)
    await good(await prout(lu, A, RELEASE, KA, pr_type=WE_RO))
    assert await reservation(lu) is None
    assert sense_of(await run(lu, TUR, B)) == (6, 0x2A, 0x04)  # RESERVATIONS RELEASED
    await good(await run(lu, TUR, A))  # not the nexus that released it


async def test_release_of_write_exclusive_sends_no_unit_attention() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    await good(await prout(lu, A, RELEASE, KA, pr_type=WE))
    await good(await run(lu, TUR, B))


async def test_holder_unregistering_releases_non_all_registrants_reservation() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=EA_RO))
    await good(await prout(lu, A, REGISTER, KA, 0))
    assert await reservation(lu) is None
    assert sense_of(await run(lu, TUR, B)) == (6, 0x2A, 0x04)


async def test_all_registrants_reservation_outlives_its_creator() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=EA_AR))
    await good(await prout(lu, A, REGISTER, KA, 0))
    assert await reservation(lu) == (0, EA_AR)
    assert (await run(lu, READ10, A)).status == Status.RESERVATION_CONFLICT  # A left
    await good(await run(lu, READ10, B))
    await good(await prout(lu, B, REGISTER, KB, 0))  # the last registrant leaves
    assert await reservation(lu) is None


# --- CLEAR, PREEMPT, PREEMPT AND ABORT ------------------------------------------------------


async def test_clear_drops_everything_and_tells_the_others() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    gen = (await keys(lu))[0]
    assert (await prout(lu, C, CLEAR, KC)).status == Status.RESERVATION_CONFLICT
    await good(await prout(lu, B, CLEAR, KB))
    assert await keys(lu) == (gen + 1, [])
    assert await reservation(lu) is None
    assert sense_of(await run(lu, TUR, A)) == (6, 0x2A, 0x03)  # RESERVATIONS PREEMPTED
    await good(await run(lu, TUR, B))


async def test_preempt_removes_registrations_without_a_reservation() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    gen = (await keys(lu))[0]
    await good(await prout(lu, B, PREEMPT, KB, KA, pr_type=EA))
    assert await keys(lu) == (gen + 1, [KB])
    assert sense_of(await run(lu, TUR, A)) == (6, 0x2A, 0x05)  # REGISTRATIONS PREEMPTED
    # nothing left with that key: RESERVATION CONFLICT; SARK 0: invalid field
    assert (await prout(lu, B, PREEMPT, KB, KA, pr_type=EA)).status == \
        Status.RESERVATION_CONFLICT
    assert sense_of(await prout(lu, B, PREEMPT, KB, 0, pr_type=EA)) == (5, 0x26, 0)


async def test_preempt_takes_over_the_holders_reservation() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB), (C, KC))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    await good(await prout(lu, B, PREEMPT, KB, KA, pr_type=EA_RO))
    assert await reservation(lu) == (KB, EA_RO)
    assert (await keys(lu))[1] == [KB, KC]
    assert sense_of(await run(lu, TUR, A)) == (6, 0x2A, 0x05)
    assert sense_of(await run(lu, TUR, C)) == (6, 0x2A, 0x04)  # the type changed under C
    assert (await run(lu, READ10, A)).status == Status.RESERVATION_CONFLICT


async def test_preempt_all_registrants_with_zero_key() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB), (C, KC))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE_AR))
    await good(await prout(lu, B, PREEMPT, KB, 0, pr_type=WE))
    assert await reservation(lu) == (KB, WE)
    assert (await keys(lu))[1] == [KB]


async def test_preempt_and_abort_aborts_the_preempted_nexus_tasks() -> None:
    lu = make_lu()
    aborted: list[Nexus] = []
    lu.abort_nexus = aborted.append
    await registered(lu, (A, KA), (B, KB))
    await good(await prout(lu, A, RESERVE, KA, pr_type=EA))
    await good(await prout(lu, B, PREEMPT_ABORT, KB, KA, pr_type=EA))
    assert aborted == [A]
    await good(await prout(lu, B, PREEMPT, KB, KB, pr_type=EA))  # plain PREEMPT: no abort
    assert aborted == [A]


# --- REGISTER AND MOVE ----------------------------------------------------------------------


async def move(lu: LogicalUnit, nx: Nexus, key: int, sa_key: int, dest: TransportId,
               pr_type: int = WE, *, unreg: bool = False, rel: int = 1) -> ScsiResult:
    data = encode_move_params(MoveParams(key, sa_key, unreg, False, rel, dest))
    return await run(lu, prout_cdb(MOVE, pr_type, len(data)), nx, data)


async def test_register_and_move_hands_the_reservation_over() -> None:
    lu = make_lu()
    await registered(lu, (A, KA))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    await good(await move(lu, A, KA, KB, TransportId(B.initiator_name, B.isid), unreg=True))
    assert await reservation(lu) == (KB, WE)
    assert (await keys(lu))[1] == [KB]
    await good(await run(lu, WRITE10, B, bytes(512)))
    assert (await run(lu, WRITE10, A, bytes(512))).status == Status.RESERVATION_CONFLICT


async def test_register_and_move_rules() -> None:
    lu = make_lu()
    await registered(lu, (A, KA), (B, KB))
    dest = TransportId(C.initiator_name, C.isid)
    # no reservation, or not the holder: conflict
    assert (await move(lu, A, KA, KC, dest)).status == Status.RESERVATION_CONFLICT
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    assert (await move(lu, B, KB, KC, dest)).status == Status.RESERVATION_CONFLICT
    assert sense_of(await move(lu, A, KA, 0, dest)) == (5, 0x26, 0)  # SARK 0
    assert sense_of(await move(lu, A, KA, KC, TransportId(A.initiator_name, A.isid))) == \
        (5, 0x26, 0)  # to itself
    assert sense_of(await move(lu, A, KA, KC, dest, rel=7)) == (5, 0x26, 0)  # no such port
    short = encode_move_params(MoveParams(KA, KC, False, False, 1, dest))[:-4]
    assert sense_of(await run(lu, prout_cdb(MOVE, WE, len(short)), A, short)) == (5, 0x1A, 0)
    assert await reservation(lu) == (KA, WE)


# --- SCSI-2 RESERVE / RELEASE ---------------------------------------------------------------


async def test_reserve6_blocks_other_nexuses_until_released() -> None:
    lu = make_lu()
    await good(await run(lu, RESERVE6, A))
    await good(await run(lu, RESERVE6, A))  # again, same nexus
    assert (await run(lu, RESERVE6, B)).status == Status.RESERVATION_CONFLICT
    assert (await run(lu, READ10, B)).status == Status.RESERVATION_CONFLICT
    assert (await run(lu, TUR, B)).status == Status.RESERVATION_CONFLICT
    mode_sense = bytes((0x1A, 0, 0x3F, 0, 255, 0))
    assert (await run(lu, mode_sense, B)).status == Status.RESERVATION_CONFLICT
    await good(await run(lu, INQUIRY, B))
    await good(await run(lu, RELEASE6, B))  # someone else's RELEASE: no effect
    assert (await run(lu, READ10, B)).status == Status.RESERVATION_CONFLICT
    assert (await prout(lu, B, REGISTER, sa_key=KB)).status == Status.RESERVATION_CONFLICT
    await good(await run(lu, RELEASE6, A))
    await good(await run(lu, RESERVE6, B))


@pytest.mark.parametrize("event", ["lun", "warm", "cold", "nexus_lost"])
async def test_reserve6_goes_with_resets_and_nexus_loss(event: str) -> None:
    lu = make_lu()
    await good(await run(lu, RESERVE6, A))
    if event == "nexus_lost":
        lu.nexus_lost(A)
    else:
        lu.reset(event)
    await clear_uas(lu, B)
    await good(await run(lu, RESERVE6, B))


async def test_persistent_registrations_survive_resets_and_nexus_loss() -> None:
    lu = make_lu()
    await registered(lu, (A, KA))
    await good(await prout(lu, A, RESERVE, KA, pr_type=EA))
    lu.reset("lun")
    lu.nexus_lost(A)
    assert await reservation(lu) == (KA, EA)
    await clear_uas(lu, B)
    assert (await run(lu, READ10, B)).status == Status.RESERVATION_CONFLICT


async def test_reserve6_with_persistent_registrations() -> None:
    lu = make_lu()
    await registered(lu, (A, KA))
    # SPC-4 5.9.3 (CRH=1): RESERVE conflicts unless the sender holds the persistent one
    assert (await run(lu, RESERVE6, A)).status == Status.RESERVATION_CONFLICT
    assert (await run(lu, RESERVE6, B)).status == Status.RESERVATION_CONFLICT
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE))
    await good(await run(lu, RESERVE6, A))
    await good(await run(lu, RELEASE6, A))  # GOOD, and the persistent reservation stays
    assert await reservation(lu) == (KA, WE)


async def test_reserve10_third_party_is_not_supported() -> None:
    lu = make_lu()
    r = await run(lu, bytes((0x56, 0x10, 5, 0, 0, 0, 0, 0, 0, 0)), A)
    assert sense_of(r) == (5, 0x24, 0)
    await good(await run(lu, bytes((0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0)), A))
    assert (await run(lu, READ10, B)).status == Status.RESERVATION_CONFLICT


# --- APTPL ----------------------------------------------------------------------------------


async def test_aptpl_state_is_on_disk_when_the_command_completes(tmp_path: Path) -> None:
    lu = make_lu(tmp_path)
    await registered(lu, (B, KB))
    assert not (tmp_path / "pr.json").exists()  # APTPL=0: nothing kept
    await good(await prout(lu, A, REGISTER, sa_key=KA, aptpl=True))
    await good(await prout(lu, A, RESERVE, KA, pr_type=WE_RO))
    doc = json.loads((tmp_path / "pr.json").read_text())
    assert doc["aptpl"] and doc["reservation"]["type"] == WE_RO
    assert oct((tmp_path / "pr.json").stat().st_mode & 0o777) == "0o600"
    # "restart": a new LU on the same state file
    again = LogicalUnit(MemoryBackend(1 << 20), lu.identity,
                        pr_state_path=str(tmp_path / "pr.json"))
    assert await reservation(again) == (KA, WE_RO)
    assert (await keys(again)) == await keys(lu)
    assert (await run(again, WRITE10, C, bytes(512))).status == Status.RESERVATION_CONFLICT
    await good(await run(again, WRITE10, A, bytes(512)))
    # APTPL=0 in a later REGISTER: the state is no longer kept
    await good(await prout(again, A, REGISTER, KA, KA, aptpl=False))
    assert not (tmp_path / "pr.json").exists()


async def test_unreadable_pr_state_refuses_to_load(tmp_path: Path) -> None:
    (tmp_path / "pr.json").write_text("{not json")
    with pytest.raises(ValueError, match="persistent reservations"):
        make_lu(tmp_path)


async def test_failed_save_fails_the_command_and_keeps_the_old_state(tmp_path: Path) -> None:
    lu = make_lu(tmp_path / "state")
    await good(await prout(lu, A, REGISTER, sa_key=KA, aptpl=True))
    (tmp_path / "state" / "pr.json").unlink()
    (tmp_path / "state").rmdir()
    (tmp_path / "state").write_text("a file where the state directory was")
    r = await prout(lu, A, RESERVE, KA, pr_type=WE)
    assert sense_of(r) == (4, 0x44, 0)
    assert await reservation(lu) is None  # not reserved in memory either


# --- the registry column --------------------------------------------------------------------


def test_every_opcode_has_a_conflict_rule() -> None:
    by_name = {op.name: op.conflict for op in registry.all_ops()}
    assert by_name["INQUIRY"] == PrConflict.ALLOWED
    assert by_name["TEST UNIT READY"] == PrConflict.PR_ALLOWED
    assert by_name["READ(10)"] == PrConflict.READ
    assert by_name["WRITE(10)"] == PrConflict.WRITE
    assert by_name["RESERVE(6)"] == PrConflict.WRITE
    assert by_name["RELEASE(6)"] == PrConflict.ALLOWED
    assert all(isinstance(r, PrConflict) for r in by_name.values())
