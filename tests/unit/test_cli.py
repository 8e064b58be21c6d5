"""cli.py: `pyscsit serve` as a user runs it: one line and status 2 for a broken config."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pyscsit import __version__, cli
from pyscsit.config import DEFAULT_IQN
from pyscsit.target import Chap, Portal

REPO = Path(__file__).resolve().parents[2]


def pyscsit(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "pyscsit", *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
state_dir: state
portals: ["127.0.0.1:3260"]
targets:
  - iqn: iqn.2026-11.org.example:disk0
    auth:
      chap: {user: alice, secret: a-long-secret}
    luns:
      0: {backend: file, path: disk0.img, size: 40GiB}
"""


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("size: 40GiB", "size: 40Gx", "targets[0].luns.0.size: '40Gx' is not a size"),
    ("    auth:\n      chap: {user: alice, secret: a-long-secret}\n", "",
     "targets[0].auth: required but missing"),
    ("backend: file", "backend: zvol", ("targets[0].luns.0.path: does not apply to backend "
     "'zvol' (only to file, block)")),
    ("    luns:", "    lunz:", "targets[0].lunz: unknown key (did you mean 'luns'?)"),
    ("iqn: iqn.2026-11.org.example:disk0", "iqn: [disk0", "line 5, column 9: expected ',' or ']', but got ':'"),
])
def test_broken_config_is_one_line_and_status_2(
        tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = write(tmp_path, GOOD.replace(old, new))
    result = pyscsit("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pyscsit: {path}: {expected}")
    assert result.stdout == ""
    assert not (tmp_path / "state").exists()  # nothing created for a config that failed


def test_missing_config_file(tmp_path: Path) -> None:
    result = pyscsit("serve", "--config", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "pyscsit: nope.yaml: cannot read: No such file or directory\n"


def test_secret_is_not_printed_for_a_bad_secret(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("secret: a-long-secret", "secret: hunter2"))
    result = pyscsit("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"pyscsit: {path}: targets[0].auth.chap.secret: is too short: "
                             "CHAP secrets need at least 12 characters (96 bits)\n")
    assert "hunter2" not in result.stderr


def test_version_and_usage(tmp_path: Path) -> None:
    result = pyscsit("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"pyscsit {__version__}\n")
    result = pyscsit(cwd=tmp_path)
    assert result.returncode == 2
    assert "pyscsit: a command is required (try: pyscsit serve)" in result.stderr
    result = pyscsit("serve", "--log-level", "loud", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'loud'" in result.stderr
    assert "Traceback" not in result.stderr


def test_connect_lines_are_exact_commands() -> None:
    chap = Chap("pyscsit-0a1b2c3d", "S3cretS3cretS3cretS3cret")
    lines = cli.connect_lines(Portal("127.0.0.1", 3260), DEFAULT_IQN, 0, chap)
    node = f"iscsiadm -m node -T {DEFAULT_IQN} -p 127.0.0.1:3260"
    assert lines == [
        "iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260",
        f"{node} -o update -n node.session.auth.authmethod -v CHAP",
        f"{node} -o update -n node.session.auth.username -v pyscsit-0a1b2c3d",
        f"{node} -o update -n node.session.auth.password -v S3cretS3cretS3cretS3cret",
        f"{node} --login",
        ('qemu-img info "iscsi://pyscsit-0a1b2c3d%S3cretS3cretS3cretS3cret@127.0.0.1:3260/'
        f'{DEFAULT_IQN}/0"'),
        ('qemu-img info --image-opts "driver=iscsi,transport=tcp,portal=127.0.0.1:3260,'
        f'target={DEFAULT_IQN},lun=0,user=pyscsit-0a1b2c3d,password=S3cretS3cretS3cretS3cret,'
        'header-digest=crc32c"'),
    ]
    v6 = cli.connect_lines(Portal("::1", 3260), DEFAULT_IQN, 1, None)
    assert v6[0] == "iscsiadm -m discovery -t sendtargets -p [::1]:3260"
    assert v6[2] == f'qemu-img info "iscsi://[::1]:3260/{DEFAULT_IQN}/1"'


# -- with the I/O layers (backends, LUs, server) --------------------------------------------


@pytest.fixture
def io_layers() -> None:
    pytest.importorskip("pyscsit.backends.file")
    pytest.importorskip("pyscsit.scsi.lu")


@pytest.mark.usefixtures("io_layers")
def test_default_serve_prints_how_to_connect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)

    def fake_server(model: object, ready: cli.Ready | None, cfg: object,
                    config_path: str | None = None) -> None:
        assert ready is not None
        ready([("127.0.0.1", 3260)])

    monkeypatch.setattr(cli, "_serve_forever", fake_server)
    assert cli.main(["serve"]) == 0
    creds = yaml.safe_load((tmp_path / "pyscsit-data/credentials.yaml").read_text())
    out = capsys.readouterr().out
    assert "iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260\n" in out
    assert f"-n node.session.auth.password -v {creds['secret']}\n" in out
    assert (f'qemu-img info "iscsi://{creds["user"]}%{creds["secret"]}@127.0.0.1:3260/'
            f'{DEFAULT_IQN}/0"\n') in out
    assert (tmp_path / "pyscsit-data/lun0.img").stat().st_size == 1 << 30
    # a restart prints the same credentials
    assert cli.main(["serve"]) == 0
    assert f"-v {creds['secret']}\n" in capsys.readouterr().out


@pytest.mark.usefixtures("io_layers")
def test_missing_image_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("path: disk0.img, size: 40GiB", "path: disk0.img"))
    result = pyscsit("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == (f"pyscsit: {path}: targets[0].luns.0.path: {tmp_path}/disk0.img: "
                             "file does not exist; give a size to create it\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.usefixtures("io_layers")
@pytest.mark.timeout(60)
def test_serve_runs_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    pytest.importorskip("pyscsit.server")
    port = _free_port()
    path = write(tmp_path, GOOD.replace(":3260", f":{port}"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "pyscsit", "serve", "--config", str(path)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "pyscsit serve never listened"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert (tmp_path / "disk0.img").stat().st_size == 40 << 30
