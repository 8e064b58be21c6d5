"""The rest a disk LU answers: REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS,
REPORT TARGET PORT GROUPS, MODE SELECT, WRITE AND VERIFY, ORWRITE, PRE-FETCH, READ DEFECT
DATA, PREVENT ALLOW MEDIUM REMOVAL, read-only LUs, VPD 0x86 and 4096-byte blocks."""

from __future__ import annotations

import struct

import pytest

from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import modes, registry
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.sbc_misc import parse_block_cdb
from pyscsit.scsi.sense import InvalidFieldInParameterList, ParameterListLengthError
from pyscsit.scsi.spc import parse_rsoc
from pyscsit.scsi.task import Nexus, ScsiCommand, ScsiResult, Status

NX = Nexus("iqn.1994-05.com.example:a", 0x23D000000001, "iqn.2024-01.org.pyscsit:t1",
           relative_port=1)
NX2 = Nexus("iqn.1994-05.com.example:b", 0x23D000000002, "iqn.2024-01.org.pyscsit:t1",
            relative_port=2)
SIZE = 1 << 20


class RecordingBackend(MemoryBackend):
    """Remembers the FUA flag of every write, so a test can see write-through behaviour."""

    def __init__(self, size: int, **kw: bool) -> None:
        super().__init__(size, **kw)
        self.fua: list[bool] = []

    async def write(self, offset: int, data: memoryview | bytes, fua: bool = False) -> None:
        self.fua.append(fua)
        await super().write(offset, data, fua)


def make_lu(block_size: int = 512, read_only: bool = False) -> LogicalUnit:
    return LogicalUnit(RecordingBackend(SIZE), LuIdentity.random(), block_size=block_size,
                       read_only=read_only)


async def run(lu: LogicalUnit, cdb: bytes, data: bytes | None = None,
              nexus: Nexus = NX) -> ScsiResult:
    out = memoryview(data) if data is not None else None
    return await lu.execute(ScsiCommand(cdb, nexus, data_out=out,
                                        expected_length=len(data or b"")))


def sense3(r: ScsiResult) -> tuple[int, int, int]:
    assert r.status == Status.CHECK_CONDITION, r
    if r.sense[0] & 0x7F == 0x72:
        return r.sense[1] & 0x0F, r.sense[2], r.sense[3]
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def field_pointer(r: ScsiResult) -> tuple[bool, int, int | None]:
    """(C/D, byte, bit) of a fixed format sense-key-specific field pointer."""
    b = r.sense[15]
    assert b & 0x80
    return bool(b & 0x40), struct.unpack(">H", r.sense[16:18])[0], (b & 7) if b & 8 else None


def rsoc(options: int = 0, opcode: int = 0, sa: int = 0, alloc: int = 65535,
         rctd: bool = False) -> bytes:
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, (0x80 if rctd else 0) | options, opcode, sa,
                       alloc, 0, 0)


def rw10(op: int, lba: int, blocks: int, b1: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, b1, lba, 0, blocks, 0)


def rw16(op: int, lba: int, blocks: int, b1: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, b1, lba, blocks, 0, 0)


def read10(lba: int, blocks: int) -> bytes:
    return rw10(0x28, lba, blocks)


TUR = bytes(6)


# --- REPORT SUPPORTED OPERATION CODES -------------------------------------------------------


