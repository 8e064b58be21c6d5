"""The connection, sans-IO (RFC 7143 §3-§4, §7, §11).

A ``Connection`` takes bytes in (``receive_data``) and hands out wire buffers
(``take_output``) and events (``take_events``) for the server loop: run a SCSI task, cancel
one, do a reset that reaches other sessions, close. It never touches a socket or awaits; the
server calls ``task_done`` when a SCSI task finishes. Time is passed in (``ping``,
``ping_overdue``) so timers are testable. The state a session keeps across its connections
(CmdSN window, tasks, the session registry) is in ``session_state``.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from enum import Enum

from pyscsit import pdu as P
from pyscsit.keys import TextError, encode_text, parse_text
from pyscsit.limits import Limits
from pyscsit.login import LoginMachine, LoginResult, LoginStatus, text_exchange
from pyscsit.scsi import dispatch
from pyscsit.scsi.sense import (
    DataOffsetError,
    DataPhaseError,
    ProtocolServiceCrcError,
    SenseError,
)
from pyscsit.scsi.task import Direction, Nexus, ScsiCommand, ScsiResult, Status
from pyscsit.session_state import (
    CMD_WINDOW,
    MAX_DATA_OUT,
    R2TState,
    Session,
    SessionRegistry,
    Task,
    sn_add,
    sn_le,
    sn_lt,
    task_bytes,
)
from pyscsit.target import Model, Target

# Session, SessionRegistry, Task and the window constants are defined in session_state and
# re-exported: the server and the tests import them from here.
__all__ = [
    "CMD_WINDOW", "LOGIN_MAX_DATA", "MAX_DATA_OUT", "CancelTask", "Close", "Connection", "Event",
    "ExecuteTask", "Phase", "R2TState", "Reset", "Session", "SessionRegistry", "SessionUp",
    "Task", "sn_add", "sn_le", "sn_lt",
]

log = logging.getLogger(__name__)

LOGIN_MAX_DATA = 8192  # §13.12: MaxRecvDataSegmentLength default, in force during login


def _sense_segment(sense: bytes) -> bytes:
    """The data segment of a SCSI Response: SenseLength, then the sense data (§11.4.7)."""
    return len(sense).to_bytes(2, "big") + sense if sense else b""


# -- events for the server loop ------------------------------------------------------------------

@dataclass(slots=True)
class ExecuteTask:
    task: Task


@dataclass(slots=True)
class CancelTask:
    task: Task


@dataclass(slots=True)
class SessionUp:
    """Login finished for a normal or discovery session (the server handles reinstatement)."""

    session: Session


@dataclass(slots=True)
class Reset:
    """A TMF whose reach goes beyond this session: the server aborts the matching tasks on
    every session, resets the LU(s), then calls ``Connection.tmf_done``."""

    function: int
    target: Target
    lun: int | None
    request: P.TaskMgmtRequest


@dataclass(slots=True)
class Close:
    """Close the connection once the output handed out so far is written."""

    reason: str


Event = ExecuteTask | CancelTask | SessionUp | Reset | Close


class Phase(Enum):
    LOGIN = 1
    FULL_FEATURE = 2
    CLOSING = 3


# -- the connection ------------------------------------------------------------------------------

class Connection:
    def __init__(self, model: Model, registry: SessionRegistry, *, local_addr: tuple[str, int],
                 peer_addr: tuple[str, int], max_recv_data_segment_length: int = 262144,
                 limits: Limits | None = None) -> None:
        self.model = model
        self.limits = limits or Limits()
        self._login_text = 0  # login data-segment bytes so far (limits.max_text_bytes)
        self._granted = 0  # an upper bound of the task bytes in flight (see _room_for)
        self.registry = registry
        self.local_addr = local_addr
        self.peer_addr = peer_addr
        self.phase = Phase.LOGIN
        self.reader = P.PduReader(max_data=LOGIN_MAX_DATA)
        self.login = LoginMachine(model, local_addr=local_addr, peer_addr=peer_addr,
                                  tsih_allocator=registry.allocate_tsih,
                                  session_exists=registry.exists,
                                  max_recv_data_segment_length=max_recv_data_segment_length)
        self.session: Session | None = None
        self.cid = 0
        self.stat_sn = 0
        self.header_digest = False
        self.data_digest = False
        self.max_xmit = LOGIN_MAX_DATA
        self._out: list[P.Buffer] = []
        self._events: list[Event] = []
        self._ttt = itertools.count(1)
        self._text_rest: dict[int, bytes] = {}  # TTT -> the rest of a long Text response
        self.ping_ttt: int | None = None
        self._dead_itts: deque[int] = deque(maxlen=64)  # tasks whose Data-Out failed
        self.ping_sent_at = 0.0

    # -- plumbing --------------------------------------------------------------------------
    def take_output(self) -> list[P.Buffer]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def _next_ttt(self) -> int:
        while True:
            t = next(self._ttt) & 0xFFFFFFFF
            if t != P.RESERVED_TAG:
                return t

    def _send(self, pdu: P.Pdu, *, new_stat_sn: bool = True) -> None:
        s = self.session
        if isinstance(pdu, P._TargetPdu):
            if new_stat_sn:
                pdu.stat_sn = self.stat_sn
                self.stat_sn = sn_add(self.stat_sn, 1)
            elif not isinstance(pdu, P.DataIn):
                pdu.stat_sn = self.stat_sn
            if s is not None:
                pdu.exp_cmd_sn = s.exp_cmd_sn
                pdu.max_cmd_sn = s.max_cmd_sn
        self._out.extend(P.encode(pdu, self.header_digest, self.data_digest))

    def _close(self, reason: str) -> None:
        if self.phase is not Phase.CLOSING:
            self.phase = Phase.CLOSING
            self._events.append(Close(reason))

    def _reject(self, header: P.Buffer, reason: int) -> None:
        self._send(P.Reject(reason=reason, data=bytes(header[:P.BHS_LEN])))

    # -- input -----------------------------------------------------------------------------
    def receive_data(self, data: P.Buffer) -> None:
        # A closing connection reads nothing. A guard, not an early return: the handlers may
        # close, and mypy (blind to a method changing self.phase) would narrow the loop test.
        if self.phase is not Phase.CLOSING:
            self.reader.feed(data)
        while self.phase is not Phase.CLOSING:
            try:
                pdu = self.reader.next_pdu()
            except P.PduError as e:
                log.warning("%s: %s", self.peer_addr[0], e)
                if e.fatal or self.phase is Phase.LOGIN:
                    self._close(str(e))
                    return
                self._reject(e.header, e.reason)
                if (e.header and e.header[0] & 0x3F == P.Opcode.SCSI_DATA_OUT
                        and self.session is not None):
                    # §7.8: a Data-Out with a bad data digest is discarded; at ERL 0 no
                    # recovery R2T, so its task ends with PROTOCOL SERVICE CRC ERROR.
                    itt = int.from_bytes(e.header[16:20], "big")
                    t = self.session.tasks.get(itt)
                    if t is not None and not t.executing:
                        self._fail_transfer(t, ProtocolServiceCrcError(), str(e))
                continue
            if pdu is None:
                return
            if self.phase is Phase.LOGIN:
                self._handle_login(pdu)
            else:
                self._handle_ffp(pdu)

    # -- login -----------------------------------------------------------------------------
    def _handle_login(self, pdu: P.Pdu) -> None:
        if not isinstance(pdu, P.LoginRequest):
            # §6.1: only Login Requests before full feature phase
            self._close(f"{pdu.OPCODE.name} during login")
            return
        self._login_text += len(pdu.data)
        if self._login_text > self.limits.max_text_bytes:
            resp = self._refuse_login(pdu, LoginStatus.INITIATOR_ERROR,
                                      f"more than {self.limits.max_text_bytes} bytes of text")
        else:
            resp = self.login.handle(pdu)
            r = self.login.result
            if not self.login.failed and self.login.done and r is not None:
                held = self._sessions_of(r)
                if held >= self.limits.max_sessions_per_initiator:
                    # §11.13.5 03/02: the target lacks session resources; may be retried
                    resp = self._refuse_login(pdu, LoginStatus.OUT_OF_RESOURCES,
                                              f"{held} sessions already (limit)")
        self.stat_sn = sn_add(resp.stat_sn, 1)
        self._out.extend(P.encode(resp))
        if self.login.failed:
            self._close(f"login failed {resp.status_class:02x}/{resp.status_detail:02x}")
        elif self.login.done and self.login.result is not None:
            self._enter_ffp(self.login.result)

    def _refuse_login(self, req: P.LoginRequest, status: LoginStatus,
                      why: str) -> P.LoginResponse:
        """A login failure decided here, on limits the login machine does not know, logged
        and answered as its own are."""
        self.login._refused(status, why)
        return self.login._failure(req, status)

    def _sessions_of(self, r: LoginResult) -> int:
        """Sessions the initiator holds, not counting one this login reinstates (§6.3.5)."""
        name = r.initiator_name.lower()
        return sum(1 for o in self.registry.sessions.values()
                   if o.initiator_name.lower() == name
                   and not (o.isid == r.isid and o.target is r.target
                            and o.session_type == r.session_type))

    def _enter_ffp(self, r: LoginResult) -> None:
        self.cid = r.cid
        self.stat_sn = r.stat_sn
        p = r.params
        s = Session(tsih=r.tsih, isid=r.isid, initiator_name=r.initiator_name,
                    session_type=r.session_type, target=r.target, params=p,
                    exp_cmd_sn=r.exp_cmd_sn)
        if r.target is not None:
            s.nexus = Nexus(r.initiator_name, r.isid, r.target.iqn, r.target.tpgt)
        s.connections.append(self)
        self.session = s
        # §13.1: digests and the negotiated segment lengths start with the first PDU after
        # the final Login Response.
        self.header_digest = self.reader.header_digest = p.header_digest
        self.data_digest = self.reader.data_digest = p.data_digest
        self.reader.max_data = p.max_recv_data_segment_length
        self.max_xmit = p.max_xmit_data_segment_length
        self.phase = Phase.FULL_FEATURE
        self._events.append(SessionUp(s))

    # -- full feature phase ----------------------------------------------------------------
    def _handle_ffp(self, pdu: P.Pdu) -> None:
        s = self.session
        assert s is not None
        cls = type(pdu)
        if cls is P.DataOut:
            self._data_out(pdu)  # type: ignore[arg-type]
            return
        if (cls is P.ScsiCommandPdu and pdu.cmd_sn == s.exp_cmd_sn  # type: ignore[attr-defined]
                and not pdu.immediate and not s.pending and s.session_type == "Normal"):
            # The common case, the next command in CmdSN order: the general path below,
            # without its detours. It is in the window unless the window is closed.
            if len(s.tasks) - s.immediate_tasks < CMD_WINDOW:
                s.exp_cmd_sn = (s.exp_cmd_sn + 1) & 0xFFFFFFFF
                self._scsi_command(pdu)  # type: ignore[arg-type]
            else:
                log.debug("CmdSN %d outside window [%d, %d]: ignored", s.exp_cmd_sn,
                          s.exp_cmd_sn, s.max_cmd_sn)
            return
        if isinstance(pdu, P.NopOut) and pdu.ttt != P.RESERVED_TAG:
            # the answer to our ping (§11.18): not numbered
            if pdu.ttt == self.ping_ttt:
                self.ping_ttt = None
            return
        if isinstance(pdu, P.SnackRequest):
            # ErrorRecoveryLevel 0: SNACK is not supported (§11.16)
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.SNACK_REJECT)
            return
        if isinstance(pdu, P.LoginRequest):
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.PROTOCOL_ERROR)
            return
        if not isinstance(pdu, (P.ScsiCommandPdu, P.NopOut, P.TextRequest, P.LogoutRequest,
                                P.TaskMgmtRequest)):
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.PROTOCOL_ERROR)
            return
        cmd_sn: int = pdu.cmd_sn
        if isinstance(pdu, P.ScsiCommandPdu) and s.session_type != "Normal":
            # §4.3: a discovery session carries only Text, NOP and Logout
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.PROTOCOL_ERROR)
            return
        if pdu.immediate:
            self._deliver(pdu)
            return
        # §4.2.2.1: outside [ExpCmdSN, MaxCmdSN] a numbered PDU is silently ignored
        if not (sn_le(s.exp_cmd_sn, cmd_sn) and sn_le(cmd_sn, s.max_cmd_sn)):
            log.debug("CmdSN %d outside window [%d, %d]: ignored", cmd_sn, s.exp_cmd_sn,
                      s.max_cmd_sn)
            return
        if cmd_sn in s.pending:
            return
        # a later command is held; its task is registered now so unsolicited Data-Out for it
        # can land (unless _new_task refuses it: then it is answered and not held)
        if (isinstance(pdu, P.ScsiCommandPdu) and cmd_sn != s.exp_cmd_sn
                and self._new_task(pdu) is None):
            return
        s.pending[cmd_sn] = pdu
        while s.exp_cmd_sn in s.pending:
            nxt = s.pending.pop(s.exp_cmd_sn)
            s.exp_cmd_sn = sn_add(s.exp_cmd_sn, 1)
            self._deliver(nxt)
            if self.phase is Phase.CLOSING:
                return

    def _deliver(self, pdu: P.Pdu) -> None:
        if isinstance(pdu, P.ScsiCommandPdu):
            self._scsi_command(pdu)
        elif isinstance(pdu, P.NopOut):
            self._nop_out(pdu)
        elif isinstance(pdu, P.TextRequest):
            self._text(pdu)
        elif isinstance(pdu, P.LogoutRequest):
            self._logout(pdu)
        elif isinstance(pdu, P.TaskMgmtRequest):
            self._tmf(pdu)

    # -- NOP (§11.18, §11.19) --------------------------------------------------------------
    def _nop_out(self, pdu: P.NopOut) -> None:
        if pdu.itt == P.RESERVED_TAG:
            return  # a NOP-Out that asks for no answer
        self._send(P.NopIn(itt=pdu.itt, ttt=P.RESERVED_TAG, lun=pdu.lun,
                           data=bytes(pdu.data)[: self.max_xmit]))

    def ping(self, now: float) -> None:
        """Send a NOP-In asking for a NOP-Out (the server calls this on an idle connection)."""
        if self.phase is not Phase.FULL_FEATURE or self.ping_ttt is not None:
            return
        self.ping_ttt = self._next_ttt()
        self.ping_sent_at = now
        self._send(P.NopIn(itt=P.RESERVED_TAG, ttt=self.ping_ttt), new_stat_sn=False)

    def ping_overdue(self, now: float, timeout: float) -> bool:
        return self.ping_ttt is not None and now - self.ping_sent_at > timeout

    # -- Text (§11.10, §11.11) -------------------------------------------------------------
    def _text(self, pdu: P.TextRequest) -> None:
        s = self.session
        assert s is not None
        if pdu.ttt != P.RESERVED_TAG:
            rest = self._text_rest.pop(pdu.ttt, None)
            if rest is None:
                self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.INVALID_PDU_FIELD)
                return
            self._send_text(pdu, rest)
            return
        # §11.10: one Text Request outstanding per connection, so a new exchange ends an
        # unfinished one (§11.10.4 resets its state); never more than one answer kept
        self._text_rest.clear()
        try:
            pairs = parse_text(bytes(pdu.data))
        except TextError:
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.PROTOCOL_ERROR)
            return
        answer = text_exchange(self.model, session_type=s.session_type,
                               initiator_name=s.initiator_name, target=s.target,
                               local_addr=self.local_addr, pairs=pairs, params=s.params)
        self._send_text(pdu, encode_text(answer))

    def _send_text(self, req: P.TextRequest, data: bytes) -> None:
        limit = self.max_xmit
        if len(data) > limit:
            ttt = self._next_ttt()
            self._text_rest[ttt] = data[limit:]
            self._send(P.TextResponse(itt=req.itt, lun=req.lun, final=False, cont=True,
                                      ttt=ttt, data=data[:limit]))
        else:
            self._send(P.TextResponse(itt=req.itt, lun=req.lun, final=True, data=data))

    # -- Logout (§11.14, §11.15) -----------------------------------------------------------
    def _logout(self, pdu: P.LogoutRequest) -> None:
        s = self.session
        assert s is not None
        response = 0
        if pdu.reason == P.LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY:
            response = 2  # recovery not supported at ERL 0
        elif pdu.reason == P.LogoutReason.CLOSE_CONNECTION and pdu.cid != self.cid:
            response = 1  # CID not found
        self._send(P.LogoutResponse(itt=pdu.itt, response=response))
        if response == 0:
            for t in list(s.tasks.values()):
                self._abort(t)
            self._close("logout")

    # -- SCSI commands (§11.3) -------------------------------------------------------------
    def _new_task(self, pdu: P.ScsiCommandPdu) -> Task | None:
        s = self.session
        assert s is not None and s.target is not None
        if pdu.itt in s.tasks:
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.TASK_IN_PROGRESS)
            return None
        lun = dispatch.lun_from_wire(pdu.lun)
        info = dispatch.inspect(s.target.luns_for(s.initiator_name), lun, pdu.cdb)
        t = Task(pdu.itt, pdu.cmd_sn, pdu.immediate, lun, pdu.lun, pdu.cdb, pdu.attr,
                 pdu.expected_length, info, pdu.write, pdu.read)
        p = s.params
        imm = len(pdu.data)
        if imm and (not pdu.write or not p.immediate_data or imm > p.first_burst_length
                    or imm > pdu.expected_length):
            # §13.11 / §4.1: immediate data only when negotiated, within FirstBurstLength
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.PROTOCOL_ERROR)
            return None
        if pdu.write and pdu.expected_length:
            t.received = imm
            t.unsol_next_offset = imm
            if p.initial_r2t or pdu.final:
                t.unsolicited_end = imm
            else:
                t.unsolicited_end = min(p.first_burst_length, pdu.expected_length)
            t.r2t_next_offset = t.unsolicited_end
            # Solicit only what the CDB will use (§11.4.5.1 underflow); a command that
            # will fail without data (unknown opcode, missing LU, a transfer above what
            # any LU accepts) gets none solicited. The buffer is what may arrive, never
            # the EDTL a peer claims: 4 GiB per command would exhaust memory.
            use = min(pdu.expected_length, info.transfer_length)
            t.wanted = max(t.unsolicited_end, use if use <= MAX_DATA_OUT else 0)
            if not self._room_for(t.wanted):
                self._task_set_full(pdu)
                return None
            t.buffer = bytearray(t.wanted)
            if imm:
                t.buffer[:imm] = pdu.data
        elif pdu.read and not self._room_for(task_bytes(t)):
            self._task_set_full(pdu)
            return None
        s.add_task(t)
        return t

    def _room_for(self, n: int) -> bool:
        """Does a task moving ``n`` bytes fit the connection's budget (limits.max_buffered_bytes:
        Data-Out buffers and read data of the tasks in flight)? A lone task always fits.
        ``_granted`` only grows between exact counts, so it bounds the bytes in flight from
        above; the exact count, O(tasks), runs only when that bound says full."""
        cap = self.limits.max_buffered_bytes
        if self._granted + n > cap:
            s = self.session
            assert s is not None
            self._granted = sum(task_bytes(t) for t in s.tasks.values())
            if self._granted and self._granted + n > cap:
                return False
        self._granted += n
        return True

    def _task_set_full(self, pdu: P.ScsiCommandPdu) -> None:
        # SAM-5 5.3: TASK SET FULL; the initiator retries later (its Data-Out is dropped)
        log.debug("%s: ITT 0x%08x: buffer budget full: TASK SET FULL", self.peer_addr[0],
                  pdu.itt)
        self._dead_itts.append(pdu.itt)
        self._send(P.ScsiResponse(itt=pdu.itt, status=Status.TASK_SET_FULL))

    def _scsi_command(self, pdu: P.ScsiCommandPdu) -> None:
        s = self.session
        assert s is not None
        t = s.tasks.get(pdu.itt)
        if t is None or t.delivered or t.cmd_sn != pdu.cmd_sn:
            t = self._new_task(pdu)
            if t is None:
                return
        t.delivered = True
        if t.write and t.buffer is not None:
            self._issue_r2ts(t)
        self._maybe_execute(t)

    def _issue_r2ts(self, t: Task) -> None:
        s = self.session
        assert s is not None and t.buffer is not None
        p = s.params
        while t.r2t_next_offset < t.wanted and len(t.r2ts) < p.max_outstanding_r2t:
            length = min(p.max_burst_length, t.wanted - t.r2t_next_offset)
            r = R2TState(ttt=self._next_ttt(), offset=t.r2t_next_offset, length=length,
                         next_offset=t.r2t_next_offset)
            t.r2ts[r.ttt] = r
            t.r2t_next_offset += length
            self._send(P.R2T(itt=t.itt, lun=t.lun_field, ttt=r.ttt, r2t_sn=t.r2t_sn,
                             buffer_offset=r.offset, desired_length=length),
                       new_stat_sn=False)
            t.r2t_sn += 1

    def _data_out(self, pdu: P.DataOut) -> None:
        s = self.session
        assert s is not None
        t = s.tasks.get(pdu.itt)
        if t is None or t.buffer is None or t.executing:
            if t is None and pdu.itt in self._dead_itts:
                return  # the rest of a transfer that already failed
            self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.INVALID_PDU_FIELD)
            return
        n = len(pdu.data)
        off = pdu.buffer_offset
        if pdu.ttt == P.RESERVED_TAG:
            # unsolicited data (§3.2.4.2): in order, within FirstBurstLength
            ok = (off == t.unsol_next_offset and pdu.data_sn == t.unsol_data_sn
                  and off + n <= t.unsolicited_end)
            if not ok:
                self._fail_transfer(t, DataOffsetError() if off != t.unsol_next_offset
                                    else DataPhaseError(),
                                    f"unsolicited Data-Out DataSN {pdu.data_sn} offset {off}"
                                    f" does not follow DataSN {t.unsol_data_sn} offset"
                                    f" {t.unsol_next_offset}")
                return
            t.unsol_next_offset += n
            t.unsol_data_sn += 1
        else:
            r = t.r2ts.get(pdu.ttt)
            if r is None:
                self._reject(P.encode_bhs(pdu)[:P.BHS_LEN], P.RejectReason.INVALID_PDU_FIELD)
                return
            # DataPDUInOrder=Yes: offsets ascend without gaps; DataSN counts from 0 per R2T
            if (off != r.next_offset or pdu.data_sn != r.next_data_sn
                    or off + n > r.offset + r.length):
                self._fail_transfer(t, DataOffsetError() if pdu.data_sn == r.next_data_sn
                                    else DataPhaseError(),
                                    f"Data-Out DataSN {pdu.data_sn} offset {off} does not"
                                    f" follow DataSN {r.next_data_sn} offset {r.next_offset}")
                return
            r.next_offset += n
            r.next_data_sn += 1
            if r.next_offset == r.offset + r.length:
                del t.r2ts[pdu.ttt]
        t.buffer[off: off + n] = pdu.data
        t.received += n
        if t.delivered and t.r2t_next_offset < t.wanted:
            self._issue_r2ts(t)
        self._maybe_execute(t)

    def waiting_for_data(self) -> list[tuple[int, int]]:
        """(ITT, bytes received) of every task not executing yet: it waits for Data-Out, or for
        a command before it in CmdSN order. The server drops a connection whose tasks stop
        receiving (limits.r2t_timeout)."""
        s = self.session
        if s is None:
            return []
        return [(t.itt, t.received) for t in s.tasks.values() if not t.executing]

    def _fail_transfer(self, t: Task, error: SenseError, why: str) -> None:
        """A Data-Out sequence error. ERL 0 cannot recover the sequence (§7.1.4), but nothing
        of the task has reached the medium yet, so only the task fails: CHECK CONDITION with
        ABORTED COMMAND (§11.4.7.2), and the rest of its Data-Out is dropped quietly. Other
        tasks and the connection carry on."""
        s = self.session
        assert s is not None
        log.warning("%s: %s (ITT 0x%08x): task failed", self.peer_addr[0], why, t.itt)
        t.aborted = True
        s.drop_task(t)
        self._dead_itts.append(t.itt)
        self._send(P.ScsiResponse(itt=t.itt, status=Status.CHECK_CONDITION,
                                  data=_sense_segment(error.encode())))

    def _maybe_execute(self, t: Task) -> None:
        if t.delivered and not t.executing and t.data_complete and not t.aborted:
            s = self.session
            assert s is not None and s.nexus is not None
            t.executing = True
            data_out = None
            if t.buffer is not None:
                data_out = memoryview(t.buffer)[: t.received]
            t.command = ScsiCommand(cdb=t.cdb, nexus=s.nexus, lun=t.lun, data_out=data_out,
                                   expected_length=t.expected_length, task_attr=t.attr,
                                   tag=t.itt)
            self._events.append(ExecuteTask(t))

    def task_done(self, t: Task, result: ScsiResult) -> None:
        """The server reports a finished SCSI task: send Data-In and/or SCSI Response."""
        s = self.session
        if s is None or s.tasks.get(t.itt) is not t or t.aborted:
            return
        s.drop_task(t)
        if self.phase is Phase.CLOSING:
            return
        self._respond(t, result)
        # the response carries the MaxCmdSN this completion opened (§4.2.2.1)

    def _respond(self, t: Task, r: ScsiResult) -> None:
        edtl = t.expected_length
        status = int(r.status)
        data = r.data
        dlen = data.nbytes if isinstance(data, memoryview) else len(data)
        xfer = r.transfer_length
        if xfer is None:
            xfer = dlen if t.info.direction == Direction.READ else 0
        # §11.4.5.1: residuals compare EDTL with what the command would move
        overflow = underflow = False
        residual = 0
        if status == Status.GOOD or t.info.direction != Direction.NONE or edtl:
            if xfer > edtl:
                overflow, residual = True, xfer - edtl
            elif xfer < edtl:
                underflow, residual = True, edtl - xfer
        # A CDB may ask for more than 4 GiB past EDTL; the field is 32 bits: saturate
        residual = min(residual, 0xFFFFFFFF)
        send_len = min(dlen, edtl) if t.read else 0
        if send_len:
            mv = data if isinstance(data, memoryview) else memoryview(data)
            self._send_data_in(t, mv[:send_len], status, r.sense, overflow, underflow,
                               residual)
            if status == Status.GOOD and not r.sense:
                return
        self._send(P.ScsiResponse(itt=t.itt, status=status, overflow=overflow,
                                  underflow=underflow, residual=residual,
                                  data=_sense_segment(r.sense)))

    def _send_data_in(self, t: Task, data: memoryview, status: int, sense: bytes,
                      overflow: bool, underflow: bool, residual: int) -> None:
        s = self.session
        assert s is not None
        seg = self.max_xmit
        burst = s.params.max_burst_length
        total = data.nbytes
        fold = status == Status.GOOD and not sense  # §11.7.4: status in the last Data-In
        # built here rather than through _send: one Data-In per 4 KiB read is the hot path.
        # StatSN goes only in the Data-In that carries status (§11.7.4), as _send would do.
        itt, lun, exp_cmd_sn, max_cmd_sn = t.itt, t.lun_field, s.exp_cmd_sn, s.max_cmd_sn
        hd, dd, out = self.header_digest, self.data_digest, self._out
        data_sn = 0
        off = 0
        while off < total:
            n = min(seg, total - off, burst - off % burst)
            last = off + n >= total
            end_of_burst = last or (off + n) % burst == 0
            pdu = P.DataIn(itt=itt, lun=lun, data_sn=data_sn, buffer_offset=off,
                           final=end_of_burst, data=data[off: off + n],
                           exp_cmd_sn=exp_cmd_sn, max_cmd_sn=max_cmd_sn)
            if last and fold:
                pdu.has_status = True
                pdu.status = status
                pdu.overflow, pdu.underflow, pdu.residual = overflow, underflow, residual
                pdu.stat_sn = self.stat_sn
                self.stat_sn = (self.stat_sn + 1) & 0xFFFFFFFF
            out.extend(P.encode(pdu, hd, dd))
            data_sn += 1
            off += n

    # -- task management (§11.5, §11.6) ----------------------------------------------------
    def _abort(self, t: Task) -> None:
        s = self.session
        assert s is not None
        t.aborted = True
        s.drop_task(t)
        if t.executing:
            self._events.append(CancelTask(t))

    def abort_matching(self, lun: int | None) -> None:
        """Abort every task of this connection's session on ``lun`` (None: all)."""
        s = self.session
        if s is None:
            return
        for t in list(s.tasks.values()):
            if lun is None or t.lun == lun:
                self._abort(t)

    def _tmf(self, pdu: P.TaskMgmtRequest) -> None:
        s = self.session
        assert s is not None
        fn = pdu.function
        R = P.TmfResponse
        if s.session_type != "Normal" or s.target is None:
            self._tmf_reply(pdu, R.REJECTED)
            return
        lun = dispatch.lun_from_wire(pdu.lun)
        needs_lun = fn in (P.TmfFunction.ABORT_TASK, P.TmfFunction.ABORT_TASK_SET,
                           P.TmfFunction.CLEAR_TASK_SET, P.TmfFunction.LOGICAL_UNIT_RESET,
                           P.TmfFunction.CLEAR_ACA)
        if needs_lun and lun not in s.target.luns_for(s.initiator_name):
            self._tmf_reply(pdu, R.LUN_DOES_NOT_EXIST)
            return
        if fn == P.TmfFunction.ABORT_TASK:
            t = s.tasks.get(pdu.referenced_task_tag)
            if t is None:
                # §11.5.1: a task already answered, or never seen below CmdSN, is "complete"
                resp = (R.COMPLETE if sn_lt(pdu.ref_cmd_sn, s.exp_cmd_sn)
                        else R.TASK_DOES_NOT_EXIST)
                self._tmf_reply(pdu, resp)
                return
            if t.lun != lun:
                self._tmf_reply(pdu, R.TASK_DOES_NOT_EXIST)
                return
            self._abort(t)
            self._tmf_reply(pdu, R.COMPLETE)
        elif fn == P.TmfFunction.ABORT_TASK_SET:
            self.abort_matching(lun)
            self._tmf_reply(pdu, R.COMPLETE)
        elif fn == P.TmfFunction.CLEAR_ACA:
            self._tmf_reply(pdu, R.COMPLETE)  # we never establish ACA (NACA=0 only)
        elif fn in (P.TmfFunction.CLEAR_TASK_SET, P.TmfFunction.LOGICAL_UNIT_RESET):
            self._events.append(Reset(fn, s.target, lun, pdu))
        elif fn in (P.TmfFunction.TARGET_WARM_RESET, P.TmfFunction.TARGET_COLD_RESET):
            self._events.append(Reset(fn, s.target, None, pdu))
        elif fn == P.TmfFunction.TASK_REASSIGN:
            self._tmf_reply(pdu, R.REASSIGNMENT_NOT_SUPPORTED)
        else:
            self._tmf_reply(pdu, R.NOT_SUPPORTED)

    def _tmf_reply(self, pdu: P.TaskMgmtRequest, response: int) -> None:
        self._send(P.TaskMgmtResponse(itt=pdu.itt, response=response))

    def tmf_done(self, request: P.TaskMgmtRequest, response: int) -> None:
        if self.phase is Phase.CLOSING:
            return
        self._tmf_reply(request, response)
        if request.function == P.TmfFunction.TARGET_COLD_RESET:
            # §11.5.1: a cold reset drops every connection of the target, this one too
            self._close("target cold reset")

    # -- teardown --------------------------------------------------------------------------
    def connection_lost(self) -> list[Task]:
        """The transport is gone: abort everything; returns tasks still executing."""
        self.phase = Phase.CLOSING
        s = self.session
        running: list[Task] = []
        if s is None:
            return running
        for t in list(s.tasks.values()):
            t.aborted = True
            if t.executing:
                running.append(t)
        s.drop_all_tasks()
        s.pending.clear()
        if self in s.connections:
            s.connections.remove(self)
        if not s.connections:
            self.registry.remove(s)
        return running

