"""YAML -> typed, frozen config -> the live model (target.Model).

Loading is two steps, like everything else here: parse (pure: YAML text -> ServerConfig, every
problem reported as ``FILE: key.path: what is wrong``) then build (opens backends, creates the
state directory, loads LU identities). Nothing in either step may escape as a traceback: every
failure a user can cause is a ConfigError with one line of text.

Import from here; the pieces live in config_types (the frozen dataclasses, ConfigError),
config_values (value parsers, the walk's checks), config_access (host groups, ACLs, views,
portals, digests, login policy) and config_build (build_model, server_options). This module
walks LUNs, targets and the server, and reads YAML files.

The YAML shape (issue 2) is a contract; extend it, don't break it:

    state_dir: /var/lib/pyscsit
    portals: ["0.0.0.0:3260", "[::]:3260"]
    discovery_auth: none                 # optional, same shape as a target's auth
    host_groups: {esx: [iqn.1998-01.com.vmware:esx1]}   # optional (access control below)
    chap_algorithms: [SHA-256, SHA3-256] # optional; default: SHA3-256, SHA-256, SHA-1, MD5
    login_backoff: {base: 1, max: 16}    # optional, seconds; doubles per failed login
    timeouts: {login: 30, nop_interval: 15, nop_timeout: 15}   # optional, seconds
    limits: {max_connections: 1024, max_connections_per_address: 64, max_pending_logins: 64,
             max_sessions_per_initiator: 64, r2t_timeout: 30, max_buffered_bytes: 64MiB,
             max_text_bytes: 64KiB}      # optional (limits.py)
    targets:
      - iqn: iqn.2026-11.org.example:disk0
        alias: disk0                     # optional
        auth:                            # required: chap (+ mutual_chap), or `none`
          chap: {user: alice, secret: a-long-secret}
          mutual_chap: {user: target0, secret: another-secret}
        initiators: [esx]                # optional: host groups / names that may log in
        acls: {iqn.1998-01.com.vmware:esx1: {chap: {user: esx1, secret: ...}}}  # optional
        portals: ["10.0.0.1:3260"]       # optional: offered on these server portals only
        digests: required                # optional; or {header: required, data: optional}
        luns:
          1: {backend: file, path: /srv/iscsi/disk0.img, size: 40GiB}
          2: {backend: file, path: ..., views: [iqn.1998-01.com.vmware:esx1]}  # LUN masking
          3: {backend: block, path: /dev/sdb, direct: true}          # direct: O_DIRECT
          4: {backend: zvol, dataset: tank/vm4, sparse: true, volblocksize: 64K, size: 750G}
          5: {backend: lvm, vg: vg0, lv: vm5, thinpool: pool0, read_only: true}
    zfs: {command: zfs, dev_root: /dev/zvol}   # optional: zvol LUs are dev_root/<dataset>
    lvm: {command: lvm, dev_root: /dev}        # optional: lvm LUs are dev_root/<vg>/<lv>
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import string
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from pyscsit.config_access import (
    ACCESS_KEYS,
    POLICY_KEYS,
    parse_access,
    parse_login_policy,
    without_views,
)
from pyscsit.config_build import build_model, server_options
from pyscsit.config_types import (
    AccessConfig,
    AuthConfig,
    ConfigError,
    LoginPolicy,
    LunConfig,
    ServerConfig,
    TargetConfig,
    Timeouts,
    ToolConfig,
)
from pyscsit.config_values import (
    DEFAULT_PORT,
    Invalid,
    at_index,
    at_key,
    check_iscsi_name,
    check_mapping,
    check_text,
    each_portal,
    fail,
    is_ip,
    parse_auth,
    parse_chap,
    parse_portal,
    parse_size,
    type_name,
)
from pyscsit.files import write_atomic
from pyscsit.limits import Limits
from pyscsit.target import Chap, Portal

__all__ = [
    "DEFAULT_IQN",
    "AccessConfig",
    "AuthConfig",
    "ConfigError",
    "LoginPolicy",
    "LunConfig",
    "ServerConfig",
    "TargetConfig",
    "Timeouts",
    "ToolConfig",
    "build_model",
    "check_iscsi_name",
    "default_config",
    "load_config",
    "parse_config",
    "parse_portal",
    "parse_size",
    "server_options",
]

DEFAULT_IQN = "iqn.2026-11.org.pyscsit:default"
DEFAULT_SIZE = 1 << 30
MAX_LUN = 16383  # SAM-5 flat/peripheral addressing: 14 bits
BLOCK_SIZES = (512, 1024, 2048, 4096)
SUPPORTED_BACKENDS = ("file", "block", "zvol", "lvm")
PLANNED_BACKENDS: tuple[str, ...] = ()
#: LUN keys that only some backends take (backend -> its own keys)
BACKEND_KEYS = {"file": ("path",), "block": ("path", "direct"),
                "zvol": ("dataset", "sparse", "volblocksize", "direct"),
                "lvm": ("vg", "lv", "thinpool", "direct")}
CREDENTIALS_FILE = "credentials.yaml"


# -- LUNs, targets and the server ----------------------------------------------------------------


_VOLUME_PART = re.compile(r"[A-Za-z0-9_.:+][A-Za-z0-9_.:+-]*")


def _volume(value: object, path: str, what: str, *, nested: bool = False) -> str:
    """A zvol dataset (``pool/volume``, ``nested``) or an LVM VG/LV name: what the tools accept,
    and never starting with '-' (it would reach them as an option)."""
    name = check_text(value, path)
    parts = name.split("/") if nested else [name]
    if not all(_VOLUME_PART.fullmatch(p) for p in parts) or (nested and len(parts) < 2):
        example = "pool/volume" if nested else "letters, digits and _ . : + -"
        fail(path, f"{name!r} is not {what} (expected {example})")
    return name


def _flag(m: dict[str, Any], key: str, path: str) -> bool:
    value = m.get(key, False)
    if not isinstance(value, bool):
        fail(at_key(path, key), f"expected true or false, got {value!r}")
    return value


def _backend_keys(m: dict[str, Any], backend: str, path: str) -> dict[str, Any]:
    """The keys of block / zvol / lvm LUs (issue 4), checked; LunConfig fields."""
    for key in m:
        owners = [b for b, keys in BACKEND_KEYS.items() if key in keys]
        if owners and backend not in owners:
            fail(at_key(path, key), f"does not apply to backend {backend!r} (only to "
                 f"{', '.join(owners)})")
    out: dict[str, Any] = {"direct": _flag(m, "direct", path)}
    if backend == "zvol":
        if "dataset" not in m:
            fail(at_key(path, "dataset"), "required but missing (backend 'zvol' needs the "
                 "volume's dataset, e.g. tank/vm1)")
        out["dataset"] = _volume(m["dataset"], at_key(path, "dataset"), "a ZFS volume",
                                 nested=True)
        out["sparse"] = _flag(m, "sparse", path)
        if m.get("volblocksize") is not None:
            try:
                vbs = parse_size(m["volblocksize"])
            except ValueError as e:
                fail(at_key(path, "volblocksize"), str(e))
            if vbs & (vbs - 1) or not 512 <= vbs <= 1 << 20:
                fail(at_key(path, "volblocksize"), f"{m['volblocksize']!r} is not a power of "
                     "two from 512 to 1MiB")
            out["volblocksize"] = vbs
    elif backend == "lvm":
        for key in ("vg", "lv"):
            if key not in m:
                fail(at_key(path, key), "required but missing (backend 'lvm' needs vg and lv)")
        out["vg"] = _volume(m["vg"], at_key(path, "vg"), "a volume group name")
        out["lv"] = _volume(m["lv"], at_key(path, "lv"), "a logical volume name")
        if m.get("thinpool") is not None:
            out["thinpool"] = _volume(m["thinpool"], at_key(path, "thinpool"), "a thin pool name")
    return out


def _lun(value: object, path: str, base_dir: Path) -> LunConfig:
    own_keys = tuple(dict.fromkeys(k for keys in BACKEND_KEYS.values() for k in keys))
    m = check_mapping(value, path, ("backend",), ("size", "block_size", "physical_block_size",
                                                  "read_only", *own_keys))
    backend = m["backend"]
    if backend in PLANNED_BACKENDS:
        fail(at_key(path, "backend"), f"backend {backend!r} is not supported yet "
             f"(supported: {', '.join(SUPPORTED_BACKENDS)})")
    if backend not in SUPPORTED_BACKENDS:
        fail(at_key(path, "backend"), f"unknown backend {backend!r} "
             f"(supported: {', '.join(SUPPORTED_BACKENDS)})")
    extra = _backend_keys(m, backend, path)
    file_path = ""  # zvol / lvm: the device under dev_root, filled in by _locate
    if "path" in BACKEND_KEYS[backend]:
        if "path" not in m:
            fail(at_key(path, "path"), f"required but missing (backend {backend!r} needs a "
                 "path)")
        file_path = str(_resolve(base_dir, check_text(m["path"], at_key(path, "path"))))
    block_size = m.get("block_size", 512)
    if isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        fail(at_key(path, "block_size"), f"{block_size!r} is not a block size (one of: "
             f"{', '.join(map(str, BLOCK_SIZES))})")
    physical: int | None = m.get("physical_block_size")
    if physical is not None and (isinstance(physical, bool) or not isinstance(physical, int)
                                 or physical < block_size or physical > 65536
                                 or physical & (physical - 1)):
        fail(at_key(path, "physical_block_size"), f"{physical!r} is not a power of two from "
             f"the block size ({block_size}) to 65536")
    size: int | None = None
    if m.get("size") is not None:
        try:
            size = parse_size(m["size"])
        except ValueError as e:
            fail(at_key(path, "size"), str(e))
        if size % block_size:
            fail(at_key(path, "size"), f"{m['size']!r} is not a multiple of the block size "
                 f"({block_size})")
    return LunConfig(backend=backend, path=file_path, size=size, **extra,
                     block_size=block_size, physical_block_size=physical,
                     read_only=_flag(m, "read_only", path))


def _resolve(base_dir: Path, text: str) -> Path:
    return Path(os.path.normpath(base_dir / Path(text).expanduser()))


def _target(value: object, path: str, base_dir: Path) -> TargetConfig:
    m = check_mapping(value, path, ("iqn", "luns"), ("alias", "auth") + ACCESS_KEYS)
    try:
        iqn = check_iscsi_name(m["iqn"])
    except ValueError as e:
        fail(at_key(path, "iqn"), str(e))
    alias = check_text(m["alias"], at_key(path, "alias")) if "alias" in m else None
    if "auth" not in m:  # no silent default: anonymous access must be asked for
        fail(at_key(path, "auth"), "required but missing: give chap: {user: ..., secret: ...}, "
             "or write `auth: none` to allow anonymous logins")
    auth = parse_auth(m["auth"], at_key(path, "auth"))
    luns_path = at_key(path, "luns")
    raw_luns = m["luns"]
    if not isinstance(raw_luns, dict):
        fail(luns_path, f"expected a mapping of LUN number to LU, got {type_name(raw_luns)}")
    if not raw_luns:
        fail(luns_path, "is empty: a target needs at least one LUN")
    luns: dict[int, LunConfig] = {}
    for key, lun in raw_luns.items():
        # JSON-style configs can only have string keys: accept "1" as well as 1
        number = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_LUN:
            fail(f"{luns_path}.{number}", f"LUN {number!r} is not a whole number from 0 to "
                 f"{MAX_LUN}")
        if number in luns:
            fail(f"{luns_path}.{number}", f"LUN {number} is listed twice")
        luns[number] = _lun(without_views(lun), f"{luns_path}.{number}", base_dir)
    return TargetConfig(iqn=iqn, auth=auth, luns=luns, alias=alias)


def _portals(value: object, path: str) -> tuple[Portal, ...]:
    portals: list[Portal] = []
    for where, portal in each_portal(value, path, empty="listen on at least one portal"):
        for j, other in enumerate(portals):
            if portal.port and portal.port == other.port and _overlap(portal.host, other.host):
                same = "is listed twice" if portal == other else f"overlaps {other}"
                fail(where, f"'{portal}' {same} (portals[{j}])")
        portals.append(portal)
    return tuple(portals)


def _overlap(a: str, b: str) -> bool:
    """Would binding both fail? Same address, or a wildcard and an address of its family."""
    if a == b:
        return True
    if not (is_ip(a) and is_ip(b)):
        return False
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)


def _timeouts(value: object, path: str) -> Timeouts:
    names = ("login", "nop_interval", "nop_timeout")
    m = check_mapping(value, path, (), names)
    return Timeouts(**{key: _seconds(v, at_key(path, key)) for key, v in m.items()})


def _seconds(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        fail(path, f"{value!r} is not a number of seconds (more than 0, at most 86400)")
    return float(value)


LIMIT_COUNTS = ("max_connections", "max_connections_per_address", "max_pending_logins",
                "max_sessions_per_initiator")
LIMIT_SIZES = {"max_buffered_bytes": (1 << 20, 1 << 40, "1MiB to 1TiB"),
               "max_text_bytes": (8192, 1 << 24, "8KiB to 16MiB")}


def _limits(value: object, path: str) -> Limits:
    m = check_mapping(value, path, (), LIMIT_COUNTS + ("r2t_timeout",) + tuple(LIMIT_SIZES))
    got: dict[str, Any] = {}
    for key, v in m.items():
        where = at_key(path, key)
        if key in LIMIT_COUNTS:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
                fail(where, f"{v!r} is not a count (1 to 1000000)")
            got[key] = v
        elif key == "r2t_timeout":
            got[key] = _seconds(v, where)
        else:
            lo, hi, span = LIMIT_SIZES[key]
            try:
                n = parse_size(v)
            except ValueError as e:
                fail(where, str(e))
            if not lo <= n <= hi:
                fail(where, f"{v!r} is out of range ({span})")
            got[key] = n
    return Limits(**got)


def _server(data: object, base_dir: Path, source: str) -> ServerConfig:
    if data is None:
        fail("", "the file is empty (expected state_dir, portals and targets)")
    m = check_mapping(data, "", ("state_dir", "portals", "targets"),
                      ("discovery_auth", "timeouts", "limits", "zfs", "lvm") + POLICY_KEYS)
    zfs = _tool(m.get("zfs"), "zfs", base_dir, ToolConfig("zfs", "/dev/zvol"))
    lvm = _tool(m.get("lvm"), "lvm", base_dir, ToolConfig("lvm", "/dev"))
    state_dir = _resolve(base_dir, check_text(m["state_dir"], "state_dir"))
    portals = _portals(m["portals"], "portals")
    policy = parse_login_policy(m)  # host groups first: targets name them
    discovery_auth = parse_auth(m["discovery_auth"], "discovery_auth") \
        if "discovery_auth" in m else AuthConfig()
    raw_targets = m["targets"]
    if not isinstance(raw_targets, list) or not raw_targets:
        fail("targets", f"expected a list of targets, got {type_name(raw_targets)}"
             if not isinstance(raw_targets, list) else "is empty: configure at least one target")
    targets: list[TargetConfig] = []
    seen_iqns: dict[str, str] = {}
    seen_paths: dict[str, str] = {}
    for i, raw in enumerate(raw_targets):
        path = at_index("targets", i)
        target = _locate(_target(raw, path, base_dir), zfs, lvm)
        if target.iqn in seen_iqns:
            fail(f"{path}.iqn", f"{target.iqn!r} is already used by {seen_iqns[target.iqn]}")
        seen_iqns[target.iqn] = path
        for number, lun in target.luns.items():
            where = f"{path}.luns.{number}"
            if lun.path in seen_paths:  # two LUs on one file would share an identity
                key = {"zvol": "dataset", "lvm": "lv"}.get(lun.backend, "path")
                fail(f"{where}.{key}", f"{lun.path!r} is already used by "
                     f"{seen_paths[lun.path]}")
            seen_paths[lun.path] = where
        targets.append(replace(target, access=parse_access(raw, target, path, policy, portals)))
    timeouts = _timeouts(m["timeouts"], "timeouts") if "timeouts" in m else Timeouts()
    limits = _limits(m["limits"], "limits") if "limits" in m else Limits()
    return ServerConfig(state_dir=str(state_dir), portals=portals, targets=tuple(targets),
                        discovery_auth=discovery_auth, timeouts=timeouts, limits=limits,
                        zfs=zfs, lvm=lvm, login_policy=policy, source=source)


def _tool(value: object, path: str, base_dir: Path, default: ToolConfig) -> ToolConfig:
    """``zfs: {command: zfs, dev_root: /dev/zvol}``: a command name is looked up in PATH, a
    command with a slash and dev_root are paths (relative to the config's folder)."""
    if value is None:
        return default
    m = check_mapping(value, path, (), ("command", "dev_root"))
    command = default.command
    if "command" in m:
        command = check_text(m["command"], at_key(path, "command"))
        if "/" in command:
            command = str(_resolve(base_dir, command))
    dev_root = default.dev_root
    if "dev_root" in m:
        dev_root = str(_resolve(base_dir, check_text(m["dev_root"], at_key(path, "dev_root"))))
    return ToolConfig(command=command, dev_root=dev_root)


def _locate(target: TargetConfig, zfs: ToolConfig, lvm: ToolConfig) -> TargetConfig:
    """zvol and lvm LUs: their device is named after the volume, under the tool's dev_root."""
    luns = dict(target.luns)
    for number, lun in luns.items():
        if lun.backend == "zvol" and lun.dataset is not None:
            luns[number] = replace(lun, path=os.path.join(zfs.dev_root, lun.dataset))
        elif lun.backend == "lvm" and lun.vg is not None and lun.lv is not None:
            luns[number] = replace(lun, path=os.path.join(lvm.dev_root, lun.vg, lun.lv))
    return replace(target, luns=luns)


def parse_config(data: object, *, source: str, base_dir: str | os.PathLike[str]) -> ServerConfig:
    """Validate already-loaded YAML data. Relative paths are resolved against ``base_dir``."""
    try:
        return _server(data, Path(base_dir).resolve(), source)
    except Invalid as e:
        raise ConfigError(source, e.key_path, e.problem) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read and validate a YAML config file; relative paths are resolved against its folder."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(source, "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(source, "", f"is not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        what = e.problem or e.context or "not valid YAML"
        raise ConfigError(source, where, what) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, "", f"not valid YAML: {e}") from None
    return parse_config(data, source=source, base_dir=Path(source).resolve().parent)


# -- the embedded default (`pyscsit serve` without --config) -----------------------------------


def default_config(data_dir: str | os.PathLike[str] = "./pyscsit-data"
                   ) -> tuple[ServerConfig, Chap]:
    """One 1 GiB sparse LU (LUN 0) in ``data_dir``, on 127.0.0.1:3260, with CHAP.

    The generated CHAP credentials are kept in ``data_dir/credentials.yaml`` (mode 0600) so a
    restart keeps them. Returns the config and the credentials to print.
    """
    root = Path(data_dir).resolve()
    source = f"default config ({root})"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(source, "", f"cannot create {str(root)!r}: {e.strerror or e}") from None
    chap = _credentials(root / CREDENTIALS_FILE)
    target = TargetConfig(
        iqn=DEFAULT_IQN,
        auth=AuthConfig(chap=chap),
        luns={0: LunConfig(backend="file", path=str(root / "lun0.img"), size=DEFAULT_SIZE)},
        alias="pyscsit-default",
    )
    cfg = ServerConfig(state_dir=str(root), portals=(Portal("127.0.0.1", DEFAULT_PORT),),
                       targets=(target,), source=source)
    return cfg, chap


_SECRET_ALPHABET = string.ascii_letters + string.digits  # safe in URLs, shells and argv


def _credentials(path: Path) -> Chap:
    source = str(path)
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            raise ConfigError(source, "", "cannot be read: delete it to generate new "
                              "credentials") from None
        try:
            chap = parse_chap(data, "")
        except Invalid as e:
            raise ConfigError(source, e.key_path, f"{e.problem} (delete the file "
                              "to generate new credentials)") from None
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return chap
    chap = Chap(user=f"pyscsit-{secrets.token_hex(4)}",
                secret="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(24)))
    try:
        write_atomic(path, yaml.safe_dump({"user": chap.user, "secret": chap.secret}))
    except OSError as e:
        raise ConfigError(source, "", f"cannot write: {e.strerror or e}") from None
    return chap
