"""Persistent reservations against `pyscsit serve` over TCP: an APTPL reservation survives
SIGKILL, and two cluster nodes see the conflicts Windows failover cluster validation checks
(register, reserve, access per type, preempt, RESERVE(6) interplay)."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyscsit.scsi.pr_codec import ProutParams, TransportId, decode_transport_id, encode_prout_params
from tests.integration.conftest import IQN, RunningServer, file_lun_config, start_server
from tests.support.initiator import Initiator

pytestmark = pytest.mark.integration

GOOD, CHECK_CONDITION, RESERVATION_CONFLICT = 0x00, 0x02, 0x18
NODE1 = "iqn.1991-05.com.microsoft:node1.cluster.example"
NODE2 = "iqn.1991-05.com.microsoft:node2.cluster.example"
OUTSIDER = "iqn.2026-11.org.example:outsider"
K1, K2 = 0x1111_0000_0000_0001, 0x2222_0000_0000_0002
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, RAIEK = range(7)

TUR = bytes(6)
READ10 = struct.pack(">BBIBHB", 0x28, 0, 8, 0, 1, 0)
WRITE10 = struct.pack(">BBIBHB", 0x2A, 0, 8, 0, 1, 0)


class Node:
    """One cluster node: an iSCSI session from its own initiator name."""

    def __init__(self, server: RunningServer, name: str, isid: int = 0x80_00_00_00_00_01):
        self.ini = Initiator.connect(server.host, server.port, name=name, isid=isid)
        self.ini.login(IQN)
        self.clear_uas()

    def clear_uas(self) -> list[tuple[int, int, int]]:
        seen = []
        for _ in range(10):
            r = self.ini.scsi(TUR)
            if r.status == GOOD:
                break
            seen.append((r.sense[2] & 0x0F, r.sense[12], r.sense[13]))
        return seen

    def prout(self, sa: int, key: int = 0, sa_key: int = 0, pr_type: int = 0,
              aptpl: bool = False) -> int:
        data = encode_prout_params(ProutParams(key, sa_key, aptpl=aptpl))
        cdb = struct.pack(">BBBHIB", 0x5F, sa, pr_type, 0, len(data), 0)
        return self.ini.scsi(cdb, data_out=data).status

    def prin(self, sa: int, alloc: int = 8192) -> bytes:
        r = self.ini.scsi(struct.pack(">BB5xHB", 0x5E, sa, alloc, 0), read_len=alloc)
        assert r.status == GOOD, r.sense.hex()
        return r.data

    def reservation(self) -> tuple[int, int] | None:
        d = self.prin(1)
        if struct.unpack_from(">I", d, 4)[0] == 0:
            return None
        return struct.unpack_from(">Q", d, 8)[0], d[21] & 0x0F

    def keys(self) -> list[int]:
        d = self.prin(0)
        n = struct.unpack_from(">I", d, 4)[0] // 8
        return [struct.unpack_from(">Q", d, 8 + 8 * i)[0] for i in range(n)]

    def read(self) -> int:
        return self.ini.scsi(READ10, read_len=512).status

    def write(self) -> int:
        return self.ini.scsi(WRITE10, data_out=b"\x5a" * 512).status

    def close(self) -> None:
        try:
            self.ini.logout()
        finally:
            self.ini.close()


@pytest.fixture
def nodes(tmp_path: Path, server_factory: Any) -> Iterator[tuple[Node, Node, Node]]:
    server = server_factory(file_lun_config(tmp_path))
    made = [Node(server, NODE1), Node(server, NODE2), Node(server, OUTSIDER)]
    yield made[0], made[1], made[2]
    for n in made:
        n.close()


def test_aptpl_reservation_survives_sigkill(tmp_path: Path, server_factory: Any) -> None:
    config = file_lun_config(tmp_path)
    first = start_server(tmp_path, config)
    try:
        n1 = Node(first, NODE1)
        assert n1.prout(REGISTER, sa_key=K1, aptpl=True) == GOOD
        assert n1.prout(RESERVE, K1, pr_type=WE_RO) == GOOD
        # no logout, no clean shutdown: the process dies with the reservation held
        first.proc.kill()
        first.proc.wait(timeout=10)
        n1.ini.close()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
    assert "Traceback" not in first.log()

    second = server_factory(config)  # same state directory
    n1, n2 = Node(second, NODE1), Node(second, NODE2)
    try:
        assert n2.reservation() == (K1, WE_RO)
        assert n2.keys() == [K1]
        caps = n2.prin(2)
        assert caps[3] & 0x01  # PTPL_A: the restored state is still kept across power loss
        assert n2.write() == RESERVATION_CONFLICT  # not registered: Write Exclusive RO
        assert n2.read() == GOOD
        assert n1.write() == GOOD  # the holder, recognised again after the restart
    finally:
        n1.close()
        n2.close()


@pytest.mark.parametrize(("pr_type", "reg_rw", "unreg_rw"), [
    (WE, (GOOD, RESERVATION_CONFLICT), (GOOD, RESERVATION_CONFLICT)),
    (EA, (RESERVATION_CONFLICT, RESERVATION_CONFLICT),
     (RESERVATION_CONFLICT, RESERVATION_CONFLICT)),
    (WE_RO, (GOOD, GOOD), (GOOD, RESERVATION_CONFLICT)),
    (EA_RO, (GOOD, GOOD), (RESERVATION_CONFLICT, RESERVATION_CONFLICT)),
    (WE_AR, (GOOD, GOOD), (GOOD, RESERVATION_CONFLICT)),
    (EA_AR, (GOOD, GOOD), (RESERVATION_CONFLICT, RESERVATION_CONFLICT)),
], ids=["WE", "EA", "WE_RO", "EA_RO", "WE_AR", "EA_AR"])
def test_two_nodes_see_the_conflicts_of_each_type(
        nodes: tuple[Node, Node, Node], pr_type: int, reg_rw: tuple[int, int],
        unreg_rw: tuple[int, int]) -> None:
    n1, n2, outsider = nodes
    assert n1.prout(RAIEK, sa_key=K1) == GOOD
    assert n2.prout(RAIEK, sa_key=K2) == GOOD
    assert n1.prout(RESERVE, K1, pr_type=pr_type) == GOOD
    expected_key = 0 if pr_type in (WE_AR, EA_AR) else K1
    assert n2.reservation() == (expected_key, pr_type)
    assert (n1.read(), n1.write()) == (GOOD, GOOD)
    assert (n2.read(), n2.write()) == reg_rw
    assert (outsider.read(), outsider.write()) == unreg_rw
    # the other node cannot take a reservation of its own while this one is held
    if pr_type not in (WE_AR, EA_AR):
        assert n2.prout(RESERVE, K2, pr_type=pr_type) == RESERVATION_CONFLICT
    assert n1.prout(CLEAR, K1) == GOOD


def test_failover_preempts_the_dead_node(nodes: tuple[Node, Node, Node]) -> None:
    """Cluster validation's arbitration: node 2 takes the disk away from node 1."""
    n1, n2, _ = nodes
    assert n1.prout(RAIEK, sa_key=K1) == GOOD
    assert n2.prout(RAIEK, sa_key=K2) == GOOD
    assert n1.prout(RESERVE, K1, pr_type=WE_RO) == GOOD
    assert n2.prout(RESERVE, K2, pr_type=WE_RO) == RESERVATION_CONFLICT
    assert n2.prout(PREEMPT_ABORT, K2, K1, pr_type=WE_RO) == GOOD
    assert n2.reservation() == (K2, WE_RO)
    assert n2.keys() == [K2]
    # node 1 is told, then finds itself locked out of writes
    assert n1.clear_uas() == [(0x6, 0x2A, 0x05)]  # REGISTRATIONS PREEMPTED
    assert n1.write() == RESERVATION_CONFLICT
    assert n1.read() == GOOD
    assert n1.prout(REGISTER, K1, K1) == RESERVATION_CONFLICT  # its key is gone
    assert n2.write() == GOOD
    # READ FULL STATUS names node 2's port
    d = n2.prin(3)
    tid, _ = decode_transport_id(d, 8 + 24)
    assert tid == TransportId(NODE2, 0x80_00_00_00_00_01)
    assert d[8 + 12] & 0x01  # R_HOLDER
    assert n2.prout(CLEAR, K2) == GOOD


