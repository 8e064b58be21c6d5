"""The zfs / lvm command layer and `pyscsit lun`, against fake executables.

This kernel has no ZFS and no device-mapper, so the real `zfs` and `lvm` cannot run here. The
fakes below are small programs that log their argv (so each test checks the exact command line
a real install would get) and create plain files under a dev_root standing in for the device
nodes udev would create; FAKE_FAIL makes them fail the way the real tools do.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from pyscsit import cli, provision
from pyscsit.backends.lvm import Lvm
from pyscsit.backends.zvol import Zfs
from pyscsit.config import ConfigError, load_config
from pyscsit.provision import ProvisionError

IQN = "iqn.2026-11.org.test:vms"
GiB = 1 << 30

# Both fakes: log argv, FAKE_FAIL=<word> fails any call whose argv contains <word>,
# FAKE_NO_DEVICE=1 "forgets" to create the device node.
_PRELUDE = r'''#!{python}
import json, os, sys
LOG, ROOT = {log!r}, {root!r}
args = sys.argv[1:]
with open(LOG, "a") as f:
    f.write(json.dumps(args) + "\n")
fail = os.environ.get("FAKE_FAIL")
if fail and any(fail in a for a in args):
    sys.stderr.write("some detail\n" + os.environ.get("FAKE_MSG", "fake failure") + "\n")
    sys.exit(1)
make = os.environ.get("FAKE_NO_DEVICE") != "1"
def dev(name):
    return os.path.join(ROOT, name)
def copy(src, dst):  # a stand-in device of the same size (no data: they are sparse)
    with open(dst, "wb") as f:
        f.truncate(os.path.getsize(src))
def create(name, size):
    if os.path.exists(dev(name)):
        sys.exit(f"cannot create '{{name}}': dataset already exists")
    if make:
        os.makedirs(os.path.dirname(dev(name)), exist_ok=True)
        with open(dev(name), "wb") as f:
            f.truncate(size)
'''

_ZFS = _PRELUDE + r'''
cmd = args[0]
if cmd == "create":
    create(args[-1], int(args[args.index("-V") + 1]))
elif cmd == "snapshot":
    copy(dev(args[1].split("@")[0]), dev(args[1]))
elif cmd == "clone":
    if not os.path.exists(dev(args[1])):
        sys.exit(f"cannot open '{{args[1]}}': dataset does not exist")
    if make:
        copy(dev(args[1]), dev(args[2]))
elif cmd == "set":
    os.truncate(dev(args[2]), int(args[1].split("=")[1]))
elif cmd == "destroy":
    os.unlink(dev(args[1]))
'''

_LVM = _PRELUDE + r'''
cmd, rest = args[0], args[1:]
def opt(flag):
    return rest[rest.index(flag) + 1] if flag in rest else None
def size(text):
    return int(text.rstrip("b"))
name = opt("-n")
if cmd == "lvcreate" and "-s" in rest:
    vg = rest[-1].split("/")[0]
    if make:
        copy(dev(rest[-1]), dev(f"{{vg}}/{{name}}"))
elif cmd == "lvcreate":
    pool = opt("--thinpool")
    vg = pool.split("/")[0] if pool else [a for a in rest if "/" not in a and not a.startswith("-")
                                          and a not in (opt("-L"), name)][0]
    create(f"{{vg}}/{{name}}", size(opt("-V") or opt("-L")))
elif cmd == "lvresize":
    os.truncate(dev(rest[-1]), size(opt("-L")))
elif cmd == "lvremove":
    os.unlink(dev(rest[-1]))
'''


class Fake:
    def __init__(self, tmp_path: Path, name: str, body: str) -> None:
        self.log = tmp_path / f"{name}.log"
        self.root = tmp_path / f"dev-{name}"
        self.root.mkdir()
        self.command = tmp_path / "bin" / name
        self.command.parent.mkdir(exist_ok=True)
        self.command.write_text(body.format(python=sys.executable, log=str(self.log),
                                            root=str(self.root)))
        self.command.chmod(0o755)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_zfs(tmp_path: Path) -> Fake:
    return Fake(tmp_path, "zfs", _ZFS)


@pytest.fixture
def fake_lvm(tmp_path: Path) -> Fake:
    return Fake(tmp_path, "lvm", _LVM)


# -- the tool layer ------------------------------------------------------------------------------


def test_zvol_create_is_sparse_with_volblocksize_and_waits_for_the_device(
        fake_zfs: Fake) -> None:
    zfs = Zfs(str(fake_zfs.command), str(fake_zfs.root))
    device = zfs.create("tank/vm1", GiB, sparse=True, volblocksize=64 * 1024)
    assert fake_zfs.calls() == [["create", "-s", "-b", "65536", "-V", str(GiB), "tank/vm1"]]
    assert device == str(fake_zfs.root / "tank/vm1")
    assert os.path.getsize(device) == GiB
    assert zfs.snapshot("tank/vm1", "gold") == "tank/vm1@gold"
    assert zfs.clone("tank/vm1@gold", "tank/vm2") == str(fake_zfs.root / "tank/vm2")
    zfs.resize("tank/vm2", 2 * GiB)
    zfs.destroy("tank/vm2")
    assert fake_zfs.calls()[1:] == [
        ["snapshot", "tank/vm1@gold"], ["clone", "tank/vm1@gold", "tank/vm2"],
        ["set", f"volsize={2 * GiB}", "tank/vm2"], ["destroy", "tank/vm2"]]
    assert not (fake_zfs.root / "tank/vm2").exists()


def test_a_tool_failure_is_one_line_naming_the_command(fake_zfs: Fake,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    zfs = Zfs(str(fake_zfs.command), str(fake_zfs.root))
    zfs.create("tank/vm1", GiB)
    with pytest.raises(ProvisionError) as e:
        zfs.create("tank/vm1", GiB)
    assert str(e.value) == (f"`{fake_zfs.command} create -V {GiB} tank/vm1` failed (exit 1): "
                            "cannot create 'tank/vm1': dataset already exists")
    monkeypatch.setenv("FAKE_FAIL", "volsize")
    monkeypatch.setenv("FAKE_MSG", "cannot set property for 'tank/vm1': out of space")
    with pytest.raises(ProvisionError, match=r"failed \(exit 1\): cannot set property for "
                       r"'tank/vm1': out of space$"):
        zfs.resize("tank/vm1", 4 * GiB)
    with pytest.raises(ProvisionError, match="^nope-zfs: command not found"):
        Zfs("nope-zfs", str(fake_zfs.root)).create("tank/x", GiB)


def test_nothing_is_left_half_created(fake_zfs: Fake, fake_lvm: Fake,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool said yes but the device never appeared: the volume is destroyed again."""
    monkeypatch.setattr(provision, "DEVICE_TIMEOUT", 0.3)
    monkeypatch.setenv("FAKE_NO_DEVICE", "1")
    zfs = Zfs(str(fake_zfs.command), str(fake_zfs.root))
    with pytest.raises(ProvisionError, match="tank/vm1 did not appear within 0.3 s; undo "
                       "failed too"):
        zfs.create("tank/vm1", GiB)  # the fake's destroy fails too: no file to remove
    assert [c[0] for c in fake_zfs.calls()] == ["create", "destroy"]
    lvm = Lvm(str(fake_lvm.command), str(fake_lvm.root))
    with pytest.raises(ProvisionError, match="did not appear"):
        lvm.create("vg0", "vm1", GiB)
    assert fake_lvm.calls()[-1] == ["lvremove", "--yes", "vg0/vm1"]


