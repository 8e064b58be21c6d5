"""Driving a target from the initiator's side, shared by tests: framing a sans-IO
connection's output back into PDUs, and starting a write that a test then cuts short."""

from __future__ import annotations

from pyscsit import pdu as P
from pyscsit.session import Connection
from tests.support.initiator import Initiator


def take_pdus(conn: Connection, reader: P.PduReader) -> list[P.Pdu]:
    """Every PDU ``conn`` has sent since last asked, framed back by ``reader``."""
    for buf in conn.take_output():
        reader.feed(bytes(buf))
    got = []
    while (pdu := reader.next_pdu()) is not None:
        got.append(pdu)
    return got


def begin_write(ini: Initiator, cdb: bytes, data: bytes, *, solicited: bool,
                immediate: int = 8192) -> tuple[int, int, int]:
    """Send the SCSI Command of a write of ``data`` and no Data-Out: unsolicited, its first
    ``immediate`` bytes go as immediate data; solicited, the first R2T is awaited.
    Returns (ITT, the TTT for Data-Out, the offset the next Data-Out starts at)."""
    itt = ini.next_itt()
    imm = b"" if solicited else data[:immediate]
    ini.send(P.ScsiCommandPdu(itt=itt, write=True, final=solicited, expected_length=len(data),
                              cmd_sn=ini._numbered(), exp_stat_sn=ini.exp_stat_sn,
                              cdb=cdb.ljust(16, b"\0"), data=imm))
    if not solicited:
        return itt, P.RESERVED_TAG, len(imm)
    r2t = ini.recv()
    assert isinstance(r2t, P.R2T)
    return itt, r2t.ttt, 0
