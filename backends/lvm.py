"""LVM logical volumes: provisioning via `lvm` (config_build opens an LV LU with the block
backend).

``/dev/<vg>/<lv>`` is the udev link to the LV; ``dev_root`` and the command are settable
(config ``lvm: {command: lvm, dev_root: /dev}``). One executable, `lvm`, takes the subcommand
(``lvm lvcreate ...``), so a packaged install and a test's fake look the same. Sizes go to the
tool in bytes (``123b``); LVM rounds up to whole extents.
"""

from __future__ import annotations

import os

from pyscsit.provision import (
    ProvisionError,
    Runner,
    check_name,
    run_tool,
    wait_for_device_gone,
)

from .volume_tool import VolumeTool

__all__ = ["Lvm", "check_lv_path"]

_RESERVED_PREFIXES = ("snapshot", "pvmove")


def check_lv_name(kind: str, name: str) -> str:
    check_name(kind, name)
    if kind.endswith("LV") and name.startswith(_RESERVED_PREFIXES):
        raise ProvisionError(f"{name!r}: LVM reserves names starting with snapshot/pvmove")
    return name


def check_lv_path(text: str) -> tuple[str, str]:
    """``vg/lv`` -> (vg, lv)."""
    vg, slash, lv = text.partition("/")
    if not slash:
        raise ProvisionError(f"{text!r} is not a logical volume (expected VG/LV)")
    return check_lv_name("volume group", vg), check_lv_name("LV", lv)


class Lvm(VolumeTool):
    """The `lvm` command line. Every method either completes or leaves nothing behind."""

    def __init__(self, command: str = "lvm", dev_root: str = "/dev",
                 runner: Runner = run_tool) -> None:
        super().__init__(command, dev_root, runner)

    def device(self, vg: str, lv: str) -> str:
        return os.path.join(self.dev_root, check_lv_name("volume group", vg),
                            check_lv_name("LV", lv))

    def create(self, vg: str, lv: str, size: int, *, thinpool: str | None = None) -> str:
        """Linear: ``lvcreate -L size -n lv vg``; thin: ``lvcreate -V size --thinpool vg/pool
        -n lv``. Returns the device path."""
        self.device(vg, lv)
        argv = [self.command, "lvcreate", "--yes"]
        if thinpool is not None:
            argv += ["-V", f"{size}b", "--thinpool", f"{vg}/{check_lv_name('LV', thinpool)}"]
        else:
            argv += ["-L", f"{size}b", vg]
        argv += ["-n", lv]
        return self._made(argv, vg, lv)

    def snapshot(self, vg: str, lv: str, name: str, size: int | None = None) -> str:
        """A snapshot of vg/lv: thin (no size: the origin must be thin) or classic
        copy-on-write with ``size`` bytes of room. Returns ``vg/name``."""
        self.device(vg, lv)
        check_lv_name("LV", name)
        argv = [self.command, "lvcreate", "--yes", "-s", "-n", name]
        if size is not None:
            argv += ["-L", f"{size}b"]
        self._run([*argv, f"{vg}/{lv}"])
        return f"{vg}/{name}"

    def clone(self, vg: str, origin: str, lv: str, size: int | None = None) -> str:
        """A writable snapshot of vg/origin, activated (thin snapshots skip activation by
        default: ``-kn -ay``). Returns the device path."""
        self.device(vg, origin)
        self.device(vg, lv)
        argv = [self.command, "lvcreate", "--yes", "-s", "-kn", "-ay", "-n", lv]
        if size is not None:
            argv += ["-L", f"{size}b"]
        return self._made([*argv, f"{vg}/{origin}"], vg, lv)

    def _made(self, argv: list[str], vg: str, lv: str) -> str:
        return self._create(argv, self.device(vg, lv), f"lvremove {vg}/{lv}",
                            lambda: self.destroy(vg, lv))

    def resize(self, vg: str, lv: str, size: int) -> None:
        self.device(vg, lv)
        self._run([self.command, "lvresize", "--yes", "-L", f"{size}b", f"{vg}/{lv}"])

    def destroy(self, vg: str, lv: str) -> None:
        device = self.device(vg, lv)
        self._run([self.command, "lvremove", "--yes", f"{vg}/{lv}"])
        wait_for_device_gone(device)
