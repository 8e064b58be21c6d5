"""LUN routing: REPORT LUNS, commands to LUNs without an LU, the 8-byte LUN field."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import dispatch
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Direction, Nexus, ScsiCommand, ScsiResult, Status

NX = Nexus("iqn.1994-05.com.example:init", 1, "iqn.2024-01.org.pyscsit:t1")


def lu() -> LogicalUnit:
    return LogicalUnit(MemoryBackend(1 << 20), LuIdentity.random())


LUNS = {0: lu(), 7: lu(), 300: lu()}


async def run(lun: int, cdb: bytes) -> ScsiResult:
    return await dispatch.execute(LUNS, ScsiCommand(cdb, NX, lun=lun))


def report_luns(alloc: int = 4096, select: int = 0) -> bytes:
    return struct.pack(">BBBBBBIBB", 0xA0, 0, select, 0, 0, 0, alloc, 0, 0)


@pytest.mark.parametrize("lun", [0, 5])
async def test_report_luns_from_any_lun(lun: int) -> None:
    r = await run(lun, report_luns())
    d = bytes(r.data)
    assert r.status == Status.GOOD
    assert struct.unpack(">I", d[:4])[0] == 24
    assert [d[8 + 8 * i : 16 + 8 * i] for i in range(3)] == [
        bytes(8), bytes((0, 7)) + bytes(6), bytes((0x41, 0x2C)) + bytes(6)]


async def test_report_luns_truncation_and_select_report() -> None:
    assert len((await run(0, report_luns(alloc=12))).data) == 12
    d = bytes((await run(0, report_luns(select=1))).data)  # well known LUs only: none
    assert d == bytes(8)
    r = await run(5, report_luns(select=0x40))
    assert r.status == Status.CHECK_CONDITION and r.sense[12] == 0x24


async def test_report_luns_not_blocked_by_unit_attention() -> None:
    luns = {0: lu()}
    await dispatch.execute(luns, ScsiCommand(bytes(6), NX))
    luns[0].reset("lun")
    r = await dispatch.execute(luns, ScsiCommand(report_luns(), NX))
    assert r.status == Status.GOOD


async def test_missing_lun_inquiry_peripheral_qualifier_3() -> None:
    r = await run(9, struct.pack(">BBBHB", 0x12, 0, 0, 96, 0))
    d = bytes(r.data)
    assert r.status == Status.GOOD and d[0] == 0x7F and len(d) == 96


async def test_missing_lun_request_sense_and_other_commands() -> None:
    r = await run(9, bytes((0x03, 0, 0, 0, 18, 0)))
    d = bytes(r.data)
    assert r.status == Status.GOOD and (d[2], d[12], d[13]) == (5, 0x25, 0)
    r = await run(9, bytes(6))
    assert r.status == Status.CHECK_CONDITION and (r.sense[2], r.sense[12]) == (5, 0x25)


def test_inspect_missing_lun_solicits_nothing() -> None:
    info = dispatch.inspect(LUNS, 9, struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 8, 0))
    assert info.transfer_length == 0 and info.known
    info = dispatch.inspect(LUNS, 9, struct.pack(">BBBHB", 0x12, 0, 0, 200, 0))
    assert (info.direction, info.transfer_length) == (Direction.READ, 200)
    assert dispatch.inspect(LUNS, 0, struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 8, 0)).transfer_length \
        == 4096


def test_lun_wire_format() -> None:
    assert dispatch.lun_to_wire(0) == 0
    assert dispatch.lun_to_wire(5) == 0x0005_0000_0000_0000
    assert dispatch.lun_to_wire(300) == 0x412C_0000_0000_0000
    assert dispatch.lun_from_wire(0x412C_0000_0000_0000) == 300
    assert dispatch.lun_from_wire(0x0005_0000_0000_0000) == 5
    assert dispatch.lun_from_wire(0x0105_0000_0000_0000) == dispatch.UNSUPPORTED_LUN  # bus 1
    assert dispatch.lun_from_wire(0x0005_0001_0000_0000) == dispatch.UNSUPPORTED_LUN  # 2 levels
    assert dispatch.lun_from_wire(0xC000_0000_0000_0000) == dispatch.UNSUPPORTED_LUN
    with pytest.raises(ValueError):
        dispatch.lun_to_wire(1 << 14)


@given(st.integers(0, (1 << 14) - 1))
def test_lun_wire_round_trip(lun: int) -> None:
    assert dispatch.lun_from_wire(dispatch.lun_to_wire(lun)) == lun
