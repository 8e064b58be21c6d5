"""YAML -> typed, frozen config -> the live model (target.Model).

Loading is two steps, like everything else here: parse (pure: YAML text -> ServerConfig, every
problem reported as ``FILE: key.path: what is wrong``) then build (opens backends, creates the
state directory, loads LU identities). Nothing in either step may escape as a traceback: every
failure a user can cause is a ConfigError with one line of text.

The YAML shape (issue 2) is a contract; extend it, don't break it:

    state_dir: /var/lib/pyscsit
    portals: ["0.0.0.0:3260", "[::]:3260"]
    discovery_auth: none                 # optional, same shape as a target's auth
    targets:
      - iqn: iqn.2026-11.org.example:disk0
        alias: disk0                     # optional
        auth:                            # required: chap (+ mutual_chap), or `none`
          chap: {user: alice, secret: a-long-secret}
          mutual_chap: {user: target0, secret: another-secret}
        luns:
          1: {backend: file, path: /srv/iscsi/disk0.img, size: 40GiB}
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
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from pyscsit.target import Auth, Chap, Model, Portal, Target

if TYPE_CHECKING:
    from pyscsit.backends.base import Backend
    from pyscsit.scsi.lu import LogicalUnit

__all__ = [
    "DEFAULT_IQN",
    "AuthConfig",
    "ConfigError",
    "LunConfig",
    "ServerConfig",
    "TargetConfig",
    "build_model",
    "check_iscsi_name",
    "default_config",
    "load_config",
    "parse_config",
    "parse_portal",
    "parse_size",
]

DEFAULT_PORT = 3260  # the IANA-assigned iSCSI port
DEFAULT_IQN = "iqn.2026-11.org.pyscsit:default"
DEFAULT_SIZE = 1 << 30
MAX_LUN = 16383  # SAM-5 flat/peripheral addressing: 14 bits
MAX_NAME_BYTES = 223  # RFC 7143 §4.2.7
MIN_SECRET_CHARS = 12  # 96 bits (RFC 7143 CHAP considerations); Windows wants 12..16
BLOCK_SIZES = (512, 1024, 2048, 4096)
SUPPORTED_BACKENDS = ("file",)
PLANNED_BACKENDS = ("block", "zvol", "lvm")
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
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``chap is None``: anonymous (``auth: none``)."""

    chap: Chap | None = None
    mutual_chap: Chap | None = None

    def to_auth(self) -> Auth:
        return Auth(chap=self.chap, mutual_chap=self.mutual_chap)


@dataclass(frozen=True, slots=True)
class TargetConfig:
    iqn: str
    auth: AuthConfig
    luns: Mapping[int, LunConfig]
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    state_dir: str  # absolute
    portals: tuple[Portal, ...]
    targets: tuple[TargetConfig, ...]
    discovery_auth: AuthConfig = field(default_factory=AuthConfig)
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


def _lun(value: object, path: str, base_dir: Path) -> LunConfig:
    m = _mapping(value, path, ("backend",), ("path", "size", "block_size", "read_only"))
    backend = m["backend"]
    if backend in PLANNED_BACKENDS:
        _fail(_join(path, "backend"), f"backend {backend!r} is not supported yet "
              f"(supported: {', '.join(SUPPORTED_BACKENDS)})")
    if backend not in SUPPORTED_BACKENDS:
        _fail(_join(path, "backend"), f"unknown backend {backend!r} "
              f"(supported: {', '.join(SUPPORTED_BACKENDS)})")
    if "path" not in m:
        _fail(_join(path, "path"), f"required but missing (backend {backend!r} needs a path)")
    file_path = _string(m["path"], _join(path, "path"))
    block_size = m.get("block_size", 512)
    if isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        _fail(_join(path, "block_size"), f"{block_size!r} is not a block size (one of: "
              f"{', '.join(map(str, BLOCK_SIZES))})")
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
    return LunConfig(backend=backend, path=str(_resolve(base_dir, file_path)), size=size,
                     block_size=block_size, read_only=read_only)


def _resolve(base_dir: Path, text: str) -> Path:
    return Path(os.path.normpath(base_dir / Path(text).expanduser()))


def _target(value: object, path: str, base_dir: Path) -> TargetConfig:
    m = _mapping(value, path, ("iqn", "luns"), ("alias", "auth"))
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
        luns[number] = _lun(lun, f"{luns_path}.{number}", base_dir)
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


def _server(data: object, base_dir: Path, source: str) -> ServerConfig:
    if data is None:
        _fail("", "the file is empty (expected state_dir, portals and targets)")
    m = _mapping(data, "", ("state_dir", "portals", "targets"), ("discovery_auth",))
    state_dir = _resolve(base_dir, _string(m["state_dir"], "state_dir"))
    portals = _portals(m["portals"], "portals")
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
        target = _target(raw, path, base_dir)
        if target.iqn in seen_iqns:
            _fail(f"{path}.iqn", f"{target.iqn!r} is already used by {seen_iqns[target.iqn]}")
        seen_iqns[target.iqn] = path
        for number, lun in target.luns.items():
            where = f"{path}.luns.{number}"
            if lun.path in seen_paths:  # two LUs on one file would share an identity
                _fail(f"{where}.path", f"{lun.path!r} is already used by {seen_paths[lun.path]}")
            seen_paths[lun.path] = where
        targets.append(target)
    return ServerConfig(state_dir=str(state_dir), portals=portals, targets=tuple(targets),
                        discovery_auth=discovery_auth, source=source)


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


# -- building the live model -------------------------------------------------------------------


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


#: backend name -> opener. Add a row per backend; parsing reads SUPPORTED_BACKENDS.
_OPENERS: dict[str, Callable[[LunConfig], Backend]] = {"file": _open_file}


def build_model(cfg: ServerConfig) -> Model:
    """Open every backend, create the state directory and load (or create) LU identities.

    On any failure the backends opened so far are closed and a ConfigError names the LUN.
    """
    # Imported here so that parsing a config needs none of the I/O layers.
    from pyscsit.backends.base import BackendError
    from pyscsit.scsi.identity import IdentityStore
    from pyscsit.scsi.lu import LogicalUnit

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
                luns[number] = LogicalUnit(backend, identity, block_size=lun.block_size,
                                           read_only=lun.read_only)
            targets[tc.iqn] = Target(iqn=tc.iqn, auth=tc.auth.to_auth(), luns=luns,
                                     alias=tc.alias)
    except ConfigError:
        for backend in opened:
            backend.close()
        raise
    return Model(portals=list(cfg.portals), targets=targets, state_dir=cfg.state_dir,
                 discovery_auth=cfg.discovery_auth.to_auth())


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