def test_names_that_would_reach_the_tool_as_options_are_refused(fake_zfs: Fake) -> None:
    zfs = Zfs(str(fake_zfs.command), str(fake_zfs.root))
    for bad in ("-rf", "tank/-o", "tank", "tank/a b", "tank/a@b", "/tank/a"):
        with pytest.raises(ProvisionError):
            zfs.create(bad, GiB)
    with pytest.raises(ProvisionError, match="not a multiple of volblocksize"):
        zfs.create("tank/vm1", GiB + 512, volblocksize=4096)
    with pytest.raises(ProvisionError, match="snapshot"):
        Lvm("lvm").create("vg0", "snapshot1", GiB)
    assert fake_zfs.calls() == []


def test_lvm_linear_thin_snapshot_clone_resize_remove(fake_lvm: Fake) -> None:
    lvm = Lvm(str(fake_lvm.command), str(fake_lvm.root))
    assert lvm.create("vg0", "lin", GiB) == str(fake_lvm.root / "vg0/lin")
    lvm.create("vg0", "thin", 2 * GiB, thinpool="pool0")
    assert lvm.snapshot("vg0", "thin", "snap1") == "vg0/snap1"
    lvm.snapshot("vg0", "lin", "snap2", size=GiB)
    assert lvm.clone("vg0", "thin", "vm2") == str(fake_lvm.root / "vg0/vm2")
    lvm.resize("vg0", "vm2", 3 * GiB)
    lvm.destroy("vg0", "vm2")
    assert fake_lvm.calls() == [
        ["lvcreate", "--yes", "-L", f"{GiB}b", "vg0", "-n", "lin"],
        ["lvcreate", "--yes", "-V", f"{2 * GiB}b", "--thinpool", "vg0/pool0", "-n", "thin"],
        ["lvcreate", "--yes", "-s", "-n", "snap1", "vg0/thin"],
        ["lvcreate", "--yes", "-s", "-n", "snap2", "-L", f"{GiB}b", "vg0/lin"],
        ["lvcreate", "--yes", "-s", "-kn", "-ay", "-n", "vm2", "vg0/thin"],
        ["lvresize", "--yes", "-L", f"{3 * GiB}b", "vg0/vm2"],
        ["lvremove", "--yes", "vg0/vm2"],
    ]
    assert os.path.getsize(fake_lvm.root / "vg0/thin") == 2 * GiB
    assert not (fake_lvm.root / "vg0/vm2").exists()


