"""The protocol engine over real TCP against `pyscsit serve`, driven by the project's own
initiator (tests/support/initiator.py): the parts libiscsi cannot reach (data digests, the
target's own timers, deliberately broken PDUs) and the login/session rules of RFC 7143."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from pyscsit import pdu as P
from tests.integration.conftest import IQN, RunningServer, file_lun_config
from tests.support.initiator import (
    AuthError,
    ConnectionClosed,
    Initiator,
    LoginError,
    chap_response,
)
from tests.support.scsi import read16, write16

pytestmark = pytest.mark.integration

ALICE = ("alice", "alice-secret-0123")
TARGET = ("target0", "target-secret-456")
FAST_TIMERS = {"login": 1, "nop_interval": 0.5, "nop_timeout": 1}

GOOD, CHECK_CONDITION = 0x00, 0x02
UNIT_ATTENTION, ABORTED_COMMAND = 0x6, 0xB


TUR = bytes(6)


def sense_code(sense: bytes) -> tuple[int, int, int]:
    """(key, ASC, ASCQ) from fixed (0x70/0x71) or descriptor (0x72/0x73) sense data."""
    if sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2], sense[3]
    return sense[2] & 0x0F, sense[12], sense[13]


def connect(server: RunningServer, **kw: Any) -> Initiator:
    return Initiator.connect(server.host, server.port, **kw)


def quiet_for(ini: Initiator, seconds: float) -> list[P.Pdu]:
    """Every PDU but the target's NOP-In pings (answered) that arrives within ``seconds``."""
    got: list[P.Pdu] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            pdu = ini.recv(left)
        except TimeoutError:
            break
        if isinstance(pdu, P.NopIn) and pdu.itt == P.RESERVED_TAG:
            ini.answer_ping(pdu)
        else:
            got.append(pdu)
    return got


@pytest.fixture
def server(tmp_path: Path, server_factory: Any) -> RunningServer:
    """An anonymous target with short NOP/login timers."""
    cfg = file_lun_config(tmp_path, size="64MiB")
    cfg["timeouts"] = FAST_TIMERS
    return server_factory(cfg)  # type: ignore[no-any-return]


@pytest.fixture
def chap_server(tmp_path: Path, server_factory: Any) -> RunningServer:
    auth = {"chap": {"user": ALICE[0], "secret": ALICE[1]},
            "mutual_chap": {"user": TARGET[0], "secret": TARGET[1]}}
    return server_factory(file_lun_config(tmp_path, size="64MiB", auth=auth))  # type: ignore


# -- data integrity with digests ------------------------------------------------------------

