"""YAML -> typed, frozen config -> the live model (target.Model).

Loading is two steps, like everything else here: parse (pure: YAML text -> ServerConfig, every
problem reported as ``FILE: key.path: what is wrong``) then build (opens backends, creates the
state directory, loads LU identities). Nothing in either step may escape as a traceback: every
failure a user can cause is a ConfigError with one line of text.

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

import difflib
import ipaddress
import os
import re
import secrets
import string
import tempfile
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from pyscsit.limits import Limits
from pyscsit.target import Auth, Chap, Model, Portal, Target

if TYPE_CHECKING:
    from pyscsit.backends.base import Backend
    from pyscsit.scsi.lu import LogicalUnit
    from pyscsit.server import ServerOptions

__all__ = [
    "DEFAULT_IQN",
    "AuthConfig",
    "ConfigError",
    "LunConfig",
    "ServerConfig",
    "TargetConfig",
    "Timeouts",
    "build_model",
    "check_iscsi_name",
    "default_config",
    "load_config",
    "parse_config",
    "parse_portal",
    "parse_size",
    "server_options",
]

DEFAULT_PORT = 3260  # the IANA-assigned iSCSI port
DEFAULT_IQN = "iqn.2026-11.org.pyscsit:default"
DEFAULT_SIZE = 1 << 30
MAX_LUN = 16383  # SAM-5 flat/peripheral addressing: 14 bits
MAX_NAME_BYTES = 223  # RFC 7143 §4.2.7
MIN_SECRET_CHARS = 12  # 96 bits (RFC 7143 CHAP considerations); Windows wants 12..16
BLOCK_SIZES = (512, 1024, 2048, 4096)
SUPPORTED_BACKENDS = ("file", "block", "zvol", "lvm")
PLANNED_BACKENDS: tuple[str, ...] = ()
#: LUN keys that only some backends take (backend -> its own keys)
BACKEND_KEYS = {"file": ("path",), "block": ("path", "direct"),
                "zvol": ("dataset", "sparse", "volblocksize", "direct"),
                "lvm": ("vg", "lv", "thinpool", "direct")}
CREDENTIALS_FILE = "credentials.yaml"


class ConfigError(Exception):
    """A config problem, as one line: ``FILE: key.path: what is wrong``.

    Messages never contain a CHAP secret.
    """

    def __init__(self, source: str, key_path: str, problem: str) -> None:
        self.source = source
        self.key_path = key_path
        self.problem = " ".join(problem.split())  # one line, whatever the cause said
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {self.problem}")


class _Invalid(Exception):
    """Raised inside parsing; load/parse_config adds the file name."""

    def __init__(self, key_path: str, problem: str) -> None:
        super().__init__(problem)
        self.key_path = key_path
        self.problem = problem


# -- the typed config ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LunConfig:
    backend: str
    path: str  # absolute
    size: int | None = None  # bytes; None = use an existing file as it is
    block_size: int = 512
    # None: what the backend says (4096 for files: 512e); 512 makes a 512n LU
    physical_block_size: int | None = None
    read_only: bool = False
    # block / zvol / lvm (issue 4). For zvol and lvm, ``path`` is the device, found under
    # the zfs:/lvm: dev_root; sparse/volblocksize/thinpool record how the volume was made.
    direct: bool = False  # O_DIRECT
    dataset: str | None = None  # zvol: pool/volume
    sparse: bool = False  # zvol: created with -s
    volblocksize: int | None = None  # zvol: -b
    vg: str | None = None  # lvm
    lv: str | None = None  # lvm
    thinpool: str | None = None  # lvm: thin LV from this pool of the same VG


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """Where a storage tool and its device nodes are (``zfs:`` / ``lvm:``)."""

    command: str
    dev_root: str  # absolute


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``chap is None``: anonymous (``auth: none``)."""

    chap: Chap | None = None
    mutual_chap: Chap | None = None

    def to_auth(self) -> Auth:
        return Auth(chap=self.chap, mutual_chap=self.mutual_chap)


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """A target's access control. Names are lower-case, host groups already expanded."""

    initiators: frozenset[str] | None = None  # None: anyone who authenticates
    acls: Mapping[str, AuthConfig] = field(default_factory=dict)
    views: Mapping[int, frozenset[str]] = field(default_factory=dict)
    portals: tuple[int, ...] | None = None  # indices into ServerConfig.portals
    header_digest: bool = False  # required
    data_digest: bool = False


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """Server-wide login policy."""

    host_groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    chap_algorithms: tuple[int, ...] = ()  # IANA numbers; empty: every supported one
    backoff_base: float = 1.0  # acl.DEFAULT_BASE_DELAY
    backoff_max: float = 16.0  # acl.DEFAULT_MAX_DELAY