# -- config and `pyscsit lun` (no server running: the file is the whole effect) -----------------


def write_config(tmp_path: Path, zfs: Fake, lvm: Fake) -> Path:
    (tmp_path / "base.img").write_bytes(bytes(1 << 20))
    cfg = tmp_path / "pyscsit.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": "state", "portals": ["127.0.0.1:0"],
        "zfs": {"command": str(zfs.command), "dev_root": str(zfs.root)},
        "lvm": {"command": str(lvm.command), "dev_root": str(lvm.root)},
        "targets": [{"iqn": IQN, "auth": "none",
                     "luns": {0: {"backend": "file", "path": "base.img"}}}]}))
    return cfg


def lun(cfg: Path, *args: str) -> int:
    return cli.main(["lun", args[0], "--config", str(cfg), "--target", IQN, *args[1:]])


def test_config_locates_zvols_and_lvs_under_dev_root(tmp_path: Path, fake_zfs: Fake,
                                                     fake_lvm: Fake) -> None:
    cfg = write_config(tmp_path, fake_zfs, fake_lvm)
    data = yaml.safe_load(cfg.read_text())
    data["targets"][0]["luns"].update({
        1: {"backend": "zvol", "dataset": "tank/vm1", "sparse": True, "volblocksize": "64K"},
        2: {"backend": "lvm", "vg": "vg0", "lv": "vm2", "thinpool": "pool0", "read_only": True}})
    cfg.write_text(yaml.safe_dump(data))
    luns = load_config(cfg).targets[0].luns
    assert luns[1].path == str(fake_zfs.root / "tank/vm1") and luns[1].volblocksize == 65536
    assert luns[2].path == str(fake_lvm.root / "vg0/vm2") and luns[2].thinpool == "pool0"
    data["targets"][0]["luns"][3] = {"backend": "zvol", "dataset": "tank/vm1"}
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"targets\[0\]\.luns\.3\.dataset: .* is already "
                       r"used by targets\[0\]\.luns\.1"):
        load_config(cfg)


def test_lun_create_zvol_rewrites_the_config_atomically(
        tmp_path: Path, fake_zfs: Fake, fake_lvm: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, fake_zfs, fake_lvm)
    assert lun(cfg, "create", "--lun", "1", "--backend", "zvol", "--dataset", "tank/vm1",
               "--size", "1GiB", "--sparse", "--volblocksize", "64K") == 0
    out = capsys.readouterr().out
    assert out == (f"pyscsit: LUN 1 of {IQN}: sparse zvol tank/vm1 (1 GiB); no server is "
                   "running on this config: it takes effect at the next start\n")
    assert fake_zfs.calls() == [["create", "-s", "-b", "65536", "-V", str(GiB), "tank/vm1"]]
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    new = load_config(cfg).targets[0].luns[1]
    assert (new.backend, new.dataset, new.size, new.sparse) == ("zvol", "tank/vm1", GiB, True)
    # the same LUN again: refused before any tool runs
    assert lun(cfg, "create", "--lun", "1", "--backend", "lvm", "--vg", "vg0", "--lv", "x",
               "--size", "1G") == 2
    assert capsys.readouterr().err == f"pyscsit: {IQN} already has LUN 1 (delete it first)\n"
    assert fake_lvm.calls() == []


