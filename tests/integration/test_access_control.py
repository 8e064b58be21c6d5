"""Access control against the real server with real initiators: who may log in, who sees
which target in discovery and which LUNs in REPORT LUNS, portal binding, required digests,
discovery CHAP and the failed-login back-off (issue 5)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RunningServer, run

pytestmark = pytest.mark.integration

SHARED = "iqn.2026-11.org.pyscsit.test:shared"
OPEN = "iqn.2026-11.org.pyscsit.test:open"
ESX1 = "iqn.1998-01.com.vmware:esx1"
ESX2 = "iqn.1998-01.com.vmware:esx2"
STRANGER = "iqn.2026-01.org.example:stranger"
CHAP = {"user": "esx", "secret": "shared-secret-1"}
ESX1_CHAP = {"user": "esx1", "secret": "esx1-own-secret"}


def _lun(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "file", "path": str(tmp_path / f"{name}.img"), "size": "16MiB", **extra}


def _flat(text: str) -> str:
    return text.replace(" ", "")


def _url(s: RunningServer, iqn: str, lun: int = 0, cred: dict[str, str] | None = None,
         host: str | None = None, port: int | None = None) -> str:
    c = f"{cred['user']}%{cred['secret']}@" if cred else ""
    return f"iscsi://{c}{host or s.host}:{port or s.port}/{iqn}/{lun}"


@pytest.fixture
def acl_server(tmp_path: Path, server_factory: Any) -> RunningServer:
    return server_factory({  # type: ignore[no-any-return]
        "host_groups": {"esx": [ESX1, ESX2]},
        "targets": [
            {"iqn": SHARED, "auth": {"chap": CHAP}, "initiators": ["esx"],
             "acls": {ESX1: {"chap": ESX1_CHAP}},
             "luns": {0: _lun(tmp_path, "shared0"),
                      1: _lun(tmp_path, "boot-esx1", views=[ESX1])}},
            {"iqn": OPEN, "auth": "none", "luns": {0: _lun(tmp_path, "open0")}},
        ]})


def test_initiator_not_listed_cannot_log_in(acl_server: RunningServer) -> None:
    # esx2 (in the group) with the target's credentials: in
    ok = run(["iscsi-inq", "-i", ESX2, _url(acl_server, SHARED, cred=CHAP)])
    assert "PYSCSIT" in ok.stdout
    # a stranger with the very same, correct credentials: refused 02/02
    no = run(["iscsi-inq", "-i", STRANGER, _url(acl_server, SHARED, cred=CHAP)], check=False)
    assert no.returncode != 0 and "PYSCSIT" not in no.stdout
    assert re.search(r"login refused 02/02 .*" + re.escape(STRANGER), acl_server.log()), \
        acl_server.log()


def test_per_initiator_credentials(acl_server: RunningServer) -> None:
    ok = run(["iscsi-inq", "-i", ESX1, _url(acl_server, SHARED, cred=ESX1_CHAP)])
    assert "PYSCSIT" in ok.stdout
    # esx1 has its own credentials: the target-wide ones no longer let it in
    no = run(["iscsi-inq", "-i", ESX1, _url(acl_server, SHARED, cred=CHAP)], check=False)
    assert no.returncode != 0 and "PYSCSIT" not in no.stdout


def test_discovery_shows_only_targets_the_initiator_may_log_into(
        acl_server: RunningServer) -> None:
    portal = f"iscsi://{acl_server.portal}"
    mine = _flat(run(["iscsi-ls", "-i", ESX2, portal]).stdout)
    assert f"Target:{SHARED}" in mine and f"Target:{OPEN}" in mine, mine
    theirs = _flat(run(["iscsi-ls", "-i", STRANGER, portal]).stdout)
    assert f"Target:{OPEN}" in theirs and SHARED not in theirs, theirs


def test_lun_masking_per_initiator(tmp_path: Path, server_factory: Any) -> None:
    s = server_factory({"targets": [{
        "iqn": SHARED, "auth": "none", "initiators": [ESX1, ESX2],
        "luns": {0: _lun(tmp_path, "shared0"), 1: _lun(tmp_path, "boot-esx1", views=[ESX1]),
                 2: _lun(tmp_path, "boot-esx2", views=[ESX2])}}]})

    def luns(initiator: str) -> list[int]:
        out = run(["iscsi-ls", "-s", "-i", initiator, f"iscsi://{s.portal}"]).stdout
        return sorted(int(n) for n in re.findall(r"Lun:(\d+)", _flat(out)))

    assert luns(ESX1) == [0, 1]
    assert luns(ESX2) == [0, 2]
    # LUN 1 answers esx2 as a LUN with no LU behind it: READ CAPACITY fails
    p = run(["iscsi-readcapacity16", "-i", ESX2, _url(s, SHARED, lun=1)], check=False)
    assert p.returncode != 0 and "Total size" not in p.stdout
    p = run(["iscsi-readcapacity16", "-i", ESX1, _url(s, SHARED, lun=1)])
    assert re.search(r"Total size:\s*16777216", p.stdout), p.stdout


def _second_port(s: RunningServer, host: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = re.search(rf"listening on {re.escape(host)}:(\d+)", s.log())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    pytest.fail(f"no listener on {host}:\n{s.log()}")


def test_target_bound_to_one_portal(tmp_path: Path, server_factory: Any) -> None:
    s = server_factory({"portals": ["127.0.0.1:0", "127.0.0.2:0"], "targets": [
        {"iqn": SHARED, "auth": "none", "portals": ["127.0.0.2:0"],
         "luns": {0: _lun(tmp_path, "bound")}},
        {"iqn": OPEN, "auth": "none", "luns": {0: _lun(tmp_path, "open0")}}]})
    port2 = _second_port(s, "127.0.0.2")
    on_first = _flat(run(["iscsi-ls", f"iscsi://127.0.0.1:{s.port}"]).stdout)
    assert f"Target:{OPEN}" in on_first and SHARED not in on_first, on_first
    on_second = _flat(run(["iscsi-ls", f"iscsi://127.0.0.2:{port2}"]).stdout)
    assert f"Target:{SHARED}" in on_second, on_second
    assert f"Portal:127.0.0.2:{port2}" in on_second, on_second
    assert f"127.0.0.1:{s.port}" not in on_second.split(SHARED)[1].split("Target:")[0]
    no = run(["iscsi-inq", _url(s, SHARED)], check=False)  # through 127.0.0.1
    assert no.returncode != 0 and "PYSCSIT" not in no.stdout
    assert "login refused 02/03" in s.log()
    ok = run(["iscsi-inq", _url(s, SHARED, host="127.0.0.2", port=port2)])
    assert "PYSCSIT" in ok.stdout


def _qemu_info(s: RunningServer, iqn: str, digest: str) -> Any:
    opts = (f"driver=iscsi,transport=tcp,portal={s.portal},target={iqn},lun=0,"
            f"header-digest={digest}")
    return run(["qemu-img", "info", "--image-opts", opts], check=False, timeout=60)


def test_required_digests(tmp_path: Path, server_factory: Any) -> None:
    strict = "iqn.2026-11.org.pyscsit.test:strict"
    s = server_factory({"targets": [
        {"iqn": SHARED, "auth": "none", "digests": {"header": "required"},
         "luns": {0: _lun(tmp_path, "hd")}},
        {"iqn": strict, "auth": "none", "digests": "required",
         "luns": {0: _lun(tmp_path, "both")}}]})
    none = _qemu_info(s, SHARED, "none")
    assert none.returncode != 0 and "virtual size" not in none.stdout
    crc = _qemu_info(s, SHARED, "crc32c")
    assert crc.returncode == 0 and "virtual size: 16 MiB" in crc.stdout, crc.stderr
    # libiscsi never offers DataDigest=CRC32C, so a target requiring both refuses QEMU
    both = _qemu_info(s, strict, "crc32c")
    assert both.returncode != 0 and "virtual size" not in both.stdout
    assert "the target requires HeaderDigest=CRC32C" in s.log()
    assert "the target requires DataDigest=CRC32C" in s.log()


def test_discovery_can_require_chap(tmp_path: Path, server_factory: Any) -> None:
    disc = {"user": "disc", "secret": "discovery-secret"}
    s = server_factory({"discovery_auth": {"chap": disc},
                        "targets": [{"iqn": OPEN, "auth": "none",
                                     "luns": {0: _lun(tmp_path, "open0")}}]})
    no = run(["iscsi-ls", f"iscsi://{s.portal}"], check=False)
    assert OPEN not in no.stdout
    ok = run(["iscsi-ls", f"iscsi://{disc['user']}%{disc['secret']}@{s.portal}"])
    assert f"Target:{OPEN}" in _flat(ok.stdout), ok.stdout


def test_failed_chap_logins_back_off(tmp_path: Path, server_factory: Any) -> None:
    s = server_factory({"login_backoff": {"base": 0.6, "max": 2.4},
                        "targets": [{"iqn": SHARED, "auth": {"chap": CHAP},
                                     "luns": {0: _lun(tmp_path, "d")}}]})
    wrong = dict(CHAP, secret="not-the-secret-9")

    def attempt(cred: dict[str, str]) -> tuple[float, Any]:
        t0 = time.monotonic()
        p = run(["iscsi-inq", "-i", ESX1, _url(s, SHARED, cred=cred)], check=False)
        return time.monotonic() - t0, p

    first, p1 = attempt(wrong)
    second, p2 = attempt(wrong)
    assert p1.returncode != 0 and p2.returncode != 0
    assert first >= 0.55, first  # base delay
    assert second >= first + 0.45, (first, second)  # doubled
    # the right secret still gets in (its verdict waits as a third failure's would)
    took, ok = attempt(CHAP)
    assert "PYSCSIT" in ok.stdout and took >= 2.0, took
    refusals = [line for line in s.log_lines if "login refused 02/01" in line]
    assert len(refusals) == 2, s.log()
    assert all(ESX1 in line and "127.0.0.1" in line for line in refusals), refusals
    assert CHAP["secret"] not in s.log() and wrong["secret"] not in s.log()
