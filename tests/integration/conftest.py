"""Start `pyscsit serve` as users start it (a subprocess with a YAML config) on loopback
port 0, and find the real port in its log."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

IQN = "iqn.2026-11.org.pyscsit.test:disk0"


def require_tool(name: str) -> str:
    """Integration tests need real initiators: a missing one is a failure, not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian packages: libiscsi-bin qemu-utils "
                    f"qemu-block-extra open-iscsi; .ci/run installs them)")
    return path


@dataclass
class RunningServer:
    proc: subprocess.Popen[str]
    config_path: Path
    port: int
    host: str = "127.0.0.1"
    log_lines: list[str] = field(default_factory=list)

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, iqn: str = IQN, lun: int = 0, user: str | None = None,
            secret: str | None = None) -> str:
        cred = f"{user}%{secret}@" if user is not None else ""
        return f"iscsi://{cred}{self.portal}/{iqn}/{lun}"

    def log(self) -> str:
        return "\n".join(self.log_lines)

    def logged(self, text: str, timeout: float = 5.0) -> bool:
        """Has the server logged ``text``? (Its log is read by a thread: allow it to catch up.)"""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp_path: Path, config: dict[str, Any], *, name: str = "server.yaml",
                 extra_args: tuple[str, ...] = ()) -> RunningServer:
    config.setdefault("state_dir", str(tmp_path / "state"))
    config.setdefault("portals", ["127.0.0.1:0"])
    cfg = tmp_path / name
    cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyscsit", "serve", "--config", str(cfg), *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    port_box: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = re.search(r"listening on \[?[0-9a-f.:]+\]?:(\d+)", line)
            if m and not port_box:
                port_box.append(int(m.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 20
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    if not port_box:
        proc.kill()
        proc.wait()
        pytest.fail("server did not start:\n" + "\n".join(lines))
    return RunningServer(proc=proc, config_path=cfg, port=port_box[0], log_lines=lines)


def file_lun_config(tmp_path: Path, *, size: str = "128MiB", auth: Any = "none",
                    iqn: str = IQN, extra_luns: dict[int, Any] | None = None) -> dict[str, Any]:
    luns: dict[int, Any] = {0: {"backend": "file", "path": str(tmp_path / "disk0.img"),
                                "size": size}}
    luns.update(extra_luns or {})
    return {"targets": [{"iqn": iqn, "auth": auth, "luns": luns}]}


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningServer] = []

    def factory(config: dict[str, Any], **kw: Any) -> RunningServer:
        s = start_server(tmp_path, config, **kw)
        started.append(s)
        return s

    yield factory
    for s in started:
        rc = s.stop()
        assert "Traceback" not in s.log(), s.log()
        assert rc == 0, f"server exited with {rc}:\n{s.log()}"


@pytest.fixture
def anon_server(tmp_path: Path, server_factory: Any) -> RunningServer:
    return server_factory(file_lun_config(tmp_path))  # type: ignore[no-any-return]


def run(cmd: list[str], timeout: float = 120, check: bool = True,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    require_tool(cmd[0])
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                       timeout=timeout, check=False, **kw)  # checked below, with the output
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p
