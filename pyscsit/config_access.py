"""Access control and login policy (issue 5): who may log in, with which credentials, which
LUs they see, on which portals, with which digests.

    host_groups: {esx: [iqn.1998-01.com.vmware:esx1, iqn.1998-01.com.vmware:esx2]}
    chap_algorithms: [SHA-256, SHA3-256]       # optional: CHAP_A the target accepts
    login_backoff: {base: 1, max: 16}          # optional: seconds; doubles per failed login
    targets:
      - initiators: [esx, iqn...]              # who may log in (absent: anyone who authenticates)
        acls: {iqn...: {chap: ..., mutual_chap: ...}}   # per-initiator credentials
        portals: ["10.0.0.1:3260"]             # offered on these of the server's portals only
        digests: required                      # or {header: required, data: optional}
        luns: {1: {..., views: [esx, iqn...]}} # the LU is visible only to these
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pyscsit.config_types import AccessConfig, AuthConfig, LoginPolicy, TargetConfig
from pyscsit.config_values import (
    at_index,
    at_key,
    check_mapping,
    checked_iscsi_name,
    each_portal,
    fail,
    is_ip,
    parse_auth,
    type_name,
)
from pyscsit.target import Portal

ACCESS_KEYS = ("initiators", "acls", "portals", "digests")  # a target's access keys
POLICY_KEYS = ("host_groups", "chap_algorithms", "login_backoff")  # top-level ones
DIGEST_CHOICES = ("required", "optional")
_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


def _is_name(text: str) -> bool:
    return text.startswith(("iqn.", "eui.", "naa."))


def _host_groups(value: object, path: str) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict):
        fail(path, f"expected a mapping of group name to initiator names, got "
             f"{type_name(value)}")
    groups: dict[str, frozenset[str]] = {}
    for name, members in value.items():
        where = at_key(path, str(name))
        if not isinstance(name, str) or _is_name(name) or not _GROUP_RE.fullmatch(name):
            fail(where, f"{name!r} is not a group name (letters, digits, _ . -; not an "
                 "iSCSI name)")
        if not isinstance(members, list) or not members:
            fail(where, "expected a non-empty list of initiator names" if isinstance(
                members, list) else f"expected a list of initiator names, got "
                f"{type_name(members)}")
        groups[name] = frozenset(checked_iscsi_name(n, at_index(where, i))
                                 for i, n in enumerate(members))
    return groups


def _names(value: object, path: str, groups: Mapping[str, frozenset[str]], *,
           what: str) -> frozenset[str]:
    """A list of host groups and initiator names -> the initiator names."""
    if not isinstance(value, list) or not value:
        fail(path, f"is empty: {what}" if isinstance(value, list) else
             f"expected a list of host groups or initiator names, got {type_name(value)}")
    names: set[str] = set()
    for i, item in enumerate(value):
        if isinstance(item, str) and item in groups:
            names |= groups[item]
        elif isinstance(item, str) and not _is_name(item):
            known = ", ".join(sorted(groups)) or "none defined"
            fail(at_index(path, i), f"{item!r} is neither a host group (host_groups: {known}) "
                 "nor an iSCSI name")
        else:
            names.add(checked_iscsi_name(item, at_index(path, i)))
    return frozenset(names)


def _target_portals(value: object, path: str, portals: tuple[Portal, ...]) -> tuple[int, ...]:
    chosen: list[int] = []
    for where, portal in each_portal(value, path, empty="list some of the server's portals, "
                                     "or remove the key"):
        found = [j for j, p in enumerate(portals) if p == portal]
        if not found:
            fail(where, f"'{portal}' is not one of the server's portals "
                 f"({', '.join(map(str, portals))})")
        if not is_ip(portal.host):  # connections are matched to portals by address
            fail(where, f"'{portal}' is a host name: bind targets to portals given "
                 "as IP addresses")
        chosen += [j for j in found if j not in chosen]
    return tuple(chosen)


def _digests(value: object, path: str) -> tuple[bool, bool]:
    if isinstance(value, str):
        if value not in DIGEST_CHOICES:
            fail(path, f"{value!r} is not one of: required, optional (or a mapping "
                 "{header: ..., data: ...})")
        return value == "required", value == "required"
    if not isinstance(value, dict):
        fail(path, f"expected required, optional or {{header: ..., data: ...}}, got "
             f"{type_name(value)}")
    m = check_mapping(value, path, (), ("header", "data"))
    out: list[bool] = []
    for key in ("header", "data"):
        choice = m.get(key, "optional")
        if choice not in DIGEST_CHOICES:
            fail(at_key(path, key), f"{choice!r} is not one of: required, optional")
        out.append(choice == "required")
    return out[0], out[1]


def _acls(value: object, path: str, allowed: frozenset[str] | None) -> dict[str, AuthConfig]:
    if not isinstance(value, dict) or not value:
        fail(path, "is empty: map initiator names to {chap: ..., mutual_chap: ...}" if
             isinstance(value, dict) else f"expected a mapping of initiator name to "
             f"credentials, got {type_name(value)}")
    acls: dict[str, AuthConfig] = {}
    for name, creds in value.items():
        where = f"{path}[{name!r}]"  # names hold dots: keep them whole in the key path
        checked_iscsi_name(name, where)
        if allowed is not None and name not in allowed:
            fail(where, "is not in this target's initiators, so it could never log in")
        if creds != "none" and not (isinstance(creds, dict) and "chap" in creds):
            fail(where, "expected chap: {user: ..., secret: ...} (and mutual_chap), or "
                 "`none` to let this initiator in without CHAP")
        acls[name] = parse_auth(creds, where)
    return acls


def parse_access(raw: Mapping[str, Any], target: TargetConfig, path: str,
                 policy: LoginPolicy, portals: tuple[Portal, ...]) -> AccessConfig:
    """The access keys of one target (``raw`` is its already-checked mapping)."""
    groups = policy.host_groups
    allowed = _names(raw["initiators"], at_key(path, "initiators"), groups,
                     what="no initiator could log in (remove the key to allow anyone who "
                     "authenticates)") if "initiators" in raw else None
    acls = _acls(raw["acls"], at_key(path, "acls"), allowed) if "acls" in raw else {}
    views: dict[int, frozenset[str]] = {}
    for number, lun in raw["luns"].items():
        if not isinstance(lun, dict) or "views" not in lun:
            continue
        number = int(number)
        where = f"{path}.luns.{number}.views"
        seen = _names(lun["views"], where, groups, what="no initiator could see the LU")
        if allowed is not None and not seen & allowed:
            fail(where, "names no initiator of this target's initiators, so no one could "
                 "see the LU")
        views[number] = seen
    target_portals = _target_portals(raw["portals"], at_key(path, "portals"), portals) \
        if "portals" in raw else None
    header, data = _digests(raw["digests"], at_key(path, "digests")) \
        if "digests" in raw else (False, False)
    return AccessConfig(initiators=allowed, acls=acls, views=views, portals=target_portals,
                        header_digest=header, data_digest=data)


def without_views(lun: object) -> object:
    """A LUN's mapping minus `views` (an access key, read by _access)."""
    return {k: v for k, v in lun.items() if k != "views"} if isinstance(lun, dict) else lun


