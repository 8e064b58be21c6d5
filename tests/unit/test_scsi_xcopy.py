"""EXTENDED COPY (LID1), RECEIVE COPY RESULTS and VPD 0x8F: what an ESXi clone sees."""

from __future__ import annotations

import struct

import pytest

from pyscsit.backends.memory import MemoryBackend
from pyscsit.scsi import vpd, xcopy
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Nexus, ScsiCommand, ScsiResult, Status
from pyscsit.scsi.xcopy import LuDirectory, parse_copy_list
from tests.support.scsi import read16, sense_of, write16

ESX = Nexus("iqn.1998-01.com.vmware:esx1", 0x23D000000001, "iqn.2024-01.org.pyscsit:t1")
OTHER = Nexus("iqn.1998-01.com.vmware:esx2", 0x23D000000002, "iqn.2024-01.org.pyscsit:t1")
BLOCKS = 8192
BS = 512


def make_lu(blocks: int = BLOCKS, bs: int = BS, **kw: object) -> LogicalUnit:
    return LogicalUnit(MemoryBackend(blocks * bs), LuIdentity.random(), block_size=bs, **kw)  # type: ignore[arg-type]


# --- building parameter lists the way ESXi and libiscsi do ------------------------------------


def cscd(lu: LogicalUnit, *, dtype: int = 0xE4, lu_id_type: int = 0, periph: int = 0,
         naa: bytes | None = None, block_len: int | None = None) -> bytes:
    d = bytearray(32)
    d[0] = dtype
    d[1] = (lu_id_type << 6) | periph
    desig = lu.identity.naa if naa is None else naa
    d[4], d[5], d[7] = 0x01, 0x03, len(desig)  # binary, LU association, NAA
    d[8 : 8 + len(desig)] = desig
    d[29:32] = (lu.block_size if block_len is None else block_len).to_bytes(3, "big")
    return bytes(d)


def seg(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int, *, dtype: int = 0x02,
        dlen: int = 0x18) -> bytes:
    return struct.pack(">BBHHHxxHQQ", dtype, 0, dlen, src, dst, blocks, src_lba, dst_lba)


def plist(cscds: list[bytes], segs: list[bytes], *, list_id: int = 1, usage: int = 0,
          inline: int = 0) -> bytes:
    c, s = b"".join(cscds), b"".join(segs)
    head = struct.pack(">BBH4xII", list_id, usage << 3, len(c), len(s), inline)
    return head + c + s


def xcopy_cdb(n: int) -> bytes:
    return struct.pack(">BB8xIBB", 0x83, 0x00, n, 0, 0)


def rcr_cdb(sa: int, list_id: int = 0, alloc: int = 1024) -> bytes:
    return struct.pack(">BBB7xIBB", 0x84, sa, list_id, alloc, 0, 0)


async def run(lu: LogicalUnit, cdb: bytes, data: bytes | None = None,
              nexus: Nexus = ESX) -> ScsiResult:
    mv = memoryview(data) if data is not None else None
    return await lu.execute(ScsiCommand(cdb, nexus, data_out=mv, expected_length=len(data or b"")))


async def extended_copy(lu: LogicalUnit, data: bytes, nexus: Nexus = ESX) -> ScsiResult:
    return await run(lu, xcopy_cdb(len(data)), data, nexus)


def param_ptr(r: ScsiResult) -> int:
    sks = r.sense[15]
    assert sks & 0x80 and not sks & 0x40, "SKSV set, C/D clear: a parameter list field"
    return (r.sense[16] << 8) | r.sense[17]


async def write(lu: LogicalUnit, lba: int, data: bytes, nexus: Nexus = ESX) -> None:
    cdb = write16(lba, len(data) // lu.block_size)
    assert (await run(lu, cdb, data, nexus)).status == Status.GOOD


async def read(lu: LogicalUnit, lba: int, n: int) -> bytes:
    r = await run(lu, read16(lba, n))
    assert r.status == Status.GOOD
    return bytes(r.data)


def pattern(n_blocks: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n_blocks * BS))


# --- copies that work ---------------------------------------------------------------------------


async def test_clone_within_one_lu() -> None:
    lu = make_lu()
    src = pattern(2048)
    await write(lu, 0, src)
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 2048, 0, BLOCKS - 2048)]))
    assert r.status == Status.GOOD
    assert await read(lu, BLOCKS - 2048, 2048) == src


async def test_several_segments_and_targets_in_one_command() -> None:
    lu = make_lu()
    await write(lu, 0, pattern(4, 1) + pattern(4, 2))
    data = plist([cscd(lu), cscd(lu)], [seg(0, 1, 4, 0, 100), seg(1, 0, 4, 4, 200)])
    assert (await extended_copy(lu, data)).status == Status.GOOD
    assert await read(lu, 100, 4) == pattern(4, 1)
    assert await read(lu, 200, 4) == pattern(4, 2)


