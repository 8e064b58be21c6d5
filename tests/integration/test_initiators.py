"""Real initiators over loopback TCP: libiscsi's tools and QEMU, as KVM hosts use them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import IQN, RunningServer, file_lun_config, run

pytestmark = pytest.mark.integration


def test_iscsi_inq_reports_our_identity(anon_server: RunningServer) -> None:
    p = run(["iscsi-inq", anon_server.url()])
    assert "PYSCSIT" in p.stdout
    assert "Peripheral Device Type:DIRECT_ACCESS" in p.stdout.replace(" ", "") or \
        "DIRECT_ACCESS" in p.stdout.upper().replace(" ", "_")
    # VPD 0x83 carries a NAA designator, the same on every query
    a = run(["iscsi-inq", "-e", "1", "-c", "131", anon_server.url()]).stdout
    b = run(["iscsi-inq", "-e", "1", "-c", "131", anon_server.url()]).stdout
    assert "NAA" in a.upper() and a == b


def test_readcapacity16_matches_file_size(anon_server: RunningServer) -> None:
    p = run(["iscsi-readcapacity16", anon_server.url()])
    m = re.search(r"Total size:\s*(\d+)", p.stdout)
    assert m, p.stdout
    assert int(m.group(1)) == 128 * 1024 * 1024
    assert re.search(r"LOGICAL BLOCK LENGTH IN BYTES:\s*512", p.stdout), p.stdout


def test_iscsi_ls_discovers_target_and_lun(anon_server: RunningServer) -> None:
    p = run(["iscsi-ls", "-s", f"iscsi://{anon_server.portal}"])
    assert f"Target:{IQN}" in p.stdout.replace(" ", ""), p.stdout
    assert "Lun:0" in p.stdout.replace(" ", ""), p.stdout
    assert f"Portal:127.0.0.1:{anon_server.port}" in p.stdout.replace(" ", ""), p.stdout


def _image_opts(s: RunningServer, digest: str | None, **extra: str) -> str:
    opts = f"driver=iscsi,transport=tcp,portal={s.portal},target={IQN},lun=0"
    if digest:
        opts += f",header-digest={digest}"
    for k, v in extra.items():
        opts += f",{k}={v}"
    return opts


@pytest.mark.parametrize("digest", [None, "crc32c"])
def test_qemu_img_convert_round_trip(anon_server: RunningServer, tmp_path: Path,
                                     digest: str | None) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(64 * 1024 * 1024))
    back = tmp_path / "back.raw"
    opts = _image_opts(anon_server, digest)
    run(["qemu-img", "convert", "-n", "-f", "raw", "--target-image-opts", str(src), opts],
        timeout=300)
    run(["qemu-img", "convert", "--image-opts", opts, "-O", "raw", str(back)], timeout=300)
    data = back.read_bytes()
    assert data[: 64 * 1024 * 1024] == src.read_bytes()
    # the rest of the 128 MiB LU was never written: it reads back as zeros
    assert data[64 * 1024 * 1024:] == bytes(64 * 1024 * 1024)
    # and the bytes really are in the backing file
    disk = (anon_server.config_path.parent / "disk0.img").read_bytes()
    assert disk[: 64 * 1024 * 1024] == src.read_bytes()


CHAP = {"user": "alice", "secret": "a-long-secret-1"}
MUTUAL = {"user": "target0", "secret": "another-secret-2"}


@pytest.fixture
def chap_server(tmp_path: Path, server_factory: Any) -> RunningServer:
    return server_factory(file_lun_config(tmp_path, auth={"chap": CHAP}))  # type: ignore


def test_chap_login_with_the_right_secret(chap_server: RunningServer) -> None:
    p = run(["iscsi-inq", chap_server.url(user=CHAP["user"], secret=CHAP["secret"])])
    assert "PYSCSIT" in p.stdout


def test_chap_refuses_missing_and_wrong_credentials(chap_server: RunningServer) -> None:
    none = run(["iscsi-inq", chap_server.url()], check=False)
    assert none.returncode != 0
    wrong = run(["iscsi-inq", chap_server.url(user=CHAP["user"], secret="wrong-secret-xx")],
                check=False)
    assert wrong.returncode != 0
    assert "PYSCSIT" not in none.stdout + wrong.stdout


def test_qemu_with_chap_user_and_password(chap_server: RunningServer, tmp_path: Path) -> None:
    opts = _image_opts(chap_server, None, user=CHAP["user"], password=CHAP["secret"])
    p = run(["qemu-img", "info", "--image-opts", opts])
    assert "virtual size: 128 MiB" in p.stdout, p.stdout
