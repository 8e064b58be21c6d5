"""limits.py (admission, Data-Out stall watch, log throttle) and the limits session.Connection
enforces itself: the buffer budget (TASK SET FULL), login text, sessions per initiator."""

from __future__ import annotations

import itertools

from pyscsit import pdu as P
from pyscsit.backends.memory import MemoryBackend
from pyscsit.keys import encode_text
from pyscsit.limits import Admission, Limits, StallWatch, Throttle
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Status
from pyscsit.session import Connection, ExecuteTask, SessionRegistry, SessionUp
from pyscsit.target import Auth, Model, Portal, Target
from tests.support.rigs import take_pdus
from tests.support.scsi import read16, write16

IQN = "iqn.2026-11.org.pyscsit.test:disk0"
INITIATOR = "iqn.2026-11.org.pyscsit.test:host"
MiB = 1 << 20


# -- admission -----------------------------------------------------------------------------------

class Conn:
    """Stands in for the server's per-connection object: its idle key is set by the test."""

    def __init__(self, name: str, sent: bool = False, last: float = 0.0) -> None:
        self.name, self.sent, self.last = name, sent, last

    def key(self) -> tuple[bool, float]:
        return self.sent, self.last

    def __repr__(self) -> str:
        return self.name


def admission(**kw: int) -> Admission[Conn]:
    return Admission(Limits(**kw), Conn.key)


def test_an_idle_flood_from_one_address_never_locks_out_a_newcomer() -> None:
    a = admission(max_connections_per_address=5, max_pending_logins=100)
    flood = [Conn(f"idle{i}", last=float(i)) for i in range(300)]
    dropped: list[Conn] = []
    for c in flood:
        victims = a.admit(c, "10.0.0.9")
        assert victims is not None  # nobody is ever refused while idle ones can go
        dropped += victims
    assert a.count("10.0.0.9") == 5 and len(dropped) == 295
    assert dropped == flood[:295]  # the oldest went first
    real = Conn("real", last=1000.0)
    assert a.admit(real, "10.0.0.9") == [flood[295]]
    a.logged_in(real)
    assert a.pending == 4


def test_a_connection_that_sent_something_outlives_silent_ones() -> None:
    a = admission(max_pending_logins=3)
    busy = Conn("busy", sent=True, last=0.0)  # logging in, slowly
    quiet = [Conn(f"quiet{i}", last=float(i + 1)) for i in range(2)]
    for c in [busy, *quiet]:
        assert a.admit(c, "10.0.0.1") == []
    assert a.admit(Conn("new", last=9.0), "10.0.0.2") == [quiet[0]]
    assert a.admit(Conn("new2", last=9.5), "10.0.0.2") == [quiet[1]]


def test_logged_in_connections_make_the_caps_refuse() -> None:
    a = admission(max_connections=4, max_connections_per_address=2)
    for i in range(2):
        c = Conn(f"a{i}")
        assert a.admit(c, "10.0.0.1") == []
        a.logged_in(c)
    assert a.admit(Conn("a2"), "10.0.0.1") is None  # per address, all logged in
    assert a.count("10.0.0.1") == 2  # a refusal changes nothing
    b = [Conn(f"b{i}") for i in range(2)]
    for c in b:
        assert a.admit(c, "10.0.0.2") == []
    # total cap: b's pending connections make room, the logged-in ones never do
    assert a.admit(Conn("c0", last=5.0), "10.0.0.3") == [b[0]]
    a.logged_in(b[1])
    assert a.admit(Conn("c1"), "10.0.0.4") is not None  # c0 still pending: it goes
    assert a.connections == 4


def test_release_frees_the_slots_and_is_idempotent() -> None:
    a = admission(max_connections_per_address=1)
    c = Conn("c")
    assert a.admit(c, "::1") == []
    a.logged_in(c)
    assert a.admit(Conn("d"), "::1") is None
    a.release(c)
    a.release(c)
    assert a.count("::1") == 0 and a.connections == 0
    assert a.admit(Conn("d"), "::1") == []


# -- stall watch and throttle --------------------------------------------------------------------

def test_stall_watch_flags_only_tasks_whose_data_stopped() -> None:
    w = StallWatch(timeout=2.0)
    assert w.check([(1, 0), (2, 0)], now=0.0) == []
    assert w.check([(1, 4096), (2, 0)], now=1.5) == []  # task 1 moved
    assert w.check([(1, 4096), (2, 0)], now=2.0) == [2]
    assert w.check([(1, 4096)], now=3.6) == [1]  # task 2 finished: forgotten
    w.reset()
    assert w.check([(1, 4096)], now=4.0) == []


def test_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    t = Throttle(interval=10.0)
    assert t.allow("refuse 10.0.0.1", 0.0) == 0
    assert [t.allow("refuse 10.0.0.1", float(i)) for i in range(1, 6)] == [None] * 5
    assert t.allow("refuse 10.0.0.2", 1.0) == 0  # keys are separate
    assert t.allow("refuse 10.0.0.1", 10.0) == 5


# -- what the connection enforces ----------------------------------------------------------------

