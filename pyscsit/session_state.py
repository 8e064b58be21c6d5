"""Session-wide state (RFC 7143 §3.2.2, §4.2.2.1): what a session keeps across its connections.

Command numbering (serial number arithmetic, the CmdSN window), the tasks in flight with their
Data-Out / R2T bookkeeping, and the registry of sessions (TSIH, reinstatement). Plain data with
no I/O; the per-connection protocol machine that drives it is ``session.Connection``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyscsit import pdu as P
from pyscsit.keys import OperationalParams
from pyscsit.scsi.lu import MAX_TRANSFER_BYTES
from pyscsit.scsi.task import CdbInfo, Nexus, ScsiCommand
from pyscsit.target import Target

if TYPE_CHECKING:
    from pyscsit.session import Connection


CMD_WINDOW = 128  # commands a session may have in flight (MaxCmdSN - ExpCmdSN + 1)
MAX_DATA_OUT = MAX_TRANSFER_BYTES  # Data-Out one command may have buffered


# -- serial number arithmetic (RFC 1982, 32 bits; RFC 7143 §4.2.2.1) ----------------------------

def sn_lt(a: int, b: int) -> bool:
    return a != b and ((a < b and b - a < 1 << 31) or (a > b and a - b > 1 << 31))


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


def sn_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


# -- tasks ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class R2TState:
    ttt: int
    offset: int
    length: int
    next_offset: int
    next_data_sn: int = 0


@dataclass(slots=True, eq=False)
class Task:
    itt: int
    cmd_sn: int
    immediate: bool
    lun: int
    lun_field: int
    cdb: bytes
    attr: int
    expected_length: int
    info: CdbInfo
    write: bool
    read: bool
    buffer: bytearray | None = None
    received: int = 0
    wanted: int = 0  # bytes of Data-Out the task waits for
    unsolicited_end: int = 0  # data below this offset comes unsolicited
    unsol_next_offset: int = 0
    unsol_data_sn: int = 0
    r2t_next_offset: int = 0
    r2t_sn: int = 0
    r2ts: dict[int, R2TState] = field(default_factory=dict)
    delivered: bool = False
    executing: bool = False
    aborted: bool = False
    command: ScsiCommand | None = None
    handle: object = None  # the server's asyncio task, for cancellation

    @property
    def data_complete(self) -> bool:
        return self.buffer is None or self.received >= self.wanted


def task_bytes(t: Task) -> int:
    """What a task holds in memory while in flight: its Data-Out buffer, or its read data."""
    if t.buffer is not None:
        return len(t.buffer)
    # a read above what any LU moves fails without data
    n = min(t.expected_length, t.info.transfer_length) if t.read else 0
    return n if n <= MAX_DATA_OUT else 0


# -- sessions ------------------------------------------------------------------------------------

@dataclass(eq=False)
class Session:
    tsih: int
    isid: int
    initiator_name: str
    session_type: str
    target: Target | None
    params: OperationalParams
    exp_cmd_sn: int
    nexus: Nexus | None = None
    tasks: dict[int, Task] = field(default_factory=dict)
    pending: dict[int, P.Pdu] = field(default_factory=dict)  # out-of-order numbered PDUs
    connections: list[Connection] = field(default_factory=list)
    # immediate tasks in ``tasks``: they do not use the window. Kept by add_task/drop_task,
    # so MaxCmdSN costs O(1) per PDU sent rather than a walk of the task table.
    immediate_tasks: int = 0

    @property
    def max_cmd_sn(self) -> int:
        # The window shrinks while commands are in flight: flow control (§4.2.2.1).
        in_flight = len(self.tasks) - self.immediate_tasks
        return (self.exp_cmd_sn + max(CMD_WINDOW - in_flight, 0) - 1) & 0xFFFFFFFF

    def add_task(self, t: Task) -> None:
        self.tasks[t.itt] = t
        if t.immediate:
            self.immediate_tasks += 1

    def drop_task(self, t: Task) -> None:
        if self.tasks.get(t.itt) is t:
            del self.tasks[t.itt]
            if t.immediate:
                self.immediate_tasks -= 1

    def drop_all_tasks(self) -> None:
        self.tasks.clear()
        self.immediate_tasks = 0


class SessionRegistry:
    """All sessions of the server: TSIH allocation and lookup (§4.4.3)."""

    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}
        self._next = itertools.count(1)

    def allocate_tsih(self) -> int:
        while True:
            tsih = next(self._next) & 0xFFFF
            if tsih and tsih not in self.sessions:
                return tsih

    def exists(self, tsih: int) -> bool:
        return tsih in self.sessions

    def add(self, s: Session) -> list[Session]:
        """Register ``s``; return older sessions it reinstates (same initiator, ISID, target:
        §6.3.5 session reinstatement), which the caller closes."""
        old = [o for o in self.sessions.values()
               if o.initiator_name == s.initiator_name and o.isid == s.isid
               and o.target is s.target and o.session_type == s.session_type]
        for o in old:
            self.sessions.pop(o.tsih, None)
        self.sessions[s.tsih] = s
        return old

    def remove(self, s: Session) -> None:
        if self.sessions.get(s.tsih) is s:
            del self.sessions[s.tsih]

