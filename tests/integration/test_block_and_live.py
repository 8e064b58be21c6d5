"""Block devices and live provisioning, through real initiators (qemu-io, qemu-img, libiscsi).

This kernel has no ZFS and no device-mapper: the block devices are loop devices (losetup; we
run as root), and `zfs` is a fake executable that logs its argv and makes each "zvol" a loop
device over a sparse file, linked under a dev_root the way udev links /dev/zvol/<dataset>.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import IQN, RunningServer, require_tool, run

pytestmark = pytest.mark.integration

MiB = 1 << 20

# A fake `zfs`: every zvol is a loop device over STORE/<dataset>.img, linked at ROOT/<dataset>.
_FAKE_ZFS = r'''#!{python}
import json, os, shutil, subprocess, sys
LOG, ROOT, STORE = {log!r}, {root!r}, {store!r}
args = sys.argv[1:]
with open(LOG, "a") as f:
    f.write(json.dumps(args) + "\n")
def img(name):
    return os.path.join(STORE, name.replace("/", "_") + ".img")
def attach(name):
    dev = subprocess.run(["losetup", "-f", "--show", img(name)], check=True,
                         capture_output=True, text=True).stdout.strip()
    link = os.path.join(ROOT, name)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(dev, link)
cmd = args[0]
if cmd == "create":
    name = args[-1]
    if os.path.exists(img(name)):
        sys.exit(f"cannot create '{{name}}': dataset already exists")
    with open(img(name), "wb") as f:
        f.truncate(int(args[args.index("-V") + 1]))
    attach(name)
elif cmd == "snapshot":
    subprocess.run(["cp", "--sparse=always", img(args[1].split("@")[0]), img(args[1])],
                   check=True)
elif cmd == "clone":
    subprocess.run(["cp", "--sparse=always", img(args[1]), img(args[2])], check=True)
    attach(args[2])
elif cmd == "destroy":
    link = os.path.join(ROOT, args[1])
    dev = os.readlink(link)
    p = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"cannot destroy '{{args[1]}}': dataset is busy")
    os.unlink(link)
    os.unlink(img(args[1]))
'''


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Loop devices over sparse files in tmp_path; all of them (the fake zfs's too) are
    detached at the end."""
    require_tool("losetup")

    def make(name: str, size: int, sector: int = 512) -> tuple[str, Path]:
        img = tmp_path / name
        with open(img, "wb") as f:
            f.truncate(size)
        dev = run(["losetup", "-f", "--show", "-b", str(sector), str(img)]).stdout.strip()
        return dev, img

    yield make
    listing = subprocess.run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"],
                             capture_output=True, text=True, check=False).stdout
    for dev in json.loads(listing or '{"loopdevices": []}')["loopdevices"]:
        if (dev.get("back-file") or "").startswith(str(tmp_path)):
            subprocess.run(["losetup", "-d", dev["name"]], check=False)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def opts(s: RunningServer, lun: int) -> str:
    return (f"driver=iscsi,transport=tcp,portal={s.portal},target={IQN},lun={lun}")


def qemu_io(s: RunningServer, lun: int, *cmds: str, check: bool = True,
            read_only: bool = False) -> subprocess.CompletedProcess[str]:
    argv = ["qemu-io", *(["-r"] if read_only else []), "--image-opts", opts(s, lun)]
    for c in cmds:
        argv += ["-c", c]
    p = run(argv, check=check)
    if check:
        assert "fail" not in p.stdout.lower() and "pattern verification" not in p.stdout, \
            p.stdout
    return p


def lun_cli(s: RunningServer, *args: str) -> str:
    p = run([sys.executable, "-m", "pyscsit", "lun", args[0], "--config", str(s.config_path),
             "--target", IQN, *args[1:]])
    assert "live on the running server" in p.stdout, p.stdout
    return p.stdout


def listed_luns(s: RunningServer) -> dict[int, str]:
    out = run(["iscsi-ls", "-s", f"iscsi://{s.portal}"]).stdout
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"Lun:(\d+)\s+.*Size:(\w+)", out)}


def config(*luns: tuple[int, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"targets": [{"iqn": IQN, "auth": "none", "luns": dict(luns)}], **extra}


def test_block_lu_is_byte_exact_with_and_without_o_direct(
        tmp_path: Path, loops: Any, server_factory: Any) -> None:
    dev, img = loops("plain.img", 32 * MiB)
    dev4k, img4k = loops("4kn.img", 32 * MiB, sector=4096)
    s = server_factory(config(
        (0, {"backend": "block", "path": dev}),
        (1, {"backend": "block", "path": dev4k, "direct": True, "block_size": 4096})))
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(24 * MiB))
    for lun, backing in ((0, img), (1, img4k)):
        run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), s.url(lun=lun)])
        back = tmp_path / f"back{lun}.raw"
        run(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.url(lun=lun), str(back)])
        assert back.read_bytes()[:24 * MiB] == src.read_bytes()
        assert backing.read_bytes()[:24 * MiB] == src.read_bytes()  # on the device itself
    p = run(["iscsi-readcapacity16", s.url(lun=1)])
    assert re.search(r"LOGICAL BLOCK LENGTH IN BYTES:\s*4096", p.stdout), p.stdout


