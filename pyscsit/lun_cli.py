"""`pyscsit lun ...`: provision storage and export it, live, in one command.

    pyscsit lun create   --config C --target IQN --lun N --backend file|block|zvol|lvm
                         [--path P] [--size S] [--sparse] [--volblocksize B] [--dataset D]
                         [--vg VG --lv LV] [--thinpool POOL] [--block-size 512|4096]
                         [--read-only] [--direct]
    pyscsit lun snapshot --config C --target IQN --lun N --name S [--size S]
    pyscsit lun clone    --config C --target IQN --lun N --from DATASET@SNAP --dataset NEW
    pyscsit lun clone    --config C --target IQN --lun N --from VG/LV --lv NEW [--size S]
    pyscsit lun resize   --config C --target IQN --lun N [--size S]
    pyscsit lun delete   --config C --target IQN --lun N [--destroy]

Each command does the storage step, rewrites the config file atomically (temp file, fsync,
rename, mode 0600; YAML comments are not kept) and, when a server runs on that config (its pid
file in state_dir), makes it reload and waits for the answer (pyscsit/reload.py). A step that
fails undoes the steps before it: a volume is not left created without its LUN, nor a LUN
configured without its volume. Concurrent invocations take turns (a lock on the config's
folder). Exit status: 0 done, 1 a tool or the running server refused, 2 a usage/config error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import signal
import stat
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pyscsit.backends.block import BLKGETSIZE64
from pyscsit.backends.lvm import Lvm, check_lv_path
from pyscsit.backends.zvol import Zfs, check_snapshot
from pyscsit.config import (
    ConfigError,
    LunConfig,
    ServerConfig,
    load_config,
    parse_config,
    parse_size,
)
from pyscsit.files import write_atomic
from pyscsit.provision import ProvisionError, Undo
from pyscsit.reload import PID_FILE, STATUS_FILE

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
RELOAD_TIMEOUT = 90.0  # seconds: a reload waits for commands on removed LUs to finish


class LiveError(Exception):
    """The running server did not take the change."""


# -- the parser ---------------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """Add ``lun`` and its subcommands to the top-level subparsers."""
    lun = commands.add_parser(
        "lun", help="create, snapshot, clone, resize or delete a LUN (live)",
        description="Provision storage and change the config file; a server running on that "
        "config applies the change at once, without dropping any session.")
    sub = lun.add_subparsers(dest="lun_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, metavar="FILE", help="the YAML config file")
        p.add_argument("--target", required=True, metavar="IQN", help="the target's IQN")
        p.add_argument("--lun", required=True, type=int, metavar="N", help="the LUN number")

    create = sub.add_parser("create", help="create storage and export it as a new LUN")
    common(create)
    create.add_argument("--backend", required=True, choices=("file", "block", "zvol", "lvm"))
    create.add_argument("--path", help="file: image to create; block: the device")
    create.add_argument("--size", help="e.g. 40GiB (file, zvol, lvm)")
    create.add_argument("--sparse", action="store_true", help="zvol: thin (zfs create -s)")
    create.add_argument("--volblocksize", help="zvol: e.g. 64K (zfs create -b)")
    create.add_argument("--dataset", help="zvol: pool/volume")
    create.add_argument("--vg", help="lvm: volume group")
    create.add_argument("--lv", help="lvm: logical volume name")
    create.add_argument("--thinpool", help="lvm: a thin LV from this pool in --vg")
    _lu_options(create)

    snap = sub.add_parser("snapshot", help="snapshot a zvol or LVM LUN")
    common(snap)
    snap.add_argument("--name", required=True, help="the snapshot's name")
    snap.add_argument("--size", help="lvm, non-thin origin: copy-on-write room")

    clone = sub.add_parser("clone", help="export a writable clone of a snapshot as a new LUN")
    common(clone)
    clone.add_argument("--from", dest="source", required=True,
                       help="zvol: DATASET@SNAP; lvm: VG/LV (a snapshot is taken)")
    clone.add_argument("--dataset", help="zvol: the clone's dataset")
    clone.add_argument("--lv", help="lvm: the clone's LV name (in the origin's VG)")
    clone.add_argument("--size", help="lvm, non-thin origin: copy-on-write room")
    _lu_options(clone)

    resize = sub.add_parser("resize", help="grow a LUN (initiators see CAPACITY DATA HAS "
                            "CHANGED)")
    common(resize)
    resize.add_argument("--size", help="the new size (file, zvol, lvm); block: omit it, "
                        "after growing the device yourself")

    delete = sub.add_parser("delete", help="stop exporting a LUN")
    common(delete)
    delete.add_argument("--destroy", action="store_true",
                        help="also delete its file / zvol / LV (never a raw block device)")


def _lu_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block-size", type=int, choices=(512, 1024, 2048, 4096),
                   help="logical block size (default 512; 4096 for 4Kn)")
    p.add_argument("--read-only", action="store_true", help="initiators cannot write")
    p.add_argument("--direct", action="store_true", help="block/zvol/lvm: O_DIRECT I/O")


# -- the config file ----------------------------------------------------------------------------


@dataclass
class Doc:
    """The config file: its raw YAML (edited) and its parsed form (before the edit)."""

    path: Path
    text: str
    data: dict[str, Any]
    cfg: ServerConfig

    def target(self, iqn: str) -> dict[str, Any]:
        for raw in self.data.get("targets") or []:
            if isinstance(raw, dict) and raw.get("iqn") == iqn:
                return raw
        known = ", ".join(t.iqn for t in self.cfg.targets)
        raise ConfigError(str(self.path), "targets", f"no target {iqn!r} (configured: {known}; "
                          "add the target to the file first)")

    def luns(self, iqn: str) -> dict[Any, Any]:
        luns = self.target(iqn).setdefault("luns", {})
        assert isinstance(luns, dict)
        return luns

    def lun(self, iqn: str, number: int) -> LunConfig:
        for t in self.cfg.targets:
            if t.iqn == iqn and number in t.luns:
                return t.luns[number]
        self.target(iqn)
        raise ConfigError(str(self.path), "luns", f"{iqn} has no LUN {number}")

    def key_of(self, iqn: str, number: int) -> Any:
        for key in self.luns(iqn):
            if key == number or (isinstance(key, str) and key.isdigit() and int(key) == number):
                return key
        return None

    def validate(self) -> ServerConfig:
        """Parse the edited data: an edit that makes the file invalid is never written."""
        return parse_config(self.data, source=str(self.path), base_dir=self.path.parent)

    def save(self) -> None:
        write_atomic(self.path, yaml.safe_dump(self.data, sort_keys=False))

    def restore(self) -> None:
        write_atomic(self.path, self.text)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Doc]:
    """The config, read under a lock on its folder: `pyscsit lun` runs take turns."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cfg = load_config(path)  # the file as it is must be valid before we touch it
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        yield Doc(path=path, text=text, data=data, cfg=cfg)
    finally:
        os.close(fd)  # releases the lock


