"""ZFS volumes: provisioning via `zfs` (config_build opens a zvol LU with the block backend).

``/dev/zvol/<dataset>`` is the udev link to the zvol's device; ``dev_root`` and the command are
settable (config ``zfs: {command: zfs, dev_root: /dev/zvol}``) for tests and unusual installs.
A zvol's discards free its blocks and freed blocks read as zeros, so LBPRZ holds.
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

__all__ = ["Zfs", "check_dataset"]

MIN_VOLBLOCKSIZE = 512
MAX_VOLBLOCKSIZE = 1 << 20


def check_dataset(name: str) -> str:
    """``pool/path/to/volume``: components of letters, digits and _ . : -."""
    if not name or name.startswith("/") or name.endswith("/") or "@" in name:
        raise ProvisionError(f"{name!r} is not a ZFS dataset name (expected pool/volume)")
    for part in name.split("/"):
        check_name("ZFS dataset", part)
    if "/" not in name:
        raise ProvisionError(f"{name!r} is a pool, not a volume: write pool/volume")
    return name


def check_snapshot(name: str) -> tuple[str, str]:
    dataset, at, snap = name.partition("@")
    if not at:
        raise ProvisionError(f"{name!r} is not a snapshot (expected pool/volume@snapshot)")
    return check_dataset(dataset), check_name("ZFS snapshot", snap)


def check_volblocksize(value: int) -> int:
    if value & (value - 1) or not MIN_VOLBLOCKSIZE <= value <= MAX_VOLBLOCKSIZE:
        raise ProvisionError(f"volblocksize {value} is not a power of two from "
                             f"{MIN_VOLBLOCKSIZE} to {MAX_VOLBLOCKSIZE}")
    return value


class Zfs(VolumeTool):
    """The `zfs` command line. Every method either completes or leaves nothing behind."""

    def __init__(self, command: str = "zfs", dev_root: str = "/dev/zvol",
                 runner: Runner = run_tool) -> None:
        super().__init__(command, dev_root, runner)

    def device(self, dataset: str) -> str:
        return os.path.join(self.dev_root, check_dataset(dataset))

    def create(self, dataset: str, size: int, *, sparse: bool = False,
               volblocksize: int | None = None) -> str:
        """``zfs create [-s] [-b volblocksize] -V size dataset``; returns the device path."""
        check_dataset(dataset)
        argv = [self.command, "create"]
        if sparse:
            argv.append("-s")  # no refreservation: thin, like a sparse file
        if volblocksize is not None:
            if size % check_volblocksize(volblocksize):
                raise ProvisionError(f"size {size} is not a multiple of volblocksize "
                                     f"{volblocksize}")
            argv += ["-b", str(volblocksize)]
        argv += ["-V", str(size), dataset]
        return self._made(argv, dataset)

    def clone(self, snapshot: str, dataset: str) -> str:
        """``zfs clone dataset@snap new``: instant, shares blocks with the snapshot."""
        check_snapshot(snapshot)
        check_dataset(dataset)
        return self._made([self.command, "clone", snapshot, dataset], dataset)

    def _made(self, argv: list[str], dataset: str) -> str:
        return self._create(argv, self.device(dataset), f"zfs destroy {dataset}",
                            lambda: self.destroy(dataset))

    def snapshot(self, dataset: str, name: str) -> str:
        snap = f"{check_dataset(dataset)}@{check_name('ZFS snapshot', name)}"
        self._run([self.command, "snapshot", snap])
        return snap

    def resize(self, dataset: str, size: int) -> None:
        self._run([self.command, "set", f"volsize={size}", check_dataset(dataset)])

    def destroy(self, dataset: str) -> None:
        """Destroys a volume or a snapshot (never recursively: clones of it make this fail)."""
        if "@" in dataset:
            check_snapshot(dataset)
        else:
            check_dataset(dataset)
        self._run([self.command, "destroy", dataset])
        if "@" not in dataset:
            wait_for_device_gone(os.path.join(self.dev_root, dataset))