def test_lun_create_tool_failure_leaves_the_config_alone(
        tmp_path: Path, fake_zfs: Fake, fake_lvm: Fake, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path, fake_zfs, fake_lvm)
    before = cfg.read_text()
    monkeypatch.setenv("FAKE_FAIL", "lvcreate")
    monkeypatch.setenv("FAKE_MSG", "Volume group \"vg0\" has insufficient free space")
    assert lun(cfg, "create", "--lun", "2", "--backend", "lvm", "--vg", "vg0", "--lv", "vm2",
               "--size", "2G", "--thinpool", "pool0") == 1
    err = capsys.readouterr().err
    assert err.endswith('failed (exit 1): Volume group "vg0" has insufficient free space\n')
    assert err.count("\n") == 1
    assert cfg.read_text() == before


def test_lun_clone_resize_snapshot_delete(tmp_path: Path, fake_zfs: Fake, fake_lvm: Fake,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, fake_zfs, fake_lvm)
    assert lun(cfg, "create", "--lun", "1", "--backend", "zvol", "--dataset", "tank/gold",
               "--size", "1G") == 0
    assert lun(cfg, "snapshot", "--lun", "1", "--name", "s1") == 0
    assert lun(cfg, "clone", "--lun", "2", "--from", "tank/gold@s1", "--dataset",
               "tank/vm2") == 0
    assert lun(cfg, "resize", "--lun", "2", "--size", "2G") == 0
    assert lun(cfg, "resize", "--lun", "2", "--size", "1G") == 2  # never shrinks
    assert "shrinking loses data" in capsys.readouterr().err
    assert lun(cfg, "create", "--lun", "3", "--backend", "lvm", "--vg", "vg0", "--lv", "vm3",
               "--size", "1G", "--thinpool", "pool0") == 0
    assert lun(cfg, "clone", "--lun", "4", "--from", "vg0/vm3", "--lv", "vm4") == 0
    assert lun(cfg, "delete", "--lun", "2", "--destroy") == 0
    assert lun(cfg, "delete", "--lun", "4", "--destroy") == 0
    luns = load_config(cfg).targets[0].luns
    assert sorted(luns) == [0, 1, 3]
    assert [c[0] for c in fake_zfs.calls()] == ["create", "snapshot", "clone", "set", "destroy"]
    assert fake_zfs.calls()[3] == ["set", f"volsize={2 * GiB}", "tank/vm2"]
    assert fake_lvm.calls()[-1] == ["lvremove", "--yes", "vg0/vm4"]
    assert not (fake_zfs.root / "tank/vm2").exists()
    # the last LUN of a target cannot go (a target needs one)
    for n in ("1", "3"):
        assert lun(cfg, "delete", "--lun", n) == 0
    capsys.readouterr()
    assert lun(cfg, "delete", "--lun", "0") == 2
    assert "is the last LUN" in capsys.readouterr().err


def test_lun_create_file_is_sparse_and_undone_when_the_config_is_bad(
        tmp_path: Path, fake_zfs: Fake, fake_lvm: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, fake_zfs, fake_lvm)
    img = tmp_path / "new.img"
    assert lun(cfg, "create", "--lun", "5", "--backend", "file", "--path", str(img),
               "--size", "64MiB") == 0
    assert img.stat().st_size == 64 << 20 and img.stat().st_blocks == 0
    # a size that is not a multiple of the block size never creates the file
    assert lun(cfg, "create", "--lun", "6", "--backend", "file", "--path",
               str(tmp_path / "odd.img"), "--size", "1000", "--block-size", "4096") == 2
    assert "is not a multiple of the block size" in capsys.readouterr().err
    assert not (tmp_path / "odd.img").exists()
