"""framing.PduReader: PDUs come out the same however the stream is cut, and a data segment
handed out as a view of the input stays what it was while more input arrives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyscsit import pdu as P
from pyscsit.framing import PduReader


def _stream(sizes: list[int], digests: tuple[bool, bool]) -> tuple[bytes, list[P.Pdu]]:
    pdus: list[P.Pdu] = []
    for i, n in enumerate(sizes):
        data = bytes((i + j) & 0xFF for j in range(n))
        if i % 3 == 0:
            pdus.append(P.ScsiCommandPdu(itt=i, write=True, expected_length=n, cmd_sn=i,
                                         cdb=bytes([0x2A]) + bytes(15), data=data))
        elif i % 3 == 1:
            pdus.append(P.DataOut(itt=i, ttt=7, data_sn=i, buffer_offset=4096 * i, data=data))
        else:
            pdus.append(P.NopOut(itt=i, data=data))
    return b"".join(P.encode_bytes(p, *digests) for p in pdus), pdus


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 4000), max_size=20),
       hd=st.booleans(), dd=st.booleans())
def test_any_cutting_gives_the_same_pdus_and_views_stay_valid(
        sizes: list[int], cuts: list[int], hd: bool, dd: bool) -> None:
    wire, want = _stream(sizes, (hd, dd))
    r = PduReader(header_digest=hd, data_digest=dd, max_data=1 << 16)
    got: list[tuple[P.Pdu, bytes]] = []
    pos = 0
    pieces = []
    for c in cuts:
        pieces.append(wire[pos: pos + c])
        pos += c
    pieces.append(wire[pos:])
    for piece in pieces:
        r.feed(bytearray(piece) if len(got) % 2 else piece)  # bytes and bytearray alike
        while (pdu := r.next_pdu()) is not None:
            got.append((pdu, bytes(pdu.data)))
    assert [p for p, _ in got] == want
    # what was handed out earlier was not overwritten by later input
    assert [bytes(p.data) for p, _ in got] == [d for _, d in got]
    assert r.buffered == 0


def test_pdu_import_path_still_works() -> None:
    assert P.PduReader is PduReader
