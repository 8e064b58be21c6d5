"""The only asyncio socket code: listeners, one Protocol per connection, timers.

Each connection is a sans-IO ``session.Connection``; this module feeds it bytes, writes what it
hands out with one ``writelines`` per read event, runs the SCSI tasks it asks for, and carries
out the events that reach beyond one connection (session reinstatement, LUN/target resets).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from pyscsit import pdu as P
from pyscsit.limits import Admission, Limits, StallWatch, Throttle
from pyscsit.scsi import dispatch
from pyscsit.scsi.sense import InternalTargetFailure
from pyscsit.scsi.task import Nexus, ScsiResult, Status
from pyscsit.session import (
    CancelTask,
    Close,
    Connection,
    ExecuteTask,
    Reset,
    Session,
    SessionRegistry,
    SessionUp,
    Task,
)
from pyscsit.target import Model, Portal

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

log = logging.getLogger("pyscsit.server")

#: a command moving this much is sent at once rather than with the rest of its read event
FLUSH_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerOptions:
    login_timeout: float = 30.0  # seconds from accept to full feature phase
    nop_interval: float = 15.0  # idle seconds before the target pings (NOP-In)
    nop_timeout: float = 15.0  # seconds to wait for the NOP-Out answer before dropping
    max_recv_data_segment_length: int = 262144
    # connection caps, Data-Out timeout, buffer budget (limits.py)
    limits: Limits = field(default_factory=Limits)


class IscsiServer:
    def __init__(self, model: Model, options: ServerOptions | None = None) -> None:
        self.model = model
        self.options = options or ServerOptions()
        self.registry = SessionRegistry()
        self.protocols: set[IscsiProtocol] = set()
        self.admission: Admission[IscsiProtocol] = Admission(self.options.limits,
                                                             IscsiProtocol.idle_key)
        self.throttle = Throttle()  # one warning per flood and interval
        self._servers: list[asyncio.AbstractServer] = []
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        bound: list[Portal] = []
        for portal in self.model.portals:
            # a deep accept queue: a connection flood is sorted out by limits, not by SYN drops
            srv = await loop.create_server(lambda: IscsiProtocol(self), portal.host,
                                           portal.port, reuse_address=True, backlog=1024)
            self._servers.append(srv)
            for sock in srv.sockets:
                addr = sock.getsockname()
                self.addresses.append((addr[0], addr[1]))
                log.info("listening on %s", _fmt(addr[0], addr[1]))
            # port 0 asks for any free port: SendTargets must name the one we got
            port = srv.sockets[0].getsockname()[1] if srv.sockets else portal.port
            bound.append(Portal(portal.host, port))
        self.model.portals = bound
        return self.addresses

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for p in list(self.protocols):
            p.abort()
        for srv in self._servers:
            await srv.wait_closed()
        for target in self.model.targets.values():
            for lu in target.luns.values():
                lu.backend.close()

    # -- events that reach beyond one connection ---------------------------------------------
    def session_up(self, proto: IscsiProtocol, ev: SessionUp) -> None:
        s = ev.session
        self.admission.logged_in(proto)
        proto.watch_transfers()
        for old in self.registry.add(s):
            log.info("session reinstatement: %s ISID 0x%012x replaces TSIH %d",
                     s.initiator_name, s.isid, old.tsih)
            for c in list(old.connections):
                for p in self.protocols:
                    if p.conn is c and p is not proto:
                        p.abort()
            self.nexus_lost(old)  # before the new session's first command
        if s.target is not None:
            for lu in s.target.luns.values():
                lu.abort_nexus = functools.partial(self.abort_nexus, lu)
        log.info("%s session TSIH %d: %s -> %s", s.session_type, s.tsih, s.initiator_name,
                 s.target.iqn if s.target else "discovery")

    def nexus_lost(self, s: Session) -> None:
        """A session ended (logout, connection loss, reinstatement): I_T nexus loss for every
        LU of its target (a RESERVE(6)/(10) reservation goes; SPC-2 5.5.1)."""
        if s.nexus is not None and s.target is not None:
            for lu in s.target.luns.values():
                lu.nexus_lost(s.nexus)

    def abort_nexus(self, lu: LogicalUnit, nexus: Nexus) -> None:
        """PREEMPT AND ABORT (SPC-4 5.9.11.5): abort the preempted I_T nexus's tasks on lu."""
        for p in list(self.protocols):
            s = p.conn.session
            if s is None or s.target is None or s.nexus != nexus:
                continue
            for number, other in s.target.luns.items():
                if other is lu:
                    p.conn.abort_matching(number)
            p.pump()

    def reset(self, origin: IscsiProtocol, ev: Reset) -> None:
        fn = ev.function
        for p in list(self.protocols):
            s = p.conn.session
            if s is None or s.target is not ev.target:
                continue
            p.conn.abort_matching(ev.lun)
            p.pump()
        if fn == P.TmfFunction.LOGICAL_UNIT_RESET and ev.lun is not None:
            ev.target.luns[ev.lun].reset("lun")
        elif fn in (P.TmfFunction.TARGET_WARM_RESET, P.TmfFunction.TARGET_COLD_RESET):
            kind = "cold" if fn == P.TmfFunction.TARGET_COLD_RESET else "warm"
            for lu in ev.target.luns.values():
                lu.reset(kind)
        origin.conn.tmf_done(ev.request, P.TmfResponse.COMPLETE)
        origin.pump()
        if fn == P.TmfFunction.TARGET_COLD_RESET:
            for p in list(self.protocols):
                s = p.conn.session
                if p is not origin and s is not None and s.target is ev.target:
                    p.abort()