async def test_overlapping_copy_upwards_behaves_like_memmove() -> None:
    lu = make_lu()
    chunk = xcopy.COPY_CHUNK_BYTES // BS
    n = chunk * 2 + 3  # several chunks, so the copy order matters
    src = pattern(n)
    await write(lu, 10, src)
    data = plist([cscd(lu)], [seg(0, 0, n, 10, 10 + chunk // 2)])
    assert (await extended_copy(lu, data)).status == Status.GOOD
    assert await read(lu, 10 + chunk // 2, n) == src


async def test_copy_to_another_lu_of_the_server() -> None:
    a, b = make_lu(), make_lu()
    directory = LuDirectory()
    directory.add(a)
    directory.add(b)
    await write(a, 0, pattern(16))
    await run(b, bytes(6))  # ESXi has scanned LU b (TEST UNIT READY over its nexus)
    data = plist([cscd(a), cscd(b)], [seg(0, 1, 16, 0, 32)])
    assert (await extended_copy(a, data)).status == Status.GOOD
    assert await read(b, 32, 16) == pattern(16)


async def test_an_lu_the_initiator_never_used_is_not_reachable() -> None:
    a, b = make_lu(), make_lu()
    directory = LuDirectory()
    directory.add(a)
    directory.add(b)
    await run(b, bytes(6), nexus=OTHER)  # some other host uses b; this one never did
    r = await extended_copy(a, plist([cscd(a), cscd(b)], [seg(0, 1, 1, 0, 0)]))
    assert sense_of(r) == (0x0A, 0x0D, 0x02)  # COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE
    assert await read(b, 0, 1) == bytes(BS)


async def test_unknown_designator_is_not_reachable() -> None:
    lu = make_lu()
    r = await extended_copy(lu, plist([cscd(lu, naa=LuIdentity.random().naa)],
                                      [seg(0, 0, 1, 0, 1)]))
    assert sense_of(r) == (0x0A, 0x0D, 0x02)


async def test_zero_length_parameter_list_is_good() -> None:
    assert (await run(make_lu(), xcopy_cdb(0))).status == Status.GOOD


async def test_zero_block_segment_moves_nothing() -> None:
    lu = make_lu()
    await write(lu, 0, pattern(1))
    assert (await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 0, 0, 5)]))).status == 0
    assert await read(lu, 5, 1) == bytes(BS)


async def test_reserved_lu_id_type_is_ignored_as_spc4_says() -> None:
    lu = make_lu()
    await write(lu, 0, pattern(2))
    r = await extended_copy(lu, plist([cscd(lu, lu_id_type=3)], [seg(0, 0, 2, 0, 50)]))
    assert r.status == Status.GOOD and await read(lu, 50, 2) == pattern(2)


# --- parameter list errors ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 29])
async def test_truncated_parameter_list_is_a_length_error(cut: int) -> None:
    lu = make_lu()
    data = plist([cscd(lu)], [seg(0, 0, 1, 0, 1)])
    assert sense_of(await extended_copy(lu, data[:-cut])) == (5, 0x1A, 0x00)
    assert sense_of(await extended_copy(lu, data[:15])) == (5, 0x1A, 0x00)


async def test_descriptor_limits_match_operating_parameters() -> None:
    lu = make_lu()
    r = await run(lu, rcr_cdb(0x03))
    max_cscd, max_seg, max_list = struct.unpack_from(">HHI", r.data, 8)
    one_seg = seg(0, 0, 1, 0, 1)
    r = await extended_copy(lu, plist([cscd(lu)] * (max_cscd + 1), [one_seg]))
    assert sense_of(r) == (5, 0x26, 0x06)  # TOO MANY TARGET DESCRIPTORS
    assert param_ptr(r) == 16 + 32 * max_cscd
    r = await extended_copy(lu, plist([cscd(lu)], [one_seg] * (max_seg + 1)))
    assert sense_of(r) == (5, 0x26, 0x08)  # TOO MANY SEGMENT DESCRIPTORS
    n_seg = (max_list - 32) // 28 + 1
    r = await extended_copy(lu, plist([cscd(lu)], [one_seg] * n_seg))
    assert sense_of(r) == (5, 0x1A, 0x00)  # above MAXIMUM DESCRIPTOR LIST LENGTH
    at_limit = plist([cscd(lu)] * max_cscd, [one_seg] * max_seg)
    assert (await extended_copy(lu, at_limit)).status == Status.GOOD


