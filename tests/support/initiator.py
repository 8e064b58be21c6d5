"""A small blocking-socket iSCSI initiator for tests, built on the project's own codec.

It logs in the way RFC 7143 §6 describes (security stage with CHAP per §12.1.3, then the
operational stage), verifies the target's answer to a mutual CHAP challenge, and runs SCSI
commands with immediate data, unsolicited Data-Out, R2T-solicited Data-Out and Data-In as the
negotiated parameters require. Everything is visible: ``send``/``recv`` move single PDUs, so a
test can also misbehave on purpose (``send_raw``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Self

from pyscsit import pdu as P
from pyscsit.keys import encode_text, parse_text

INITIATOR_NAME = "iqn.2026-11.org.pyscsit.test:initiator"
DEFAULT_ISID = 0x80_12_34_56_00_01  # random format (§10.12.5, T=10b)
CHAP_HASHES = {5: hashlib.md5, 6: hashlib.sha1, 7: hashlib.sha256, 8: hashlib.sha3_256}
MAX_RECV = 65536  # our MaxRecvDataSegmentLength


class ConnectionClosed(EOFError):
    """The target closed the connection."""


class LoginError(Exception):
    def __init__(self, status_class: int, status_detail: int) -> None:
        super().__init__(f"login failed: status {status_class:02x}/{status_detail:02x}")
        self.status_class = status_class
        self.status_detail = status_detail


class AuthError(Exception):
    """The target failed to prove itself (mutual CHAP): the initiator ends the login."""


class UnexpectedPdu(Exception):
    def __init__(self, pdu: P.Pdu) -> None:
        super().__init__(f"unexpected {type(pdu).__name__}: {pdu!r}"[:400])
        self.pdu = pdu


def chap_response(algorithm: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 §4.1: H(identifier byte || secret || challenge)."""
    return CHAP_HASHES[algorithm](bytes((identifier,)) + secret + challenge).digest()


def decode_binary(value: str) -> bytes:
    """RFC 7143 §6.1 binary values: 0x hex or 0b base64."""
    if value[:2].lower() == "0x":
        body = value[2:]
        return bytes.fromhex(body if len(body) % 2 == 0 else "0" + body)
    if value[:2].lower() == "0b":
        return base64.b64decode(value[2:])
    raise ValueError(f"not a binary value: {value!r}")


@dataclass
class Params:
    """What the login settled (RFC 7143 §13 defaults until the target answers)."""

    header_digest: bool = False
    data_digest: bool = False
    initial_r2t: bool = True
    immediate_data: bool = True
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    max_outstanding_r2t: int = 1
    max_xmit: int = 8192  # the target's MaxRecvDataSegmentLength
    answers: dict[str, str] = field(default_factory=dict)  # every key the target sent


@dataclass
class ScsiReply:
    status: int
    data: bytes
    sense: bytes  # without the SenseLength prefix
    response: P.Pdu  # the PDU that carried the status (SCSI Response or last Data-In)
    data_in: list[P.DataIn] = field(default_factory=list)
    r2ts: list[P.R2T] = field(default_factory=list)

    def __iter__(self) -> Iterator[int | bytes]:  # status, data, sense = ini.scsi(...)
        return iter((self.status, self.data, self.sense))


