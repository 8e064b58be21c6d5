"""libiscsi's conformance suite against thin 1 GiB file LUs, one family per process.

Every test named in tests/conformance/passing.txt must pass (and not by skipping). Each family
gets a fresh LU of its own (LUN = its position in the list): some libiscsi 1.19 tests assume
blocks another family wrote are still zero (MultipathIO.CompareAndWrite reads LBA 256 after
zeroing only 0-255)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conformance.cu import load_list, run_family
from tests.integration.conftest import IQN, RunningServer, file_lun_config, require_tool

pytestmark = pytest.mark.integration

FAMILIES = load_list()


@pytest.fixture(scope="module")
def cu_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.integration.conftest import start_server

    tmp = tmp_path_factory.mktemp("cu")
    cfg = file_lun_config(tmp, size="1GiB")
    cfg["targets"][0]["luns"] = {
        n: {"backend": "file", "path": str(tmp / f"lu{n}.img"), "size": "1GiB"}
        for n in range(len(FAMILIES))}
    s = start_server(tmp, cfg)
    yield s
    rc = s.stop()
    assert "Traceback" not in s.log(), s.log()
    assert rc == 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family(cu_server: RunningServer, family: str) -> None:
    require_tool("iscsi-test-cu")
    url = cu_server.url(IQN, list(FAMILIES).index(family))
    verdicts, output = run_family(family, [url, url], timeout=600)
    problems = []
    for name in FAMILIES[family]:
        v = verdicts.get(name)
        if v is None:
            problems.append(f"{name}: did not run")
        elif not v.ok:
            problems.append(f"{name}: {v.status}: {v.detail[-600:]}")
    assert not problems, "\n".join(problems) + "\n--- iscsi-test-cu output ---\n" + output[-4000:]
    assert cu_server.proc.poll() is None, "server died:\n" + cu_server.log()
