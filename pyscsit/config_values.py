"""Config value parsers and the primitives of the YAML walk, shared by config.py (LUNs,
targets, the server) and config_access.py (host groups, ACLs, views, portals, digests).

Value parsers are pure: ValueError says what is wrong, the caller adds where. The walk's
checks take the key path of the value they look at and raise ``Invalid`` with it; parse_config
turns that into a ConfigError naming the file.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import string
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, NoReturn

from pyscsit.config_types import AuthConfig
from pyscsit.target import Chap, Portal

DEFAULT_PORT = 3260  # the IANA-assigned iSCSI port
MAX_NAME_BYTES = 223  # RFC 7143 §4.2.7
MIN_SECRET_CHARS = 12  # 96 bits (RFC 7143 CHAP considerations); Windows wants 12..16


class Invalid(Exception):
    """Raised inside parsing; load/parse_config adds the file name."""

    def __init__(self, key_path: str, problem: str) -> None:
        super().__init__(problem)
        self.key_path = key_path
        self.problem = problem


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
        if not is_ip(host, version=6):
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address")
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    else:  # no colon, or a bare IPv6 address
        host = s
    if not host:
        raise ValueError(f"{text!r} has no host (use 0.0.0.0:{DEFAULT_PORT} for every address)")
    if ":" not in host and not is_ip(host) and not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"{host!r} in {text!r} is not an IP address or host name")
    if ":" in host and not s.startswith("[") and not is_ip(host, version=6):
        raise ValueError(f"{text!r} is not a portal (write IPv6 as \"[::1]:3260\")")
    if port_text is None:
        return Portal(host, DEFAULT_PORT)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{port_text!r} in {text!r} is not a port number (0..65535)")
    return Portal(host, int(port_text))


def is_ip(host: str, version: int | None = None) -> bool:
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


def at_key(path: str, key: str) -> str:
    """``targets[0]`` and ``auth`` -> ``targets[0].auth``."""
    return f"{path}.{key}" if path else key


def at_index(path: str, index: int) -> str:
    """``portals`` and 1 -> ``portals[1]``."""
    return f"{path}[{index}]"


def type_name(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def fail(path: str, problem: str) -> NoReturn:
    """Stop the walk: ``problem`` at ``path`` (parse_config adds the file name)."""
    raise Invalid(path, problem)


def check_mapping(value: object, path: str, required: tuple[str, ...],
                  optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``value`` is a mapping with string keys, all known, none required missing."""
    if not isinstance(value, dict):
        fail(path, f"expected a mapping, got {type_name(value)}")
    known = required + optional
    for key in value:
        if not isinstance(key, str):
            fail(path, f"key {key!r} is not a name (expected one of: {', '.join(known)})")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"expected one of: {', '.join(known)}")
            fail(at_key(path, key), f"unknown key ({hint})")
    for key in required:
        if key not in value:
            fail(at_key(path, key), "required but missing")
    return value


def check_text(value: object, path: str, *, secret: bool = False) -> str:
    if not isinstance(value, str):
        shown = "a value that is not text" if secret else f"{type_name(value)}"
        fail(path, f"expected a string, got {shown} (put it in quotes)")
    if not value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        fail(path, "must be non-empty text without control characters")
    return value


def parse_chap(value: object, path: str) -> Chap:
    m = check_mapping(value, path, ("user", "secret"))
    user = check_text(m["user"], at_key(path, "user"))
    secret = check_text(m["secret"], at_key(path, "secret"), secret=True)
    if len(secret) < MIN_SECRET_CHARS:
        fail(at_key(path, "secret"), f"is too short: CHAP secrets need at least "
             f"{MIN_SECRET_CHARS} characters (96 bits)")
    return Chap(user=user, secret=secret)


def parse_auth(value: object, path: str) -> AuthConfig:
    key = path.rpartition(".")[2]  # "auth" or "discovery_auth"
    empty = (f"is empty: give chap: {{user: ..., secret: ...}}, or write `{key}: none` to "
             "allow anonymous logins")
    if value == "none":
        return AuthConfig()
    if value is None:
        fail(path, empty)
    if not isinstance(value, dict):
        got = repr(value) if isinstance(value, str) else type_name(value)
        fail(path, f"expected `none` or a mapping with chap (and mutual_chap), got {got}")
    m = check_mapping(value, path, (), ("chap", "mutual_chap"))
    if "chap" not in m and "mutual_chap" in m:
        # The target answers a challenge only after the initiator has authenticated.
        fail(at_key(path, "mutual_chap"), "needs chap too: mutual CHAP is chap plus the "
             "target proving itself back")
    if "chap" not in m:
        fail(path, empty)
    chap = parse_chap(m["chap"], at_key(path, "chap"))
    mutual = (parse_chap(m["mutual_chap"], at_key(path, "mutual_chap"))
              if "mutual_chap" in m else None)
    if mutual is not None and mutual.secret == chap.secret:
        # RFC 7143 (CHAP considerations): one secret MUST NOT serve both directions.
        fail(at_key(at_key(path, "mutual_chap"), "secret"), "must differ from chap.secret")
    return AuthConfig(chap=chap, mutual_chap=mutual)


def checked_iscsi_name(value: object, path: str) -> str:
    try:
        return check_iscsi_name(value)
    except ValueError as e:
        fail(path, str(e))


def each_portal(value: object, path: str, *, empty: str) -> Iterator[tuple[str, Portal]]:
    """Walk a non-empty list of ``"host:port"``: (key path, portal) per item, parsed as the
    caller gets to it; ``empty`` says what to do about an empty list."""
    if not isinstance(value, list) or not value:
        fail(path, f"is empty: {empty}" if isinstance(value, list) else
             f"expected a list of \"host:port\", got {type_name(value)}")
    for i, text in enumerate(value):
        try:
            portal = parse_portal(text)
        except ValueError as e:
            fail(at_index(path, i), str(e))
        yield at_index(path, i), portal
