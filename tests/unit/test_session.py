"""session.Connection, sans-IO: PDUs in through ``receive_data``, PDUs out through
``take_output`` framed back by a PduReader, SCSI tasks run here with dispatch.execute."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyscsit import pdu as P
from pyscsit.backends.memory import MemoryBackend
from pyscsit.keys import encode_text, parse_text
from pyscsit.login import send_targets
from pyscsit.scsi import dispatch
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.session import (
    CMD_WINDOW,
    MAX_DATA_OUT,
    Close,
    Connection,
    ExecuteTask,
    SessionRegistry,
    SessionUp,
)
from pyscsit.target import Auth, Model, Portal, Target
from tests.support.rigs import take_pdus
from tests.support.scsi import read16, write16

IQN = "iqn.2026-11.org.pyscsit.test:disk0"
INITIATOR = "iqn.2026-11.org.pyscsit.test:host"
LOCAL = ("127.0.0.1", 3260)
CMD0 = 0x10  # the CmdSN of the login, hence of the first command
BLOCK = 512


TUR = bytes(16)


class Rig:
    """One target connection and the initiator's view of it."""

    def __init__(self, *, lun_size: int = 4 << 20, extra_targets: int = 0) -> None:
        self.backend = MemoryBackend(lun_size)
        self.lu = LogicalUnit(self.backend, LuIdentity.random())
        targets = {IQN: Target(IQN, Auth(), luns={0: self.lu})}
        for i in range(extra_targets):
            name = f"iqn.2026-11.org.pyscsit.test:extra-target-number-{i:03d}"
            targets[name] = Target(name, Auth())
        self.model = Model(portals=[Portal("127.0.0.1", 3260), Portal("192.0.2.1", 3260)],
                           targets=targets, state_dir="/nonexistent")
        self.registry = SessionRegistry()
        self.conn = Connection(self.model, self.registry, local_addr=LOCAL,
                               peer_addr=("127.0.0.1", 40000))
        self.reader = P.PduReader(max_data=1 << 24)
        self.itts = itertools.count(1)
        self.cmd_sn = CMD0
        self.digests = (False, False)
        self.pending_events: list[Any] = []

    # -- plumbing --------------------------------------------------------------------------
    def login(self, *, session_type: str = "Normal", mrdsl: int = 262144,
              header_digest: bool = False, data_digest: bool = False, **ops: str) -> None:
        keys = {"InitiatorName": INITIATOR, "SessionType": session_type,
                "HeaderDigest": "CRC32C" if header_digest else "None",
                "DataDigest": "CRC32C" if data_digest else "None",
                "MaxRecvDataSegmentLength": str(mrdsl), "ErrorRecoveryLevel": "0"}
        if session_type == "Normal":
            keys["TargetName"] = IQN
        keys.update(ops)
        self.conn.receive_data(P.encode_bytes(P.LoginRequest(
            final=True, csg=1, nsg=3, isid=0x800000000001, itt=0xEE, cmd_sn=CMD0,
            data=encode_text(keys.items()))))
        (resp,) = self.out()
        assert isinstance(resp, P.LoginResponse) and resp.status_class == 0 and resp.final
        self.answers = dict(parse_text(bytes(resp.data)))
        for ev in self.conn.take_events():
            assert isinstance(ev, SessionUp)
            self.registry.add(ev.session)
        self.digests = (header_digest, data_digest)
        self.reader.header_digest, self.reader.data_digest = self.digests

    def send(self, *pdus: P.Pdu) -> None:
        for pdu in pdus:
            self.conn.receive_data(P.encode_bytes(pdu, *self.digests))

    def out(self) -> list[P.Pdu]:
        return take_pdus(self.conn, self.reader)

    def executions(self) -> list[ExecuteTask]:
        evs = self.pending_events + self.conn.take_events()
        self.pending_events = [e for e in evs if not isinstance(e, ExecuteTask)]
        return [e for e in evs if isinstance(e, ExecuteTask)]

    async def run(self) -> list[P.Pdu]:
        """Execute every task the connection asked for (in order) and return its output."""
        out: list[P.Pdu] = []
        while True:
            out += self.out()
            todo = self.executions()
            if not todo:
                return out
            for ev in todo:
                assert ev.task.command is not None and self.conn.session is not None
                result = await dispatch.execute({0: self.lu}, ev.task.command)
                self.conn.task_done(ev.task, result)

    def command(self, cdb: bytes, *, edtl: int = 0, read: bool = False, write: bool = False,
                data: bytes = b"", cmd_sn: int | None = None, immediate: bool = False,
                final: bool = True) -> int:
        itt = next(self.itts)
        if cmd_sn is None:
            cmd_sn = self.cmd_sn
            if not immediate:
                self.cmd_sn += 1
        self.send(P.ScsiCommandPdu(itt=itt, immediate=immediate, read=read, write=write,
                                   expected_length=edtl, cmd_sn=cmd_sn, cdb=cdb, data=data,
                                   final=final))
        return itt

    def nop(self) -> P.NopIn:
        itt = next(self.itts)
        self.send(P.NopOut(immediate=True, itt=itt, cmd_sn=self.cmd_sn))
        (resp,) = [p for p in self.out() if isinstance(p, P.NopIn)]
        assert resp.itt == itt
        return resp


