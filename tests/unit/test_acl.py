"""Access control in the model (who logs in, through which portal, which LUs each initiator
sees) and the shared login guard (failed-login back-off, issued CHAP challenges)."""

from __future__ import annotations

import struct

import pytest

from pyscsit.acl import FORGET_AFTER, LoginGuard, portal_matches
from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import dispatch
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Nexus, ScsiCommand, Status
from pyscsit.target import Auth, Chap, Portal, Target

ESX1 = "iqn.1998-01.com.vmware:esx1"
ESX2 = "iqn.1998-01.com.vmware:esx2"
KVM = "iqn.2008-11.org.linux-kvm:host"
IQN = "iqn.2026-11.org.example:shared"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- back-off ----------------------------------------------------------------------------------


def test_each_failure_doubles_the_delay_up_to_the_cap() -> None:
    g = LoginGuard(base_delay=0.5, max_delay=3.0, clock=Clock())
    assert [g.failed(ESX1, "10.0.0.1") for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_back_off_is_per_name_and_per_address() -> None:
    g = LoginGuard(base_delay=1.0, max_delay=60.0, clock=Clock())
    g.failed(ESX1, "10.0.0.1")
    g.failed(ESX1, "10.0.0.1")
    # same name from elsewhere: the name's record counts
    assert g.failed(ESX1, "10.0.0.2") == 4.0
    # another name from the same address: the address's record counts
    assert g.failed(ESX2, "10.0.0.1") == 4.0
    # a fresh name from a fresh address starts at the base delay
    assert g.failed(KVM, "10.0.0.3") == 1.0
    # names compare case-folded, as iSCSI names do
    assert g.failed(ESX1.upper(), "10.0.0.9") == 8.0


def test_failures_are_forgotten_after_a_quiet_spell() -> None:
    clock = Clock()
    g = LoginGuard(base_delay=1.0, max_delay=60.0, clock=clock)
    for _ in range(4):
        g.failed(ESX1, "10.0.0.1")
    clock.now += FORGET_AFTER + 1
    assert g.penalty(ESX1, "10.0.0.1") == 0.0
    assert g.failed(ESX1, "10.0.0.1") == 1.0


def test_a_verdict_after_failures_waits_as_long_as_a_failure_would() -> None:
    g = LoginGuard(base_delay=1.0, max_delay=60.0, clock=Clock())
    assert g.penalty(ESX1, "10.0.0.1") == 0.0  # nothing failed: no wait at all
    g.failed(ESX1, "10.0.0.1")
    g.failed(ESX1, "10.0.0.1")
    # a success now waits what a third failure would: lateness tells a guesser nothing
    assert g.succeeded(ESX1, "10.0.0.1") == 4.0
    # the name is forgiven, the address (maybe shared with the guesser) is not
    assert g.penalty(ESX1, "10.0.0.9") == 0.0
    assert g.penalty(KVM, "10.0.0.1") == 4.0


def test_base_zero_turns_the_back_off_off() -> None:
    g = LoginGuard(base_delay=0.0, max_delay=0.0, clock=Clock())
    assert [g.failed(ESX1, "10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]


def test_tables_stay_bounded_under_a_flood_of_names() -> None:
    g = LoginGuard(clock=Clock(), max_tracked=100, max_challenges=50)
    for i in range(10_000):
        g.failed(f"iqn.2026-01.org.flood:{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        g.issued(i.to_bytes(16, "big"))
    assert len(g._failures) <= 100
    assert len(g._challenges) <= 50
    assert g.was_issued((9_999).to_bytes(16, "big"))
    assert not g.was_issued((0).to_bytes(16, "big"))


# -- portals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "port", "local", "ok"), [
    ("127.0.0.1", 3260, ("127.0.0.1", 3260), True),
    ("127.0.0.1", 3260, ("127.0.0.2", 3260), False),
    ("127.0.0.1", 3260, ("127.0.0.1", 3261), False),
    ("0.0.0.0", 3260, ("192.0.2.7", 3260), True),
    ("0.0.0.0", 3260, ("2001:db8::1", 3260), False),
    ("::", 3260, ("2001:db8::1", 3260), True),
    ("::", 3260, ("::ffff:192.0.2.7", 3260), True),  # dual-stack listener
    ("192.0.2.7", 3260, ("::ffff:192.0.2.7", 3260), True),
    ("2001:db8::1", 3260, ("2001:db8:0:0::1", 3260), True),
])
def test_portal_matching(host: str, port: int, local: tuple[str, int], ok: bool) -> None:
    assert portal_matches(host, port, local) is ok


# -- the model: who logs in, with what, and what they see ---------------------------------------


def lu() -> LogicalUnit:
    return LogicalUnit(MemoryBackend(1 << 20), LuIdentity.random())


def shared_target() -> Target:
    per_host = Auth(chap=Chap("esx1", "esx1-own-secret"))
    return Target(IQN, Auth(chap=Chap("esx", "a-long-secret")), luns={0: lu(), 1: lu(), 2: lu()},
                  initiators=frozenset({ESX1, ESX2}), acls={ESX1: per_host},
                  views={1: frozenset({ESX1}), 2: frozenset({ESX2})}, portals=(1,))


def test_only_listed_initiators_are_allowed() -> None:
    t = shared_target()
    assert t.allows(ESX1) and t.allows(ESX2) and t.allows(ESX1.upper())
    assert not t.allows(KVM)
    assert Target(IQN, Auth()).allows(KVM)  # no list: anyone who authenticates


def test_per_initiator_credentials_replace_the_targets() -> None:
    t = shared_target()
    chap1 = t.auth_for(ESX1).chap
    chap2 = t.auth_for(ESX2).chap
    assert chap1 is not None and chap1.user == "esx1"
    assert chap2 is not None and chap2.user == "esx"


def test_each_initiator_sees_its_own_lun_map() -> None:
    t = shared_target()
    assert sorted(t.luns_for(ESX1)) == [0, 1]
    assert sorted(t.luns_for(ESX2)) == [0, 2]
    assert Target(IQN, Auth(), luns={0: lu()}).luns_for(KVM).keys() == {0}


def test_target_bound_to_one_portal() -> None:
    t = shared_target()
    portals = [Portal("127.0.0.1", 3260), Portal("127.0.0.2", 3260)]
    assert t.portal_list(portals) == [portals[1]]
    assert t.on_portal(portals, ("127.0.0.2", 3260))
    assert not t.on_portal(portals, ("127.0.0.1", 3260))
    assert Target(IQN, Auth()).on_portal(portals, ("127.0.0.1", 3260))


def _report_luns() -> bytes:
    return struct.pack(">BBBBBBIBB", 0xA0, 0, 0, 0, 0, 0, 4096, 0, 0)


def _luns_in(data: bytes) -> list[int]:
    n = struct.unpack(">I", data[:4])[0] // 8
    return [data[8 + 8 * i + 1] for i in range(n)]


async def test_masked_lun_is_absent_from_report_luns_and_answers_5_25_00() -> None:
    t = shared_target()
    nexus = Nexus(ESX2, 1, IQN)
    view = t.luns_for(ESX2)
    r = await dispatch.execute(view, ScsiCommand(_report_luns(), nexus, lun=0))
    assert r.status == Status.GOOD and _luns_in(bytes(r.data)) == [0, 2]
    # TEST UNIT READY and READ(10) to LUN 1, which only esx1 sees
    for cdb in (bytes(6), bytes((0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0))):
        r = await dispatch.execute(view, ScsiCommand(cdb, nexus, lun=1))
        assert r.status == Status.CHECK_CONDITION
        assert (r.sense[2] & 0x0F, r.sense[12], r.sense[13]) == (5, 0x25, 0x00)
    # and esx1 reads it fine
    r = await dispatch.execute(t.luns_for(ESX1), ScsiCommand(bytes(6), Nexus(ESX1, 1, IQN),
                                                             lun=1))
    assert r.status == Status.GOOD