async def test_unsupported_descriptor_types() -> None:
    lu = make_lu()
    r = await extended_copy(lu, plist([cscd(lu, dtype=0xE0)], [seg(0, 0, 1, 0, 1)]))
    assert sense_of(r) == (5, 0x26, 0x07) and param_ptr(r) == 16
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 1, 0, 1, dtype=0x03)]))
    assert sense_of(r) == (5, 0x26, 0x09) and param_ptr(r) == 48


async def test_bad_fields_point_into_the_parameter_list() -> None:
    lu = make_lu()
    r = await extended_copy(lu, plist([cscd(lu, periph=1)], [seg(0, 0, 1, 0, 1)]))
    assert sense_of(r) == (5, 0x26, 0x00) and param_ptr(r) == 17  # tape is not a disk
    r = await extended_copy(lu, plist([cscd(lu, block_len=4096)], [seg(0, 0, 1, 0, 1)]))
    assert sense_of(r) == (5, 0x26, 0x00) and param_ptr(r) == 16 + 29
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 1, 0, 1)], inline=4) + bytes(4))
    assert sense_of(r) == (5, 0x26, 0x00) and param_ptr(r) == 12
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 1, 0, 1)], usage=1))
    assert sense_of(r) == (5, 0x26, 0x00) and param_ptr(r) == 1


@pytest.mark.parametrize(("src_lba", "dst_lba"), [(0, BLOCKS - 1), (BLOCKS - 1, 0)])
async def test_segment_beyond_the_end_aborts_before_copying(src_lba: int, dst_lba: int) -> None:
    lu = make_lu()
    await write(lu, 0, pattern(2))
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 1, 0, 100),
                                                   seg(0, 0, 2, src_lba, dst_lba)]))
    assert sense_of(r)[0] == 0x0A  # COPY ABORTED
    assert await read(lu, 100, 1) == bytes(BS), "checked before any data moved"


async def test_segment_naming_a_missing_cscd_aborts() -> None:
    lu = make_lu()
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 1, 1, 0, 1)]))
    assert sense_of(r) == (0x0A, 0x0D, 0x02)


async def test_read_only_destination_is_write_protected() -> None:
    lu = make_lu(read_only=True)
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 1, 0, 1)]))
    assert sense_of(r) == (7, 0x27, 0x00)


# --- RECEIVE COPY RESULTS -----------------------------------------------------------------------


async def test_copy_status_after_a_copy() -> None:
    lu = make_lu()
    r = await run(lu, rcr_cdb(0x00, list_id=1))
    assert sense_of(r) == (5, 0x24, 0x00)  # no copy with that list identifier yet
    await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 8, 0, 100), seg(0, 0, 2, 0, 200)]))
    r = await run(lu, rcr_cdb(0x00, list_id=1))
    assert r.status == Status.GOOD and len(r.data) == 12
    avail, state, segments, units, count = struct.unpack(">IBHBI", r.data)
    assert (avail, state, segments, units, count) == (8, 0x01, 2, 0x00, 10 * BS)
    # held per I_T nexus: another host does not see this host's list identifier
    assert sense_of(await run(lu, rcr_cdb(0x00, list_id=1), nexus=OTHER)) == (5, 0x24, 0)


async def test_no_list_identifier_usage_holds_nothing() -> None:
    lu = make_lu()
    data = plist([cscd(lu)], [seg(0, 0, 1, 0, 1)], list_id=9, usage=0b11)
    assert (await extended_copy(lu, data)).status == Status.GOOD
    assert sense_of(await run(lu, rcr_cdb(0x00, list_id=9))) == (5, 0x24, 0x00)


async def test_failed_copy_reports_completed_with_errors() -> None:
    lu = make_lu()
    backend = lu.backend

    async def broken(offset: int, data: memoryview | bytes, fua: bool = False) -> None:
        from pyscsit.backends.base import BackendError
        raise BackendError("disk on fire")

    backend.write = broken  # type: ignore[method-assign]
    r = await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 1, 0, 1)], list_id=4))
    assert sense_of(r) == (0x0A, 0x0C, 0x00)  # COPY ABORTED carrying WRITE ERROR
    r = await run(lu, rcr_cdb(0x00, list_id=4))
    assert r.data[4] == 0x02 and struct.unpack_from(">H", r.data, 5)[0] == 0


async def test_operating_parameters() -> None:
    lu = make_lu()
    r = await run(lu, rcr_cdb(0x03))
    d = bytes(r.data)
    assert struct.unpack_from(">I", d, 0)[0] == len(d) - 4
    assert struct.unpack_from(">HHIIII", d, 8) == (
        xcopy.MAX_CSCD_DESCRIPTORS, xcopy.MAX_SEGMENT_DESCRIPTORS,
        xcopy.MAX_DESCRIPTOR_LIST_LENGTH, 0xFFFF * BS, 0, 0)
    assert d[37] == 9  # data segment granularity: one 512-byte block
    assert d[43] == 2 and set(d[44:46]) == {0x02, 0xE4}
    assert len((await run(lu, rcr_cdb(0x03, alloc=10))).data) == 10  # allocation length