def data_outs(itt: int, ttt: int, data: bytes, offset: int, length: int,
              seg: int) -> list[P.DataOut]:
    pdus = []
    for sn, off in enumerate(range(offset, offset + length, seg)):
        chunk = data[off: min(off + seg, offset + length)]
        pdus.append(P.DataOut(itt=itt, ttt=ttt, data_sn=sn, buffer_offset=off,
                              final=off + len(chunk) == offset + length, data=chunk))
    return pdus


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    r.login()
    return r


# -- the CmdSN window (RFC 7143 §4.2.2.1) ------------------------------------------------------

async def test_commands_in_order_run_in_order(rig: Rig) -> None:
    itts = [rig.command(TUR) for _ in range(3)]
    assert [e.task.itt for e in rig.executions()] == itts
    assert rig.conn.session is not None and rig.conn.session.exp_cmd_sn == CMD0 + 3


async def test_out_of_order_commands_are_held_then_delivered_in_cmd_sn_order(rig: Rig) -> None:
    third = rig.command(TUR, cmd_sn=CMD0 + 2)
    second = rig.command(TUR, cmd_sn=CMD0 + 1)
    assert rig.executions() == [] and rig.out() == []
    first = rig.command(TUR, cmd_sn=CMD0)
    assert [e.task.itt for e in rig.executions()] == [first, second, third]


async def test_cmd_sn_outside_the_window_is_ignored(rig: Rig) -> None:
    s = rig.conn.session
    assert s is not None
    top = s.max_cmd_sn
    assert top == CMD0 + CMD_WINDOW - 1
    rig.command(TUR, cmd_sn=top + 1)  # above MaxCmdSN
    rig.command(TUR, cmd_sn=CMD0 - 1)  # already used
    rig.command(TUR, cmd_sn=(CMD0 + 0x8000_0000) & 0xFFFFFFFF)  # half the space away
    assert rig.executions() == [] and rig.out() == []
    assert s.exp_cmd_sn == CMD0
    itt = rig.command(TUR, cmd_sn=CMD0)
    (resp,) = [p for p in await rig.run() if isinstance(p, P.ScsiResponse)]
    assert resp.itt == itt and resp.exp_cmd_sn == CMD0 + 1


async def test_immediate_commands_run_at_once_and_do_not_advance_exp_cmd_sn(rig: Rig) -> None:
    itt = rig.command(TUR, cmd_sn=CMD0, immediate=True)
    (resp,) = await rig.run()
    assert isinstance(resp, P.ScsiResponse) and resp.itt == itt
    assert resp.exp_cmd_sn == CMD0  # an immediate command takes no CmdSN
    # the same CmdSN is still free for the next numbered command
    nxt = rig.command(TUR, cmd_sn=CMD0)
    (resp,) = await rig.run()
    assert resp.itt == nxt and resp.exp_cmd_sn == CMD0 + 1


async def test_max_cmd_sn_closes_with_commands_in_flight_and_opens_as_they_finish(
        rig: Rig) -> None:
    n = 5
    for _ in range(n):
        rig.command(TUR)
    tasks = rig.executions()
    assert rig.nop().max_cmd_sn == CMD0 + n + CMD_WINDOW - n - 1
    opened = []
    for ev in tasks:
        assert ev.task.command is not None
        rig.conn.task_done(ev.task, await dispatch.execute({0: rig.lu}, ev.task.command))
        (resp,) = rig.out()
        opened.append(resp.max_cmd_sn)
    assert opened == [CMD0 + n + CMD_WINDOW - k - 1 for k in range(n - 1, -1, -1)]