def _descriptors(d: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(opcode, sa, flags, cdb_len, timeouts) per command descriptor of all_commands data."""
    n = struct.unpack(">I", d[:4])[0]
    assert n == len(d) - 4
    out, pos = [], 4
    while pos < len(d):
        op, sa, flags, cdb_len = struct.unpack(">BxHxBH", d[pos : pos + 8])
        pos += 8
        to = b""
        if flags & 0x02:
            to, pos = d[pos : pos + 12], pos + 12
        out.append((op, sa, flags, cdb_len, to))
    return out


async def test_rsoc_lists_every_registered_command_with_its_cdb_length() -> None:
    d = bytes((await run(make_lu(), rsoc())).data)
    descs = _descriptors(d)
    table = registry.all_ops()
    assert [(op, sa) for op, sa, *_ in descs] == [(o.opcode, o.service_action or 0)
                                                   for o in table]
    for (op, sa, flags, cdb_len, to), info in zip(descs, table, strict=True):
        assert cdb_len == info.cdb_len and not flags & 0x02 and to == b""
        assert bool(flags & 0x01) == (info.service_action is not None)  # SERVACTV
    names = {(op, sa) for op, sa, *_ in descs}
    for must in ((0x2E, 0), (0x8B, 0), (0x34, 0), (0x37, 0), (0x15, 0), (0x55, 0),
                 (0xA3, 0x0A), (0xA3, 0x0C), (0xA3, 0x0D)):
        assert must in names


async def test_every_reported_command_is_answered_not_invalid_opcode() -> None:
    # A host that trusts the report must never get 5/20/00 or "unsupported service action".
    lu = make_lu()
    for op in registry.all_ops():
        cdb = bytearray(op.cdb_len)
        cdb[0] = op.opcode
        if op.service_action is not None:
            cdb[1] = op.service_action
        r = await run(lu, bytes(cdb), bytes(lu.block_size))
        if r.status == Status.CHECK_CONDITION:
            key, asc, _ = sense3(r)
            assert (key, asc) != (5, 0x20), op.name
            if op.service_action is not None and (key, asc) == (5, 0x24):
                assert field_pointer(r)[1] != 1, op.name


async def test_rsoc_rctd_adds_a_timeouts_descriptor_to_every_command() -> None:
    d = bytes((await run(make_lu(), rsoc(rctd=True))).data)
    for _op, _sa, flags, _n, to in _descriptors(d):
        assert flags & 0x02  # CTDP
        length, _, _, _nominal, recommended = struct.unpack(">HBBII", to)
        assert length == 0x0A and recommended > 0


async def test_rsoc_allocation_length_truncates_without_error() -> None:
    lu = make_lu()
    full = bytes((await run(lu, rsoc())).data)
    for n in (0, 3, 4, 11, 100):
        r = await run(lu, rsoc(alloc=n))
        assert r.status == Status.GOOD and bytes(r.data) == full[:n]


async def test_rsoc_one_command_usage_data_shows_dpo_fua_for_read10() -> None:
    d = bytes((await run(make_lu(), rsoc(1, 0x28))).data)
    assert d[1] & 0x07 == 0b011 and struct.unpack(">H", d[2:4])[0] == 10
    usage = d[4:14]
    assert usage[0] == 0x28 and usage[1] & 0x18 == 0x18  # DPO and FUA are honoured
    assert usage == registry.find(0x28).usage  # type: ignore[union-attr]


async def test_rsoc_one_command_write_and_verify_reports_dpo() -> None:
    d = bytes((await run(make_lu(), rsoc(1, 0x2E))).data)
    assert d[4] == 0x2E and d[5] & 0x10


async def test_rsoc_service_action_commands() -> None:
    lu = make_lu()
    # READ CAPACITY(16) is 9Eh/10h: options 1 is refused, 2 works and shows the SA in byte 1.
    r = await run(lu, rsoc(1, 0x9E))
    assert sense3(r) == (5, 0x24, 0) and field_pointer(r)[:2] == (True, 2)
    d = bytes((await run(lu, rsoc(2, 0x9E, 0x10))).data)
    assert d[1] & 7 == 0b011 and d[4] == 0x9E and d[5] & 0x1F == 0x10
    # a service action of a supported opcode that we do not implement: "not supported"
    assert bytes((await run(lu, rsoc(2, 0x9E, 0x1F))).data) == b"\x00\x01\x00\x00"
    # options 2 for an opcode without service actions is an invalid field
    assert sense3(await run(lu, rsoc(2, 0x28))) == (5, 0x24, 0)


async def test_rsoc_one_command_unsupported_and_option_3() -> None:
    lu = make_lu()
    assert bytes((await run(lu, rsoc(1, 0xC5))).data) == b"\x00\x01\x00\x00"
    assert bytes((await run(lu, rsoc(3, 0x28))).data)[1] & 7 == 0b011
    assert bytes((await run(lu, rsoc(3, 0x28, 1))).data)[1] & 7 == 0b001
    assert bytes((await run(lu, rsoc(3, 0xA3, 0x0C))).data)[1] & 7 == 0b011
    d = bytes((await run(lu, rsoc(1, 0x2A, rctd=True))).data)
    assert d[1] & 0x80 and len(d) == 4 + 10 + 12


async def test_rsoc_reserved_reporting_options() -> None:
    r = await run(make_lu(), rsoc(4))
    assert sense3(r) == (5, 0x24, 0) and field_pointer(r) == (True, 2, 2)
    assert parse_rsoc(rsoc(2, 0x9E, 0x10, 99, True)).service_action == 0x10


# --- REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS ----------------------------------------------


def rstmf(alloc: int = 255, repd: bool = False) -> bytes:
    return struct.pack(">BBBxxxIxB", 0xA3, 0x0D, 0x80 if repd else 0, alloc, 0)


async def test_rstmf_reports_what_the_iscsi_layer_answers() -> None:
    lu = make_lu()
    d = bytes((await run(lu, rstmf())).data)
    assert len(d) == 4
    # ABORT TASK SET, ABORT TASK, CLEAR ACA, CLEAR TASK SET, LUN RESET, TARGET RESET
    assert d[0] == 0x80 | 0x40 | 0x20 | 0x10 | 0x08 | 0x02
    assert d[1] == 0  # no QUERY TASK / QUERY TASK SET / QUERY ASYNC EVENT / I_T NEXUS RESET
    d = bytes((await run(lu, rstmf(repd=True))).data)
    assert len(d) == 16 and d[3] == 0x0C
    assert bytes((await run(lu, rstmf(alloc=1))).data) == d[:1]


def test_rstmf_matches_the_session_tmf_handler() -> None:
    # The functions the iSCSI layer answers with "not supported" are exactly those not
    # reported; this reads session.py's TMF table rather than trusting a comment.
    import inspect

    from pyscsit import session

    src = inspect.getsource(session.Connection._tmf)
    for name in ("ABORT_TASK", "ABORT_TASK_SET", "CLEAR_TASK_SET", "LOGICAL_UNIT_RESET",
                 "TARGET_WARM_RESET", "TARGET_COLD_RESET", "CLEAR_ACA"):
        assert f"TmfFunction.{name}" in src
    for name in ("QUERY_TASK", "I_T_NEXUS_RESET", "QUERY_ASYNC"):
        assert f"TmfFunction.{name}" not in src


# --- REPORT TARGET PORT GROUPS + TPGS ---------------------------------------------------------


def rtpg(alloc: int = 1024, fmt: int = 0) -> bytes:
    return struct.pack(">BBxxxxIxB", 0xA3, (fmt << 5) | 0x0A, alloc, 0)


async def test_rtpg_one_active_optimized_group_matching_vpd83() -> None:
    lu = make_lu()
    d = bytes((await run(lu, rtpg())).data)
    assert struct.unpack(">I", d[:4])[0] == len(d) - 4
    aas, sup, group, count = struct.unpack(">BBHxxxB", d[4:12])
    assert aas & 0x0F == 0 and sup == 0x01 and group == 1 and count == 1
    assert struct.unpack(">xxH", d[12:16])[0] == NX.relative_port
    # VPD 0x83 port group designator (type 5) names the same group
    v = bytes((await run(lu, bytes((0x12, 1, 0x83, 4, 0, 0)))).data)
    assert b"\x95\x00\x04\x00\x00\x00\x01" in v  # PIV|port assoc|type 5, group 1


async def test_rtpg_extended_header_and_every_port_seen() -> None:
    lu = make_lu()
    await run(lu, TUR, nexus=NX2)
    d = bytes((await run(lu, rtpg(fmt=1))).data)
    assert struct.unpack(">I", d[:4])[0] == len(d) - 4 and d[4] == 0x10
    assert d[8 + 7] == 2  # both relative ports
    assert bytes((await run(lu, rtpg(alloc=5, fmt=1))).data) == d[:5]
    assert sense3(await run(lu, rtpg(fmt=2))) == (5, 0x24, 0)


async def test_standard_inquiry_claims_implicit_alua() -> None:
    d = bytes((await run(make_lu(), bytes((0x12, 0, 0, 0, 96, 0)))).data)
    assert (d[5] >> 4) & 0x03 == 0b01  # TPGS: implicit


# --- VPD 0x86 -------------------------------------------------------------------------------


async def test_vpd_extended_inquiry() -> None:
    lu = make_lu()
    pages = bytes((await run(lu, bytes((0x12, 1, 0, 0, 255, 0)))).data)[4:]
    assert 0x86 in pages
    d = bytes((await run(lu, bytes((0x12, 1, 0x86, 0, 255, 0)))).data)
    assert d[1] == 0x86 and struct.unpack(">H", d[2:4])[0] == 0x3C and len(d) == 64
    assert d[4] & 0x38 == 0  # SPT: no protection types
    assert d[5] & 0x01 and d[6] & 0x01 and d[7] & 0x01  # SIMPSUP, V_SUP, LUICLR


# --- MODE SELECT ------------------------------------------------------------------------------


def ms6(page: int, pc: int = 0, dbd: bool = True, alloc: int = 255) -> bytes:
    return bytes((0x1A, 0x08 if dbd else 0, (pc << 6) | page, 0, alloc, 0))


def msel6(data: bytes, pf: bool = True, sp: bool = False) -> bytes:
    return bytes((0x15, (0x10 if pf else 0) | (1 if sp else 0), 0, 0, len(data), 0))


def msel10(data: bytes) -> bytes:
    return struct.pack(">BBxxxxxHB", 0x55, 0x10, len(data), 0)


async def current_page(lu: LogicalUnit, page: int) -> bytearray:
    d = bytes((await run(lu, ms6(page))).data)
    return bytearray(d[4:])


async def test_changeable_values_are_wce_d_sense_swp() -> None:
    lu = make_lu()
    cach = bytes((await run(lu, ms6(0x08, pc=1))).data)[4:]
    ctrl = bytes((await run(lu, ms6(0x0A, pc=1))).data)[4:]
    rw = bytes((await run(lu, ms6(0x01, pc=1))).data)[4:]
    assert cach[:2] == b"\x08\x12" and cach[2] == 0x04 and not any(cach[3:])
    assert ctrl[:2] == b"\x0a\x0a" and ctrl[2] == 0x04 and ctrl[4] == 0x08
    assert not any(ctrl[3:4] + ctrl[5:]) and not any(rw[2:])


async def test_wce_off_makes_every_write_write_through() -> None:
    lu = make_lu()
    backend = lu.backend
    assert isinstance(backend, RecordingBackend)
    await run(lu, rw10(0x2A, 0, 1), bytes(512))
    assert backend.fua == [False]
    page = await current_page(lu, 0x08)
    page[2] &= ~0x04
    r = await run(lu, msel6(bytes(4) + page), bytes(4) + page)
    assert r.status == Status.GOOD
    assert (await current_page(lu, 0x08))[2] & 0x04 == 0
    await run(lu, rw10(0x2A, 0, 1), bytes(512))
    assert backend.fua == [False, True]


async def test_d_sense_switches_sense_format() -> None:
    lu = make_lu()
    page = await current_page(lu, 0x0A)
    page[2] |= 0x04
    assert (await run(lu, msel6(bytes(4) + page), bytes(4) + page)).status == Status.GOOD
    r = await run(lu, read10(lu.num_blocks, 1))
    assert r.sense[0] == 0x72 and sense3(r) == (5, 0x21, 0)


async def test_swp_write_protects_and_mode_sense_reports_it() -> None:
    lu = make_lu()
    page = await current_page(lu, 0x0A)
    page[4] |= 0x08
    assert (await run(lu, msel6(bytes(4) + page), bytes(4) + page)).status == Status.GOOD
    assert bytes((await run(lu, ms6(0x0A))).data)[2] & 0x80  # WP in the header
    assert sense3(await run(lu, rw10(0x2A, 0, 1), bytes(512))) == (7, 0x27, 0x02)
    assert sense3(await run(lu, rw16(0x8B, 0, 1), bytes(512))) == (7, 0x27, 0x02)
    assert (await run(lu, read10(0, 1))).status == Status.GOOD
    page[4] &= ~0x08
    assert (await run(lu, msel6(bytes(4) + page), bytes(4) + page)).status == Status.GOOD
    assert (await run(lu, rw10(0x2A, 0, 1), bytes(512))).status == Status.GOOD


async def test_mode_select_raises_unit_attention_for_other_nexuses_only() -> None:
    lu = make_lu()
    await run(lu, TUR, nexus=NX2)
    page = await current_page(lu, 0x08)
    # nothing changes: no unit attention for anyone
    assert (await run(lu, msel6(bytes(4) + page), bytes(4) + page)).status == Status.GOOD
    assert (await run(lu, TUR, nexus=NX2)).status == Status.GOOD
    page[2] ^= 0x04
    assert (await run(lu, msel6(bytes(4) + page), bytes(4) + page)).status == Status.GOOD
    assert (await run(lu, TUR)).status == Status.GOOD
    assert sense3(await run(lu, TUR, nexus=NX2)) == (6, 0x2A, 0x01)
    assert (await run(lu, TUR, nexus=NX2)).status == Status.GOOD


async def test_mode_select10_with_block_descriptor() -> None:
    lu = make_lu()
    page = await current_page(lu, 0x08)
    page[2] &= ~0x04
    bd = struct.pack(">IB", lu.num_blocks, 0) + (512).to_bytes(3, "big")
    data = struct.pack(">HBBBBH", 0, 0, 0, 0, 0, 8) + bd + page
    assert (await run(lu, msel10(data), data)).status == Status.GOOD
    assert not lu.modes.wce
    bad = data[:8] + struct.pack(">IB", 0, 0) + (4096).to_bytes(3, "big") + page
    r = await run(lu, msel10(bad), bad)
    assert sense3(r) == (5, 0x26, 0) and field_pointer(r)[:2] == (False, 13)


async def test_mode_select_errors() -> None:
    lu = make_lu()
    page = bytes(await current_page(lu, 0x0A))
    good = bytes(4) + page
    # SP=1: saved pages are not supported
    r = await run(lu, msel6(good, sp=True), good)
    assert sense3(r) == (5, 0x24, 0) and field_pointer(r) == (True, 1, 0)
    # a field MODE SENSE does not call changeable (QUEUE ALGORITHM MODIFIER)
    bad = bytearray(good)
    bad[4 + 3] = 0x00
    r = await run(lu, msel6(bytes(bad)), bytes(bad))
    assert sense3(r) == (5, 0x26, 0) and field_pointer(r) == (False, 7, 4)
    # page length mismatch, unsupported page, subpage format
    for i, v, where in ((5, 0x0B, 5), (4, 0x19, 4), (4, 0x4A, 4)):
        bad = bytearray(good)
        bad[i] = v
        r = await run(lu, msel6(bytes(bad)), bytes(bad))
        assert sense3(r) == (5, 0x26, 0) and field_pointer(r)[:2] == (False, where)
    # truncated page or header: PARAMETER LIST LENGTH ERROR
    assert sense3(await run(lu, msel6(good[:-1]), good[:-1])) == (5, 0x1A, 0)
    assert sense3(await run(lu, msel6(good[:3]), good[:3])) == (5, 0x1A, 0)
    # an empty list is fine; nothing was applied by any failure above
    assert (await run(lu, msel6(b""))).status == Status.GOOD
    assert lu.modes == modes.ModeState()


def test_parse_mode_parameters_is_all_or_nothing() -> None:
    state = modes.ModeState()
    cach = modes.PAGES[0x08].page(state, modes.PC_CURRENT)
    ctrl = bytearray(modes.PAGES[0x0A].page(state, modes.PC_CURRENT))
    ctrl[5] = 0x40  # TAS: not changeable
    with pytest.raises(InvalidFieldInParameterList):
        modes.parse_mode_parameters(bytes(4) + cach + ctrl, False, state,
                                    num_blocks=8, block_size=512)
    with pytest.raises(ParameterListLengthError):
        modes.parse_mode_parameters(bytes(4) + cach[:1], False, state,
                                    num_blocks=8, block_size=512)
    assert state == modes.ModeState()


# --- read-only LUs ----------------------------------------------------------------------------


async def test_read_only_lu_refuses_every_write_type_command() -> None:
    lu = make_lu(read_only=True)
    writers = [op for op in registry.all_ops() if op.writes_medium]
    assert {0x2A, 0x2E, 0x8B} <= {op.opcode for op in writers}
    for op in writers:
        cdb = bytearray(op.cdb_len)
        cdb[0] = op.opcode
        if op.service_action is not None:
            cdb[1] = op.service_action
        r = await run(lu, bytes(cdb), bytes(512))
        assert sense3(r) == (7, 0x27, 0x00), op.name
    assert bytes((await run(lu, ms6(0x3F))).data)[2] & 0x80  # MODE SENSE WP
    assert (await run(lu, read10(0, 1))).status == Status.GOOD


# --- WRITE AND VERIFY ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 12, 16])
async def test_write_and_verify_writes_through(size: int) -> None:
    lu = make_lu()
    data = bytes(range(256)) * 4
    if size == 10:
        cdb = rw10(0x2E, 3, 2, 0x02)
    elif size == 12:
        cdb = struct.pack(">BBIIBB", 0xAE, 0x02, 3, 2, 0, 0)
    else:
        cdb = rw16(0x8E, 3, 2, 0x02)
    r = await run(lu, cdb, data)
    assert r.status == Status.GOOD and r.transfer_length == 1024
    assert bytes((await run(lu, read10(3, 2))).data) == data
    backend = lu.backend
    assert isinstance(backend, RecordingBackend) and backend.fua == [True]


async def test_write_and_verify_field_checks() -> None:
    lu = make_lu()
    one = bytes(512)
    for b1, bit in ((0x04, 2), (0x06, 2), (0x20, 7)):  # BYTCHK 10b/11b reserved, WRPROTECT
        r = await run(lu, rw10(0x2E, 0, 1, b1), one)
        assert sense3(r) == (5, 0x24, 0) and field_pointer(r) == (True, 1, bit)
    assert sense3(await run(lu, rw10(0x2E, lu.num_blocks - 1, 2), bytes(1024))) == (5, 0x21, 0)
    assert sense3(await run(lu, rw10(0x2E, 0xFFFFFFFF, 1), one)) == (5, 0x21, 0)
    assert (await run(lu, rw10(0x2E, 0, 0))).status == Status.GOOD
    assert sense3(await run(lu, rw10(0x2E, lu.num_blocks + 1, 0))) == (5, 0x21, 0)
    assert (await run(lu, rw10(0x2E, lu.num_blocks - 1, 1, 0x10), one)).status == Status.GOOD


# --- ORWRITE ------------------------------------------------------------------------------


async def test_orwrite_ors_data_into_the_medium() -> None:
    lu = make_lu()
    await run(lu, rw10(0x2A, 0, 2), b"\x0f" * 1024)
    r = await run(lu, rw16(0x8B, 0, 2), b"\xa0" * 512 + b"\x00" * 512)
    assert r.status == Status.GOOD and r.transfer_length == 1024
    assert bytes((await run(lu, read10(0, 2))).data) == b"\xaf" * 512 + b"\x0f" * 512
    last = lu.num_blocks - 1
    assert (await run(lu, rw16(0x8B, last, 1, 0x18), b"\xff" * 512)).status == Status.GOOD
    assert sense3(await run(lu, rw16(0x8B, last, 2), bytes(1024))) == (5, 0x21, 0)
    assert sense3(await run(lu, rw16(0x8B, 0, 1, 0x40), bytes(512))) == (5, 0x24, 0)
    assert (await run(lu, rw16(0x8B, 0, 0))).status == Status.GOOD


# --- PRE-FETCH ----------------------------------------------------------------------------


async def test_pre_fetch_good_inside_lba_out_of_range_outside() -> None:
    lu = make_lu()
    n = lu.num_blocks
    for immed in (0, 0x02):
        assert (await run(lu, rw10(0x34, n - 4, 4, immed))).status == Status.GOOD
        assert (await run(lu, rw16(0x90, 0, 256, immed))).status == Status.GOOD
    assert (await run(lu, rw10(0x34, 0, 0))).status == Status.GOOD
    for cdb in (rw10(0x34, n - 1, 2), rw10(0x34, n + 1, 0), rw16(0x90, 2**64 - 1, 1)):
        assert sense3(await run(lu, cdb)) == (5, 0x21, 0)
    assert parse_block_cdb(rw16(0x90, 7, 9, 0x02)).blocks == 9


# --- READ DEFECT DATA ---------------------------------------------------------------------


async def test_read_defect_data_returns_empty_lists() -> None:
    lu = make_lu()
    cdb10 = struct.pack(">BxBxxxxHB", 0x37, 0x18 | 0x05, 32, 0)
    assert bytes((await run(lu, cdb10)).data) == b"\x00\x1d\x00\x00"
    cdb10 = struct.pack(">BxBxxxxHB", 0x37, 0x00, 32, 0)
    assert bytes((await run(lu, cdb10)).data) == b"\x00\x00\x00\x00"
    cdb12 = struct.pack(">BBIIxB", 0xB7, 0x10 | 0x03, 0, 32, 0)
    assert bytes((await run(lu, cdb12)).data) == b"\x00\x13\x00\x00\x00\x00\x00\x00"
    cdb12 = struct.pack(">BBIIxB", 0xB7, 0x10, 0, 2, 0)
    assert bytes((await run(lu, cdb12)).data) == b"\x00\x10"
    r = await run(lu, struct.pack(">BxBxxxxHB", 0x37, 0x07, 32, 0))
    assert sense3(r) == (5, 0x24, 0) and field_pointer(r) == (True, 2, 2)


# --- PREVENT ALLOW MEDIUM REMOVAL ---------------------------------------------------------


async def test_prevent_allow_accepted_on_a_fixed_disk() -> None:
    lu = make_lu()
    for prevent in (1, 0):
        assert (await run(lu, bytes((0x1E, 0, 0, 0, prevent, 0)))).status == Status.GOOD
    assert sense3(await run(lu, bytes((0x1E, 0, 0, 0, 2, 0)))) == (5, 0x24, 0)


# --- 4096-byte logical blocks ---------------------------------------------------------------


async def test_4096_byte_blocks_everywhere() -> None:
    lu = make_lu(block_size=4096)
    assert lu.num_blocks == SIZE // 4096
    cap = bytes((await run(lu, bytes((0x25,)) + bytes(9))).data)
    assert struct.unpack(">II", cap) == (lu.num_blocks - 1, 4096)
    d = bytes((await run(lu, ms6(0x08, dbd=False))).data)
    assert d[3] == 8 and int.from_bytes(d[9:12], "big") == 4096
    data = bytes(range(256)) * 32
    assert lu.inspect(rw10(0x2E, 1, 2)).transfer_length == 8192
    assert (await run(lu, rw10(0x2E, 1, 2, 0x02), data)).status == Status.GOOD
    assert (await run(lu, rw16(0x8B, 1, 1), b"\xff" * 4096)).status == Status.GOOD
    back = bytes((await run(lu, read10(1, 2))).data)
    assert back == b"\xff" * 4096 + data[4096:]
    assert sense3(await run(lu, rw10(0x34, lu.num_blocks, 1))) == (5, 0x21, 0)
    # a short Data-Out writes only the whole blocks that arrived
    r = await run(lu, rw10(0x2E, 0, 2), b"\x11" * 6000)
    assert r.status == Status.GOOD and r.transfer_length == 8192
    assert bytes((await run(lu, read10(0, 1))).data) == b"\x11" * 4096


# --- START STOP UNIT ------------------------------------------------------------------------


async def test_start_stop_unit_power_conditions() -> None:
    lu = make_lu()
    for pc in (0x0, 0x1, 0x2, 0x3, 0x7, 0xA, 0xB):
        r = await run(lu, bytes((0x1B, 1, 0, 0, (pc << 4) | 0x01, 0)))
        assert r.status == Status.GOOD, pc
    for pc in (0x4, 0x6, 0x8, 0xF):
        r = await run(lu, bytes((0x1B, 0, 0, 0, pc << 4, 0)))
        assert sense3(r) == (5, 0x24, 0) and field_pointer(r) == (True, 4, 7)
    # LOEJ on a fixed disk ejects nothing: reads still work afterwards
    assert (await run(lu, bytes((0x1B, 0, 0, 0, 0x02, 0)))).status == Status.GOOD
    assert (await run(lu, read10(0, 1))).status == Status.GOOD


async def test_reserved_cdb_bits_are_refused_with_a_field_pointer() -> None:
    lu = make_lu()
    cases = [
        (rw10(0x2E, 0, 0, 0x08), 1, 3),  # WRITE AND VERIFY(10) byte 1 bit 3
        (rw10(0x34, 0, 0, 0x01), 1, 0),  # PRE-FETCH(10) byte 1 bit 0
        (rw16(0x8B, 0, 0, 0x04), 1, 2),  # ORWRITE(16) byte 1 bit 2
        (struct.pack(">BBBxxxxHB", 0x37, 0x01, 0, 32, 0), 1, 0),  # READ DEFECT DATA(10)
        (bytes((0x15, 0x02, 0, 0, 0, 0)), 1, 1),  # MODE SELECT(6) byte 1 bit 1
        (bytes((0x1E, 0, 0, 0, 0x04, 0)), 4, 2),  # PREVENT ALLOW byte 4 bit 2
        (rsoc()[:2] + bytes((0x40,)) + rsoc()[3:], 2, 6),  # RSOC byte 2 bit 6
    ]
    for cdb, byte, bit in cases:
        r = await run(lu, cdb)
        assert sense3(r) == (5, 0x24, 0), cdb.hex()
        assert field_pointer(r) == (True, byte, bit), cdb.hex()
