"""Hostile initiators over real TCP against `pyscsit serve` (issue 5).

One server for the module, with short timers and limits from the config (`timeouts:`,
`limits:`), takes every case in turn. After each case a normal initiator still logs in and
reads back the blocks written at the start, and the server's resident memory stays within
RSS_BUDGET of what it was then. The caps on connections and the CHAP flood get servers of
their own, since their settings would change the other cases.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyscsit import pdu as P
from pyscsit.keys import encode_text
from tests.integration.conftest import IQN, RunningServer, file_lun_config, start_server
from tests.support.initiator import (
    ConnectionClosed,
    Initiator,
    LoginError,
    chap_response,
    decode_binary,
)
from tests.support.rigs import begin_write
from tests.support.scsi import read16, write16

pytestmark = pytest.mark.integration

MiB = 1 << 20
BLOCK = 512
PATTERN_BLOCKS = 256  # LBAs 0..255 hold a known pattern, written once by the fixture
RSS_BUDGET = 200 * MiB
LOGIN_TIMEOUT = 2.0
TIMERS = {"login": LOGIN_TIMEOUT, "nop_interval": 1, "nop_timeout": 1}
LIMITS = {"max_pending_logins": 32, "r2t_timeout": 1, "max_buffered_bytes": "16MiB"}
GOOD, CHECK_CONDITION, TASK_SET_FULL = 0x00, 0x02, 0x28


def pattern(blocks: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(blocks * BLOCK)


ORIGINAL = pattern(PATTERN_BLOCKS, 1)


# -- the server, and what "still serves" means ----------------------------------------------------

class Hostile:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.rss0 = 0

    def rss(self) -> int:
        with open(f"/proc/{self.server.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def connect(self, **kw: Any) -> Initiator:
        return Initiator.connect(self.server.host, self.server.port, **kw)

    def raw(self) -> socket.socket:
        return socket.create_connection((self.server.host, self.server.port), timeout=10)

    def still_serves(self) -> None:
        """A normal initiator logs in and reads the pattern back; memory stays bounded."""
        assert self.server.proc.poll() is None, self.server.log()
        with self.connect(isid=0x80_00_00_00_77_01) as ini:
            ini.login(IQN)
            ini.scsi(bytes(6))  # TEST UNIT READY: may report a unit attention once
            assert ini.scsi(bytes(6)).status == GOOD
            reply = ini.scsi(read16(0, PATTERN_BLOCKS), read_len=len(ORIGINAL))
            assert reply.status == GOOD and reply.data == ORIGINAL
            ini.logout()
        grown = self.rss() - self.rss0
        assert grown < RSS_BUDGET, f"RSS grew by {grown / MiB:.0f} MiB"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = file_lun_config(tmp, size="64MiB")
    cfg.update(timeouts=TIMERS, limits=LIMITS, login_backoff={"base": 0})
    server = start_server(tmp, cfg)
    h = Hostile(server)
    try:
        with h.connect() as ini:
            ini.login(IQN)
            ini.scsi(bytes(6))
            assert ini.scsi(write16(0, PATTERN_BLOCKS), data_out=ORIGINAL).status == GOOD
            ini.logout()
        h.rss0 = h.rss()
        h.still_serves()
        yield h
    finally:
        rc = server.stop()
    assert "Traceback" not in server.log(), server.log()
    assert rc == 0, server.log()


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Read (and drop) whatever the server sends until it closes; how long that took."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    raise AssertionError(f"the server kept the connection open for {seconds}s")


def live_until_closed(ini: Initiator, seconds: float) -> tuple[float, list[P.Pdu]]:
    """Behave as a live initiator (answer pings) until the server closes the connection."""
    start = time.monotonic()
    seen: list[P.Pdu] = []
    while (left := seconds - (time.monotonic() - start)) > 0:
        try:
            pdu = ini.recv(left)
        except ConnectionClosed:
            return time.monotonic() - start, seen
        except TimeoutError:
            break
        if isinstance(pdu, P.NopIn) and pdu.ttt != P.RESERVED_TAG:
            ini.answer_ping(pdu)
        else:
            seen.append(pdu)
    raise AssertionError(f"the server kept the connection open for {seconds}s: {seen}")


def login_bytes(ini: Initiator, extra: bytes = b"") -> bytes:
    return P.encode_bytes(P.LoginRequest(
        final=True, csg=1, nsg=3, isid=ini.isid, itt=1, cmd_sn=1,
        data=encode_text([("InitiatorName", ini.name), ("SessionType", "Normal"),
                          ("TargetName", IQN)]) + extra))


# -- garbage, truncation, oversized and missing data -----------------------------------------------

def test_garbage_before_login_closes_only_that_connection(hostile: Hostile) -> None:
    rng = random.Random(5)
    for junk in (rng.randbytes(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01" +
                 rng.randbytes(300), bytes([0x1C]) + rng.randbytes(47)):
        with hostile.raw() as s:
            s.sendall(junk)
            assert closed_within(s, LOGIN_TIMEOUT + 3) < LOGIN_TIMEOUT + 2
    hostile.still_serves()


def test_truncated_pdus_then_close(hostile: Hostile) -> None:
    ini = hostile.connect()
    full = login_bytes(ini)
    ini.close()
    for cut in (1, 20, 47, 48, len(full) - 1):
        with hostile.raw() as s:
            s.sendall(full[:cut])  # half a header, a header without its data, ...
    with hostile.connect() as ini:  # in full feature phase: a write cut off mid-PDU
        ini.login(IQN, immediate_data=True)
        wire = ini.encode(P.ScsiCommandPdu(
            itt=ini.next_itt(), write=True, final=True, expected_length=4096,
            cmd_sn=ini.cmd_sn, exp_stat_sn=ini.exp_stat_sn,
            cdb=write16(0, 8).ljust(16, b"\0"), data=bytes(4096)))
        ini.send_raw(wire[:1000])
    hostile.still_serves()


@pytest.mark.parametrize("pdu", [
    P.NopOut(immediate=True, itt=7), P.TextRequest(itt=7, final=True),
    P.ScsiCommandPdu(itt=7, write=True, final=True, expected_length=1 << 20,
                     cdb=write16(0, 2048).ljust(16, b"\0")),
    P.DataOut(itt=7, ttt=P.RESERVED_TAG, final=True)], ids=lambda p: type(p).__name__)
def test_data_segment_above_max_recv_data_segment_length_closes(
        hostile: Hostile, pdu: P.Pdu) -> None:
    """RFC 7143 §13.12: the target declares 262144 for full feature phase; one byte more
    announced in any PDU loses the framing, so the connection goes (§7.8)."""
    with hostile.connect() as ini:
        ini.login(IQN)
        assert ini.params.max_xmit == 262144
        if hasattr(pdu, "cmd_sn"):
            pdu.cmd_sn = ini.cmd_sn
        pdu.data = bytes(262145)
        ini.send_raw(ini.encode(pdu)[:4096])  # the header says it all
        assert [p for p in ini.wait_closed(5) if not isinstance(p, P.NopIn)] == []
    with hostile.connect() as ini:  # exactly the limit is fine
        ini.login(IQN)
        assert isinstance(ini.nop(bytes(262144)), P.NopIn)
    hostile.still_serves()


def test_oversized_login_pdu_closes(hostile: Hostile) -> None:
    """During login MaxRecvDataSegmentLength is the default 8192 (§13.12)."""
    with hostile.connect() as ini:
        ini.send_raw(login_bytes(ini, b"X-a=" + b"a" * 8192 + b"\0"))
        assert ini.wait_closed(5) == []
    hostile.still_serves()


def test_data_announced_and_never_sent(hostile: Hostile) -> None:
    # before login: the login timeout ends it
    with hostile.connect() as ini:
        wire = login_bytes(ini, b"X-a=" + b"a" * 3000 + b"\0")
        ini.send_raw(wire[:100])
        took = closed_within(ini.sock, LOGIN_TIMEOUT + 3)
        assert LOGIN_TIMEOUT - 0.2 < took < LOGIN_TIMEOUT + 2
    # in full feature phase: the half-sent PDU hides the answer to our ping
    with hostile.connect() as ini:
        ini.login(IQN)
        ini.send_raw(ini.encode(P.NopOut(immediate=True, itt=9, cmd_sn=ini.cmd_sn,
                                         data=bytes(1000)))[:500])
        assert closed_within(ini.sock, 6) < 4  # nop_interval 1 s + nop_timeout 1 s
    # a write whose R2T is never answered, from a peer that answers pings: r2t_timeout
    with hostile.connect() as ini:
        ini.login(IQN, initial_r2t=True, immediate_data=False)
        ini.send(P.ScsiCommandPdu(itt=ini.next_itt(), write=True, final=True,
                                  expected_length=4096, cmd_sn=ini._numbered(),
                                  exp_stat_sn=ini.exp_stat_sn,
                                  cdb=write16(0, 8).ljust(16, b"\0")))
        took, seen = live_until_closed(ini, 6)
        assert [type(p) for p in seen] == [P.R2T] and took < 3.5
    assert hostile.server.logged("no Data-Out for task")
    hostile.still_serves()


def test_slow_loris_login_is_cut_off_by_the_login_timeout(hostile: Hostile) -> None:
    with hostile.connect() as ini:
        wire = login_bytes(ini)
        start = time.monotonic()
        ini.sock.settimeout(1)
        try:
            for byte in wire:  # one byte every 50 ms: never idle, never done
                ini.send_raw(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - start > LOGIN_TIMEOUT + 3:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        took = time.monotonic() - start
        assert took < LOGIN_TIMEOUT + 1.5
    assert hostile.server.logged("login timeout")
    with hostile.connect() as ini:  # in full feature phase: the NOP ping cannot be answered
        ini.login(IQN)
        wire = ini.encode(P.NopOut(immediate=True, itt=5, cmd_sn=ini.cmd_sn, data=bytes(64)))
        start = time.monotonic()
        try:
            for byte in wire * 10:
                ini.send_raw(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - start > 8:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - start < 4  # nop_interval 1 s + nop_timeout 1 s
    hostile.still_serves()


def test_idle_connection_flood_does_not_lock_out_a_real_initiator(hostile: Hostile) -> None:
    start = time.monotonic()
    flood = [hostile.raw() for _ in range(300)]  # never log in; max_pending_logins is 32
    try:
        assert time.monotonic() - start < LOGIN_TIMEOUT / 2, "flood too slow to mean anything"
        with hostile.connect() as ini:  # from the same address, while the flood is open
            ini.login(IQN)
            assert ini.scsi(read16(0, 8), read_len=4096).data == ORIGINAL[:4096]
        assert time.monotonic() - start < LOGIN_TIMEOUT, "the login timeout interfered"
        dropped = 0
        for s in flood:
            s.settimeout(0.01)
            try:
                dropped += s.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                dropped += 1
        assert dropped >= 300 - 32  # the oldest idle ones made room
    finally:
        for s in flood:
            s.close()
    lines = [x for x in hostile.server.log_lines if "to make room" in x]
    assert 1 <= len(lines) <= 3, lines  # one warning per 10 s, with a count
    hostile.still_serves()


# -- full feature phase: sequence numbers, tags, digests ---------------------------------------

def test_cmd_sn_far_outside_the_window_is_ignored(hostile: Hostile) -> None:
    with hostile.connect() as ini:
        ini.login(IQN)
        ini.scsi(bytes(6))
        rng = random.Random(7)
        burst = b"".join(ini.encode(P.ScsiCommandPdu(
            itt=0x10000 + i, read=True, expected_length=4096,
            cmd_sn=(ini.cmd_sn + rng.randrange(200, (1 << 32) - 200)) & 0xFFFFFFFF,
            exp_stat_sn=ini.exp_stat_sn, cdb=read16(0, 8).ljust(16, b"\0")))
            for i in range(3000))
        ini.send_raw(burst)
        reply = ini.scsi(read16(0, 8), read_len=4096)  # nothing else came back first
        assert reply.status == GOOD and reply.data == ORIGINAL[:4096]
    hostile.still_serves()


def test_unknown_ttts_in_data_out_are_rejected(hostile: Hostile) -> None:
    with hostile.connect() as ini:
        ini.login(IQN, initial_r2t=True, immediate_data=False)
        rng = random.Random(11)
        for _ in range(100):
            ini.send(P.DataOut(itt=rng.randrange(1 << 31), ttt=rng.randrange(1 << 31),
                               final=True, data=bytes(512)))
        rejects = [ini.recv() for _ in range(100)]
        assert all(isinstance(r, P.Reject) and r.reason == P.RejectReason.INVALID_PDU_FIELD
                   for r in rejects)
        # a real write with a forged TTT in between: rejected, and the write still completes
        itt = ini.next_itt()
        ini.send(P.ScsiCommandPdu(itt=itt, write=True, final=True, expected_length=4096,
                                  cmd_sn=ini._numbered(), exp_stat_sn=ini.exp_stat_sn,
                                  cdb=write16(0, 8).ljust(16, b"\0")))
        r2t = ini.recv()
        assert isinstance(r2t, P.R2T)
        ini.send(P.DataOut(itt=itt, ttt=r2t.ttt ^ 0x5A5A, final=True, data=bytes(4096)))
        reject = ini.recv()
        assert isinstance(reject, P.Reject)
        ini.send(P.DataOut(itt=itt, ttt=r2t.ttt, final=True, data=ORIGINAL[:4096]))
        resp = ini.recv()
        assert isinstance(resp, P.ScsiResponse) and resp.status == GOOD
    hostile.still_serves()


def test_wrong_digests(hostile: Hostile) -> None:
    with hostile.connect() as bad, hostile.connect(isid=0x80_00_00_00_55_01) as other:
        bad.login(IQN, header_digest=True, data_digest=True)
        other.login(IQN, header_digest=True, data_digest=True)
        for i in range(50):  # a wrong data digest: that PDU is rejected (§7.8), no more
            wire = bytearray(bad.encode(P.NopOut(immediate=True, itt=100 + i,
                                                 cmd_sn=bad.cmd_sn, data=b"ping")))
            wire[-1] ^= 0xFF
            bad.send_raw(bytes(wire))
        rejects = [bad.recv() for _ in range(50)]
        assert {r.reason for r in rejects} == {P.RejectReason.DATA_DIGEST_ERROR}  # type: ignore
        assert bad.nop(b"still").data == b"still"
        wire = bytearray(bad.encode(P.NopOut(immediate=True, itt=1, cmd_sn=bad.cmd_sn)))
        wire[P.BHS_LEN] ^= 0xFF  # a wrong header digest: framing is lost, the connection goes
        bad.send_raw(bytes(wire))
        assert bad.wait_closed(5) == []
        assert other.nop(b"fine").data == b"fine"
    hostile.still_serves()


# -- writes cut short, and a peer that never reads -------------------------------------------------

@pytest.mark.parametrize("solicited", [True, False], ids=["r2t", "unsolicited"])
def test_half_finished_write_changes_nothing(hostile: Hostile, solicited: bool) -> None:
    """Blocks are written only once all of a command's data is in: a connection dropped in
    the middle of a write leaves its blocks, and every other block, as they were."""
    new = pattern(64, 99)
    with hostile.connect() as ini:
        ini.login(IQN, initial_r2t=solicited, immediate_data=not solicited,
                  first_burst_length=65536)
        itt, ttt, start = begin_write(ini, write16(64, 64), new, solicited=solicited)
        ini.send(P.DataOut(itt=itt, ttt=ttt, buffer_offset=start,
                           data=new[start: start + 16384]))
        wire = ini.encode(P.DataOut(itt=itt, ttt=ttt, data_sn=1, buffer_offset=start + 16384,
                                    data=new[start + 16384: start + 24576]))
        ini.send_raw(wire[:3000])  # and then the cable is pulled
    time.sleep(0.2)
    hostile.still_serves()  # reads back all 256 original blocks


def test_peer_that_sends_commands_but_never_reads(hostile: Hostile) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((hostile.server.host, hostile.server.port))
    hog = Initiator(sock, isid=0x80_00_00_00_66_01)
    try:
        hog.login(IQN, initial_r2t=True, immediate_data=False)
        sock.settimeout(2)
        # 64 reads of 16 MiB and 64 writes announcing 16 MiB, in one burst: 2 GiB if the
        # server buffered all it was asked for
        burst = b"".join(hog.encode(P.ScsiCommandPdu(
            itt=hog.next_itt(), read=i % 2 == 0, write=i % 2 == 1, final=True,
            expected_length=16 * MiB, cmd_sn=hog._numbered(), exp_stat_sn=hog.exp_stat_sn,
            cdb=(write16 if i % 2 else read16)(0, 16 * MiB // BLOCK).ljust(16, b"\0")))
            for i in range(128))
        peaks: list[int] = []
        stop = threading.Event()

        def sample() -> None:  # from the burst on, every 20 ms
            while not stop.wait(0.02):
                peaks.append(hostile.rss() - hostile.rss0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        hog.send_raw(burst)
        try:
            t0 = time.monotonic()
            with hostile.connect() as ini:  # meanwhile, another initiator is served normally
                ini.login(IQN)
                assert time.monotonic() - t0 < 1.0, "the login waited for the hog"
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline:
                    t0 = time.monotonic()
                    assert ini.scsi(read16(0, 8), read_len=4096).data == ORIGINAL[:4096]
                    assert time.monotonic() - t0 < 1.0, "a READ waited for the hog"
                    time.sleep(0.05)
        finally:
            stop.set()
            sampler.join()
        peak = max(peaks)
        assert peak < RSS_BUDGET, f"RSS grew by {peak / MiB:.0f} MiB"
    finally:
        hog.close()
    hostile.still_serves()


# -- caps on connections and sessions (a server of their own) --------------------------------------

def test_connection_and_session_caps(tmp_path: Path, server_factory: Any) -> None:
    cfg = file_lun_config(tmp_path, size="8MiB")
    cfg.update(login_backoff={"base": 0}, limits={
        "max_connections": 6, "max_connections_per_address": 4,
        "max_sessions_per_initiator": 3})
    s = server_factory(cfg)

    def connect(source: str, name: str, isid: int) -> Initiator:
        sock = socket.create_connection((s.host, s.port), timeout=10,
                                        source_address=(source, 0))
        return Initiator(sock, name=f"iqn.2026-11.org.pyscsit.test:{name}", isid=isid)

    held = [connect("127.0.0.1", "a", 0x8000_0000_0001 + i) for i in range(3)]
    try:
        for ini in held:
            ini.login(IQN)
        fourth = connect("127.0.0.1", "a", 0x8000_0000_0009)
        held.append(fourth)
        with pytest.raises(LoginError) as e:  # a fourth session for one initiator name
            fourth.login(IQN)
        assert (e.value.status_class, e.value.status_detail) == (0x03, 0x02)  # §11.13.5
        assert fourth.wait_closed(5) == []
        held[-1] = connect("127.0.0.1", "b", 0x8000_0000_0001)
        held[-1].login(IQN)
        for _ in range(3):  # the address has 4 logged-in connections: refused at once
            with connect("127.0.0.1", "c", 0x8000_0000_0001) as extra:
                assert closed_within(extra.sock, 2) < 1
        for i in range(2):  # another address still gets in, up to the total of 6
            held.append(connect("127.0.0.2", "d", 0x8000_0000_0001 + i))
            held[-1].login(IQN)
        with connect("127.0.0.2", "e", 0x8000_0000_0001) as extra:
            assert closed_within(extra.sock, 2) < 1
        for ini in held:
            assert ini.nop(b"up").data == b"up"
    finally:
        for ini in held:
            ini.close()
    refusals = [x for x in s.log_lines if "refusing a connection from 127.0.0.1" in x]
    assert len(refusals) == 1, refusals  # rate-limited: one line per address and interval
    assert "03/02" in s.log()


# -- CHAP floods and reflection (a server of its own) ------------------------------------------

CHAP = ("alice", "alice-secret-0123")
MUTUAL = ("target0", "target-secret-456")


def test_chap_flood_backs_off_and_reflection_is_refused(
        tmp_path: Path, server_factory: Any) -> None:
    cfg = file_lun_config(tmp_path, size="8MiB", auth={
        "chap": {"user": CHAP[0], "secret": CHAP[1]},
        "mutual_chap": {"user": MUTUAL[0], "secret": MUTUAL[1]}})
    cfg.update(login_backoff={"base": 0.05, "max": 0.4})
    s = server_factory(cfg)
    took: list[float] = []
    for i in range(8):
        with Initiator.connect(s.host, s.port) as ini:
            t0 = time.monotonic()
            with pytest.raises(LoginError) as e:
                ini.login(IQN, chap=(CHAP[0], f"wrong-secret-{i:04d}"), mutual=MUTUAL)
            took.append(time.monotonic() - t0)
            assert (e.value.status_class, e.value.status_detail) == (0x02, 0x01)
    assert took[0] >= 0.04 and took[-1] >= 0.35, took  # 0.05 s doubling, capped at 0.4 s
    assert took[-1] > took[0] + 0.25, took
    # reflection (§12.1.3): our "challenge" to the target is the one it sent us
    with Initiator.connect(s.host, s.port) as ini:
        keys = ini._exchange([("InitiatorName", ini.name), ("SessionType", "Normal"),
                              ("TargetName", IQN), ("AuthMethod", "CHAP")],
                             csg=0, transit=False)
        keys = ini._exchange([("CHAP_A", "7")], csg=0, transit=False)
        ident, challenge = int(keys["CHAP_I"], 0), decode_binary(keys["CHAP_C"])
        answer = chap_response(7, ident, CHAP[1].encode(), challenge)
        with pytest.raises(LoginError) as e:
            ini._exchange([("CHAP_N", CHAP[0]), ("CHAP_R", "0x" + answer.hex()),
                           ("CHAP_I", str(ident)), ("CHAP_C", keys["CHAP_C"])],
                          csg=0, transit=True)
        assert (e.value.status_class, e.value.status_detail) == (0x02, 0x01)
    with Initiator.connect(s.host, s.port) as ini:  # the right secret still gets in
        ini.login(IQN, chap=CHAP, mutual=MUTUAL)
        assert ini.nop(b"in").data == b"in"
    assert CHAP[1] not in s.log()