async def test_a_full_window_ignores_the_next_command_until_one_finishes(rig: Rig) -> None:
    for _ in range(CMD_WINDOW):
        rig.command(TUR)
    tasks = rig.executions()
    assert len(tasks) == CMD_WINDOW
    late = rig.command(TUR, cmd_sn=CMD0 + CMD_WINDOW)  # beyond MaxCmdSN now
    assert rig.executions() == []
    assert tasks[0].task.command is not None
    rig.conn.task_done(tasks[0].task, await dispatch.execute({0: rig.lu}, tasks[0].task.command))
    (resp,) = rig.out()
    assert resp.max_cmd_sn == CMD0 + CMD_WINDOW  # the window opened by one
    assert late not in [e.task.itt for e in rig.executions()]  # it was dropped, not queued
    again = rig.command(TUR, cmd_sn=CMD0 + CMD_WINDOW)
    assert [e.task.itt for e in rig.executions()] == [again]


# -- Data-Out: R2T, immediate and unsolicited data (§3.2.4, §11.8) -----------------------------

async def test_r2ts_follow_max_burst_length_and_max_outstanding_r2t() -> None:
    rig = Rig()
    rig.login(InitialR2T="Yes", ImmediateData="No", MaxBurstLength="65536",
              MaxOutstandingR2T="2", mrdsl=8192)
    data = os.urandom(5 * 65536 + 4096)
    itt = rig.command(write16(8, len(data) // BLOCK), edtl=len(data), write=True)
    r2ts = rig.out()
    assert [(r.r2t_sn, r.buffer_offset, r.desired_length) for r in r2ts] == \
        [(0, 0, 65536), (1, 65536, 65536)]
    assert all(isinstance(r, P.R2T) and r.itt == itt for r in r2ts)
    assert len({r.ttt for r in r2ts}) == 2  # each R2T its own transfer tag
    seen = list(r2ts)
    while seen:
        r = seen.pop(0)
        rig.send(*data_outs(itt, r.ttt, data, r.buffer_offset, r.desired_length, 8192))
        new = [p for p in rig.out() if isinstance(p, P.R2T)]
        seen += new
        r2ts += new
        assert len(seen) <= 2  # never more than MaxOutstandingR2T outstanding
    assert [r.r2t_sn for r in r2ts] == list(range(6))
    assert r2ts[-1].buffer_offset == 5 * 65536 and r2ts[-1].desired_length == 4096
    (resp,) = await rig.run()
    assert isinstance(resp, P.ScsiResponse) and resp.status == 0 and resp.itt == itt
    assert await rig.backend.read(8 * BLOCK, len(data)) == data


async def test_immediate_and_unsolicited_data_fill_the_first_burst() -> None:
    rig = Rig()
    rig.login(InitialR2T="No", ImmediateData="Yes", FirstBurstLength="65536",
              MaxBurstLength="262144", mrdsl=16384)
    data = os.urandom(200 * 1024)
    imm = data[:16384]
    itt = rig.command(write16(0, len(data) // BLOCK), edtl=len(data), write=True, data=imm,
                      final=False)
    (r2t,) = rig.out()
    # §3.2.4.2: the first FirstBurstLength bytes come unsolicited; R2T asks for the rest
    assert isinstance(r2t, P.R2T)
    assert (r2t.buffer_offset, r2t.desired_length) == (65536, len(data) - 65536)
    rig.send(*data_outs(itt, P.RESERVED_TAG, data, 16384, 65536 - 16384, 16384))
    assert rig.executions() == []
    rig.send(*data_outs(itt, r2t.ttt, data, r2t.buffer_offset, r2t.desired_length, 16384))
    (resp,) = await rig.run()
    assert isinstance(resp, P.ScsiResponse) and resp.status == 0
    assert await rig.backend.read(0, len(data)) == data


async def test_a_write_within_the_first_burst_needs_no_r2t() -> None:
    rig = Rig()
    rig.login(InitialR2T="No", ImmediateData="Yes", FirstBurstLength="65536", mrdsl=8192)
    data = os.urandom(32768)
    itt = rig.command(write16(64, 64), edtl=len(data), write=True, data=data[:8192],
                      final=False)
    rig.send(*data_outs(itt, P.RESERVED_TAG, data, 8192, len(data) - 8192, 8192))
    (resp,) = await rig.run()
    assert isinstance(resp, P.ScsiResponse) and resp.status == 0
    assert await rig.backend.read(64 * BLOCK, len(data)) == data


async def test_unsolicited_data_beyond_the_first_burst_fails_the_task_only() -> None:
    rig = Rig()
    rig.login(InitialR2T="No", ImmediateData="No", FirstBurstLength="8192", mrdsl=8192)
    data = os.urandom(16384)
    itt = rig.command(write16(0, 32), edtl=len(data), write=True, final=False)
    r2ts = rig.out()
    rig.send(*data_outs(itt, P.RESERVED_TAG, data, 0, 16384, 16384))  # 16 KiB unsolicited
    out = [p for p in rig.out() if isinstance(p, P.ScsiResponse)]
    assert r2ts and out and out[0].status == 2  # CHECK CONDITION
    assert rig.executions() == []
    assert rig.nop()  # the connection carries on
    assert await rig.backend.read(0, 16384) == bytes(16384)


async def test_a_huge_claimed_write_buffers_nothing_and_fails_cleanly() -> None:
    """A peer's EDTL is not a memory budget: 4 GiB claimed, nothing solicited or allocated."""
    rig = Rig()
    rig.login(InitialR2T="Yes", ImmediateData="No")
    itts = [rig.command(write16(0, 0xFFFFFF), edtl=0xF000_0000, write=True) for _ in range(4)]
    s = rig.conn.session
    assert s is not None
    assert sum(len(t.buffer or b"") for t in s.tasks.values()) == 0
    out = await rig.run()
    assert [p.itt for p in out if isinstance(p, P.R2T)] == []
    responses = [p for p in out if isinstance(p, P.ScsiResponse)]
    assert [r.itt for r in responses] == itts
    assert all(r.status == 2 and bytes(r.data)[2 + 2] & 0x0F == 0x5 for r in responses)


async def test_immediate_data_when_not_negotiated_is_rejected() -> None:
    rig = Rig()
    rig.login(ImmediateData="No")
    rig.command(write16(0, 1), edtl=512, write=True, data=bytes(512))
    (rej,) = rig.out()
    assert isinstance(rej, P.Reject) and rej.reason == P.RejectReason.PROTOCOL_ERROR
    assert rig.executions() == []


# -- Data-In (§11.7) ---------------------------------------------------------------------------

async def test_data_in_is_split_by_mrdsl_and_burst_with_status_in_the_last_pdu() -> None:
    rig = Rig()
    rig.login(mrdsl=8192, MaxBurstLength="16384")
    data = os.urandom(40960)
    await rig.backend.write(0, data)
    itt = rig.command(read16(0, 80), edtl=len(data), read=True)
    out = await rig.run()
    assert all(isinstance(p, P.DataIn) and p.itt == itt for p in out)  # no separate response
    din: list[P.DataIn] = out  # type: ignore[assignment]
    assert [d.buffer_offset for d in din] == [0, 8192, 16384, 24576, 32768]
    assert [d.data_sn for d in din] == [0, 1, 2, 3, 4]
    assert [d.final for d in din] == [False, True, False, True, True]  # end of each burst
    assert [d.has_status for d in din] == [False] * 4 + [True]
    assert din[-1].status == 0 and not din[-1].underflow and not din[-1].overflow
    assert b"".join(bytes(d.data) for d in din) == data


async def test_status_is_not_folded_when_there_is_sense(rig: Rig) -> None:
    blocks = rig.lu.num_blocks
    itt = rig.command(read16(blocks - 1, 2), edtl=1024, read=True)  # runs off the end
    (resp,) = await rig.run()
    assert isinstance(resp, P.ScsiResponse) and resp.itt == itt and resp.status == 2
    sense = bytes(resp.data)[2:]
    assert (sense[2] & 0x0F, sense[12]) == (0x5, 0x21)  # LBA OUT OF RANGE


@pytest.mark.parametrize(("blocks", "edtl", "flag", "residual", "sent"), [
    (1, 1024, "underflow", 512, 512),  # the CDB moves less than EDTL
    (4, 1024, "overflow", 1024, 1024),  # the CDB wants more than EDTL: EDTL is sent
])
async def test_read_residuals(rig: Rig, blocks: int, edtl: int, flag: str, residual: int,
                              sent: int) -> None:
    rig.command(read16(0, blocks), edtl=edtl, read=True)
    (last,) = await rig.run()
    assert isinstance(last, P.DataIn) and last.has_status and last.status == 0
    assert getattr(last, flag) and last.residual == residual
    assert len(last.data) == sent


async def test_write_underflow_is_reported_in_the_response(rig: Rig) -> None:
    data = os.urandom(512)
    rig.command(write16(3, 1), edtl=1024, write=True, data=data + bytes(512))
    (resp,) = await rig.run()
    assert isinstance(resp, P.ScsiResponse) and resp.status == 0
    assert resp.underflow and not resp.overflow and resp.residual == 512
    assert await rig.backend.read(3 * BLOCK, 512) == data


async def test_a_residual_beyond_32_bits_saturates(rig: Rig) -> None:
    """READ(16) of 2^32-1 blocks with EDTL 512: the overflow does not fit the Residual Count
    field; the answer is still one well-formed SCSI Response."""
    itt = rig.command(read16(0, 0xFFFFFFFF), edtl=512, read=True)
    (resp,) = await rig.run()
    assert isinstance(resp, P.ScsiResponse) and resp.itt == itt and resp.status == 2
    assert resp.overflow and resp.residual == 0xFFFFFFFF


_OPCODES = [0x00, 0x03, 0x08, 0x0A, 0x12, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x2F, 0x35, 0x41,
            0x42, 0x5A, 0x88, 0x89, 0x8A, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA, 0xFF]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(opcode=st.sampled_from(_OPCODES), rest=st.binary(min_size=15, max_size=15),
       edtl=st.one_of(st.integers(0, 1 << 16), st.integers(0, 0xFFFFFFFF)),
       read=st.booleans(), write=st.booleans(), lun=st.sampled_from([0, 0, 1, 1 << 14]))
async def test_any_cdb_gets_exactly_one_status(opcode: int, rest: bytes, edtl: int,
                                               read: bool, write: bool, lun: int) -> None:
    """Whatever the CDB, EDTL and direction flags, the command ends in exactly one status
    (SCSI Response, or Data-In with S) after at most MAX_DATA_OUT bytes solicited."""
    rig = Rig(lun_size=1 << 20)
    rig.login(InitialR2T="Yes", ImmediateData="No")
    itt = next(rig.itts)
    rig.send(P.ScsiCommandPdu(itt=itt, read=read, write=write, expected_length=edtl,
                              cmd_sn=rig.cmd_sn, lun=lun << 48, cdb=bytes([opcode]) + rest))
    statuses: list[P.Pdu] = []
    solicited = 0
    for _ in range(512):
        out = await rig.run()
        statuses += [p for p in out if isinstance(p, P.ScsiResponse)
                     or (isinstance(p, P.DataIn) and p.has_status)]
        r2ts = [p for p in out if isinstance(p, P.R2T)]
        if not r2ts:
            break
        for r in r2ts:
            solicited += r.desired_length
            rig.send(*data_outs(itt, r.ttt, bytes(r.buffer_offset + r.desired_length),
                                r.buffer_offset, r.desired_length, 262144))
    assert solicited <= MAX_DATA_OUT
    rejects = [p for p in out if isinstance(p, P.Reject)]
    assert len(statuses) == 1 or (rejects and not statuses)
    assert all(p.itt == itt for p in statuses)


# -- Text continuation (§11.10.2) ------------------------------------------------------------

async def test_long_send_targets_answer_continues_across_text_pdus() -> None:
    rig = Rig(extra_targets=30)
    rig.login(session_type="Discovery", mrdsl=512)
    itt = next(rig.itts)
    rig.send(P.TextRequest(itt=itt, cmd_sn=rig.cmd_sn, data=encode_text([("SendTargets",
                                                                           "All")])))
    rig.cmd_sn += 1
    parts: list[P.TextResponse] = []
    while True:
        (resp,) = rig.out()
        assert isinstance(resp, P.TextResponse) and resp.itt == itt
        parts.append(resp)
        if resp.final:
            break
        assert resp.cont and resp.ttt != P.RESERVED_TAG and len(resp.data) == 512
        rig.send(P.TextRequest(itt=itt, ttt=resp.ttt, cmd_sn=rig.cmd_sn))
        rig.cmd_sn += 1
    assert len(parts) > 3 and not parts[-1].cont
    text = b"".join(bytes(p.data) for p in parts)
    assert text == encode_text(send_targets(rig.model, "All", LOCAL, INITIATOR))
    names = [v for k, v in parse_text(text) if k == "TargetName"]
    assert len(names) == 31 and IQN in names


async def test_an_abandoned_long_text_answer_is_dropped_by_the_next_request() -> None:
    """An initiator that never pulls the rest of its answers cannot pile them up: a new
    Text exchange ends the unfinished one, whose TTT is then rejected."""
    rig = Rig(extra_targets=30)
    rig.login(session_type="Discovery", mrdsl=512)
    ttts = []
    for _ in range(50):
        rig.send(P.TextRequest(itt=next(rig.itts), cmd_sn=rig.cmd_sn,
                               data=encode_text([("SendTargets", "All")])))
        rig.cmd_sn += 1
        (resp,) = rig.out()
        assert isinstance(resp, P.TextResponse) and resp.cont
        ttts.append((resp.itt, resp.ttt))
    assert len(rig.conn._text_rest) == 1
    itt, ttt = ttts[0]
    rig.send(P.TextRequest(itt=itt, ttt=ttt, cmd_sn=rig.cmd_sn))
    rig.cmd_sn += 1
    (rej,) = rig.out()
    assert isinstance(rej, P.Reject)
    itt, ttt = ttts[-1]
    rig.send(P.TextRequest(itt=itt, ttt=ttt, cmd_sn=rig.cmd_sn))
    (more,) = rig.out()
    assert isinstance(more, P.TextResponse) and more.itt == itt


async def test_text_continuation_with_an_unknown_ttt_is_rejected() -> None:
    rig = Rig()
    rig.login(session_type="Discovery")
    rig.send(P.TextRequest(itt=7, ttt=0x1234, cmd_sn=rig.cmd_sn))
    (rej,) = rig.out()
    assert isinstance(rej, P.Reject) and rej.reason == P.RejectReason.INVALID_PDU_FIELD


# -- robustness: nothing a peer sends raises out of receive_data ------------------------------

_TEMPLATES: list[P.Pdu] = [
    P.ScsiCommandPdu(itt=1, read=True, expected_length=4096, cmd_sn=CMD0, cdb=read16(0, 8)),
    P.ScsiCommandPdu(itt=2, write=True, expected_length=4096, cmd_sn=CMD0, cdb=write16(0, 8),
                     data=bytes(1024), final=False),
    P.DataOut(itt=2, ttt=P.RESERVED_TAG, data=bytes(1024), buffer_offset=1024),
    P.NopOut(itt=3, immediate=True, cmd_sn=CMD0, data=b"ping"),
    P.TextRequest(itt=4, cmd_sn=CMD0, data=b"SendTargets=All\0"),
    P.TaskMgmtRequest(itt=5, immediate=True, function=1, referenced_task_tag=1, cmd_sn=CMD0),
    P.LogoutRequest(itt=6, immediate=True, cmd_sn=CMD0, reason=1),
    P.SnackRequest(itt=7),
    P.LoginRequest(itt=8, data=b"InitiatorName=x\0"),
]


@st.composite
def hostile_pdus(draw: st.DrawFn) -> bytes:
    """One framed PDU: a mutated valid one, or random header fields with a real data segment.
    The framing bytes (AHS length, data length) are kept consistent so the stream stays framed
    and later PDUs are still read; opcode, flags, tags, CmdSN, lengths and CDB are fair game."""
    if draw(st.booleans()):
        base = bytearray(P.encode_bhs(draw(st.sampled_from(_TEMPLATES)))[:P.BHS_LEN])
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.sampled_from([0, 1, 2, 3] + list(range(8, 48))))
            base[i] = draw(st.integers(0, 255))
    else:
        base = bytearray(draw(st.binary(min_size=P.BHS_LEN, max_size=P.BHS_LEN)))
    ahs = draw(st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4]))
    data = draw(st.binary(max_size=600))
    base[4] = len(ahs) // 4
    base[5:8] = len(data).to_bytes(3, "big")
    return bytes(base) + ahs + data + bytes(-len(data) % 4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(hostile_pdus(), min_size=1, max_size=6), split=st.integers(1, 97))