class Rig:
    def __init__(self, limits: Limits, registry: SessionRegistry | None = None,
                 model: Model | None = None) -> None:
        self.model = model or Model(
            portals=[Portal("127.0.0.1", 3260)], state_dir="/nonexistent",
            targets={IQN: Target(IQN, Auth(), luns={
                0: LogicalUnit(MemoryBackend(64 * MiB), LuIdentity.random())})})
        self.registry = registry or SessionRegistry()
        self.conn = Connection(self.model, self.registry, local_addr=("127.0.0.1", 3260),
                               peer_addr=("127.0.0.1", 40000), limits=limits)
        self.reader = P.PduReader(max_data=1 << 24)
        self.itts = itertools.count(1)
        self.cmd_sn = 1

    def login(self, isid: int = 0x800000000001, data: bytes | None = None) -> P.LoginResponse:
        keys = {"InitiatorName": INITIATOR, "SessionType": "Normal", "TargetName": IQN,
                "InitialR2T": "Yes", "ImmediateData": "No"}
        self.conn.receive_data(P.encode_bytes(P.LoginRequest(
            final=True, csg=1, nsg=3, isid=isid, itt=0xEE, cmd_sn=1,
            data=data if data is not None else encode_text(keys.items()))))
        (resp,) = self.out()
        assert isinstance(resp, P.LoginResponse)
        for ev in self.conn.take_events():
            if isinstance(ev, SessionUp):
                self.registry.add(ev.session)
        return resp

    def out(self) -> list[P.Pdu]:
        return take_pdus(self.conn, self.reader)

    def command(self, cdb: bytes, edtl: int, *, read: bool = False,
                write: bool = False) -> int:
        itt = next(self.itts)
        self.conn.receive_data(P.encode_bytes(P.ScsiCommandPdu(
            itt=itt, read=read, write=write, expected_length=edtl, cmd_sn=self.cmd_sn,
            cdb=cdb.ljust(16, b"\0"), final=True)))
        self.cmd_sn += 1
        return itt


def test_writes_beyond_the_buffer_budget_get_task_set_full() -> None:
    r = Rig(Limits(max_buffered_bytes=4 * MiB))
    assert r.login().status_class == 0
    blocks = MiB // 512
    itts = [r.command(write16(i * blocks, blocks), MiB, write=True) for i in range(6)]
    out = r.out()
    r2ts = {p.itt for p in out if isinstance(p, P.R2T)}
    full = {p.itt for p in out if isinstance(p, P.ScsiResponse)
            and p.status == Status.TASK_SET_FULL}
    assert r2ts == set(itts[:4]) and full == set(itts[4:])  # 4 MiB solicited, no more
    # Data-Out for a command refused that way is dropped quietly, not rejected
    r.conn.receive_data(P.encode_bytes(P.DataOut(itt=itts[5], ttt=P.RESERVED_TAG, final=True,
                                                 data=bytes(512))))
    assert r.out() == []
    # a task leaving (here: aborted) makes room again: the budget is counted, not leaked
    r.conn.abort_matching(0)
    r.conn.take_events()
    again = r.command(write16(0, blocks), MiB, write=True)
    assert [type(p) for p in r.out() if p.itt == again] == [P.R2T]


def test_reads_count_against_the_budget_and_a_lone_big_one_always_fits() -> None:
    r = Rig(Limits(max_buffered_bytes=1 * MiB))
    r.login()
    big = r.command(read16(0, 16 * MiB // 512), 16 * MiB, read=True)
    small = r.command(read16(0, 8), 4096, read=True)
    started = [e.task.itt for e in r.conn.take_events() if isinstance(e, ExecuteTask)]
    assert started == [big]
    (resp,) = r.out()
    assert isinstance(resp, P.ScsiResponse) and resp.itt == small
    assert resp.status == Status.TASK_SET_FULL


def test_waiting_for_data_lists_tasks_that_wait_for_data_out() -> None:
    r = Rig(Limits())
    r.login()
    w = r.command(write16(0, 8), 4096, write=True)
    r.command(bytes(6), 0)  # TEST UNIT READY: executes at once
    assert r.conn.waiting_for_data() == [(w, 0)]


def test_login_text_beyond_the_cap_fails_the_login() -> None:
    r = Rig(Limits(max_text_bytes=8192))
    keys = encode_text([("InitiatorName", INITIATOR), ("TargetName", IQN)])
    filler = b"X-pyscsit-filler=" + b"a" * 4000 + b"\0"
    itt = 0xEE
    for _ in range(2):  # continued text: 2 x 4 KiB is within the cap
        r.conn.receive_data(P.encode_bytes(P.LoginRequest(
            cont=True, csg=1, isid=1, itt=itt, cmd_sn=1, data=filler)))
        (ack,) = r.out()
        assert isinstance(ack, P.LoginResponse) and ack.status_class == 0
    r.conn.receive_data(P.encode_bytes(P.LoginRequest(
        final=True, csg=1, nsg=3, isid=1, itt=itt, cmd_sn=1, data=keys)))
    (resp,) = r.out()
    assert (resp.status_class, resp.status_detail) == (0x02, 0x00)  # type: ignore[attr-defined]
    assert r.conn.session is None


def test_sessions_per_initiator_cap_answers_out_of_resources() -> None:
    registry = SessionRegistry()
    lim = Limits(max_sessions_per_initiator=2)
    model = Rig(lim).model
    for isid in (1, 2):
        assert Rig(lim, registry, model).login(isid=isid).status_class == 0
    third = Rig(lim, registry, model)
    resp = third.login(isid=3)
    assert (resp.status_class, resp.status_detail) == (0x03, 0x02)  # §11.13.5
    assert third.conn.session is None and len(registry.sessions) == 2
    # reinstating an existing session (same ISID, same target) is not a new one
    assert Rig(lim, registry, model).login(isid=2).status_class == 0