@types.coroutine
def _resume(coro: Coroutine[object, None, ScsiResult],
            waiting: object) -> Generator[object, None, ScsiResult]:
    """Continue ``coro``, which has already run up to its first suspension (it yielded
    ``waiting``, a future or None), under the Task that awaits this: the Task waits on what
    the coroutine yields and resumes or cancels it, exactly as if it had started it."""
    while True:
        try:
            yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - CancelledError, whatever the Task throws
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return cast(ScsiResult, stop.value)
        else:
            try:
                waiting = coro.send(None)
            except StopIteration as stop:
                return cast(ScsiResult, stop.value)


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class IscsiProtocol(asyncio.Protocol):
    def __init__(self, server: IscsiServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn: Connection = None  # type: ignore[assignment]  # set in connection_made
        self.closing = False
        self.last_rx = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._stalls: StallWatch | None = None  # Data-Out timeout, from full feature phase
        self._watch: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()  # 3.11 checks getpid() on every lookup
        self._flush_pending = False

    # -- transport callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.conn = Connection(self.server.model, self.server.registry,
                               local_addr=(local[0], local[1]), peer_addr=(peer[0], peer[1]),
                               max_recv_data_segment_length=(
                                   self.server.options.max_recv_data_segment_length),
                               limits=self.server.options.limits)
        self.server.protocols.add(self)
        self.started = time.monotonic()
        if not self._admitted(peer[0]):
            return
        self._schedule(self.server.options.login_timeout)
        log.debug("connection from %s", _fmt(peer[0], peer[1]))

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        try:
            self.conn.receive_data(data)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("internal error on connection from %s", self.conn.peer_addr[0])
            self.abort()
            return
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.protocols.discard(self)
        self.server.admission.release(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()
        s = self.conn.session
        live = s is not None and self.server.registry.sessions.get(s.tsih) is s
        for t in self.conn.connection_lost():
            self._cancel(t)
        if live and s is not None and not s.connections:
            self.server.nexus_lost(s)
        log.debug("connection from %s closed", self.conn.peer_addr[0])

    # -- limits: admission, Data-Out timeout (limits.py) -------------------------------------
    def idle_key(self) -> tuple[bool, float]:
        """Which pending connection makes room first: one that never sent a byte, then the
        one idle longest."""
        return self.last_rx > self.started, self.last_rx

    def _admitted(self, address: str) -> bool:
        srv = self.server
        lim = srv.options.limits
        victims = srv.admission.admit(self, address)
        now = time.monotonic()
        if victims is None:
            per_address = srv.admission.count(address) >= lim.max_connections_per_address
            why = (f"{lim.max_connections_per_address} connections from that address"
                   if per_address else f"{lim.max_connections} connections in total")
            held = srv.throttle.allow("refuse " + address, now)
            if held is not None:
                log.warning("refusing a connection from %s: %s, all logged in (limits)%s",
                            address, why, f"; {held} more refused" if held else "")
            self.abort()
            return False
        for v in victims:
            held = srv.throttle.allow("evict", now)
            if held is not None:
                log.warning("dropping a connection from %s that has not logged in, to make "
                            "room for %s (limits)%s", v.conn.peer_addr[0], address,
                            f"; {held} more dropped" if held else "")
            v.abort()
        return True

    def watch_transfers(self) -> None:
        """From full feature phase: a task that waits for Data-Out (or for the commands before
        it) and receives nothing for limits.r2t_timeout costs the connection."""
        timeout = self.server.options.limits.r2t_timeout
        self._stalls = StallWatch(timeout)
        self._watch = self._loop.call_later(max(timeout / 2, 0.05), self._on_watch)

    def _on_watch(self) -> None:
        self._watch = None
        if self.closing or self._stalls is None:
            return
        if self._write_paused:
            self._stalls.reset()  # we are not reading: the peer's silence is ours
        else:
            stalled = self._stalls.check(self.conn.waiting_for_data(), time.monotonic())
            if stalled:
                log.warning("%s: no Data-Out for task 0x%08x in %gs: dropping the connection",
                            self.conn.peer_addr[0], stalled[0], self._stalls.timeout)
                self.abort()  # connection_lost aborts its tasks
                return
        self._watch = self._loop.call_later(max(self._stalls.timeout / 2, 0.05),
                                            self._on_watch)

    def pause_writing(self) -> None:
        # The peer is not reading: stop reading its commands until it does (bounded memory).
        self._write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # -- the pump: events, then output -----------------------------------------------------
    def pump(self) -> None:
        """Carry out the connection's events, then send everything it produced with one
        ``writelines``: SCSI tasks that finish without waiting (page-cache reads, small
        buffered writes) answer in the same system call as the rest of this read event."""
        if self.transport is None or self.closing:
            return
        self._flush_pending = False
        delay = self.conn.login.take_delay()  # failed-login back-off (login.py, acl.py)
        if delay > 0:
            self.transport.pause_reading()  # nothing may overtake the held answer
            self._loop.call_later(delay, self._after_delay)
            return
        conn = self.conn
        while True:
            events = conn.take_events()
            if not events:
                break
            for ev in events:
                if type(ev) is ExecuteTask:
                    self._execute(ev.task)
                    if ev.task.expected_length >= FLUSH_BYTES:
                        # a large read: let the peer take it while the next one is read
                        self._write_out()
                elif isinstance(ev, CancelTask):
                    self._cancel(ev.task)
                elif isinstance(ev, SessionUp):
                    self._schedule(self.server.options.nop_interval)
                    self.server.session_up(self, ev)
                elif isinstance(ev, Reset):
                    self.server.reset(self, ev)
                elif isinstance(ev, Close):
                    log.info("closing connection from %s: %s", conn.peer_addr[0], ev.reason)
                    self._write_out()
                    self.close()
                    return
                if self.transport is None or self.closing:
                    return  # aborted meanwhile (a reset, a bug): nothing more to send
        self._write_out()

    def _write_out(self) -> None:
        out = self.conn.take_output()
        if out and self.transport is not None:
            self.transport.writelines(out)

    def _pump_soon(self) -> None:
        """A task finished outside a read event: send its answer once per loop iteration,
        together with every other task that finished in the same iteration."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self.pump)

    def _after_delay(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self.pump()

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()  # flushes what is buffered first

    def abort(self) -> None:
        if self.transport is not None:
            self.closing = True
            self.transport.abort()

    # -- SCSI tasks ------------------------------------------------------------------------
    def _execute(self, task: Task) -> None:
        """Run the task's command inline, as far as it goes without waiting (asyncio's eager
        tasks, 3.12): most commands finish here, with no Task, no extra loop iteration and no
        system call of their own. One that really waits (thread-pool I/O, a range lock)
        continues as a Task from where it stopped."""
        s = self.conn.session
        assert s is not None and s.target is not None and task.command is not None
        coro = dispatch.execute(s.target.luns_for(s.initiator_name), task.command)
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            result = stop.value
        except Exception:
            log.exception("SCSI task 0x%08x failed", task.itt)
            result = ScsiResult(Status.CHECK_CONDITION, sense=InternalTargetFailure().encode())
        else:
            task.handle = self._loop.create_task(self._run(task, _resume(coro, waiting)))
            return
        self._done(task, result)

    async def _run(self, task: Task, rest: Awaitable[ScsiResult]) -> None:
        try:
            result = await rest
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("SCSI task 0x%08x failed", task.itt)
            result = ScsiResult(Status.CHECK_CONDITION, sense=InternalTargetFailure().encode())
        if self._done(task, result):
            self._pump_soon()

    def _done(self, task: Task, result: ScsiResult) -> bool:
        try:
            self.conn.task_done(task, result)
        except Exception:  # as in data_received: a bug costs this connection, not a hang
            log.exception("internal error answering task 0x%08x", task.itt)
            self.abort()
            return False
        return True

    def _cancel(self, task: Task) -> None:
        h = task.handle
        if isinstance(h, asyncio.Future) and not h.done():
            h.cancel()

    # -- timers: login timeout, NOP pings --------------------------------------------------
    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(max(delay, 0.05), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closing:
            return
        opts = self.server.options
        now = time.monotonic()
        if self.conn.session is None:
            log.warning("login timeout for %s", self.conn.peer_addr[0])
            self.abort()
            return
        if self.conn.ping_overdue(now, opts.nop_timeout):
            log.warning("%s did not answer a NOP-In ping: dropping the connection",
                        self.conn.peer_addr[0])
            self.abort()
            return
        idle = now - self.last_rx
        # a PDU left half-sent is pinged like silence: a peer trickling it a byte at a time
        # cannot answer, and so cannot hold the connection forever
        if idle >= opts.nop_interval or self.conn.reader.buffered:
            self.conn.ping(now)
            self.pump()
            self._schedule(opts.nop_timeout)
        else:
            self._schedule(opts.nop_interval - idle)


#: given the running server, an async context that lives as long as it (reload.live_config:
#: SIGHUP -> re-read the config and apply it to the running model)
Attach = Callable[["IscsiServer"], contextlib.AbstractAsyncContextManager[object]]


async def serve(model: Model, *, options: ServerOptions | None = None,
                ready: Callable[[list[tuple[str, int]]], None] | None = None,
                attach: Attach | None = None) -> None:
    """Listen on every portal of ``model`` until cancelled."""
    server = IscsiServer(model, options)
    try:
        # attached before listening: once "listening on" is logged, `pyscsit lun` finds us
        async with attach(server) if attach is not None else contextlib.nullcontext():
            await server.start()
            if ready is not None:
                ready(server.addresses)
            await asyncio.Event().wait()
    finally:
        await server.close()


def run(model: Model, *, options: ServerOptions | None = None,
        ready: Callable[[list[tuple[str, int]]], None] | None = None,
        attach: Attach | None = None) -> None:
    """Run the server in the foreground until SIGTERM or SIGINT; uvloop when importable."""
    # the one signature both runners share (uvloop.run takes a loop_factory, asyncio.run only
    # from 3.12)
    runner: Callable[[Coroutine[object, object, None]], None]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await serve(model, options=options, ready=ready, attach=attach)
        except asyncio.CancelledError:
            log.info("stopping")

    runner(main())
