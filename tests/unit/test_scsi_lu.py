"""LogicalUnit as a whole: never raises, sense format follows D_SENSE, inspect agrees."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import registry
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Direction, Nexus, ScsiCommand, Status

NX = Nexus("iqn.i", 1, "iqn.t")
LU = LogicalUnit(MemoryBackend(1 << 20), LuIdentity.random())


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=0, max_size=16),
        st.sampled_from([op.opcode for op in registry.all_ops()]).flatmap(
            lambda op: st.binary(min_size=15, max_size=15).map(lambda rest: bytes((op,)) + rest)
        ),
    ),
    st.binary(max_size=4096),
)
def test_arbitrary_cdb_never_raises(cdb: bytes, data: bytes) -> None:
    cmd = ScsiCommand(cdb, NX, data_out=memoryview(data))
    r = asyncio.run(LU.execute(cmd))
    assert r.status in (Status.GOOD, Status.CHECK_CONDITION)
    if r.status == Status.CHECK_CONDITION:
        assert r.sense[0] in (0x70, 0x72) and r.sense[2] & 0x0F != 0
    info = LU.inspect(cdb)
    assert info.transfer_length >= 0
    if info.known and info.direction == Direction.READ and r.status == Status.GOOD:
        assert len(r.data) <= info.transfer_length


async def test_d_sense_switches_to_descriptor_format() -> None:
    lu = LogicalUnit(MemoryBackend(1 << 20), LuIdentity.random())
    read16 = struct.pack(">BBQIBB", 0x88, 0, 2**64 - 1, 1, 0, 0)
    r = await lu.execute(ScsiCommand(read16, NX))
    assert r.sense[0] == 0x70
    lu.modes.d_sense = True
    r = await lu.execute(ScsiCommand(read16, NX))
    assert r.sense[:4] == b"\x72\x05\x21\x00"
    ms = await lu.execute(ScsiCommand(bytes((0x1A, 8, 0x0A, 0, 255, 0)), NX))
    assert bytes(ms.data)[4 + 2] & 0x04  # the control page reports D_SENSE


def test_registry_rows_are_consistent() -> None:
    ops = registry.all_ops()
    assert len({(o.opcode, o.service_action) for o in ops}) == len(ops)
    for o in ops:
        assert o.usage[0] == o.opcode and len(o.usage) == o.cdb_len
        if o.service_action is not None:
            assert o.usage[1] & 0x1F == 0x1F