# -- the running server -------------------------------------------------------------------------


def _running_server(cfg: ServerConfig, config: Path) -> int | None:
    """The pid of a live `pyscsit serve` on this very config file, else None."""
    try:
        lines = (Path(cfg.state_dir) / PID_FILE).read_text().splitlines()
        pid = int(lines[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    if b"pyscsit" not in cmdline:  # a stale file whose pid was reused: never signal it
        return None
    if len(lines) < 2 or os.path.realpath(lines[1]) != os.path.realpath(config):
        return None
    return pid


def _apply_live(cfg: ServerConfig, config: Path) -> str:
    """Make the running server reload; its one-line answer. LiveError if it refused."""
    pid = _running_server(cfg, config)
    if pid is None:
        return "no server is running on this config: it takes effect at the next start"
    status = Path(cfg.state_dir) / STATUS_FILE
    sent = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return "no server is running on this config: it takes effect at the next start"
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while time.monotonic() < deadline:
        try:
            doc = json.loads(status.read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("pid") == pid and doc.get("read_at", 0) >= sent:
            if not doc.get("ok"):
                raise LiveError(f"the running server (pid {pid}) refused it: {doc.get('summary')}")
            return f"live on the running server (pid {pid}): {doc.get('summary')}"
        time.sleep(0.05)
    raise LiveError(f"the running server (pid {pid}) did not answer within "
                    f"{RELOAD_TIMEOUT:g} s")


def _commit(doc: Doc, undo: Undo) -> str:
    """Validate, write the config, apply it live; on a refusal the old file comes back."""
    doc.validate()
    doc.save()
    undo.push("restore the config file", doc.restore)
    try:
        return _apply_live(doc.cfg, doc.path)
    except LiveError:
        doc.restore()
        with contextlib.suppress(LiveError):  # the server goes back to the old file
            _apply_live(doc.cfg, doc.path)
        raise


# -- helpers ------------------------------------------------------------------------------------


def _size(text: str | None, what: str = "--size") -> int:
    if text is None:
        raise _Usage(f"{what} is required")
    try:
        return parse_size(text)
    except ValueError as e:
        raise _Usage(f"{what}: {e}") from None


class _Usage(Exception):
    pass


def _need(value: str | None, flag: str, backend: str) -> str:
    if not value:
        raise _Usage(f"--backend {backend} needs {flag}")
    return value


def _device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            buf = bytearray(8)
            fcntl.ioctl(fd, BLKGETSIZE64, buf)
            return int(struct.unpack("Q", buf)[0])
        return os.fstat(fd).st_size  # a file standing in for a device (tests)
    finally:
        os.close(fd)


def _human(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _lu_keys(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.block_size:
        out["block_size"] = args.block_size
    if args.read_only:
        out["read_only"] = True
    if args.direct:
        out["direct"] = True
    return out


def _tools(cfg: ServerConfig) -> tuple[Zfs, Lvm]:
    return Zfs(cfg.zfs.command, cfg.zfs.dev_root), Lvm(cfg.lvm.command, cfg.lvm.dev_root)


# -- the actions --------------------------------------------------------------------------------


def _create(doc: Doc, args: argparse.Namespace) -> str:
    iqn, number = args.target, args.lun
    if doc.key_of(iqn, number) is not None:
        raise _Usage(f"{iqn} already has LUN {number} (delete it first)")
    zfs, lvm = _tools(doc.cfg)
    entry: dict[str, Any] = {"backend": args.backend}
    backend = args.backend
    with Undo() as undo:
        if backend == "file":
            path = os.path.abspath(_need(args.path, "--path", backend))
            entry["path"] = path
            if args.size is not None:
                size = _size(args.size)
                entry["size"] = args.size
                doc.luns(iqn)[number] = {**entry, **_lu_keys(args)}
                doc.validate()
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                except FileExistsError:
                    raise _Usage(f"{path} already exists (omit --size to export it as it "
                                 "is)") from None
                except OSError as e:
                    raise ProvisionError(f"{path}: cannot create: {e.strerror}") from None
                undo.push(f"rm {path}", lambda: os.unlink(path))
                try:
                    os.ftruncate(fd, size)  # sparse
                finally:
                    os.close(fd)
                what = f"sparse file {path} ({_human(size)})"
            elif not os.path.isfile(path):
                raise _Usage(f"{path} does not exist (give --size to create it)")
            else:
                what = f"file {path}"
        elif backend == "block":
            path = os.path.abspath(_need(args.path, "--path", backend))
            if args.size is not None:
                raise _Usage("--backend block exports a device as it is: no --size")
            try:
                if not stat.S_ISBLK(os.stat(path).st_mode):
                    raise _Usage(f"{path} is not a block device")
            except FileNotFoundError:
                raise _Usage(f"{path} does not exist") from None
            entry["path"] = path
            what = f"block device {path}"
        elif backend == "zvol":
            dataset = _need(args.dataset, "--dataset", backend)
            size = _size(args.size)
            entry.update(dataset=dataset, size=args.size)
            if args.sparse:
                entry["sparse"] = True
            vbs = _size(args.volblocksize, "--volblocksize") if args.volblocksize else None
            if args.volblocksize:
                entry["volblocksize"] = args.volblocksize
            doc.luns(iqn)[number] = {**entry, **_lu_keys(args)}
            doc.validate()
            zfs.create(dataset, size, sparse=args.sparse, volblocksize=vbs)
            undo.push(f"zfs destroy {dataset}", lambda: zfs.destroy(dataset))
            what = f"{'sparse ' if args.sparse else ''}zvol {dataset} ({_human(size)})"
        else:
            vg, lv = _need(args.vg, "--vg", backend), _need(args.lv, "--lv", backend)
            size = _size(args.size)
            entry.update(vg=vg, lv=lv, size=args.size)
            if args.thinpool:
                entry["thinpool"] = args.thinpool
            doc.luns(iqn)[number] = {**entry, **_lu_keys(args)}
            doc.validate()
            lvm.create(vg, lv, size, thinpool=args.thinpool)
            undo.push(f"lvremove {vg}/{lv}", lambda: lvm.destroy(vg, lv))
            kind = f"thin LV (pool {args.thinpool})" if args.thinpool else "LV"
            what = f"{kind} {vg}/{lv} ({_human(size)})"
        doc.luns(iqn)[number] = {**entry, **_lu_keys(args)}
        live = _commit(doc, undo)
    return f"LUN {number} of {iqn}: {what}; {live}"


def _snapshot(doc: Doc, args: argparse.Namespace) -> str:
    lun = doc.lun(args.target, args.lun)
    zfs, lvm = _tools(doc.cfg)
    if lun.backend == "zvol" and lun.dataset:
        if args.size is not None:
            raise _Usage("zvol snapshots take no --size")
        return f"snapshot {zfs.snapshot(lun.dataset, args.name)}"
    if lun.backend == "lvm" and lun.vg and lun.lv:
        size = _size(args.size) if args.size is not None else None
        if size is None and not lun.thinpool:
            raise _Usage(f"{lun.vg}/{lun.lv} is not thin: give --size (copy-on-write room)")
        return f"snapshot {lvm.snapshot(lun.vg, lun.lv, args.name, size)}"
    raise _Usage(f"LUN {args.lun} is a {lun.backend} LUN: snapshots need zvol or lvm")


def _clone(doc: Doc, args: argparse.Namespace) -> str:
    iqn, number = args.target, args.lun
    if doc.key_of(iqn, number) is not None:
        raise _Usage(f"{iqn} already has LUN {number} (delete it first)")
    zfs, lvm = _tools(doc.cfg)
    with Undo() as undo:
        if "@" in args.source:
            check_snapshot(args.source)
            dataset = _need(args.dataset, "--dataset", "zvol (a DATASET@SNAP clone)")
            entry: dict[str, Any] = {"backend": "zvol", "dataset": dataset}
            doc.luns(iqn)[number] = {**entry, **_lu_keys(args)}
            doc.validate()
            zfs.clone(args.source, dataset)
            undo.push(f"zfs destroy {dataset}", lambda: zfs.destroy(dataset))
            what = f"zvol {dataset}, a clone of {args.source}"
        else:
            vg, origin = check_lv_path(args.source)
            lv = _need(args.lv, "--lv", "lvm (a VG/LV clone)")
            size = _size(args.size) if args.size is not None else None
            entry = {"backend": "lvm", "vg": vg, "lv": lv}
            doc.luns(iqn)[number] = {**entry, **_lu_keys(args)}
            doc.validate()
            lvm.clone(vg, origin, lv, size)
            undo.push(f"lvremove {vg}/{lv}", lambda: lvm.destroy(vg, lv))
            what = f"LV {vg}/{lv}, a snapshot of {vg}/{origin}"
        live = _commit(doc, undo)
    return f"LUN {number} of {iqn}: {what}; {live}"


def _resize(doc: Doc, args: argparse.Namespace) -> str:
    iqn, number = args.target, args.lun
    lun = doc.lun(iqn, number)
    zfs, lvm = _tools(doc.cfg)
    if lun.backend == "block":
        if args.size is not None:
            raise _Usage("pyscsit does not resize a raw block device: grow it yourself, then "
                         "run `pyscsit lun resize` without --size")
        what = f"rescanned {lun.path}"
    else:
        size = _size(args.size)
        try:
            current = _device_size(lun.path)
        except OSError as e:
            raise ProvisionError(f"{lun.path}: {e.strerror}") from None
        if size < current:
            raise _Usage(f"{_human(size)} is smaller than the LUN's {_human(current)}: "
                         "shrinking loses data, pyscsit only grows LUNs")
        if size % lun.block_size:
            raise _Usage(f"{args.size} is not a multiple of the block size ({lun.block_size})")
        doc.luns(iqn)[doc.key_of(iqn, number)]["size"] = args.size
        doc.validate()
        if lun.backend == "file":
            os.truncate(lun.path, size)
        elif lun.backend == "zvol" and lun.dataset:
            zfs.resize(lun.dataset, size)
        elif lun.vg and lun.lv:
            lvm.resize(lun.vg, lun.lv, size)
        what = f"{_human(current)} -> {_human(size)}"
    with Undo() as undo:
        live = _commit(doc, undo)
    return f"LUN {number} of {iqn}: {what}; {live}"


def _delete(doc: Doc, args: argparse.Namespace) -> str:
    iqn, number = args.target, args.lun
    lun = doc.lun(iqn, number)
    if args.destroy and lun.backend == "block":
        raise _Usage("--destroy: pyscsit never destroys a raw block device")
    luns = doc.luns(iqn)
    if len(luns) == 1:
        raise _Usage(f"LUN {number} is the last LUN of {iqn}: a target needs at least one "
                     "(remove the target from the config instead)")
    del luns[doc.key_of(iqn, number)]
    with Undo() as undo:
        live = _commit(doc, undo)
    what = "removed"
    if args.destroy:  # after the server closed it: a zvol or LV in use cannot be destroyed
        zfs, lvm = _tools(doc.cfg)
        try:
            if lun.backend == "file":
                os.unlink(lun.path)
            elif lun.backend == "zvol" and lun.dataset:
                zfs.destroy(lun.dataset)
            elif lun.vg and lun.lv:
                lvm.destroy(lun.vg, lun.lv)
        except OSError as e:
            raise ProvisionError(f"LUN {number} was removed, but deleting {lun.path} failed: "
                                 f"{e.strerror}") from None
        except ProvisionError as e:
            raise ProvisionError(f"LUN {number} was removed, but destroying its volume "
                                 f"failed: {e}") from None
        what = f"removed and destroyed {lun.dataset or (lun.vg and f'{lun.vg}/{lun.lv}') or lun.path}"
    return f"LUN {number} of {iqn}: {what}; {live}"


_ACTIONS = {"create": _create, "snapshot": _snapshot, "clone": _clone, "resize": _resize,
            "delete": _delete}


def main(args: argparse.Namespace) -> int:
    """Run one `pyscsit lun` action; one line on stdout, or one line on stderr."""
    try:
        with _locked(Path(args.config).absolute()) as doc:
            print(f"pyscsit: {_ACTIONS[args.lun_command](doc, args)}", flush=True)
        return EXIT_OK
    except (ConfigError, _Usage) as e:
        print(f"pyscsit: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ProvisionError, LiveError) as e:
        print(f"pyscsit: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        if e.errno == errno.ENOENT and e.filename:
            print(f"pyscsit: {e.filename}: {e.strerror}", file=sys.stderr)
            return EXIT_USAGE
        print(f"pyscsit: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