def test_reserve6_and_persistent_registrations_exclude_each_other(
        nodes: tuple[Node, Node, Node]) -> None:
    n1, n2, _ = nodes
    reserve6, release6 = bytes((0x16, 0, 0, 0, 0, 0)), bytes((0x17, 0, 0, 0, 0, 0))
    assert n1.ini.scsi(reserve6).status == GOOD
    assert n2.ini.scsi(reserve6).status == RESERVATION_CONFLICT
    assert n2.read() == RESERVATION_CONFLICT
    assert n2.prout(RAIEK, sa_key=K2) == RESERVATION_CONFLICT
    assert n1.ini.scsi(release6).status == GOOD
    assert n2.prout(RAIEK, sa_key=K2) == GOOD
    # with a registration in place, RESERVE(6) conflicts (SPC-4 5.9.3)
    assert n1.ini.scsi(reserve6).status == RESERVATION_CONFLICT
    assert n2.prout(REGISTER, K2, 0) == GOOD


def test_reserve6_is_released_when_its_session_ends(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory(file_lun_config(tmp_path))
    n1, n2 = Node(server, NODE1), Node(server, NODE2)
    reserve6 = bytes((0x16, 0, 0, 0, 0, 0))
    assert n1.ini.scsi(reserve6).status == GOOD
    assert n2.ini.scsi(reserve6).status == RESERVATION_CONFLICT
    n1.close()  # logout: I_T nexus loss once the target has closed that connection
    deadline = time.monotonic() + 5
    while (status := n2.ini.scsi(reserve6).status) != GOOD and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == GOOD
    n2.close()
