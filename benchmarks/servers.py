"""The two targets under test, started on 127.0.0.1 with free ports, and what we sample of them.

Both serve the same kind of LU: a pre-written 1 GiB file on the same filesystem, read once so it
sits in the page cache. Server CPU comes from /proc/PID/stat (utime + stime of every thread),
resident memory from VmRSS in /proc/PID/status, sampled while a client runs.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
LU_SIZE = 1 << 30
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_TGTD_SOCKETS = Path("/var/run/tgtd")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def prepare_lu(path: Path) -> None:
    """Write ``path`` in full (1 GiB of non-zero data), flush it, and read it back into cache."""
    chunk = os.urandom(1 << 20)
    if not path.exists() or path.stat().st_size != LU_SIZE:
        with open(path, "wb") as f:
            f.writelines(chunk for _ in range(LU_SIZE // len(chunk)))
            f.flush()
            os.fsync(f.fileno())
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while f.readinto(buf):
            pass


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Peak VmRSS of ``pid`` while the ``with`` block runs, sampled every 50 ms."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))
        except (OSError, ValueError):
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class Server:
    """One target: its process, where it listens and how clients name its LU."""

    name: str
    workdir: Path
    port: int = 0
    iqn: str = ""
    lun: int = 0
    proc: subprocess.Popen[bytes] | None = None
    commands: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def lu_path(self) -> Path:
        return self.workdir / f"{self.name}-lu.img"

    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/{self.lun}"

    def image_opts(self, digest: bool) -> str:
        return (f"driver=iscsi,transport=tcp,portal=127.0.0.1:{self.port},target={self.iqn},"
                f"lun={self.lun},header-digest={'crc32c' if digest else 'none'}")

    def set_header_digest(self, on: bool) -> None:
        """Make the target's answer match what the client offers (see TgtdServer)."""

    def _spawn(self, argv: list[str], log: Path, **kw: object) -> None:
        self.commands.append(shlex.join(argv))
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def peak_rss_kib(self) -> int:
        """VmHWM: the high-water mark over the process's life."""
        try:
            return _status_kib(self.pid, "VmHWM")
        except OSError:
            return 0


class PyscsitServer(Server):
    def __init__(self, workdir: Path) -> None:
        super().__init__("pyscsit", workdir, iqn="iqn.2026-11.org.pyscsit.bench:lu", lun=0)

    def start(self) -> None:
        self.port = free_port()
        cfg = self.workdir / "pyscsit.yaml"
        cfg.write_text(
            f"state_dir: {self.workdir / 'pyscsit-state'}\n"
            f'portals: ["127.0.0.1:{self.port}"]\n'
            "targets:\n"
            f"  - iqn: {self.iqn}\n"
            "    auth: none\n"
            "    luns:\n"
            f"      {self.lun}: {{backend: file, path: {self.lu_path}}}\n")
        self._spawn([sys.executable, "-m", "pyscsit", "serve", "--config", str(cfg),
                     "--log-level", "warning"], self.workdir / "pyscsit.log", cwd=str(REPO))
        assert self.proc is not None
        wait_listening(self.port, self.proc)


class TgtdServer(Server):
    """tgtd in the foreground, configured through its control socket with tgtadm.

    tgtd answers HeaderDigest with the first value of *its own* list that the initiator
    offered, while libiscsi offers "None,CRC32C" by default; so the target's list is set to
    exactly what each run wants (pyscsit picks the initiator's first choice, RFC 7143 §6.2).
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__("tgtd", workdir, iqn="iqn.2026-11.org.tgt.bench:lu", lun=1)
        self.control = 0
        self._digest: bool | None = None

    def _pick_control_port(self) -> int:
        for port in range(23260, 23360):
            if not (_TGTD_SOCKETS / f"socket.{port}").exists():
                return port
        raise RuntimeError("no free tgtd control port in 23260..23359")

    def tgtadm(self, *args: str) -> None:
        argv = ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]
        self.commands.append(shlex.join(argv))
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def start(self) -> None:
        self.port = free_port()
        self.control = self._pick_control_port()
        self._spawn(["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.port}",
                     "-C", str(self.control)], self.workdir / "tgtd.log")
        assert self.proc is not None
        wait_listening(self.port, self.proc)
        self.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
        self.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun",
                    str(self.lun), "-b", str(self.lu_path))
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        self.set_header_digest(False)

    def set_header_digest(self, on: bool) -> None:
        if self._digest is on:
            return
        self.tgtadm("--op", "update", "--mode", "target", "--tid", "1",
                    "-n", "HeaderDigest", "-v", "CRC32C" if on else "None")
        self._digest = on

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # tgtd ignores SIGTERM while it has targets: delete them, then the system
        for args in (("--op", "delete", "--mode", "target", "--tid", "1", "--force"),
                     ("--op", "delete", "--mode", "system")):
            try:
                self.tgtadm(*args)
            except (subprocess.SubprocessError, OSError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for suffix in ("", ".lock"):
            try:
                (_TGTD_SOCKETS / f"socket.{self.control}{suffix}").unlink()
            except OSError:
                pass
