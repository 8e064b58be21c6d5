"""The wire codec: golden bytes laid out by hand from RFC 7143 §11, round trips both ways,
byte-at-a-time framing, digests, and arbitrary input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyscsit import pdu as P
from pyscsit.digest import crc32c, digest


def bhs(*fields: tuple[int, bytes]) -> bytes:
    """48 zero bytes with ``bytes`` placed at each offset."""
    b = bytearray(48)
    for off, val in fields:
        b[off: off + len(val)] = val
    return bytes(b)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


GOLDEN: list[tuple[P.Pdu, bytes]] = [
    (P.NopOut(immediate=True, itt=0x11223344, ttt=0xFFFFFFFF, cmd_sn=7, exp_stat_sn=9,
              lun=0),
     bhs((0, b"\x40\x80"), (16, u32(0x11223344)), (20, u32(0xFFFFFFFF)), (24, u32(7)),
         (28, u32(9)))),
    (P.ScsiCommandPdu(itt=1, read=True, attr=1, lun=0x0001000000000000, expected_length=4096,
                      cmd_sn=0x10, exp_stat_sn=0x20, cdb=bytes([0x28]) + bytes(15)),
     bhs((0, b"\x01\xc1"), (8, b"\x00\x01"), (16, u32(1)), (20, u32(4096)),
         (24, u32(0x10)), (28, u32(0x20)), (32, b"\x28"))),
    (P.TaskMgmtRequest(immediate=True, function=P.TmfFunction.ABORT_TASK, itt=5,
                       referenced_task_tag=3, cmd_sn=8, exp_stat_sn=2, ref_cmd_sn=6),
     bhs((0, b"\x42\x81"), (16, u32(5)), (20, u32(3)), (24, u32(8)), (28, u32(2)),
         (32, u32(6)))),
    (P.LoginRequest(final=True, csg=1, nsg=3, isid=0x400001370000, tsih=0, itt=0, cid=1,
                    cmd_sn=1, exp_stat_sn=0, data=b"a=b\0"),
     bhs((0, b"\x43\x87"), (7, b"\x04"), (8, bytes.fromhex("400001370000")),
         (20, b"\x00\x01"), (24, u32(1))) + b"a=b\0"),
    (P.DataOut(itt=9, ttt=0x77, data_sn=3, buffer_offset=1024, exp_stat_sn=4, data=b"xyz"),
     bhs((0, b"\x05\x80"), (7, b"\x03"), (16, u32(9)), (20, u32(0x77)), (28, u32(4)),
         (36, u32(3)), (40, u32(1024))) + b"xyz\0"),
    (P.LogoutRequest(immediate=True, reason=0, itt=4, cid=1, cmd_sn=5, exp_stat_sn=6),
     bhs((0, b"\x46\x80"), (16, u32(4)), (20, b"\x00\x01"), (24, u32(5)), (28, u32(6)))),
    (P.ScsiResponse(itt=1, status=2, underflow=True, residual=512, stat_sn=10,
                    exp_cmd_sn=11, max_cmd_sn=12, data=b"\x00\x02\x70\x00"),
     bhs((0, b"\x21\x82\x00\x02"), (7, b"\x04"), (16, u32(1)), (24, u32(10)),
         (28, u32(11)), (32, u32(12)), (44, u32(512))) + b"\x00\x02\x70\x00"),
    (P.DataIn(itt=1, final=True, has_status=True, status=0, data_sn=2, buffer_offset=8192,
              stat_sn=3, exp_cmd_sn=4, max_cmd_sn=5, data=b"\xaa" * 4),
     bhs((0, b"\x25\x81"), (7, b"\x04"), (16, u32(1)), (20, u32(0xFFFFFFFF)), (24, u32(3)),
         (28, u32(4)), (32, u32(5)), (36, u32(2)), (40, u32(8192))) + b"\xaa" * 4),
    (P.R2T(itt=2, ttt=0x1234, stat_sn=7, exp_cmd_sn=8, max_cmd_sn=9, r2t_sn=1,
           buffer_offset=65536, desired_length=262144),
     bhs((0, b"\x31\x80"), (16, u32(2)), (20, u32(0x1234)), (24, u32(7)), (28, u32(8)),
         (32, u32(9)), (36, u32(1)), (40, u32(65536)), (44, u32(262144)))),
    (P.LoginResponse(final=True, csg=1, nsg=3, isid=0x400001370000, tsih=0x12, itt=0,
                     stat_sn=1, exp_cmd_sn=1, max_cmd_sn=64, status_class=0),
     bhs((0, b"\x23\x87"), (8, bytes.fromhex("400001370000")), (14, b"\x00\x12"),
         (24, u32(1)), (28, u32(1)), (32, u32(64)))),
    (P.Reject(reason=P.RejectReason.PROTOCOL_ERROR, stat_sn=1, exp_cmd_sn=2, max_cmd_sn=3,
              data=bytes(48)),
     bhs((0, b"\x3f\x80\x04"), (7, b"\x30"), (16, u32(0xFFFFFFFF)), (24, u32(1)),
         (28, u32(2)), (32, u32(3))) + bytes(48)),
    (P.LogoutResponse(itt=4, response=0, stat_sn=1, exp_cmd_sn=2, max_cmd_sn=3, time2wait=2,
                      time2retain=20),
     bhs((0, b"\x26\x80"), (16, u32(4)), (24, u32(1)), (28, u32(2)), (32, u32(3)),
         (40, b"\x00\x02\x00\x14"))),
]


@pytest.mark.parametrize("pdu,wire", GOLDEN, ids=[type(p).__name__ for p, _ in GOLDEN])
def test_golden_encode(pdu: P.Pdu, wire: bytes) -> None:
    assert P.encode_bytes(pdu) == wire


@pytest.mark.parametrize("pdu,wire", GOLDEN, ids=[type(p).__name__ for p, _ in GOLDEN])
def test_golden_decode_byte_at_a_time(pdu: P.Pdu, wire: bytes) -> None:
    r = P.PduReader(max_data=1 << 20)
    got = None
    for i in range(len(wire)):
        assert got is None
        r.feed(wire[i: i + 1])
        got = r.next_pdu()
    assert got == pdu
    assert r.next_pdu() is None


def test_digests_are_crc32c_little_endian_on_the_wire() -> None:
    # RFC 3720 B.4: 32 bytes of zeros -> 0x8a9136aa, sent as aa 36 91 8a
    assert digest(bytes(32)) == bytes.fromhex("aa36918a")
    pdu = P.NopOut(immediate=True, itt=1, data=b"ping")
    wire = P.encode_bytes(pdu, header_digest=True, data_digest=True)
    assert wire[48:52] == struct.pack("<I", crc32c(wire[:48], 0))
    assert wire[52:56] == b"ping"
    assert wire[56:60] == struct.pack("<I", crc32c(b"ping", 0))


def test_data_digest_covers_padding() -> None:
    pdu = P.DataOut(itt=1, data=b"abcde")
    wire = P.encode_bytes(pdu, data_digest=True)
    assert wire[48:56] == b"abcde\0\0\0"
    assert wire[56:60] == struct.pack("<I", crc32c(b"abcde\0\0\0", 0))


def test_bad_header_digest_is_fatal() -> None:
    wire = bytearray(P.encode_bytes(P.NopOut(itt=1), header_digest=True))
    wire[50] ^= 1
    r = P.PduReader(header_digest=True)
    r.feed(wire)
    with pytest.raises(P.PduError) as e:
        r.next_pdu()
    assert e.value.fatal


def test_bad_data_digest_consumes_the_pdu_and_framing_goes_on() -> None:
    bad = bytearray(P.encode_bytes(P.DataOut(itt=1, data=b"abcd"), data_digest=True))
    bad[-1] ^= 0xFF
    good = P.encode_bytes(P.NopOut(itt=2), data_digest=True)
    r = P.PduReader(data_digest=True)
    r.feed(bytes(bad) + good)
    with pytest.raises(P.PduError) as e:
        r.next_pdu()
    assert not e.value.fatal and e.value.reason == P.RejectReason.DATA_DIGEST_ERROR
    nxt = r.next_pdu()
    assert isinstance(nxt, P.NopOut) and nxt.itt == 2


def test_oversized_data_segment_is_refused_before_buffering() -> None:
    hdr = bytearray(P.encode_bytes(P.NopOut(itt=1)))
    hdr[5:8] = (1 << 20).to_bytes(3, "big")
    r = P.PduReader(max_data=8192)
    r.feed(hdr)
    with pytest.raises(P.PduError) as e:
        r.next_pdu()
    assert e.value.fatal


def test_extended_cdb_ahs_round_trip() -> None:
    cdb = bytes(range(32))
    wire = P.encode_bytes(P.ScsiCommandPdu(itt=3, cdb=cdb))
    assert wire[4] * 4 == len(wire) - 48  # the AHS is there, 4-byte aligned
    r = P.PduReader()
    r.feed(wire)
    got = r.next_pdu()
    assert isinstance(got, P.ScsiCommandPdu) and got.cdb == cdb


def test_unknown_opcode_raises_codec_error() -> None:
    r = P.PduReader()
    r.feed(bhs((0, b"\x1f\x80")))
    with pytest.raises(P.PduError) as e:
        r.next_pdu()
    assert e.value.reason == P.RejectReason.COMMAND_NOT_SUPPORTED and not e.value.fatal


# -- property tests ---------------------------------------------------------------------------

u32s = st.integers(0, 0xFFFFFFFF)
payload = st.binary(max_size=64)


def _pdus() -> st.SearchStrategy[P.Pdu]:
    return st.one_of(
        st.builds(P.NopOut, immediate=st.booleans(), itt=u32s, ttt=u32s, cmd_sn=u32s,
                  exp_stat_sn=u32s, lun=st.integers(0, 2**64 - 1), data=payload),
        st.builds(P.ScsiCommandPdu, immediate=st.booleans(), final=st.booleans(), itt=u32s,
                  read=st.booleans(), write=st.booleans(), attr=st.integers(0, 7),
                  expected_length=u32s, cmd_sn=u32s, exp_stat_sn=u32s,
                  cdb=st.binary(min_size=16, max_size=40), data=payload),
        st.builds(P.DataOut, final=st.booleans(), itt=u32s, ttt=u32s, data_sn=u32s,
                  buffer_offset=u32s, exp_stat_sn=u32s, data=payload),
        st.builds(P.DataIn, final=st.booleans(), itt=u32s, has_status=st.just(False),
                  data_sn=u32s, buffer_offset=u32s, stat_sn=u32s, exp_cmd_sn=u32s,
                  max_cmd_sn=u32s, residual=u32s, ack=st.booleans(), data=payload),
        st.builds(P.LoginRequest, final=st.booleans(), cont=st.booleans(),
                  csg=st.integers(0, 3), nsg=st.integers(0, 3), isid=st.integers(0, 2**48 - 1),
                  tsih=st.integers(0, 0xFFFF), cid=st.integers(0, 0xFFFF), itt=u32s,
                  cmd_sn=u32s, exp_stat_sn=u32s, data=payload),
        st.builds(P.ScsiResponse, itt=u32s, status=st.integers(0, 255),
                  response=st.integers(0, 255), overflow=st.booleans(),
                  underflow=st.booleans(), residual=u32s, stat_sn=u32s, data=payload),
        st.builds(P.TaskMgmtRequest, immediate=st.booleans(), function=st.integers(0, 127),
                  itt=u32s, referenced_task_tag=u32s, cmd_sn=u32s, ref_cmd_sn=u32s),
        st.builds(P.TextRequest, final=st.booleans(), cont=st.booleans(), itt=u32s,
                  ttt=u32s, cmd_sn=u32s, data=payload),
        st.builds(P.R2T, itt=u32s, ttt=u32s, r2t_sn=u32s, buffer_offset=u32s,
                  desired_length=u32s, stat_sn=u32s),
        st.builds(P.AsyncMessage, async_event=st.integers(0, 255),
                  parameter1=st.integers(0, 0xFFFF), data=payload),
    )


@settings(max_examples=300, deadline=None)
@given(_pdus(), st.booleans(), st.booleans())
def test_decode_encode_round_trip(pdu: P.Pdu, hd: bool, dd: bool) -> None:
    wire = P.encode_bytes(pdu, hd, dd)
    r = P.PduReader(header_digest=hd, data_digest=dd, max_data=1 << 16)
    r.feed(wire)
    got = r.next_pdu()
    assert got == pdu
    assert P.encode_bytes(got, hd, dd) == wire


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_arbitrary_bytes_decode_or_raise_codec_error(data: bytes, hd: bool, dd: bool) -> None:
    r = P.PduReader(header_digest=hd, data_digest=dd)
    r.feed(data)
    for _ in range(10):
        try:
            if r.next_pdu() is None:
                break
        except P.PduError as e:
            if e.fatal:
                break
