"""LU identities: random NAA-6, stable across restarts, never shared."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from pyscsit.scsi.identity import PYSCSIT_CID, IdentityStore, LuIdentity


def test_naa6_layout() -> None:
    ident = LuIdentity.random()
    assert len(ident.naa) == 16 and ident.naa[0] >> 4 == 6
    cid = (int.from_bytes(ident.naa[:4], "big") >> 4) & 0xFFFFFF
    assert cid == PYSCSIT_CID
    assert ident.serial.isalnum()


def test_same_locator_same_identity_across_instances(tmp_path: Path) -> None:
    a = IdentityStore(tmp_path).get("file:/srv/a.img")
    again = IdentityStore(tmp_path).get("file:/srv/a.img")
    assert again == a


def test_different_locators_differ(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path)
    ids = [store.get(f"file:/srv/{i}.img") for i in range(20)]
    assert len({i.naa for i in ids}) == 20 and len({i.serial for i in ids}) == 20


def test_file_is_json_with_sane_mode_and_no_temp_left(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "state")
    ident = store.get("memory:1")
    path = tmp_path / "state" / "lu-identities.json"
    doc = json.loads(path.read_text())
    assert doc["identities"]["memory:1"]["naa"] == ident.naa.hex()
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o022 == 0 and mode & 0o600 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["lu-identities.json"]


def test_corrupt_file_is_an_error_not_a_silent_reset(tmp_path: Path) -> None:
    (tmp_path / "lu-identities.json").write_text("{nope")
    with pytest.raises(ValueError, match="lu-identities.json"):
        IdentityStore(tmp_path)


def test_identity_validation() -> None:
    with pytest.raises(ValueError):
        LuIdentity(b"\x50" + bytes(15), "abc")
    with pytest.raises(ValueError):
        LuIdentity(LuIdentity.random().naa, "has space")
