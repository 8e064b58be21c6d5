"""Applying a changed config file to a running server: LUNs come and go, no session drops.

How it works (DESIGN: the config file is the one source of truth):

- ``pyscsit serve --config FILE`` writes ``<state_dir>/pyscsit.pid`` (pid, then the config
  path) and re-reads FILE on SIGHUP. ``pyscsit lun ...`` rewrites FILE atomically, sends the
  SIGHUP and waits for ``<state_dir>/reload-status.json`` to report a reload that read the file
  after the signal was sent; ``kill -HUP $(head -1 <state_dir>/pyscsit.pid)`` does the same by
  hand.
- A reload diffs the new config against what is live, per (target, LUN). A LUN whose config is
  unchanged keeps its LogicalUnit (and every session keeps using it); only its capacity is
  re-read, and a change raises 2A/09 CAPACITY DATA HAS CHANGED for every I_T nexus (SBC-3
  4.6). A LUN added, removed or replaced raises 3F/0E REPORTED LUNS DATA HAS CHANGED on the
  target's other LUs for every nexus logged in to it (SPC-4 6.33). A removed LU leaves the map
  at once, so new commands to it get 5/25/00 LOGICAL UNIT NOT SUPPORTED; commands already
  running on it finish before its backend is closed. A removed target's connections are
  dropped. Portals and timeouts need a restart (logged).
- A config that does not parse changes nothing and is reported (log and status file).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyscsit.config import (
    ConfigError,
    LunConfig,
    ServerConfig,
    build_model,
    load_config,
)
from pyscsit.files import write_atomic
from pyscsit.target import Target

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit
    from pyscsit.scsi.task import Nexus
    from pyscsit.server import IscsiServer

__all__ = ["PID_FILE", "STATUS_FILE", "ReloadReport", "Reloader", "live_config"]

log = logging.getLogger("pyscsit.reload")

PID_FILE = "pyscsit.pid"
STATUS_FILE = "reload-status.json"
UA_CAPACITY_CHANGED = (0x2A, 0x09)
UA_REPORTED_LUNS_CHANGED = (0x3F, 0x0E)
DRAIN_TIMEOUT = 60.0  # seconds to let commands on a removed LU finish before closing it

Key = tuple[str, int]  # (target IQN, LUN)


@dataclass
class ReloadReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    targets_added: list[str] = field(default_factory=list)
    targets_removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        parts = [f"{name} {', '.join(items)}" for name, items in (
            ("targets added:", self.targets_added), ("targets removed:", self.targets_removed),
            ("LUNs added:", self.added), ("removed:", self.removed),
            ("replaced:", self.replaced), ("resized:", self.resized)) if items]
        parts += self.notes
        if self.error:
            parts.append(f"error: {self.error}")
        return "; ".join(parts) or "no changes"


def _same_lu(a: LunConfig, b: LunConfig) -> bool:
    """Same LU, whatever its size says: a size change is a resize, not a new LU."""
    return dataclasses.replace(a, size=None) == dataclasses.replace(b, size=None)


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


class Reloader:
    """Owns the difference between the config file and the running server's model."""

    def __init__(self, server: IscsiServer, cfg: ServerConfig,
                 config_path: str | os.PathLike[str]) -> None:
        self.server = server
        self.cfg = cfg
        self.config_path = os.fspath(config_path)
        self.generation = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closing: set[asyncio.Task[None]] = set()
        self._pending: list[asyncio.Task[None]] = []  # closes started by this reload
        self._applied: dict[Key, LunConfig] = {
            (t.iqn, n): lun for t in cfg.targets for n, lun in t.luns.items()
            if t.iqn in server.model.targets and n in server.model.targets[t.iqn].luns}

    # -- triggers ----------------------------------------------------------------------------
    def request(self) -> None:
        """SIGHUP: reload soon; signals during a reload coalesce into one more reload."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            self._again = False
            await self.reload()
            if not self._again:
                return

    async def reload(self) -> ReloadReport:
        """Re-read the config file and apply it; never raises for a user's mistake."""
        async with self._lock:
            read_at = time.time()
            self._pending = []
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
                report = await self.apply(new)
                if self._pending:  # `pyscsit lun delete --destroy` needs the device closed
                    await asyncio.wait(self._pending)
            except ConfigError as e:
                report = ReloadReport(error=str(e))
            except Exception as e:  # a bug must not stop the server
                log.exception("reload failed")
                report = ReloadReport(error=f"internal error: {e}")
            self.generation += 1
            if report.error:
                log.error("reload %d of %s: %s", self.generation, self.config_path,
                          report.summary())
            else:
                log.info("reload %d of %s: %s", self.generation, self.config_path,
                         report.summary())
            self._write_status(report, read_at)
            return report

    # -- the diff ----------------------------------------------------------------------------
    async def apply(self, new: ServerConfig) -> ReloadReport:
        model = self.server.model
        report = ReloadReport()
        wanted: dict[Key, LunConfig] = {
            (t.iqn, n): lun for t in new.targets for n, lun in t.luns.items()}
        new_iqns = {t.iqn for t in new.targets}
        if new.portals != self.cfg.portals:
            report.notes.append("portals changed: restart to apply")
        if new.state_dir != self.cfg.state_dir:
            report.notes.append("state_dir changed: restart to apply")
            new = dataclasses.replace(new, state_dir=self.cfg.state_dir)
        changed: set[str] = set()  # targets whose LUN set changed

        # 1. Take away what is gone or replaced (before opening: a device is opened O_EXCL).
        gone: list[tuple[Key, LogicalUnit]] = []
        for key, old in list(self._applied.items()):
            if key in wanted and _same_lu(old, wanted[key]):
                continue
            target = model.targets.get(key[0])
            lu = target.luns.pop(key[1], None) if target is not None else None
            del self._applied[key]
            changed.add(key[0])
            if lu is not None:
                gone.append((key, lu))
            (report.replaced if key in wanted else report.removed).append(_name(key))
        for iqn in [i for i in model.targets if i not in new_iqns]:
            target = model.targets.pop(iqn)
            for n, lu in list(target.luns.items()):
                gone.append(((iqn, n), lu))
                self._applied.pop((iqn, n), None)
            target.luns.clear()
            report.targets_removed.append(iqn)
            self._drop_sessions(target)
        for key, lu in gone:
            self._close_later(key, lu)

        # 2. Open what is new, with build_model on a config holding only those LUNs.
        partial = dataclasses.replace(new, targets=tuple(
            dataclasses.replace(t, luns={n: lun for n, lun in t.luns.items()
                                         if (t.iqn, n) not in self._applied})
            for t in new.targets))
        try:
            built = await asyncio.to_thread(build_model, partial)
        except ConfigError as e:
            report.error = str(e)
            self._raise_reported_luns_changed(changed)
            self.cfg = new
            return report

        # 3. Put it in place: nothing awaits from here on, so sessions see one change.
        model.discovery_auth = built.discovery_auth
        for iqn, fresh in built.targets.items():
            target = model.targets.get(iqn)
            if target is None:
                model.targets[iqn] = fresh
                report.targets_added.append(iqn)
                target = fresh
            else:
                self._update_target(target, fresh)
                target.luns.update(fresh.luns)
            for n, lu in fresh.luns.items():
                # one server-wide directory: new LUs, of old and new targets, join it
                if model.directory is not None:
                    model.directory.add(lu)
                self._applied[(iqn, n)] = wanted[(iqn, n)]
                if _name((iqn, n)) not in report.replaced:
                    report.added.append(_name((iqn, n)))
                changed.add(iqn)
        self._raise_reported_luns_changed(changed, skip=built.targets)
        for (iqn, n) in list(self._applied):
            target = model.targets[iqn]
            lu = target.luns[n]
            before = lu.num_blocks
            if lu.refresh_capacity() != before:
                report.resized.append(f"{iqn}/{n} ({before} -> {lu.num_blocks} blocks)")
                # SBC-3 4.6: every I_T nexus, not only those that used this LU.
                lu.establish_unit_attention(UA_CAPACITY_CHANGED,
                                            set(lu.known_nexuses()) | self._nexuses(target))
            self._applied[(iqn, n)] = wanted[(iqn, n)]
        self.cfg = new
        return report

    @staticmethod
    def _update_target(target: Target, fresh: Target) -> None:
        """Auth, alias, ACLs, ...: everything but the name and the LUN map, for new logins."""
        for f in dataclasses.fields(Target):
            if f.name not in ("iqn", "luns"):
                setattr(target, f.name, getattr(fresh, f.name))

    def _nexuses(self, target: Target) -> set[Nexus]:
        return {s.nexus for s in self.server.registry.sessions.values()
                if s.target is target and s.nexus is not None}

    def _raise_reported_luns_changed(self, iqns: set[str],
                                     skip: dict[str, Target] | None = None) -> None:
        for iqn in iqns:
            target = self.server.model.targets.get(iqn)
            if target is None:
                continue
            nexuses = self._nexuses(target)
            new_lus = skip[iqn].luns.values() if skip and iqn in skip else ()
            for lu in target.luns.values():
                if not any(lu is x for x in new_lus):  # a new LU has nothing stale to report
                    lu.establish_unit_attention(UA_REPORTED_LUNS_CHANGED, nexuses)

    def _drop_sessions(self, target: Target) -> None:
        for p in list(self.server.protocols):
            s = p.conn.session
            if s is not None and s.target is target:
                p.abort()

    # -- closing removed LUs once their commands are done ------------------------------------
    def _close_later(self, key: Key, lu: LogicalUnit) -> None:
        task = asyncio.ensure_future(self._drain_and_close(key, lu))
        self._closing.add(task)
        self._pending.append(task)
        task.add_done_callback(self._closing.discard)

    async def _drain_and_close(self, key: Key, lu: LogicalUnit) -> None:
        running = [t.handle for s in list(self.server.registry.sessions.values())
                   if s.target is not None and s.target.iqn == key[0]
                   for t in list(s.tasks.values())
                   if t.lun == key[1] and isinstance(t.handle, asyncio.Future)
                   and not t.handle.done()]
        if running:
            await asyncio.wait(running, timeout=DRAIN_TIMEOUT)
        if lu.directory is not None:
            lu.directory.remove(lu)
        await asyncio.to_thread(lu.backend.close)
        log.info("closed %s (%s)", _name(key), lu.backend.locator)

    async def drain(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._closing:
            await asyncio.wait(list(self._closing))

    # -- files the CLI reads -----------------------------------------------------------------
    def _write_status(self, report: ReloadReport, read_at: float) -> None:
        doc = {"pid": os.getpid(), "generation": self.generation, "read_at": read_at,
               "ok": report.error is None, "summary": report.summary()}
        try:
            write_atomic(Path(self.cfg.state_dir) / STATUS_FILE, json.dumps(doc) + "\n")
        except OSError as e:
            log.error("cannot write %s: %s", STATUS_FILE, e.strerror or e)


def live_config(cfg: ServerConfig, config_path: str | os.PathLike[str]
                ) -> Callable[[IscsiServer], contextlib.AbstractAsyncContextManager[Reloader]]:
    """server.serve(attach=...): pid file + SIGHUP reload for as long as the server runs."""

    @contextlib.asynccontextmanager
    async def attach(server: IscsiServer) -> AsyncIterator[Reloader]:
        reloader = Reloader(server, cfg, config_path)
        pid_path = Path(cfg.state_dir) / PID_FILE
        try:
            write_atomic(pid_path, f"{os.getpid()}\n{os.path.abspath(config_path)}\n", 0o644)
        except OSError as e:
            log.warning("cannot write %s (pyscsit lun cannot reach this server): %s",
                        pid_path, e.strerror or e)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        try:
            yield reloader
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await reloader.drain()
            with contextlib.suppress(OSError):
                if pid_path.read_text().split("\n", 1)[0] == str(os.getpid()):
                    pid_path.unlink()

    return attach