async def test_unsupported_rcr_service_action() -> None:
    r = await run(make_lu(), rcr_cdb(0x01))  # RECEIVE DATA: nothing is ever held for it
    assert sense_of(r) == (5, 0x24, 0x00)


# --- VPD 0x8F -----------------------------------------------------------------------------------


def tpc_descriptors(page: bytes) -> dict[int, bytes]:
    assert page[1] == 0x8F and struct.unpack_from(">H", page, 2)[0] == len(page) - 4
    out, off = {}, 4
    while off < len(page):
        dtype, dlen = struct.unpack_from(">HH", page, off)
        assert dlen % 4 == 0
        out[dtype] = page[off + 4 : off + 4 + dlen]
        off += 4 + dlen
    assert off == len(page)
    return out


async def test_third_party_copy_vpd_agrees_with_what_is_enforced() -> None:
    lu = make_lu()
    assert 0x8F in vpd.vpd_page(lu, ESX, 0x00)[4:]
    descs = tpc_descriptors(vpd.vpd_page(lu, ESX, 0x8F))
    cmds = descs[0x0001]
    listed = {}
    off = 1
    while off < 1 + cmds[0]:
        op, n = cmds[off], cmds[off + 1]
        listed[op] = set(cmds[off + 2 : off + 2 + n])
        off += 2 + n
    assert listed == {0x83: {0x00}, 0x84: {0x00, 0x03}}
    assert struct.unpack_from(">HHII", descs[0x0004], 4) == (
        xcopy.MAX_CSCD_DESCRIPTORS, xcopy.MAX_SEGMENT_DESCRIPTORS,
        xcopy.MAX_DESCRIPTOR_LIST_LENGTH, 0)
    sup = descs[0x0008]
    assert set(sup[1 : 1 + sup[0]]) == {0x02, 0xE4}
    assert struct.unpack_from(">I", descs[0x8001], 8)[0] == 0xFFFF * BS  # max segment length


def test_parse_copy_list_is_pure() -> None:
    lu = make_lu()
    c = parse_copy_list(plist([cscd(lu)], [seg(0, 0, 3, 7, 9)], list_id=5))
    assert c.list_id == 5 and c.held
    assert c.cscds[0].designator == lu.identity.naa and c.cscds[0].block_length == BS
    assert (c.segments[0].blocks, c.segments[0].src_lba, c.segments[0].dst_lba) == (3, 7, 9)


async def test_config_lets_a_clone_cross_luns_and_targets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pyscsit.config import build_model, parse_config

    cfg = parse_config({
        "state_dir": str(tmp_path / "state"),
        "portals": ["127.0.0.1:3260"],
        "targets": [
            {"iqn": "iqn.2024-01.org.pyscsit:a", "auth": "none",
             "luns": {0: {"backend": "file", "path": str(tmp_path / "a0.img"), "size": "4MiB"},
                      1: {"backend": "file", "path": str(tmp_path / "a1.img"), "size": "4MiB"}}},
            {"iqn": "iqn.2024-01.org.pyscsit:b", "auth": "none",
             "luns": {0: {"backend": "file", "path": str(tmp_path / "b0.img"), "size": "4MiB"}}},
        ],
    }, source="test", base_dir=tmp_path)
    model = build_model(cfg)
    try:
        a0, a1 = (model.targets["iqn.2024-01.org.pyscsit:a"].luns[n] for n in (0, 1))
        b0 = model.targets["iqn.2024-01.org.pyscsit:b"].luns[0]
        await write(a0, 0, pattern(8))
        for lu in (a1, b0):
            await run(lu, bytes(6))  # the host has logged in to both targets and scanned
        data = plist([cscd(a0), cscd(a1), cscd(b0)],
                     [seg(0, 1, 8, 0, 16), seg(0, 2, 8, 0, 24)])
        assert (await extended_copy(a0, data)).status == Status.GOOD
        assert await read(a1, 16, 8) == pattern(8)
        assert await read(b0, 24, 8) == pattern(8)
    finally:
        for t in model.targets.values():
            for lu in t.luns.values():
                lu.backend.close()


async def test_held_results_go_with_their_nexus() -> None:
    lu = make_lu()
    await extended_copy(lu, plist([cscd(lu)], [seg(0, 0, 1, 0, 1)], list_id=3))
    assert (await run(lu, rcr_cdb(0x00, list_id=3))).status == Status.GOOD
    lu.nexus_lost(ESX)  # logout: a new login with the same ISID starts clean
    assert sense_of(await run(lu, rcr_cdb(0x00, list_id=3))) == (5, 0x24, 0x00)
