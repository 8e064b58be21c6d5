"""physical_block_size per LUN: 512e by default on files, 512n when asked (READ CAPACITY(16)
LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT, VPD B0 OPTIMAL TRANSFER LENGTH GRANULARITY)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyscsit.backends.memory import MemoryBackend
from pyscsit.config import ConfigError, parse_config
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Nexus, ScsiCommand

NEXUS = Nexus("iqn.2026-11.org.example:host", 1, "iqn.2026-11.org.example:t")


async def _rc16(lu: LogicalUnit) -> bytes:
    cdb = bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    r = await lu.execute(ScsiCommand(cdb=cdb, nexus=NEXUS, expected_length=32))
    return bytes(r.data)


@pytest.mark.parametrize("physical,exponent", [(None, 3), (512, 0), (4096, 3), (8192, 4)])
async def test_exponent_follows_physical_block_size(physical: int | None,
                                                    exponent: int) -> None:
    lu = LogicalUnit(MemoryBackend(1 << 20), LuIdentity.random(), physical_block_size=physical)
    assert (await _rc16(lu))[13] & 0x0F == exponent


def _cfg(tmp_path: Path, **lun: object) -> object:
    return parse_config({"state_dir": str(tmp_path), "portals": ["127.0.0.1:0"], "targets": [{
        "iqn": "iqn.2026-11.org.example:t", "auth": "none",
        "luns": {0: {"backend": "file", "path": "d.img", "size": "1MiB", **lun}}}]},
        source="c.yaml", base_dir=tmp_path)


def test_config_key_is_parsed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, physical_block_size=512)
    assert cfg.targets[0].luns[0].physical_block_size == 512  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [256, 1000, 131072, "4k", True])
def test_bad_values_are_one_line_errors(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, physical_block_size=bad)
    assert str(e.value).startswith("c.yaml: targets[0].luns.0.physical_block_size: ")
    assert "\n" not in str(e.value)