async def test_hostile_pdus_after_login_never_raise(stream: list[bytes], split: int) -> None:
    rig = Rig(lun_size=1 << 20)
    rig.login()
    wire = b"".join(stream)
    for i in range(0, len(wire), split):  # arbitrary TCP segmentation
        rig.conn.receive_data(wire[i: i + split])
    events = rig.conn.take_events()
    rig.pending_events = events
    await rig.run()  # the tasks those PDUs started complete without raising either
    if any(isinstance(e, Close) for e in events + rig.pending_events):
        return  # a clean close is an acceptable answer to garbage
    # otherwise the connection still frames and answers: a ping gets its pong
    itt = 0x7777_7777
    rig.conn.receive_data(P.encode_bytes(P.NopOut(immediate=True, itt=itt, data=b"alive")))
    pongs = [p for p in await rig.run() if isinstance(p, P.NopIn) and p.itt == itt]
    assert [bytes(p.data) for p in pongs] == [b"alive"]


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(min_size=1, max_size=2000), digests=st.booleans())
def test_arbitrary_bytes_after_login_never_raise(noise: bytes, digests: bool) -> None:
    rig = Rig(lun_size=1 << 20)
    rig.login(header_digest=digests, data_digest=digests)
    rig.conn.receive_data(noise)
    for ev in rig.conn.take_events():
        assert isinstance(ev, (Close, ExecuteTask))
    rig.out()  # whatever came out frames as PDUs