@pytest.mark.parametrize("outstanding_r2t", [1, 4])
def test_data_digests_write_and_read_back_mebibytes_byte_exact(
        server: RunningServer, outstanding_r2t: int) -> None:
    data = os.urandom(5 * 1024 * 1024 + 4096)  # not a multiple of any burst
    with connect(server) as ini:
        params = ini.login(IQN, header_digest=True, data_digest=True, initial_r2t=False,
                           max_outstanding_r2t=outstanding_r2t, max_burst_length=262144)
        assert params.header_digest and params.data_digest
        w = ini.scsi(write16(2048, len(data) // 512), data_out=data)
        assert w.status == GOOD, w.sense
        assert len(w.r2ts) > 1  # data moved as immediate, unsolicited and solicited Data-Out
        r = ini.scsi(read16(2048, len(data) // 512), read_len=len(data))
        assert r.status == GOOD
        assert r.data == data
        assert len(r.data_in) > 1 and [d.data_sn for d in r.data_in] == \
            list(range(len(r.data_in)))


def test_header_digest_only_round_trip(server: RunningServer) -> None:
    data = os.urandom(300_000)  # padding in the last PDU: 300000 % 512 != 0 -> whole blocks
    data = data[: len(data) // 512 * 512]
    with connect(server) as ini:
        params = ini.login(IQN, header_digest=True, initial_r2t=True, immediate_data=False)
        assert params.header_digest and not params.data_digest
        assert ini.scsi(write16(0, len(data) // 512), data_out=data).status == GOOD
        assert ini.scsi(read16(0, len(data) // 512), read_len=len(data)).data == data


def test_bad_data_digest_fails_only_that_task(server: RunningServer) -> None:
    block = os.urandom(4096)
    with connect(server) as ini:
        ini.login(IQN, header_digest=True, data_digest=True, initial_r2t=True,
                  immediate_data=False)
        assert ini.scsi(write16(100, 8), data_out=block).status == GOOD
        itt = ini.next_itt()
        ini.send(P.ScsiCommandPdu(itt=itt, write=True, expected_length=4096,
                                  cmd_sn=ini._numbered(), exp_stat_sn=ini.exp_stat_sn,
                                  cdb=write16(100, 8).ljust(16, b"\0")))
        r2t = ini.recv()
        assert isinstance(r2t, P.R2T) and r2t.itt == itt
        wire = bytearray(ini.encode(P.DataOut(itt=itt, ttt=r2t.ttt, final=True,
                                              exp_stat_sn=ini.exp_stat_sn,
                                              data=bytes(4096))))
        wire[-1] ^= 0xFF  # corrupt the data digest
        ini.send_raw(bytes(wire))
        got = [ini.recv(), ini.recv()]
        rejects = [p for p in got if isinstance(p, P.Reject)]
        responses = [p for p in got if isinstance(p, P.ScsiResponse)]
        assert rejects and rejects[0].reason == P.RejectReason.DATA_DIGEST_ERROR
        assert responses and responses[0].itt == itt
        assert responses[0].status == CHECK_CONDITION
        sense = bytes(responses[0].data)[2:]
        assert sense_code(sense) == (ABORTED_COMMAND, 0x47, 0x05)  # PROTOCOL SERVICE CRC
        # the connection carries on, and the failed write never reached the medium
        r = ini.scsi(read16(100, 8), read_len=4096)
        assert r.status == GOOD and r.data == block


def test_bad_header_digest_closes_the_connection(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(IQN, header_digest=True)
        wire = bytearray(ini.encode(P.NopOut(immediate=True, itt=ini.next_itt(),
                                             cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn)))
        wire[P.BHS_LEN] ^= 0x01  # the header digest follows the BHS
        ini.send_raw(bytes(wire))
        assert not [p for p in ini.wait_closed(5) if isinstance(p, P.NopIn)]


# -- authentication ------------------------------------------------------------------------

def test_mutual_chap_login_proves_both_sides(chap_server: RunningServer) -> None:
    with connect(chap_server) as ini:
        params = ini.login(IQN, chap=ALICE, mutual=TARGET)
        assert params.answers["CHAP_N"] == TARGET[0]
        assert ini.scsi(TUR).status in (GOOD, CHECK_CONDITION)  # first command may see a UA
        assert ini.scsi(TUR).status == GOOD


def test_wrong_target_secret_is_detected_by_the_initiator(chap_server: RunningServer) -> None:
    with connect(chap_server) as ini, pytest.raises(AuthError):
        ini.login(IQN, chap=ALICE, mutual=(TARGET[0], "not-the-target-secret"))


def test_wrong_initiator_secret_is_refused(chap_server: RunningServer) -> None:
    with connect(chap_server) as ini:
        with pytest.raises(LoginError) as info:
            ini.login(IQN, chap=(ALICE[0], "not-alices-secret"))
        assert (info.value.status_class, info.value.status_detail) == (2, 1)
        assert ini.wait_closed(5) == []


@pytest.mark.parametrize("algorithm", [5, 6, 7, 8])
def test_one_way_chap_with_each_algorithm(chap_server: RunningServer, algorithm: int) -> None:
    with connect(chap_server) as ini:
        params = ini.login(IQN, chap=ALICE, chap_algorithms=(algorithm,))
        assert params.answers["CHAP_A"] == str(algorithm)
        challenge = bytes.fromhex(params.answers["CHAP_C"][2:])
        assert len(challenge) >= len(chap_response(algorithm, 0, b"", b""))
        assert ini.text([("SendTargets", "")])[0] == ("TargetName", IQN)


def test_chap_target_refuses_anonymous_login(chap_server: RunningServer) -> None:
    with connect(chap_server) as ini, pytest.raises(LoginError) as info:
        ini.login(IQN)
    assert info.value.status_class == 2


# -- discovery and sessions ----------------------------------------------------------------

def test_send_targets_all_names_the_target_and_bound_portal(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(session_type="Discovery")
        answer = ini.text([("SendTargets", "All")])
        assert answer == [("TargetName", IQN), ("TargetAddress", f"127.0.0.1:{server.port},1")]
        # a discovery session carries no SCSI commands (§4.3)
        ini.send(P.ScsiCommandPdu(itt=ini.next_itt(), cmd_sn=ini.cmd_sn, cdb=bytes(16)))
        reject = ini.recv()
        assert isinstance(reject, P.Reject)


def test_session_reinstatement_closes_the_old_connection(server: RunningServer) -> None:
    old = connect(server, isid=0x80_00_00_00_00_42)
    new = connect(server, isid=0x80_00_00_00_00_42)
    other = connect(server, isid=0x80_00_00_00_00_43)
    try:
        old.login(IQN)
        other.login(IQN)
        assert old.nop(b"x").data == b"x"
        new.login(IQN)  # same initiator name and ISID: the old session goes (§6.3.5)
        assert all(isinstance(p, P.NopIn) for p in old.wait_closed(5))  # pings at most
        with pytest.raises((ConnectionClosed, ConnectionResetError, BrokenPipeError)):
            old.nop()
        assert new.nop(b"new").data == b"new"
        assert other.nop(b"other").data == b"other"  # a different ISID is untouched
        assert server.logged("session reinstatement")
    finally:
        for i in (old, new, other):
            i.close()


def test_logout_gets_a_response_then_the_server_closes(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(IQN)
        resp = ini.logout()
        assert resp.response == 0
        assert ini.wait_closed(5) == []


# -- NOP pings -----------------------------------------------------------------------------

def test_nop_out_ping_is_answered_with_the_same_data(server: RunningServer) -> None:
    payload = os.urandom(5000)
    with connect(server) as ini:
        ini.login(IQN, header_digest=True, data_digest=True)
        itt = ini.next_itt()
        ini.send(P.NopOut(immediate=True, itt=itt, cmd_sn=ini.cmd_sn,
                          exp_stat_sn=ini.exp_stat_sn, data=payload))
        answer = ini.recv()
        assert isinstance(answer, P.NopIn)
        assert (answer.itt, answer.ttt, bytes(answer.data)) == (itt, P.RESERVED_TAG, payload)


def test_target_pings_an_idle_initiator_and_keeps_a_live_one(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(IQN)
        pings = 0
        deadline = time.monotonic() + 3.5  # several nop_interval + nop_timeout periods
        while time.monotonic() < deadline:
            try:
                pdu = ini.recv(0.2)
            except TimeoutError:
                continue
            assert isinstance(pdu, P.NopIn) and pdu.ttt != P.RESERVED_TAG
            assert pdu.itt == P.RESERVED_TAG
            pings += 1
            ini.answer_ping(pdu)
        assert pings >= 2
        assert ini.nop(b"still here").data == b"still here"


def test_target_drops_an_initiator_that_never_answers_pings(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(IQN)
        start = time.monotonic()
        seen = ini.wait_closed(10)
        elapsed = time.monotonic() - start
        assert seen and all(isinstance(p, P.NopIn) and p.ttt != P.RESERVED_TAG for p in seen)
        assert elapsed < 5  # nop_interval 0.5 s + nop_timeout 1 s, plus slack
    assert server.logged("did not answer a NOP-In ping")


@pytest.mark.parametrize("partial", [False, True])
def test_login_timeout_closes_a_connection_that_never_logs_in(
        server: RunningServer, partial: bool) -> None:
    with connect(server) as ini:
        start = time.monotonic()
        if partial:  # a first Login Request that asks for CHAP, then silence
            ini.send(P.LoginRequest(csg=0, isid=ini.isid, itt=1, data=(
                b"InitiatorName=" + ini.name.encode() + b"\0SessionType=Normal\0"
                b"TargetName=" + IQN.encode() + b"\0AuthMethod=None\0")))
            assert isinstance(ini.recv(), P.LoginResponse)
        ini.sock.settimeout(10)
        try:
            assert ini.sock.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - start < 5
    assert server.logged("login timeout")


# -- task management -----------------------------------------------------------------------

def test_abort_task_and_lun_reset(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(IQN, initial_r2t=True, immediate_data=False)
        assert ini.scsi(TUR).status in (GOOD, CHECK_CONDITION)
        # a write that waits for its Data-Out: the task is in the target's task set
        itt = ini.next_itt()
        cmd_sn = ini._numbered()
        ini.send(P.ScsiCommandPdu(itt=itt, write=True, expected_length=4096, cmd_sn=cmd_sn,
                                  exp_stat_sn=ini.exp_stat_sn, cdb=write16(0, 8).ljust(16, b"\0")))
        assert isinstance(ini.recv(), P.R2T)
        resp = ini.tmf(P.TmfFunction.ABORT_TASK, referenced_task_tag=itt, ref_cmd_sn=cmd_sn)
        assert resp.response == P.TmfResponse.COMPLETE
        # an unknown tag above ExpCmdSN does not exist
        resp = ini.tmf(P.TmfFunction.ABORT_TASK, referenced_task_tag=0xABCD,
                       ref_cmd_sn=ini.cmd_sn + 5)
        assert resp.response == P.TmfResponse.TASK_DOES_NOT_EXIST
        resp = ini.tmf(P.TmfFunction.LOGICAL_UNIT_RESET)
        assert resp.response == P.TmfResponse.COMPLETE
        after = ini.scsi(TUR)
        assert after.status == CHECK_CONDITION
        key, asc, _ = sense_code(after.sense)
        assert (key, asc) == (UNIT_ATTENTION, 0x29)  # POWER ON, RESET, OR BUS DEVICE RESET
        assert ini.scsi(TUR).status == GOOD
        resp = ini.tmf(P.TmfFunction.LOGICAL_UNIT_RESET, lun=7)
        assert resp.response == P.TmfResponse.LUN_DOES_NOT_EXIST


# -- malformed and out-of-window PDUs ------------------------------------------------------

def test_unknown_opcode_is_rejected_and_the_connection_works(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(IQN)
        bhs = bytearray(P.BHS_LEN)
        bhs[0] = 0x1C  # not an initiator opcode
        bhs[1] = 0x80
        bhs[16:20] = (0x1234).to_bytes(4, "big")
        ini.send_raw(bytes(bhs))
        reject = ini.recv()
        assert isinstance(reject, P.Reject)
        assert reject.reason == P.RejectReason.COMMAND_NOT_SUPPORTED
        assert bytes(reject.data) == bytes(bhs)  # §11.17: the rejected header comes back
        assert ini.nop(b"ok").data == b"ok"


def test_cmd_sn_outside_the_window_is_ignored(server: RunningServer) -> None:
    with connect(server) as ini:
        ini.login(IQN)
        ini.scsi(TUR)
        ahead = (ini.max_cmd_sn + 1) & 0xFFFFFFFF
        behind = (ini.cmd_sn - 1) & 0xFFFFFFFF
        for sn in (ahead, behind, (ini.cmd_sn + 0x8000_0000) & 0xFFFFFFFF):
            ini.send(P.ScsiCommandPdu(itt=ini.next_itt(), cmd_sn=sn,
                                      exp_stat_sn=ini.exp_stat_sn, cdb=bytes(16)))
        assert quiet_for(ini, 1.0) == []
        # the window did not move: the next in-order command is answered
        expected = ini.cmd_sn
        reply = ini.scsi(TUR)
        assert reply.status == GOOD
        assert reply.response.exp_cmd_sn == (expected + 1) & 0xFFFFFFFF  # type: ignore


def test_garbage_after_login_costs_only_that_connection(server: RunningServer) -> None:
    with connect(server) as bad, connect(server) as good:
        bad.login(IQN)
        good.login(IQN)
        # a header announcing a 16 MiB data segment: framing is lost, so it is fatal (§7.8)
        bad.send_raw(b"\xff" * 48 + os.urandom(4000))
        assert bad.wait_closed(5) == []
        assert good.nop(b"fine").data == b"fine"
