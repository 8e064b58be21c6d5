"""Framing: a byte stream -> PDUs (sans-IO), checking digests (RFC 7143 §11.1, §12.1).

Split from pdu.py (the codec); ``from pyscsit.pdu import PduReader`` still works.

Copies: bytes handed to ``feed`` are kept as they are, and PDUs that lie whole inside them are
decoded in place; the data segment of a SCSI Command or Data-Out is handed out as a
``memoryview`` of those bytes (immutable, so it stays valid), which the session copies once,
into the command's buffer. Only a PDU split across reads is gathered in a bytearray of the
reader's, which the reader then gives up to the PDU (keeping a copy of the bytes after the PDU,
when there are fewer of those than of data) instead of copying the data segment out of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyscsit.digest import crc32c
from pyscsit.pdu import (
    _PADS,
    _U32LE,
    BHS_LEN,
    Buffer,
    Opcode,
    Pdu,
    PduError,
    RejectReason,
    decode_at,
)

# data segments handed out as views of the input (the session copies them into its buffers)
_VIEW_OPCODES = frozenset((Opcode.SCSI_COMMAND, Opcode.SCSI_DATA_OUT))


@dataclass(slots=True)
class PduReader:
    """Frames a byte stream into PDUs (sans-IO): ``feed(bytes)`` then ``next_pdu()`` until None.

    Digest settings may change between PDUs (they start after login, §13.1), so PDUs are handed
    out one at a time and each is framed with the settings in force when it is taken.
    ``max_data`` bounds the data segment the peer may announce (MaxRecvDataSegmentLength, or
    the login limit): a longer one is a protocol error and framing cannot continue.
    """

    header_digest: bool = False
    data_digest: bool = False
    max_data: int = 8192
    # unconsumed input from _pos on: the bytes last fed (never copied), or a bytearray
    # gathering a PDU that arrived in pieces
    _buf: bytes | bytearray = b""
    _pos: int = 0

    def feed(self, data: Buffer) -> None:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if isinstance(buf, bytes):
            # the rest of a PDU is still to come: gather it (from here on) in our own buffer
            self._buf = bytearray(memoryview(buf)[pos:]) + data
            self._pos = 0
            return
        if pos > 65536:
            del buf[:pos]
            self._pos = 0
        buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None when more bytes are needed.

        Raises PduError: ``fatal`` when the stream cannot be framed any more (bad header
        digest, oversized data segment); otherwise the PDU was consumed and should be rejected.
        """
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < BHS_LEN:
            return None
        ahs_len = buf[pos + 4] * 4
        dlen = int.from_bytes(buf[pos + 5: pos + 8], "big")
        hd = 4 if self.header_digest else 0
        padded = dlen + (-dlen % 4)
        dd = 4 if self.data_digest and dlen else 0
        header_end = BHS_LEN + ahs_len + hd
        total = header_end + padded + dd
        if dlen > self.max_data:
            raise PduError(f"data segment of {dlen} bytes exceeds the limit of {self.max_data}",
                           RejectReason.PROTOCOL_ERROR, fatal=True,
                           header=bytes(buf[pos: pos + BHS_LEN]))
        if avail < total:
            return None
        # The PDU is consumed whatever its fate below: a data digest error or an
        # undecodable header is answered with a Reject and framing goes on (§7.8).
        end = pos + total
        self._pos = end
        if hd:
            got = _U32LE.unpack_from(buf, pos + BHS_LEN + ahs_len)[0]
            if crc32c(memoryview(buf)[pos: pos + BHS_LEN + ahs_len], 0) != got:
                raise PduError("header digest error", RejectReason.DATA_DIGEST_ERROR,
                               fatal=True, header=bytes(buf[pos: pos + BHS_LEN]))
        data_start = pos + header_end
        data: Buffer = b""
        if dlen:
            if buf[pos] & 0x3F not in _VIEW_OPCODES:
                data = bytes(memoryview(buf)[data_start: data_start + dlen])
            elif type(buf) is bytes:
                data = memoryview(buf)[data_start: data_start + dlen]
            elif len(buf) - end < dlen:
                # our bytearray gathered this PDU: give it up to the PDU, and copy what
                # follows the PDU (less than its data segment) rather than the data
                data = memoryview(buf)[data_start: data_start + dlen]
                self._buf, self._pos = bytes(memoryview(buf)[end:]), 0
            else:
                data = bytes(memoryview(buf)[data_start: data_start + dlen])
            if dd:
                got = _U32LE.unpack_from(buf, data_start + padded)[0]
                crc = crc32c(data, 0)
                if padded != dlen:
                    crc = crc32c(_PADS[padded - dlen], crc)
                if crc != got:
                    raise PduError("data digest error", RejectReason.DATA_DIGEST_ERROR,
                                   header=bytes(buf[pos: pos + BHS_LEN]))
        pdu = decode_at(buf, pos, ahs_len)
        pdu.data = data
        return pdu