@dataclass(frozen=True, slots=True)
class TargetConfig:
    iqn: str
    auth: AuthConfig
    luns: Mapping[int, LunConfig]
    alias: str | None = None
    access: AccessConfig = field(default_factory=AccessConfig)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Connection timers, in seconds (the defaults are server.ServerOptions')."""

    login: float = 30.0  # accept -> full feature phase
    nop_interval: float = 15.0  # idle time before the target pings (NOP-In)
    nop_timeout: float = 15.0  # time to answer that ping before the connection is dropped


@dataclass(frozen=True, slots=True)
class ServerConfig:
    state_dir: str  # absolute
    portals: tuple[Portal, ...]
    targets: tuple[TargetConfig, ...]
    discovery_auth: AuthConfig = field(default_factory=AuthConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    zfs: ToolConfig = ToolConfig("zfs", "/dev/zvol")
    lvm: ToolConfig = ToolConfig("lvm", "/dev")
    login_policy: LoginPolicy = field(default_factory=LoginPolicy)
    #: where this came from, for error messages (a file name, or the default's description)
    source: str = "<config>"


# -- value parsers (pure; ValueError says what is wrong, the caller adds where) ------------------

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:iB)?|B)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: object) -> int:
    """Bytes from ``512``, ``"512"``, ``"100MiB"``, ``"40G"``, ``"1.5TiB"`` (powers of 1024)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(  # noqa: TRY004 - one error type for every bad value
            f"{value!r} is not a size (use bytes, or e.g. 100MiB, 40GiB, 1T)")
    if isinstance(value, int):
        number = Fraction(value)
    else:
        m = _SIZE_RE.fullmatch(value.strip())
        if m is None:
            hint = "sizes are powers of 1024: write GiB or G" if re.search(
                r"[KMGT]B\s*$", value, re.IGNORECASE) else "use bytes, or e.g. 100MiB, 40GiB, 1T"
            raise ValueError(f"{value!r} is not a size ({hint})")
        number = Fraction(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if number.denominator != 1:
        raise ValueError(f"{value!r} is not a whole number of bytes")
    if number <= 0:
        raise ValueError(f"{value!r} is not a size (it must be more than 0 bytes)")
    return int(number)


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def parse_portal(text: object) -> Portal:
    """``"host:port"``, ``"[v6]:port"``, bare ``"host"`` or ``"v6"`` (port 3260)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a portal (write \"host:port\")")  # noqa: TRY004
    s = text.strip()
    port_text: str | None = None
    if s.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", s)
        if m is None:
            raise ValueError(f"{text!r} is not a portal (write IPv6 as \"[::1]:3260\")")
        host, port_text = m.group(1), m.group(2)
        if not _is_ip(host, version=6):
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address")
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    else:  # no colon, or a bare IPv6 address
        host = s
    if not host:
        raise ValueError(f"{text!r} has no host (use 0.0.0.0:{DEFAULT_PORT} for every address)")
    if ":" not in host and not _is_ip(host) and not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"{host!r} in {text!r} is not an IP address or host name")
    if ":" in host and not s.startswith("[") and not _is_ip(host, version=6):
        raise ValueError(f"{text!r} is not a portal (write IPv6 as \"[::1]:3260\")")
    if port_text is None:
        return Portal(host, DEFAULT_PORT)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{port_text!r} in {text!r} is not a port number (0..65535)")
    return Portal(host, int(port_text))