def parse_login_policy(m: Mapping[str, Any]) -> LoginPolicy:
    from pyscsit.chap import ALGORITHM_NAMES

    groups = _host_groups(m["host_groups"], "host_groups") if "host_groups" in m else {}
    algorithms: tuple[int, ...] = ()
    if "chap_algorithms" in m:
        value = m["chap_algorithms"]
        if not isinstance(value, list) or not value:
            fail("chap_algorithms", f"expected a non-empty list of: "
                 f"{', '.join(ALGORITHM_NAMES)}")
        for i, name in enumerate(value):
            if name not in ALGORITHM_NAMES:
                fail(at_index("chap_algorithms", i), f"{name!r} is not one of: "
                     f"{', '.join(ALGORITHM_NAMES)}")
            if ALGORITHM_NAMES[name] not in algorithms:
                algorithms += (int(ALGORITHM_NAMES[name]),)
    base, top = LoginPolicy().backoff_base, LoginPolicy().backoff_max
    if "login_backoff" in m:
        b = check_mapping(m["login_backoff"], "login_backoff", (), ("base", "max"))
        for key in b:
            v = b[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 3600:
                fail(at_key("login_backoff", key), f"{v!r} is not a number of seconds (0 to "
                     "3600; base 0 turns the back-off off)")
        base, top = float(b.get("base", base)), float(b.get("max", max(top, b.get("base", 0))))
        if top < base:
            fail("login_backoff.max", f"{top:g} is less than base ({base:g})")
    return LoginPolicy(host_groups=groups, chap_algorithms=algorithms, backoff_base=base,
                       backoff_max=top)