def _with_digests(pdu: bytes, corrupt: int) -> bytes:
    """A framed PDU (as hostile_pdus makes it) with CRC32C header and data digests (§11.1,
    RFC 3720 B.4): correct ones, so the mutated fields reach the session, or with
    ``corrupt`` 1 a wrong header digest and 2 a wrong data digest."""
    from pyscsit.digest import crc32c

    header_len = P.BHS_LEN + pdu[4] * 4
    dlen = int.from_bytes(pdu[5:8], "big")
    header, data = pdu[:header_len], pdu[header_len:]
    hd = crc32c(header, 0) ^ (0xFFFF if corrupt == 1 else 0)
    out = header + hd.to_bytes(4, "little") + data
    if dlen:
        dd = crc32c(data, 0) ^ (0xFFFF if corrupt == 2 else 0)
        out += dd.to_bytes(4, "little")
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(st.tuples(hostile_pdus(), st.sampled_from([0, 0, 0, 1, 2])),
                       min_size=1, max_size=6), split=st.integers(1, 97))
async def test_hostile_pdus_with_digests_never_raise(stream: list[tuple[bytes, int]],
                                                     split: int) -> None:
    """The same mutated PDUs on a connection with both digests on: each is answered, rejected
    (a wrong data digest, §7.8) or ends the connection cleanly (a wrong header digest)."""
    rig = Rig(lun_size=1 << 20)
    rig.login(header_digest=True, data_digest=True)
    wire = b"".join(_with_digests(pdu, corrupt) for pdu, corrupt in stream)
    for i in range(0, len(wire), split):
        rig.conn.receive_data(wire[i: i + split])
    events = rig.conn.take_events()
    rig.pending_events = events
    out = await rig.run()
    closed = any(isinstance(e, Close) for e in events + rig.pending_events)
    if any(corrupt == 1 for _, corrupt in stream[:1]):
        assert closed  # the first header digest is wrong: nothing after it can be framed
    if closed:
        return
    assert not any(corrupt == 1 for _, corrupt in stream)
    if any(corrupt == 2 and pdu[5:8] != bytes(3) for pdu, corrupt in stream):  # has data
        assert any(isinstance(p, P.Reject) and p.reason == P.RejectReason.DATA_DIGEST_ERROR
                   for p in out)
    itt = 0x7777_7777
    rig.send(P.NopOut(immediate=True, itt=itt, data=b"alive"))
    pongs = [p for p in await rig.run() if isinstance(p, P.NopIn) and p.itt == itt]
    assert [bytes(p.data) for p in pongs] == [b"alive"]