class Initiator:
    def __init__(self, sock: socket.socket, *, name: str = INITIATOR_NAME,
                 isid: int = DEFAULT_ISID) -> None:
        self.sock = sock
        self.name = name
        self.isid = isid
        self.reader = P.PduReader(max_data=1 << 24)
        self.params = Params()
        self.tsih = 0
        self.cmd_sn = 1
        self.exp_stat_sn = 0
        self.max_cmd_sn = 1
        self._itt = itertools.count(1)
        self._login_itt = 0
        self._cid = 0
        self._ffp = False

    @classmethod
    def connect(cls, host: str, port: int, **kw: object) -> Initiator:
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, **kw)  # type: ignore[arg-type]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- PDUs --------------------------------------------------------------------------------
    def next_itt(self) -> int:
        return next(self._itt)

    def encode(self, pdu: P.Pdu) -> bytes:
        return P.encode_bytes(pdu, self.params.header_digest, self.params.data_digest)

    def send(self, pdu: P.Pdu) -> None:
        self.send_raw(self.encode(pdu))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 10.0) -> P.Pdu:
        """The next PDU; TimeoutError when none comes, ConnectionClosed on EOF."""
        self.sock.settimeout(timeout)
        while True:
            pdu = self.reader.next_pdu()
            if pdu is not None:
                self._track(pdu)
                return pdu
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosed("the target closed the connection")
            self.reader.feed(chunk)

    def wait_closed(self, timeout: float = 10.0) -> list[P.Pdu]:
        """Read until the target closes the connection; the PDUs that came before."""
        seen: list[P.Pdu] = []
        while True:
            try:
                seen.append(self.recv(timeout))
            except ConnectionClosed:
                return seen

    def _track(self, pdu: P.Pdu) -> None:
        if not isinstance(pdu, P._TargetPdu):
            return
        self.max_cmd_sn = pdu.max_cmd_sn
        numbered = not (isinstance(pdu, P.R2T)
                        or (isinstance(pdu, P.DataIn) and not pdu.has_status)
                        or (isinstance(pdu, P.NopIn) and pdu.itt == P.RESERVED_TAG))
        if numbered:  # §4.2.2.2: acknowledge status with ExpStatSN
            self.exp_stat_sn = (pdu.stat_sn + 1) & 0xFFFFFFFF

    def answer_ping(self, ping: P.NopIn) -> None:
        """§11.18: a NOP-Out echoing the target's TTT, ITT reserved, I bit set."""
        self.send(P.NopOut(immediate=True, itt=P.RESERVED_TAG, ttt=ping.ttt, lun=ping.lun,
                           cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn))

    def _recv_for(self, itt: int, timeout: float) -> P.Pdu:
        """The next PDU of task ``itt``, answering target pings on the way."""
        while True:
            pdu = self.recv(timeout)
            if isinstance(pdu, P.NopIn) and pdu.itt == P.RESERVED_TAG:
                if pdu.ttt != P.RESERVED_TAG:
                    self.answer_ping(pdu)
                continue
            if pdu.itt != itt:
                raise UnexpectedPdu(pdu)
            return pdu

    def _numbered(self, immediate: bool = False) -> int:
        sn = self.cmd_sn
        if not immediate:
            self.cmd_sn = (self.cmd_sn + 1) & 0xFFFFFFFF
        return sn

    # -- login (§6) --------------------------------------------------------------------------
    def login(self, target: str | None = None, *, session_type: str = "Normal",
              chap: tuple[str, str] | None = None, mutual: tuple[str, str] | None = None,
              chap_algorithms: Iterable[int] = (7, 6, 5), header_digest: bool = False,
              data_digest: bool = False, immediate_data: bool = True, initial_r2t: bool = False,
              max_burst_length: int = 262144, first_burst_length: int = 65536,
              max_outstanding_r2t: int = 1, extra_keys: Mapping[str, str] | None = None,
              tsih: int = 0, cid: int = 0) -> Params:
        self.tsih = tsih
        self._login_itt = self.next_itt()
        self._cid = cid
        first = [("InitiatorName", self.name), ("SessionType", session_type)]
        if session_type == "Normal":
            assert target is not None, "a normal session names its target"
            first.append(("TargetName", target))
        # Security stage: AuthMethod is always negotiated here (§12.1)
        if chap is None:
            keys = self._exchange(first + [("AuthMethod", "None")], csg=0, transit=True)
        else:
            keys = self._exchange(first + [("AuthMethod", "CHAP,None")], csg=0, transit=False)
            if keys.get("AuthMethod") != "CHAP":
                raise AuthError(f"target chose AuthMethod={keys.get('AuthMethod')}")
            keys = self._exchange([("CHAP_A", ",".join(map(str, chap_algorithms)))], csg=0,
                                  transit=False)
            algorithm = int(keys["CHAP_A"])
            ident = int(keys["CHAP_I"], 0)
            challenge = decode_binary(keys["CHAP_C"])
            answer = [("CHAP_N", chap[0]), ("CHAP_R", "0x" + chap_response(
                algorithm, ident, chap[1].encode(), challenge).hex())]
            my_ident, my_challenge = os.urandom(1)[0], os.urandom(16)
            if mutual is not None:
                answer += [("CHAP_I", str(my_ident)), ("CHAP_C", "0x" + my_challenge.hex())]
            keys = self._exchange(answer, csg=0, transit=True)
            if mutual is not None:
                want = chap_response(algorithm, my_ident, mutual[1].encode(), my_challenge)
                got = decode_binary(keys.get("CHAP_R", "0x00"))
                if keys.get("CHAP_N") != mutual[0] or not hmac.compare_digest(got, want):
                    self.close()
                    raise AuthError("the target's CHAP_N/CHAP_R do not prove its identity")
        # Operational stage (§13)
        ops = {"HeaderDigest": "CRC32C" if header_digest else "None",
               "DataDigest": "CRC32C" if data_digest else "None",
               "MaxRecvDataSegmentLength": str(MAX_RECV), "ErrorRecoveryLevel": "0"}
        if session_type == "Normal":
            ops.update({"InitialR2T": "Yes" if initial_r2t else "No",
                        "ImmediateData": "Yes" if immediate_data else "No",
                        "MaxBurstLength": str(max_burst_length),
                        "FirstBurstLength": str(first_burst_length),
                        "MaxOutstandingR2T": str(max_outstanding_r2t)})
        ops.update(extra_keys or {})
        keys = self._exchange(list(ops.items()), csg=1, transit=True)
        while not self._ffp:  # the target may hold back T=1 (§6.3); keep going
            keys = self._exchange([], csg=1, transit=True)
        self._settle(ops)
        return self.params

    def _exchange(self, pairs: list[tuple[str, str]], *, csg: int,
                  transit: bool) -> dict[str, str]:
        """Send one login text (no Continue from us: it fits), pull the target's answer
        across Continue responses (§6.7); return the keys it sent."""
        nsg = 1 if csg == 0 else 3
        data = encode_text(pairs)
        text = b""
        while True:
            self.send(P.LoginRequest(
                final=transit, csg=csg, nsg=nsg if transit else 0, isid=self.isid,
                tsih=self.tsih, cid=self._cid, itt=self._login_itt, cmd_sn=self.cmd_sn,
                exp_stat_sn=self.exp_stat_sn, data=data))
            resp = self.recv()
            if not isinstance(resp, P.LoginResponse):
                raise UnexpectedPdu(resp)
            if resp.status_class:
                raise LoginError(resp.status_class, resp.status_detail)
            text += bytes(resp.data)
            if not resp.cont:
                break
            data = b""
        self._ffp = resp.final and resp.nsg == 3
        if resp.final:
            self.tsih = resp.tsih
        answered = dict(parse_text(text))
        self.params.answers.update(answered)
        return answered

    def _settle(self, offered: Mapping[str, str]) -> None:
        # Irrelevant/NotUnderstood/Reject answers leave our own value in force (§6.2)
        a = {**offered, **{k: v for k, v in self.params.answers.items()
                           if v not in ("Irrelevant", "NotUnderstood", "Reject")}}
        p = self.params
        p.initial_r2t = a.get("InitialR2T", "Yes") == "Yes"
        p.immediate_data = a.get("ImmediateData", "Yes") == "Yes"
        p.max_burst_length = int(a.get("MaxBurstLength", p.max_burst_length))
        p.first_burst_length = int(a.get("FirstBurstLength", p.first_burst_length))
        p.max_outstanding_r2t = int(a.get("MaxOutstandingR2T", p.max_outstanding_r2t))
        p.max_xmit = int(self.params.answers.get("MaxRecvDataSegmentLength", 8192))
        # §13.1: digests start with the first PDU after the final Login Response
        p.header_digest = self.reader.header_digest = a.get("HeaderDigest") == "CRC32C"
        p.data_digest = self.reader.data_digest = a.get("DataDigest") == "CRC32C"
        self.reader.max_data = MAX_RECV

    # -- full feature phase ------------------------------------------------------------------
    def scsi(self, cdb: bytes, data_out: bytes = b"", read_len: int = 0, lun: int = 0,
             *, timeout: float = 30.0, immediate: bool = False) -> ScsiReply:
        p = self.params
        itt = self.next_itt()
        length = len(data_out)
        imm = data_out[: min(p.first_burst_length, p.max_xmit)] if p.immediate_data else b""
        self.send(P.ScsiCommandPdu(
            immediate=immediate, itt=itt, lun=lun << 48, read=read_len > 0, write=length > 0,
            expected_length=max(length, read_len), cmd_sn=self._numbered(immediate),
            exp_stat_sn=self.exp_stat_sn, cdb=cdb.ljust(16, b"\0") if len(cdb) < 16 else cdb,
            final=p.initial_r2t or len(imm) == length, data=imm))
        if not p.initial_r2t and len(imm) < length:  # unsolicited Data-Out (§3.2.4.2)
            end = min(p.first_burst_length, length)
            self._data_out(itt, lun, P.RESERVED_TAG, data_out, len(imm), end - len(imm))
        buf = bytearray(read_len)
        reply = ScsiReply(status=-1, data=b"", sense=b"", response=P.NopIn())
        while True:
            pdu = self._recv_for(itt, timeout)
            if isinstance(pdu, P.R2T):
                reply.r2ts.append(pdu)
                self._data_out(itt, lun, pdu.ttt, data_out, pdu.buffer_offset,
                               pdu.desired_length)
            elif isinstance(pdu, P.DataIn):
                reply.data_in.append(pdu)
                buf[pdu.buffer_offset: pdu.buffer_offset + len(pdu.data)] = pdu.data
                if pdu.has_status:
                    reply.status, reply.response = pdu.status, pdu
                    break
            elif isinstance(pdu, P.ScsiResponse):
                reply.status, reply.response = pdu.status, pdu
                reply.sense = bytes(pdu.data)[2:2 + int.from_bytes(pdu.data[:2], "big")] \
                    if len(pdu.data) >= 2 else b""
                break
            else:
                raise UnexpectedPdu(pdu)
        got = sum(len(d.data) for d in reply.data_in)
        reply.data = bytes(buf[:got]) if got < read_len else bytes(buf)
        return reply

    def _data_out(self, itt: int, lun: int, ttt: int, data: bytes, offset: int,
                  length: int) -> None:
        """Data-Out PDUs for [offset, offset+length), each at most MaxRecvDataSegmentLength;
        DataSN counts from 0 per R2T (and per unsolicited burst), F on the last (§11.7)."""
        end = offset + length
        for data_sn, off in enumerate(range(offset, end, self.params.max_xmit)):
            chunk = data[off: min(off + self.params.max_xmit, end)]
            self.send(P.DataOut(itt=itt, lun=lun << 48, ttt=ttt, exp_stat_sn=self.exp_stat_sn,
                                data_sn=data_sn, buffer_offset=off,
                                final=off + len(chunk) >= end, data=chunk))

    def text(self, pairs: Iterable[tuple[str, str]], timeout: float = 10.0
             ) -> list[tuple[str, str]]:
        """A Text exchange, pulling Continue responses with empty requests (§11.10.2)."""
        itt, ttt, data, text = self.next_itt(), P.RESERVED_TAG, encode_text(pairs), b""
        while True:
            self.send(P.TextRequest(itt=itt, ttt=ttt, cmd_sn=self._numbered(),
                                    exp_stat_sn=self.exp_stat_sn, data=data))
            resp = self._recv_for(itt, timeout)
            if not isinstance(resp, P.TextResponse):
                raise UnexpectedPdu(resp)
            text += bytes(resp.data)
            if resp.final and not resp.cont:
                return parse_text(text)
            ttt, data = resp.ttt, b""

    def nop(self, data: bytes = b"", timeout: float = 10.0) -> P.NopIn:
        itt = self.next_itt()
        self.send(P.NopOut(immediate=True, itt=itt, cmd_sn=self.cmd_sn,
                           exp_stat_sn=self.exp_stat_sn, data=data))
        resp = self._recv_for(itt, timeout)
        if not isinstance(resp, P.NopIn):
            raise UnexpectedPdu(resp)
        return resp

    def tmf(self, function: int, lun: int = 0, referenced_task_tag: int = P.RESERVED_TAG,
            ref_cmd_sn: int = 0, timeout: float = 10.0) -> P.TaskMgmtResponse:
        itt = self.next_itt()
        self.send(P.TaskMgmtRequest(immediate=True, itt=itt, function=function, lun=lun << 48,
                                    referenced_task_tag=referenced_task_tag,
                                    cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn,
                                    ref_cmd_sn=ref_cmd_sn))
        resp = self._recv_for(itt, timeout)
        if not isinstance(resp, P.TaskMgmtResponse):
            raise UnexpectedPdu(resp)
        return resp

    def logout(self, reason: int = P.LogoutReason.CLOSE_SESSION,
               timeout: float = 10.0) -> P.LogoutResponse:
        itt = self.next_itt()
        self.send(P.LogoutRequest(immediate=True, itt=itt, reason=reason, cid=self._cid,
                                  cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn))
        resp = self._recv_for(itt, timeout)
        if not isinstance(resp, P.LogoutResponse):
            raise UnexpectedPdu(resp)
        return resp
