"""reload.Reloader: a changed config applied to a running model, without new sessions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from pyscsit.config import build_model, load_config
from pyscsit.reload import STATUS_FILE, Reloader
from pyscsit.scsi.task import Nexus, ScsiCommand, Status

IQN = "iqn.2026-11.org.test:live"
MiB = 1 << 20


def write(path: Path, luns: dict[int, Any], **extra: Any) -> None:
    path.write_text(yaml.safe_dump({"state_dir": "state", "portals": ["127.0.0.1:0"],
                                    "targets": [{"iqn": IQN, "auth": "none", "luns": luns}],
                                    **extra}))


def file_lun(tmp_path: Path, name: str, size: str = "4MiB") -> dict[str, Any]:
    return {"backend": "file", "path": str(tmp_path / name), "size": size}


async def test_add_remove_resize_keep_sessions_and_raise_unit_attentions(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    write(path, {0: file_lun(tmp_path, "a.img"), 1: file_lun(tmp_path, "b.img")})
    cfg = load_config(path)
    model = build_model(cfg)
    target = model.targets[IQN]
    nx = Nexus("iqn.2026-11.org.test:host", 7, IQN)
    session = SimpleNamespace(target=target, nexus=nx, tasks={})
    server: Any = SimpleNamespace(model=model, protocols=set(),
                                  registry=SimpleNamespace(sessions={1: session}))
    reloader = Reloader(server, cfg, path)
    kept, removed = target.luns[0], target.luns[1]

    os.truncate(tmp_path / "a.img", 8 * MiB)  # what `pyscsit lun resize` does to a file
    write(path, {0: file_lun(tmp_path, "a.img", "8MiB"), 2: file_lun(tmp_path, "c.img")})
    report = await reloader.reload()
    assert report.error is None, report
    assert report.added == [f"{IQN}/2"] and report.removed == [f"{IQN}/1"]
    assert report.resized == [f"{IQN}/0 (8192 -> 16384 blocks)"]
    assert sorted(target.luns) == [0, 2] and target.luns[0] is kept  # the session's LU stays
    assert removed.backend._closed  # type: ignore[attr-defined]
    # LUN 0 tells this nexus both things, then answers normally (SAM-5 5.14)
    tur = bytes(6)
    codes = []
    for _ in range(3):
        r = await kept.execute(ScsiCommand(tur, nx))
        if r.status == Status.GOOD:
            break
        assert r.sense is not None
        codes.append((r.sense[12], r.sense[13]))
    assert sorted(codes) == [(0x2A, 0x09), (0x3F, 0x0E)]
    status = json.loads((tmp_path / "state" / STATUS_FILE).read_text())
    assert status["ok"] and status["generation"] == 1 and "LUNs added" in status["summary"]

    # A broken file changes nothing and says why, in one line.
    path.write_text(path.read_text().replace("backend: file", "backend: tape", 1))
    report = await reloader.reload()
    assert report.error is not None and "unknown backend 'tape'" in report.error
    assert "\n" not in report.error
    assert sorted(target.luns) == [0, 2]
    assert not json.loads((tmp_path / "state" / STATUS_FILE).read_text())["ok"]
    await reloader.drain()
    for lu in target.luns.values():
        lu.backend.close()


async def test_new_and_removed_targets(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    write(path, {0: file_lun(tmp_path, "a.img")})
    cfg = load_config(path)
    model = build_model(cfg)
    server: Any = SimpleNamespace(model=model, protocols=set(),
                                  registry=SimpleNamespace(sessions={}))
    reloader = Reloader(server, cfg, path)
    other = "iqn.2026-11.org.test:other"
    path.write_text(yaml.safe_dump({"state_dir": "state", "portals": ["127.0.0.1:0"],
                                    "targets": [{"iqn": other, "auth": "none",
                                                 "luns": {3: file_lun(tmp_path, "o.img")}}]}))
    report = await reloader.reload()
    assert report.targets_added == [other] and report.targets_removed == [IQN]
    assert list(model.targets) == [other] and list(model.targets[other].luns) == [3]
    await reloader.drain()
    model.targets[other].luns[3].backend.close()


async def test_extended_copy_directory_follows_reloads(tmp_path: Path) -> None:
    """EXTENDED COPY finds copy targets in one server-wide directory: a LU removed by a
    reload leaves it (its backend is closed), LUs added by a reload join it, new targets too."""
    path = tmp_path / "c.yaml"
    write(path, {0: file_lun(tmp_path, "a.img"), 1: file_lun(tmp_path, "b.img")})
    cfg = load_config(path)
    model = build_model(cfg)
    assert model.directory is not None
    removed = model.targets[IQN].luns[1]
    assert model.directory.find(removed.identity.naa) is removed
    server: Any = SimpleNamespace(model=model, protocols=set(),
                                  registry=SimpleNamespace(sessions={}))
    reloader = Reloader(server, cfg, path)
    other = "iqn.2026-11.org.test:other"
    path.write_text(yaml.safe_dump({"state_dir": "state", "portals": ["127.0.0.1:0"], "targets": [
        {"iqn": IQN, "auth": "none",
         "luns": {0: file_lun(tmp_path, "a.img"), 2: file_lun(tmp_path, "c.img")}},
        {"iqn": other, "auth": "none", "luns": {0: file_lun(tmp_path, "d.img")}}]}))
    report = await reloader.reload()
    await reloader.drain()
    assert report.error is None, report
    assert model.directory.find(removed.identity.naa) is None
    for lu in (model.targets[IQN].luns[2], model.targets[other].luns[0]):
        assert model.directory.find(lu.identity.naa) is lu and lu.directory is model.directory