@pytest.mark.parametrize("kind", ["file", "block"])
def test_discard_and_write_zeroes_give_space_back(
        kind: str, tmp_path: Path, loops: Any, server_factory: Any) -> None:
    """qemu-io's discard (UNMAP) and write -z -u (WRITE SAME with UNMAP) reach the sparse
    file under the LU (through the loop device for `block`), and read back as zeros."""
    if kind == "block":
        dev, backing = loops("thin.img", 64 * MiB)
        lun = {"backend": "block", "path": dev}
    else:
        backing = tmp_path / "thin.img"
        lun = {"backend": "file", "path": str(backing), "size": "64MiB"}
    s = server_factory(config((0, lun)))
    qemu_io(s, 0, "write -P 0xab 0 8M")
    full = allocated(backing)
    assert full >= 8 * MiB
    qemu_io(s, 0, "discard 0 2M")
    assert allocated(backing) <= full - 2 * MiB
    qemu_io(s, 0, "write -z -u 4M 2M")
    assert allocated(backing) <= full - 4 * MiB
    qemu_io(s, 0, "read -P 0 0 2M", "read -P 0xab 2M 2M", "read -P 0 4M 2M",
            "read -P 0xab 6M 2M")


def test_read_only_lu_refuses_writes(tmp_path: Path, loops: Any, server_factory: Any) -> None:
    dev, _ = loops("ro.img", 16 * MiB)
    s = server_factory(config(
        (0, {"backend": "file", "path": str(tmp_path / "ro-file.img"), "size": "16MiB",
             "read_only": True}),
        (1, {"backend": "block", "path": dev, "read_only": True})))
    for lun in (0, 1):
        p = qemu_io(s, lun, "write -P 0x11 0 4k", check=False)
        assert p.returncode != 0 and "write protected" in (p.stdout + p.stderr), p
        qemu_io(s, lun, "read -P 0 0 4k", read_only=True)


def test_live_create_clone_resize_delete_while_another_initiator_works(
        tmp_path: Path, loops: Any, server_factory: Any) -> None:
    require_tool("qemu-img")
    zfs_root, store = tmp_path / "zvol", tmp_path / "zstore"
    zfs_root.mkdir()
    store.mkdir()
    fake = tmp_path / "bin" / "zfs"
    fake.parent.mkdir()
    log = tmp_path / "zfs.log"
    fake.write_text(_FAKE_ZFS.format(python=sys.executable, log=str(log), root=str(zfs_root),
                                     store=str(store)))
    fake.chmod(0o755)
    dev, backing = loops("blk.img", 16 * MiB)
    s = server_factory(config(
        (0, {"backend": "file", "path": str(tmp_path / "busy.img"), "size": "64MiB"}),
        zfs={"command": str(fake), "dev_root": str(zfs_root)}))
    assert listed_luns(s) == {0: "63M"}

    # Another initiator copies a disk image in and out, over and over, the whole time.
    src = tmp_path / "vm.raw"
    src.write_bytes(os.urandom(48 * MiB))
    done, rounds, errors = threading.Event(), [], []

    def busy() -> None:
        while not done.is_set() or not rounds:
            out = tmp_path / "vm-back.raw"
            for argv in (["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
                          s.url(lun=0)],
                         ["qemu-img", "convert", "-f", "raw", "-O", "raw", s.url(lun=0),
                          str(out)]):
                p = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
                if p.returncode:
                    errors.append(p.stderr)
                    return
            if out.read_bytes()[:48 * MiB] != src.read_bytes():
                errors.append("data differs")
                return
            rounds.append(1)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        # a sparse zvol, created and exported in one command
        out = lun_cli(s, "create", "--lun", "1", "--backend", "zvol", "--dataset", "tank/gold",
                      "--size", "32MiB", "--sparse", "--volblocksize", "16K")
        assert "LUNs added: " + f"{IQN}/1" in out
        assert listed_luns(s) == {0: "63M", 1: "31M"}
        qemu_io(s, 1, "write -P 0x5a 0 1M")
        # golden image -> snapshot -> instant clone, exported as LUN 2
        p = run([sys.executable, "-m", "pyscsit", "lun", "snapshot", "--config",
                 str(s.config_path), "--target", IQN, "--lun", "1", "--name", "s1"])
        assert p.stdout == "pyscsit: snapshot tank/gold@s1\n"
        lun_cli(s, "clone", "--lun", "2", "--from", "tank/gold@s1", "--dataset", "tank/vm2")
        assert set(listed_luns(s)) == {0, 1, 2}
        qemu_io(s, 2, "read -P 0x5a 0 1M", "read -P 0 1M 1M")
        # a raw block device, then grown under the server
        lun_cli(s, "create", "--lun", "3", "--backend", "block", "--path", dev)
        os.truncate(backing, 40 * MiB)
        run(["losetup", "-c", dev])
        lun_cli(s, "resize", "--lun", "3")
        cap = run(["iscsi-readcapacity16", s.url(lun=3)]).stdout
        assert re.search(rf"Total size:\s*{40 * MiB}\b", cap), cap
        # gone: the clone is no longer listed and its zvol is destroyed
        lun_cli(s, "delete", "--lun", "2", "--destroy")
        assert set(listed_luns(s)) == {0, 1, 3}
        p = run(["iscsi-inq", s.url(lun=2)], check=False)
        assert p.returncode != 0
    finally:
        done.set()
        worker.join(timeout=300)
    assert not errors, errors
    assert rounds, "the other initiator never finished a round"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [["create", "-s", "-b", "16384", "-V", str(32 * MiB), "tank/gold"],
                     ["snapshot", "tank/gold@s1"], ["clone", "tank/gold@s1", "tank/vm2"],
                     ["destroy", "tank/vm2"]]
    assert not (zfs_root / "tank/vm2").exists()
    assert "reload" in s.log() and "Traceback" not in s.log()