def _is_ip(host: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return version is None or address.version == version


_NAME_CHARS = frozenset(string.ascii_lowercase + string.digits + "-.:")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_IQN_RE = re.compile(rf"iqn\.(\d{{4}})-(\d{{2}})\.{_LABEL}(?:\.{_LABEL})*(?::[a-z0-9.:-]+)?")
_EUI_RE = re.compile(r"eui\.[0-9a-f]{16}")
_NAA_RE = re.compile(r"naa\.(?:[0-9a-f]{16}|[0-9a-f]{32})")


def check_iscsi_name(name: object) -> str:
    """Return ``name`` if it is a well-formed iSCSI name (RFC 7143 §4.2.7), else ValueError.

    iqn.yyyy-mm.reversed.domain[:anything], eui.<16 hex>, naa.<16 or 32 hex>. Names compare
    after RFC 3722 stringprep, which folds case, so we accept only the lower-case form.
    pyscsit accepts ASCII names only.
    """
    if not isinstance(name, str):
        raise ValueError(f"{name!r} is not an iSCSI name (expected e.g. "  # noqa: TRY004
                         "iqn.2026-11.org.example:disk0)")
    if name != name.lower():
        raise ValueError(f"{name!r} must be lower-case: write {name.lower()!r}")
    bad = sorted(set(name) - _NAME_CHARS)
    if bad:
        raise ValueError(f"{name!r} contains {bad[0]!r}; iSCSI names use only a-z 0-9 - . :")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{name!r} is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("iqn."):
        m = _IQN_RE.fullmatch(name)
        if m is None or not 1 <= int(m.group(2)) <= 12:
            raise ValueError(f"{name!r} is not an IQN (expected iqn.yyyy-mm.reversed.domain"
                             "[:anything], e.g. iqn.2026-11.org.example:disk0)")
    elif name.startswith("eui."):
        if _EUI_RE.fullmatch(name) is None:
            raise ValueError(f"{name!r} is not an EUI name (expected eui. and 16 hex digits)")
    elif name.startswith("naa."):
        if _NAA_RE.fullmatch(name) is None:
            raise ValueError(f"{name!r} is not an NAA name (expected naa. and 16 or 32 hex "
                             "digits)")
    else:
        raise ValueError(f"{name!r} is not an iSCSI name (it must start with iqn., eui. or "
                         "naa.)")
    return name


# -- the YAML walk -----------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _at(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _fail(path: str, problem: str) -> NoReturn:
    raise _Invalid(path, problem)


def _mapping(value: object, path: str, required: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``value`` is a mapping with string keys, all known, none required missing."""
    if not isinstance(value, dict):
        _fail(path, f"expected a mapping, got {_type_name(value)}")
    known = required + optional
    for key in value:
        if not isinstance(key, str):
            _fail(path, f"key {key!r} is not a name (expected one of: {', '.join(known)})")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
            _fail(_join(path, key), f"unknown key ({hint})")
    for key in required:
        if key not in value:
            _fail(_join(path, key), "required but missing")
    return value


def _string(value: object, path: str, *, secret: bool = False) -> str:
    if not isinstance(value, str):
        shown = "a value that is not text" if secret else f"{_type_name(value)}"
        _fail(path, f"expected a string, got {shown} (put it in quotes)")
    if not value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        _fail(path, "must be non-empty text without control characters")
    return value


def _chap(value: object, path: str) -> Chap:
    m = _mapping(value, path, ("user", "secret"))
    user = _string(m["user"], _join(path, "user"))
    secret = _string(m["secret"], _join(path, "secret"), secret=True)
    if len(secret) < MIN_SECRET_CHARS:
        _fail(_join(path, "secret"), f"is too short: CHAP secrets need at least "
              f"{MIN_SECRET_CHARS} characters (96 bits)")
    return Chap(user=user, secret=secret)


def _auth(value: object, path: str) -> AuthConfig:
    key = path.rpartition(".")[2]  # "auth" or "discovery_auth"
    empty = (f"is empty: give chap: {{user: ..., secret: ...}}, or write `{key}: none` to "
             "allow anonymous logins")
    if value == "none":
        return AuthConfig()
    if value is None:
        _fail(path, empty)
    if not isinstance(value, dict):
        got = repr(value) if isinstance(value, str) else _type_name(value)
        _fail(path, f"expected `none` or a mapping with chap (and mutual_chap), got {got}")
    m = _mapping(value, path, (), ("chap", "mutual_chap"))
    if "chap" not in m and "mutual_chap" in m:
        # The target answers a challenge only after the initiator has authenticated.
        _fail(_join(path, "mutual_chap"), "needs chap too: mutual CHAP is chap plus the "
              "target proving itself back")
    if "chap" not in m:
        _fail(path, empty)
    chap = _chap(m["chap"], _join(path, "chap"))
    mutual = _chap(m["mutual_chap"], _join(path, "mutual_chap")) if "mutual_chap" in m else None
    if mutual is not None and mutual.secret == chap.secret:
        # RFC 7143 (CHAP considerations): one secret MUST NOT serve both directions.
        _fail(_join(_join(path, "mutual_chap"), "secret"), "must differ from chap.secret")
    return AuthConfig(chap=chap, mutual_chap=mutual)


_VOLUME_PART = re.compile(r"[A-Za-z0-9_.:+][A-Za-z0-9_.:+-]*")


def _volume(value: object, path: str, what: str, *, nested: bool = False) -> str:
    """A zvol dataset (``pool/volume``, ``nested``) or an LVM VG/LV name: what the tools accept,
    and never starting with '-' (it would reach them as an option)."""
    name = _string(value, path)
    parts = name.split("/") if nested else [name]
    if not all(_VOLUME_PART.fullmatch(p) for p in parts) or (nested and len(parts) < 2):
        example = "pool/volume" if nested else "letters, digits and _ . : + -"
        _fail(path, f"{name!r} is not {what} (expected {example})")
    return name


def _flag(m: dict[str, Any], key: str, path: str) -> bool:
    value = m.get(key, False)
    if not isinstance(value, bool):
        _fail(_join(path, key), f"expected true or false, got {value!r}")
    return value


def _backend_keys(m: dict[str, Any], backend: str, path: str) -> dict[str, Any]:
    """The keys of block / zvol / lvm LUs (issue 4), checked; LunConfig fields."""
    for key in m:
        owners = [b for b, keys in BACKEND_KEYS.items() if key in keys]
        if owners and backend not in owners:
            _fail(_join(path, key), f"does not apply to backend {backend!r} (only to "
                  f"{', '.join(owners)})")
    out: dict[str, Any] = {"direct": _flag(m, "direct", path)}
    if backend == "zvol":
        if "dataset" not in m:
            _fail(_join(path, "dataset"), "required but missing (backend 'zvol' needs the "
                  "volume's dataset, e.g. tank/vm1)")
        out["dataset"] = _volume(m["dataset"], _join(path, "dataset"), "a ZFS volume",
                                 nested=True)
        out["sparse"] = _flag(m, "sparse", path)
        if m.get("volblocksize") is not None:
            try:
                vbs = parse_size(m["volblocksize"])
            except ValueError as e:
                _fail(_join(path, "volblocksize"), str(e))
            if vbs & (vbs - 1) or not 512 <= vbs <= 1 << 20:
                _fail(_join(path, "volblocksize"), f"{m['volblocksize']!r} is not a power of "
                      "two from 512 to 1MiB")
            out["volblocksize"] = vbs
    elif backend == "lvm":
        for key in ("vg", "lv"):
            if key not in m:
                _fail(_join(path, key), "required but missing (backend 'lvm' needs vg and lv)")
        out["vg"] = _volume(m["vg"], _join(path, "vg"), "a volume group name")
        out["lv"] = _volume(m["lv"], _join(path, "lv"), "a logical volume name")
        if m.get("thinpool") is not None:
            out["thinpool"] = _volume(m["thinpool"], _join(path, "thinpool"), "a thin pool name")
    return out


def _lun(value: object, path: str, base_dir: Path) -> LunConfig:
    own_keys = tuple(dict.fromkeys(k for keys in BACKEND_KEYS.values() for k in keys))
    m = _mapping(value, path, ("backend",), ("size", "block_size", "physical_block_size",
                                             "read_only", *own_keys))
    backend = m["backend"]
    if backend in PLANNED_BACKENDS:
        _fail(_join(path, "backend"), f"backend {backend!r} is not supported yet "
              f"(supported: {', '.join(SUPPORTED_BACKENDS)})")
    if backend not in SUPPORTED_BACKENDS:
        _fail(_join(path, "backend"), f"unknown backend {backend!r} "
              f"(supported: {', '.join(SUPPORTED_BACKENDS)})")
    extra = _backend_keys(m, backend, path)
    file_path = ""  # zvol / lvm: the device under dev_root, filled in by _locate
    if "path" in BACKEND_KEYS[backend]:
        if "path" not in m:
            _fail(_join(path, "path"), f"required but missing (backend {backend!r} needs a "
                  "path)")
        file_path = str(_resolve(base_dir, _string(m["path"], _join(path, "path"))))
    block_size = m.get("block_size", 512)
    if isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        _fail(_join(path, "block_size"), f"{block_size!r} is not a block size (one of: "
              f"{', '.join(map(str, BLOCK_SIZES))})")
    physical: int | None = m.get("physical_block_size")
    if physical is not None and (isinstance(physical, bool) or not isinstance(physical, int)
                                 or physical < block_size or physical > 65536
                                 or physical & (physical - 1)):
        _fail(_join(path, "physical_block_size"), f"{physical!r} is not a power of two from "
              f"the block size ({block_size}) to 65536")
    size: int | None = None
    if m.get("size") is not None:
        try:
            size = parse_size(m["size"])
        except ValueError as e:
            _fail(_join(path, "size"), str(e))
        if size % block_size:
            _fail(_join(path, "size"), f"{m['size']!r} is not a multiple of the block size "
                  f"({block_size})")
    read_only = m.get("read_only", False)
    if not isinstance(read_only, bool):
        _fail(_join(path, "read_only"), f"expected true or false, got {read_only!r}")
    return LunConfig(backend=backend, path=file_path, size=size, **extra,
                     block_size=block_size, physical_block_size=physical, read_only=read_only)


def _resolve(base_dir: Path, text: str) -> Path:
    return Path(os.path.normpath(base_dir / Path(text).expanduser()))


def _target(value: object, path: str, base_dir: Path) -> TargetConfig:
    m = _mapping(value, path, ("iqn", "luns"), ("alias", "auth") + ACCESS_KEYS)
    try:
        iqn = check_iscsi_name(m["iqn"])
    except ValueError as e:
        _fail(_join(path, "iqn"), str(e))
    alias = _string(m["alias"], _join(path, "alias")) if "alias" in m else None
    if "auth" not in m:  # no silent default: anonymous access must be asked for
        _fail(_join(path, "auth"), "required but missing: give chap: {user: ..., secret: ...}, "
              "or write `auth: none` to allow anonymous logins")
    auth = _auth(m["auth"], _join(path, "auth"))
    luns_path = _join(path, "luns")
    raw_luns = m["luns"]
    if not isinstance(raw_luns, dict):
        _fail(luns_path, f"expected a mapping of LUN number to LU, got {_type_name(raw_luns)}")
    if not raw_luns:
        _fail(luns_path, "is empty: a target needs at least one LUN")
    luns: dict[int, LunConfig] = {}
    for key, lun in raw_luns.items():
        # JSON-style configs can only have string keys: accept "1" as well as 1
        number = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_LUN:
            _fail(f"{luns_path}.{number}", f"LUN {number!r} is not a whole number from 0 to "
                  f"{MAX_LUN}")
        if number in luns:
            _fail(f"{luns_path}.{number}", f"LUN {number} is listed twice")
        luns[number] = _lun(_without_views(lun), f"{luns_path}.{number}", base_dir)
    return TargetConfig(iqn=iqn, auth=auth, luns=luns, alias=alias)


def _portals(value: object, path: str) -> tuple[Portal, ...]:
    if not isinstance(value, list) or not value:
        _fail(path, f"expected a list of \"host:port\", got {_type_name(value)}"
              if not isinstance(value, list) else "is empty: listen on at least one portal")
    portals: list[Portal] = []
    for i, text in enumerate(value):
        try:
            portal = parse_portal(text)
        except ValueError as e:
            _fail(_at(path, i), str(e))
        for j, other in enumerate(portals):
            if portal.port and portal.port == other.port and _overlap(portal.host, other.host):
                same = "is listed twice" if portal == other else f"overlaps {other}"
                _fail(_at(path, i), f"'{portal}' {same} (portals[{j}])")
        portals.append(portal)
    return tuple(portals)


def _overlap(a: str, b: str) -> bool:
    """Would binding both fail? Same address, or a wildcard and an address of its family."""
    if a == b:
        return True
    if not (_is_ip(a) and _is_ip(b)):
        return False
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)


def _timeouts(value: object, path: str) -> Timeouts:
    names = ("login", "nop_interval", "nop_timeout")
    m = _mapping(value, path, (), names)
    seconds: dict[str, float] = {}
    for key, v in m.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86400:
            _fail(_join(path, key), f"{v!r} is not a number of seconds (more than 0, at most "
                  "86400)")
        seconds[key] = float(v)
    return Timeouts(**seconds)


LIMIT_COUNTS = ("max_connections", "max_connections_per_address", "max_pending_logins",
                "max_sessions_per_initiator")
LIMIT_SIZES = {"max_buffered_bytes": (1 << 20, 1 << 40, "1MiB to 1TiB"),
               "max_text_bytes": (8192, 1 << 24, "8KiB to 16MiB")}


def _limits(value: object, path: str) -> Limits:
    m = _mapping(value, path, (), LIMIT_COUNTS + ("r2t_timeout",) + tuple(LIMIT_SIZES))
    got: dict[str, Any] = {}
    for key, v in m.items():
        where = _join(path, key)
        if key in LIMIT_COUNTS:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
                _fail(where, f"{v!r} is not a count (1 to 1000000)")
            got[key] = v
        elif key == "r2t_timeout":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86400:
                _fail(where, f"{v!r} is not a number of seconds (more than 0, at most 86400)")
            got[key] = float(v)
        else:
            lo, hi, span = LIMIT_SIZES[key]
            try:
                n = parse_size(v)
            except ValueError as e:
                _fail(where, str(e))
            if not lo <= n <= hi:
                _fail(where, f"{v!r} is out of range ({span})")
            got[key] = n
    return Limits(**got)


def _server(data: object, base_dir: Path, source: str) -> ServerConfig:
    if data is None:
        _fail("", "the file is empty (expected state_dir, portals and targets)")
    m = _mapping(data, "", ("state_dir", "portals", "targets"),
                 ("discovery_auth", "timeouts", "limits", "zfs", "lvm") + POLICY_KEYS)
    zfs = _tool(m.get("zfs"), "zfs", base_dir, ToolConfig("zfs", "/dev/zvol"))
    lvm = _tool(m.get("lvm"), "lvm", base_dir, ToolConfig("lvm", "/dev"))
    state_dir = _resolve(base_dir, _string(m["state_dir"], "state_dir"))
    portals = _portals(m["portals"], "portals")
    policy = _login_policy(m)  # host groups first: targets name them
    discovery_auth = _auth(m["discovery_auth"], "discovery_auth") \
        if "discovery_auth" in m else AuthConfig()
    raw_targets = m["targets"]
    if not isinstance(raw_targets, list) or not raw_targets:
        _fail("targets", f"expected a list of targets, got {_type_name(raw_targets)}"
              if not isinstance(raw_targets, list) else "is empty: configure at least one target")
    targets: list[TargetConfig] = []
    seen_iqns: dict[str, str] = {}
    seen_paths: dict[str, str] = {}
    for i, raw in enumerate(raw_targets):
        path = _at("targets", i)
        target = _locate(_target(raw, path, base_dir), zfs, lvm)
        if target.iqn in seen_iqns:
            _fail(f"{path}.iqn", f"{target.iqn!r} is already used by {seen_iqns[target.iqn]}")
        seen_iqns[target.iqn] = path
        for number, lun in target.luns.items():
            where = f"{path}.luns.{number}"
            if lun.path in seen_paths:  # two LUs on one file would share an identity
                key = {"zvol": "dataset", "lvm": "lv"}.get(lun.backend, "path")
                _fail(f"{where}.{key}", f"{lun.path!r} is already used by "
                      f"{seen_paths[lun.path]}")
            seen_paths[lun.path] = where
        targets.append(replace(target, access=_access(raw, target, path, policy, portals)))
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
    m = _mapping(value, path, (), ("command", "dev_root"))
    command = default.command
    if "command" in m:
        command = _string(m["command"], _join(path, "command"))
        if "/" in command:
            command = str(_resolve(base_dir, command))
    dev_root = default.dev_root
    if "dev_root" in m:
        dev_root = str(_resolve(base_dir, _string(m["dev_root"], _join(path, "dev_root"))))
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
    except _Invalid as e:
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


# -- access control and login policy (issue 5) -------------------------------------------------
#
#   host_groups: {esx: [iqn.1998-01.com.vmware:esx1, iqn.1998-01.com.vmware:esx2]}
#   chap_algorithms: [SHA-256, SHA3-256]       # optional: CHAP_A the target accepts
#   login_backoff: {base: 1, max: 16}          # optional: seconds; doubles per failed login
#   targets:
#     - initiators: [esx, iqn...]              # who may log in (absent: anyone who authenticates)
#       acls: {iqn...: {chap: ..., mutual_chap: ...}}   # per-initiator credentials
#       portals: ["10.0.0.1:3260"]             # offered on these of the server's portals only
#       digests: required                      # or {header: required, data: optional}
#       luns: {1: {..., views: [esx, iqn...]}} # the LU is visible only to these


ACCESS_KEYS = ("initiators", "acls", "portals", "digests")  # a target's access keys
POLICY_KEYS = ("host_groups", "chap_algorithms", "login_backoff")  # top-level ones
DIGEST_CHOICES = ("required", "optional")
_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


def _is_name(text: str) -> bool:
    return text.startswith(("iqn.", "eui.", "naa."))


def _iscsi_name(value: object, path: str) -> str:
    try:
        return check_iscsi_name(value)
    except ValueError as e:
        _fail(path, str(e))


def _host_groups(value: object, path: str) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict):
        _fail(path, f"expected a mapping of group name to initiator names, got "
              f"{_type_name(value)}")
    groups: dict[str, frozenset[str]] = {}
    for name, members in value.items():
        where = _join(path, str(name))
        if not isinstance(name, str) or _is_name(name) or not _GROUP_RE.fullmatch(name):
            _fail(where, f"{name!r} is not a group name (letters, digits, _ . -; not an "
                  "iSCSI name)")
        if not isinstance(members, list) or not members:
            _fail(where, "expected a non-empty list of initiator names" if isinstance(
                members, list) else f"expected a list of initiator names, got "
                f"{_type_name(members)}")
        groups[name] = frozenset(_iscsi_name(n, _at(where, i)) for i, n in enumerate(members))
    return groups


def _names(value: object, path: str, groups: Mapping[str, frozenset[str]], *,
           what: str) -> frozenset[str]:
    """A list of host groups and initiator names -> the initiator names."""
    if not isinstance(value, list) or not value:
        _fail(path, f"is empty: {what}" if isinstance(value, list) else
              f"expected a list of host groups or initiator names, got {_type_name(value)}")
    names: set[str] = set()
    for i, item in enumerate(value):
        if isinstance(item, str) and item in groups:
            names |= groups[item]
        elif isinstance(item, str) and not _is_name(item):
            known = ", ".join(sorted(groups)) or "none defined"
            _fail(_at(path, i), f"{item!r} is neither a host group (host_groups: {known}) "
                  "nor an iSCSI name")
        else:
            names.add(_iscsi_name(item, _at(path, i)))
    return frozenset(names)


def _target_portals(value: object, path: str, portals: tuple[Portal, ...]) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        _fail(path, "is empty: list some of the server's portals, or remove the key" if
              isinstance(value, list) else f"expected a list of \"host:port\", got "
              f"{_type_name(value)}")
    chosen: list[int] = []
    for i, text in enumerate(value):
        try:
            portal = parse_portal(text)
        except ValueError as e:
            _fail(_at(path, i), str(e))
        found = [j for j, p in enumerate(portals) if p == portal]
        if not found:
            _fail(_at(path, i), f"'{portal}' is not one of the server's portals "
                  f"({', '.join(map(str, portals))})")
        if not _is_ip(portal.host):  # connections are matched to portals by address
            _fail(_at(path, i), f"'{portal}' is a host name: bind targets to portals given "
                  "as IP addresses")
        chosen += [j for j in found if j not in chosen]
    return tuple(chosen)


def _digests(value: object, path: str) -> tuple[bool, bool]:
    if isinstance(value, str):
        if value not in DIGEST_CHOICES:
            _fail(path, f"{value!r} is not one of: required, optional (or a mapping "
                  "{header: ..., data: ...})")
        return value == "required", value == "required"
    if not isinstance(value, dict):
        _fail(path, f"expected required, optional or {{header: ..., data: ...}}, got "
              f"{_type_name(value)}")
    m = _mapping(value, path, (), ("header", "data"))
    out: list[bool] = []
    for key in ("header", "data"):
        choice = m.get(key, "optional")
        if choice not in DIGEST_CHOICES:
            _fail(_join(path, key), f"{choice!r} is not one of: required, optional")
        out.append(choice == "required")
    return out[0], out[1]


def _acls(value: object, path: str, allowed: frozenset[str] | None) -> dict[str, AuthConfig]:
    if not isinstance(value, dict) or not value:
        _fail(path, "is empty: map initiator names to {chap: ..., mutual_chap: ...}" if
              isinstance(value, dict) else f"expected a mapping of initiator name to "
              f"credentials, got {_type_name(value)}")
    acls: dict[str, AuthConfig] = {}
    for name, creds in value.items():
        where = f"{path}[{name!r}]"  # names hold dots: keep them whole in the key path
        _iscsi_name(name, where)
        if allowed is not None and name not in allowed:
            _fail(where, "is not in this target's initiators, so it could never log in")
        if creds != "none" and not (isinstance(creds, dict) and "chap" in creds):
            _fail(where, "expected chap: {user: ..., secret: ...} (and mutual_chap), or "
                  "`none` to let this initiator in without CHAP")
        acls[name] = _auth(creds, where)
    return acls


def _access(raw: Mapping[str, Any], target: TargetConfig, path: str,
            policy: LoginPolicy, portals: tuple[Portal, ...]) -> AccessConfig:
    """The access keys of one target (``raw`` is its already-checked mapping)."""
    groups = policy.host_groups
    allowed = _names(raw["initiators"], _join(path, "initiators"), groups,
                     what="no initiator could log in (remove the key to allow anyone who "
                     "authenticates)") if "initiators" in raw else None
    acls = _acls(raw["acls"], _join(path, "acls"), allowed) if "acls" in raw else {}
    views: dict[int, frozenset[str]] = {}
    for number, lun in raw["luns"].items():
        if not isinstance(lun, dict) or "views" not in lun:
            continue
        number = int(number)
        where = f"{path}.luns.{number}.views"
        seen = _names(lun["views"], where, groups, what="no initiator could see the LU")
        if allowed is not None and not seen & allowed:
            _fail(where, "names no initiator of this target's initiators, so no one could "
                  "see the LU")
        views[number] = seen
    target_portals = _target_portals(raw["portals"], _join(path, "portals"), portals) \
        if "portals" in raw else None
    header, data = _digests(raw["digests"], _join(path, "digests")) \
        if "digests" in raw else (False, False)
    return AccessConfig(initiators=allowed, acls=acls, views=views, portals=target_portals,
                        header_digest=header, data_digest=data)


def _without_views(lun: object) -> object:
    """A LUN's mapping minus `views` (an access key, read by _access)."""
    return {k: v for k, v in lun.items() if k != "views"} if isinstance(lun, dict) else lun


def _login_policy(m: Mapping[str, Any]) -> LoginPolicy:
    from pyscsit.chap import ALGORITHM_NAMES

    groups = _host_groups(m["host_groups"], "host_groups") if "host_groups" in m else {}
    algorithms: tuple[int, ...] = ()
    if "chap_algorithms" in m:
        value = m["chap_algorithms"]
        if not isinstance(value, list) or not value:
            _fail("chap_algorithms", f"expected a non-empty list of: "
                  f"{', '.join(ALGORITHM_NAMES)}")
        for i, name in enumerate(value):
            if name not in ALGORITHM_NAMES:
                _fail(_at("chap_algorithms", i), f"{name!r} is not one of: "
                      f"{', '.join(ALGORITHM_NAMES)}")
            if ALGORITHM_NAMES[name] not in algorithms:
                algorithms += (int(ALGORITHM_NAMES[name]),)
    base, top = LoginPolicy().backoff_base, LoginPolicy().backoff_max
    if "login_backoff" in m:
        b = _mapping(m["login_backoff"], "login_backoff", (), ("base", "max"))
        for key in b:
            v = b[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 3600:
                _fail(_join("login_backoff", key), f"{v!r} is not a number of seconds (0 to "
                      "3600; base 0 turns the back-off off)")
        base, top = float(b.get("base", base)), float(b.get("max", max(top, b.get("base", 0))))
        if top < base:
            _fail("login_backoff.max", f"{top:g} is less than base ({base:g})")
    return LoginPolicy(host_groups=groups, chap_algorithms=algorithms, backoff_base=base,
                       backoff_max=top)


def _target_model_access(tc: TargetConfig) -> dict[str, Any]:
    """Target(...) keyword arguments for a target's access control."""
    a = tc.access
    return {"initiators": a.initiators, "views": dict(a.views), "portals": a.portals,
            "acls": {name: auth.to_auth() for name, auth in a.acls.items()},
            "require_header_digest": a.header_digest, "require_data_digest": a.data_digest}


def _model_policy(cfg: ServerConfig) -> dict[str, Any]:
    """Model(...) keyword arguments for the login policy."""
    from pyscsit.acl import LoginGuard

    p = cfg.login_policy
    return {"chap_algorithms": p.chap_algorithms,
            "guard": LoginGuard(base_delay=p.backoff_base, max_delay=p.backoff_max)}


# -- building the live model -------------------------------------------------------------------


def server_options(cfg: ServerConfig) -> ServerOptions:
    """The server's timers from ``cfg.timeouts``, and its ``cfg.limits``."""
    from pyscsit.server import ServerOptions

    t = cfg.timeouts
    return ServerOptions(login_timeout=t.login, nop_interval=t.nop_interval,
                         nop_timeout=t.nop_timeout, limits=cfg.limits)


def _open_file(lun: LunConfig) -> Backend:
    from pyscsit.backends.base import BackendError
    from pyscsit.backends.file import FileBackend

    parent = os.path.dirname(lun.path)
    if lun.size is not None and not os.path.lexists(lun.path) and not os.path.isdir(parent):
        try:  # we are creating the image, so its folder too
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as e:
            reason = "a file is in the way" if isinstance(e, FileExistsError) else _reason(e)
            raise BackendError(f"{lun.path}: cannot create its folder: {reason}") from None
    return FileBackend.open(lun.path, lun.size, read_only=lun.read_only)


def _open_block(lun: LunConfig) -> Backend:
    """block, zvol and lvm LUs: a device node, opened exclusively."""
    from pyscsit.backends.base import BackendError
    from pyscsit.backends.block import BlockBackend

    if lun.backend == "zvol":
        locator, zeroes, make = f"zvol:{lun.dataset}", True, f"zfs create -V SIZE {lun.dataset}"
    elif lun.backend == "lvm":
        locator, zeroes, make = f"lvm:{lun.vg}/{lun.lv}", None, f"lvcreate -n {lun.lv} {lun.vg}"
    else:
        locator, zeroes, make = f"block:{lun.path}", None, ""
    if make and not os.path.lexists(lun.path):
        raise BackendError(f"{lun.path}: device does not exist (create it with `pyscsit lun "
                           f"create` or `{make}`)")
    backend = BlockBackend.open(lun.path, read_only=lun.read_only, direct=lun.direct,
                                locator=locator, discard_zeroes=zeroes)
    if lun.direct and lun.block_size < backend.logical_block_size:
        backend.close()
        raise BackendError(f"{lun.path}: block_size {lun.block_size} is smaller than the "
                           f"device's {backend.logical_block_size}-byte sectors, which O_DIRECT "
                           "needs (set block_size, or direct: false)")
    return backend


#: backend name -> opener. Add a row per backend; parsing reads SUPPORTED_BACKENDS.
_OPENERS: dict[str, Callable[[LunConfig], Backend]] = {
    "file": _open_file, "block": _open_block, "zvol": _open_block, "lvm": _open_block}


def build_model(cfg: ServerConfig) -> Model:
    """Open every backend, create the state directory and load (or create) LU identities.

    On any failure the backends opened so far are closed and a ConfigError names the LUN.
    """
    # Imported here so that parsing a config needs none of the I/O layers.
    from pyscsit.backends.base import BackendError
    from pyscsit.scsi.identity import IdentityStore
    from pyscsit.scsi.lu import LogicalUnit
    from pyscsit.scsi.xcopy import LuDirectory

    try:
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(cfg.source, "state_dir",
                          f"cannot create {cfg.state_dir!r}: {e.strerror or e}") from None
    try:
        identities = IdentityStore(cfg.state_dir)
    except (OSError, ValueError) as e:  # never replaced silently: VMware would see new disks
        raise ConfigError(cfg.source, "state_dir", _reason(e)) from None
    opened: list[Backend] = []
    targets: dict[str, Target] = {}
    directory = LuDirectory()  # EXTENDED COPY finds copy targets across the server's LUs
    try:
        for i, tc in enumerate(cfg.targets):
            luns: dict[int, LogicalUnit] = {}
            for number, lun in tc.luns.items():
                where = f"targets[{i}].luns.{number}"
                try:
                    backend = _OPENERS[lun.backend](lun)
                except BackendError as e:  # its message names the path and the reason
                    raise ConfigError(cfg.source, f"{where}.path", str(e)) from None
                except OSError as e:
                    raise ConfigError(cfg.source, f"{where}.path",
                                      f"cannot open {lun.path!r}: {_reason(e)}") from None
                opened.append(backend)
                try:
                    identity = identities.get(backend.locator)
                except (OSError, ValueError) as e:
                    raise ConfigError(cfg.source, "state_dir", f"cannot keep the identity of "
                                      f"{where} in {cfg.state_dir!r}: {_reason(e)}") from None
                # Persistent reservations (APTPL) are kept by LU identity, never by LUN number.
                pr_path = os.path.join(cfg.state_dir, f"pr-{identity.naa.hex()}.json")
                try:
                    luns[number] = LogicalUnit(backend, identity, block_size=lun.block_size,
                                               physical_block_size=lun.physical_block_size,
                                               read_only=lun.read_only, pr_state_path=pr_path)
                except ValueError as e:
                    raise ConfigError(cfg.source, "state_dir", f"{where}: {e}") from None
                directory.add(luns[number])
            targets[tc.iqn] = Target(iqn=tc.iqn, auth=tc.auth.to_auth(), luns=luns,
                                     alias=tc.alias, **_target_model_access(tc))
    except ConfigError:
        for backend in opened:
            backend.close()
        raise
    return Model(portals=list(cfg.portals), targets=targets, state_dir=cfg.state_dir,
                 discovery_auth=cfg.discovery_auth.to_auth(), **_model_policy(cfg))


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


# -- the embedded default (`pyscsit serve` without --config) -----------------------------------


def default_config(data_dir: str | os.PathLike[str] = "./pyscsit-data") -> tuple[ServerConfig, Chap]:
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
            chap = _chap(data, "")
        except _Invalid as e:
            raise ConfigError(source, e.key_path, f"{e.problem} (delete the file "
                              "to generate new credentials)") from None
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return chap
    chap = Chap(user=f"pyscsit-{secrets.token_hex(4)}",
                secret="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(24)))
    try:
        _write_private(path, yaml.safe_dump({"user": chap.user, "secret": chap.secret}))
    except OSError as e:
        raise ConfigError(source, "", f"cannot write: {e.strerror or e}") from None
    return chap


def _write_private(path: Path, text: str) -> None:
    """Atomic 0600 write: temp file, fsync, rename, fsync the folder (it holds secrets)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
